//! The agent's exporter: every stored event to NATS JetStream, at least once, nothing lost.
//!
//! The store is the spool. The exporter reads the events past the export cursor in Seq order, publishes
//! each with the message id `<DeviceId>:<Seq>` (JetStream drops a duplicate within its window), keeps at
//! most [`MAX_IN_FLIGHT`] acknowledgements outstanding, and moves the cursor only past acknowledged events.
//! After any failure it starts again at the cursor with the same ids. It runs on a thread and a runtime of
//! its own: the ring-buffer reader never waits on the network.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture};
use monitor_core::device_info::DeviceInfo;
use monitor_hunt::{Spool, SpooledEvent};
use serde::Serialize;
use tokio::sync::watch;

use crate::FleetError;
use crate::nats::{NatsOptions, STREAM, SUBJECT_PREFIX, subject_token};

/// Acknowledgements awaited at once: enough to keep a link busy, few enough that a failure resends little.
pub const MAX_IN_FLIGHT: usize = 512;
/// Events read from the spool at a time. Retention spares this many unexported events
/// ([`monitor_hunt::gaps::EXPORT_WINDOW`]), so that none of a batch is deleted while it is being published.
pub const SPOOL_BATCH: usize = monitor_hunt::gaps::EXPORT_WINDOW;
/// How often an idle exporter looks for new events.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often `monitor status`'s export lag is measured while a backlog drains (it is measured at once
/// when the export is idle or fails).
const LAG_REFRESH: Duration = Duration::from_secs(1);
/// Waits between attempts after a failure: doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// What `monitor run --export` was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    pub nats: NatsOptions,
    /// Replicas of the stream when the exporter creates it.
    pub replicas: usize,
    /// How often the agent sends its heartbeat ([`Exporter::heartbeat`]).
    pub heartbeat_interval: Duration,
}

/// How often an agent sends its heartbeat unless told otherwise; `monitor devices` calls an agent stale
/// after four of them are missed.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

impl ExportOptions {
    /// Options for the servers `nats`, with one replica and the default heartbeat.
    pub fn new(nats: NatsOptions) -> ExportOptions {
        ExportOptions { nats, replicas: 1, heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL }
    }
}

/// What `monitor status` shows about the export.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExportStatus {
    pub servers: Vec<String>,
    pub connected: bool,
    /// Every event up to this Seq is acknowledged by JetStream.
    pub acked_seq: u64,
    /// Events acknowledged since the daemon started.
    pub exported: u64,
    /// Stored events not acknowledged yet, and the age in seconds of the next one to export (the first in Seq
    /// order); measured at most once a second while a backlog drains.
    pub lag_rows: u64,
    pub lag_seconds: f64,
    /// Seconds since the last acknowledgement (none yet: `null`).
    pub last_ack_seconds_ago: Option<f64>,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Heartbeats acknowledged since the daemon started.
    pub heartbeats: u64,
    /// Events retention deleted before they were exported (each gap is exported as a `MonitorExportGap`
    /// row), over the store's life.
    pub gap_events: u64,
}

struct Shared {
    status: Mutex<ExportStatus>,
    last_ack: Mutex<Option<Instant>>,
    /// The latest heartbeat not yet sent: a newer one replaces it.
    heartbeat: Mutex<Option<DeviceInfo>>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut ExportStatus)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn failed(&self, error: &FleetError) {
        let text = error.to_string();
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        // Said once per distinct failure, not once per retry.
        if status.last_error.as_deref() != Some(text.as_str()) {
            tracing::warn!("export: {text} (the events wait in the store and are sent when it works again)");
        }
        status.errors += 1;
        status.connected = false;
        status.last_error = Some(text);
    }
}

/// A running exporter; stopped (after its in-flight acknowledgements, bounded) when dropped.
pub struct Exporter {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Starts exporting the events of the store at `store` as device `device_id`. Returns at once: NATS
    /// being unreachable is not an error here but a state, in [`Exporter::status`] and the log.
    pub fn start(store: &Path, device_id: &str, options: ExportOptions) -> Result<Exporter, FleetError> {
        if device_id.is_empty() {
            return Err(FleetError::Config("the export needs a DeviceId".into()));
        }
        // Open now, so that a store that cannot be read is an error at start rather than in the log.
        let spool = Spool::open(store).map_err(|e| FleetError::Store(e.to_string()))?;
        // From now on retention counts what it deletes before it was exported.
        spool.enable_export().map_err(|e| FleetError::Store(e.to_string()))?;
        let gap_events = spool.gap_events().map_err(|e| FleetError::Store(e.to_string()))?;
        let shared = Arc::new(Shared {
            status: Mutex::new(ExportStatus {
                servers: options.nats.servers.clone(),
                gap_events,
                ..ExportStatus::default()
            }),
            last_ack: Mutex::new(None),
            heartbeat: Mutex::new(None),
        });
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FleetError::Io { what: "start the exporter's runtime".into(), source: e })?;
        let task = ExportTask { spool, options, shared: Arc::clone(&shared), stopped, lag_measured: None };
        let thread = std::thread::Builder::new()
            .name("export".into())
            .spawn(move || runtime.block_on(task.run()))
            .map_err(|e| FleetError::Io { what: "start the exporter thread".into(), source: e })?;
        Ok(Exporter { shared, stop, thread: Some(thread) })
    }

    pub fn status(&self) -> ExportStatus {
        let mut status = self.shared.status.lock().unwrap_or_else(PoisonError::into_inner).clone();
        status.last_ack_seconds_ago = self
            .shared
            .last_ack
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|t| t.elapsed().as_secs_f64());
        status
    }

    /// Hands over the device's heartbeat, sent beside the events as soon as the exporter gets to it (within
    /// [`IDLE_POLL`] when idle, between two batches when a backlog drains). Not spooled: one that cannot be
    /// sent is replaced by the next, since a heartbeat speaks of now.
    pub fn heartbeat(&self, info: DeviceInfo) {
        *self.shared.heartbeat.lock().unwrap_or_else(PoisonError::into_inner) = Some(info);
    }

    /// Stops the exporter; what it has not sent stays in the store for the next run.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("export: the exporter thread panicked");
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct ExportTask {
    spool: Spool,
    options: ExportOptions,
    shared: Arc<Shared>,
    stopped: watch::Receiver<bool>,
    /// When the lag was last measured: while a backlog drains, at most every [`LAG_REFRESH`].
    lag_measured: Option<Instant>,
}

impl ExportTask {
    async fn run(mut self) {
        let mut backoff = BACKOFF.0;
        while !*self.stopped.borrow() {
            match self.session().await {
                Ok(()) => return,
                Err(e) => {
                    self.shared.failed(&e);
                    self.refresh_lag();
                    if self.sleep(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    }

    /// Sleeps for `duration` unless asked to stop first; true when asked to stop.
    async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => *self.stopped.borrow(),
            _ = self.stopped.changed() => true,
        }
    }

    /// After a batch: the acknowledged Seq at once, the lag (a count over the backlog) at most every
    /// [`LAG_REFRESH`].
    fn batch_done(&mut self, cursor: u64) {
        self.shared.update(|s| s.acked_seq = cursor);
        if self.lag_measured.is_none_or(|at| at.elapsed() >= LAG_REFRESH) {
            self.refresh_lag();
        }
    }

    fn refresh_lag(&mut self) {
        self.lag_measured = Some(Instant::now());
        let Ok(cursor) = self.spool.cursor() else { return };
        if let Ok(gap_events) = self.spool.gap_events() {
            self.shared.update(|s| s.gap_events = gap_events);
        }
        if let Ok((rows, oldest)) = self.spool.lag(cursor) {
            let now = monitor_hunt::time::now_micros();
            self.shared.update(|s| {
                s.acked_seq = cursor;
                s.lag_rows = rows;
                s.lag_seconds = oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
            });
        }
    }

    /// Connects, makes sure the stream exists, and exports until asked to stop (`Ok`) or a failure.
    async fn session(&mut self) -> Result<(), FleetError> {
        let client = self.options.nats.connect("monitor export").await?;
        let js = jetstream::new(client);
        js.get_or_create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            num_replicas: self.options.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| FleetError::Nats(format!("create or find the stream {STREAM}: {e}")))?;
        self.shared.update(|s| s.connected = true);
        tracing::info!("export: connected to {}, stream {STREAM}", self.options.nats.servers.join(","));
        let mut cursor = self.spool.cursor().map_err(|e| FleetError::Store(e.to_string()))?;
        // Acknowledgements stay in flight across batches, so the window never empties between them. What has
        // been read is at most EXPORT_WINDOW events past the cursor (the events retention spares): `published`
        // is the last Seq sent, and each read asks for what the window has room for.
        let mut in_flight: VecDeque<(u64, PublishAckFuture)> = VecDeque::with_capacity(MAX_IN_FLIGHT);
        let mut published = cursor;
        loop {
            if *self.stopped.borrow() {
                return Ok(());
            }
            self.send_heartbeat(&js).await?;
            let room = SPOOL_BATCH.saturating_sub(in_flight.len()).max(1);
            let batch = self.spool.after(published, room).map_err(|e| FleetError::Store(e.to_string()))?;
            if batch.is_empty() {
                let result = self.drain(&mut in_flight, &mut cursor).await;
                self.spool.set_cursor(cursor).map_err(|e| FleetError::Store(e.to_string()))?;
                self.refresh_lag();
                result?;
                if self.sleep(IDLE_POLL).await {
                    return Ok(());
                }
                continue;
            }
            let result = self.publish(&js, &batch, &mut in_flight, &mut published, &mut cursor).await;
            // Whatever was acknowledged before a failure stays acknowledged.
            self.spool.set_cursor(cursor).map_err(|e| FleetError::Store(e.to_string()))?;
            if result.is_ok() {
                self.batch_done(cursor);
            } else {
                self.refresh_lag();
            }
            result?;
            self.shared.update(|s| {
                s.connected = true;
                s.last_error = None;
            });
        }
    }

    /// Publishes the heartbeat waiting, if any, and waits for its acknowledgement. One that fails is put
    /// back unless a newer one came meanwhile.
    async fn send_heartbeat(&self, js: &jetstream::Context) -> Result<(), FleetError> {
        let Some(info) = self.shared.heartbeat.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return Ok(());
        };
        let (subject, headers, payload) = match crate::heartbeat::message(&info) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!("export: heartbeat not sent: {e}");
                return Ok(());
            }
        };
        let sent = async {
            js.publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| FleetError::Nats(format!("publish a heartbeat: {e}")))?
                .await
                .map_err(|e| FleetError::Nats(format!("acknowledgement of a heartbeat: {e}")))
        }
        .await;
        match sent {
            Ok(_) => {
                self.shared.update(|s| s.heartbeats += 1);
                Ok(())
            }
            Err(e) => {
                self.shared.heartbeat.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(info);
                Err(e)
            }
        }
    }

    /// Publishes `batch` in order, keeping at most [`MAX_IN_FLIGHT`] acknowledgements outstanding;
    /// `published` follows what was sent, `cursor` the acknowledged prefix.
    async fn publish(
        &self,
        js: &jetstream::Context,
        batch: &[SpooledEvent],
        in_flight: &mut VecDeque<(u64, PublishAckFuture)>,
        published: &mut u64,
        cursor: &mut u64,
    ) -> Result<(), FleetError> {
        for event in batch {
            if in_flight.len() >= MAX_IN_FLIGHT
                && let Some((seq, ack)) = in_flight.pop_front()
            {
                self.await_ack(seq, ack, cursor).await?;
            }
            let (subject, headers, payload) = match message(event) {
                Ok(message) => message,
                Err(e) => {
                    // Not exportable (no DeviceId: written by something other than the daemon). Skipped,
                    // so that one such row cannot hold up every event after it.
                    self.drain(in_flight, cursor).await?;
                    tracing::warn!("export: skipped: {e}");
                    *cursor = event.seq;
                    *published = event.seq;
                    continue;
                }
            };
            let ack = js
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| FleetError::Nats(format!("publish Seq {}: {e}", event.seq)))?;
            in_flight.push_back((event.seq, ack));
            *published = event.seq;
        }
        Ok(())
    }

    /// Waits for every acknowledgement in flight, in order.
    async fn drain(
        &self,
        in_flight: &mut VecDeque<(u64, PublishAckFuture)>,
        cursor: &mut u64,
    ) -> Result<(), FleetError> {
        while let Some((seq, ack)) = in_flight.pop_front() {
            self.await_ack(seq, ack, cursor).await?;
        }
        Ok(())
    }

    async fn await_ack(&self, seq: u64, ack: PublishAckFuture, cursor: &mut u64) -> Result<(), FleetError> {
        ack.await.map_err(|e| FleetError::Nats(format!("acknowledgement of Seq {seq}: {e}")))?;
        *cursor = seq;
        *self.shared.last_ack.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.shared.update(|s| s.exported += 1);
        Ok(())
    }
}

/// The message for one event: its subject, the message id header and the event as JSON.
pub fn message(event: &SpooledEvent) -> Result<(String, async_nats::HeaderMap, bytes::Bytes), FleetError> {
    let device_id = event.device_id.as_deref().unwrap_or("");
    if device_id.is_empty() {
        return Err(FleetError::Store(format!("the stored event with Seq {} has no DeviceId", event.seq)));
    }
    let subject = format!(
        "{SUBJECT_PREFIX}.{}.{}",
        event.table,
        subject_token(event.device_name.as_deref().unwrap_or(""))
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("{device_id}:{}", event.seq).as_str());
    Ok((subject, headers, bytes::Bytes::copy_from_slice(&event.json)))
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").field("status", &self.status()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_table_device_and_id() {
        let event = SpooledEvent::from_event(
            42,
            "DeviceEvents",
            &serde_json::json!({"DeviceId": "abc", "DeviceName": "web.1", "Seq": 42, "Table": "DeviceEvents"}),
        );
        let (subject, headers, payload) = message(&event).expect("a valid event");
        assert_eq!(subject, "monitor.events.DeviceEvents.web_1");
        assert_eq!(headers.get(async_nats::header::NATS_MESSAGE_ID).map(|v| v.as_str()), Some("abc:42"));
        let back: serde_json::Value = serde_json::from_slice(&payload).expect("JSON payload");
        assert_eq!(back, event.event());
        let anonymous = SpooledEvent::from_event(1, "DeviceEvents", &serde_json::json!({"Seq": 1}));
        assert!(
            message(&anonymous).is_err(),
            "an event without a DeviceId is not exported under a made-up id"
        );
    }
}

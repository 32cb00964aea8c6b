//! The central ingest: the stream `MONITOR_EVENTS` into ClickHouse.
//!
//! A durable pull consumer (several ingest processes may share it) hands out batches; the valid events of
//! a batch are inserted into their tables and acknowledged only after ClickHouse accepted them. A message
//! that is not a valid event is republished to `monitor.deadletter` (kept by the stream
//! `MONITOR_DEADLETTER`), counted, and acknowledged. While ClickHouse is down the batch stays
//! unacknowledged (its acknowledgement deadline pushed on) and is retried with backoff.
//!
//! Each message is written straight into its table's JSONEachRow lines ([`crate::row`]), and a batch is
//! inserted on a blocking thread while the next one is fetched and written.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::sync::watch;

use crate::FleetError;
use crate::clickhouse::{ClickHouse, FleetSql as _};
use crate::nats::{DEADLETTER_STREAM, DEADLETTER_SUBJECT, NatsOptions, STREAM, SUBJECT_PREFIX};
use crate::row::{InvalidEvent, Row};
use monitor_hunt::schema::{DEVICE_INFO, TABLES};

/// The durable consumer's name unless told otherwise.
pub const DEFAULT_CONSUMER: &str = "monitor-ingest";
/// Messages per batch (one fetch, one insert per table) unless told otherwise. ClickHouse writes a part per
/// insert and merges them afterwards: on 18.16, 5,000-row inserts cost it four times the CPU per row that
/// 20,000-row ones do (measured by `cargo xtask bench`'s fleet part).
pub const DEFAULT_BATCH: usize = 20_000;
/// How long JetStream waits for an acknowledgement before it delivers a message again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long one fetch waits for messages when the stream is quiet.
const FETCH_WAIT: Duration = Duration::from_millis(500);
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));
/// Headers of a dead letter.
pub const REASON_HEADER: &str = "Monitor-Deadletter-Reason";
pub const SUBJECT_HEADER: &str = "Monitor-Original-Subject";

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub nats: NatsOptions,
    pub clickhouse: ClickHouse,
    pub consumer: String,
    pub batch: usize,
}

/// What the ingest has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestCounts {
    /// Events ClickHouse accepted (a redelivered one counts again here, not in ClickHouse's answers).
    pub ingested: u64,
    pub dead_lettered: u64,
    pub batches: u64,
    /// Inserts that ClickHouse refused or did not answer (each retried).
    pub clickhouse_failures: u64,
    pub nats_failures: u64,
}

fn backoff_next(current: Duration) -> Duration {
    (current * 2).min(BACKOFF.1)
}

/// Runs the ingest until `stop` turns true.
pub async fn run(
    options: &IngestOptions,
    mut stop: watch::Receiver<bool>,
    counts: Arc<Mutex<IngestCounts>>,
) -> Result<(), FleetError> {
    let mut backoff = BACKOFF.0;
    let mut last_error = String::new();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match session(options, &mut stop, &counts).await {
            Ok(()) => return Ok(()),
            Err(e @ FleetError::Config(_)) => return Err(e),
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!("ingest: {text}; retrying");
                    last_error = text;
                }
                counts.lock().unwrap_or_else(PoisonError::into_inner).nats_failures += 1;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return Ok(()),
                }
                backoff = backoff_next(backoff);
            }
        }
    }
}

async fn session(
    options: &IngestOptions,
    stop: &mut watch::Receiver<bool>,
    counts: &Arc<Mutex<IngestCounts>>,
) -> Result<(), FleetError> {
    let client = options.nats.connect("monitor ingest").await?;
    let js = jetstream::new(client);
    let nats = |what: &'static str| move |e: &dyn std::fmt::Display| FleetError::Nats(format!("{what}: {e}"));
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            ..Default::default()
        })
        .await
        .map_err(|e| nats("find or create the stream MONITOR_EVENTS")(&e))?;
    js.get_or_create_stream(jetstream::stream::Config {
        name: DEADLETTER_STREAM.into(),
        subjects: vec![DEADLETTER_SUBJECT.into()],
        ..Default::default()
    })
    .await
    .map_err(|e| nats("find or create the stream MONITOR_DEADLETTER")(&e))?;
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            &options.consumer,
            jetstream::consumer::pull::Config {
                durable_name: Some(options.consumer.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: i64::try_from(options.batch * 4).unwrap_or(i64::MAX),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| nats("find or create the durable consumer")(&e))?;
    with_clickhouse_retry(options, stop, counts, &[], None, || options.clickhouse.ensure_schema()).await?;
    tracing::info!("ingest: reading {STREAM} as {} into {}", options.consumer, options.clickhouse.url());
    // One batch is committed (inserted, then acknowledged) while the next is fetched and written.
    let mut committing: Option<tokio::task::JoinHandle<Result<(), FleetError>>> = None;
    loop {
        let stopping = *stop.borrow();
        let mut messages = Vec::new();
        if !stopping {
            let mut fetched = consumer
                .fetch()
                .max_messages(options.batch)
                .expires(FETCH_WAIT)
                .messages()
                .await
                .map_err(|e| nats("fetch")(&e))?;
            messages.reserve(options.batch);
            while let Some(message) = fetched.next().await {
                messages.push(message.map_err(|e| nats("fetch")(&e))?);
            }
        }
        let mut batch = Batch::default();
        let mut valid = Vec::with_capacity(messages.len());
        for message in messages {
            match batch.add(&message.subject, &message.payload) {
                Ok(()) => valid.push(message),
                Err(reason) => {
                    dead_letter(&js, &message, &reason.to_string()).await?;
                    message.ack().await.map_err(|e| nats("acknowledge a dead letter")(&e))?;
                    counts.lock().unwrap_or_else(PoisonError::into_inner).dead_lettered += 1;
                }
            }
        }
        if let Some(mut previous) = committing.take() {
            loop {
                tokio::select! {
                    done = &mut previous => {
                        done.map_err(|e| FleetError::ClickHouse(format!("the insert task failed: {e}")))??;
                        break;
                    }
                    // The previous batch is being retried: this one is kept from redelivery meanwhile.
                    _ = tokio::time::sleep(ACK_WAIT / 3) => {
                        for message in &valid {
                            message.ack_with(AckKind::Progress).await.map_err(|e| nats("extend the acknowledgement deadline")(&e))?;
                        }
                    }
                }
            }
        }
        if stopping {
            return Ok(());
        }
        if !valid.is_empty() {
            committing =
                Some(tokio::spawn(commit(options.clone(), stop.clone(), Arc::clone(counts), batch, valid)));
        }
    }
}

/// Inserts `batch` (retrying while ClickHouse fails), then acknowledges its `messages` and counts them.
async fn commit(
    options: IngestOptions,
    mut stop: watch::Receiver<bool>,
    counts: Arc<Mutex<IngestCounts>>,
    batch: Batch,
    messages: Vec<jetstream::Message>,
) -> Result<(), FleetError> {
    let clickhouse = options.clickhouse.clone();
    let (result, batch) = tokio::task::spawn_blocking(move || (batch.insert_into(&clickhouse), batch))
        .await
        .map_err(|e| FleetError::ClickHouse(format!("the insert thread failed: {e}")))?;
    if let Err(e) = result {
        with_clickhouse_retry(&options, &mut stop, &counts, &messages, Some(e), || {
            batch.insert_into(&options.clickhouse)
        })
        .await?;
    }
    for message in &messages {
        message.ack().await.map_err(|e| FleetError::Nats(format!("acknowledge: {e}")))?;
    }
    let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
    counts.ingested += messages.len() as u64;
    counts.batches += 1;
    Ok(())
}

/// The rows of one fetch, as JSONEachRow lines per table: the event tables', then DeviceInfo's.
#[derive(Default)]
struct Batch {
    lines: [Vec<u8>; TABLES.len()],
    heartbeats: Vec<u8>,
}

impl Batch {
    /// Writes the event or heartbeat (which the subject says) in `payload` straight onto its table's lines.
    fn add(&mut self, subject: &str, payload: &[u8]) -> Result<(), InvalidEvent> {
        if crate::heartbeat::is_heartbeat_subject(subject) {
            return crate::heartbeat::encode_info(payload, &mut self.heartbeats);
        }
        let row = Row::parse(payload)?;
        let index = TABLES.iter().position(|t| *t == row.table).unwrap_or_default();
        row.write(&mut self.lines[index])
    }

    fn insert_into(&self, clickhouse: &ClickHouse) -> Result<(), FleetError> {
        TABLES
            .iter()
            .zip(&self.lines)
            .try_for_each(|(table, lines)| clickhouse.insert_lines(table, lines))?;
        clickhouse.insert_lines(DEVICE_INFO, &self.heartbeats)
    }
}

/// Runs `attempt` (blocking HTTP) until it succeeds, saying once that ClickHouse fails and when it works
/// again. Meanwhile the `pending` messages are kept from being delivered again. Returns `Ok` also when
/// asked to stop; the caller checks `stop`.
async fn with_clickhouse_retry(
    options: &IngestOptions,
    stop: &mut watch::Receiver<bool>,
    counts: &Mutex<IngestCounts>,
    pending: &[jetstream::Message],
    mut failed: Option<FleetError>,
    mut attempt: impl FnMut() -> Result<(), FleetError>,
) -> Result<(), FleetError> {
    let mut backoff = BACKOFF.0;
    let mut failing = false;
    loop {
        // A blocking call on this runtime's worker: the ingest has a multi-threaded runtime of its own,
        // so the NATS client's tasks go on meanwhile. `failed` is an attempt made before.
        let result = match failed.take() {
            Some(e) => Err(e),
            None => tokio::task::block_in_place(&mut attempt),
        };
        match result {
            Ok(()) => {
                if failing {
                    tracing::info!("ingest: ClickHouse at {} accepts again", options.clickhouse.url());
                }
                return Ok(());
            }
            Err(e) => {
                counts.lock().unwrap_or_else(PoisonError::into_inner).clickhouse_failures += 1;
                if !failing {
                    tracing::warn!(
                        "ingest: {e}; {} events stay unacknowledged and are retried with backoff",
                        pending.len()
                    );
                    failing = true;
                }
                for message in pending {
                    message
                        .ack_with(AckKind::Progress)
                        .await
                        .map_err(|e| FleetError::Nats(format!("extend the acknowledgement deadline: {e}")))?;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return Err(FleetError::ClickHouse(format!("stopped while {} was failing", options.clickhouse.url()))),
                }
                backoff = backoff_next(backoff);
            }
        }
    }
}

async fn dead_letter(
    js: &jetstream::Context,
    message: &jetstream::Message,
    reason: &str,
) -> Result<(), FleetError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(REASON_HEADER, reason);
    headers.insert(SUBJECT_HEADER, message.subject.as_str());
    // The same id for the same message, so a dead letter republished after a crash is kept once.
    if let Ok(info) = message.info() {
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("deadletter:{}", info.stream_sequence).as_str(),
        );
    }
    js.publish_with_headers(DEADLETTER_SUBJECT, headers, message.payload.clone())
        .await
        .map_err(|e| FleetError::Nats(format!("publish a dead letter: {e}")))?
        .await
        .map_err(|e| FleetError::Nats(format!("acknowledgement of a dead letter: {e}")))?;
    tracing::warn!(
        "ingest: a message on {} is not an event ({reason}); sent to {DEADLETTER_SUBJECT}",
        message.subject
    );
    Ok(())
}

/// An ingest running on a thread of its own (for the tests and the benchmarks); stopped when dropped.
pub struct Ingest {
    counts: Arc<Mutex<IngestCounts>>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<Result<(), FleetError>>>,
}

impl Ingest {
    pub fn start(options: IngestOptions) -> Result<Ingest, FleetError> {
        let counts = Arc::new(Mutex::new(IngestCounts::default()));
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| FleetError::Io { what: "start the ingest's runtime".into(), source: e })?;
        let shared = Arc::clone(&counts);
        let thread = std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || runtime.block_on(run(&options, stopped, shared)))
            .map_err(|e| FleetError::Io { what: "start the ingest thread".into(), source: e })?;
        Ok(Ingest { counts, stop, thread: Some(thread) })
    }

    pub fn counts(&self) -> IngestCounts {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stops the ingest and returns how it ended.
    pub fn stop(mut self) -> Result<(), FleetError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), FleetError> {
        let _ = self.stop.send(true);
        match self.thread.take() {
            Some(thread) => {
                thread.join().unwrap_or_else(|_| Err(FleetError::Nats("the ingest thread panicked".into())))
            }
            None => Ok(()),
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("ingest: {e}");
        }
    }
}

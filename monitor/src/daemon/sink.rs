//! Where events go: JSON lines to stdout or a file (flushed after each wake-up of the event loop, so a
//! reader sees an event within a loop turn of its record, with one write per batch, not per event), and
//! the embedded store.

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use anyhow::Context as _;
use monitor_core::event::DeviceEvent;
use monitor_hunt::schema::StoredEvent;

pub struct Sink {
    out: Box<dyn Write + Send>,
    store: Option<EventStore>,
    pub device_name: String,
    pub device_id: String,
    next_report_id: u64,
    next_seq: u64,
    pub emitted: u64,
    /// Events the JSON-lines sink could not write: a failed flush counts every event of its turn (the
    /// writer keeps their bytes, so a later flush may still write some of them).
    pub write_errors: u64,
    /// Events written since the last flush: lost with it if it fails.
    unflushed: u64,
    /// Events for the store, handed to its thread in one go per flush (or per [`STORE_BATCH`]).
    stored: Vec<StoredEvent>,
}

/// The most events handed to the store's thread at once.
const STORE_BATCH: usize = 1024;

pub fn device_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The stable device identity: the systemd machine id (the same file D-Bus and journald use).
pub fn machine_id() -> anyhow::Result<String> {
    let path = "/etc/machine-id";
    let id = std::fs::read_to_string(path)
        .with_context(|| format!("read {path} (or set device_id in the configuration)"))?;
    let id = id.trim();
    if id.is_empty() {
        anyhow::bail!("{path} is empty (set device_id in the configuration)");
    }
    Ok(id.to_string())
}

/// Where Seq starts without a store to remember it: the time in microseconds, which keeps rising across
/// restarts as long as the clock does and the daemon emits fewer than a million events a second.
fn seq_without_store() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64)
}

fn open_events(events: &str) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(if events == "-" {
        Box::new(std::io::stdout())
    } else {
        // Events name processes and destinations: not for every local user to read.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(Path::new(events))
            .with_context(|| format!("open the events file {events}"))?;
        Box::new(BufWriter::new(file))
    })
}

impl Sink {
    pub fn open(events: &str, store: Option<EventStore>, device_id: String) -> anyhow::Result<Sink> {
        let out = open_events(events)?;
        let next_seq = store.as_ref().map_or_else(seq_without_store, EventStore::first_seq);
        Ok(Sink {
            out,
            store,
            device_name: device_name(),
            device_id,
            next_report_id: 1,
            next_seq,
            emitted: 0,
            write_errors: 0,
            unflushed: 0,
            stored: Vec::new(),
        })
    }

    /// Open the events file again (SIGHUP): after a rotation, or for a new path. On failure the old one
    /// stays in use.
    pub fn reopen_events(&mut self, events: &str) -> anyhow::Result<()> {
        let out = open_events(events)?;
        self.flush_events();
        self.out = out;
        Ok(())
    }

    /// Put another store in place (SIGHUP with a new path or retention) and close the old one, which
    /// writes what it still holds. `None`: no store from now on.
    pub fn replace_store(&mut self, store: Option<EventStore>) -> anyhow::Result<()> {
        if let Some(store) = &store {
            self.next_seq = self.next_seq.max(store.first_seq());
        }
        // Events not handed over yet belong to the old store.
        self.hand_to_store();
        match std::mem::replace(&mut self.store, store) {
            Some(old) => old.close().context("close the previous event store"),
            None => Ok(()),
        }
    }

    pub fn next_report_id(&mut self) -> u64 {
        let id = self.next_report_id;
        self.next_report_id += 1;
        id
    }

    /// Writes `event` with this device's `DeviceId` and the next `Seq`.
    pub fn emit(&mut self, mut event: DeviceEvent) {
        event.device_id.clone_from(&self.device_id);
        event.seq = self.next_seq;
        self.next_seq += 1;
        let line = if self.store.is_some() {
            let table = event.table.name();
            let (line, cells) = event.into_line_and_cells();
            self.stored.push(StoredEvent { table, cells });
            line
        } else {
            event.to_json_line()
        };
        if writeln!(self.out, "{line}").is_ok() {
            self.unflushed += 1;
        } else {
            self.write_errors += 1;
        }
        if self.stored.len() >= STORE_BATCH {
            self.hand_to_store();
        }
        self.emitted += 1;
    }

    /// Writes out the events emitted since the last call (the event loop calls it at the end of each turn).
    pub fn flush_events(&mut self) {
        self.hand_to_store();
        if self.unflushed == 0 {
            return;
        }
        if self.out.flush().is_err() {
            self.write_errors += self.unflushed;
        }
        self.unflushed = 0;
    }

    fn hand_to_store(&mut self) {
        if let Some(store) = &self.store
            && !self.stored.is_empty()
        {
            store.send_stored(std::mem::replace(&mut self.stored, Vec::with_capacity(STORE_BATCH)));
        }
    }

    pub fn store(&self) -> Option<&EventStore> {
        self.store.as_ref()
    }

    pub fn close(mut self) -> anyhow::Result<()> {
        self.hand_to_store();
        let Sink { mut out, store, .. } = self;
        out.flush().context("flush events")?;
        if let Some(store) = store {
            store.close().context("close the event store")?;
        }
        Ok(())
    }
}

/// The embedded store the events also go to.
pub type EventStore = monitor_hunt::StoreWriter;

pub fn open_store(path: &Path, retention: monitor_hunt::Retention) -> anyhow::Result<EventStore> {
    Ok(monitor_hunt::StoreWriter::open(path, retention)?)
}

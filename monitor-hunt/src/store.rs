//! The event store: one SQLite database in WAL mode, written by one background thread, read by `hunt`
//! and `timeline` while the daemon writes.
//!
//! Durability: the database is in WAL mode with `synchronous=FULL`, so a transaction that has committed is
//! on disk (the WAL is fsynced at every commit) and survives a crash of the daemon *and* of the host.
//! `synchronous=NORMAL` would survive a daemon crash only. The price of FULL is one fsync per commit, and
//! the writer commits at most one batch per [`BATCH_INTERVAL`] under a trickle of events and one per
//! [`BATCH_MAX_EVENTS`] under load, so it stays a handful of fsyncs a second, off the event path.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql};

use crate::schema::{self, COLUMNS, Cell, StoredEvent, TABLES};
use crate::state::{STATE_EXPORT_CURSOR, STATE_EXPORT_ENABLED, STATE_SEQ_RESERVED, get_state, set_state};
use crate::time::{format_datetime, now_micros};

/// Events waiting for the writer thread; past this `send` drops and counts.
pub const CHANNEL_CAPACITY: usize = 16_384;
/// A batch is committed when it holds this many events...
pub const BATCH_MAX_EVENTS: usize = 500;
/// ...or when its first event has waited this long.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How often the writer enforces [`Retention`].
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(10);
/// The store's schema version, in `PRAGMA user_version`. Version 2 added `DeviceId`, `Seq` and the
/// `MonitorState` table (the Seq reservation and the export cursor); a version 1 store is upgraded in place.
pub const SCHEMA_VERSION: i64 = 2;
/// Seq numbers are reserved on disk this many at a time, ahead of the events that use them, so that a
/// daemon that crashes before its last events were committed never hands their Seq out again.
pub const SEQ_BLOCK: u64 = 1_000_000;
/// Size enforcement deletes down to this share of `max_bytes`, so that it does not run at every check.
const SIZE_LOW_WATER: f64 = 0.9;

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("create directory {path}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("create or secure store file {path}")]
    CreateFile { path: PathBuf, source: std::io::Error },
    #[error("no event store at {path} (is the daemon running with the store enabled?)")]
    Missing { path: PathBuf },
    #[error("{op} in store {path}")]
    Sqlite { op: &'static str, path: PathBuf, source: rusqlite::Error },
    #[error("store {path} has schema version {found}; this build reads version {supported}")]
    SchemaVersion { path: PathBuf, found: i64, supported: i64 },
    #[error("{path} is not an event store: table {table} is missing")]
    NotAStore { path: PathBuf, table: &'static str },
    #[error("the store writer thread for {path} has stopped")]
    WriterStopped { path: PathBuf },
    #[error("the store writer thread for {path} panicked")]
    WriterPanicked { path: PathBuf },
    #[error("start the store writer thread")]
    Spawn { source: std::io::Error },
}

/// How long and how much the store keeps. Enforced every [`RETENTION_INTERVAL`] by deleting the oldest
/// events; `None` keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this (by their Timestamp) are deleted.
    pub max_age: Option<Duration>,
    /// The database file (without its WAL, which checkpoints bound separately) is kept under this size.
    pub max_bytes: Option<u64>,
}

/// What one enforcement of [`Retention`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_by_age: u64,
    pub deleted_by_size: u64,
    /// Bytes in use by the database after enforcement.
    pub used_bytes: u64,
}

enum Command {
    Event(serde_json::Value),
    /// Typed events' cells, a batch at a time (one hand-off per batch, not a thread wake-up per event).
    Batch(Vec<StoredEvent>),
    Flush(mpsc::Sender<Result<(), StoreError>>),
    Retention(mpsc::Sender<Result<RetentionReport, StoreError>>),
}

struct Shared {
    dropped: AtomicU64,
    /// Events of [`Command::Batch`]es sent and not yet taken by the writer.
    queued: AtomicUsize,
    /// The first background failure not yet reported through `flush`.
    failure: Mutex<Option<StoreError>>,
}

impl Shared {
    fn record_failure(&self, error: StoreError) {
        tracing::warn!("event store: {error}");
        let mut slot = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(error);
    }

    fn take_failure(&self) -> Option<StoreError> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Writes events to the store from a background thread, so that the event path never waits on disk.
pub struct StoreWriter {
    sender: Option<SyncSender<Command>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
    first_seq: u64,
}

impl StoreWriter {
    /// Opens (creating if needed) the store at `path`: parent directories with mode 0700, the database with
    /// mode 0600, WAL mode, and the schema. Starts the writer thread.
    pub fn open(path: &Path, retention: Retention) -> Result<StoreWriter, StoreError> {
        let conn = open_for_writing(path)?;
        let (first_seq, seq_reserved) = reserve_first_seq(&conn).map_err(|source| StoreError::Sqlite {
            op: "reserve sequence numbers",
            path: path.to_path_buf(),
            source,
        })?;
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            failure: Mutex::new(None),
        });
        let (sender, receiver) = mpsc::sync_channel(CHANNEL_CAPACITY);
        let mut writer = Writer {
            conn,
            path: path.to_path_buf(),
            retention,
            shared: Arc::clone(&shared),
            seq_reserved,
            inserts: TABLES.map(schema::insert_statement),
        };
        // Enforce once at start, so that a store reopened after a long stop is trimmed at once.
        if retention != Retention::default()
            && let Err(e) = writer.enforce_retention()
        {
            shared.record_failure(e);
        }
        let thread = std::thread::Builder::new()
            .name("event-store".into())
            .spawn(move || writer.run(&receiver))
            .map_err(|source| StoreError::Spawn { source })?;
        Ok(StoreWriter {
            sender: Some(sender),
            shared,
            thread: Some(thread),
            path: path.to_path_buf(),
            first_seq,
        })
    }

    /// The first `Seq` this run may give an event: above every Seq stored or reserved by earlier runs. The
    /// caller numbers its events upwards from here; the writer keeps the reservation ahead of the events
    /// it commits.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Queues `event` for the store without waiting. When the queue is full (the disk cannot keep up) the
    /// event is dropped and counted in [`StoreWriter::dropped`]; the JSON-lines sink still has it.
    pub fn send(&self, event: &serde_json::Value) {
        let Some(sender) = &self.sender else { return };
        match sender.try_send(Command::Event(event.clone())) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// As [`StoreWriter::send`], for typed events (the daemon's path: `StoredEvent::from(DeviceEvent)`):
    /// their cells go to the writer thread as they are, with no JSON in between, in one hand-off. The
    /// queue holds at most [`CHANNEL_CAPACITY`] events; a batch that would pass it is dropped and counted.
    pub fn send_stored(&self, batch: Vec<StoredEvent>) {
        let Some(sender) = &self.sender else { return };
        let n = batch.len();
        if n == 0 {
            return;
        }
        let queued = self.shared.queued.fetch_add(n, Ordering::AcqRel);
        if queued + n > CHANNEL_CAPACITY || sender.try_send(Command::Batch(batch)).is_err() {
            self.shared.queued.fetch_sub(n, Ordering::AcqRel);
            self.shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Waits until every event sent so far is committed. Reports the first background failure (a batch
    /// that could not be committed) since the last flush.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (reply, answer) = mpsc::channel();
        self.command(Command::Flush(reply))?;
        let result = answer.recv().map_err(|_| StoreError::WriterStopped { path: self.path.clone() })?;
        match self.shared.take_failure() {
            Some(error) => Err(error),
            None => result,
        }
    }

    /// Commits what is pending and enforces the retention now, instead of at the next periodic check.
    pub fn enforce_retention(&self) -> Result<RetentionReport, StoreError> {
        let (reply, answer) = mpsc::channel();
        self.command(Command::Retention(reply))?;
        answer.recv().map_err(|_| StoreError::WriterStopped { path: self.path.clone() })?
    }

    /// Events not stored: dropped because the queue was full, malformed (not an object, no valid
    /// Timestamp), or in a batch that failed to commit.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes and stops the writer thread.
    pub fn close(mut self) -> Result<(), StoreError> {
        let flushed = self.flush();
        let joined = self.stop();
        flushed.and(joined)
    }

    fn command(&self, command: Command) -> Result<(), StoreError> {
        let sender =
            self.sender.as_ref().ok_or_else(|| StoreError::WriterStopped { path: self.path.clone() })?;
        sender.send(command).map_err(|_| StoreError::WriterStopped { path: self.path.clone() })
    }

    fn stop(&mut self) -> Result<(), StoreError> {
        // Closing the channel makes the thread commit what is left and return.
        self.sender = None;
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| StoreError::WriterPanicked { path: self.path.clone() }),
            None => Ok(()),
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("event store: {e}");
        }
    }
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter").field("path", &self.path).field("dropped", &self.dropped()).finish()
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    path: PathBuf,
    retention: Retention,
    shared: Arc<Shared>,
    /// Seq numbers up to this one are reserved on disk.
    seq_reserved: u64,
    /// The `INSERT` statement of each of [`TABLES`].
    inserts: [String; 2],
}

impl Writer {
    fn run(&mut self, receiver: &mpsc::Receiver<Command>) {
        let mut pending: Vec<StoredEvent> = Vec::with_capacity(BATCH_MAX_EVENTS);
        let mut batch_deadline: Option<Instant> = None;
        let mut next_retention = Instant::now() + RETENTION_INTERVAL;
        loop {
            let wake = batch_deadline.map_or(next_retention, |d| d.min(next_retention));
            match receiver.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Command::Batch(events)) => {
                    self.shared.queued.fetch_sub(events.len(), Ordering::AcqRel);
                    for event in events {
                        self.queue(event, &mut pending, &mut batch_deadline);
                    }
                }
                Ok(Command::Event(event)) => self.queue_json(&event, &mut pending, &mut batch_deadline),
                Ok(Command::Flush(reply)) => {
                    let result = self.commit(&mut pending);
                    batch_deadline = None;
                    // The caller may have given up waiting; nothing to do then.
                    let _ = reply.send(result);
                }
                Ok(Command::Retention(reply)) => {
                    let result = self.commit(&mut pending).and_then(|()| self.enforce_retention());
                    batch_deadline = None;
                    next_retention = Instant::now() + RETENTION_INTERVAL;
                    let _ = reply.send(result);
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    if batch_deadline.is_some_and(|d| d <= now) {
                        self.commit_in_background(&mut pending);
                        batch_deadline = None;
                    }
                    if next_retention <= now {
                        if self.retention != Retention::default()
                            && let Err(e) = self.enforce_retention()
                        {
                            self.shared.record_failure(e);
                        }
                        next_retention = now + RETENTION_INTERVAL;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.commit_in_background(&mut pending);
                    return;
                }
            }
        }
    }

    /// Files a JSON event as [`StoreWriter::send`] describes, then queues it; one that cannot be filed is
    /// counted as dropped.
    fn queue_json(
        &mut self,
        event: &serde_json::Value,
        pending: &mut Vec<StoredEvent>,
        batch_deadline: &mut Option<Instant>,
    ) {
        match schema::to_stored(event) {
            Ok(stored) => self.queue(stored, pending, batch_deadline),
            Err(reason) => {
                tracing::debug!("event store: event not stored: {reason}");
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Adds an event to the batch; commits the batch when it is full.
    fn queue(
        &mut self,
        event: StoredEvent,
        pending: &mut Vec<StoredEvent>,
        batch_deadline: &mut Option<Instant>,
    ) {
        pending.push(event);
        batch_deadline.get_or_insert_with(|| Instant::now() + BATCH_INTERVAL);
        if pending.len() >= BATCH_MAX_EVENTS {
            self.commit_in_background(pending);
            *batch_deadline = None;
        }
    }

    fn commit_in_background(&mut self, pending: &mut Vec<StoredEvent>) {
        if let Err(e) = self.commit(pending) {
            self.shared.record_failure(e);
        }
    }

    /// Commits `pending` in one transaction and empties it. A failed batch is counted as dropped.
    fn commit(&mut self, pending: &mut Vec<StoredEvent>) -> Result<(), StoreError> {
        if pending.is_empty() {
            return Ok(());
        }
        let count = pending.len() as u64;
        let result = insert_batch(&mut self.conn, &self.inserts, pending, &mut self.seq_reserved);
        pending.clear();
        result.map_err(|source| {
            self.shared.dropped.fetch_add(count, Ordering::Relaxed);
            StoreError::Sqlite { op: "commit a batch of events", path: self.path.clone(), source }
        })
    }

    fn enforce_retention(&mut self) -> Result<RetentionReport, StoreError> {
        let path = &self.path;
        let sqlite = |op| move |source| StoreError::Sqlite { op, path: path.clone(), source };
        let mut report = RetentionReport::default();
        if let Some(max_age) = self.retention.max_age {
            let age = i64::try_from(max_age.as_micros()).unwrap_or(i64::MAX);
            let cutoff = format_datetime(now_micros().saturating_sub(age));
            report.deleted_by_age = crate::gaps::delete_counting_gap(&self.conn, "Timestamp < ?1", &cutoff)
                .map_err(sqlite("delete events past the maximum age"))?;
        }
        if let Some(max_bytes) = self.retention.max_bytes {
            report.deleted_by_size =
                shrink_to(&self.conn, max_bytes).map_err(sqlite("delete the oldest events"))?;
        }
        if report.deleted_by_age + report.deleted_by_size > 0 {
            // Give the freed pages back to the file system, and move them out of the WAL into the file.
            drain(&self.conn, "PRAGMA incremental_vacuum").map_err(sqlite("vacuum"))?;
            drain(&self.conn, "PRAGMA wal_checkpoint(TRUNCATE)").map_err(sqlite("checkpoint"))?;
        }
        report.used_bytes = used_bytes(&self.conn).map_err(sqlite("measure the store"))?;
        Ok(report)
    }
}

/// A cell as an SQL parameter (the event's crate knows no SQL).
pub(crate) struct SqlCell<'a>(pub &'a Cell);

impl ToSql for SqlCell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Cell::Null => ValueRef::Null,
            Cell::Text(s) => ValueRef::Text(s.as_bytes()),
            Cell::Integer(i) => ValueRef::Integer(*i),
        }))
    }
}

fn insert_batch(
    conn: &mut Connection,
    inserts: &[String; 2],
    events: &[StoredEvent],
    seq_reserved: &mut u64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut max_seq = 0u64;
    for stored in events {
        if let Cell::Integer(seq) = stored.cells[schema::SEQ] {
            max_seq = max_seq.max(u64::try_from(seq).unwrap_or(0));
        }
        let insert = if stored.table == TABLES[0] { &inserts[0] } else { &inserts[1] };
        let mut statement = tx.prepare_cached(insert)?;
        statement.execute(rusqlite::params_from_iter(stored.cells.iter().map(SqlCell)))?;
    }
    // Keep the reservation half a block ahead of what is committed: the events still queued (at most the
    // channel's capacity) then always have reserved numbers, even if the daemon dies now.
    let reserved = if max_seq.saturating_add(SEQ_BLOCK / 2) > *seq_reserved {
        let reserved = max_seq.saturating_add(SEQ_BLOCK);
        set_state(&tx, STATE_SEQ_RESERVED, reserved)?;
        Some(reserved)
    } else {
        None
    };
    tx.commit()?;
    if let Some(reserved) = reserved {
        *seq_reserved = reserved;
    }
    Ok(())
}

/// The highest Seq in either table (0 in an empty store).
fn max_stored_seq(conn: &Connection) -> rusqlite::Result<u64> {
    let max: Option<i64> = conn.query_row(
        "SELECT max(m) FROM (SELECT max(Seq) AS m FROM DeviceNetworkEvents UNION ALL \
         SELECT max(Seq) FROM DeviceEvents)",
        [],
        |row| row.get(0),
    )?;
    Ok(max.map_or(0, |m| u64::try_from(m).unwrap_or(0)))
}

/// Picks this run's first Seq (above everything stored or reserved before) and reserves a block from it,
/// durably, before any event uses it.
fn reserve_first_seq(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    let previous = get_state(conn, STATE_SEQ_RESERVED)?.unwrap_or(0);
    let first = previous.max(max_stored_seq(conn)?) + 1;
    let reserved = first + SEQ_BLOCK;
    set_state(conn, STATE_SEQ_RESERVED, reserved)?;
    Ok((first, reserved))
}

/// Runs a statement to completion, reading and ignoring the rows it returns (some PRAGMAs work one row
/// at a time).
fn drain(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    let mut statement = conn.prepare(sql)?;
    let mut rows = statement.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

/// Bytes of the database in use: pages minus free pages.
fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pragma = |name: &str| conn.pragma_query_value(None, name, |row| row.get::<_, i64>(0));
    let pages = pragma("page_count")? - pragma("freelist_count")?;
    Ok(u64::try_from(pages * pragma("page_size")?).unwrap_or(0))
}

/// Deletes the oldest events, across both tables, until the database uses at most `max_bytes`.
fn shrink_to(conn: &Connection, max_bytes: u64) -> rusqlite::Result<u64> {
    let mut deleted = 0u64;
    // Each round deletes the share of rows by which the store is too big; rows differ in size, so a few
    // rounds may be needed.
    for _ in 0..32 {
        let used = used_bytes(conn)?;
        if used <= max_bytes {
            break;
        }
        // An exported store's window is not deletable (crate::gaps): the cut is made among the other rows.
        let deletable = crate::gaps::deletable(conn)?;
        let (total, candidates): (i64, i64) = conn.query_row(
            &format!(
                "SELECT (SELECT count(*) FROM DeviceNetworkEvents) + (SELECT count(*) FROM DeviceEvents), \
                 (SELECT count(*) FROM DeviceNetworkEvents WHERE {deletable}) + \
                 (SELECT count(*) FROM DeviceEvents WHERE {deletable})"
            ),
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        if candidates == 0 {
            break;
        }
        let keep = (total as f64 * (max_bytes as f64 * SIZE_LOW_WATER / used as f64)).floor() as i64;
        let remove = (total - keep).clamp(1, candidates);
        let cutoff: String = conn.query_row(
            &format!(
                "SELECT Timestamp FROM (SELECT Timestamp FROM DeviceNetworkEvents WHERE {deletable} UNION ALL \
                 SELECT Timestamp FROM DeviceEvents WHERE {deletable}) ORDER BY Timestamp LIMIT 1 OFFSET ?1"
            ),
            [remove - 1],
            |row| row.get(0),
        )?;
        deleted += crate::gaps::delete_counting_gap(conn, "Timestamp <= ?1", &cutoff)?;
    }
    Ok(deleted)
}

fn open_for_writing(path: &Path) -> Result<Connection, StoreError> {
    // Owner-only modes on Unix; on other systems the files inherit their folder's access list.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut dir = DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        dir.mode(0o700);
        dir.create(parent).map_err(|source| StoreError::CreateDir { path: parent.to_path_buf(), source })?;
    }
    // Create the file ourselves so that it is 0600 from the start; SQLite gives its -wal and -shm files
    // the database file's mode.
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    options.mode(0o600);
    let file =
        options.open(path).map_err(|source| StoreError::CreateFile { path: path.to_path_buf(), source })?;
    #[cfg(unix)]
    {
        let metadata =
            file.metadata().map_err(|source| StoreError::CreateFile { path: path.to_path_buf(), source })?;
        if metadata.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| StoreError::CreateFile { path: path.to_path_buf(), source })?;
        }
    }
    drop(file);

    let sqlite = |op| move |source| StoreError::Sqlite { op, path: path.to_path_buf(), source };
    let conn = Connection::open(path).map_err(sqlite("open"))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite("set the busy timeout"))?;
    let version = check_version(&conn, path)?;
    if version == 1 {
        // Version 1 had neither DeviceId nor Seq; their rows keep NULL there (and are not exported).
        let mut sql = String::from("BEGIN;");
        for table in TABLES {
            sql.push_str(&format!(
                "ALTER TABLE {table} ADD COLUMN DeviceId TEXT; ALTER TABLE {table} ADD COLUMN Seq INTEGER;"
            ));
        }
        sql.push_str("COMMIT;");
        conn.execute_batch(&sql).map_err(sqlite("upgrade the store to schema version 2"))?;
    }
    // auto_vacuum only takes effect before the first table exists, i.e. on a new store.
    conn.execute_batch(
        "PRAGMA auto_vacuum = INCREMENTAL;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA journal_size_limit = 8388608;",
    )
    .map_err(sqlite("configure"))?;
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .map_err(sqlite("read the journal mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Sqlite {
            op: "switch to WAL mode",
            path: path.to_path_buf(),
            source: rusqlite::Error::InvalidQuery,
        });
    }
    conn.execute_batch(&format!(
        "BEGIN; {} CREATE TABLE IF NOT EXISTS MonitorState (Key TEXT PRIMARY KEY, Value INTEGER NOT NULL); {} \
         PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;",
        schema::create_statements(),
        crate::gaps::CREATE
    ))
    .map_err(sqlite("create the tables"))?;
    Ok(conn)
}

fn check_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(|source| {
        StoreError::Sqlite { op: "read the schema version", path: path.to_path_buf(), source }
    })?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaVersion { path: path.to_path_buf(), found, supported: SCHEMA_VERSION });
    }
    Ok(found)
}

/// A read-only handle on the store, for `hunt` and `timeline`. Reads see the last committed state and do
/// not block the writer (WAL).
pub struct Store {
    pub(crate) conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens an existing store for reading.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing { path: path.to_path_buf() });
        }
        let sqlite = |op| move |source| StoreError::Sqlite { op, path: path.to_path_buf(), source };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite("open"))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite("set the busy timeout"))?;
        check_version(&conn, path)?;
        for table in TABLES {
            let exists: bool = conn
                .query_row(
                    "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |row| row.get(0),
                )
                .map_err(sqlite("read the schema"))?;
            if !exists {
                return Err(StoreError::NotAStore { path: path.to_path_buf(), table });
            }
        }
        Ok(Store { conn, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Events in both tables.
    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT (SELECT count(*) FROM DeviceNetworkEvents) + (SELECT count(*) FROM DeviceEvents)",
                [],
                |row| row.get(0),
            )
            .map_err(|source| StoreError::Sqlite { op: "count events", path: self.path.clone(), source })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// `PRAGMA integrity_check` passes.
    pub fn integrity_ok(&self) -> Result<bool, StoreError> {
        let answer: String =
            self.conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).map_err(|source| {
                StoreError::Sqlite { op: "check integrity", path: self.path.clone(), source }
            })?;
        Ok(answer == "ok")
    }

    /// Bytes of the database in use (pages minus free pages).
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        used_bytes(&self.conn).map_err(|source| StoreError::Sqlite {
            op: "measure the store",
            path: self.path.clone(),
            source,
        })
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// One stored event waiting for export: its Seq, table and device, and the event as the JSON text the
/// export publishes (written straight from the row, without a map in between).
#[derive(Debug, Clone, PartialEq)]
pub struct SpooledEvent {
    pub seq: u64,
    pub table: &'static str,
    pub device_id: Option<String>,
    pub device_name: Option<String>,
    /// A JSON object with the schema's keys, `Table` included.
    pub json: Vec<u8>,
}

impl SpooledEvent {
    /// An event given as a JSON object (its device read from it).
    pub fn from_event(seq: u64, table: &'static str, event: &serde_json::Value) -> SpooledEvent {
        let text = |key: &str| event.get(key).and_then(serde_json::Value::as_str).map(str::to_string);
        SpooledEvent {
            seq,
            table,
            device_id: text("DeviceId"),
            device_name: text("DeviceName"),
            json: serde_json::to_vec(event).unwrap_or_default(),
        }
    }

    /// The event as a JSON value.
    pub fn event(&self) -> serde_json::Value {
        serde_json::from_slice(&self.json).unwrap_or(serde_json::Value::Null)
    }
}

/// Appends `text` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// The exporter's side of the store, which is its spool: the events past the export cursor, and the
/// cursor itself. It has its own connection beside the writer thread's; WAL lets both work, and the
/// cursor is one small row written a few times a second at most.
pub struct Spool {
    conn: Connection,
    path: PathBuf,
}

impl Spool {
    /// Opens the spool of an existing store (the daemon's [`StoreWriter`] creates and upgrades it).
    pub fn open(path: &Path) -> Result<Spool, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing { path: path.to_path_buf() });
        }
        let sqlite = |op| move |source| StoreError::Sqlite { op, path: path.to_path_buf(), source };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite("open"))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite("set the busy timeout"))?;
        let found = check_version(&conn, path)?;
        if found != SCHEMA_VERSION {
            return Err(StoreError::SchemaVersion {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        // A store that an older writer made has no gap table yet.
        conn.execute_batch(crate::gaps::CREATE).map_err(sqlite("create the export gap table"))?;
        Ok(Spool { conn, path: path.to_path_buf() })
    }

    /// Marks the store as exported from: from now on retention counts the events it deletes before they
    /// were exported as gaps ([`crate::gaps`]).
    pub fn enable_export(&self) -> Result<(), StoreError> {
        set_state(&self.conn, STATE_EXPORT_ENABLED, 1).map_err(self.sqlite("mark the export"))
    }

    /// Marks the store as not exported from (a daemon without `--export`): retention deletes by its bounds
    /// alone again. The gaps recorded so far stay, and go out if the export comes back.
    pub fn disable_export(&self) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM MonitorState WHERE Key = ?1", [STATE_EXPORT_ENABLED])
            .map(|_| ())
            .map_err(self.sqlite("unmark the export"))
    }

    /// How many events retention deleted before the export shipped them, over the store's life.
    pub fn gap_events(&self) -> Result<u64, StoreError> {
        crate::gaps::gap_total(&self.conn).map_err(self.sqlite("count the export gaps"))
    }

    fn sqlite(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite { op, path: self.path.clone(), source }
    }

    /// The highest Seq acknowledged by the export (0 before the first).
    pub fn cursor(&self) -> Result<u64, StoreError> {
        Ok(get_state(&self.conn, STATE_EXPORT_CURSOR)
            .map_err(self.sqlite("read the export cursor"))?
            .unwrap_or(0))
    }

    /// Moves the export cursor: every event up to `seq` has been acknowledged.
    pub fn set_cursor(&self, seq: u64) -> Result<(), StoreError> {
        set_state(&self.conn, STATE_EXPORT_CURSOR, seq).map_err(self.sqlite("move the export cursor"))
    }

    /// Up to `limit` events with a Seq above `seq`, in Seq order, across both tables and the export gaps
    /// (each as its `MonitorExportGap` row).
    pub fn after(&self, seq: u64, limit: usize) -> Result<Vec<SpooledEvent>, StoreError> {
        let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut events = Vec::new();
        for table in TABLES {
            let sql =
                format!("SELECT {} FROM {table} WHERE Seq > ?1 ORDER BY Seq LIMIT ?2", names.join(", "));
            let mut statement = self.conn.prepare_cached(&sql).map_err(self.sqlite("read the spool"))?;
            let mut rows =
                statement.query(rusqlite::params![seq, limit]).map_err(self.sqlite("read the spool"))?;
            while let Some(row) = rows.next().map_err(self.sqlite("read the spool"))? {
                let mut event =
                    SpooledEvent { seq: 0, table, device_id: None, device_name: None, json: Vec::new() };
                let json = &mut event.json;
                json.reserve(768);
                json.extend_from_slice(b"{\"Table\":");
                push_json_str(json, table);
                for (i, (name, ty)) in COLUMNS.iter().enumerate() {
                    json.extend_from_slice(b",\"");
                    json.extend_from_slice(name.as_bytes());
                    json.extend_from_slice(b"\":");
                    match row.get_ref(i).map_err(self.sqlite("read the spool"))? {
                        ValueRef::Null => json.extend_from_slice(b"null"),
                        ValueRef::Integer(n) => {
                            // Into the Vec itself: no string per number.
                            let _ = write!(json, "{n}");
                            if *name == "Seq" {
                                event.seq = u64::try_from(n).unwrap_or(0);
                            }
                        }
                        ValueRef::Real(f) => {
                            // Not finite: null, as serde_json writes it.
                            let _ = serde_json::to_writer(&mut *json, &serde_json::Value::from(f));
                        }
                        ValueRef::Text(t) | ValueRef::Blob(t) => {
                            let text = String::from_utf8_lossy(t);
                            let is_json = || serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
                            if *ty == schema::ColumnType::Dynamic && is_json() {
                                // Stored as JSON text: it goes out as it is.
                                json.extend_from_slice(text.as_bytes());
                            } else {
                                push_json_str(json, &text);
                            }
                            match *name {
                                "DeviceId" => event.device_id = Some(text.into_owned()),
                                "DeviceName" => event.device_name = Some(text.into_owned()),
                                _ => {}
                            }
                        }
                    }
                }
                json.push(b'}');
                events.push(event);
            }
        }
        for (seq, event) in
            crate::gaps::gap_events_after(&self.conn, seq, limit).map_err(self.sqlite("read the gaps"))?
        {
            events.push(SpooledEvent::from_event(seq, TABLES[1], &event));
        }
        events.sort_by_key(|e| e.seq);
        events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(events)
    }

    /// Events with a Seq above `seq`, and the Timestamp (microseconds) of the first of them in Seq order (the
    /// next to export): the export lag. Both come from the Seq index (a count over it, and one lookup), so
    /// the cost does not grow with the rows' width.
    pub fn lag(&self, seq: u64) -> Result<(u64, Option<i64>), StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let (rows, oldest): (i64, Option<String>) = self
            .conn
            .query_row(
                "SELECT (SELECT count(*) FROM DeviceNetworkEvents WHERE Seq > ?1) \
                 + (SELECT count(*) FROM DeviceEvents WHERE Seq > ?1), \
                 (SELECT Timestamp FROM (\
                   SELECT * FROM (SELECT Seq, Timestamp FROM DeviceNetworkEvents WHERE Seq > ?1 ORDER BY Seq LIMIT 1) \
                   UNION ALL \
                   SELECT * FROM (SELECT Seq, Timestamp FROM DeviceEvents WHERE Seq > ?1 ORDER BY Seq LIMIT 1)) \
                  ORDER BY Seq LIMIT 1)",
                [seq],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(self.sqlite("measure the export lag"))?;
        Ok((u64::try_from(rows).unwrap_or(0), oldest.as_deref().and_then(crate::time::parse_datetime)))
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("path", &self.path).finish()
    }
}

//! The store: crash safety, reading while the daemon writes, retention, permissions.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use monitor_hunt::schema::StoredEvent;
use monitor_hunt::time::{format_datetime, now_micros};
use monitor_hunt::{Retention, Store, StoreWriter};

use crate::common::{synthetic_event, typed_event};

const CHILD_DB_ENV: &str = "MONITOR_HUNT_CRASH_CHILD_DB";
/// Events between the child's flushes.
const FLUSH_EVERY: u64 = 50;

fn count(store: &Store, query: &str) -> i64 {
    let result = store.query(query).unwrap_or_else(|e| panic!("{query}: {e}"));
    match result.rows.first().and_then(|r| r.first()) {
        Some(monitor_hunt::Value::Long(n)) => *n,
        other => panic!("{query}: expected one count, got {other:?}"),
    }
}

/// Not a test of its own: the body of the child process that `committed_events_survive_sigkill`
/// starts (by running this test binary again with `CHILD_DB_ENV` set) and kills.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_DB_ENV) else { return };
    let writer = StoreWriter::open(Path::new(&path), Retention::default()).expect("child opens the store");
    let mut stdout = std::io::stdout().lock();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0u64;
    // Bounded, so that a child whose parent died does not run on.
    while Instant::now() < deadline {
        writer.send(&synthetic_event(sent, &format_datetime(now_micros()), 64));
        sent += 1;
        if sent.is_multiple_of(FLUSH_EVERY) {
            writer.flush().expect("child flushes");
            assert_eq!(writer.dropped(), 0, "the child's queue never fills between flushes");
            writeln!(stdout, "flushed {sent}").expect("child writes to its parent");
            stdout.flush().expect("child flushes stdout");
        }
    }
}

#[test]
fn committed_events_survive_sigkill() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("events.db");
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args(["store::crash_child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the child writer");
    let stdout = child.stdout.take().expect("the child's stdout");
    let mut last_flushed = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read the child's stdout");
        if let Some(n) = line.strip_prefix("flushed ") {
            last_flushed = n.parse().expect("a count after 'flushed'");
            // Several thousand events in, the child is in the middle of sending the next batch.
            if last_flushed >= 3000 {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    assert!(!status.success(), "the child was killed, it did not finish: {status:?}");
    assert!(last_flushed >= 3000, "the child flushed only {last_flushed} events before it stopped");

    let store = Store::open(&path).expect("the store opens after the crash");
    assert!(store.integrity_ok().expect("integrity check runs"), "the database is intact");
    let flushed = i64::try_from(last_flushed).expect("a small count");
    let kept = count(
        &store,
        &format!(
            "union DeviceNetworkEvents, DeviceEvents | where ReportId < {flushed} | summarize dcount(ReportId)"
        ),
    );
    assert_eq!(kept, flushed, "every event up to the last completed flush is in the store");
    let total = count(&store, "union DeviceNetworkEvents, DeviceEvents | count");
    assert!(total >= flushed, "nothing committed is lost ({total} < {flushed})");
    drop(store);

    // And the daemon can reopen it and go on writing.
    let writer = StoreWriter::open(&path, Retention::default()).expect("the writer reopens the store");
    writer.send(&synthetic_event(1_000_000, &format_datetime(now_micros()), 0));
    writer.close().expect("close");
    let store = Store::open(&path).expect("open again");
    assert_eq!(
        count(&store, "union DeviceNetworkEvents, DeviceEvents | where ReportId == 1000000 | count"),
        1
    );
}

#[test]
fn readers_see_committed_events_while_the_daemon_writes() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("events.db");
    let writer = StoreWriter::open(&path, Retention::default()).expect("open a new store");
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let path = path.clone();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let store = Store::open(&path).expect("a reader opens the store while it is written");
            let mut seen = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let n = count(&store, "union DeviceNetworkEvents, DeviceEvents | count");
                if let Some(last) = seen.last() {
                    assert!(n >= *last, "a reader never sees events disappear ({n} after {last})");
                }
                seen.push(n);
                if finished {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let now = format_datetime(now_micros());
    for chunk in 0..40u64 {
        for i in 0..100 {
            writer.send(&synthetic_event(chunk * 100 + i, &now, 32));
        }
        writer.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(10));
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.join().expect("the reader thread ends without panicking");
    assert_eq!(seen.last(), Some(&4000), "the last read sees every event");
    let mut distinct = seen.clone();
    distinct.dedup();
    assert!(distinct.len() > 3, "reads happened during the writes: {distinct:?}");
    assert_eq!(writer.dropped(), 0);
    writer.close().expect("close");
}

#[test]
fn retention_by_age_deletes_old_events() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("events.db");
    let now = now_micros();
    let old = format_datetime(now - 3 * 86_400_000_000);
    let recent = format_datetime(now - 60_000_000);
    let writer =
        StoreWriter::open(&path, Retention { max_age: Some(Duration::from_secs(86_400)), max_bytes: None })
            .expect("open a new store");
    for i in 0..100 {
        writer.send(&synthetic_event(i, if i < 40 { &old } else { &recent }, 0));
    }
    let report = writer.enforce_retention().expect("enforce the retention");
    assert_eq!(report.deleted_by_age, 40);
    writer.close().expect("close");
    let store = Store::open(&path).expect("open");
    assert_eq!(count(&store, "union DeviceNetworkEvents, DeviceEvents | count"), 60);
    assert_eq!(count(&store, "union DeviceNetworkEvents, DeviceEvents | where ReportId < 40 | count"), 0);
    drop(store);

    // A writer opened on a store that has aged while the daemon was stopped trims it at once.
    let writer = StoreWriter::open(&path, Retention::default()).expect("reopen without retention");
    writer.send(&synthetic_event(500, &old, 0));
    writer.close().expect("close");
    let writer =
        StoreWriter::open(&path, Retention { max_age: Some(Duration::from_secs(86_400)), max_bytes: None })
            .expect("reopen with retention");
    writer.close().expect("close");
    let store = Store::open(&path).expect("open");
    assert_eq!(count(&store, "union DeviceNetworkEvents, DeviceEvents | where ReportId == 500 | count"), 0);
}

#[test]
fn retention_by_size_keeps_the_newest_events_under_the_limit() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("events.db");
    let max_bytes = 256 * 1024;
    let writer =
        StoreWriter::open(&path, Retention { max_age: None, max_bytes: Some(max_bytes) }).expect("open");
    let start = now_micros() - 3_600_000_000;
    for i in 0..3000u64 {
        // One event a millisecond, so that ReportId order is time order.
        let timestamp = format_datetime(start + i as i64 * 1000);
        writer.send(&synthetic_event(i, &timestamp, 300));
        if i % 500 == 499 {
            writer.flush().expect("flush");
        }
    }
    writer.flush().expect("flush");
    let report = writer.enforce_retention().expect("enforce the retention");
    writer.close().expect("close");
    assert!(report.deleted_by_size > 0, "the store was over its size: {report:?}");
    assert!(report.used_bytes <= max_bytes, "the store is under its size after enforcement: {report:?}");
    let file_size = std::fs::metadata(&path).expect("stat the database").len();
    assert!(file_size <= max_bytes, "the database file shrank to {file_size} bytes, over {max_bytes}");

    let store = Store::open(&path).expect("open");
    let result = store
        .query("union DeviceNetworkEvents, DeviceEvents | summarize n = count(), first = min(ReportId), last = max(ReportId)")
        .expect("summarize the rest");
    let row = &result.rows[0];
    let (n, first, last) = match (&row[0], &row[1], &row[2]) {
        (monitor_hunt::Value::Long(n), monitor_hunt::Value::Long(f), monitor_hunt::Value::Long(l)) => {
            (*n, *f, *l)
        }
        other => panic!("expected three longs, got {other:?}"),
    };
    assert_eq!(last, 2999, "the newest event is kept");
    assert!(first > 0, "the oldest events are gone");
    assert_eq!(n, last - first + 1, "what is kept is the newest, without gaps");
    assert!(n > 100, "the store still holds a useful number of events ({n})");
}

#[test]
fn new_store_is_private_and_malformed_events_are_counted() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("var/lib/monitor/events.db");
    let writer = StoreWriter::open(&path, Retention::default()).expect("open, creating the directories");
    writer.send(&serde_json::json!(["not", "an", "object"]));
    writer.send(&serde_json::json!({"ActionType": "ConnectionSuccess"}));
    writer.send(&synthetic_event(1, &format_datetime(now_micros()), 0));
    writer.send(&serde_json::json!({"Timestamp": "yesterday"}));
    writer.send_stored(vec![StoredEvent::from(typed_event(2))]);
    writer.flush().expect("flush");
    assert_eq!(writer.dropped(), 3, "the three malformed events are counted");
    writer.close().expect("close");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "the database is readable by its owner only");
    for created in [dir.path().join("var"), dir.path().join("var/lib"), dir.path().join("var/lib/monitor")] {
        assert_eq!(mode(&created), 0o700, "{} is private", created.display());
    }
    let store = Store::open(&path).expect("open");
    assert_eq!(store.count().expect("count"), 2, "the JSON event and the typed one are stored");
    drop(store);
    let missing = Store::open(&dir.path().join("nothing.db")).expect_err("no store there");
    assert!(missing.to_string().contains("no event store at"), "{missing}");
}

/// The export spool: Seq keeps rising across restarts (even when the last run's events never reached the
/// disk), the spool lists events past the cursor in Seq order across both tables, and the cursor persists.
#[test]
fn seq_rises_across_restarts_and_the_spool_reads_past_its_cursor() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("events.db");
    let stamped = |seq: u64, blocked: bool| {
        let mut event = synthetic_event(seq, &format_datetime(now_micros()), 8);
        event["Seq"] = seq.into();
        event["DeviceId"] = "device-1".into();
        if blocked {
            event["Table"] = "DeviceEvents".into();
            event["ActionType"] = "ExploitGuardNetworkProtectionBlocked".into();
        }
        event
    };
    let writer = StoreWriter::open(&path, Retention::default()).expect("open a new store");
    let first = writer.first_seq();
    assert_eq!(first, 1, "a new store numbers from 1");
    for seq in first..first + 10 {
        writer.send(&stamped(seq, seq % 3 == 0));
    }
    writer.close().expect("close the writer");

    let writer = StoreWriter::open(&path, Retention::default()).expect("reopen the store");
    let second = writer.first_seq();
    assert!(second > first + 10, "the second run's Seq {second} is above the first run's");
    // This run "crashes": its events are numbered but never committed.
    drop(writer);
    let writer = StoreWriter::open(&path, Retention::default()).expect("reopen the store again");
    assert!(writer.first_seq() > second, "a run after a crash never reuses the crashed run's Seq");
    writer.close().expect("close the writer");

    let spool = monitor_hunt::Spool::open(&path).expect("open the spool");
    assert_eq!(spool.cursor().expect("read the cursor"), 0, "nothing exported yet");
    let pending = spool.after(0, 100).expect("read the spool");
    let seqs: Vec<u64> = pending.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>(), "both tables, in Seq order");
    assert_eq!(pending[2].table, "DeviceEvents");
    assert_eq!(pending[2].event()["Table"], "DeviceEvents");
    assert_eq!(pending[2].event()["DeviceId"], "device-1");
    assert!(pending[2].event()["AdditionalFields"].is_object(), "dynamic columns come back as JSON");
    spool.set_cursor(4).expect("move the cursor");
    assert_eq!(spool.lag(4).expect("measure the lag").0, 6);
    drop(spool);
    let spool = monitor_hunt::Spool::open(&path).expect("reopen the spool");
    assert_eq!(spool.cursor().expect("read the cursor"), 4, "the cursor persists");
    let next: Vec<u64> = spool.after(4, 3).expect("read the spool").iter().map(|e| e.seq).collect();
    assert_eq!(next, vec![5, 6, 7]);
}

#[test]
fn retention_counts_what_it_deletes_before_the_export_shipped_it() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("events.db");
    let now = now_micros();
    let old = format_datetime(now - 3 * 86_400_000_000);
    let recent = format_datetime(now - 60_000_000);
    let retention = Retention { max_age: Some(Duration::from_secs(86_400)), max_bytes: None };
    let write = |range: std::ops::Range<u64>, time: &str| {
        let writer = StoreWriter::open(&path, retention).expect("open the store");
        let first = writer.first_seq();
        for (i, report) in range.enumerate() {
            let mut event = synthetic_event(report, time, 0);
            event["Seq"] = (first + i as u64).into();
            event["DeviceId"] = "device-1".into();
            writer.send(&event);
        }
        writer.flush().expect("commit");
        writer
    };

    // Without an export, retention deletes as before and counts nothing.
    let writer = write(0..20, &old);
    assert_eq!(writer.enforce_retention().expect("retention").deleted_by_age, 20);
    writer.close().expect("close");
    let spool = monitor_hunt::Spool::open(&path).expect("open the spool");
    assert_eq!(spool.gap_events().expect("gaps"), 0, "no export, no gap");

    // Exported from, with the first 10 of 2,030 old events shipped. Retention spares the export's window (the
    // next EXPORT_WINDOW unexported events, which may be on their way) and deletes the other 20: a gap.
    let window = monitor_hunt::gaps::EXPORT_WINDOW;
    spool.enable_export().expect("mark the export");
    let writer = write(100..100 + 10 + window as u64 + 20, &old);
    let seqs: Vec<u64> = spool.after(0, usize::MAX).expect("read").iter().map(|e| e.seq).collect();
    assert_eq!(seqs.len(), 10 + window + 20);
    let last = *seqs.last().expect("events");
    spool.set_cursor(seqs[9]).expect("ship the first ten");
    writer.send(&{
        let mut event = synthetic_event(900, &recent, 0);
        event["Seq"] = (last + 1).into();
        event["DeviceId"] = "device-1".into();
        event
    });
    writer.flush().expect("commit");
    assert_eq!(
        writer.enforce_retention().expect("retention").deleted_by_age,
        30,
        "the shipped ten and the gap"
    );
    writer.close().expect("close");
    assert_eq!(spool.gap_events().expect("gaps"), 20);
    let pending = spool.after(seqs[9], usize::MAX).expect("read the spool");
    assert_eq!(pending.len(), window + 2, "the window, the gap row and the recent event");
    assert_eq!(pending[0].seq, seqs[10], "the oldest unexported events stay");
    let gap = &pending[window];
    assert_eq!(gap.seq, last, "the gap takes the Seq of the last event it stands for");
    assert_eq!(gap.table, "DeviceEvents");
    assert_eq!(gap.event()["ActionType"], monitor_hunt::gaps::EXPORT_GAP);
    assert_eq!(gap.event()["DeviceId"], "device-1");
    assert_eq!(gap.event()["AdditionalFields"]["GapEvents"], 20);
    assert_eq!(gap.event()["AdditionalFields"]["FirstSeq"], seqs[10 + window]);
    assert_eq!(gap.event()["AdditionalFields"]["LastSeq"], last);
    assert_eq!(pending[window + 1].seq, last + 1);
    // Once shipped, it is not handed out again; the total stays in the status.
    spool.set_cursor(last + 1).expect("ship them");
    assert!(spool.after(last + 1, 100).expect("read").is_empty());

    // A daemon without the export unmarks the store: retention deletes by its bounds alone, counting nothing.
    spool.disable_export().expect("unmark the export");
    let writer = write(5_000..5_100, &old);
    writer.enforce_retention().expect("retention");
    writer.close().expect("close");
    assert_eq!(spool.gap_events().expect("gaps"), 20, "no new gap");
    let store = Store::open(&path).expect("open");
    assert_eq!(
        count(&store, "union DeviceNetworkEvents, DeviceEvents | count"),
        1,
        "only the recent event stays"
    );
    assert_eq!(spool.gap_events().expect("gaps"), 20);
}

#[test]
fn retention_by_size_in_an_exported_store_keeps_the_window_and_counts_the_rest() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("events.db");
    let window = monitor_hunt::gaps::EXPORT_WINDOW as u64;
    // Nothing exported yet (NATS down since the start): the window is the oldest events.
    drop(StoreWriter::open(&path, Retention::default()).expect("create the store"));
    monitor_hunt::Spool::open(&path).expect("open the spool").enable_export().expect("mark the export");
    let max_bytes = 3 * 1024 * 1024;
    let writer =
        StoreWriter::open(&path, Retention { max_age: None, max_bytes: Some(max_bytes) }).expect("open");
    let first = writer.first_seq();
    let start = now_micros() - 3_600_000_000;
    for i in 0..window + 2_000 {
        let mut event = synthetic_event(i, &format_datetime(start + i as i64 * 1000), 600);
        event["Seq"] = (first + i).into();
        event["DeviceId"] = "device-1".into();
        writer.send(&event);
    }
    writer.flush().expect("flush");
    let report = writer.enforce_retention().expect("enforce the retention");
    writer.close().expect("close");
    assert!(report.deleted_by_size > 0, "the store was over its size: {report:?}");
    assert!(report.used_bytes <= max_bytes, "under its size after enforcement: {report:?}");
    let spool = monitor_hunt::Spool::open(&path).expect("open the spool");
    assert_eq!(spool.gap_events().expect("gaps"), report.deleted_by_size, "every deleted event is in a gap");
    let pending = spool.after(0, usize::MAX).expect("read the spool");
    let seqs: Vec<u64> =
        pending.iter().filter(|e| e.event()["ActionType"] != "MonitorExportGap").map(|e| e.seq).collect();
    assert_eq!(
        &seqs[..window as usize],
        &(first..first + window).collect::<Vec<_>>()[..],
        "the window stays"
    );
}

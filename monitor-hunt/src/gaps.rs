//! Export gaps: events that retention deleted before the export shipped them. Once a store has been
//! exported from, retention still deletes (the disk bound holds), but the unexported events among the rows
//! it deletes are counted, in the same transaction, as one gap: their number, their Seq range, the time. The
//! spool hands each gap to the exporter as a `DeviceEvents` row `MonitorExportGap`, in Seq order, with the
//! Seq of the last event it stands for (an event that was never published, so its id is free), and the
//! sum of all gaps is in the export's status.

use rusqlite::{Connection, OptionalExtension as _};
use serde_json::{Value as Json, json};

use crate::schema::TABLES;
use crate::state::{STATE_EXPORT_CURSOR, STATE_EXPORT_ENABLED, get_state};
use crate::time::{format_datetime, now_micros};

/// The ActionType of the row a gap is exported as.
pub const EXPORT_GAP: &str = "MonitorExportGap";

/// The exporter reads at most this many events past its cursor at a time (and publishes some of them before
/// their acknowledgements come back). Retention never deletes the first this many unexported events: one of
/// them may be on its way already, and a gap must stand only for events that were never published, so that
/// its row can take one of their Seqs.
pub const EXPORT_WINDOW: usize = 2_000;

pub(crate) const CREATE: &str = "CREATE TABLE IF NOT EXISTS MonitorExportGaps (LastSeq INTEGER PRIMARY KEY, \
     FirstSeq INTEGER NOT NULL, Events INTEGER NOT NULL, Timestamp TEXT NOT NULL, DeviceId TEXT, DeviceName TEXT);";

/// The export cursor, as SQL compares it with Seq.
fn cursor(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(get_state(conn, STATE_EXPORT_CURSOR)?.map_or(0, |c| i64::try_from(c).unwrap_or(i64::MAX)))
}

/// The SQL condition a row retention may delete meets: any row, unless the store is exported from; then not
/// the export's window, the first [`EXPORT_WINDOW`] events past the cursor.
pub(crate) fn deletable(conn: &Connection) -> rusqlite::Result<String> {
    if get_state(conn, STATE_EXPORT_ENABLED)?.is_none() {
        return Ok("1".into());
    }
    let cursor = cursor(conn)?;
    let window_end: Option<i64> = conn
        .query_row(
            &format!(
                "SELECT Seq FROM (SELECT Seq FROM {} WHERE Seq > ?1 UNION ALL SELECT Seq FROM {} WHERE Seq > ?1) \
                 ORDER BY Seq LIMIT 1 OFFSET {}",
                TABLES[0],
                TABLES[1],
                EXPORT_WINDOW - 1
            ),
            [cursor],
            |row| row.get(0),
        )
        .optional()?;
    // Fewer than EXPORT_WINDOW unexported events: none of them may go.
    let window_end = window_end.unwrap_or(i64::MAX);
    Ok(format!("NOT (Seq IS NOT NULL AND Seq > {cursor} AND Seq <= {window_end})"))
}

/// Deletes the rows of both tables that `condition` (SQL over their columns, with `?1` bound to `value`)
/// selects, first counting the unexported ones among them as a gap when the store is exported from (and
/// sparing the export's window). One transaction: a gap is recorded if and only if its rows are gone.
/// Returns the rows deleted.
pub(crate) fn delete_counting_gap(conn: &Connection, condition: &str, value: &str) -> rusqlite::Result<u64> {
    // A write transaction from the start: the exporter moves its cursor on a connection of its own, and a
    // read that later turns into a write would fail (SQLITE_BUSY_SNAPSHOT) rather than wait for it.
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let condition = format!("({condition}) AND {}", deletable(&tx)?);
    if get_state(&tx, STATE_EXPORT_ENABLED)?.is_some() {
        let cursor = cursor(&tx)?;
        let select = |table: &str| {
            format!("SELECT Seq, DeviceId, DeviceName FROM {table} WHERE {condition} AND Seq > ?2")
        };
        let (events, first, last, id, name): (i64, Option<i64>, Option<i64>, Option<String>, Option<String>) = tx
            .query_row(
                &format!(
                    "SELECT count(*), min(Seq), max(Seq), max(DeviceId), max(DeviceName) FROM ({} UNION ALL {})",
                    select(TABLES[0]),
                    select(TABLES[1])
                ),
                rusqlite::params![value, cursor],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
            )?;
        if let (true, Some(first), Some(last)) = (events > 0, first, last) {
            tx.execute(
                "INSERT INTO MonitorExportGaps (LastSeq, FirstSeq, Events, Timestamp, DeviceId, DeviceName) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![last, first, events, format_datetime(now_micros()), id, name],
            )?;
            tracing::warn!(
                "event store: retention deleted {events} events the export had not shipped yet (Seq {first} to \
                 {last}); a {EXPORT_GAP} row reports them"
            );
        }
    }
    let mut deleted = 0;
    for table in TABLES {
        deleted += tx.execute(&format!("DELETE FROM {table} WHERE {condition}"), [value])? as u64;
    }
    tx.commit()?;
    Ok(deleted)
}

/// The first `limit` gaps whose row has a Seq above `seq`, as the events the exporter publishes:
/// `(Seq, event)`.
pub(crate) fn gap_events_after(
    conn: &Connection,
    seq: i64,
    limit: i64,
) -> rusqlite::Result<Vec<(u64, Json)>> {
    let mut statement = conn.prepare_cached(
        "SELECT LastSeq, FirstSeq, Events, Timestamp, DeviceId, DeviceName FROM MonitorExportGaps \
         WHERE LastSeq > ?1 ORDER BY LastSeq LIMIT ?2",
    )?;
    let rows = statement.query_map(rusqlite::params![seq, limit], |row| {
        let last: i64 = row.get(0)?;
        let first: i64 = row.get(1)?;
        let events: i64 = row.get(2)?;
        let event = json!({
            "Table": TABLES[1],
            "Timestamp": row.get::<_, String>(3)?,
            "DeviceId": row.get::<_, Option<String>>(4)?,
            "DeviceName": row.get::<_, Option<String>>(5)?,
            "ActionType": EXPORT_GAP,
            "Seq": last,
            "ReportId": last,
            "AdditionalFields": {"GapEvents": events, "FirstSeq": first, "LastSeq": last},
        });
        Ok((u64::try_from(last).unwrap_or(0), event))
    })?;
    rows.collect()
}

/// How many events all gaps stand for.
pub(crate) fn gap_total(conn: &Connection) -> rusqlite::Result<u64> {
    let total: Option<i64> =
        conn.query_row("SELECT sum(Events) FROM MonitorExportGaps", [], |row| row.get(0))?;
    Ok(u64::try_from(total.unwrap_or(0)).unwrap_or(0))
}

//! The store's `MonitorState` table: durable counters by key (the Seq reservation, the export cursor, the
//! export mark), read and written by the store and by the export's gap accounting alike.

use rusqlite::Connection;

/// The next Seq not yet reserved on disk.
pub(crate) const STATE_SEQ_RESERVED: &str = "SeqReserved";
/// Every event up to this Seq is acknowledged by the fleet's JetStream.
pub(crate) const STATE_EXPORT_CURSOR: &str = "ExportCursor";
/// Set (to 1) in `MonitorState` once an exporter has used the store: from then on, retention counts gaps.
pub(crate) const STATE_EXPORT_ENABLED: &str = "ExportEnabled";

pub(crate) fn get_state(conn: &Connection, key: &str) -> rusqlite::Result<Option<u64>> {
    use rusqlite::OptionalExtension as _;
    let value: Option<i64> = conn
        .query_row("SELECT Value FROM MonitorState WHERE Key = ?1", [key], |row| row.get(0))
        .optional()?;
    Ok(value.map(|v| u64::try_from(v).unwrap_or(0)))
}

pub(crate) fn set_state(conn: &Connection, key: &str, value: u64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO MonitorState (Key, Value) VALUES (?1, ?2) \
         ON CONFLICT (Key) DO UPDATE SET Value = excluded.Value",
        rusqlite::params![key, i64::try_from(value).unwrap_or(i64::MAX)],
    )?;
    Ok(())
}

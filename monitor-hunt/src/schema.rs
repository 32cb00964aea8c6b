//! The two Defender tables as the store keeps them: one column per key of the JSON events.

use serde_json::Value as Json;

use crate::time::{format_datetime, parse_datetime};

/// The tables `hunt` knows, in the order `union` lists them.
pub const TABLES: [&str; 2] = ["DeviceNetworkEvents", "DeviceEvents"];

/// How a column is stored in SQLite and typed in KQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// RFC 3339 text in the store, `datetime` in KQL.
    DateTime,
    String,
    /// INTEGER in the store, `long` in KQL.
    Long,
    /// JSON text in the store, `dynamic` in KQL.
    Dynamic,
}

/// Every column of both tables, in the order the events' schema lists them. `Table` is not a column: it
/// picks the table.
pub const COLUMNS: [(&str, ColumnType); 19] = [
    ("Timestamp", ColumnType::DateTime),
    ("DeviceId", ColumnType::String),
    ("DeviceName", ColumnType::String),
    ("ActionType", ColumnType::String),
    ("RemoteIP", ColumnType::String),
    ("RemotePort", ColumnType::Long),
    ("RemoteUrl", ColumnType::String),
    ("LocalIP", ColumnType::String),
    ("LocalPort", ColumnType::Long),
    ("Protocol", ColumnType::String),
    ("InitiatingProcessId", ColumnType::Long),
    ("InitiatingProcessParentId", ColumnType::Long),
    ("InitiatingProcessFileName", ColumnType::String),
    ("InitiatingProcessFolderPath", ColumnType::String),
    ("InitiatingProcessCommandLine", ColumnType::String),
    ("InitiatingProcessAccountName", ColumnType::String),
    ("ReportId", ColumnType::Long),
    ("Seq", ColumnType::Long),
    ("AdditionalFields", ColumnType::Dynamic),
];

/// Index of `Timestamp` in [`COLUMNS`].
pub const TIMESTAMP: usize = 0;
/// Index of `Seq` (the device's durable event sequence number, the export spool's order) in [`COLUMNS`].
pub const SEQ: usize = 17;

pub fn column_names() -> Vec<String> {
    COLUMNS.iter().map(|(name, _)| (*name).to_string()).collect()
}

pub fn column_type(name: &str) -> Option<ColumnType> {
    COLUMNS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// `CREATE TABLE` and index statements for a new store.
pub fn create_statements() -> String {
    let mut sql = String::new();
    for table in TABLES {
        let columns: Vec<String> = COLUMNS
            .iter()
            .map(|(name, ty)| {
                let sql_type = match ty {
                    ColumnType::DateTime => "TEXT NOT NULL",
                    ColumnType::String | ColumnType::Dynamic => "TEXT",
                    ColumnType::Long => "INTEGER",
                };
                format!("{name} {sql_type}")
            })
            .collect();
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {table} ({});\n\
             CREATE INDEX IF NOT EXISTS {table}_Timestamp ON {table} (Timestamp);\n\
             CREATE INDEX IF NOT EXISTS {table}_Seq ON {table} (Seq);\n",
            columns.join(", ")
        ));
    }
    sql
}

/// `INSERT` statement for `table` with one parameter per column.
pub fn insert_statement(table: &str) -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
    let params: Vec<String> = (1..=COLUMNS.len()).map(|i| format!("?{i}")).collect();
    format!("INSERT INTO {table} ({}) VALUES ({})", names.join(", "), params.join(", "))
}

/// One stored cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    Integer(i64),
}

/// An event ready for its table: the table's name and one cell per [`COLUMNS`] entry.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub table: &'static str,
    pub cells: Vec<Cell>,
}

/// Why an event could not be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("the event is not a JSON object")]
    NotAnObject,
    #[error("the event has no Timestamp")]
    MissingTimestamp,
    #[error("the event's Timestamp {0:?} is not an RFC 3339 time")]
    BadTimestamp(String),
}

/// Files a JSON event into its table. `Table` names the table; without it the `ActionType` decides
/// (`ExploitGuard…` events belong to DeviceEvents). Keys the schema does not know are ignored; missing ones
/// are stored as NULL. The timestamp is normalised to [`format_datetime`]'s form so that text order is time
/// order.
pub fn to_stored(event: &Json) -> Result<StoredEvent, RejectReason> {
    let object = event.as_object().ok_or(RejectReason::NotAnObject)?;
    let table = match object.get("Table").and_then(Json::as_str) {
        Some("DeviceEvents") => TABLES[1],
        Some("DeviceNetworkEvents") => TABLES[0],
        _ => match object.get("ActionType").and_then(Json::as_str) {
            Some(action) if action.starts_with("ExploitGuard") => TABLES[1],
            _ => TABLES[0],
        },
    };
    let mut cells = Vec::with_capacity(COLUMNS.len());
    for (name, ty) in COLUMNS {
        let value = object.get(name).unwrap_or(&Json::Null);
        let cell = match ty {
            ColumnType::DateTime => {
                let text = value.as_str().ok_or(RejectReason::MissingTimestamp)?;
                let micros =
                    parse_datetime(text).ok_or_else(|| RejectReason::BadTimestamp(text.to_string()))?;
                Cell::Text(format_datetime(micros))
            }
            ColumnType::String => match value {
                Json::Null => Cell::Null,
                Json::String(s) => Cell::Text(s.clone()),
                other => Cell::Text(other.to_string()),
            },
            ColumnType::Long => match value {
                Json::Number(n) => n.as_i64().map_or(Cell::Null, Cell::Integer),
                Json::String(s) => s.trim().parse().map_or(Cell::Null, Cell::Integer),
                _ => Cell::Null,
            },
            ColumnType::Dynamic => match value {
                Json::Null => Cell::Null,
                other => Cell::Text(other.to_string()),
            },
        };
        cells.push(cell);
    }
    Ok(StoredEvent { table, cells })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_filed_by_table_or_action() {
        let audited = json!({"Timestamp": "2026-11-29T05:33:12Z", "ActionType": "ExploitGuardNetworkProtectionAudited"});
        assert_eq!(to_stored(&audited).map(|e| e.table), Ok("DeviceEvents"));
        let named = json!({"Timestamp": "2026-11-29T05:33:12Z", "Table": "DeviceNetworkEvents", "ActionType": "ExploitGuardX"});
        assert_eq!(to_stored(&named).map(|e| e.table), Ok("DeviceNetworkEvents"));
    }

    #[test]
    fn cells_follow_the_schema() {
        let event = json!({
            "Timestamp": "2026-11-29T07:33:12.5+02:00", "RemotePort": 3128, "LocalPort": "40000",
            "InitiatingProcessAccountName": null, "AdditionalFields": {"Sni": "example.com"}, "Extra": 1
        });
        let stored = to_stored(&event).expect("event with a timestamp is stored");
        assert_eq!(stored.cells[TIMESTAMP], Cell::Text("2026-11-29T05:33:12.500000Z".into()));
        assert_eq!(stored.cells[5], Cell::Integer(3128));
        assert_eq!(stored.cells[8], Cell::Integer(40000));
        assert_eq!(stored.cells[15], Cell::Null);
        assert_eq!(stored.cells[18], Cell::Text(r#"{"Sni":"example.com"}"#.into()));
    }

    #[test]
    fn events_without_a_time_are_rejected() {
        assert_eq!(to_stored(&json!([1])), Err(RejectReason::NotAnObject));
        assert_eq!(to_stored(&json!({})), Err(RejectReason::MissingTimestamp));
        assert_eq!(
            to_stored(&json!({"Timestamp": "yesterday"})),
            Err(RejectReason::BadTimestamp("yesterday".into()))
        );
    }
}

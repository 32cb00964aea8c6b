//! The two Defender tables as the store keeps them: one column per field of the event
//! ([`monitor_core::event`] owns the list), and the filing of events that arrive as JSON.

use serde_json::Value as Json;

use crate::time::{format_datetime, parse_datetime};

pub use monitor_core::device_info::{DEVICE_INFO, INFO_COLUMNS};
pub use monitor_core::event::{COLUMNS, Cell, ColumnType, TABLES};

/// Every table `monitor hunt --fleet` reads: the two event tables, and the agents' heartbeats
/// (`DeviceInfo`), which only the fleet store keeps.
pub const FLEET_TABLES: [&str; 3] = [TABLES[0], TABLES[1], DEVICE_INFO];

/// The columns of one of [`FLEET_TABLES`].
pub fn columns_of(table: &str) -> Option<&'static [(&'static str, ColumnType)]> {
    if TABLES.contains(&table) {
        Some(&COLUMNS)
    } else if table == DEVICE_INFO {
        Some(&INFO_COLUMNS)
    } else {
        None
    }
}

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

/// An event ready for its table: the table's name and one cell per [`COLUMNS`] entry.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub table: &'static str,
    pub cells: Vec<Cell>,
}

impl From<monitor_core::event::DeviceEvent> for StoredEvent {
    /// A typed event is filed without JSON: its fields are the cells, its timestamp already in
    /// [`format_datetime`]'s form.
    fn from(event: monitor_core::event::DeviceEvent) -> Self {
        StoredEvent { table: event.table.name(), cells: event.into_cells() }
    }
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
    fn a_typed_event_is_filed_as_its_json_line_would_be() {
        use monitor_core::event::{ActionType, DeviceEvent, InitiatingProcess, rfc3339_utc};
        let process = InitiatingProcess {
            pid: 42,
            parent_pid: None,
            file_name: "curl".into(),
            folder_path: Some("/usr/bin".into()),
            command_line: "curl -x http://10.0.0.5:3128 https://b\u{fc}cher.example".into(),
            account_name: "root".into(),
            account_uid: 0,
        };
        let mut fields = serde_json::Map::new();
        fields.insert("Sni".into(), json!("b\u{fc}cher.example"));
        fields.insert("LateVerdict".into(), json!(true));
        // What could be mistaken for the field's own key, in a value and as a nested key.
        fields.insert("Note".into(), json!("\"AdditionalFields\":{\"x\":1}}"));
        fields.insert("Nested".into(), json!({"AdditionalFields": {"y": [1, "}"]}}));
        for (action, process) in [
            (ActionType::ConnectionSuccess, Some(&process)),
            (ActionType::ExploitGuardNetworkProtectionBlocked, None),
        ] {
            let mut event = DeviceEvent::new(
                rfc3339_utc(1_709_210_096_789_012_345),
                "host".into(),
                action,
                ("10.0.0.5".into(), 3128),
                ("10.0.0.2".into(), 40000),
                "Tcp",
                "xn--bcher-kva.example".into(),
                process,
                7,
                fields.clone(),
            );
            event.device_id = "id-1".into();
            event.seq = u64::MAX;
            let line: Json = serde_json::from_str(&event.to_json_line()).expect("a JSON line");
            assert_eq!(to_stored(&line), Ok(StoredEvent::from(event)), "{action:?}");
        }
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

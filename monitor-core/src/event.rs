//! The event schema: JSON lines with Microsoft Defender's column names.
//!
//! One [`DeviceEvent`] is one line. `Table` names the Defender table it belongs to so that the store and
//! `monitor hunt` can file it; every other key is a Defender column. Fields the monitor cannot know
//! (process fields for gateway flows and replay) are `null`, never invented.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The Defender table an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Table {
    DeviceNetworkEvents,
    DeviceEvents,
}

/// `ActionType` values the monitor emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    ConnectionSuccess,
    ConnectionFailed,
    ExploitGuardNetworkProtectionAudited,
    ExploitGuardNetworkProtectionBlocked,
}

impl ActionType {
    /// The name as it is written (serde writes the same).
    pub fn name(self) -> &'static str {
        match self {
            ActionType::ConnectionSuccess => "ConnectionSuccess",
            ActionType::ConnectionFailed => "ConnectionFailed",
            ActionType::ExploitGuardNetworkProtectionAudited => "ExploitGuardNetworkProtectionAudited",
            ActionType::ExploitGuardNetworkProtectionBlocked => "ExploitGuardNetworkProtectionBlocked",
        }
    }

    pub fn table(self) -> Table {
        match self {
            ActionType::ConnectionSuccess | ActionType::ConnectionFailed => Table::DeviceNetworkEvents,
            ActionType::ExploitGuardNetworkProtectionAudited
            | ActionType::ExploitGuardNetworkProtectionBlocked => Table::DeviceEvents,
        }
    }
}

/// The process that opened the connection. Absent for flows seen only on the wire (gateway, replay).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitiatingProcess {
    pub pid: u32,
    pub parent_pid: Option<u32>,
    pub file_name: String,
    pub folder_path: Option<String>,
    pub command_line: String,
    pub account_name: String,
    pub account_uid: u32,
}

/// One event, as written to the JSON-lines sink and the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceEvent {
    /// RFC 3339, UTC, with microseconds.
    pub timestamp: String,
    pub table: Table,
    /// Stable across restarts and renames: /etc/machine-id, or `device_id` in the configuration. Set by
    /// the sink (empty until then).
    #[serde(default)]
    pub device_id: String,
    pub device_name: String,
    pub action_type: ActionType,
    #[serde(rename = "RemoteIP")]
    pub remote_ip: String,
    pub remote_port: u16,
    /// The real target: a domain name, or a URL for absolute-form requests; empty when none was named.
    pub remote_url: String,
    #[serde(rename = "LocalIP")]
    pub local_ip: String,
    pub local_port: u16,
    /// `Tcp` or `Udp`.
    pub protocol: String,
    pub initiating_process_id: Option<u32>,
    pub initiating_process_parent_id: Option<u32>,
    pub initiating_process_file_name: Option<String>,
    pub initiating_process_folder_path: Option<String>,
    pub initiating_process_command_line: Option<String>,
    pub initiating_process_account_name: Option<String>,
    /// Monotonic per daemon run (or per replay), so lines can be told apart.
    pub report_id: u64,
    /// Per device, rising across restarts (the store keeps the count): with `DeviceId` it names the event
    /// in the fleet, so a resent event is recognised. Set by the sink (0 until then).
    #[serde(default)]
    pub seq: u64,
    pub additional_fields: Map<String, Value>,
}

impl DeviceEvent {
    /// An event with the process fields filled from `process` (or null when there is none).
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per Defender column; a builder would only rename them"
    )]
    pub fn new(
        timestamp: String,
        device_name: String,
        action_type: ActionType,
        remote: (String, u16),
        local: (String, u16),
        protocol: &str,
        remote_url: String,
        process: Option<&InitiatingProcess>,
        report_id: u64,
        additional_fields: Map<String, Value>,
    ) -> Self {
        let mut additional_fields = additional_fields;
        // The name as the wire carries it stays in RemoteUrl; people read an internationalised one here.
        if let Some(unicode) = crate::policy::unicode_form(&remote_url) {
            additional_fields.insert("RemoteUrlUnicode".into(), Value::from(unicode));
        }
        DeviceEvent {
            timestamp,
            table: action_type.table(),
            device_id: String::new(),
            device_name,
            action_type,
            remote_ip: remote.0,
            remote_port: remote.1,
            remote_url,
            local_ip: local.0,
            local_port: local.1,
            protocol: protocol.to_string(),
            initiating_process_id: process.map(|p| p.pid),
            initiating_process_parent_id: process.and_then(|p| p.parent_pid),
            initiating_process_file_name: process.map(|p| p.file_name.clone()),
            initiating_process_folder_path: process.and_then(|p| p.folder_path.clone()),
            initiating_process_command_line: process.map(|p| p.command_line.clone()),
            initiating_process_account_name: process.map(|p| p.account_name.clone()),
            report_id,
            seq: 0,
            additional_fields,
        }
    }

    /// One JSON line, without the newline.
    pub fn to_json_line(&self) -> String {
        // Serialising a struct of strings, numbers and a JSON map cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"SerializeError\":\"{e}\"}}"))
    }
}

/// The tables, in the order `union` lists them.
pub const TABLES: [&str; 2] = ["DeviceNetworkEvents", "DeviceEvents"];

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::DeviceNetworkEvents => TABLES[0],
            Table::DeviceEvents => TABLES[1],
        }
    }
}

/// How a column is stored and typed in KQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// RFC 3339 text in the store, `datetime` in KQL.
    DateTime,
    String,
    /// An integer in the store, `long` in KQL.
    Long,
    /// JSON text in the store, `dynamic` in KQL.
    Dynamic,
}

/// Every column of both tables: [`DeviceEvent`]'s fields in their order, by their JSON names (a test
/// holds the two together). `Table` is not a column: it picks the table.
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

/// One stored cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    Integer(i64),
}

impl DeviceEvent {
    /// The event's cells, one per [`COLUMNS`] entry, as the store keeps them: no JSON in between.
    pub fn into_cells(self) -> Vec<Cell> {
        self.into_line_and_cells().1
    }

    /// The event's JSON line and its cells, with AdditionalFields serialised once: its cell is the line's
    /// own text of it. It is the struct's last field, so serde writes it last; its key's first occurrence is
    /// the field's (the text of an earlier field cannot hold an unescaped quote).
    pub fn into_line_and_cells(self) -> (String, Vec<Cell>) {
        const KEY: &str = r#""AdditionalFields":"#;
        let line = self.to_json_line();
        let fields = match line.find(KEY) {
            Some(at) if line.ends_with('}') => line[at + KEY.len()..line.len() - 1].to_string(),
            _ => "{}".into(),
        };
        let cells = self.cells_with(fields);
        (line, cells)
    }

    fn cells_with(self, additional_fields: String) -> Vec<Cell> {
        let text = Cell::Text;
        let opt_text = |v: Option<String>| v.map_or(Cell::Null, Cell::Text);
        let opt_int = |v: Option<u32>| v.map_or(Cell::Null, |v| Cell::Integer(v.into()));
        // Past i64 (never in practice) a number has no integer cell: NULL, as the JSON path files it.
        let int = |v: u64| i64::try_from(v).map_or(Cell::Null, Cell::Integer);
        vec![
            text(self.timestamp),
            text(self.device_id),
            text(self.device_name),
            text(self.action_type.name().to_string()),
            text(self.remote_ip),
            Cell::Integer(self.remote_port.into()),
            text(self.remote_url),
            text(self.local_ip),
            Cell::Integer(self.local_port.into()),
            text(self.protocol),
            opt_int(self.initiating_process_id),
            opt_int(self.initiating_process_parent_id),
            opt_text(self.initiating_process_file_name),
            opt_text(self.initiating_process_folder_path),
            opt_text(self.initiating_process_command_line),
            opt_text(self.initiating_process_account_name),
            int(self.report_id),
            int(self.seq),
            text(additional_fields),
        ]
    }
}

/// RFC 3339 UTC timestamp with microseconds (the nanoseconds cut off) from a UNIX time in nanoseconds.
pub fn rfc3339_utc(unix_nanos: u128) -> String {
    const PRINTER: jiff::fmt::temporal::DateTimePrinter =
        jiff::fmt::temporal::DateTimePrinter::new().precision(Some(6));
    let micros = i64::try_from(unix_nanos / 1_000).unwrap_or(i64::MAX);
    let ts = jiff::Timestamp::from_microsecond(micros).unwrap_or(jiff::Timestamp::MAX);
    let mut out = String::with_capacity(27);
    // Printing into a String cannot fail.
    let _ = PRINTER.print_timestamp(&ts, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_columns_are_the_events_fields_in_order() {
        let mut event = DeviceEvent::new(
            rfc3339_utc(0),
            "host".into(),
            ActionType::ExploitGuardNetworkProtectionBlocked,
            ("10.0.0.5".into(), 3128),
            ("10.0.0.2".into(), 40000),
            "Tcp",
            "example.com".into(),
            None,
            7,
            Map::new(),
        );
        event.seq = 9;
        let json: Value = serde_json::from_str(&event.to_json_line()).expect("a JSON object");
        let keys: Vec<&str> = json.as_object().expect("object").keys().map(String::as_str).collect();
        let mut columns: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).chain(["Table"]).collect();
        columns.sort_unstable();
        // serde_json's map is ordered by key: compared as sets. monitor-hunt's schema test holds each cell
        // equal to the JSON line's filing.
        assert_eq!(keys, columns);
        assert_eq!(event.into_cells().len(), COLUMNS.len());
        for action in [
            ActionType::ConnectionSuccess,
            ActionType::ConnectionFailed,
            ActionType::ExploitGuardNetworkProtectionAudited,
            ActionType::ExploitGuardNetworkProtectionBlocked,
        ] {
            assert_eq!(serde_json::to_value(action).expect("a name"), action.name());
            assert_eq!(action.table().name(), serde_json::to_value(action.table()).expect("a name"));
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000000Z");
        // 2024-02-29T12:34:56.789012Z, a leap day.
        assert_eq!(rfc3339_utc(1_709_210_096_789_012_000), "2024-02-29T12:34:56.789012Z");
    }

    #[test]
    fn event_uses_defender_column_names() {
        let process = InitiatingProcess {
            pid: 42,
            parent_pid: Some(1),
            file_name: "curl".into(),
            folder_path: Some("/usr/bin".into()),
            command_line: "curl -x http://10.0.0.5:3128 https://example.com".into(),
            account_name: "root".into(),
            account_uid: 0,
        };
        let event = DeviceEvent::new(
            rfc3339_utc(0),
            "host".into(),
            ActionType::ConnectionSuccess,
            ("10.0.0.5".into(), 3128),
            ("10.0.0.2".into(), 40000),
            "Tcp",
            "example.com".into(),
            Some(&process),
            7,
            Map::new(),
        );
        let v: Value = serde_json::from_str(&event.to_json_line()).unwrap();
        assert_eq!(v["Table"], "DeviceNetworkEvents");
        assert_eq!(v["ActionType"], "ConnectionSuccess");
        assert_eq!(v["RemoteIP"], "10.0.0.5");
        assert_eq!(v["RemotePort"], 3128);
        assert_eq!(v["RemoteUrl"], "example.com");
        assert_eq!(v["InitiatingProcessId"], 42);
        assert_eq!(v["InitiatingProcessFileName"], "curl");
        assert_eq!(v["LocalIP"], "10.0.0.2");
        assert!(v["AdditionalFields"].is_object());
        assert!(v["AdditionalFields"].get("RemoteUrlUnicode").is_none(), "an ASCII name has no Unicode form");
        let back: DeviceEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn punycode_remote_url_carries_its_unicode_form() {
        let event = DeviceEvent::new(
            rfc3339_utc(0),
            "host".into(),
            ActionType::ConnectionSuccess,
            ("10.0.0.5".into(), 3128),
            ("10.0.0.2".into(), 40000),
            "Tcp",
            "xn--bcher-kva.example".into(),
            None,
            7,
            Map::new(),
        );
        let v: Value = serde_json::from_str(&event.to_json_line()).unwrap();
        assert_eq!(v["RemoteUrl"], "xn--bcher-kva.example", "the name as the wire carries it");
        assert_eq!(v["AdditionalFields"]["RemoteUrlUnicode"], "bücher.example");
    }
}

//! The agent's heartbeat: one `DeviceInfo` row (Defender keeps a table of that name) every interval, with
//! what an operator needs to know of the device's health. Exported agents publish it beside their events;
//! the ingest files it in the fleet store's `DeviceInfo` table, where `monitor devices --fleet` finds the
//! stale agents and `DeviceInfo | summarize arg_max(Timestamp, *) by DeviceName` the latest state of each.

use serde::{Deserialize, Serialize};

use crate::event::ColumnType;

/// The table's name; it is also the `Table` of the JSON and the table token of the NATS subject.
pub const DEVICE_INFO: &str = "DeviceInfo";

/// The columns of `DeviceInfo`: [`DeviceInfo`]'s fields in their order, by their JSON names (a test holds
/// the two together).
pub const INFO_COLUMNS: [(&str, ColumnType); 16] = [
    ("Timestamp", ColumnType::DateTime),
    ("DeviceId", ColumnType::String),
    ("DeviceName", ColumnType::String),
    ("ClientVersion", ColumnType::String),
    ("OSPlatform", ColumnType::String),
    ("OSVersion", ColumnType::String),
    ("OSArchitecture", ColumnType::String),
    ("ProtectionMode", ColumnType::String),
    ("PolicyRevision", ColumnType::Long),
    ("EventsPerSecond", ColumnType::Long),
    ("KernelDrops", ColumnType::Long),
    ("ExportLagRows", ColumnType::Long),
    ("ExportLagSeconds", ColumnType::Long),
    ("DegradedFeatures", ColumnType::Dynamic),
    ("UptimeSeconds", ColumnType::Long),
    ("HeartbeatIntervalSeconds", ColumnType::Long),
];

/// One heartbeat, as it is published (JSON with `Table: "DeviceInfo"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceInfo {
    /// `Table`: always [`DEVICE_INFO`].
    pub table: String,
    /// RFC 3339 with microseconds, in UTC, as on the events.
    pub timestamp: String,
    pub device_id: String,
    pub device_name: String,
    /// The monitor's version.
    pub client_version: String,
    #[serde(rename = "OSPlatform")]
    pub os_platform: String,
    /// The kernel release.
    #[serde(rename = "OSVersion")]
    pub os_version: String,
    #[serde(rename = "OSArchitecture")]
    pub os_architecture: String,
    /// `block`, `audit` or `off`: what the kernel runs now.
    pub protection_mode: String,
    /// The fleet policy revision in the kernel maps (none: no `--policy`, or none applied yet).
    pub policy_revision: Option<u64>,
    /// Events per second since the previous heartbeat.
    pub events_per_second: u64,
    /// Records the kernel could not hand over since the daemon started (`None`: not readable).
    pub kernel_drops: Option<u64>,
    /// Stored events not yet acknowledged by JetStream, and the age in seconds of the oldest.
    pub export_lag_rows: u64,
    pub export_lag_seconds: u64,
    /// Programs or hooks this kernel could not attach, by name; empty when nothing is degraded.
    pub degraded_features: Vec<String>,
    pub uptime_seconds: u64,
    /// How often this agent sends one: `monitor devices` calls it stale after four are missed (0: not
    /// said, by an agent older than this field).
    #[serde(default)]
    pub heartbeat_interval_seconds: u64,
}

impl DeviceInfo {
    /// One JSON line, without the newline.
    pub fn to_json(&self) -> String {
        // A struct of strings and numbers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceInfo {
        DeviceInfo {
            table: DEVICE_INFO.into(),
            timestamp: "2026-12-03T10:00:00.000001Z".into(),
            device_id: "id-1".into(),
            device_name: "host-1".into(),
            client_version: "0.1.0".into(),
            os_platform: "Linux".into(),
            os_version: "6.12.0".into(),
            os_architecture: "x86_64".into(),
            protection_mode: "block".into(),
            policy_revision: Some(7),
            events_per_second: 12,
            kernel_drops: Some(0),
            export_lag_rows: 3,
            export_lag_seconds: 1,
            degraded_features: vec!["quic_egress".into()],
            uptime_seconds: 60,
            heartbeat_interval_seconds: 30,
        }
    }

    #[test]
    fn every_field_is_a_column_and_every_column_a_field() {
        let json: serde_json::Value = serde_json::from_str(&sample().to_json()).expect("JSON");
        let keys: Vec<&str> = json.as_object().expect("an object").keys().map(String::as_str).collect();
        let mut columns: Vec<&str> = INFO_COLUMNS.iter().map(|(name, _)| *name).collect();
        columns.insert(0, "Table");
        let mut sorted_keys = keys.clone();
        sorted_keys.sort_unstable();
        let mut sorted_columns = columns.clone();
        sorted_columns.sort_unstable();
        assert_eq!(sorted_keys, sorted_columns, "every field is a column and every column a field");
        let back: DeviceInfo = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, sample());
    }
}

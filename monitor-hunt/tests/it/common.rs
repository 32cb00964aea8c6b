//! The fixture store: 30 events (proxied, direct, gateway, audited and blocked) from tests/data.

use std::path::{Path, PathBuf};

use monitor_hunt::time::parse_datetime;
use monitor_hunt::{Retention, Store, StoreWriter};

use crate::cases::FIXTURE;

/// The `now` the fixture's queries run at ([`crate::cases::FIXTURE_NOW`]).
pub fn fixture_now() -> i64 {
    parse_datetime(crate::cases::FIXTURE_NOW).expect("fixed time parses")
}

pub fn fixture_events() -> Vec<serde_json::Value> {
    FIXTURE
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("fixture line {line:?} is JSON: {e}"))
        })
        .collect()
}

/// Writes the fixture through a `StoreWriter` into a fresh store under `dir`.
pub fn write_fixture(dir: &Path) -> PathBuf {
    let path = dir.join("events.db");
    let writer = StoreWriter::open(&path, Retention::default()).expect("open a new store");
    for event in fixture_events() {
        writer.send(&event);
    }
    assert_eq!(writer.dropped(), 0, "no fixture event may be dropped");
    writer.close().expect("close the writer");
    path
}

pub struct Fixture {
    // Kept for its Drop: the directory lives as long as the store.
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub store: Store,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = write_fixture(dir.path());
    let store = Store::open(&path).expect("open the fixture store");
    Fixture { _dir: dir, path, store }
}

/// Rows as `a|b|c` lines of the values' text.
pub fn render_rows(rows: &[Vec<monitor_hunt::Value>]) -> Vec<String> {
    rows.iter().map(|row| row.iter().map(|v| v.to_text()).collect::<Vec<_>>().join("|")).collect()
}

/// A synthetic event for the store tests: alternately in each table.
pub fn synthetic_event(report_id: u64, timestamp: &str, padding: usize) -> serde_json::Value {
    let blocked = report_id % 3 == 2;
    serde_json::json!({
        "Timestamp": timestamp,
        "Table": if blocked { "DeviceEvents" } else { "DeviceNetworkEvents" },
        "DeviceName": "host1",
        "ActionType": if blocked { "ExploitGuardNetworkProtectionBlocked" } else { "ConnectionSuccess" },
        "RemoteIP": "10.0.0.5",
        "RemotePort": 3128,
        "RemoteUrl": format!("site{report_id}.example.com"),
        "LocalIP": "10.0.0.2",
        "LocalPort": 40000 + report_id % 20000,
        "Protocol": "Tcp",
        "InitiatingProcessId": 1000 + report_id % 50,
        "InitiatingProcessParentId": 1,
        "InitiatingProcessFileName": "curl",
        "InitiatingProcessFolderPath": "/usr/bin",
        "InitiatingProcessCommandLine": "curl -x http://10.0.0.5:3128 https://example.com",
        "InitiatingProcessAccountName": "root",
        "ReportId": report_id,
        "AdditionalFields": {"Method": "CONNECT", "Padding": "x".repeat(padding)},
    })
}

/// [`synthetic_event`] as the daemon hands it to the store: typed, timestamped now.
pub fn typed_event(report_id: u64) -> monitor_core::event::DeviceEvent {
    let json =
        synthetic_event(report_id, &monitor_hunt::time::format_datetime(monitor_hunt::time::now_micros()), 0);
    serde_json::from_value(json).expect("a synthetic event is a DeviceEvent")
}

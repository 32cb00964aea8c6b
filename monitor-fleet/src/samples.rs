//! Events as the daemon's sink writes them, and stores full of them written with the real store code: for
//! the tests and the benchmarks of the fleet path.

use std::path::Path;

use monitor_core::device_info::{DEVICE_INFO, DeviceInfo};
use monitor_hunt::time::format_datetime;
use monitor_hunt::{CHANNEL_CAPACITY, Retention, StoreWriter};
use serde_json::{Value, json};

use crate::FleetError;

/// The DeviceId of the sample events.
pub const SAMPLE_DEVICE_ID: &str = "0123456789abcdef0123456789abcdef";

/// Events handed to the store writer before waiting for it to commit them: below its queue's capacity,
/// so that a store of any size is written without a drop.
const WRITE_CHUNK: u64 = (CHANNEL_CAPACITY / 2) as u64;

/// A heartbeat of device `device_name` (`device_id`) at `at` (microseconds since the epoch) in `mode`.
pub fn sample_device_info(device_id: &str, device_name: &str, at: i64, mode: &str) -> DeviceInfo {
    DeviceInfo {
        table: DEVICE_INFO.into(),
        timestamp: format_datetime(at),
        device_id: device_id.into(),
        device_name: device_name.into(),
        client_version: "9.9.9".into(),
        os_platform: "Linux".into(),
        os_version: "6.12.0-test".into(),
        os_architecture: "x86_64".into(),
        protection_mode: mode.into(),
        policy_revision: Some(41),
        events_per_second: 17,
        kernel_drops: Some(2),
        export_lag_rows: 0,
        export_lag_seconds: 0,
        degraded_features: vec!["quic_egress".into()],
        uptime_seconds: 30,
        heartbeat_interval_seconds: 1,
    }
}

/// The event with `seq` of device `device_name` at `at` (microseconds since the epoch): every fifth one a
/// block in DeviceEvents, the others ConnectionSuccess in DeviceNetworkEvents, seven remote names.
pub fn sample_event(seq: u64, device_name: &str, at: i64) -> Value {
    sample_event_of(SAMPLE_DEVICE_ID, seq, device_name, at)
}

/// [`sample_event`] of the device with id `device_id`.
pub fn sample_event_of(device_id: &str, seq: u64, device_name: &str, at: i64) -> Value {
    let blocked = seq.is_multiple_of(5);
    json!({
        "Timestamp": format_datetime(at),
        "Table": if blocked { "DeviceEvents" } else { "DeviceNetworkEvents" },
        "DeviceId": device_id,
        "DeviceName": device_name,
        "ActionType": if blocked { "ExploitGuardNetworkProtectionBlocked" } else { "ConnectionSuccess" },
        "RemoteIP": if seq.is_multiple_of(2) { "10.0.0.5" } else { "93.184.216.34" },
        "RemotePort": 3128,
        "RemoteUrl": format!("site{}.example.com", seq % 7),
        "LocalIP": "10.0.0.2",
        "LocalPort": 40000 + (seq % 1000),
        "Protocol": "Tcp",
        "InitiatingProcessId": 1000 + seq,
        "InitiatingProcessParentId": null,
        "InitiatingProcessFileName": if seq.is_multiple_of(2) { "curl" } else { "python3" },
        "InitiatingProcessFolderPath": "/usr/bin",
        "InitiatingProcessCommandLine": "curl -x http://10.0.0.5:3128 https://example.com",
        "InitiatingProcessAccountName": "root",
        "ReportId": seq,
        "Seq": seq,
        "AdditionalFields": {"Sni": format!("site{}.example.com", seq % 7), "ProxyType": "HTTP CONNECT"},
    })
}

/// Writes `count` sample events of `device_name` into the store at `path` (created when absent), numbered
/// as the daemon numbers them, the event with Seq `s` at `at(s)`. Returns their Seqs; an event the store
/// did not keep is an error.
pub fn write_sample_store(
    path: &Path,
    count: u64,
    device_name: &str,
    at: impl Fn(u64) -> i64,
) -> Result<Vec<u64>, FleetError> {
    write_sample_store_of(path, count, SAMPLE_DEVICE_ID, device_name, at)
}

/// [`write_sample_store`] for the device with id `device_id`.
pub fn write_sample_store_of(
    path: &Path,
    count: u64,
    device_id: &str,
    device_name: &str,
    at: impl Fn(u64) -> i64,
) -> Result<Vec<u64>, FleetError> {
    let store = |e: monitor_hunt::StoreError| FleetError::Store(e.to_string());
    let writer = StoreWriter::open(path, Retention::default()).map_err(store)?;
    let first = writer.first_seq();
    let seqs: Vec<u64> = (first..first + count).collect();
    for chunk in seqs.chunks(WRITE_CHUNK as usize) {
        for &seq in chunk {
            writer.send(&sample_event_of(device_id, seq, device_name, at(seq)));
        }
        writer.flush().map_err(store)?;
    }
    let dropped = writer.dropped();
    writer.close().map_err(store)?;
    if dropped > 0 {
        return Err(FleetError::Store(format!(
            "{} kept all but {dropped} of {count} events",
            path.display()
        )));
    }
    Ok(seqs)
}

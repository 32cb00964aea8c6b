//! Heartbeats on the wire and in the fleet store: an agent's [`DeviceInfo`] as a message on
//! `monitor.events.DeviceInfo.<DeviceName>` (in the stream `MONITOR_EVENTS`, beside the events, so that the
//! ingest's one consumer reads both), and as a row of the `DeviceInfo` table.
//!
//! A heartbeat is a statement about now, not an event to keep: it is not spooled. An agent that cannot
//! reach NATS sends none, and its silence is what `monitor devices --fleet` reports as stale.

use std::io::Write as _;

use monitor_core::device_info::{DEVICE_INFO, DeviceInfo, INFO_COLUMNS};
use monitor_core::event::ColumnType;
use serde_json::{Map, Value};

use crate::FleetError;
use crate::nats::{SUBJECT_PREFIX, subject_token};
use crate::row::{InvalidEvent, TIMESTAMP_MICROS};

/// Whether a message's subject is a heartbeat's.
pub fn is_heartbeat_subject(subject: &str) -> bool {
    subject
        .strip_prefix(SUBJECT_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_prefix(DEVICE_INFO))
        .is_some_and(|rest| rest.starts_with('.'))
}

/// The message of one heartbeat: its subject, its id (`<DeviceId>:info:<micros>`, so that JetStream drops
/// a resent one) and its JSON.
pub fn message(info: &DeviceInfo) -> Result<(String, async_nats::HeaderMap, bytes::Bytes), FleetError> {
    if info.device_id.is_empty() {
        return Err(FleetError::Config("a heartbeat needs a DeviceId".into()));
    }
    let micros = monitor_hunt::time::parse_datetime(&info.timestamp).ok_or_else(|| {
        FleetError::Config(format!("the heartbeat's Timestamp {:?} is no time", info.timestamp))
    })?;
    let subject = format!("{SUBJECT_PREFIX}.{DEVICE_INFO}.{}", subject_token(&info.device_name));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("{}:info:{micros}", info.device_id).as_str());
    Ok((subject, headers, bytes::Bytes::from(info.to_json())))
}

/// Writes the heartbeat in `payload` as one JSONEachRow line of `DeviceInfo` onto `out` (nothing on an
/// error).
pub fn encode_info(payload: &[u8], out: &mut Vec<u8>) -> Result<(), InvalidEvent> {
    let info: DeviceInfo =
        serde_json::from_slice(payload).map_err(|e| InvalidEvent::BadHeartbeat(e.to_string()))?;
    if info.table != DEVICE_INFO {
        return Err(InvalidEvent::BadHeartbeat(format!("its Table is {:?}, not {DEVICE_INFO}", info.table)));
    }
    if info.device_id.is_empty() {
        return Err(InvalidEvent::MissingDeviceId);
    }
    let micros = monitor_hunt::time::parse_datetime(&info.timestamp)
        .ok_or_else(|| monitor_hunt::schema::RejectReason::BadTimestamp(info.timestamp.clone()))?;
    // The row is the heartbeat's JSON column by column, as INFO_COLUMNS types them: the time in
    // microseconds, a Dynamic as its JSON text, numbers past i64 at its largest.
    let Ok(Value::Object(mut fields)) = serde_json::to_value(&info) else {
        return Err(InvalidEvent::BadHeartbeat("not an object".into()));
    };
    let mut row = Map::new();
    for (name, ty) in INFO_COLUMNS {
        let value = fields.remove(name).unwrap_or(Value::Null);
        let (key, value) = match ty {
            ColumnType::DateTime => (TIMESTAMP_MICROS, Value::from(micros)),
            ColumnType::Dynamic => (name, Value::from(value.to_string())),
            ColumnType::Long => {
                (name, value.as_u64().map_or(value, |n| Value::from(i64::try_from(n).unwrap_or(i64::MAX))))
            }
            ColumnType::String => (name, value),
        };
        row.insert(key.into(), value);
    }
    // Serialising a map of strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &row);
    let _ = out.write_all(b"\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> DeviceInfo {
        let mut info = crate::samples::sample_device_info("id-1", "web.1", 1_796_292_000_000_001, "block");
        info.policy_revision = None;
        info.kernel_drops = Some(3);
        info
    }

    #[test]
    fn a_heartbeat_is_a_message_and_a_row_of_every_column() {
        let (subject, headers, payload) = message(&info()).expect("a valid heartbeat");
        assert_eq!(subject, "monitor.events.DeviceInfo.web_1");
        assert!(is_heartbeat_subject(&subject));
        assert!(!is_heartbeat_subject("monitor.events.DeviceEvents.web_1"));
        assert!(!is_heartbeat_subject("monitor.events.DeviceInfoX.web_1"));
        let id = headers.get(async_nats::header::NATS_MESSAGE_ID).map(|v| v.as_str().to_string());
        assert_eq!(id.as_deref(), Some("id-1:info:1796292000000001"));
        let mut line = b"kept".to_vec();
        encode_info(&payload, &mut line).expect("a row");
        let row: Map<String, Value> = serde_json::from_slice(&line[4..]).expect("a JSON row");
        for (name, _) in INFO_COLUMNS {
            let key = if name == "Timestamp" { TIMESTAMP_MICROS } else { name };
            assert!(row.contains_key(key), "{key} in {row:?}");
        }
        assert_eq!(row.len(), INFO_COLUMNS.len());
        assert_eq!(row["PolicyRevision"], Value::Null);
        assert_eq!(row["KernelDrops"], 3);
        assert_eq!(row["DegradedFeatures"], r#"["quic_egress"]"#);
    }

    #[test]
    fn a_bad_heartbeat_says_why_and_writes_nothing() {
        let mut no_id = info();
        no_id.device_id.clear();
        let mut bad_time = info();
        bad_time.timestamp = "soon".into();
        let mut not_info = info();
        not_info.table = "DeviceEvents".into();
        for (payload, why) in [
            (b"{".to_vec(), "heartbeat"),
            (br#"{"Table":"DeviceInfo"}"#.to_vec(), "missing field"),
            (no_id.to_json().into_bytes(), "DeviceId"),
            (bad_time.to_json().into_bytes(), "soon"),
            (not_info.to_json().into_bytes(), "not DeviceInfo"),
        ] {
            let mut out = Vec::new();
            let err = encode_info(&payload, &mut out).expect_err("invalid");
            assert!(err.to_string().contains(why), "{err}");
            assert!(out.is_empty());
        }
        assert!(message(&no_id).is_err() && message(&bad_time).is_err());
    }
}

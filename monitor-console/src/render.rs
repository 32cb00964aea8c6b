//! What the API answers, as JSON: query results, events and query errors. The page draws these with
//! `textContent` only: every string here may come from the network (a Host header, an SNI).

use monitor_hunt::time::format_datetime;
use monitor_hunt::{QueryResult, TimelineEvent};
use serde_json::{Value as Json, json};

use crate::source::HuntFailure;

/// `{"columns": [...], "rows": [[...], ...]}`, values as `monitor hunt --format json` writes them.
pub fn result(result: &QueryResult) -> Json {
    json!({
        "columns": result.columns,
        "rows": result.rows.iter().map(|row| row.iter().map(|v| v.to_json()).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
}

/// The key that names an event across the fleet (and across polls of the live feed).
pub fn event_key(event: &TimelineEvent) -> String {
    match event.seq {
        Some(seq) => format!("{}:{}:{seq}", event.device_id, event.table),
        // A row older than the export's numbering: its time and place stand in.
        None => format!(
            "{}:{}:{}@{}:{}",
            event.device_id,
            event.table,
            event.device,
            event.timestamp,
            event.remote()
        ),
    }
}

/// One event as the timeline shows it: the proxy's address (RemoteIP:RemotePort) and the real target
/// (RemoteUrl) side by side, with the process.
pub fn event(event: &TimelineEvent) -> Json {
    json!({
        "key": event_key(event),
        "time": format_datetime(event.timestamp),
        "micros": event.timestamp,
        "table": event.table,
        "device": event.device,
        "deviceId": event.device_id,
        "seq": event.seq,
        "action": event.action,
        "process": event.process_label(),
        "account": event.account,
        "remote": event.remote(),
        "protocol": event.protocol,
        "target": event.target,
        "notes": event.notes(),
        "additional": event.additional,
    })
}

pub fn events(events: &[TimelineEvent]) -> Json {
    Json::Array(events.iter().map(event).collect())
}

/// A failed query: the message, and for a query error the place it points to (line and column,
/// 1-based, and the range in UTF-16 units, as the page's text box counts) with the caret excerpt.
pub fn failure(failure: &HuntFailure) -> Json {
    match failure {
        HuntFailure::Query { error, query } => {
            let utf16 = |byte: usize| {
                let mut at = byte.min(query.len());
                while !query.is_char_boundary(at) {
                    at -= 1;
                }
                query[..at].encode_utf16().count()
            };
            json!({
                "error": error.message,
                "line": error.line,
                "column": error.column,
                "start": utf16(error.span.start),
                "end": utf16(error.span.end.max(error.span.start)),
                "excerpt": error.excerpt,
            })
        }
        HuntFailure::Store(message) => json!({ "error": message }),
    }
}

/// An event of device `host` (id `id`) numbered `seq` at `at`, through the proxy 10.0.0.5:3128 to
/// example.com: for the tests.
#[cfg(test)]
pub(crate) fn sample(seq: i64, at: i64) -> TimelineEvent {
    TimelineEvent {
        timestamp: at,
        table: "DeviceNetworkEvents".into(),
        device: "host".into(),
        device_id: "id".into(),
        seq: Some(seq),
        action: "ConnectionSuccess".into(),
        process: "curl".into(),
        pid: Some(42),
        account: "root".into(),
        remote_ip: "10.0.0.5".into(),
        remote_port: Some(3128),
        protocol: "Tcp".into(),
        target: "example.com".into(),
        additional: json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_hunt::kql::{QueryError, Span};

    #[test]
    fn a_query_error_points_at_utf16_offsets() {
        let query = "DeviceEvents | where RemoteUrl == \"é\" | wher x";
        let at = query.find("| wher ").expect("in the query") + 2;
        let error = QueryError::new(Span::new(at, at + 4), "unknown operator").locate(query);
        let json = failure(&HuntFailure::Query { error, query: query.into() });
        // 'é' is two bytes and one UTF-16 unit.
        assert_eq!(json["start"], at - 1);
        assert_eq!(json["end"], at + 3);
        assert_eq!(json["column"], at);
        assert!(json["excerpt"].as_str().is_some_and(|e| e.ends_with("^^^^")), "{json}");
    }

    #[test]
    fn events_keep_the_proxy_and_the_target_apart() {
        let e = sample(7, 1_000_000);
        let json = event(&e);
        assert_eq!(json["remote"], "10.0.0.5:3128");
        assert_eq!(json["target"], "example.com");
        assert_eq!(json["process"], "curl[42]");
        assert_eq!(json["key"], "id:DeviceNetworkEvents:7");
        assert_eq!(json["time"], "1970-01-01T00:00:01.000000Z");
    }
}

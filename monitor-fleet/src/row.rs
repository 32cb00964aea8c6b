//! An exported event (the JSON of one message) as a line of its ClickHouse table's rows, in
//! `JSONEachRow`: written straight from the message's bytes, the way the local store files an event
//! (`monitor_hunt::schema::to_stored`): the same columns, the same typing of each value, the same checks.
//!
//! The ingest writes every message this way, so the cost per row is what decides its rate: the message
//! is read once into borrowed slices of itself, a string cell without escapes is copied as it came, and
//! only what needs it (an escaped string, a number written as text, AdditionalFields) is parsed.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;

use monitor_hunt::schema::{COLUMNS, ColumnType, RejectReason, TABLES};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The column that keeps `Timestamp` to the microsecond (`Timestamp` itself is computed from it).
pub const TIMESTAMP_MICROS: &str = "TimestampMicros";

/// Why a message is not an event the ingest can store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error(transparent)]
    Rejected(#[from] RejectReason),
    #[error("no Table, or not DeviceNetworkEvents or DeviceEvents")]
    BadTable,
    #[error("no DeviceId")]
    MissingDeviceId,
    #[error("no Seq, or not a positive integer")]
    MissingSeq,
    #[error("not a heartbeat: {0}")]
    BadHeartbeat(String),
}

/// The values of one event that the tables keep, as slices of the message.
struct Fields<'a> {
    table: Option<&'a RawValue>,
    cells: [Option<&'a RawValue>; COLUMNS.len()],
}

/// A key, borrowed from the message unless it holds an escape.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Reads an object into [`Fields`]; any other JSON value is `None` (not an object).
struct FieldsSeed;

impl<'de> DeserializeSeed<'de> for FieldsSeed {
    type Value = Option<Fields<'de>>;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed {
    type Value = Option<Fields<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields { table: None, cells: [None; COLUMNS.len()] };
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            // A repeated key: the last one counts, as in serde_json's own objects.
            if key == "Table" {
                fields.table = Some(map.next_value()?);
            } else if let Some(i) = COLUMNS.iter().position(|(name, _)| *name == key) {
                fields.cells[i] = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Some(fields))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The text of a JSON string value: borrowed unless it holds an escape; `None` for any other value.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// A Long cell as the store types it: an integer, or a string holding one; anything else is NULL.
fn long(raw: Option<&RawValue>) -> Option<i64> {
    let raw = raw?;
    match json_str(raw) {
        Some(text) => text.trim().parse().ok(),
        // A JSON number: i64 reads exactly the integers serde_json's `as_i64` gives (no fraction, no
        // exponent, in range); any other value (true, an object) is no number and so NULL.
        None => raw.get().parse().ok(),
    }
}

/// Writes `text` as a JSON string.
fn push_str(out: &mut Vec<u8>, text: &str) {
    // serde_json writes a str infallibly into a Vec.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// An exported event, read from its message: its table, and its values as slices of the message.
pub struct Row<'a> {
    pub table: &'static str,
    fields: Fields<'a>,
}

impl<'a> Row<'a> {
    /// Reads the message; what makes it no event of a table (not JSON, not an object, no Table) is an error
    /// here, what makes a cell invalid is one from [`Row::write`].
    pub fn parse(payload: &'a [u8]) -> Result<Row<'a>, InvalidEvent> {
        let mut deserializer = serde_json::Deserializer::from_slice(payload);
        let fields = FieldsSeed
            .deserialize(&mut deserializer)
            .and_then(|fields| deserializer.end().map(|()| fields))
            .map_err(|e| InvalidEvent::NotJson(e.to_string()))?;
        let fields = fields.ok_or(RejectReason::NotAnObject)?;
        let table = fields.table.and_then(json_str).ok_or(InvalidEvent::BadTable)?;
        let table = TABLES.into_iter().find(|t| *t == table).ok_or(InvalidEvent::BadTable)?;
        Ok(Row { table, fields })
    }

    /// Writes the row as one JSONEachRow line (with its newline) onto `out`. On an error `out` is as it
    /// was.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), InvalidEvent> {
        let start = out.len();
        let written = write_cells(&self.fields, out);
        if written.is_err() {
            out.truncate(start);
        }
        written
    }
}

/// Writes the event in `payload` as one JSONEachRow line onto `out` and returns its table
/// ([`Row::parse`], then [`Row::write`]).
pub fn encode_row(payload: &[u8], out: &mut Vec<u8>) -> Result<&'static str, InvalidEvent> {
    let row = Row::parse(payload)?;
    row.write(out)?;
    Ok(row.table)
}

fn write_cells(fields: &Fields<'_>, out: &mut Vec<u8>) -> Result<(), InvalidEvent> {
    out.push(b'{');
    for (i, ((name, ty), raw)) in COLUMNS.iter().zip(fields.cells).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if *ty == ColumnType::DateTime {
            let text = raw.and_then(json_str).ok_or(RejectReason::MissingTimestamp)?;
            let micros = monitor_hunt::time::parse_datetime(&text)
                .ok_or_else(|| RejectReason::BadTimestamp(text.to_string()))?;
            let _ = write!(out, "\"{TIMESTAMP_MICROS}\":{micros}");
            continue;
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match (*name, ty) {
            ("DeviceId", _) => match raw.filter(|r| !is_null(r)) {
                None => return Err(InvalidEvent::MissingDeviceId),
                Some(raw) => match json_str(raw) {
                    Some(id) if id.is_empty() => return Err(InvalidEvent::MissingDeviceId),
                    Some(id) => push_str(out, &id),
                    None => push_str(out, &canonical(raw)),
                },
            },
            ("Seq", _) => match long(raw) {
                Some(seq) if seq > 0 => {
                    let _ = write!(out, "{seq}");
                }
                _ => return Err(InvalidEvent::MissingSeq),
            },
            (_, ColumnType::Long) => match long(raw) {
                Some(n) => {
                    let _ = write!(out, "{n}");
                }
                None => out.extend_from_slice(b"null"),
            },
            (_, ty) => match raw.filter(|r| !is_null(r)) {
                None => out.extend_from_slice(b"null"),
                Some(raw) if *ty == ColumnType::String => match json_str(raw) {
                    // Valid JSON without an escape: as it came.
                    Some(Cow::Borrowed(_)) => out.extend_from_slice(raw.get().as_bytes()),
                    Some(Cow::Owned(text)) => push_str(out, &text),
                    // Not a string (a number, an object): its JSON text, as the store keeps it.
                    None => push_str(out, &canonical(raw)),
                },
                // AdditionalFields: its JSON text (compacted, keys in order) as a string.
                Some(raw) => push_str(out, &canonical(raw)),
            },
        }
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// A value's JSON text as the store writes it (serde_json's `Value` printed).
fn canonical(raw: &RawValue) -> String {
    serde_json::from_str::<Value>(raw.get()).map(|v| v.to_string()).unwrap_or_else(|_| raw.get().to_string())
}

/// [`encode_row`] as a JSON object: the row ClickHouse is sent, for the tests.
pub fn to_row(payload: &[u8]) -> Result<(&'static str, Map<String, Value>), InvalidEvent> {
    let mut line = Vec::new();
    let table = encode_row(payload, &mut line)?;
    let row = serde_json::from_slice(&line).map_err(|e| InvalidEvent::NotJson(e.to_string()))?;
    Ok((table, row))
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_hunt::schema::{Cell, to_stored};

    #[test]
    fn events_become_typed_rows() {
        let payload = br#"{"Table":"DeviceNetworkEvents","Timestamp":"2026-11-29T05:33:12.250000Z","DeviceId":"m1",
            "Seq":7,"DeviceName":"a","RemotePort":3128,"InitiatingProcessFileName":null,"AdditionalFields":{"Sni":"x"}}"#;
        let (table, row) = to_row(payload).expect("a valid event");
        assert_eq!(table, "DeviceNetworkEvents");
        assert_eq!(row[TIMESTAMP_MICROS], 1_795_930_392_250_000i64);
        assert_eq!(row["Seq"], 7);
        assert_eq!(row["RemotePort"], 3128);
        assert_eq!(row["InitiatingProcessFileName"], Value::Null);
        assert_eq!(row["RemoteUrl"], Value::Null, "a missing key is NULL");
        assert_eq!(row["AdditionalFields"], r#"{"Sni":"x"}"#);
        assert!(!row.contains_key("Timestamp"), "Timestamp is computed by ClickHouse");
    }

    /// Every cell of the row is the cell the local store keeps for the same event.
    #[test]
    fn rows_hold_what_the_local_store_keeps() {
        let payloads: [&[u8]; 4] = [
            br#"{"Table":"DeviceEvents","Timestamp":"2026-11-29T07:33:12.5+02:00","DeviceId":"m\u0031","Seq":"9",
                "RemotePort":"  443 ","LocalPort":3.5,"ReportId":1e3,"InitiatingProcessId":true,
                "DeviceName":"tab\there \"q\" \u00e9\ud83d\ude00","RemoteIP":17,"RemoteUrl":{"b":1, "a":[1, 2.50]},
                "ActionType":"x","ActionType":"last","AdditionalFields":{ "z" : 1, "a" : "\u0041" },"Extra":[1]}"#,
            br#"{"Table":"DeviceNetworkEvents","Timestamp":"2026-11-29T05:33:12Z","DeviceId":"m","Seq":1,
                "AdditionalFields":"text","InitiatingProcessParentId":-12,"LocalPort":9223372036854775808}"#,
            br#"{"Table":"DeviceNetworkEvents","Timestamp":"2026-11-29T05:33:12Z","DeviceId":"m","Seq":2,
                "AdditionalFields":null,"RemoteUrl":"","Protocol":false}"#,
            br#"{"AdditionalFields":[],"Seq":3,"DeviceId":"m","Timestamp":"2026-11-29T05:33:12.000001Z","Table":"DeviceEvents"}"#,
        ];
        for payload in payloads {
            let text = String::from_utf8_lossy(payload);
            let (table, row) = to_row(payload).unwrap_or_else(|e| panic!("{text}: {e}"));
            let event: Value = serde_json::from_slice(payload).expect("JSON");
            let stored = to_stored(&event).expect("stored");
            assert_eq!(table, event["Table"], "{text}");
            for ((name, _), cell) in COLUMNS.iter().zip(stored.cells) {
                let expected = match cell {
                    Cell::Null => Value::Null,
                    Cell::Integer(n) => Value::from(n),
                    Cell::Text(t) if *name == "Timestamp" => {
                        let micros = monitor_hunt::time::parse_datetime(&t).expect("normalised");
                        assert_eq!(row[TIMESTAMP_MICROS], micros, "{text}");
                        continue;
                    }
                    Cell::Text(t) => Value::String(t),
                };
                assert_eq!(row[*name], expected, "{name} of {text}");
            }
        }
    }

    #[test]
    fn invalid_events_say_why() {
        let cases: [(&[u8], InvalidEvent); 9] = [
            (b"not json", InvalidEvent::NotJson(String::new())),
            (b"{\"Table\":\"DeviceEvents\"} trailing", InvalidEvent::NotJson(String::new())),
            (b"[1,2]", RejectReason::NotAnObject.into()),
            (b"\"DeviceEvents\"", RejectReason::NotAnObject.into()),
            (br#"{"Timestamp":"2026-11-29T05:33:12Z","DeviceId":"m","Seq":1}"#, InvalidEvent::BadTable),
            (br#"{"Table":"DeviceEvents","DeviceId":"m","Seq":1}"#, RejectReason::MissingTimestamp.into()),
            (
                br#"{"Table":"DeviceEvents","Timestamp":"yesterday","DeviceId":"m","Seq":1}"#,
                RejectReason::BadTimestamp("yesterday".into()).into(),
            ),
            (
                br#"{"Table":"DeviceEvents","Timestamp":"2026-11-29T05:33:12Z","Seq":1}"#,
                InvalidEvent::MissingDeviceId,
            ),
            (
                br#"{"Table":"DeviceEvents","Timestamp":"2026-11-29T05:33:12Z","DeviceId":"m","Seq":0}"#,
                InvalidEvent::MissingSeq,
            ),
        ];
        for (payload, expected) in cases {
            let mut out = b"kept".to_vec();
            let err = encode_row(payload, &mut out).expect_err("invalid");
            assert_eq!(out, b"kept", "nothing written for an invalid event");
            match (&err, &expected) {
                (InvalidEvent::NotJson(_), InvalidEvent::NotJson(_)) => {}
                _ => assert_eq!(err, expected, "{}", String::from_utf8_lossy(payload)),
            }
        }
    }
}

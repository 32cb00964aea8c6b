//! The devices at a glance (`monitor devices`): each DeviceName and DeviceId with when it was first and
//! last seen, how many events it recorded, how many connections it blocked, and its protection mode as its
//! own events show it. The local store holds one device; the fleet store (monitor-fleet) holds them all and
//! answers with the same rows.

use crate::kql::{QueryResult, Value};
use crate::store::{Store, StoreError};
use crate::time::parse_datetime;

pub const BLOCKED: &str = "ExploitGuardNetworkProtectionBlocked";
pub const AUDITED: &str = "ExploitGuardNetworkProtectionAudited";

/// One device, over both tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    pub name: String,
    pub id: String,
    /// Microseconds since the epoch.
    pub first_seen: i64,
    pub last_seen: i64,
    pub events: i64,
    /// Connections it blocked (ExploitGuardNetworkProtectionBlocked rows).
    pub blocked: i64,
    /// The action of its newest protection row (Blocked or Audited), when it has one.
    pub last_protection: Option<String>,
}

impl DeviceSummary {
    /// `block` or `audit`, read from the newest protection row: a block-mode daemon never reports a
    /// denied target as Audited and an audit-mode one never blocks. `-` when the device has matched no
    /// indicator yet (its mode is not in its events).
    pub fn mode(&self) -> &'static str {
        match self.last_protection.as_deref() {
            Some(BLOCKED) => "block",
            Some(AUDITED) => "audit",
            _ => "-",
        }
    }
}

/// The devices as rows, for the output formats of `hunt`.
pub fn devices_result(devices: &[DeviceSummary]) -> QueryResult {
    let columns = ["DeviceName", "DeviceId", "FirstSeen", "LastSeen", "Events", "Blocked", "Mode"];
    QueryResult {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows: devices
            .iter()
            .map(|d| {
                vec![
                    Value::String(d.name.clone()),
                    Value::String(d.id.clone()),
                    Value::DateTime(d.first_seen),
                    Value::DateTime(d.last_seen),
                    Value::Long(d.events),
                    Value::Long(d.blocked),
                    Value::String(d.mode().to_string()),
                ]
            })
            .collect(),
    }
}

impl Store {
    /// The devices the store holds events of, by name then id.
    pub fn devices(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        let both = "SELECT ifnull(DeviceName, '') AS DeviceName, ifnull(DeviceId, '') AS DeviceId, Timestamp, \
                    ActionType, Seq FROM DeviceNetworkEvents UNION ALL \
                    SELECT ifnull(DeviceName, ''), ifnull(DeviceId, ''), Timestamp, ActionType, Seq FROM DeviceEvents";
        let sql = format!(
            "SELECT d.DeviceName, d.DeviceId, min(d.Timestamp), max(d.Timestamp), count(*), \
             sum(d.ActionType = '{BLOCKED}'), \
             (SELECT e.ActionType FROM DeviceEvents e \
              WHERE ifnull(e.DeviceName, '') = d.DeviceName AND ifnull(e.DeviceId, '') = d.DeviceId \
              AND e.ActionType IN ('{BLOCKED}', '{AUDITED}') ORDER BY e.Timestamp DESC, e.Seq DESC LIMIT 1) \
             FROM ({both}) d GROUP BY d.DeviceName, d.DeviceId ORDER BY d.DeviceName, d.DeviceId"
        );
        let sqlite =
            |source| StoreError::Sqlite { op: "list the devices", path: self.path().to_path_buf(), source };
        let mut statement = self.conn.prepare(&sql).map_err(sqlite)?;
        let rows = statement
            .query_map([], |row| {
                let time = |i: usize| -> rusqlite::Result<i64> {
                    Ok(row.get::<_, Option<String>>(i)?.as_deref().and_then(parse_datetime).unwrap_or(0))
                };
                Ok(DeviceSummary {
                    name: row.get(0)?,
                    id: row.get(1)?,
                    first_seen: time(2)?,
                    last_seen: time(3)?,
                    events: row.get(4)?,
                    blocked: row.get::<_, Option<i64>>(5)?.unwrap_or(0),
                    last_protection: row.get(6)?,
                })
            })
            .map_err(sqlite)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sqlite)
    }
}

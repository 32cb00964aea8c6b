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
    /// What its newest heartbeat says (the fleet store keeps them; `None`: no heartbeat, or a local store).
    pub health: Option<DeviceHealth>,
}

/// A device's newest heartbeat (`DeviceInfo` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceHealth {
    /// Microseconds since the epoch.
    pub last_heartbeat: i64,
    pub version: String,
    /// `block`, `audit` or `off`, as the agent runs it.
    pub mode: String,
    pub policy_revision: Option<i64>,
    pub kernel_drops: Option<i64>,
    pub export_lag_rows: i64,
    /// JSON array of the features this kernel could not attach.
    pub degraded: String,
    /// How often the agent sends one.
    pub interval_seconds: Option<i64>,
}

/// An agent's health at `now`: `ok`, `stale` (no heartbeat for more than `stale_after`, or four of its own
/// intervals when they are longer), or `no heartbeat`.
pub fn health(device: &DeviceSummary, now: i64, stale_after: std::time::Duration) -> &'static str {
    let Some(h) = &device.health else { return "no heartbeat" };
    let stale_after = i64::try_from(stale_after.as_micros()).unwrap_or(i64::MAX);
    let missed_four = h.interval_seconds.unwrap_or(0).saturating_mul(4_000_000);
    if now.saturating_sub(h.last_heartbeat) > stale_after.max(missed_four) { "stale" } else { "ok" }
}

impl DeviceSummary {
    /// The mode of its newest heartbeat; without one, `block` or `audit` read from the newest protection row: a block-mode daemon never reports a
    /// denied target as Audited and an audit-mode one never blocks. `-` when the device has matched no
    /// indicator yet (its mode is not in its events).
    pub fn mode(&self) -> &str {
        if let Some(health) = &self.health {
            return &health.mode;
        }
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

/// The fleet's devices as rows: [`devices_result`]'s columns, then each agent's health at `now` (see
/// [`health`]) and what its newest heartbeat says.
pub fn fleet_devices_result(
    devices: &[DeviceSummary],
    now: i64,
    stale_after: std::time::Duration,
) -> QueryResult {
    let mut result = devices_result(devices);
    result.columns.extend(
        ["Health", "LastHeartbeat", "Version", "PolicyRevision", "KernelDrops", "ExportLagRows", "Degraded"]
            .map(String::from),
    );
    for (row, device) in result.rows.iter_mut().zip(devices) {
        row.push(Value::String(health(device, now, stale_after).into()));
        match &device.health {
            Some(h) => row.extend([
                Value::DateTime(h.last_heartbeat),
                Value::String(h.version.clone()),
                h.policy_revision.map_or(Value::Null, Value::Long),
                h.kernel_drops.map_or(Value::Null, Value::Long),
                Value::Long(h.export_lag_rows),
                Value::String(h.degraded.clone()),
            ]),
            None => row.extend([
                Value::Null,
                Value::String(String::new()),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::String(String::new()),
            ]),
        }
    }
    result
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
                    health: None,
                })
            })
            .map_err(sqlite)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sqlite)
    }
}

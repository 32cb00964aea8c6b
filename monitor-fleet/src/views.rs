//! `monitor devices --fleet` and `monitor timeline --fleet --device NAME`: the local views, answered by
//! the fleet store. The rows are the local ones ([`DeviceSummary`], [`TimelineEvent`]) and print the same
//! way; each view reads both event tables in one query that ClickHouse runs (`FINAL` so a redelivered
//! event counts once), in SQL that ClickHouse 18.16 runs. `devices` adds each agent's health from its
//! newest heartbeat (`DeviceInfo`, a second query).

use std::io::Write;

use monitor_hunt::cli::{DevicesArgs, TimelineArgs, timeline_filter, write_result, write_timeline};
use monitor_hunt::devices::{AUDITED, BLOCKED, DeviceHealth, fleet_devices_result};
use monitor_hunt::gaps::EXPORT_GAP;
use monitor_hunt::kql::sql::{TableSplits, quote, ranged_reads};
use monitor_hunt::schema::{DEVICE_INFO, TABLES};
use monitor_hunt::{DeviceSummary, TimelineEvent, TimelineFilter};
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;

use crate::FleetError;
use crate::clickhouse::{FleetSql, TIMESTAMP_MICROS};
use crate::hunt::{connect, table_splits};

/// Both tables' rows, deduplicated, as one relation with `columns`; `filter` is a condition (or empty).
/// Each table is read in the DeviceId ranges `splits` gives it, side by side.
fn both_tables(clickhouse: &impl FleetSql, columns: &str, filter: &str, splits: &TableSplits) -> String {
    TABLES
        .iter()
        .map(|table| {
            let read = format!(
                "SELECT {} AS Source, {columns} FROM {}.{table} FINAL",
                quote(table),
                clickhouse.database()
            );
            ranged_reads(&read, filter, splits.boundaries(table))
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Every device in the fleet store, by name then id; large tables read in ranges side by side.
pub fn devices(clickhouse: &impl FleetSql) -> Result<Vec<DeviceSummary>, FleetError> {
    devices_in(clickhouse, &table_splits(clickhouse))
}

/// [`devices`], each table read in the DeviceId ranges `splits` gives it.
pub fn devices_in(
    clickhouse: &impl FleetSql,
    splits: &TableSplits,
) -> Result<Vec<DeviceSummary>, FleetError> {
    let columns = format!(
        "ifNull(DeviceName, '') AS Name, DeviceId AS Id, {TIMESTAMP_MICROS} AS Micros, Seq AS N, \
         ifNull(ActionType, '') AS Action"
    );
    let sql = format!(
        "SELECT Name, Id, min(Micros) AS FirstSeen, max(Micros) AS LastSeen, count() AS Events, \
         countIf(Action = {blocked}) AS Blocked, \
         argMaxIf(Action, (Micros, N), Action IN ({blocked}, {audited})) AS LastProtection \
         FROM ({}) GROUP BY Name, Id ORDER BY Name, Id",
        // Gap rows stand for events that are not there: they are no event of the device.
        both_tables(
            clickhouse,
            &columns,
            &format!("ifNull(ActionType, '') != {}", quote(EXPORT_GAP)),
            splits
        ),
        blocked = quote(BLOCKED),
        audited = quote(AUDITED),
    );
    let rows = clickhouse.query_rows(&sql)?;
    let mut health = heartbeats(clickhouse)?;
    let mut devices: Vec<DeviceSummary> = rows
        .iter()
        .map(|row| {
            let (name, id) = (text(row, "Name"), text(row, "Id"));
            DeviceSummary {
                health: health.remove(&(name.clone(), id.clone())).map(|(_, h)| h),
                name,
                id,
                first_seen: long(row, "FirstSeen").unwrap_or(0),
                last_seen: long(row, "LastSeen").unwrap_or(0),
                events: long(row, "Events").unwrap_or(0),
                blocked: long(row, "Blocked").unwrap_or(0),
                last_protection: Some(text(row, "LastProtection")).filter(|a| !a.is_empty()),
            }
        })
        .collect();
    // Agents that sent heartbeats but no event yet: seen from their first heartbeat to their last.
    for ((name, id), (first, h)) in health {
        devices.push(DeviceSummary {
            name,
            id,
            first_seen: first,
            last_seen: h.last_heartbeat,
            events: 0,
            blocked: 0,
            last_protection: None,
            health: Some(h),
        });
    }
    devices.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    Ok(devices)
}

/// Heartbeats by (DeviceName, DeviceId): the time of the first, and the newest.
type Heartbeats = BTreeMap<(String, String), (i64, DeviceHealth)>;

/// Each agent's newest heartbeat, by DeviceName and DeviceId, with the time of its first: every column
/// from that one row (one tuple: argMax of a Nullable column alone would skip the rows where it is null).
/// A fleet store whose ingest has not created `DeviceInfo` yet has no heartbeats.
fn heartbeats(clickhouse: &impl FleetSql) -> Result<Heartbeats, FleetError> {
    let sql = format!(
        "SELECT Name, Id, First, Last, tupleElement(H, 1) AS Version, tupleElement(H, 2) AS Mode, \
         tupleElement(H, 3) AS Revision, tupleElement(H, 4) AS Drops, tupleElement(H, 5) AS Lag, \
         tupleElement(H, 6) AS Degraded, tupleElement(H, 7) AS Interval FROM (\
         SELECT ifNull(DeviceName, '') AS Name, DeviceId AS Id, min({TIMESTAMP_MICROS}) AS First, \
         max({TIMESTAMP_MICROS}) AS Last, argMax(tuple(ifNull(ClientVersion, ''), ifNull(ProtectionMode, ''), \
         PolicyRevision, KernelDrops, ifNull(ExportLagRows, 0), ifNull(DegradedFeatures, '[]'), \
         HeartbeatIntervalSeconds), {TIMESTAMP_MICROS}) AS H \
         FROM {}.{DEVICE_INFO} FINAL GROUP BY Name, Id)",
        clickhouse.database(),
    );
    let rows = match clickhouse.query_rows(&sql) {
        Err(FleetError::ClickHouse(text))
            if text.contains("Code: 60,") || text.contains("Code: 60.") || text.contains("UNKNOWN_TABLE") =>
        {
            return Ok(Heartbeats::new());
        }
        rows => rows?,
    };
    Ok(rows
        .iter()
        .map(|row| {
            let health = DeviceHealth {
                last_heartbeat: long(row, "Last").unwrap_or(0),
                version: text(row, "Version"),
                mode: text(row, "Mode"),
                policy_revision: long(row, "Revision"),
                kernel_drops: long(row, "Drops"),
                export_lag_rows: long(row, "Lag").unwrap_or(0),
                degraded: text(row, "Degraded"),
                interval_seconds: long(row, "Interval"),
            };
            ((text(row, "Name"), text(row, "Id")), (long(row, "First").unwrap_or(0), health))
        })
        .collect())
}

/// The timeline of the device `filter` names (of every device without one), newest first, as the local
/// store gives it. `now` (microseconds since the epoch) anchors `since`.
pub fn timeline(
    clickhouse: &impl FleetSql,
    filter: &TimelineFilter,
    now: i64,
) -> Result<Vec<TimelineEvent>, FleetError> {
    let mut conditions = Vec::new();
    if let Some(device) = &filter.device {
        conditions.push(format!("ifNull(DeviceName, '') = {}", quote(device)));
    }
    if let Some(since) = filter.since {
        let age = i64::try_from(since.as_micros()).unwrap_or(i64::MAX);
        conditions.push(format!("{TIMESTAMP_MICROS} >= {}", now.saturating_sub(age)));
    }
    if let Some(process) = &filter.process {
        conditions.push(format!("lower(ifNull(InitiatingProcessFileName, '')) = lower({})", quote(process)));
    }
    if let Some(action) = &filter.action {
        conditions.push(format!("ifNull(ActionType, '') = {}", quote(action)));
    }
    let columns = format!(
        "{TIMESTAMP_MICROS} AS Micros, Seq AS N, ifNull(DeviceName, '') AS Device, DeviceId AS Id, ifNull(ActionType, '') AS Action, \
         ifNull(InitiatingProcessFileName, '') AS Process, InitiatingProcessId AS Pid, \
         ifNull(InitiatingProcessAccountName, '') AS Account, ifNull(RemoteIP, '') AS Ip, RemotePort AS Port, \
         ifNull(Protocol, '') AS Proto, ifNull(RemoteUrl, '') AS Url, ifNull(AdditionalFields, '') AS Fields"
    );
    let limit = filter.limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
    let sql = format!(
        "SELECT * FROM ({}) ORDER BY Micros DESC, N DESC{limit}",
        // One device's rows: their DeviceIds are few, so ranges would not share the work.
        both_tables(clickhouse, &columns, &conditions.join(" AND "), &TableSplits::default())
    );
    let rows = clickhouse.query_rows(&sql)?;
    Ok(rows
        .iter()
        .map(|row| TimelineEvent {
            timestamp: long(row, "Micros").unwrap_or(0),
            table: text(row, "Source"),
            device: text(row, "Device"),
            device_id: text(row, "Id"),
            seq: long(row, "N"),
            action: text(row, "Action"),
            process: text(row, "Process"),
            pid: long(row, "Pid"),
            account: text(row, "Account"),
            remote_ip: text(row, "Ip"),
            remote_port: long(row, "Port"),
            protocol: text(row, "Proto"),
            target: text(row, "Url"),
            additional: serde_json::from_str(&text(row, "Fields")).unwrap_or(Json::Null),
        })
        .collect())
}

fn text(row: &Map<String, Json>, key: &str) -> String {
    match row.get(key) {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn long(row: &Map<String, Json>, key: &str) -> Option<i64> {
    let value = row.get(key)?;
    value.as_i64().or_else(|| value.as_u64().map(|n| n as i64)).or_else(|| value.as_str()?.parse().ok())
}

/// `monitor devices --fleet URL`.
pub fn devices_cli(args: &DevicesArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let clickhouse = connect(&args.read.fleet)?;
    let devices = devices(&clickhouse)?;
    let now = monitor_hunt::time::now_micros();
    write_result(&fleet_devices_result(&devices, now, args.stale_after), args.read.format, out)
}

/// `monitor timeline --fleet URL --device NAME`.
pub fn timeline_cli(args: &TimelineArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if args.device.is_none() {
        anyhow::bail!(
            "the fleet holds many devices: name one with --device NAME (`monitor devices --fleet URL` lists them)"
        );
    }
    let clickhouse = connect(&args.fleet)?;
    let now = monitor_hunt::time::now_micros();
    // The filter carries --device.
    let events = timeline(&clickhouse, &timeline_filter(args), now)?;
    write_timeline(&events, args, now, out)
}

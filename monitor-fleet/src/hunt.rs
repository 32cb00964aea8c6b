//! `monitor hunt --fleet`: the same KQL, compiled to ClickHouse SQL and run on the fleet store; the same
//! output formats as local hunting.

use std::io::Write;

use anyhow::Context as _;
use monitor_hunt::cli::FleetArgs;
use monitor_hunt::kql::sql::{SqlType, TableSplits, reads_every_row, split_boundaries, to_clickhouse_with};
use monitor_hunt::schema::TABLES;
use monitor_hunt::{QueryResult, Value};
use serde_json::Value as Json;

use crate::FleetError;
use crate::clickhouse::{ClickHouse, FleetSql};

/// Tables of fewer rows are read in one range: cutting them would cost more than it saves.
pub const SPLIT_MIN_ROWS: u64 = 1_000_000;

/// How to cut each table of the fleet store into DeviceId ranges read side by side
/// ([`TableSplits`]): as many ranges as the server runs threads per query, of about as many rows each.
/// Small tables, a one-thread server or a store that cannot say are read whole.
pub fn table_splits(clickhouse: &impl FleetSql) -> TableSplits {
    let mut splits = TableSplits::default();
    let db = monitor_hunt::kql::sql::quote(clickhouse.database());
    let Ok(sizes) = clickhouse.query_rows(&format!(
        "SELECT table, toUInt64(sum(rows)) AS rows, \
         (SELECT toUInt64OrZero(extract(value, '[0-9]+')) FROM system.settings WHERE name = 'max_threads') AS threads \
         FROM system.parts WHERE database = {db} AND active GROUP BY table"
    )) else {
        return splits;
    };
    for size in sizes {
        let number = |key: &str| size.get(key).and_then(Json::as_u64).unwrap_or(0);
        let (rows, threads) = (number("rows"), usize::try_from(number("threads")).unwrap_or(1));
        let Some(table) = TABLES.into_iter().find(|t| size.get("table").and_then(Json::as_str) == Some(t))
        else {
            continue;
        };
        if rows < SPLIT_MIN_ROWS || threads <= 1 {
            continue;
        }
        let Ok(devices) = clickhouse.query_rows(&format!(
            "SELECT DeviceId AS id, count() AS n FROM {}.{table} GROUP BY DeviceId",
            clickhouse.database()
        )) else {
            continue;
        };
        let devices: Vec<(String, u64)> = devices
            .iter()
            .filter_map(|d| Some((d.get("id")?.as_str()?.to_string(), d.get("n")?.as_u64()?)))
            .collect();
        splits.set(table, split_boundaries(&devices, threads, SPLIT_MIN_ROWS));
    }
    splits
}

/// Runs `query` on the fleet store as if it were `now` (microseconds since the epoch); a query that reads
/// every row reads each large table in ranges side by side ([`table_splits`]).
pub fn query_at(clickhouse: &impl FleetSql, query: &str, now: i64) -> anyhow::Result<QueryResult> {
    let splits = if reads_every_row(query) { table_splits(clickhouse) } else { TableSplits::default() };
    query_with(clickhouse, query, now, &splits)
}

/// [`query_at`] with the tables read in the ranges `splits` gives.
pub fn query_with(
    clickhouse: &impl FleetSql,
    query: &str,
    now: i64,
    splits: &TableSplits,
) -> anyhow::Result<QueryResult> {
    let compiled = to_clickhouse_with(query, clickhouse.database(), now, splits)?;
    let rows = clickhouse.query_rows(&compiled.sql).map_err(|e| match e {
        // ClickHouse refused the SQL (rather than being unreachable): show what it refused.
        FleetError::ClickHouse(text) if text.contains(" answered ") => {
            FleetError::ClickHouse(format!("{text}\nthe SQL was: {}", compiled.sql))
        }
        other => other,
    })?;
    let rows = rows
        .iter()
        .map(|row| {
            compiled
                .columns
                .iter()
                .map(|(name, ty)| cell(row.get(name).unwrap_or(&Json::Null), *ty))
                .collect()
        })
        .collect();
    Ok(QueryResult { columns: compiled.columns.into_iter().map(|(name, _)| name).collect(), rows })
}

fn cell(json: &Json, ty: SqlType) -> Value {
    let long = || json.as_i64().or_else(|| json.as_f64().map(|f| f as i64));
    match (ty, json) {
        (SqlType::Dynamic, Json::String(text)) if text.is_empty() => Value::Dynamic(Json::Null),
        (SqlType::Dynamic, Json::String(text)) => {
            Value::Dynamic(serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.clone())))
        }
        (SqlType::Dynamic, other) => Value::Dynamic(other.clone()),
        (_, Json::Null) => Value::Null,
        (SqlType::DateTime, _) => long().map_or(Value::Null, Value::DateTime),
        (SqlType::Timespan, _) => long().map_or(Value::Null, Value::Timespan),
        (SqlType::Long, _) => long().map_or(Value::Null, Value::Long),
        (SqlType::Real, _) => json.as_f64().map_or(Value::Null, Value::Real),
        (SqlType::Bool, _) => Value::Bool(long().is_some_and(|n| n != 0)),
        (SqlType::String, Json::String(text)) => Value::String(text.clone()),
        (SqlType::String, other) => Value::String(other.to_string()),
    }
}

/// `monitor hunt --fleet URL QUERY`.
pub fn hunt(args: &monitor_hunt::cli::HuntArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let clickhouse = connect(&args.read.fleet)?;
    let result = query_at(&clickhouse, &args.query, monitor_hunt::time::now_micros())?;
    monitor_hunt::cli::write_result(&result, args.read.format, out)
}

/// The fleet store `--fleet` names, with its credentials.
pub fn connect(fleet: &FleetArgs) -> anyhow::Result<ClickHouse> {
    let url = fleet.url.as_deref().context("--fleet URL")?;
    ClickHouse::connect(url, fleet.user.clone(), fleet.password.clone(), fleet.tls_ca.as_deref())
        .context("--fleet")
}

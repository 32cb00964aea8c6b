//! `monitor hunt --fleet`: the same KQL, compiled to ClickHouse SQL and run on the fleet store; the same
//! output formats as local hunting.

use std::io::Write;

use anyhow::Context as _;
use monitor_hunt::cli::FleetArgs;
use monitor_hunt::kql::sql::{SqlType, to_clickhouse};
use monitor_hunt::{QueryResult, Value};
use serde_json::Value as Json;

use crate::FleetError;
use crate::clickhouse::{ClickHouse, FleetSql};

/// Runs `query` on the fleet store as if it were `now` (microseconds since the epoch).
pub fn query_at(clickhouse: &impl FleetSql, query: &str, now: i64) -> anyhow::Result<QueryResult> {
    let compiled = to_clickhouse(query, clickhouse.database(), now)?;
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

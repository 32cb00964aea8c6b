//! Where the console reads: the local store (SQLite, one device) or the fleet store (ClickHouse, every
//! device). Both answer the same four questions with the same rows as the command line
//! (`monitor devices`, `monitor timeline`, `monitor hunt`). Every call blocks: the server runs them on
//! tokio's blocking threads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use monitor_fleet::clickhouse::ClickHouse;
use monitor_hunt::devices::{devices_result, fleet_devices_result};
use monitor_hunt::kql::QueryError;
use monitor_hunt::{HuntError, QueryResult, Store, TimelineEvent, TimelineFilter};

/// The store the console shows.
#[derive(Clone)]
pub enum Source {
    /// A daemon's own store: one device.
    Store(PathBuf),
    /// The fleet store that `monitor ingest` fills.
    Fleet(ClickHouse),
}

/// Why a query gave no rows: the query itself (with the place it points to), or the store.
#[derive(Debug)]
pub enum HuntFailure {
    Query { error: QueryError, query: String },
    Store(String),
}

impl Source {
    /// What the page says it shows.
    pub fn describe(&self) -> String {
        match self {
            Source::Store(path) => format!("local store {}", path.display()),
            Source::Fleet(clickhouse) => format!("fleet store {}", clickhouse.url()),
        }
    }

    pub fn is_fleet(&self) -> bool {
        matches!(self, Source::Fleet(_))
    }

    fn store(path: &Path) -> anyhow::Result<Store> {
        Ok(Store::open(path)?)
    }

    /// The devices as `monitor devices` lists them; the fleet's with each agent's health at `now`.
    pub fn devices(&self, now: i64, stale_after: Duration) -> anyhow::Result<QueryResult> {
        match self {
            Source::Store(path) => Ok(devices_result(&Self::store(path)?.devices()?)),
            Source::Fleet(clickhouse) => {
                Ok(fleet_devices_result(&monitor_fleet::views::devices(clickhouse)?, now, stale_after))
            }
        }
    }

    /// The events `filter` asks for (of one device, or of every device), newest first.
    pub fn events(&self, filter: &TimelineFilter, now: i64) -> anyhow::Result<Vec<TimelineEvent>> {
        match self {
            Source::Store(path) => Ok(Self::store(path)?.timeline(filter, now)?),
            Source::Fleet(clickhouse) => Ok(monitor_fleet::views::timeline(clickhouse, filter, now)?),
        }
    }

    /// Runs a KQL query as if it were `now`: locally over SQLite, on the fleet compiled to ClickHouse SQL.
    pub fn hunt(&self, query: &str, now: i64) -> Result<QueryResult, HuntFailure> {
        let located = |error: QueryError| HuntFailure::Query { error, query: query.to_string() };
        match self {
            Source::Store(path) => {
                // A query error is reported even where there is no store yet.
                monitor_hunt::kql::check(query).map_err(located)?;
                let store = Self::store(path).map_err(|e| HuntFailure::Store(format!("{e:#}")))?;
                store.query_at(query, now).map_err(|e| match e {
                    HuntError::Query(error) => located(error),
                    other => HuntFailure::Store(format!("{:#}", anyhow::Error::from(other))),
                })
            }
            Source::Fleet(clickhouse) => monitor_fleet::hunt::query_at(clickhouse, query, now).map_err(|e| {
                match e.downcast::<QueryError>() {
                    Ok(error) => located(error),
                    Err(other) => HuntFailure::Store(format!("{other:#}")),
                }
            }),
        }
    }
}

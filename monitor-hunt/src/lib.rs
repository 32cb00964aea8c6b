//! The event store and hunting.
//!
//! - [`StoreWriter`]: the daemon's side. Events go to an embedded SQLite database (WAL mode) through a
//!   bounded queue and a background thread that commits them in batches, so the event path never waits on
//!   the disk; [`Retention`] bounds the store by age and size.
//! - [`Store`]: the readers' side, which may run while the daemon writes: [`Store::query`] runs a subset
//!   of KQL ([`kql`]), [`Store::timeline`] lists the events newest first.
//!   [`Store::devices`] sums them up by device.
//! - [`cli`]: the `monitor hunt`, `monitor timeline` and `monitor devices` subcommands.

#![cfg_attr(test, expect(unused_crate_dependencies, reason = "tempfile is for the integration tests"))]

pub mod cli;
pub mod devices;
pub mod gaps;
pub mod kql;
mod output;
pub mod schema;
mod state;
mod store;
pub mod time;
pub mod timeline;

use std::path::PathBuf;

pub use devices::DeviceSummary;
pub use kql::{HuntError, QueryError, QueryResult, Value};
pub use output::{write_csv, write_json_lines, write_table};
pub use store::{
    BATCH_INTERVAL, BATCH_MAX_EVENTS, CHANNEL_CAPACITY, RETENTION_INTERVAL, Retention, RetentionReport,
    SEQ_BLOCK, Spool, SpooledEvent, Store, StoreError, StoreWriter,
};
pub use timeline::{TimelineEvent, TimelineFilter};

/// Where the daemon keeps its store unless told otherwise.
pub fn default_store_path() -> PathBuf {
    PathBuf::from("/var/lib/monitor/events.db")
}

//! The fleet: every agent's events in one place, and the same KQL over all of them.
//!
//! - [`export`]: the agent side. `monitor run --export nats://...` publishes every stored event to NATS
//!   JetStream (stream `MONITOR_EVENTS`), at least once, from the store as its spool.
//! - [`ingest`]: the central side. `monitor ingest` reads the stream with a durable pull consumer and
//!   inserts batches into ClickHouse ([`clickhouse`]), acknowledging only what ClickHouse accepted.
//! - [`policy`]: the fleet's indicators and modes in the NATS KV bucket `MONITOR_POLICY`, written by
//!   `monitor indicators --fleet` and `monitor policy`, watched by every agent started with `--policy`.
//! - [`heartbeat`]: each exporting agent's `DeviceInfo` every interval, filed by the ingest in the table
//!   of that name.
//! - [`hunt`] and [`views`]: `monitor hunt`, `monitor devices` and `monitor timeline` over the fleet store.
//! - [`samples`]: sample events and stores of them; [`servers`]: real NATS and ClickHouse servers on loopback for the tests and benchmarks.

pub mod cli;
pub mod clickhouse;
pub mod export;
pub mod heartbeat;
pub mod hunt;
pub mod ingest;
pub mod nats;
pub mod policy;
pub mod row;
pub mod samples;
pub mod servers;
pub mod views;

pub use export::{ExportOptions, ExportStatus, Exporter};
pub use nats::NatsOptions;

/// Failures of the fleet parts.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A setting is wrong; the message names it.
    #[error("{0}")]
    Config(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("ClickHouse: {0}")]
    ClickHouse(String),
    #[error("the event store: {0}")]
    Store(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

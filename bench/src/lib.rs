//! `cargo xtask bench`: what the monitor costs and how fast it is, measured side by side in one run in
//! the integration-test bed (real squid and nginx in network namespaces, the daemon attached to the
//! load generator's cgroup).
//!
//! - [`loadgen`]: the compiled load generator (CONNECT + TLS + small GET, or direct; fixed workers).
//! - [`driver`]: the run: variants alternated over rounds, bulk, events, kernel cost, indicators,
//!   extraction against tshark, parser micro-benchmarks, the fleet path ([`fleet`]); then [`report`]
//!   prints and writes the results.

pub mod capture;
pub mod driver;
pub mod extraction;
pub mod fleet;
pub mod fleet_report;
pub mod kernel;
pub mod loadgen;
pub mod markdown;
pub mod micro;
pub mod policy;
pub mod procfs;
pub mod report;
pub mod stats;

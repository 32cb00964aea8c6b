//! What `monitor status` shows and `--metrics` exposes: one typed value, built by the event loop, rendered
//! as JSON by the control socket and as Prometheus text by the metrics endpoint.

use std::collections::BTreeMap;

use serde::Serialize;

use super::features::Features;
use super::flows::FlowCounters;
use super::kernel::Attachment;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub mode: String,
    pub pid: u32,
    pub uptime_seconds: f64,
    pub attached: Vec<Attachment>,
    pub indicators: Indicators,
    pub events: u64,
    pub events_per_second: f64,
    pub write_errors: u64,
    pub store: Store,
    pub flows: FlowCounters,
    pub open_flows: usize,
    pub kernel_flow_entries: KernelFlowEntries,
    pub pin_dir: Option<String>,
    pub adopted_from: Option<String>,
    pub degraded: Vec<&'static str>,
    pub notes: Vec<String>,
    pub kernel_features: Features,
    /// Records the kernel could not hand over, by reason (`None`: the counters could not be read).
    pub kernel_drops: Option<BTreeMap<String, u64>>,
    pub device_id: String,
    /// `--export`: the exporter's state.
    pub export: Option<monitor_fleet::ExportStatus>,
    /// `--policy`: the fleet policy applied.
    pub fleet_policy: Option<super::fleet_policy::FleetPolicyStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Indicators {
    pub allow: usize,
    pub block: usize,
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Store {
    pub path: Option<String>,
    pub bytes: Option<u64>,
    /// Events the store's writer could not keep.
    pub dropped: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelFlowEntries {
    pub sockets_inspected: usize,
    /// Entries in the forwarded-flow table now, and its size (`--wire-flows`).
    pub forwarded_flows: usize,
    pub forwarded_capacity: u32,
    /// Entries user space deleted because no FIN or RST ended them, and silent flows it refused.
    pub forwarded_reclaimed: u64,
    pub forwarded_silent_refused: u64,
}

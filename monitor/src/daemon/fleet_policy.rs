//! `--policy`: the fleet's indicators and mode (issue 16). The watcher (`monitor_fleet::policy::watch`)
//! runs on the daemon's runtime and sends what applies to this agent; this module keeps what `monitor
//! status` shows about it and turns the fleet's mode into the daemon's.

use std::time::SystemTime;

use monitor_fleet::policy::{FleetMode, FleetPolicy, PolicySource};
use serde::Serialize;
use tracing::{info, warn};

use crate::cli::Mode;

/// What `monitor status` shows under `fleet_policy`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetPolicyStatus {
    pub servers: Vec<String>,
    pub groups: Vec<String>,
    pub connected: bool,
    /// The bucket's revision of the policy applied, and when (UNIX seconds) and from where.
    pub revision: Option<u64>,
    pub applied_at_unix: Option<f64>,
    pub source: Option<PolicySource>,
    pub block: usize,
    pub allow: usize,
    /// The fleet's mode for this agent (`None`: the fleet sets none); whether it is the one running
    /// depends on `prefer_local_mode`.
    pub mode: Option<FleetMode>,
    /// Entries of the bucket that are not valid (not applied), with the reason.
    pub invalid: Vec<String>,
    pub errors: u64,
    pub last_error: Option<String>,
}

impl FleetPolicyStatus {
    pub fn new(servers: &[String], groups: &[String]) -> Self {
        FleetPolicyStatus { servers: servers.to_vec(), groups: groups.to_vec(), ..Self::default() }
    }

    /// Notes a policy about to be applied (logged once per revision).
    pub fn applying(&mut self, policy: &FleetPolicy, source: PolicySource) {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        if policy.invalid != self.invalid {
            for entry in &policy.invalid {
                warn!("fleet policy: not applied: {entry}");
            }
        }
        info!(
            "fleet policy revision {} from {}: {} block, {} allow, mode {}",
            policy.revision,
            match source {
                PolicySource::Disk => "the copy on disk",
                PolicySource::Nats => "NATS",
            },
            policy.block.len(),
            policy.allow.len(),
            policy.mode.map_or("not set", FleetMode::name)
        );
        self.revision = Some(policy.revision);
        self.applied_at_unix = Some(now);
        self.source = Some(source);
        self.block = policy.block.len();
        self.allow = policy.allow.len();
        self.mode = policy.mode;
        self.invalid.clone_from(&policy.invalid);
    }

    /// Notes the link's state; a change is logged.
    pub fn link(&mut self, connected: bool, error: Option<String>) {
        if connected && !self.connected {
            info!(
                "fleet policy: watching {} on {}",
                monitor_fleet::policy::POLICY_BUCKET,
                self.servers.join(",")
            );
        }
        if let Some(error) = &error {
            self.errors += 1;
            if self.last_error.as_ref() != Some(error) {
                warn!("fleet policy: {error} (enforcing revision {:?} meanwhile)", self.revision);
            }
        }
        self.connected = connected;
        if error.is_some() {
            self.last_error = error;
        }
    }
}

pub fn mode(mode: FleetMode) -> Mode {
    match mode {
        FleetMode::Off => Mode::Off,
        FleetMode::Audit => Mode::Audit,
        FleetMode::Block => Mode::Block,
    }
}

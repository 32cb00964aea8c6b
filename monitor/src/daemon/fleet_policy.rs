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
    /// The fleet asks for block mode and this kernel cannot enforce it: why, and that the agent audits.
    pub block_refused: Option<String>,
}

impl FleetPolicyStatus {
    pub fn new(servers: &[String], groups: &[String]) -> Self {
        FleetPolicyStatus { servers: servers.to_vec(), groups: groups.to_vec(), ..Self::default() }
    }

    /// Notes a policy received, before the kernel maps have it (logged once per revision).
    pub fn received(&mut self, policy: &FleetPolicy, source: PolicySource) {
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
        self.source = Some(source);
        self.block = policy.block.len();
        self.allow = policy.allow.len();
        self.mode = policy.mode;
        self.invalid.clone_from(&policy.invalid);
    }

    /// The policy worker's outcome for a revision: in the kernel maps now, or why not.
    pub fn applied(&mut self, revision: u64, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                let now =
                    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                self.revision = Some(revision);
                self.applied_at_unix = Some(now);
            }
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(format!("revision {revision} not applied: {e}"));
            }
        }
    }

    /// A problem of this agent's, not of the link: counted and shown.
    pub fn failed(&mut self, error: String) {
        warn!("fleet policy: {error}");
        self.errors += 1;
        self.last_error = Some(error);
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

/// The mode to run: the fleet policy's for this agent, unless the configuration sets one and says that it
/// wins (`prefer_local_mode`).
pub fn choose_mode(local: Mode, fleet: Option<Mode>, prefer_local: bool, local_given: bool) -> Mode {
    match fleet {
        Some(mode) if !(prefer_local && local_given) => mode,
        _ => local,
    }
}

pub fn mode(mode: FleetMode) -> Mode {
    match mode {
        FleetMode::Off => Mode::Off,
        FleetMode::Audit => Mode::Audit,
        FleetMode::Block => Mode::Block,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleets_mode_wins_unless_the_configuration_sets_one_and_prefers_it() {
        assert_eq!(choose_mode(Mode::Block, Some(Mode::Audit), false, true), Mode::Audit);
        assert_eq!(choose_mode(Mode::Block, Some(Mode::Audit), true, true), Mode::Block);
        assert_eq!(
            choose_mode(Mode::Audit, Some(Mode::Block), true, false),
            Mode::Block,
            "no local mode given"
        );
        assert_eq!(choose_mode(Mode::Off, None, false, true), Mode::Off);
    }

    #[test]
    fn a_revision_counts_as_applied_only_once_the_maps_have_it() {
        let mut status = FleetPolicyStatus::new(&["nats://n:4222".into()], &[]);
        let policy = FleetPolicy { revision: 7, mode: Some(FleetMode::Block), ..FleetPolicy::default() };
        status.received(&policy, PolicySource::Nats);
        assert_eq!((status.revision, status.mode), (None, Some(FleetMode::Block)));
        status.applied(7, Err("write DOMAINS: map full".into()));
        assert_eq!((status.revision, status.errors), (None, 1));
        assert!(status.last_error.as_deref().is_some_and(|e| e.contains("revision 7 not applied")));
        status.applied(7, Ok(()));
        assert_eq!(status.revision, Some(7));
        assert!(status.applied_at_unix.is_some());
    }
}

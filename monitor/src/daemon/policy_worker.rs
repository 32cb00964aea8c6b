//! Policy work off the event loop: reading and parsing indicator files (a million lines take seconds)
//! and writing the kernel maps happen on this thread, so the loop keeps draining the ring buffer while
//! a large list reloads. Each applied set is sent back to the loop, which explains verdicts with it.

use std::{
    sync::{Arc, mpsc},
    time::Duration,
};

use monitor_core::policy::{Indicator, IndicatorSet, ListKind};
use tokio::sync::{mpsc as tokio_mpsc, oneshot};
use tracing::{error, info};

use super::{indicators::Indicators, policy::KernelPolicy};

pub enum Job {
    /// New list files (SIGHUP changed them in the configuration).
    Files {
        indicators: Indicators,
    },
    Change {
        kind: ListKind,
        indicators: Vec<Indicator>,
        add: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Mode {
        mode: u32,
        uninspectable: u32,
        hold_timeout_ms: u32,
        reply: mpsc::Sender<Result<(), String>>,
    },
    /// Re-read the files now (SIGHUP).
    Reload,
    /// The fleet policy's lists changed (`--policy`); the outcome goes back on `FleetApplied`.
    Fleet {
        block: Vec<Indicator>,
        allow: Vec<Indicator>,
        revision: u64,
    },
}

/// How often the list files are checked for changes.
const FILE_POLL: Duration = Duration::from_millis(250);

/// A fleet policy revision's outcome: applied to the kernel maps, or why not.
pub type FleetApplied = (u64, Result<(), String>);

pub struct PolicyWorker {
    indicators: Indicators,
    policy: KernelPolicy,
    updates: tokio_mpsc::UnboundedSender<Arc<IndicatorSet>>,
    fleet_applied: tokio_mpsc::UnboundedSender<FleetApplied>,
}

impl PolicyWorker {
    pub fn spawn(
        indicators: Indicators,
        policy: KernelPolicy,
        updates: tokio_mpsc::UnboundedSender<Arc<IndicatorSet>>,
        fleet_applied: tokio_mpsc::UnboundedSender<FleetApplied>,
    ) -> anyhow::Result<mpsc::Sender<Job>> {
        let (jobs, inbox) = mpsc::channel();
        let mut worker = PolicyWorker { indicators, policy, updates, fleet_applied };
        std::thread::Builder::new()
            .name("policy".into())
            .spawn(move || worker.run(inbox))
            .map_err(|e| anyhow::anyhow!("start the policy thread: {e}"))?;
        Ok(jobs)
    }

    fn run(&mut self, inbox: mpsc::Receiver<Job>) {
        loop {
            match inbox.recv_timeout(FILE_POLL) {
                Ok(Job::Files { mut indicators }) => {
                    // New files; the fleet's lists stay what they were.
                    indicators.keep_fleet_of(&mut self.indicators);
                    self.indicators = indicators;
                    self.apply_logged();
                }
                Ok(Job::Change { kind, indicators, add, reply }) => {
                    let n = indicators.len();
                    for i in indicators {
                        if add {
                            self.indicators.add(kind, i);
                        } else {
                            self.indicators.remove(kind, i);
                        }
                    }
                    let answer = self
                        .apply()
                        .map(|_| format!("{} {n} {kind} indicator(s)", if add { "added" } else { "removed" }))
                        .map_err(|e| format!("{e:#}"));
                    let _ = reply.send(answer);
                }
                Ok(Job::Mode { mode, uninspectable, hold_timeout_ms, reply }) => {
                    self.policy.config.hold_timeout_ms = hold_timeout_ms;
                    self.policy.config.mode = mode;
                    self.policy.config.uninspectable = uninspectable;
                    let _ = reply.send(self.policy.write_config().map_err(|e| format!("{e:#}")));
                }
                Ok(Job::Fleet { block, allow, revision }) => {
                    self.indicators.set_fleet(block, allow);
                    let outcome = self.apply().map_err(|e| format!("{e:#}"));
                    if let Err(e) = &outcome {
                        error!("applying fleet policy revision {revision}: {e}");
                    }
                    let _ = self.fleet_applied.send((revision, outcome));
                }
                Ok(Job::Reload) | Err(mpsc::RecvTimeoutError::Timeout) => self.reload_files(),
                // The daemon is stopping.
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn apply(&mut self) -> anyhow::Result<()> {
        let set = self.indicators.effective();
        let applied = self.policy.apply(&set)?;
        let (allow_n, block_n) = set.counts();
        info!(
            "indicators now {allow_n} allow, {block_n} block ({} map writes in {} ms)",
            applied.writes, applied.millis
        );
        let _ = self.updates.send(Arc::new(set));
        Ok(())
    }

    fn apply_logged(&mut self) {
        if let Err(e) = self.apply() {
            error!("applying the indicators: {e:#}");
        }
    }

    fn reload_files(&mut self) {
        match self.indicators.reload_changed() {
            Ok(false) => {}
            Ok(true) => self.apply_logged(),
            Err(e) => error!("indicator file rejected, keeping the previous set: {e}"),
        }
    }
}

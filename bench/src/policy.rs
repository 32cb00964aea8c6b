//! Time to block across the fleet (issue 16): three block-mode agents watch the policy bucket on a
//! three-node JetStream cluster on loopback (three replicas); each round adds a fleet block indicator with
//! `monitor indicators add --fleet` and measures, from the moment the command returns, how long until each
//! agent's cgroup gets its first refused connection to that name through squid (probes side by side, one
//! after the other as fast as the load generator starts), and when each agent's status says the revision
//! reached its kernel maps. The name is removed and seen passing again before the next round.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use monitor_fleet::servers::NatsServer;
use serde::{Deserialize, Serialize};
use tests::{Bed, Cgroup, Monitor};

use crate::fleet::unix_now;
use crate::markdown::{Goal, table};
use crate::stats;

/// Every goal of this part starts so (a run of this part alone replaces them in earlier results).
pub const GOAL_PREFIX: &str = "fleet policy: ";
/// The goal: a fleet indicator blocks on every agent within this.
pub const GOAL_MS: f64 = 1_000.0;
/// A name the bed's squid serves, so that a probe that is not refused succeeds.
pub const NAME: &str = "other.test";
/// How long one round may wait for every agent.
const ROUND_LIMIT: Duration = Duration::from_secs(10);
const AGENTS: usize = 3;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyResult {
    pub agents: usize,
    pub nodes: usize,
    pub rounds: usize,
    /// Command returned to the first refused connection, every agent in every round, ms.
    pub to_refused_ms: Vec<f64>,
    /// Command returned to the agent's status saying the revision is in its maps, ms.
    pub to_applied_ms: Vec<f64>,
    /// How long `monitor indicators add --fleet` itself took (connect, write, three replicas' ack), ms.
    #[serde(default)]
    pub command_ms: Vec<f64>,
    /// The time one probe takes (the resolution of `to_refused_ms`), median, ms.
    pub probe_ms: f64,
    pub duration_s: f64,
}

fn status(mon: &Monitor) -> anyhow::Result<serde_json::Value> {
    let out = mon.ctl(&["status"]);
    ensure!(out.status.success(), "monitor status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).context("monitor status printed no JSON")
}

fn fleet_command(urls: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(tests::monitor::monitor_bin())
        .args(args)
        .args(["--fleet", urls, "--replicas", "3"])
        .output()
        .context("run monitor")?;
    ensure!(out.status.success(), "monitor {args:?} --fleet: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// One HTTPS request to [`NAME`] through squid from a cgroup: whether it was refused (the driver's probe).
pub type Probe<'a> = dyn Fn(&Cgroup) -> anyhow::Result<bool> + Sync + 'a;

/// The agent's Blocked rows for [`NAME`], written once it has handled a refused connection.
fn blocked_rows(mon: &Monitor) -> u64 {
    let text = std::fs::read_to_string(&mon.events_path).unwrap_or_default();
    text.lines().filter(|l| l.contains("NetworkProtectionBlocked") && l.contains(NAME)).count() as u64
}

/// The fleet policy revision in the agent's maps.
fn revision(mon: &Monitor) -> anyhow::Result<u64> {
    Ok(status(mon)?["fleet_policy"]["revision"].as_u64().unwrap_or(0))
}

/// Waits until every agent's probes are refused (`want`) or pass; each agent's time from `from`.
fn until_all(
    probe: &Probe<'_>,
    cgroups: &[Cgroup],
    want: bool,
    from: Instant,
    probes: &mut Vec<f64>,
) -> anyhow::Result<Vec<f64>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = cgroups
            .iter()
            .map(|cg| {
                scope.spawn(move || -> anyhow::Result<(f64, Vec<f64>)> {
                    let mut took = Vec::new();
                    loop {
                        let started = Instant::now();
                        let is_refused = probe(cg)?;
                        took.push(started.elapsed().as_secs_f64() * 1e3);
                        if is_refused == want {
                            return Ok((from.elapsed().as_secs_f64() * 1e3, took));
                        }
                        if from.elapsed() > ROUND_LIMIT {
                            bail!(
                                "{NAME} not {} within {ROUND_LIMIT:?}",
                                if want { "refused" } else { "passing" }
                            );
                        }
                    }
                })
            })
            .collect();
        let mut times = Vec::new();
        for handle in handles {
            let (at, took) = handle.join().map_err(|_| anyhow::anyhow!("a probe thread panicked"))??;
            times.push(at);
            probes.extend(took);
        }
        Ok(times)
    })
}

pub fn run(bed: &Bed, probe: &Probe<'_>, rounds: usize) -> anyhow::Result<PolicyResult> {
    let started = Instant::now();
    let cluster = NatsServer::loopback_cluster(3, "").context("start a three-node nats cluster")?;
    let urls = cluster.iter().map(NatsServer::url).collect::<Vec<_>>().join(",");
    // The bucket, once the cluster has elected its leaders.
    let elected = Instant::now();
    while let Err(e) = fleet_command(&urls, &["policy", "show"]) {
        ensure!(elected.elapsed() < Duration::from_secs(30), "the policy bucket: {e}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let cgroups: Vec<Cgroup> = (0..AGENTS).map(|i| Cgroup::new(&format!("bench-policy-{i}"))).collect();
    let agents: Vec<Monitor> = cgroups
        .iter()
        .enumerate()
        .map(|(i, cg)| {
            let args: Vec<String> =
                ["--mode", "block", "--cgroup", &cg.path.display().to_string(), "--policy", &urls]
                    .iter()
                    .map(|a| a.to_string())
                    .collect();
            Monitor::start(&bed.dir, &format!("bench-policy-{i}"), None, &args)
        })
        .collect();
    let watching = Instant::now();
    while !agents.iter().all(|m| status(m).is_ok_and(|s| s["fleet_policy"]["connected"] == true)) {
        ensure!(watching.elapsed() < Duration::from_secs(30), "the agents did not reach the bucket");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut result = PolicyResult { agents: AGENTS, nodes: cluster.len(), rounds, ..PolicyResult::default() };
    let mut probes = Vec::new();
    // The name passes first: a probe that fails is then the monitor's refusal, not squid's.
    until_all(probe, &cgroups, false, Instant::now(), &mut Vec::new())?;
    for round in 0..rounds {
        eprintln!("bench: fleet policy round {} of {rounds}", round + 1);
        let before: Vec<(u64, u64)> =
            agents.iter().map(|m| Ok((blocked_rows(m), revision(m)?))).collect::<anyhow::Result<_>>()?;
        let invoked = Instant::now();
        fleet_command(&urls, &["indicators", "add", "block", NAME])?;
        let (returned, returned_unix) = (Instant::now(), unix_now());
        result.command_ms.push(returned.duration_since(invoked).as_secs_f64() * 1e3);
        let times = until_all(probe, &cgroups, true, returned, &mut probes)?;
        for (mon, (blocked, was)) in agents.iter().zip(&before) {
            // The refusal was the agent's: it counted a block, and the new revision is in its maps.
            let reported = Instant::now();
            while blocked_rows(mon) <= *blocked {
                ensure!(
                    reported.elapsed() < Duration::from_secs(3),
                    "a refused probe that the agent did not block"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            ensure!(revision(mon)? > *was, "refused before the agent had the new revision");
            let applied = status(mon)?["fleet_policy"]["applied_at_unix"].as_f64();
            result
                .to_applied_ms
                .extend(applied.map(|at| (at - returned_unix) * 1e3).filter(|ms| ms.is_finite()));
        }
        result.to_refused_ms.extend(times);
        fleet_command(&urls, &["indicators", "remove", "block", NAME])?;
        until_all(probe, &cgroups, false, Instant::now(), &mut Vec::new())?;
    }
    result.probe_ms = stats::median(&probes).unwrap_or(0.0);
    drop(agents);
    drop(cluster);
    result.duration_s = started.elapsed().as_secs_f64();
    Ok(result)
}

fn median(values: &[f64]) -> f64 {
    stats::median(values).unwrap_or(f64::NAN)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

pub fn goals(r: &PolicyResult) -> Vec<Goal> {
    let worst = max(&r.to_refused_ms);
    vec![Goal {
        goal: format!(
            "{GOAL_PREFIX}a fleet block indicator refused on every agent ≤ {GOAL_MS:.0} ms after the command"
        ),
        measured: format!(
            "median {:.0} ms, worst {worst:.0} ms ({} agents × {} rounds)",
            median(&r.to_refused_ms),
            r.agents,
            r.rounds
        ),
        met: worst.is_finite().then_some(worst <= GOAL_MS),
    }]
}

pub fn markdown(r: &PolicyResult, out: &mut String) {
    let _ = writeln!(out, "## Fleet policy: time to block\n");
    let _ = writeln!(
        out,
        "{} block-mode agents watch MONITOR_POLICY (three replicas) on a {}-node JetStream cluster on loopback. \
         Each of {} rounds runs `monitor indicators add block {NAME} --fleet` and measures, from the moment it \
         returns, each agent's first refused HTTPS connection to the name through squid (probes one after the \
         other, {:.0} ms each, so the first figure can be high by up to about two of them; a refusal counts only \
         when the agent counted a block) and when its status says the revision is in its kernel maps. The \
         command itself (connect, write, three replicas' acknowledgement) took {:.0} ms (median) before that.\n",
        r.agents,
        r.nodes,
        r.rounds,
        r.probe_ms,
        median(&r.command_ms)
    );
    let row = |what: &str, v: &[f64]| {
        vec![what.to_string(), format!("{:.0}", median(v)), format!("{:.0}", max(v)), v.len().to_string()]
    };
    table(
        out,
        &["from the command returning to", "median ms", "worst ms", "samples"],
        &[
            row("the first refused connection", &r.to_refused_ms),
            row("the revision in the maps", &r.to_applied_ms),
        ],
    );
}

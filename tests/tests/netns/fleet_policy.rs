//! The fleet policy from real daemons (issue 16): two block-mode agents, one in group `web`, watch the
//! NATS KV bucket MONITOR_POLICY on a real nats-server with JetStream; `monitor indicators ... --fleet`
//! and `monitor policy mode --fleet` change what they enforce, through real squid.

use std::time::{Duration, Instant};

use monitor_fleet::servers::NatsServer;
use tests::{Bed, Cgroup, Monitor, Runner, monitor::monitor_bin};

use super::{SQUID, curl, status};

const REACHES: &str = "fleet_policy_block_reaches_every_agent_and_a_group_only_its_own";
const RESTART: &str = "fleet_policy_agent_restarted_while_nats_is_down_still_blocks";
const MODE: &str = "fleet_policy_mode_change_reaches_every_agent";
const REMOVAL: &str = "fleet_policy_removal_unblocks";
const CASES: [&str; 4] = [REACHES, RESTART, MODE, REMOVAL];
/// How long a change may take to reach an agent in the test (the bench's goal is 1 s).
const REACH: Duration = Duration::from_secs(5);

/// `monitor ARGS --fleet URL`: its standard output; fails the case when the command fails.
fn fleet_command(nats: &NatsServer, args: &[&str]) -> String {
    let out = std::process::Command::new(monitor_bin())
        .args(args)
        .args(["--fleet", &nats.url()])
        .output()
        .unwrap_or_else(|e| panic!("run monitor {args:?}: {e}"));
    assert!(out.status.success(), "monitor {args:?} --fleet: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn agent(bed: &Bed, name: &str, cg: &Cgroup, nats: &NatsServer, group: Option<&str>) -> Monitor {
    let mut args: Vec<String> =
        ["--mode", "block", "--cgroup", &cg.path.display().to_string(), "--policy", &nats.url()]
            .iter()
            .map(|a| a.to_string())
            .collect();
    if let Some(group) = group {
        args.extend(["--group".to_string(), group.to_string()]);
    }
    Monitor::start(&bed.dir, name, None, &args)
}

fn get(web: &Option<Monitor>) -> &Monitor {
    web.as_ref().expect("the web agent runs")
}

/// Whether `https://HOST/` through squid gets through from `cg`.
fn passes(bed: &Bed, cg: &Cgroup, host: &str) -> bool {
    curl(bed, cg, &["-x", SQUID, &format!("https://{host}/")]).ok()
}

/// The time until `host` is refused (`refused`) or passes from `cg`, bounded by [`REACH`].
fn until(bed: &Bed, cg: &Cgroup, host: &str, refused: bool, mon: &Monitor) -> Duration {
    let started = Instant::now();
    while passes(bed, cg, host) == refused {
        assert!(
            started.elapsed() < REACH,
            "{host} {} within {REACH:?}: {}",
            if refused { "refused" } else { "passing" },
            status(mon)["fleet_policy"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

pub fn cases(r: &mut Runner, bed: &Bed) {
    // Its server and daemons only when a case runs (set-ups run whatever the filter).
    if !CASES.iter().any(|c| r.wants(c)) {
        return;
    }
    let Some(mut nats) = r.setup("fleet_policy_nats_starts", || {
        let nats = NatsServer::start().unwrap_or_else(|e| panic!("start nats-server: {e}"));
        // The bucket exists before the agents look for it (an agent also finds it later, on its retry).
        fleet_command(&nats, &["policy", "show"]);
        nats
    }) else {
        return;
    };
    let (web_cg, other_cg) = (Cgroup::new("policy-web"), Cgroup::new("policy-other"));
    let Some((mut web, other)) = r.setup("fleet_policy_agents_start", || {
        let web = agent(bed, "policy-web", &web_cg, &nats, Some("web"));
        (Some(web), agent(bed, "policy-other", &other_cg, &nats, None))
    }) else {
        return;
    };
    let connected = |mon: &Monitor| status(mon)["fleet_policy"]["connected"] == true;
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(20), "{what} within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("both agents watch the bucket", &|| connected(get(&web)) && connected(&other));

    r.case(REACHES, || {
        assert!(
            passes(bed, &web_cg, "other.test") && passes(bed, &other_cg, "other.test"),
            "allowed at first"
        );
        let said = fleet_command(&nats, &["indicators", "add", "block", "other.test"]);
        assert!(said.contains("added 1 block indicator(s) for the fleet"), "{said}");
        let (on_web, on_other) = (
            until(bed, &web_cg, "other.test", true, get(&web)),
            until(bed, &other_cg, "other.test", true, &other),
        );
        eprintln!(
            "fleet policy: other.test refused on the agents {on_web:?} and {on_other:?} after the command"
        );
        for mon in [get(&web), &other] {
            let blocked = mon.wait_events(10, |e| {
                e["ActionType"] == "ExploitGuardNetworkProtectionBlocked" && e["RemoteUrl"] == "other.test"
            });
            assert!(!blocked.is_empty(), "a Blocked event names other.test: {}", mon.stderr());
            let policy = status(mon)["fleet_policy"].clone();
            assert_eq!(policy["source"], "nats", "{policy}");
            assert!(policy["revision"].as_u64().is_some_and(|r| r > 0) && policy["block"] == 1, "{policy}");
        }

        fleet_command(&nats, &["indicators", "add", "block", "later.test", "--group", "web"]);
        until(bed, &web_cg, "later.test", true, get(&web));
        // The other agent has had the same revision for as long: it still lets later.test through.
        assert!(passes(bed, &other_cg, "later.test"), "a group's indicator applies only to its agents");
        let listed = fleet_command(&nats, &["indicators", "list", "block", "--group", "web"]);
        assert!(listed.contains("block\tother.test") && listed.contains("block\tlater.test"), "{listed}");
        let shown = fleet_command(&nats, &["policy", "show"]);
        assert!(
            shown.contains("fleet block other.test") && shown.contains("group:web block later.test"),
            "{shown}"
        );
        let bad = std::process::Command::new(monitor_bin())
            .args(["indicators", "add", "block", "fine.test", "not a domain!", "--fleet", &nats.url()])
            .output()
            .expect("run monitor");
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success() && err.contains("nothing was changed"), "{err}");
        assert!(
            !fleet_command(&nats, &["policy", "show"]).contains("fine.test"),
            "a bad list writes nothing"
        );
    });

    r.case(RESTART, || {
        nats.kill();
        // Stopped first: the new daemon takes the same control socket, files and pin directory.
        drop(web.take());
        web = Some(agent(bed, "policy-web", &web_cg, &nats, Some("web")));
        // The daemon is ready before NATS is back: what it enforces comes from its copy on disk.
        assert!(
            !passes(bed, &web_cg, "other.test"),
            "the fleet's indicator holds across a restart without NATS"
        );
        assert!(!passes(bed, &web_cg, "later.test"), "so does its group's");
        let policy = status(get(&web))["fleet_policy"].clone();
        assert_eq!(
            (policy["source"].as_str(), policy["connected"].as_bool()),
            (Some("disk"), Some(false)),
            "{policy}"
        );
        nats.restart().unwrap_or_else(|e| panic!("start nats-server again: {e}"));
        wait("both agents watch the bucket again", &|| {
            connected(get(&web)) && connected(&other) && status(get(&web))["fleet_policy"]["source"] == "nats"
        });
    });

    r.case(MODE, || {
        fleet_command(&nats, &["policy", "mode", "audit"]);
        for (mon, cg) in [(get(&web), &web_cg), (&other, &other_cg)] {
            until(bed, cg, "other.test", false, mon);
            assert_eq!(status(mon)["mode"], "audit");
            let audited = mon.wait_events(10, |e| {
                e["ActionType"] == "ExploitGuardNetworkProtectionAudited" && e["RemoteUrl"] == "other.test"
            });
            assert!(!audited.is_empty(), "in audit mode the listed name is reported: {}", mon.stderr());
        }
        fleet_command(&nats, &["policy", "mode", "block"]);
        for (mon, cg) in [(get(&web), &web_cg), (&other, &other_cg)] {
            until(bed, cg, "other.test", true, mon);
            assert_eq!(status(mon)["mode"], "block");
        }
    });

    r.case(REMOVAL, || {
        fleet_command(&nats, &["indicators", "remove", "block", "other.test"]);
        until(bed, &web_cg, "other.test", false, get(&web));
        until(bed, &other_cg, "other.test", false, &other);
        fleet_command(&nats, &["indicators", "remove", "block", "later.test", "--group", "web"]);
        until(bed, &web_cg, "later.test", false, get(&web));
        assert_eq!(status(&other)["fleet_policy"]["block"], 0);
    });
    drop((web, other));
}

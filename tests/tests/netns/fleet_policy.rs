//! The fleet policy from real daemons (issue 16): three block-mode agents, one in group `web`, watch the
//! NATS KV bucket MONITOR_POLICY (three replicas) on a real three-node JetStream cluster on loopback, with
//! the agents' NATS user allowed only to read it; `monitor indicators ... --fleet` and `monitor policy mode
//! --fleet`, run as the operators' user, change what they enforce, through real squid.

use std::time::{Duration, Instant};

use monitor_fleet::servers::NatsServer;
use tests::{Bed, Cgroup, Monitor, Runner, monitor::monitor_bin};

use super::{SQUID, curl, status};

const REACHES: &str = "fleet_policy_block_reaches_every_agent_and_a_group_only_its_own";
const READ_ONLY: &str = "fleet_policy_agents_credentials_cannot_write_the_policy";
const RESTART: &str = "fleet_policy_agent_restarted_while_nats_is_down_still_blocks";
const MODE: &str = "fleet_policy_mode_change_reaches_every_agent";
const REMOVAL: &str = "fleet_policy_removal_unblocks";
const CASES: [&str; 5] = [REACHES, READ_ONLY, RESTART, MODE, REMOVAL];
/// How long a change may take to reach an agent in the test (the bench's goal is 1 s).
const REACH: Duration = Duration::from_secs(5);
/// How long the cluster may take to elect the bucket's leader after a start.
const ELECTION: Duration = Duration::from_secs(30);
const OPERATOR: (&str, &str) = ("operator", "op-secret");
const AGENT: (&str, &str) = ("agent", "agent-secret");

/// Who may do what on every node: the operators everything; the agents only what watching the bucket
/// takes (the README's "Access" says the same).
fn authorization() -> String {
    format!(
        "authorization {{\n  users = [\n    {{ user: {}, password: {} }}\n    {{ user: {}, password: {}, permissions: {{\n      \
         publish: {{ allow: [\"$JS.API.INFO\", \"$JS.API.STREAM.INFO.KV_MONITOR_POLICY\", \
         \"$JS.API.CONSUMER.CREATE.KV_MONITOR_POLICY\", \"$JS.API.CONSUMER.CREATE.KV_MONITOR_POLICY.>\", \
         \"$JS.API.CONSUMER.DELETE.KV_MONITOR_POLICY.>\", \"$JS.FC.KV_MONITOR_POLICY.>\"] }}\n      \
         subscribe: {{ allow: [\"_INBOX.>\"] }}\n    }} }}\n  ]\n}}",
        OPERATOR.0, OPERATOR.1, AGENT.0, AGENT.1
    )
}

/// A three-node JetStream cluster on loopback.
struct Cluster {
    nodes: Vec<NatsServer>,
}

impl Cluster {
    fn start() -> Cluster {
        let nodes = NatsServer::loopback_cluster(3, &authorization())
            .unwrap_or_else(|e| panic!("start a three-node nats cluster: {e}"));
        Cluster { nodes }
    }

    fn urls(&self) -> String {
        self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    fn stop(&mut self) {
        self.nodes.iter_mut().for_each(NatsServer::kill);
    }

    fn restart(&mut self) {
        for node in &mut self.nodes {
            node.restart()
                .unwrap_or_else(|e| panic!("restart nats node {}: {e}\n{}", node.name(), node.log()));
        }
    }

    fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("{}: {}", n.name(), n.log())).collect::<Vec<_>>().join("\n")
    }
}

/// `monitor ARGS --fleet URLS` as `user`: its standard output, or its standard error on a failure.
fn try_fleet_command(cluster: &Cluster, user: (&str, &str), args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(monitor_bin())
        .args(args)
        .args([
            "--fleet",
            &cluster.urls(),
            "--replicas",
            "3",
            "--nats-user",
            user.0,
            "--nats-password",
            user.1,
        ])
        .output()
        .unwrap_or_else(|e| panic!("run monitor {args:?}: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// [`try_fleet_command`] as the operators' user; fails the case when the command fails.
fn fleet_command(cluster: &Cluster, args: &[&str]) -> String {
    try_fleet_command(cluster, OPERATOR, args).unwrap_or_else(|e| panic!("monitor {args:?} --fleet: {e}"))
}

/// Runs `policy show` until the bucket answers (created, with three replicas, on the first success).
fn wait_for_bucket(cluster: &Cluster) {
    let started = Instant::now();
    while let Err(e) = try_fleet_command(cluster, OPERATOR, &["policy", "show"]) {
        assert!(started.elapsed() < ELECTION, "the bucket within {ELECTION:?}: {e}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn agent(bed: &Bed, name: &str, cg: &Cgroup, cluster: &Cluster, group: Option<&str>) -> Monitor {
    let mut args: Vec<String> = [
        "--mode",
        "block",
        "--cgroup",
        &cg.path.display().to_string(),
        "--policy",
        &cluster.urls(),
        "--policy-user",
        AGENT.0,
        "--policy-password",
        AGENT.1,
    ]
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

/// The three agents with their cgroups.
fn each<'a>(
    web: &'a Option<Monitor>,
    a2: &'a Monitor,
    a3: &'a Monitor,
    cgroups: &'a [Cgroup; 3],
) -> [(&'a Monitor, &'a Cgroup); 3] {
    [(get(web), &cgroups[0]), (a2, &cgroups[1]), (a3, &cgroups[2])]
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
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

pub fn cases(r: &mut Runner, bed: &Bed) {
    // Its servers and daemons only when a case runs (set-ups run whatever the filter).
    if !CASES.iter().any(|c| r.wants(c)) {
        return;
    }
    let Some(mut cluster) = r.setup("fleet_policy_cluster_starts", || {
        let cluster = Cluster::start();
        // The bucket exists before the agents look for it (an agent also finds it later, on its retry).
        wait_for_bucket(&cluster);
        cluster
    }) else {
        return;
    };
    let cgroups = [Cgroup::new("policy-web"), Cgroup::new("policy-a2"), Cgroup::new("policy-a3")];
    let [web_cg, a2_cg, a3_cg] = &cgroups;
    let Some((mut web, a2, a3)) = r.setup("fleet_policy_agents_start", || {
        (
            Some(agent(bed, "policy-web", web_cg, &cluster, Some("web"))),
            agent(bed, "policy-a2", a2_cg, &cluster, None),
            agent(bed, "policy-a3", a3_cg, &cluster, Some("db")),
        )
    }) else {
        return;
    };
    let connected = |mon: &Monitor| status(mon)["fleet_policy"]["connected"] == true;
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < ELECTION, "{what} within {ELECTION:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("the agents watch the bucket", &|| connected(get(&web)) && connected(&a2) && connected(&a3));

    r.case(REACHES, || {
        for (_, cg) in each(&web, &a2, &a3, &cgroups) {
            assert!(passes(bed, cg, "other.test"), "allowed at first");
        }
        let said = fleet_command(&cluster, &["indicators", "add", "block", "other.test"]);
        assert!(said.contains("added 1 block indicator(s) for the fleet"), "{said}");
        let times: Vec<Duration> = each(&web, &a2, &a3, &cgroups)
            .iter()
            .map(|(mon, cg)| until(bed, cg, "other.test", true, mon))
            .collect();
        eprintln!(
            "fleet policy: other.test refused on the three agents {times:?} after the command returned"
        );
        for (mon, _) in each(&web, &a2, &a3, &cgroups) {
            let blocked = mon.wait_events(10, |e| {
                e["ActionType"] == "ExploitGuardNetworkProtectionBlocked" && e["RemoteUrl"] == "other.test"
            });
            assert!(!blocked.is_empty(), "a Blocked event names other.test: {}", mon.stderr());
            let policy = status(mon)["fleet_policy"].clone();
            assert_eq!(policy["source"], "nats", "{policy}");
            assert!(policy["revision"].as_u64().is_some_and(|r| r > 0) && policy["block"] == 1, "{policy}");
        }

        fleet_command(&cluster, &["indicators", "add", "block", "later.test", "--group", "web"]);
        until(bed, web_cg, "later.test", true, get(&web));
        // The others have had the same revision for as long: they still let later.test through.
        for (_, cg) in &each(&web, &a2, &a3, &cgroups)[1..] {
            assert!(passes(bed, cg, "later.test"), "a group's indicator applies only to its agents");
        }
        let listed = fleet_command(&cluster, &["indicators", "list", "block", "--group", "web"]);
        assert!(listed.contains("block\tother.test") && listed.contains("block\tlater.test"), "{listed}");
        let shown = fleet_command(&cluster, &["policy", "show"]);
        assert!(
            shown.contains("fleet block other.test") && shown.contains("group:web block later.test"),
            "{shown}"
        );
        let err = try_fleet_command(
            &cluster,
            OPERATOR,
            &["indicators", "add", "block", "fine.test", "not a domain!"],
        )
        .expect_err("a bad value");
        assert!(err.contains("nothing was changed"), "{err}");
        assert!(
            !fleet_command(&cluster, &["policy", "show"]).contains("fine.test"),
            "a bad list writes nothing"
        );
    });

    r.case(READ_ONLY, || {
        // The agents' user watches the bucket (every case here shows it) and can change nothing in it.
        for args in [&["indicators", "add", "block", "sneaky.test"][..], &["policy", "mode", "off"][..]] {
            let err = try_fleet_command(&cluster, AGENT, args).expect_err("the agents' user cannot write");
            // The server refuses the write (the client then times out waiting for an answer).
            assert!(
                err.contains("Permissions Violation for Publish to \"$KV.MONITOR_POLICY."),
                "{args:?}: {err}"
            );
        }
        let shown = fleet_command(&cluster, &["policy", "show"]);
        assert!(
            !shown.contains("sneaky.test") && !shown.contains("mode off"),
            "nothing was written: {shown}"
        );
    });

    r.case(RESTART, || {
        cluster.stop();
        // Stopped first: the new daemon takes the same control socket, files and pin directory.
        drop(web.take());
        web = Some(agent(bed, "policy-web", web_cg, &cluster, Some("web")));
        // The daemon is ready before NATS is back: what it enforces comes from its copy on disk.
        assert!(
            !passes(bed, web_cg, "other.test"),
            "the fleet's indicator holds across a restart without NATS"
        );
        assert!(!passes(bed, web_cg, "later.test"), "so does its group's");
        let policy = status(get(&web))["fleet_policy"].clone();
        assert_eq!(
            (policy["source"].as_str(), policy["connected"].as_bool()),
            (Some("disk"), Some(false)),
            "{policy}"
        );
        cluster.restart();
        wait_for_bucket(&cluster);
        wait("the agents watch the bucket again", &|| {
            connected(get(&web))
                && connected(&a2)
                && connected(&a3)
                && status(get(&web))["fleet_policy"]["source"] == "nats"
        });
    });

    r.case(MODE, || {
        fleet_command(&cluster, &["policy", "mode", "audit"]);
        for (mon, cg) in each(&web, &a2, &a3, &cgroups) {
            until(bed, cg, "other.test", false, mon);
            assert_eq!(status(mon)["mode"], "audit");
            let audited = mon.wait_events(10, |e| {
                e["ActionType"] == "ExploitGuardNetworkProtectionAudited" && e["RemoteUrl"] == "other.test"
            });
            assert!(!audited.is_empty(), "in audit mode the listed name is reported: {}", mon.stderr());
        }
        fleet_command(&cluster, &["policy", "mode", "block"]);
        for (mon, cg) in each(&web, &a2, &a3, &cgroups) {
            until(bed, cg, "other.test", true, mon);
            assert_eq!(status(mon)["mode"], "block");
        }
    });

    r.case(REMOVAL, || {
        fleet_command(&cluster, &["indicators", "remove", "block", "other.test"]);
        for (mon, cg) in each(&web, &a2, &a3, &cgroups) {
            until(bed, cg, "other.test", false, mon);
        }
        fleet_command(&cluster, &["indicators", "remove", "block", "later.test", "--group", "web"]);
        until(bed, web_cg, "later.test", false, get(&web));
        assert_eq!(status(&a2)["fleet_policy"]["block"], 0);
    });
    drop((web, a2, a3));
}

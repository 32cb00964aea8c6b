//! The fleet path from real daemons (issue 14). One agent: `monitor run --export` with NATS down at
//! start, then up. Three agents: a three-node JetStream cluster whose stream leader is killed, then the
//! whole cluster stopped for 10 s while the clients go on and one agent restarts. In both, `monitor
//! ingest` fills ClickHouse, which then holds exactly the events of every agent's local store, each once,
//! and `monitor hunt --fleet` answers as the local stores do.

use std::{
    collections::BTreeMap,
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use monitor_fleet::clickhouse::{ClickHouse, FleetSql as _};
use monitor_fleet::servers::{ClickHouseServer, ClusterNode, NatsServer};
use serde_json::Value;
use tests::{
    Bed, Cgroup, ClientRun, Monitor, Runner,
    bed::{ORIGIN_V4, in_netns},
    lan::Lan,
    monitor::monitor_bin,
};

use super::{SQUID, curl, status};

pub fn cases(r: &mut Runner, bed: &Bed) {
    single_agent(r, bed);
    cluster(r, bed);
}

/// A child process killed (and reaped) when dropped: `monitor ingest` in the tests.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `monitor ARGS` inside network namespace `ns` (or here), as a background process.
fn spawn_monitor(ns: Option<&str>, args: &[&str], log: &std::path::Path) -> Killed {
    let mut cmd = tests::monitor::command(ns, &[]);
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = out.try_clone().expect("dup log");
    let child = cmd
        .arg(monitor_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("start monitor {args:?}: {e}"));
    Killed(child)
}

/// `monitor hunt --format json SOURCE QUERY` (inside `ns` when given): the rows.
fn hunt(ns: Option<&str>, source: &[&str], query: &str) -> Vec<Value> {
    let out = tests::monitor::command(ns, &[])
        .arg(monitor_bin())
        .args(["hunt", "--format", "json"])
        .args(source)
        .arg(query)
        .output()
        .expect("run monitor hunt");
    assert!(
        out.status.success(),
        "monitor hunt {source:?} {query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON row")).collect()
}

/// Every Seq of a daemon's local store, in order.
fn store_seqs(mon: &Monitor) -> Vec<u64> {
    let store = mon.store_path.display().to_string();
    hunt(
        None,
        &["--store", &store],
        "union DeviceNetworkEvents, DeviceEvents | project Seq | sort by Seq asc",
    )
    .iter()
    .filter_map(|row| row["Seq"].as_u64())
    .collect()
}

/// Every Seq ClickHouse holds for `device_id` (FINAL: as the fleet queries count them), in order.
fn fleet_seqs(fleet: &ClickHouse, database: &str, device_id: &str) -> Vec<u64> {
    let rows = fleet
        .query_rows(&format!(
            "SELECT Seq FROM (SELECT Seq FROM {database}.DeviceNetworkEvents FINAL WHERE DeviceId = '{device_id}' \
             UNION ALL SELECT Seq FROM {database}.DeviceEvents FINAL WHERE DeviceId = '{device_id}') ORDER BY Seq"
        ))
        .unwrap_or_default();
    rows.iter().filter_map(|r| r["Seq"].as_u64()).collect()
}

fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {secs} s: {}", context());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The fleet path from a real daemon (issue 14): `monitor run --export` with NATS down at start, then up;
/// `monitor ingest` into ClickHouse; the fleet has exactly the events of the daemon's store. The servers
/// run on this host's loopback, which the daemon (in the root namespace) reaches.
fn single_agent(r: &mut Runner, bed: &Bed) {
    const CASE: &str = "fleet_export_ships_the_spool_and_the_fleet_matches_the_store";
    // Its servers and daemon only when the case runs (set-ups run whatever the filter).
    if !r.wants(CASE) {
        return;
    }
    let cg = Cgroup::new("fleet");
    let Some((mut nats, clickhouse)) = r.setup("fleet_servers_start", || {
        let nats = NatsServer::not_started().unwrap_or_else(|e| panic!("pick a port for nats-server: {e}"));
        let clickhouse = ClickHouseServer::start().unwrap_or_else(|e| panic!("start clickhouse-server: {e}"));
        (nats, clickhouse)
    }) else {
        return;
    };
    let Some(mon) = r.setup("fleet_monitor_starts_while_nats_is_down", || {
        Monitor::start(
            &bed.dir,
            "fleet",
            None,
            &[
                "--cgroup".into(),
                cg.path.display().to_string(),
                "--device-id".into(),
                "fleet-agent-1".into(),
                "--export".into(),
                nats.url(),
                "--heartbeat-interval".into(),
                "1s".into(),
            ],
        )
    }) else {
        return;
    };
    r.case(CASE, || {
        let proxied = |n: usize| {
            for _ in 0..n {
                let run = curl(bed, &cg, &["-x", SQUID, "https://origin.test/"]);
                assert!(run.ok(), "curl through squid failed: {run:?}");
            }
        };
        let curl_events = |mon: &Monitor| {
            mon.events().into_iter().filter(|e| e["InitiatingProcessFileName"] == "curl").count()
        };
        proxied(3);
        wait_until("events for the clients", 20, || curl_events(&mon) >= 3, || mon.stderr());
        let export = || status(&mon)["export"].clone();
        let spooling = |e: &Value| e["lag_rows"].as_u64().unwrap_or(0) >= 3 && e["errors"].as_u64().unwrap_or(0) > 0;
        wait_until("the export status shows the spool", 20, || spooling(&export()), || export().to_string());
        let spooled = export();
        assert_eq!(spooled["connected"], false, "{spooled}");
        assert!(spooled["last_error"].as_str().is_some_and(|e| e.contains("connect")), "{spooled}");
        assert!(mon.stderr().contains("export:"), "the daemon says the export fails: {}", mon.stderr());

        nats.restart().unwrap_or_else(|e| panic!("start nats-server: {e}"));
        proxied(2);
        let drained = |e: &Value| e["connected"] == true && e["lag_rows"] == 0;
        wait_until(
            "the spool drains",
            30,
            || drained(&export()) && curl_events(&mon) >= 5,
            || export().to_string(),
        );

        let events = mon.events();
        assert!(events.iter().all(|e| e["DeviceId"] == "fleet-agent-1"), "DeviceId on every event line");
        let line_seqs: Vec<u64> = events.iter().filter_map(|e| e["Seq"].as_u64()).collect();
        assert_eq!(line_seqs.len(), events.len(), "Seq on every event line");
        assert!(line_seqs.windows(2).all(|w| w[0] < w[1]), "Seq rises: {line_seqs:?}");

        let _ingest = spawn_monitor(
            None,
            &["ingest", "--from", &nats.url(), "--into", &clickhouse.url("fleet")],
            &bed.dir.join("fleet-ingest.log"),
        );
        let fleet = ClickHouse::new(&clickhouse.url("fleet"), None, None).expect("a ClickHouse URL");
        wait_until(
            "ClickHouse has every event",
            30,
            || fleet_seqs(&fleet, "fleet", "fleet-agent-1").len() >= line_seqs.len(),
            || format!("{} of {}", fleet_seqs(&fleet, "fleet", "fleet-agent-1").len(), line_seqs.len()),
        );
        let store_seqs = store_seqs(&mon);
        assert_eq!(store_seqs, line_seqs, "the store has what the event lines have");
        assert_eq!(fleet_seqs(&fleet, "fleet", "fleet-agent-1"), store_seqs, "ClickHouse has every event of the store, each once");
        let curl_rows = fleet
            .query_rows(
                "SELECT count() AS n FROM fleet.DeviceNetworkEvents FINAL WHERE DeviceName != '' \
                 AND InitiatingProcessFileName = 'curl' AND RemoteUrl = 'origin.test'",
            )
            .expect("query ClickHouse");
        assert_eq!(curl_rows[0]["n"].as_u64(), Some(curl_events(&mon) as u64), "{curl_rows:?}");

        // The same answers from `monitor hunt --fleet` as from the local store.
        let store = mon.store_path.display().to_string();
        let url = clickhouse.url("fleet");
        for query in [
            "DeviceNetworkEvents | summarize count() by DeviceName",
            r#"DeviceNetworkEvents | where ActionType == "ConnectionSuccess" and RemoteIP == "10.200.1.1" | project Seq, RemoteIP, RemotePort, RemoteUrl, InitiatingProcessFileName | sort by Seq asc"#,
            r#"DeviceNetworkEvents | where RemoteUrl has "origin" | summarize count(), dcount(LocalPort) by InitiatingProcessFileName, RemotePort"#,
        ] {
            let local = hunt(None, &["--store", &store], query);
            let fleet = hunt(None, &["--fleet", &url], query);
            assert!(!local.is_empty(), "{query}");
            assert_eq!(fleet, local, "hunt --fleet answers as the local store: {query}");
        }

        // Device health (issue 16): the daemon's heartbeats reach DeviceInfo with what it runs.
        let latest_info = "DeviceInfo | summarize arg_max(Timestamp, *) by DeviceName";
        let heartbeats = || hunt(None, &["--fleet", &url], "DeviceInfo | count")[0]["Count"].as_u64().unwrap_or(0);
        wait_until("heartbeats every second in DeviceInfo", 30, || heartbeats() >= 3, || heartbeats().to_string());
        let latest = hunt(None, &["--fleet", &url], latest_info);
        assert_eq!(latest.len(), 1, "one row per device: {latest:?}");
        let info = &latest[0];
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("the kernel release");
        assert_eq!(info["DeviceId"], "fleet-agent-1", "{info}");
        assert_eq!(info["ProtectionMode"], status(&mon)["mode"], "{info}");
        assert_eq!(info["ClientVersion"], env!("CARGO_PKG_VERSION"), "{info}");
        assert_eq!((info["OSPlatform"].as_str(), info["OSVersion"].as_str()), (Some("Linux"), Some(release.trim())));
        assert_eq!(info["DegradedFeatures"], serde_json::json!([]), "nothing degraded on this kernel: {info}");
        assert!(info["UptimeSeconds"].as_u64().is_some() && info["KernelDrops"] == 0, "{info}");
        let health = || {
            let rows = fleet_devices(&url, "10s");
            assert_eq!(rows.len(), 1, "{rows:?}");
            rows[0]["Health"].as_str().unwrap_or_default().to_string()
        };
        wait_until("the live agent is ok", 20, || health() == "ok", health);
        let stopped = mon.stop();
        assert!(stopped.success(), "the daemon stops cleanly: {stopped:?}");
        wait_until("the stopped agent turns stale", 30, || health() == "stale", health);
    });
}

/// `monitor devices --fleet URL --format json --stale-after STALE`: the rows.
fn fleet_devices(url: &str, stale: &str) -> Vec<Value> {
    let out = tests::monitor::command(None, &[])
        .arg(monitor_bin())
        .args(["devices", "--format", "json", "--fleet", url, "--stale-after", stale])
        .output()
        .expect("run monitor devices");
    assert!(out.status.success(), "monitor devices --fleet: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON row")).collect()
}

/// The three agents, the three NATS nodes and the central namespace (ingest and ClickHouse), on one LAN.
const AGENTS: [(&str, &str); 3] = [("a1", "10.201.0.21"), ("a2", "10.201.0.22"), ("a3", "10.201.0.23")];
const NODES: [(&str, &str); 3] = [("n1", "10.201.0.11"), ("n2", "10.201.0.12"), ("n3", "10.201.0.13")];
const CENTRAL: (&str, &str) = ("central", "10.201.0.30");
const NATS_PORT: u16 = 4222;
const ROUTE_PORT: u16 = 6222;
/// Each client's requests are bounded; the load stops earlier when the test says so.
const MAX_REQUESTS: usize = 400;

fn device_id(agent: &str) -> String {
    format!("cluster-agent-{agent}")
}

/// A three-node JetStream cluster, each node in a namespace of its own.
struct Cluster {
    nodes: Vec<(String, NatsServer)>,
}

impl Cluster {
    fn new(lan: &Lan) -> Cluster {
        let addr = |name: &str, port: u16| format!("{}:{port}", lan.addr(name)).parse().expect("address");
        let nodes = NODES
            .iter()
            .map(|(name, _)| {
                let node = ClusterNode {
                    name: name.to_string(),
                    client: addr(name, NATS_PORT),
                    cluster: addr(name, ROUTE_PORT),
                    routes: NODES
                        .iter()
                        .filter(|(o, _)| o != name)
                        .map(|(o, _)| addr(o, ROUTE_PORT))
                        .collect(),
                    extra_config: String::new(),
                };
                let server =
                    NatsServer::cluster_node(&node).unwrap_or_else(|e| panic!("nats node {name}: {e}"));
                (lan.ns(name).to_string(), server)
            })
            .collect();
        Cluster { nodes }
    }

    fn urls(&self) -> String {
        self.nodes.iter().map(|(_, n)| n.url()).collect::<Vec<_>>().join(",")
    }

    /// (Re)starts node `i` from a thread inside its namespace, which the process inherits.
    fn start(&mut self, i: usize) {
        let (ns, node) = &mut self.nodes[i];
        in_netns(ns, || node.restart()).unwrap_or_else(|e| panic!("start nats node {}: {e}", node.name()));
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i].1.kill();
    }

    fn index_of(&self, name: &str) -> usize {
        self.nodes.iter().position(|(_, n)| n.name() == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|(_, n)| format!("--- {}:\n{}", n.name(), n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Asks the cluster (from the hub, which reaches every node) about the stream `MONITOR_EVENTS`: its
/// leader and replica count; `None` while JetStream cannot answer (no meta leader, no stream yet).
fn stream_state(lan: &Lan, urls: &str) -> Option<(String, usize)> {
    let servers: Vec<async_nats::ServerAddr> = urls.split(',').filter_map(|u| u.parse().ok()).collect();
    in_netns(&lan.hub, || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        runtime.block_on(async {
            let ask = async {
                let client = async_nats::ConnectOptions::new().connect(servers).await.ok()?;
                let js = async_nats::jetstream::new(client);
                let mut stream = js.get_stream(monitor_fleet::nats::STREAM).await.ok()?;
                let info = stream.info().await.ok()?;
                let leader = info.cluster.as_ref()?.leader.clone()?;
                Some((leader, info.config.num_replicas))
            };
            tokio::time::timeout(Duration::from_secs(5), ask).await.ok().flatten()
        })
    })
}

/// One client's requests: through squid, and every fourth straight to the origin (rows the seed's
/// second query keeps); until `stop` or [`MAX_REQUESTS`]. Returns the failed runs.
fn load(bed: &Bed, cg: &Cgroup, stop: &AtomicBool) -> Vec<ClientRun> {
    let direct = format!("origin.test:443:{ORIGIN_V4}");
    let mut failed = Vec::new();
    for i in 0..MAX_REQUESTS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let run = if i % 4 == 3 {
            curl(bed, cg, &["--resolve", &direct, "https://origin.test/"])
        } else {
            curl(bed, cg, &["-x", SQUID, "https://origin.test/"])
        };
        if !run.ok() {
            failed.push(run);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    failed
}

fn start_agent(bed: &Bed, lan: &Lan, agent: &str, cg: &Cgroup, urls: &str) -> Monitor {
    // A UTS namespace of its own: the hostname is the agent's DeviceName.
    let hostname = ["unshare", "--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\"", agent];
    Monitor::start_wrapped(
        &bed.dir,
        &format!("cluster-{agent}"),
        Some(lan.ns(agent)),
        &hostname,
        &[
            "--cgroup".into(),
            cg.path.display().to_string(),
            "--device-id".into(),
            device_id(agent),
            "--export".into(),
            urls.into(),
            "--export-replicas".into(),
            "3".into(),
        ],
    )
}

fn cluster(r: &mut Runner, bed: &Bed) {
    const CASE: &str = "fleet_cluster_survives_leader_kill_outage_and_agent_restart";
    r.case(CASE, || {
        let mut members: Vec<(&str, &str)> = NODES.to_vec();
        members.extend(AGENTS);
        members.push(CENTRAL);
        let lan = Lan::new(&members);
        let central = lan.ns(CENTRAL.0).to_string();

        let mut cluster = Cluster::new(&lan);
        for i in 0..NODES.len() {
            cluster.start(i);
        }
        let urls = cluster.urls();
        let clickhouse =
            in_netns(&central, ClickHouseServer::start).unwrap_or_else(|e| panic!("start clickhouse-server: {e}"));
        let url = clickhouse.url("fleet");
        let fleet = ClickHouse::new(&url, None, None).expect("a ClickHouse URL");

        let cgroups: Vec<Cgroup> = AGENTS.iter().map(|(a, _)| Cgroup::new(&format!("cluster-{a}"))).collect();
        let mut agents: Vec<Monitor> =
            AGENTS.iter().zip(&cgroups).map(|((a, _), cg)| start_agent(bed, &lan, a, cg, &urls)).collect();
        let _ingest = spawn_monitor(
            Some(&central),
            &["ingest", "--from", &urls, "--into", &url],
            &bed.dir.join("cluster-ingest.log"),
        );
        let ingest_log = || std::fs::read_to_string(bed.dir.join("cluster-ingest.log")).unwrap_or_default();

        let stop = AtomicBool::new(false);
        let failed: Vec<ClientRun> = std::thread::scope(|scope| {
            let clients: Vec<_> = cgroups.iter().map(|cg| scope.spawn(|| load(bed, cg, &stop))).collect();
            // Whatever fails below, the clients stop, so the scope ends and the panic is reported.
            let stopper = scopeguard(&stop);
            let exported = |mon: &Monitor| status(mon)["export"]["exported"].as_u64().unwrap_or(0);
            wait_until(
                "every agent exports",
                60,
                || agents.iter().all(|m| exported(m) >= 3),
                || format!("{:?}\n{}", agents.iter().map(|m| status(m)["export"].clone()).collect::<Vec<_>>(), cluster.logs()),
            );
            let (leader, replicas) = stream_state(&lan, &urls).expect("the stream has a leader");
            assert_eq!(replicas, 3, "the agents create MONITOR_EVENTS with three replicas");

            // The stream leader dies mid-stream: the two others elect a new one and the agents go on
            // exporting to it; then the old leader comes back.
            eprintln!("  [fleet] killing the stream leader {leader} (SIGKILL)");
            let old_leader = leader.clone();
            let leader = cluster.index_of(&leader);
            let before: Vec<u64> = agents.iter().map(exported).collect();
            cluster.kill(leader);
            wait_until(
                "a new stream leader",
                30,
                || stream_state(&lan, &urls).is_some_and(|(l, _)| l != old_leader),
                || cluster.logs(),
            );
            wait_until(
                "every agent exports to the new leader",
                30,
                || agents.iter().zip(&before).all(|(m, b)| exported(m) > *b),
                || format!("{:?}", agents.iter().map(|m| status(m)["export"].clone()).collect::<Vec<_>>()),
            );
            cluster.start(leader);
            std::thread::sleep(Duration::from_secs(2));

            // The whole cluster stops for 10 s; one agent restarts meanwhile.
            eprintln!("  [fleet] stopping the whole cluster for 10 s; restarting agent {} meanwhile", AGENTS[1].0);
            let outage = Instant::now();
            for i in 0..NODES.len() {
                cluster.kill(i);
            }
            let restarted = agents.remove(1);
            let before_restart = restarted.events().iter().filter_map(|e| e["Seq"].as_u64()).max().unwrap_or(0);
            restarted.stop();
            agents.insert(1, start_agent(bed, &lan, AGENTS[1].0, &cgroups[1], &urls));
            std::thread::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed()));
            for i in 0..NODES.len() {
                cluster.start(i);
            }
            std::thread::sleep(Duration::from_secs(5));
            drop(stopper);
            let after_restart: Vec<u64> = agents[1].events().iter().filter_map(|e| e["Seq"].as_u64()).collect();
            assert!(
                !after_restart.is_empty() && after_restart.iter().all(|&s| s > before_restart),
                "the restarted agent's Seq goes on rising past {before_restart}: {after_restart:?}"
            );
            clients.into_iter().flat_map(|c| c.join().expect("client thread")).collect()
        });
        assert!(failed.is_empty(), "every client request succeeded: {failed:?}");

        wait_until(
            "every agent's spool drains",
            90,
            || agents.iter().all(|m| {
                let export = status(m)["export"].clone();
                export["connected"] == true && export["lag_rows"] == 0
            }),
            || format!("{:?}\n{}", agents.iter().map(|m| status(m)["export"].clone()).collect::<Vec<_>>(), cluster.logs()),
        );
        let stores: Vec<Vec<u64>> = agents.iter().map(store_seqs).collect();
        let in_fleet = |agent: &str| in_netns(&central, || fleet_seqs(&fleet, "fleet", &device_id(agent)));
        wait_until(
            "ClickHouse holds every agent's events",
            90,
            || AGENTS.iter().zip(&stores).all(|((a, _), s)| in_fleet(a).len() >= s.len()),
            || format!(
                "{:?} of {:?}; ingest says:\n{}",
                AGENTS.iter().map(|(a, _)| in_fleet(a).len()).collect::<Vec<_>>(),
                stores.iter().map(Vec::len).collect::<Vec<_>>(),
                ingest_log()
            ),
        );
        eprintln!("  [fleet] events per agent, in its store and in ClickHouse: {:?}", stores.iter().map(Vec::len).collect::<Vec<_>>());
        for ((agent, _), store) in AGENTS.iter().zip(&stores) {
            assert!(store.len() >= 20, "agent {agent} saw the clients: {} events", store.len());
            assert_eq!(&in_fleet(agent), store, "ClickHouse holds agent {agent}'s store, every Seq once");
        }

        // Fleet hunting over the three devices: the seed's two queries, and a count by device that is the
        // count of each local store.
        let fleet_hunt = |query: &str| hunt(Some(&central), &["--fleet", &url], query);
        let seed = fleet_hunt(r#"DeviceNetworkEvents | where ActionType == "ConnectionSuccess" | take 10"#);
        assert_eq!(seed.len(), 10, "{seed:?}");
        assert!(seed.iter().all(|row| row["ActionType"] == "ConnectionSuccess"), "{seed:?}");
        let behind = fleet_hunt(&format!(
            r#"DeviceNetworkEvents | where ActionType == "ConnectionSuccess" and RemoteIP != "{proxy}" | take 10"#,
            proxy = tests::bed::ROUTER_V4
        ));
        assert_eq!(behind.len(), 10, "{behind:?}");
        assert!(behind.iter().all(|row| row["RemoteIP"] == ORIGIN_V4 && row["RemoteUrl"] == "origin.test"), "{behind:?}");
        let by_device: BTreeMap<String, u64> = fleet_hunt("DeviceNetworkEvents | summarize count() by DeviceName")
            .iter()
            .map(|row| (row["DeviceName"].as_str().unwrap_or("").to_string(), row["count_"].as_u64().unwrap_or(0)))
            .collect();
        let local: BTreeMap<String, u64> = AGENTS
            .iter()
            .zip(&agents)
            .map(|((a, _), mon)| {
                let store = mon.store_path.display().to_string();
                let rows = hunt(None, &["--store", &store], "DeviceNetworkEvents | count");
                (a.to_string(), rows[0]["Count"].as_u64().unwrap_or(0))
            })
            .collect();
        assert_eq!(by_device, local, "summarize count() by DeviceName over the fleet is each agent's own count");
        drop(agents);
    });
}

/// Sets `flag` when dropped (also when unwinding).
fn scopeguard(flag: &AtomicBool) -> impl Drop + '_ {
    struct Set<'a>(&'a AtomicBool);
    impl Drop for Set<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    Set(flag)
}

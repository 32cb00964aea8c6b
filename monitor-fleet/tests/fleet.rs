//! The fleet path with real servers on loopback: the agent's store, the exporter, nats-server with
//! JetStream, the ingest and clickhouse-server (Debian's 18.16); and fleet hunting on a current ClickHouse
//! (chdb's embedded 26.x) too.

#![expect(unused_crate_dependencies, reason = "a test target sees every dev-dependency of the package")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use monitor_fleet::clickhouse::{ClickHouse, FleetSql};
use monitor_fleet::ingest::{DEFAULT_CONSUMER, Ingest, IngestOptions};
use monitor_fleet::samples::{SAMPLE_DEVICE_ID, sample_event, write_sample_store};
use monitor_fleet::servers::{Chdb, ClickHouseServer, NatsServer, ServerError};
use monitor_fleet::{ExportOptions, Exporter, NatsOptions};
use monitor_hunt::kql::sql::TableSplits;
use monitor_hunt::time::{format_datetime, now_micros};
use monitor_hunt::{Retention, Spool, StoreWriter};
use serde_json::{Value, json};

/// The local KQL test suite (monitor-hunt's queries over its fixture).
#[path = "../../monitor-hunt/tests/it/cases.rs"]
mod local_suite;

const DEVICE_ID: &str = SAMPLE_DEVICE_ID;
/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(60);

fn wait_for(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}: {}", context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The time the events are placed before (one millisecond apart, ending 8 s before it), and the `now` the
/// differential queries run at.
fn base_time() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(now_micros)
}

/// An event as the daemon's sink writes it: with this device's DeviceId and the next Seq.
fn event(seq: u64, device_name: &str) -> Value {
    sample_event(seq, device_name, event_time(seq))
}

fn event_time(seq: u64) -> i64 {
    base_time() - 1_000 * (10_000 - seq as i64)
}

/// A store with `count` events numbered as the daemon numbers them; returns the store and the Seqs.
fn write_store(dir: &Path, count: u64) -> (PathBuf, Vec<u64>) {
    let path = dir.join("events.db");
    let seqs = write_sample_store(&path, count, "agent-1.example", event_time)
        .unwrap_or_else(|e| panic!("write the store: {e}"));
    (path, seqs)
}

fn export_options(nats: &NatsServer) -> ExportOptions {
    ExportOptions::new(NatsOptions { servers: vec![nats.url()], ..NatsOptions::default() })
}

fn ingest_options(nats: &NatsServer, clickhouse: &ClickHouseServer) -> IngestOptions {
    IngestOptions {
        nats: NatsOptions { servers: vec![nats.url()], ..NatsOptions::default() },
        clickhouse: ClickHouse::new(&clickhouse.url("fleet"), None, None).expect("a ClickHouse URL"),
        consumer: DEFAULT_CONSUMER.into(),
        batch: 1_000,
    }
}

/// Starts a ClickHouse server and an ingest from `nats`, waits until `rows` events are in, stops the ingest.
fn ingest_into_new_clickhouse(nats: &NatsServer, rows: u64) -> (ClickHouseServer, ClickHouse) {
    let server = ClickHouseServer::start().unwrap_or_else(|e| panic!("start clickhouse-server: {e}"));
    let ingest = Ingest::start(ingest_options(nats, &server)).expect("start the ingest");
    let clickhouse = fleet(&server);
    wait_for(
        &format!("{rows} rows in ClickHouse"),
        || fleet_count(&clickhouse) == rows,
        || format!("{} rows, {:?}", fleet_count(&clickhouse), ingest.counts()),
    );
    ingest.stop().expect("the ingest stops cleanly");
    (server, clickhouse)
}

fn fleet(clickhouse: &ClickHouseServer) -> ClickHouse {
    ClickHouse::new(&clickhouse.url("fleet"), None, None).expect("a ClickHouse URL")
}

/// Rows in ClickHouse, each event once (FINAL), or 0 before the tables exist.
fn fleet_count(clickhouse: &impl FleetSql) -> u64 {
    let sql = "SELECT (SELECT count() FROM fleet.DeviceNetworkEvents FINAL) + \
               (SELECT count() FROM fleet.DeviceEvents FINAL) AS n";
    clickhouse
        .query_rows(sql)
        .ok()
        .and_then(|rows| rows.first().and_then(|r| r.get("n")).and_then(Value::as_u64))
        .unwrap_or(0)
}

/// Every event of the local store is in ClickHouse exactly once, with the same columns.
fn assert_fleet_matches_store(clickhouse: &ClickHouse, store: &Path, seqs: &[u64]) {
    let spool = Spool::open(store).expect("open the spool");
    let local = spool.after(0, usize::MAX).expect("read the store");
    assert_eq!(local.len(), seqs.len());
    let mut remote = Vec::new();
    for table in monitor_hunt::schema::TABLES {
        let rows = clickhouse
            .query_rows(&format!(
                "SELECT DeviceId, Seq, count() AS copies, any(TimestampMicros) AS TimestampMicros, any(DeviceName) AS DeviceName, \
                 any(ActionType) AS ActionType, any(RemoteUrl) AS RemoteUrl, any(LocalPort) AS LocalPort, \
                 any(InitiatingProcessFileName) AS InitiatingProcessFileName, \
                 any(InitiatingProcessParentId) AS InitiatingProcessParentId, \
                 any(visitParamExtractString(AdditionalFields, 'Sni')) AS Sni \
                 FROM fleet.{table} FINAL GROUP BY DeviceId, Seq"
            ))
            .unwrap_or_else(|e| panic!("query {table}: {e}"));
        remote.extend(rows.into_iter().map(|r| (table, r)));
    }
    remote.sort_by_key(|(_, r)| r["Seq"].as_u64());
    assert_eq!(remote.len(), local.len(), "ClickHouse has as many events as the store");
    for (spooled, (table, row)) in local.iter().zip(&remote) {
        let e = &spooled.event();
        let context = format!("Seq {}: local {e} remote {row:?}", spooled.seq);
        assert_eq!(row["Seq"].as_u64(), Some(spooled.seq), "{context}");
        assert_eq!(row["copies"], 1, "each Seq once: {context}");
        assert_eq!(*table, spooled.table, "{context}");
        assert_eq!(row["DeviceId"], e["DeviceId"], "{context}");
        assert_eq!(
            row["TimestampMicros"].as_i64(),
            e["Timestamp"].as_str().and_then(monitor_hunt::time::parse_datetime),
            "{context}"
        );
        for column in [
            "DeviceName",
            "ActionType",
            "RemoteUrl",
            "LocalPort",
            "InitiatingProcessFileName",
            "InitiatingProcessParentId",
        ] {
            assert_eq!(row[column], e[column], "{column}: {context}");
        }
        assert_eq!(row["Sni"], e["AdditionalFields"]["Sni"], "{context}");
    }
}

fn nats_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// Messages in a stream.
fn stream_messages(nats: &NatsServer, stream: &str) -> u64 {
    nats_runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.unwrap_or_else(|e| panic!("stream {stream}: {e}"));
        stream.info().await.expect("stream info").state.messages
    })
}

#[test]
fn exported_events_reach_clickhouse_once_each_as_in_the_local_store() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("start nats-server: {e}"));
    let clickhouse_server =
        ClickHouseServer::start().unwrap_or_else(|e| panic!("start clickhouse-server: {e}"));
    let (store, seqs) = write_store(dir.path(), 3_000);
    let last = *seqs.last().expect("events");

    let exporter = Exporter::start(&store, DEVICE_ID, export_options(&nats)).expect("start the exporter");
    wait_for(
        "the export of every event",
        || exporter.status().acked_seq == last,
        || format!("{:?}", exporter.status()),
    );
    let status = exporter.status();
    assert_eq!((status.lag_rows, status.exported), (0, 3_000), "{status:?}");
    assert!(status.connected && status.last_ack_seconds_ago.is_some(), "{status:?}");
    exporter.stop();
    assert_eq!(Spool::open(&store).expect("spool").cursor().expect("cursor"), last, "the cursor is durable");

    // A resend after a failure uses the same ids: JetStream keeps each event once.
    Spool::open(&store).expect("spool").set_cursor(seqs[1_000]).expect("move the cursor back");
    let exporter = Exporter::start(&store, DEVICE_ID, export_options(&nats)).expect("restart the exporter");
    wait_for("the resend", || exporter.status().acked_seq == last, || format!("{:?}", exporter.status()));
    exporter.stop();
    assert_eq!(stream_messages(&nats, "MONITOR_EVENTS"), 3_000, "duplicates are dropped by message id");

    let ingest = Ingest::start(ingest_options(&nats, &clickhouse_server)).expect("start the ingest");
    let clickhouse = fleet(&clickhouse_server);
    wait_for(
        "every event in ClickHouse",
        || fleet_count(&clickhouse) == 3_000,
        || format!("{} rows, {:?}", fleet_count(&clickhouse), ingest.counts()),
    );
    let counts = ingest.counts();
    assert_eq!(counts.dead_lettered, 0, "{counts:?}");
    ingest.stop().expect("the ingest stops cleanly");
    assert_fleet_matches_store(&clickhouse, &store, &seqs);
}

#[test]
fn a_malformed_message_is_dead_lettered_and_counted() {
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("start nats-server: {e}"));
    let clickhouse_server =
        ClickHouseServer::start().unwrap_or_else(|e| panic!("start clickhouse-server: {e}"));
    let ingest = Ingest::start(ingest_options(&nats, &clickhouse_server)).expect("start the ingest");
    let clickhouse = fleet(&clickhouse_server);
    // The ingest creates the streams and the tables when it starts.
    wait_for(
        "the tables",
        || clickhouse.query_rows("SELECT count() AS n FROM fleet.DeviceEvents").is_ok(),
        String::new,
    );
    nats_runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        for payload in [b"{not json".to_vec(), serde_json::to_vec(&event(7, "agent-2")).expect("JSON")] {
            js.publish("monitor.events.DeviceEvents.agent-2", payload.into())
                .await
                .expect("publish")
                .await
                .expect("acknowledged by JetStream");
        }
    });
    wait_for(
        "the valid event in ClickHouse",
        || fleet_count(&clickhouse) == 1,
        || format!("{:?}", ingest.counts()),
    );
    wait_for(
        "the dead letter counted",
        || ingest.counts().dead_lettered == 1,
        || format!("{:?}", ingest.counts()),
    );
    let counts = ingest.counts();
    assert_eq!(counts.ingested, 1, "{counts:?}");
    ingest.stop().expect("the ingest stops cleanly");

    let (payload, reason) = nats_runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("MONITOR_DEADLETTER").await.expect("the dead-letter stream");
        let message = stream.get_raw_message(1).await.expect("the first dead letter");
        let reason = message
            .headers
            .get(monitor_fleet::ingest::REASON_HEADER)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        (message.payload, reason)
    });
    assert_eq!(&payload[..], b"{not json", "the dead letter is the message as it came");
    assert!(reason.starts_with("not JSON"), "the reason says what is wrong: {reason}");
    assert_eq!(stream_messages(&nats, "MONITOR_DEADLETTER"), 1);
}

#[test]
fn nats_down_at_agent_start_then_up_everything_ships() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut nats = NatsServer::not_started().unwrap_or_else(|e| panic!("pick a port for nats-server: {e}"));
    let (store, seqs) = write_store(dir.path(), 2_000);
    let last = *seqs.last().expect("events");

    let exporter =
        Exporter::start(&store, DEVICE_ID, export_options(&nats)).expect("the agent starts without NATS");
    wait_for(
        "the failure in the status",
        || exporter.status().errors > 0,
        || format!("{:?}", exporter.status()),
    );
    let status = exporter.status();
    assert!(!status.connected, "{status:?}");
    assert!(status.last_error.as_deref().is_some_and(|e| e.contains("connect")), "says why: {status:?}");
    assert_eq!((status.lag_rows, status.acked_seq), (2_000, 0), "everything waits in the spool: {status:?}");
    assert!(status.lag_seconds > 0.0, "{status:?}");

    nats.restart().unwrap_or_else(|e| panic!("start nats-server: {e}"));
    wait_for(
        "the export after NATS came up",
        || exporter.status().acked_seq == last,
        || format!("{:?}", exporter.status()),
    );
    let status = exporter.status();
    assert!(status.connected && status.last_error.is_none() && status.lag_rows == 0, "{status:?}");
    exporter.stop();

    let (_server, clickhouse) = ingest_into_new_clickhouse(&nats, 2_000);
    assert_fleet_matches_store(&clickhouse, &store, &seqs);
}

#[test]
fn clickhouse_down_while_ingesting_loses_nothing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("start nats-server: {e}"));
    let mut clickhouse_server =
        ClickHouseServer::start().unwrap_or_else(|e| panic!("start clickhouse-server: {e}"));
    let (store, seqs) = write_store(dir.path(), 1_500);
    let ingest = Ingest::start(ingest_options(&nats, &clickhouse_server)).expect("start the ingest");
    let clickhouse = fleet(&clickhouse_server);
    wait_for(
        "the tables",
        || clickhouse.query_rows("SELECT count() AS n FROM fleet.DeviceEvents").is_ok(),
        String::new,
    );
    clickhouse_server.kill();

    let exporter = Exporter::start(&store, DEVICE_ID, export_options(&nats)).expect("start the exporter");
    wait_for(
        "the export",
        || exporter.status().acked_seq == *seqs.last().expect("events"),
        || format!("{:?}", exporter.status()),
    );
    exporter.stop();
    wait_for(
        "the ingest to notice",
        || ingest.counts().clickhouse_failures > 0,
        || format!("{:?}", ingest.counts()),
    );
    assert_eq!(ingest.counts().ingested, 0, "nothing counted as ingested while ClickHouse is down");

    clickhouse_server.restart().unwrap_or_else(|e| panic!("restart clickhouse-server: {e}"));
    wait_for(
        "every event in ClickHouse",
        || fleet_count(&clickhouse) == 1_500,
        || format!("{} rows, {:?}", fleet_count(&clickhouse), ingest.counts()),
    );
    ingest.stop().expect("the ingest stops cleanly");
    assert_fleet_matches_store(&clickhouse, &store, &seqs);
}

/// Queries of the subset that `hunt --fleet` runs in ClickHouse; each gives the same answer there as over
/// the local store holding the same events. Rows are compared as sets; where a query sorts (`sort by`,
/// `top N by`), its sort columns must also come in the same order (rows that tie on them may come in any
/// order: neither KQL nor SQL orders ties, and SQLite and ClickHouse 26.x break them differently).
const FLEET_QUERIES: &[&str] = &[
    r#"DeviceNetworkEvents | where ActionType == "ConnectionSuccess" | count"#,
    r#"DeviceNetworkEvents | where ActionType == "ConnectionSuccess" and RemoteIP != "10.0.0.5" | project Seq, RemoteIP | sort by Seq desc | take 10"#,
    r#"DeviceNetworkEvents | where RemoteUrl has "site3" | summarize count() by InitiatingProcessFileName"#,
    r#"DeviceNetworkEvents | where RemoteUrl has "example" | summarize count() by RemoteUrl"#,
    r#"DeviceNetworkEvents | where RemoteUrl has "exam" | count"#,
    r#"DeviceNetworkEvents | where RemoteUrl !has "site1" | count"#,
    r#"DeviceEvents | summarize count() by DeviceName"#,
    r#"DeviceNetworkEvents | where RemoteUrl contains "SITE1" | project Seq, RemoteUrl | sort by Seq desc | take 5"#,
    r#"DeviceNetworkEvents | where RemoteUrl contains_cs "SITE1" | count"#,
    r#"DeviceNetworkEvents | where LocalPort between (40100 .. 40200) | count"#,
    r#"DeviceNetworkEvents | where Timestamp > ago(9s) | count"#,
    r#"DeviceNetworkEvents | where Timestamp between (ago(9500ms) .. ago(8500ms)) | summarize count() by bin(Timestamp, 100ms)"#,
    r#"DeviceNetworkEvents | where Timestamp < now() - 9s | summarize min(Timestamp), max(Timestamp)"#,
    r#"DeviceNetworkEvents | summarize dcount(RemoteUrl), min(LocalPort), max(LocalPort), sum(RemotePort) by InitiatingProcessFileName"#,
    r#"DeviceNetworkEvents | where tostring(AdditionalFields.Sni) == "site2.example.com" | count"#,
    r#"DeviceNetworkEvents | where AdditionalFields.Sni == "site2.example.com" | count"#,
    r#"DeviceNetworkEvents | where RemoteUrl startswith "SITE4" and RemoteUrl endswith ".COM" | count"#,
    r#"DeviceNetworkEvents | where RemoteUrl startswith_cs "SITE4" | count"#,
    r#"DeviceNetworkEvents | where InitiatingProcessFileName in~ ("CURL") | summarize count() by RemoteIP"#,
    r#"DeviceNetworkEvents | where InitiatingProcessFileName !in ("curl") | count"#,
    r#"DeviceEvents | where ActionType =~ "exploitguardnetworkprotectionblocked" | extend Port2 = RemotePort * 2 | project Seq, Port2 | sort by Seq asc | take 3"#,
    r#"DeviceNetworkEvents | where RemoteUrl matches regex "site[12]" | count"#,
    r#"DeviceNetworkEvents | distinct RemoteUrl"#,
    r#"DeviceNetworkEvents | where isnotempty(InitiatingProcessFileName) | summarize countif(LocalPort > 40500) by InitiatingProcessFileName"#,
    r#"DeviceNetworkEvents | where isempty(InitiatingProcessParentId) | count"#,
    r#"DeviceNetworkEvents | top 3 by Seq desc | project Seq, LocalPort, Timestamp, DeviceId"#,
    r#"DeviceNetworkEvents | summarize n = count() by InitiatingProcessFileName | where n > 100 | sort by n desc"#,
    r#"DeviceNetworkEvents | where tolower(RemoteUrl) == "site5.example.com" and strlen(RemoteUrl) == 17 | count"#,
    r#"DeviceNetworkEvents | summarize arg_max(Seq, RemoteUrl, LocalPort) by InitiatingProcessFileName"#,
    r#"DeviceNetworkEvents | summarize arg_max(Timestamp, *) by DeviceName | project DeviceName, Timestamp, Seq, RemoteUrl, LocalPort"#,
    r#"DeviceNetworkEvents | summarize Last = arg_min(Seq, RemoteUrl), count() by InitiatingProcessFileName"#,
    r#"DeviceNetworkEvents | summarize arg_max(Timestamp, RemoteUrl), max(Timestamp), n = count(), n = dcount(RemoteUrl) by bin(Timestamp, 1s)"#,
    r#"DeviceNetworkEvents | summarize arg_max(InitiatingProcessParentId, RemoteUrl, LocalPort), count() by InitiatingProcessFileName"#,
];

/// What `hunt --fleet` does not push down yet, and why (each gives an error naming it).
const NOT_PUSHED_DOWN: &[(&str, &str)] = &[
    ("union DeviceNetworkEvents, DeviceEvents | count", "`union`: not translated yet"),
    ("DeviceEvents | join kind=inner (DeviceNetworkEvents) on Seq", "`join`: not translated yet"),
    ("DeviceNetworkEvents | project-away AdditionalFields", "`project-away`: needs the column list"),
    ("DeviceNetworkEvents | where RemoteUrl has_any (\"site1\", \"site2\")", "`has_any`: not translated yet"),
];

/// The queries of the local KQL test suite ([`local_suite::CASES`]) that `hunt --fleet` does not run, and
/// why (each gives an error naming it); every other query of the suite is compared.
const SUITE_NOT_ON_FLEET: &[(&str, &str)] = &[
    (
        r#"DeviceEvents | where Timestamp < datetime("2026-11-29 05:10:00") | project ReportId"#,
        "datetime(): not translated yet (ago() and now() are)",
    ),
    (
        r#"DeviceNetworkEvents | where RemoteUrl has_any ("github", "pypi", "npmjs") | project ReportId"#,
        "`has_any`: not translated yet",
    ),
    (
        r#"DeviceNetworkEvents | where InitiatingProcessCommandLine has_all ("curl", "example") | project ReportId"#,
        "`has_all`: not translated yet",
    ),
    (
        r#"let watched = dynamic(["pastebin.com", "malware.test"]); union DeviceNetworkEvents, DeviceEvents | where RemoteUrl in (watched) | project ReportId"#,
        "`let`: not translated yet",
    ),
    (
        r#"union DeviceNetworkEvents, DeviceEvents | where Timestamp between (datetime(2026-11-29 05:12) .. datetime(2026-11-29 05:14)) | sort by ReportId asc | project ReportId"#,
        "`union`: not translated yet",
    ),
    (
        r#"DeviceEvents | where ReportId == 12 | project-away Initiating*, AdditionalFields, LocalIP, LocalPort, Protocol, Device*, Timestamp, Seq"#,
        "`project-away`: needs the column list",
    ),
    (
        r#"DeviceEvents | where ReportId == 7 | project-rename Target = RemoteUrl | project Target"#,
        "`project-rename`: needs the column list",
    ),
    (
        r#"union DeviceNetworkEvents, DeviceEvents | where Timestamp < datetime(2026-11-29T05:20:00Z) | summarize Events = count() by bin(Timestamp, 5m) | sort by Timestamp asc"#,
        "`union`: not translated yet",
    ),
    (
        r#"let proxy = "10.0.0.5"; let window = 10m; DeviceNetworkEvents | where RemoteIP == proxy and Timestamp > now() - window | project ReportId"#,
        "`let`: not translated yet",
    ),
    (
        r#"DeviceEvents | where ActionType endswith "Audited" | project AuditId = ReportId, InitiatingProcessId, RemoteUrl | join kind=inner (DeviceNetworkEvents | project ConnId = ReportId, InitiatingProcessId, RemoteUrl) on InitiatingProcessId, RemoteUrl | project AuditId, ConnId | sort by AuditId asc"#,
        "`join`: not translated yet",
    ),
    (
        r#"DeviceEvents | project ReportId, InitiatingProcessId | join kind=leftouter (DeviceNetworkEvents | where ActionType == "ConnectionFailed" | project FailedId = ReportId, InitiatingProcessId) on InitiatingProcessId | project ReportId, FailedId | sort by ReportId asc"#,
        "`join`: not translated yet",
    ),
    (
        r#"DeviceNetworkEvents | where RemoteIP == "10.0.0.5" | join kind=leftanti (DeviceEvents) on InitiatingProcessId | project ReportId"#,
        "`join`: not translated yet",
    ),
    (
        r#"DeviceEvents | where ReportId == 12 | join kind=inner (DeviceNetworkEvents | project ConnUrl = RemoteUrl, ConnId = ReportId) on $left.RemoteUrl == $right.ConnUrl | project ReportId, ConnId"#,
        "`join`: not translated yet",
    ),
    (
        r#"DeviceNetworkEvents | where InitiatingProcessFileName == "python3" | project InitiatingProcessId, ReportId | join (DeviceEvents | project InitiatingProcessId, AuditId = ReportId) on InitiatingProcessId | project ReportId, AuditId, InitiatingProcessId1"#,
        "`join`: not translated yet",
    ),
    (
        r#"let blocked = DeviceEvents | where ActionType endswith "Blocked" | project InitiatingProcessId; DeviceNetworkEvents | join kind=leftsemi (blocked) on InitiatingProcessId | project ReportId"#,
        "`let`: not translated yet",
    ),
    (
        r#"union DeviceNetworkEvents, DeviceEvents | where RemoteUrl == "evil.example.net" | project ReportId"#,
        "`union`: not translated yet",
    ),
    (
        r#"union withsource=SourceTable DeviceEvents, (DeviceNetworkEvents | where ReportId == 1) | where ReportId in (1, 7) | project SourceTable, ReportId"#,
        "`union`: not translated yet",
    ),
    (
        r#"DeviceEvents | where ReportId == 7 | union (DeviceNetworkEvents | where ReportId == 6) | project ReportId"#,
        "`union`: not translated yet",
    ),
    (
        r#"DeviceEvents | project ReportId, Mode = iff(AdditionalFields.IsAudit == true, "audit", "block"), Kind = case(RemotePort == 3128, "proxy", RemotePort == 443, "direct", "other") | sort by ReportId asc"#,
        "case(): not translated yet",
    ),
    (
        r#"DeviceNetworkEvents | where ReportId == 4 | project Host = tostring(split(RemoteUrl, "/")[2]), File = extract(@"/([^/]+)$", 1, RemoteUrl), Lower = tolower(InitiatingProcessFileName), Upper = toupper("x")"#,
        "an index that is not a string literal: only `.Key` and `[\"Key\"]` into AdditionalFields are translated",
    ),
    (
        r#"DeviceEvents | where AdditionalFields.IsAudit == false | project ReportId, Indicator = AdditionalFields["MatchedIndicator"], Category = parse_json(AdditionalFields).ResponseCategory"#,
        "parse_json(): not translated yet",
    ),
    (
        r#"DeviceNetworkEvents | where Timestamp between (ago(1h) .. ago(30s)) and Timestamp < ago(2h) + 1d | summarize Events = count(), Span = max(Timestamp) - min(Timestamp) | extend Tick = 100ms + 30s"#,
        "arithmetic over aggregates: not translated yet",
    ),
];

/// The columns the last `sort by` or `top N by` of `query` orders by.
fn sort_columns(query: &str) -> Vec<&str> {
    let last = query.split('|').rev().find_map(|op| {
        let op = op.trim();
        op.strip_prefix("sort by ").or_else(|| op.strip_prefix("order by ")).or_else(|| {
            op.strip_prefix("top ").and_then(|rest| rest.split_once(" by ").map(|(_, keys)| keys))
        })
    });
    last.map(|keys| keys.split(',').filter_map(|key| key.split_whitespace().next()).collect())
        .unwrap_or_default()
}

/// A result as text: its columns, its rows as a set, and the sequence of its `sort` columns' values (of
/// all its columns where the sort's are not all in it). The
/// elements of a `make_set` are a set too (in the order each store met them).
fn answer_text(result: &monitor_hunt::QueryResult, query: &str) -> String {
    let sets = query.contains("make_set(");
    let text = |value: &monitor_hunt::Value| match value {
        monitor_hunt::Value::Dynamic(Value::Array(items)) if sets => {
            let mut items: Vec<String> = items.iter().map(Value::to_string).collect();
            items.sort();
            format!("set {items:?}")
        }
        other => other.to_text(),
    };
    let rows: Vec<Vec<String>> = result.rows.iter().map(|r| r.iter().map(text).collect()).collect();
    // The sort columns, or, where one is not in the answer, every column (ties then must match too).
    let keys: Option<Vec<usize>> =
        sort_columns(query).into_iter().map(|name| result.columns.iter().position(|c| c == name)).collect();
    let keys = keys.unwrap_or_else(|| (0..result.columns.len()).collect());
    let order: Vec<Vec<&String>> = rows.iter().map(|row| keys.iter().map(|&k| &row[k]).collect()).collect();
    let order = format!("{order:?}");
    let mut set = rows;
    set.sort();
    format!("{:?} {set:?}, in the order {order}", result.columns)
}

/// Queries, the local store that answers them and the `now` they run at.
struct Suite<'a> {
    name: &'a str,
    store: &'a Path,
    now: i64,
    queries: Vec<&'a str>,
    /// What `hunt --fleet` refuses, with the reason: each must give an error naming its construct.
    not_on_fleet: &'a [(&'a str, &'a str)],
    /// Every answer must have rows (so that each query tests something).
    every_answer_has_rows: bool,
}

/// The test's own queries over [`write_store`]'s events.
fn fleet_suite(store: &Path) -> Suite<'_> {
    Suite {
        name: "the fleet queries",
        store,
        now: base_time(),
        queries: FLEET_QUERIES.to_vec(),
        not_on_fleet: NOT_PUSHED_DOWN,
        every_answer_has_rows: true,
    }
}

/// The local KQL test suite over its fixture: every query but those of [`SUITE_NOT_ON_FLEET`].
fn local_suite(store: &Path) -> Suite<'_> {
    for (query, _) in SUITE_NOT_ON_FLEET {
        assert!(local_suite::CASES.iter().any(|c| c.0 == *query), "not a query of the local suite: {query}");
    }
    let queries = local_suite::CASES
        .iter()
        .map(|c| c.0)
        .filter(|q| !SUITE_NOT_ON_FLEET.iter().any(|(n, _)| n == q))
        .collect();
    Suite {
        name: "the local KQL suite",
        store,
        now: monitor_hunt::time::parse_datetime(local_suite::FIXTURE_NOW).expect("the fixture's now"),
        queries,
        not_on_fleet: SUITE_NOT_ON_FLEET,
        // Some of its queries must find nothing (`has "exam"`): the suite itself checks those rows.
        every_answer_has_rows: false,
    }
}

/// The local suite's fixture in a store, as the daemon's sink writes it (with a DeviceId and the next Seq).
fn write_fixture_store(dir: &Path) -> PathBuf {
    let path = dir.join("fixture.db");
    let writer = StoreWriter::open(&path, Retention::default()).expect("open the store");
    let first = writer.first_seq();
    for (seq, line) in (first..).zip(local_suite::FIXTURE.lines()) {
        let mut event: Value = serde_json::from_str(line).expect("a fixture event");
        event["DeviceId"] = json!(DEVICE_ID);
        event["Seq"] = json!(seq);
        writer.send(&event);
    }
    assert_eq!(writer.dropped(), 0, "the store keeps every event");
    writer.close().expect("close the store");
    path
}

/// Every query of `suite`, compiled as `hunt --fleet` compiles it, gives the same answer from `fleet` as
/// from the local store holding the same events; every one it does not run locally runs and is refused
/// for the fleet with an error naming its construct. Returns how many queries were compared.
fn assert_fleet_hunting_answers_as(fleet: &impl FleetSql, which: &str, suite: &Suite) -> usize {
    let local = monitor_hunt::Store::open(suite.store).expect("open the store");
    let now = suite.now;
    let mut differ = Vec::new();
    for query in &suite.queries {
        let expected = local.query_at(query, now).unwrap_or_else(|e| panic!("local {query}: {e}"));
        assert!(
            !suite.every_answer_has_rows || !expected.rows.is_empty(),
            "the query finds something, so that it tests something: {query}"
        );
        let got = match monitor_fleet::hunt::query_at(fleet, query, now) {
            Ok(got) => got,
            Err(e) => {
                differ.push(format!("{query}\n  {which} failed: {e:#}"));
                continue;
            }
        };
        // Also with each table read in three DeviceId ranges side by side, as large tables are read: one
        // below the suite's devices, one holding them all, one above.
        let mut splits = TableSplits::default();
        for table in monitor_hunt::schema::TABLES {
            splits.set(table, vec![DEVICE_ID.to_string(), format!("{DEVICE_ID}~")]);
        }
        let split = monitor_fleet::hunt::query_with(fleet, query, now, &splits);
        let expected = answer_text(&expected, query);
        for (how, got) in [("", Ok(got)), (" in ranges", split)] {
            match got {
                Ok(got) => {
                    let got = answer_text(&got, query);
                    if expected != got {
                        differ.push(format!("{query}\n  local {expected}\n  {which}{how} {got}"));
                    }
                }
                Err(e) => differ.push(format!("{query}\n  {which}{how} failed: {e:#}")),
            }
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} queries of {} differ on {which}:\n{}",
        differ.len(),
        suite.queries.len(),
        suite.name,
        differ.join("\n")
    );
    for (query, why) in suite.not_on_fleet {
        local.query_at(query, now).unwrap_or_else(|e| panic!("local {query}: {e}"));
        let err = monitor_fleet::hunt::query_at(fleet, query, now).expect_err(query).to_string();
        let construct = why.split(':').next().unwrap_or_default();
        assert!(err.contains(construct) && err.contains("--fleet"), "{query} ({why}): {err}");
    }
    eprintln!(
        "{} queries of {} answer on {which} as on the local store ({} not on the fleet)",
        suite.queries.len(),
        suite.name,
        suite.not_on_fleet.len()
    );
    suite.queries.len()
}

/// The 18.16 half of the differential test: the events reach clickhouse-server through the export and the
/// ingest; the local suite's fixture is inserted as the ingest inserts (every row twice).
#[test]
fn fleet_hunting_answers_as_the_local_store() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("start nats-server: {e}"));
    let clickhouse_server =
        ClickHouseServer::start().unwrap_or_else(|e| panic!("start clickhouse-server: {e}"));
    let (store, seqs) = write_store(dir.path(), 2_000);
    let exporter = Exporter::start(&store, DEVICE_ID, export_options(&nats)).expect("start the exporter");
    wait_for(
        "the export",
        || exporter.status().acked_seq == *seqs.last().expect("events"),
        || format!("{:?}", exporter.status()),
    );
    exporter.stop();
    let ingest = Ingest::start(ingest_options(&nats, &clickhouse_server)).expect("start the ingest");
    let clickhouse = fleet(&clickhouse_server);
    wait_for(
        "every event in ClickHouse",
        || fleet_count(&clickhouse) == 2_000,
        || format!("{:?}", ingest.counts()),
    );
    ingest.stop().expect("the ingest stops cleanly");
    let version = clickhouse.query_rows("SELECT version() AS v").expect("the server's version");
    let which = format!("clickhouse-server {}", version[0]["v"].as_str().unwrap_or("?"));
    assert_fleet_hunting_answers_as(&clickhouse, &which, &fleet_suite(&store));

    let fixture = write_fixture_store(dir.path());
    let suite_db = ClickHouse::new(&clickhouse_server.url("suite"), None, None).expect("a ClickHouse URL");
    suite_db.ensure_schema().expect("the fleet tables");
    insert_store(&suite_db, &fixture, 2);
    assert_fleet_hunting_answers_as(&suite_db, &which, &local_suite(&fixture));
}

/// Inserts every event of `store`, `copies` times, as the ingest inserts them: each exported message
/// made a row ([`monitor_fleet::row::to_row`]), a batch per table.
fn insert_store(fleet: &impl FleetSql, store: &Path, copies: usize) {
    let spooled = Spool::open(store).expect("open the spool").after(0, usize::MAX).expect("read the store");
    for _ in 0..copies {
        for table in monitor_hunt::schema::TABLES {
            let rows: Vec<_> = spooled
                .iter()
                .filter(|e| e.table == table)
                .map(|e| {
                    let (_, _, payload) = monitor_fleet::export::message(e).expect("a message");
                    monitor_fleet::row::to_row(&payload).expect("a row").1
                })
                .collect();
            fleet.insert(table, &rows).unwrap_or_else(|e| panic!("insert into {table}: {e}"));
        }
    }
}

/// chdb with a database `name`; without chdb `None` after saying why (outside CI only: under `CI=true`
/// that fails).
fn chdb_or_skip(name: &str) -> Option<Chdb> {
    match Chdb::start(name) {
        Ok(chdb) => Some(chdb),
        Err(ServerError::NotInstalled(why)) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped (outside CI): {why}");
            None
        }
        Err(e) => panic!("start chdb: {e}"),
    }
}

/// The current-ClickHouse half of the differential test: the same SQL on chdb's embedded ClickHouse
/// (26.x), with the tables the ingest creates and the rows it sends. Without chdb it is skipped with the
/// reason, except in CI (`CI=true`), where that fails.
#[test]
fn fleet_hunting_on_current_clickhouse_answers_as_the_local_store() {
    let Some(chdb) = chdb_or_skip("fleet") else { return };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (store, seqs) = write_store(dir.path(), 2_000);
    chdb.ensure_schema().unwrap_or_else(|e| panic!("the fleet tables on chdb {}: {e}", chdb.version()));
    // Twice, as a redelivery would insert them: FINAL counts each once.
    insert_store(&chdb, &store, 2);
    assert_eq!(fleet_count(&chdb), seqs.len() as u64, "{}", chdb.log());
    let which = format!("chdb {}", chdb.version());
    assert_fleet_hunting_answers_as(&chdb, &which, &fleet_suite(&store));

    let fixture = write_fixture_store(dir.path());
    let suite_db = Chdb::start("suite").unwrap_or_else(|e| panic!("start chdb: {e}"));
    suite_db.ensure_schema().unwrap_or_else(|e| panic!("the fleet tables on {which}: {e}"));
    insert_store(&suite_db, &fixture, 2);
    assert_fleet_hunting_answers_as(&suite_db, &which, &local_suite(&fixture));
}

#[test]
fn wrong_credentials_are_a_clear_error_and_right_ones_ship() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let nats = NatsServer::start_with_config("authorization {\n  user: agent\n  password: s3cret\n}")
        .unwrap_or_else(|e| panic!("start nats-server: {e}"));
    let (store, seqs) = write_store(dir.path(), 100);
    let with = |password: &str| ExportOptions {
        nats: NatsOptions {
            servers: vec![nats.url()],
            user: Some("agent".into()),
            password: Some(password.into()),
            ..NatsOptions::default()
        },
        replicas: 1,
        heartbeat_interval: monitor_fleet::export::DEFAULT_HEARTBEAT_INTERVAL,
    };
    let exporter = Exporter::start(&store, DEVICE_ID, with("wrong")).expect("start the exporter");
    wait_for(
        "the refusal in the status",
        || exporter.status().errors > 0,
        || format!("{:?}", exporter.status()),
    );
    let status = exporter.status();
    let error = status.last_error.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("authorization"), "says the credentials were refused: {error}");
    assert_eq!((status.connected, status.acked_seq), (false, 0), "{status:?}");
    exporter.stop();
    let exporter = Exporter::start(&store, DEVICE_ID, with("s3cret")).expect("start the exporter");
    wait_for(
        "the export",
        || exporter.status().acked_seq == *seqs.last().expect("events"),
        || format!("{:?}", exporter.status()),
    );
    exporter.stop();
}

/// A store of `count` events of one device, named and numbered as its daemon would.
fn write_device_store(dir: &Path, name: &str, id: &str, count: u64, audit_last: bool) -> PathBuf {
    let path = dir.join(format!("{name}.db"));
    let writer = StoreWriter::open(&path, Retention::default()).expect("open the store");
    let first = writer.first_seq();
    for seq in first..first + count {
        let mut event = event(seq, name);
        event["DeviceId"] = json!(id);
        if audit_last && seq == first + count - 1 {
            event["Table"] = json!("DeviceEvents");
            event["ActionType"] = json!("ExploitGuardNetworkProtectionAudited");
        }
        writer.send(&event);
    }
    assert_eq!(writer.dropped(), 0, "the store keeps every event");
    writer.close().expect("close the store");
    path
}

/// Two devices' stores, every event inserted twice into `fleet`: `devices` and `timeline` (whole, in
/// DeviceId ranges, with filters) answer as each device's own store.
fn assert_views_answer_as_each_local_store(fleet: &impl FleetSql, dir: &Path) {
    let agents = [
        ("agent-a.example", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 300, false),
        ("agent-b.example", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", 120, true),
    ];
    let mut stores = Vec::new();
    for (name, id, count, audit_last) in agents {
        let store = write_device_store(dir, name, id, count, audit_last);
        // Every event twice, as a redelivery would insert it: the views count it once.
        insert_store(fleet, &store, 2);
        stores.push(monitor_hunt::Store::open(&store).expect("open the store"));
    }

    let fleet_devices = monitor_fleet::views::devices(fleet).expect("the fleet's devices");
    let local_devices: Vec<_> = stores.iter().flat_map(|s| s.devices().expect("a store's devices")).collect();
    assert_eq!(fleet_devices, local_devices, "the fleet lists each device as its own store does");
    assert_eq!(fleet_devices.len(), 2);
    assert_eq!(fleet_devices[0].events, 300, "each event once: {:?}", fleet_devices[0]);
    assert_eq!(fleet_devices[0].mode(), "block", "{:?}", fleet_devices[0]);
    assert_eq!(fleet_devices[1].mode(), "audit", "{:?}", fleet_devices[1]);
    // As large tables are read: in DeviceId ranges side by side, here one per device.
    let mut splits = TableSplits::default();
    for table in monitor_hunt::schema::TABLES {
        splits.set(table, vec![agents[1].1.to_string()]);
    }
    let in_ranges = monitor_fleet::views::devices_in(fleet, &splits).expect("the devices in ranges");
    assert_eq!(in_ranges, local_devices, "read in ranges, the same devices");

    let now = base_time();
    let filters = [
        monitor_hunt::TimelineFilter::default(),
        monitor_hunt::TimelineFilter { since: Some(Duration::from_millis(9_900)), ..Default::default() },
        monitor_hunt::TimelineFilter { process: Some("CURL".into()), limit: Some(7), ..Default::default() },
        monitor_hunt::TimelineFilter {
            action: Some(monitor_hunt::devices::BLOCKED.into()),
            limit: Some(3),
            ..Default::default()
        },
    ];
    for ((name, ..), store) in agents.iter().zip(&stores) {
        for filter in &filters {
            let local = store.timeline(filter, now).expect("the local timeline");
            let mine = monitor_hunt::TimelineFilter { device: Some(name.to_string()), ..filter.clone() };
            let remote = monitor_fleet::views::timeline(fleet, &mine, now).expect("the fleet timeline");
            assert_eq!(
                store.timeline(&mine, now).expect("the local timeline"),
                local,
                "one device per store"
            );
            assert!(!local.is_empty(), "{name} {filter:?}: the filter finds something");
            assert_eq!(remote, local, "{name} {filter:?}");
        }
    }
    let unknown = monitor_fleet::views::timeline(
        fleet,
        &monitor_hunt::TimelineFilter { device: Some("nobody' OR '1'='1".into()), ..Default::default() },
        now,
    )
    .expect("a name is a literal, never SQL");
    assert!(unknown.is_empty(), "{unknown:?}");
}

/// The views' SQL on a current ClickHouse (chdb's 26.x), as on 18.16 below.
#[test]
fn fleet_views_on_current_clickhouse_answer_as_each_local_store() {
    let Some(chdb) = chdb_or_skip("fleet") else { return };
    chdb.ensure_schema().unwrap_or_else(|e| panic!("the fleet tables on chdb {}: {e}", chdb.version()));
    let dir = tempfile::tempdir().expect("a temporary directory");
    assert_views_answer_as_each_local_store(&chdb, dir.path());
}

#[test]
fn fleet_devices_and_timelines_answer_as_each_local_store() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = ClickHouseServer::start().unwrap_or_else(|e| panic!("start clickhouse-server: {e}"));
    let clickhouse = fleet(&server);
    clickhouse.ensure_schema().expect("create the fleet tables");
    assert_views_answer_as_each_local_store(&clickhouse, dir.path());

    // The commands: devices in a format, and a fleet timeline names its device.
    let fleet_args = monitor_hunt::cli::FleetArgs {
        url: Some(server.url("fleet")),
        user: None,
        password: None,
        tls_ca: None,
    };
    let mut out = Vec::new();
    let args = monitor_hunt::cli::DevicesArgs {
        read: monitor_hunt::cli::ReadArgs {
            store: None,
            format: monitor_hunt::cli::Format::Csv,
            fleet: fleet_args.clone(),
        },
        stale_after: std::time::Duration::from_secs(120),
    };
    monitor_fleet::views::devices_cli(&args, &mut out).expect("devices --fleet");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.lines().nth(1).is_some_and(|l| l.starts_with("agent-a.example,aaaa")), "{text}");
    let mut timeline = monitor_hunt::cli::TimelineArgs {
        store: None,
        since: None,
        process: None,
        html: None,
        limit: Some(3),
        colour: monitor_hunt::cli::ColourChoice::Never,
        device: None,
        fleet: fleet_args,
    };
    let err = monitor_fleet::views::timeline_cli(&timeline, &mut Vec::new()).expect_err("no device named");
    assert!(err.to_string().contains("--device NAME"), "{err}");
    timeline.device = Some("agent-b.example".into());
    let mut out = Vec::new();
    monitor_fleet::views::timeline_cli(&timeline, &mut out).expect("timeline --fleet --device");
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines().next().is_some_and(|l| l.contains("ExploitGuardNetworkProtectionAudited")),
        "{text}"
    );
}

#[test]
fn retention_before_the_export_is_a_gap_row_in_the_fleet() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut nats = NatsServer::not_started().unwrap_or_else(|e| panic!("pick a port for nats-server: {e}"));
    // The export's window (the next EXPORT_WINDOW unexported events) is spared; 500 more are deleted.
    let window = monitor_hunt::gaps::EXPORT_WINDOW as u64;
    let (store, old) = write_store(dir.path(), window + 500);
    let exporter =
        Exporter::start(&store, DEVICE_ID, export_options(&nats)).expect("the agent starts without NATS");
    // NATS stays down while retention (events older than 5 s) deletes 500 unexported events.
    let writer =
        StoreWriter::open(&store, Retention { max_age: Some(Duration::from_secs(5)), max_bytes: None })
            .expect("open the store");
    // (A writer opened on an aged store trims it at once.)
    writer.enforce_retention().expect("retention");
    let first = writer.first_seq();
    let fresh: Vec<u64> = (first..first + 5).collect();
    for &seq in &fresh {
        let mut event = event(seq, "agent-1.example");
        event["Timestamp"] = json!(format_datetime(now_micros()));
        writer.send(&event);
    }
    writer.close().expect("close the store");
    wait_for(
        "the gap in the status",
        || exporter.status().gap_events == 500,
        || format!("{:?}", exporter.status()),
    );

    nats.restart().unwrap_or_else(|e| panic!("start nats-server: {e}"));
    let last = *fresh.last().expect("events");
    wait_for("the export", || exporter.status().acked_seq == last, || format!("{:?}", exporter.status()));
    exporter.stop();
    let (_server, clickhouse) = ingest_into_new_clickhouse(&nats, window + 5 + 1);
    let rows = clickhouse
        .query_rows(
            "SELECT Seq, DeviceId, DeviceName, visitParamExtractInt(AdditionalFields, 'GapEvents') AS GapEvents, \
             visitParamExtractInt(AdditionalFields, 'FirstSeq') AS FirstSeq, \
             visitParamExtractInt(AdditionalFields, 'LastSeq') AS LastSeq \
             FROM fleet.DeviceEvents FINAL WHERE ActionType = 'MonitorExportGap'",
        )
        .expect("query the gap");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let gap = &rows[0];
    assert_eq!(gap["GapEvents"], 500, "{gap:?}");
    assert_eq!(gap["FirstSeq"].as_u64(), old.get(window as usize).copied(), "{gap:?}");
    assert_eq!(gap["LastSeq"].as_u64(), old.last().copied(), "{gap:?}");
    assert_eq!(gap["Seq"].as_u64(), old.last().copied(), "{gap:?}");
    assert_eq!(
        (gap["DeviceId"].as_str(), gap["DeviceName"].as_str()),
        (Some(DEVICE_ID), Some("agent-1.example"))
    );
    // The gap row is no event of the device: its views count the events that are there.
    let devices = monitor_fleet::views::devices(&clickhouse).expect("the fleet's devices");
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0].events as u64, window + 5, "{devices:?}");
}

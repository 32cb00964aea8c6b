//! Device health with real servers on loopback (issue 16, part 2): heartbeats from the exporter through
//! nats-server and the ingest into ClickHouse's DeviceInfo, `DeviceInfo | summarize arg_max(Timestamp, *)
//! by DeviceName` on the fleet store, and `monitor devices --fleet` telling a live agent from a stale one.

#![expect(unused_crate_dependencies, reason = "a test target sees every dev-dependency of the package")]

use std::time::{Duration, Instant};

use monitor_core::device_info::DEVICE_INFO;
use monitor_fleet::clickhouse::{ClickHouse, FleetSql};
use monitor_fleet::ingest::{DEFAULT_CONSUMER, Ingest, IngestOptions};
use monitor_fleet::samples::{SAMPLE_DEVICE_ID, sample_device_info as info, write_sample_store};
use monitor_fleet::servers::{ClickHouseServer, NatsServer};
use monitor_fleet::{ExportOptions, Exporter, NatsOptions};
use monitor_hunt::kql::Value as Kql;
use monitor_hunt::time::now_micros;

const WAIT: Duration = Duration::from_secs(60);

fn wait_for(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}: {}", context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn heartbeat_rows(clickhouse: &impl FleetSql) -> u64 {
    clickhouse
        .query_rows("SELECT count() AS n FROM fleet.DeviceInfo FINAL")
        .ok()
        .and_then(|rows| rows.first().and_then(|r| r["n"].as_u64()))
        .unwrap_or(0)
}

/// Publishes raw messages on `subject`, acknowledged by JetStream.
fn publish(nats: &NatsServer, subject: &str, payloads: Vec<Vec<u8>>) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        for payload in payloads {
            js.publish(subject.to_string(), payload.into())
                .await
                .expect("publish")
                .await
                .expect("acknowledged by JetStream");
        }
    });
}

fn cell<'a>(result: &'a monitor_hunt::QueryResult, row: usize, column: &str) -> &'a Kql {
    let i = result.columns.iter().position(|c| c == column).unwrap_or_else(|| panic!("column {column}"));
    &result.rows[row][i]
}

#[test]
fn heartbeats_reach_device_info_and_tell_live_agents_from_stale_ones() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("start nats-server: {e}"));
    let server = ClickHouseServer::start().unwrap_or_else(|e| panic!("start clickhouse-server: {e}"));
    let store = dir.path().join("events.db");
    let start = now_micros();
    let seqs = write_sample_store(&store, 20, "agent-1.example", |seq| start - 1_000_000 + seq as i64)
        .unwrap_or_else(|e| panic!("write the store: {e}"));

    let exporter = Exporter::start(
        &store,
        SAMPLE_DEVICE_ID,
        ExportOptions::new(NatsOptions { servers: vec![nats.url()], ..NatsOptions::default() }),
    )
    .expect("start the exporter");
    exporter.heartbeat(info(SAMPLE_DEVICE_ID, "agent-1.example", now_micros(), "block"));
    // The exporter creates the stream.
    wait_for(
        "the exporter's first heartbeat",
        || exporter.status().heartbeats == 1,
        || format!("{:?}", exporter.status()),
    );
    // Another agent that went quiet ten minutes ago and sent no event, and a heartbeat that is not one.
    let quiet = info("quiet-id", "agent-2.example", now_micros() - 600_000_000, "audit");
    let (subject, _, payload) = monitor_fleet::heartbeat::message(&quiet).expect("a heartbeat message");
    publish(&nats, &subject, vec![payload.to_vec(), br#"{"Table":"DeviceInfo","DeviceId":"x"}"#.to_vec()]);

    let ingest = Ingest::start(IngestOptions {
        nats: NatsOptions { servers: vec![nats.url()], ..NatsOptions::default() },
        clickhouse: ClickHouse::new(&server.url("fleet"), None, None).expect("a ClickHouse URL"),
        consumer: DEFAULT_CONSUMER.into(),
        batch: 1_000,
    })
    .expect("start the ingest");
    let clickhouse = ClickHouse::new(&server.url("fleet"), None, None).expect("a ClickHouse URL");
    wait_for(
        "both heartbeats in DeviceInfo and the bad one dead-lettered",
        || heartbeat_rows(&clickhouse) == 2 && ingest.counts().dead_lettered == 1,
        || format!("{} rows, {:?}, {:?}", heartbeat_rows(&clickhouse), ingest.counts(), exporter.status()),
    );
    assert_eq!(exporter.status().heartbeats, 1, "{:?}", exporter.status());

    // A newer heartbeat of the first agent, without a policy now: arg_max takes every column from it, nulls
    // too.
    let mut newer = info(SAMPLE_DEVICE_ID, "agent-1.example", now_micros(), "audit");
    newer.policy_revision = None;
    exporter.heartbeat(newer);
    wait_for("the newer heartbeat", || heartbeat_rows(&clickhouse) == 3, || format!("{:?}", ingest.counts()));
    let query = "DeviceInfo | summarize arg_max(Timestamp, *) by DeviceName | sort by DeviceName asc";
    let latest = monitor_fleet::hunt::query_at(&clickhouse, query, now_micros()).expect("the query runs");
    assert_eq!(latest.rows.len(), 2, "one row per device: {:?}", latest.rows);
    assert_eq!(latest.columns[..3].join(","), "DeviceName,Timestamp,DeviceId");
    assert_eq!(cell(&latest, 0, "DeviceName"), &Kql::String("agent-1.example".into()));
    assert_eq!(cell(&latest, 0, "ProtectionMode"), &Kql::String("audit".into()), "the newest heartbeat's");
    assert_eq!(cell(&latest, 0, "PolicyRevision"), &Kql::Null, "the newest heartbeat's, null");
    assert_eq!(cell(&latest, 1, "PolicyRevision"), &Kql::Long(41));
    assert_eq!(cell(&latest, 0, "OSVersion"), &Kql::String("6.12.0-test".into()));
    assert_eq!(cell(&latest, 1, "ProtectionMode"), &Kql::String("audit".into()));
    let recent = monitor_fleet::hunt::query_at(
        &clickhouse,
        "DeviceInfo | where Timestamp > ago(2m) | summarize count() by DeviceName",
        now_micros(),
    )
    .expect("the query runs");
    assert_eq!(recent.rows, vec![vec![Kql::String("agent-1.example".into()), Kql::Long(2)]]);

    wait_for(
        "the events in ClickHouse",
        || monitor_fleet::views::devices(&clickhouse).is_ok_and(|d| d.iter().any(|d| d.events == 20)),
        || format!("{:?}", ingest.counts()),
    );
    let devices = monitor_fleet::views::devices(&clickhouse).expect("devices");
    assert_eq!(devices.len(), 2, "{devices:?}");
    let (live, quiet) = (&devices[0], &devices[1]);
    assert_eq!(
        (live.name.as_str(), live.events, live.mode()),
        ("agent-1.example", seqs.len() as i64, "audit")
    );
    assert_eq!((quiet.name.as_str(), quiet.events, quiet.id.as_str()), ("agent-2.example", 0, "quiet-id"));
    let now = now_micros();
    let stale_after = Duration::from_secs(120);
    assert_eq!(monitor_hunt::devices::health(live, now, stale_after), "ok");
    assert_eq!(
        live.health.as_ref().map(|h| h.policy_revision),
        Some(None),
        "the newest heartbeat's: {live:?}"
    );
    assert_eq!(quiet.health.as_ref().and_then(|h| h.policy_revision), Some(41));
    assert_eq!(monitor_hunt::devices::health(quiet, now, stale_after), "stale");
    let result = monitor_hunt::devices::fleet_devices_result(&devices, now, stale_after);
    assert_eq!(cell(&result, 1, "Health"), &Kql::String("stale".into()));
    assert_eq!(cell(&result, 0, "Version"), &Kql::String("9.9.9".into()));
    assert_eq!(cell(&result, 0, "Degraded"), &Kql::String(r#"["quic_egress"]"#.into()));

    // A fleet store whose ingest made no DeviceInfo yet (an older one): the devices, without heartbeats.
    let older = ClickHouse::new(&server.url("older"), None, None).expect("a ClickHouse URL");
    older.execute("CREATE DATABASE older").expect("a database");
    for table in monitor_hunt::schema::TABLES {
        older.execute(&monitor_fleet::clickhouse::create_table("older", table)).expect("an event table");
    }
    assert_eq!(monitor_fleet::views::devices(&older).expect("devices without DeviceInfo"), Vec::new());
    // A DeviceInfo an older ingest made, without the columns added since: a newer ingest adds them.
    older.execute(&monitor_fleet::clickhouse::create_table("older", DEVICE_INFO)).expect("DeviceInfo");
    older
        .execute("ALTER TABLE older.DeviceInfo DROP COLUMN HeartbeatIntervalSeconds")
        .expect("an older table");
    older.ensure_schema().expect("the schema brought up to date");
    older
        .insert_lines(DEVICE_INFO, &{
            let mut line = Vec::new();
            let (_, _, payload) = monitor_fleet::heartbeat::message(&info("old-id", "agent-9", now, "audit"))
                .expect("a heartbeat");
            monitor_fleet::heartbeat::encode_info(&payload, &mut line).expect("a row");
            line
        })
        .expect("a heartbeat row in the upgraded table");
    assert_eq!(monitor_fleet::views::devices(&older).expect("devices").len(), 1);

    // The local store keeps no heartbeats, and says where they are.
    let local = monitor_hunt::Store::open(&store).expect("open the store");
    let err = local.query("DeviceInfo | take 1").expect_err("not a local table").to_string();
    assert!(err.contains("--fleet"), "{err}");
    exporter.stop();
    ingest.stop().expect("the ingest stops cleanly");
}

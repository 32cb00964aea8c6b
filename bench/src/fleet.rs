//! The fleet path of issue 14, measured with the real code and real servers on loopback: the agent's
//! exporter (in a process of its own, `fleet-export`) from a SQLite store written by the store code,
//! nats-server with JetStream, `monitor ingest` into clickhouse-server, and `monitor hunt --fleet` over
//! rows ClickHouse generates itself. Each server lives in a temporary directory and is killed when dropped,
//! also on failure; every wait is bounded.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail, ensure};
use monitor_fleet::clickhouse::{ClickHouse, FleetSql as _};
use monitor_fleet::samples::{SAMPLE_DEVICE_ID, write_sample_store};
use monitor_fleet::servers::{ClickHouseServer, Fsync, NatsServer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::procfs;
use crate::stats::{median, range};

/// The seed's query (the product's hunting example) and the fleet-wide summary of issue 14.
pub const SEED_QUERY: &str =
    r#"DeviceNetworkEvents | where ActionType == "ConnectionSuccess" and RemoteIP != "10.0.0.5" | take 10"#;
pub const SUMMARY_QUERY: &str = "DeviceNetworkEvents | summarize count() by DeviceName, RemoteUrl";
/// The goals of issue 14.
pub const EXPORT_GOAL: f64 = 50_000.0;
pub const INGEST_GOAL: f64 = 100_000.0;
pub const QUERY_GOAL_MS: f64 = 1_000.0;
/// How long NATS stays down while the agent's exporter already runs against it.
const OUTAGE: Duration = Duration::from_secs(3);
/// A step of the fleet bench that takes longer than this has hung.
const STEP_LIMIT: Duration = Duration::from_secs(300);
/// Rows ClickHouse generates per INSERT (each one HTTP request, within the client's 60 s timeout).
const FILL_CHUNK: u64 = 1_000_000;

/// How much the fleet bench moves.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct FleetSizes {
    /// Events in the store the exporter ships with NATS up.
    pub export_events: u64,
    /// Events stored while NATS is down, then drained; the same events are then ingested.
    pub spool_events: u64,
    /// Rows in DeviceNetworkEvents for the query latencies.
    pub query_rows: u64,
    pub devices: u64,
    pub urls: u64,
    pub query_runs: usize,
}

/// What `fleet-export` prints: the exporter's own process, from start to the last acknowledgement.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportReport {
    pub started_unix: f64,
    pub first_ack_unix: Option<f64>,
    pub done_unix: f64,
    /// User + system CPU of the exporting process from the exporter's start to the last acknowledgement.
    pub cpu_s: f64,
    pub exported: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportRun {
    pub events: u64,
    /// From the exporter's start (drain: from NATS answering again) to the last acknowledgement.
    pub seconds: f64,
    pub events_per_s: f64,
    /// From the first to the last acknowledgement: the rate once connected.
    pub connected_events_per_s: f64,
    /// Until the first acknowledgement (drain: from NATS answering again; reconnect backoff included).
    pub first_ack_s: f64,
    pub cpu_us_per_event: f64,
    /// Messages the stream holds afterwards (JetStream drops duplicates by message id).
    pub stream_messages: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IngestRun {
    pub rows: u64,
    /// From starting `monitor ingest` to ClickHouse holding every row.
    pub seconds: f64,
    pub rows_per_s: f64,
    pub cpu_us_per_row: f64,
    /// The servers' CPU per row meanwhile: clickhouse-server's (parsing, writing parts, merging) and
    /// nats-server's (delivering each message, taking its acknowledgement).
    #[serde(default)]
    pub clickhouse_cpu_us_per_row: f64,
    #[serde(default)]
    pub nats_cpu_us_per_row: f64,
    /// Rows counted with FINAL afterwards (each event once).
    pub final_rows: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueryRun {
    pub query: String,
    pub rows_in_table: u64,
    pub runs: usize,
    /// Wall time of `monitor hunt --fleet URL --format json QUERY`, process start to exit.
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// The same query through `monitor_fleet::hunt::query_at` in this process (compile to SQL, HTTP, the
    /// answer parsed), without the CLI's start and output: median over as many runs.
    #[serde(default)]
    pub in_process_median_ms: f64,
    pub result_rows: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetResult {
    pub sizes: FleetSizes,
    pub clickhouse_version: String,
    pub nats_version: String,
    /// Writing the stores with the store code (events per second), for scale.
    pub store_write_events_per_s: f64,
    pub export: ExportRun,
    pub drain: ExportRun,
    pub ingest: IngestRun,
    /// Generating the query rows inside ClickHouse, seconds.
    pub fill_s: f64,
    pub queries: Vec<QueryRun>,
    pub duration_s: f64,
}

pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A child process with its output in files; killed when dropped.
struct Running {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Running {
    fn start(command: &mut Command, dir: &Path, name: &str) -> anyhow::Result<Running> {
        let (stdout, stderr) = (dir.join(format!("{name}.out")), dir.join(format!("{name}.err")));
        let open = |p: &Path| fs::File::create(p).with_context(|| format!("create {}", p.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(open(&stdout)?)
            .stderr(open(&stderr)?)
            .spawn()
            .with_context(|| format!("start {command:?}"))?;
        Ok(Running { child: Some(child), stdout, stderr })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for the exit, at most `limit`; a failure is an error with the end of its stderr.
    fn wait(&mut self, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().context("the process was already reaped")?;
        let status: ExitStatus = loop {
            if let Some(status) = child.try_wait().context("wait for a child")? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("still running after {limit:?}: {}", self.stderr_tail());
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        self.child = None;
        ensure!(status.success(), "exited with {status}: {}", self.stderr_tail());
        fs::read_to_string(&self.stdout).with_context(|| format!("read {}", self.stdout.display()))
    }

    /// SIGTERM, then a bounded wait, then SIGKILL.
    fn terminate(&mut self) {
        if let Some(child) = &self.child {
            let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
            // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.wait(Duration::from_secs(10));
    }

    fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `done` every 50 ms until it holds, at most [`STEP_LIMIT`].
fn wait_until(what: &str, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_LIMIT;
    while !done()? {
        ensure!(Instant::now() < deadline, "timed out after {STEP_LIMIT:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn one_number(clickhouse: &ClickHouse, sql: &str) -> anyhow::Result<u64> {
    let rows = clickhouse.query_rows(sql)?;
    rows.first().and_then(|r| r.get("n")).and_then(Value::as_u64).with_context(|| format!("no n from {sql}"))
}

/// Messages in the stream MONITOR_EVENTS.
fn stream_messages(nats: &NatsServer) -> anyhow::Result<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio")?;
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.context("connect to NATS")?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("MONITOR_EVENTS").await.context("the stream MONITOR_EVENTS")?;
        Ok(stream.info().await.context("stream info")?.state.messages)
    })
}

fn nats_version(nats: &NatsServer) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let Ok(runtime) = runtime else { return String::new() };
    runtime.block_on(async {
        async_nats::connect(nats.url()).await.map(|c| c.server_info().version).unwrap_or_default()
    })
}

/// A store of `count` events, one millisecond apart and ending now; returns its path, last Seq, rate.
fn store(dir: &Path, name: &str, count: u64) -> anyhow::Result<(PathBuf, u64, f64)> {
    let path = dir.join(name);
    let end = monitor_hunt::time::now_micros();
    let started = Instant::now();
    let seqs = write_sample_store(&path, count, "agent-1.example", |seq| end - 1_000 * (count - seq) as i64)?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    Ok((path, *seqs.last().context("an empty store")?, rate))
}

/// Runs `fleet-export` over `store` until `last` is acknowledged.
fn export(helper: &Path, dir: &Path, store: &Path, nats: &NatsServer, last: u64) -> anyhow::Result<Running> {
    Running::start(
        Command::new(helper)
            .arg("--store")
            .arg(store)
            .args(["--nats", &nats.url(), "--device-id", SAMPLE_DEVICE_ID, "--until", &last.to_string()])
            .args(["--timeout", &STEP_LIMIT.as_secs().to_string()]),
        dir,
        "fleet-export",
    )
}

fn export_run(report: &ExportReport, events: u64, from_unix: f64, stream: u64) -> ExportRun {
    let seconds = report.done_unix - from_unix;
    let first = report.first_ack_unix.unwrap_or(report.done_unix);
    ExportRun {
        events,
        seconds,
        events_per_s: events as f64 / seconds,
        connected_events_per_s: events as f64 / (report.done_unix - first).max(1e-6),
        first_ack_s: first - from_unix,
        cpu_us_per_event: report.cpu_s / events as f64 * 1e6,
        stream_messages: stream,
        errors: report.errors,
    }
}

/// Fills `database`.DeviceNetworkEvents (made by the ingest's DDL) with `sizes.query_rows` rows that
/// ClickHouse generates: `devices` devices, `urls` remote names, 90 % ConnectionSuccess, 30 % to the proxy.
fn fill(clickhouse: &ClickHouse, sizes: &FleetSizes) -> anyhow::Result<()> {
    clickhouse.ensure_schema()?;
    let db = clickhouse.database();
    let (total, devices, urls) = (sizes.query_rows, sizes.devices, sizes.urls);
    let end = monitor_hunt::time::now_micros();
    // A week of events, ending now.
    let step = 7 * 86_400 * 1_000_000 / total.max(1);
    let mut offset = 0;
    while offset < total {
        let chunk = FILL_CHUNK.min(total - offset);
        clickhouse.execute(&format!(
            "INSERT INTO {db}.DeviceNetworkEvents (TimestampMicros, DeviceId, DeviceName, ActionType, RemoteIP, \
             RemotePort, RemoteUrl, LocalIP, LocalPort, Protocol, InitiatingProcessId, InitiatingProcessFileName, \
             InitiatingProcessFolderPath, InitiatingProcessAccountName, ReportId, Seq, AdditionalFields) \
             SELECT toInt64({end} - ({total} - n) * {step}), concat('device-', toString(n % {devices})), \
             concat('host-', toString(n % {devices}), '.corp.example'), \
             if(h % 100 < 90, 'ConnectionSuccess', 'ConnectionFailed'), \
             if(h % 10 < 3, '10.0.0.5', concat('93.184.', toString(intDiv(h, 10) % 256), '.', toString(intDiv(h, 2560) % 256))), \
             toInt64(if(h % 10 < 3, 3128, 443)), \
             concat('site-', toString(intDiv(h, 1000) % {urls}), '.example.', ['com', 'net', 'org', 'io'][intDiv(h, 1000) % {urls} % 4 + 1]), \
             '10.0.0.2', toInt64(40000 + n % 20000), 'Tcp', toInt64(1000 + n % 30000), \
             ['curl', 'python3', 'chromium', 'wget', 'git'][intDiv(h, 7) % 5 + 1], '/usr/bin', 'root', toInt64(n), \
             intDiv(n, {devices}) + 1, concat('{{\"Sni\":\"site-', toString(intDiv(h, 1000) % {urls}), '.example\"}}') \
             FROM (SELECT number + {offset} AS n, cityHash64(number + {offset}) AS h FROM numbers({chunk}))"
        ))?;
        offset += chunk;
    }
    // Background merges of the new parts would share the CPU with the queries: let them finish.
    wait_until("ClickHouse's merges", || {
        Ok(one_number(clickhouse, "SELECT count() AS n FROM system.merges")? == 0)
    })
}

/// `monitor hunt --fleet URL --format json QUERY`, once warm and then `runs` times; then as many runs of
/// the same code in this process.
fn query(
    monitor: &Path,
    dir: &Path,
    clickhouse: &ClickHouse,
    kql: &str,
    runs: usize,
    rows: u64,
) -> anyhow::Result<QueryRun> {
    let url = clickhouse.url();
    let url = url.as_str();
    let mut times = Vec::with_capacity(runs);
    let mut result_rows = 0;
    for run in 0..=runs {
        let started = Instant::now();
        let mut hunt = Running::start(
            Command::new(monitor).args(["hunt", "--fleet", url, "--format", "json", kql]),
            dir,
            "hunt",
        )?;
        let out = hunt.wait(STEP_LIMIT).with_context(|| format!("monitor hunt --fleet {kql:?}"))?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        result_rows = out.lines().filter(|l| !l.trim().is_empty()).count() as u64;
        if run > 0 {
            times.push(ms);
        }
    }
    let mut in_process = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let result = monitor_fleet::hunt::query_at(clickhouse, kql, monitor_hunt::time::now_micros())?;
        in_process.push(started.elapsed().as_secs_f64() * 1e3);
        ensure!(
            result.rows.len() as u64 == result_rows,
            "{} rows in process, {result_rows} from the CLI",
            result.rows.len()
        );
    }
    let (min_ms, max_ms) = range(&times).unwrap_or((f64::NAN, f64::NAN));
    Ok(QueryRun {
        in_process_median_ms: median(&in_process).unwrap_or(f64::NAN),
        query: kql.to_string(),
        rows_in_table: rows,
        runs,
        median_ms: median(&times).unwrap_or(f64::NAN),
        min_ms,
        max_ms,
        result_rows,
    })
}

/// The fleet bench: export, drain after an outage, ingest, query latency.
pub fn run(monitor: &Path, helper: &Path, sizes: FleetSizes) -> anyhow::Result<FleetResult> {
    let started = Instant::now();
    ensure!(helper.exists(), "no exporter helper at {} (cargo build --release -p bench)", helper.display());
    let dir = tempfile::Builder::new().prefix("bench-fleet-").tempdir().context("a temporary directory")?;
    let dir = dir.path();
    let mut result = FleetResult { sizes, ..FleetResult::default() };

    // 1. Export with NATS up: a spool already full, from the exporter's start to its last acknowledgement.
    let (path, last, rate) = store(dir, "export.db", sizes.export_events)?;
    result.store_write_events_per_s = rate;
    let mut nats = NatsServer::not_started_with(Fsync::Periodic)?;
    nats.restart()?;
    result.nats_version = nats_version(&nats);
    let out = export(helper, dir, &path, &nats, last)?.wait(STEP_LIMIT).context("fleet-export")?;
    let report: ExportReport = serde_json::from_str(out.trim()).context("fleet-export's report")?;
    result.export = export_run(&report, sizes.export_events, report.started_unix, stream_messages(&nats)?);
    let e = &result.export;
    eprintln!(
        "bench: fleet export: {:.0} events/s ({} events; goal ≥ {EXPORT_GOAL:.0}/s), {:.1} µs CPU per event",
        e.events_per_s, e.events, e.cpu_us_per_event
    );
    drop(nats);

    // 2. Drain after an outage: the spool filled, the exporter started while NATS is down, then NATS up.
    let (path, last, _) = store(dir, "spool.db", sizes.spool_events)?;
    let mut nats = NatsServer::not_started_with(Fsync::Periodic)?;
    let mut exporter = export(helper, dir, &path, &nats, last)?;
    std::thread::sleep(OUTAGE);
    nats.restart()?;
    let up = unix_now();
    let out = exporter.wait(STEP_LIMIT).context("fleet-export after the outage")?;
    let report: ExportReport = serde_json::from_str(out.trim()).context("fleet-export's report")?;
    result.drain = export_run(&report, sizes.spool_events, up, stream_messages(&nats)?);
    let d = &result.drain;
    eprintln!(
        "bench: fleet drain of a {}-event spool: {:.1} s from NATS up (first ack after {:.2} s), {:.0} events/s",
        d.events, d.seconds, d.first_ack_s, d.connected_events_per_s
    );
    ensure!(d.stream_messages >= sizes.spool_events, "the stream holds {} messages", d.stream_messages);

    // 3. Ingest: the drained stream into ClickHouse with `monitor ingest`.
    let server = ClickHouseServer::start()?;
    let clickhouse = ClickHouse::new(&server.url("fleet"), None, None)?;
    result.clickhouse_version = clickhouse
        .query_rows("SELECT version() AS v")?
        .first()
        .and_then(|r| r.get("v")?.as_str().map(str::to_string))
        .unwrap_or_default();
    let server_cpu =
        || (server.pid().map_or(0.0, procfs::cpu_seconds), nats.pid().map_or(0.0, procfs::cpu_seconds));
    let before = server_cpu();
    let t = Instant::now();
    let mut ingest = Running::start(
        Command::new(monitor).args(["ingest", "--from", &nats.url(), "--into", &server.url("fleet")]),
        dir,
        "ingest",
    )?;
    let count = "SELECT (SELECT count() FROM fleet.DeviceNetworkEvents) + (SELECT count() FROM fleet.DeviceEvents) AS n";
    wait_until("every event in ClickHouse", || {
        Ok(one_number(&clickhouse, count).unwrap_or(0) >= sizes.spool_events)
    })?;
    let seconds = t.elapsed().as_secs_f64();
    let cpu = procfs::cpu_seconds(ingest.pid());
    let after = server_cpu();
    ingest.terminate();
    let final_count = count.replace("Events)", "Events FINAL)");
    result.ingest = IngestRun {
        rows: sizes.spool_events,
        seconds,
        rows_per_s: sizes.spool_events as f64 / seconds,
        cpu_us_per_row: cpu / sizes.spool_events as f64 * 1e6,
        clickhouse_cpu_us_per_row: (after.0 - before.0) / sizes.spool_events as f64 * 1e6,
        nats_cpu_us_per_row: (after.1 - before.1) / sizes.spool_events as f64 * 1e6,
        final_rows: one_number(&clickhouse, &final_count)?,
    };
    let i = &result.ingest;
    eprintln!(
        "bench: fleet ingest: {:.0} rows/s ({} rows; goal ≥ {INGEST_GOAL:.0}/s), CPU per row: {:.1} µs ingest, \
         {:.1} µs clickhouse-server, {:.1} µs nats-server",
        i.rows_per_s, i.rows, i.cpu_us_per_row, i.clickhouse_cpu_us_per_row, i.nats_cpu_us_per_row
    );
    drop(nats);

    // 4. Query latency over many rows, generated inside ClickHouse.
    let t = Instant::now();
    let rows_db = ClickHouse::new(&server.url("fleetq"), None, None)?;
    fill(&rows_db, &sizes)?;
    result.fill_s = t.elapsed().as_secs_f64();
    let rows = one_number(&rows_db, "SELECT count() AS n FROM fleetq.DeviceNetworkEvents")?;
    ensure!(rows == sizes.query_rows, "ClickHouse holds {rows} rows, not {}", sizes.query_rows);
    for kql in [SEED_QUERY, SUMMARY_QUERY] {
        let q = query(monitor, dir, &rows_db, kql, sizes.query_runs, rows)?;
        eprintln!(
            "bench: fleet query over {rows} rows: median {:.0} ms ({:.0}–{:.0}; goal < {QUERY_GOAL_MS:.0} ms; \
             {:.0} ms in process), {} rows: {kql}",
            q.median_ms, q.min_ms, q.max_ms, q.in_process_median_ms, q.result_rows
        );
        result.queries.push(q);
    }
    drop(server);
    result.duration_s = started.elapsed().as_secs_f64();
    Ok(result)
}

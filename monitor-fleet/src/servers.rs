//! Real fleet servers on loopback, for the tests and the benchmarks: a NATS server with JetStream and a
//! ClickHouse server, each in a temporary directory of its own, with bounded waits for readiness, and
//! killed when dropped (also when a test panics, since unwinding runs the drops).
//!
//! The binaries: `nats-server` 2.10 or newer (for `sync_interval`; `cargo xtask test` installs 2.15 into
//! `.tools/venv`), `MONITOR_NATS_SERVER` to choose another; `clickhouse-server` (Debian's 18.16 is what
//! the tests run), `MONITOR_CLICKHOUSE_SERVER` to choose another; for [`Chdb`], the current ClickHouse
//! that chdb embeds, a Python with chdb (`cargo xtask test` installs it into `.tools/venv`),
//! `MONITOR_CHDB_PYTHON` to choose another.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::FleetError;
use crate::clickhouse::FleetSql;

/// How long a server may take to answer after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Failures to start a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{server} exited before it was ready ({status}); its log ends with:\n{log}")]
    Exited { server: &'static str, status: std::process::ExitStatus, log: String },
    #[error("{server} did not answer on port {port} within {timeout:?}; its log ends with:\n{log}")]
    NotReady { server: &'static str, port: u16, timeout: Duration, log: String },
    /// What the server needs is not installed here; the message says what and how to install it.
    #[error("{0}")]
    NotInstalled(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// A free TCP port on loopback (free when asked; the server binds it right after).
pub fn free_port() -> Result<u16, ServerError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("find a free loopback port"))?;
    Ok(listener.local_addr().map_err(io("find a free loopback port"))?.port())
}

/// The workspace's `.tools`, where `cargo xtask` installs what the tests run.
fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools")
}

/// `env` if set, else the first of `candidates` that exists, else `name` on the PATH.
fn binary(env: &str, candidates: &[PathBuf], name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| PathBuf::from(name))
}

fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A started server process, killed on drop.
struct Process {
    child: Option<Child>,
    log: PathBuf,
    name: &'static str,
}

impl Process {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(name: &'static str, command: &mut Command, log: PathBuf) -> Result<Process, ServerError> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(format!("create {}", log.display())))?;
        let err = out.try_clone().map_err(io(format!("open {}", log.display())))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io(format!("start {name} ({command:?})")))?;
        Ok(Process { child: Some(child), log, name })
    }

    /// Polls `ready` until it answers true, the process exits, or [`READY_TIMEOUT`] passes.
    fn wait_ready(&mut self, port: u16, mut ready: impl FnMut() -> bool) -> Result<(), ServerError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(ServerError::Exited { server: self.name, status, log: log_tail(&self.log) });
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(ServerError::NotReady {
                    server: self.name,
                    port,
                    timeout: READY_TIMEOUT,
                    log: log_tail(&self.log),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// When JetStream's writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before each acknowledgement (`sync_interval: always`): a kill loses nothing acknowledged.
    Always,
    /// The server's default (every two minutes), as a deployment that trusts its replicas runs it.
    Periodic,
}

/// `nats-server` with JetStream on a loopback port, its store in a temporary directory, every write
/// fsynced before it is acknowledged (`sync_interval: always`), so that a kill loses nothing acknowledged.
/// [`NatsServer::cluster_node`] makes one node of a cluster instead, listening on an address of a network
/// namespace (started from a thread inside that namespace: the process inherits it).
pub struct NatsServer {
    process: Option<Process>,
    dir: tempfile::TempDir,
    /// Where clients connect (and the readiness probe knocks).
    listen: SocketAddr,
    name: String,
    /// Extra lines for the configuration (accounts, users, TLS, a cluster block), kept for restarts.
    extra_config: String,
    fsync: Fsync,
}

/// One node of a NATS cluster: its name, where clients and the other nodes reach it, and the others'
/// cluster addresses.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub name: String,
    pub client: SocketAddr,
    pub cluster: SocketAddr,
    pub routes: Vec<SocketAddr>,
    /// More configuration for the node (for example an `authorization` block, the same on every node).
    pub extra_config: String,
}

fn nats_dir() -> Result<tempfile::TempDir, ServerError> {
    tempfile::Builder::new()
        .prefix("monitor-nats-")
        .tempdir()
        .map_err(io("create a directory for nats-server"))
}

impl NatsServer {
    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// Starts a server on a free port.
    pub fn start() -> Result<NatsServer, ServerError> {
        NatsServer::start_with_config("")
    }

    /// Starts a server whose configuration also has `extra_config` (for example an `authorization` block).
    pub fn start_with_config(extra_config: &str) -> Result<NatsServer, ServerError> {
        let mut server = NatsServer::not_started()?;
        server.extra_config = extra_config.to_string();
        server.restart()?;
        Ok(server)
    }

    /// A server on a port picked now but not started yet: for a test whose agent starts before NATS.
    pub fn not_started() -> Result<NatsServer, ServerError> {
        NatsServer::not_started_with(Fsync::Always)
    }

    /// As [`NatsServer::not_started`], with writes reaching the disk as `fsync` says.
    pub fn not_started_with(fsync: Fsync) -> Result<NatsServer, ServerError> {
        let port = free_port()?;
        Ok(NatsServer {
            process: None,
            dir: nats_dir()?,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            name: format!("monitor-test-{port}"),
            extra_config: String::new(),
            fsync,
        })
    }

    /// A node of a JetStream cluster (named `monitor-test`), not started yet: start it with
    /// [`NatsServer::restart`] from a thread in the network namespace that holds `node.client`.
    pub fn cluster_node(node: &ClusterNode) -> Result<NatsServer, ServerError> {
        let routes: Vec<String> = node.routes.iter().map(|r| format!("nats://{r}")).collect();
        Ok(NatsServer {
            process: None,
            dir: nats_dir()?,
            listen: node.client,
            name: node.name.clone(),
            extra_config: format!(
                "cluster {{\n  name: monitor-test\n  listen: {}\n  routes: [{}]\n}}\n{}",
                node.cluster,
                routes.join(", "),
                node.extra_config
            ),
            fsync: Fsync::Always,
        })
    }

    /// A JetStream cluster of `nodes` nodes on loopback ports, each with `extra_config` too, started one
    /// after the other (each waits until it greets a client; JetStream elects its leaders after).
    pub fn loopback_cluster(nodes: usize, extra_config: &str) -> Result<Vec<NatsServer>, ServerError> {
        let loopback = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let routes: Vec<u16> = (0..nodes).map(|_| free_port()).collect::<Result<_, _>>()?;
        let mut servers = Vec::with_capacity(nodes);
        for (i, route) in routes.iter().enumerate() {
            servers.push(NatsServer::cluster_node(&ClusterNode {
                name: format!("monitor-node-{}", i + 1),
                client: loopback(free_port()?),
                cluster: loopback(*route),
                routes: routes.iter().filter(|p| *p != route).map(|p| loopback(*p)).collect(),
                extra_config: extra_config.to_string(),
            })?);
        }
        for server in &mut servers {
            server.restart()?;
        }
        Ok(servers)
    }

    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    /// The server's name (in a cluster, what JetStream calls the stream leader).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `nats://ADDRESS:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.listen)
    }

    /// Kills the server (SIGKILL); its store stays for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server (again) on the same port with the same store; waits until it answers.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        let config = self.dir.path().join("nats.conf");
        let store = self.dir.path().join("jetstream");
        let sync = match self.fsync {
            Fsync::Always => "  sync_interval: always\n",
            Fsync::Periodic => "",
        };
        let text = format!(
            "listen: {listen}\nserver_name: {name}\n\
             jetstream {{\n  store_dir: {store:?}\n{sync}}}\n{extra}\n",
            listen = self.listen,
            name = self.name,
            store = store.display().to_string(),
            extra = self.extra_config,
        );
        std::fs::write(&config, text).map_err(io(format!("write {}", config.display())))?;
        let bin = binary("MONITOR_NATS_SERVER", &[tools().join("venv/bin/nats-server")], "nats-server");
        let mut process = Process::spawn(
            "nats-server",
            Command::new(bin).arg("-c").arg(&config),
            self.dir.path().join("nats.log"),
        )?;
        // Ready when it greets a client (INFO) and JetStream is up, which the log says before it listens.
        let addr = self.listen;
        process.wait_ready(self.port(), || nats_greets(addr))?;
        self.process = Some(process);
        Ok(())
    }

    /// The server's log so far (for test failure messages).
    pub fn log(&self) -> String {
        log_tail(&self.dir.path().join("nats.log"))
    }
}

fn nats_greets(addr: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ")
}

/// `clickhouse-server` with a configuration of its own: HTTP on a loopback port, data in a temporary
/// directory, one user `default` without a password that may connect from loopback only.
pub struct ClickHouseServer {
    process: Option<Process>,
    dir: tempfile::TempDir,
    http_port: u16,
    tcp_port: u16,
    /// HTTPS beside HTTP: its port, and the server's certificate chain and key (PEM files).
    https: Option<(u16, PathBuf, PathBuf)>,
}

impl ClickHouseServer {
    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    pub fn start() -> Result<ClickHouseServer, ServerError> {
        ClickHouseServer::start_with(None)
    }

    /// Also serves HTTPS on a port of its own with the certificate (chain) and key in these PEM files.
    pub fn start_https(certificate: &Path, key: &Path) -> Result<ClickHouseServer, ServerError> {
        ClickHouseServer::start_with(Some((certificate.to_path_buf(), key.to_path_buf())))
    }

    fn start_with(tls: Option<(PathBuf, PathBuf)>) -> Result<ClickHouseServer, ServerError> {
        let dir = tempfile::Builder::new()
            .prefix("monitor-clickhouse-")
            .tempdir()
            .map_err(io("create a directory for clickhouse-server"))?;
        let https = match tls {
            Some((certificate, key)) => Some((free_port()?, certificate, key)),
            None => None,
        };
        let mut server =
            ClickHouseServer { process: None, dir, http_port: free_port()?, tcp_port: free_port()?, https };
        server.restart()?;
        Ok(server)
    }

    /// `https://127.0.0.1:PORT/DATABASE` when the server was started with [`ClickHouseServer::start_https`].
    pub fn https_url(&self, database: &str) -> Option<String> {
        self.https.as_ref().map(|(port, _, _)| format!("https://127.0.0.1:{port}/{database}"))
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// `http://127.0.0.1:PORT/DATABASE`, the form `monitor ingest --into` and `hunt --fleet` take.
    pub fn url(&self, database: &str) -> String {
        format!("http://127.0.0.1:{}/{database}", self.http_port)
    }

    /// Kills the server; its data stays for [`ClickHouseServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server (again) with the same ports and data; waits until it answers a query.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        let dir = self.dir.path();
        let users = dir.join("users.xml");
        let config = dir.join("config.xml");
        std::fs::write(
            &users,
            "<?xml version=\"1.0\"?>\n<yandex>\n  <profiles><default></default></profiles>\n  \
             <users><default><password></password><networks><ip>127.0.0.1</ip></networks>\
             <profile>default</profile><quota>default</quota></default></users>\n  \
             <quotas><default></default></quotas>\n</yandex>\n",
        )
        .map_err(io(format!("write {}", users.display())))?;
        std::fs::write(
            &config,
            format!(
                "<?xml version=\"1.0\"?>\n<yandex>\n  <logger><level>warning</level><console>1</console></logger>\n  \
                 <http_port>{http}</http_port>\n  <tcp_port>{tcp}</tcp_port>\n  <listen_host>127.0.0.1</listen_host>\n  \
                 <path>{data}/</path>\n  <tmp_path>{data}/tmp/</tmp_path>\n  <users_config>{users}</users_config>\n  \
                 <default_profile>default</default_profile>\n  <default_database>default</default_database>\n  \
                 <timezone>UTC</timezone>\n  <mark_cache_size>5368709120</mark_cache_size>\n{https}</yandex>\n",
                https = self.https.as_ref().map_or(String::new(), |(port, certificate, key)| format!(
                    "  <https_port>{port}</https_port>\n  <openSSL><server><certificateFile>{}</certificateFile>\
                     <privateKeyFile>{}</privateKeyFile><verificationMode>none</verificationMode>\
                     <loadDefaultCAFile>false</loadDefaultCAFile></server></openSSL>\n",
                    certificate.display(),
                    key.display()
                )),
                http = self.http_port,
                tcp = self.tcp_port,
                data = dir.join("data").display(),
                users = users.display(),
            ),
        )
        .map_err(io(format!("write {}", config.display())))?;
        let bin = binary("MONITOR_CLICKHOUSE_SERVER", &[], "clickhouse-server");
        let mut process = Process::spawn(
            "clickhouse-server",
            Command::new(bin).arg(format!("--config-file={}", config.display())),
            dir.join("clickhouse.log"),
        )?;
        let url = format!("http://127.0.0.1:{}/?query=SELECT%201", self.http_port);
        process.wait_ready(self.http_port, || {
            ureq::get(&url)
                .config()
                .timeout_global(Some(Duration::from_secs(1)))
                .build()
                .call()
                .is_ok_and(|r| r.status() == 200)
        })?;
        self.process = Some(process);
        Ok(())
    }

    pub fn log(&self) -> String {
        log_tail(&self.dir.path().join("clickhouse.log"))
    }
}

/// The driver [`Chdb`] runs: a chdb Session answering statements read from its stdin.
const CHDB_DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chdb_driver.py");

/// The exit status of the driver when its Python has no chdb.
const CHDB_MISSING: i32 = 3;

/// A current ClickHouse (26.x, embedded by chdb from PyPI) in a Python process of its own, with its data
/// in a temporary directory: no server, but the same SQL, the same JSONEachRow rows in and the same
/// answers out as [`crate::clickhouse::ClickHouse`] over HTTP. Killed when dropped.
/// How long a chdb driver may live: longer than any test that uses it.
pub const CHDB_LIFETIME: Duration = Duration::from_secs(600);

pub struct Chdb {
    child: Child,
    /// The session's data and the driver's stderr.
    dir: tempfile::TempDir,
    pipes: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    database: String,
    version: String,
}

impl Chdb {
    /// Starts the driver; its tables will live in `database`.
    pub fn start(database: &str) -> Result<Chdb, ServerError> {
        let python = binary("MONITOR_CHDB_PYTHON", &[tools().join("venv/bin/python")], "python3");
        let missing = |why: String| {
            ServerError::NotInstalled(format!(
                "no chdb (ClickHouse 26.x embedded) for {}: {why}; `cargo xtask test` installs it into \
                 .tools/venv (or set MONITOR_CHDB_PYTHON to a Python that has it)",
                python.display()
            ))
        };
        let dir = tempfile::Builder::new()
            .prefix("monitor-chdb-")
            .tempdir()
            .map_err(io("create a directory for chdb"))?;
        let log = dir.path().join("chdb.log");
        let stderr = File::create(&log).map_err(io(format!("create {}", log.display())))?;
        // Every read from the driver is bounded: `timeout` kills it after CHDB_LIFETIME, which ends its
        // output and so any read waiting on it.
        let mut child = Command::new("timeout")
            .args(["--signal=KILL", &CHDB_LIFETIME.as_secs().to_string()])
            .arg(&python)
            .arg(CHDB_DRIVER)
            .arg(dir.path().join("data"))
            // The server the tests start keeps time in UTC (its configuration says so): so does this one.
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => missing(e.to_string()),
                _ => ServerError::Io { what: format!("start {}", python.display()), source: e },
            })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let version = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_str).map(str::to_string));
        let Some(version) = version else {
            let status = child.wait().map_err(io("wait for the chdb driver"))?;
            let log = log_tail(&log);
            // 127: `timeout` did not find the Python.
            if status.code() == Some(127) {
                return Err(missing(format!("{} not found", python.display())));
            }
            if status.code() == Some(CHDB_MISSING) {
                return Err(missing(log.trim().to_string()));
            }
            return Err(ServerError::Exited {
                server: "the chdb driver",
                status,
                log: format!("its first line ({read:?}): {line}\n{log}"),
            });
        };
        Ok(Chdb { child, dir, pipes: Mutex::new((stdin, stdout)), database: database.to_string(), version })
    }

    /// The embedded ClickHouse's `version()`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// What the driver wrote to its stderr so far (for test failure messages).
    pub fn log(&self) -> String {
        log_tail(&self.dir.path().join("chdb.log"))
    }
}

impl FleetSql for Chdb {
    fn database(&self) -> &str {
        &self.database
    }

    fn send(&self, statement: &str, data: &[u8], settings: &[(&str, &str)]) -> Result<String, FleetError> {
        let failed =
            |e: &dyn std::fmt::Display| FleetError::ClickHouse(format!("chdb {}: {e}", self.version));
        let request = serde_json::json!({
            "statement": statement,
            "data": String::from_utf8_lossy(data),
            "settings": settings,
        });
        let mut pipes = self.pipes.lock().unwrap_or_else(PoisonError::into_inner);
        let (stdin, stdout) = &mut *pipes;
        writeln!(stdin, "{request}").and_then(|()| stdin.flush()).map_err(|e| failed(&e))?;
        let mut line = String::new();
        match stdout.read_line(&mut line) {
            Ok(0) => return Err(failed(&"the driver exited")),
            Ok(_) => {}
            Err(e) => return Err(failed(&e)),
        }
        let answer: serde_json::Value = serde_json::from_str(&line).map_err(|e| failed(&e))?;
        match (answer.get("answer").and_then(|a| a.as_str()), answer.get("error").and_then(|a| a.as_str())) {
            (Some(text), _) => Ok(text.to_string()),
            // As the HTTP path words a refusal (`hunt` adds the SQL to such errors).
            (_, Some(error)) => {
                Err(FleetError::ClickHouse(format!("chdb {} answered: {error}", self.version)))
            }
            _ => Err(failed(&format!("not an answer: {line}"))),
        }
    }
}

impl Drop for Chdb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

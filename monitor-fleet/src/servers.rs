//! Real fleet servers on loopback, for the tests and the benchmarks: a NATS server with JetStream and a
//! ClickHouse server, each in a temporary directory of its own, with bounded waits for readiness, and
//! killed when dropped (also when a test panics, since unwinding runs the drops).
//!
//! The binaries: `nats-server` 2.10 or newer (for `sync_interval`; `cargo xtask test` installs 2.15 into
//! `.tools/venv`), `MONITOR_NATS_SERVER` to choose another; `clickhouse-server` (Debian's 18.16 is what
//! the tests run), `MONITOR_CLICKHOUSE_SERVER` to choose another.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// `nats-server` with JetStream on a loopback port, its store in a temporary directory; by default every
/// write fsynced before it is acknowledged ([`Fsync::Always`]), so that a kill loses nothing acknowledged.
pub struct NatsServer {
    process: Option<Process>,
    dir: tempfile::TempDir,
    port: u16,
    /// Extra lines for the configuration (accounts, users, TLS), kept for restarts.
    extra_config: String,
    fsync: Fsync,
}

impl NatsServer {
    /// Starts a server on a free port.
    pub fn start() -> Result<NatsServer, ServerError> {
        NatsServer::start_with_config("")
    }

    /// Starts a server whose configuration also has `extra_config` (for example an `authorization` block).
    pub fn start_with_config(extra_config: &str) -> Result<NatsServer, ServerError> {
        let dir = tempfile::Builder::new()
            .prefix("monitor-nats-")
            .tempdir()
            .map_err(io("create a directory for nats-server"))?;
        let port = free_port()?;
        let mut server = NatsServer {
            process: None,
            dir,
            port,
            extra_config: extra_config.to_string(),
            fsync: Fsync::Always,
        };
        server.restart()?;
        Ok(server)
    }

    /// A server on a port picked now but not started yet: for a test whose agent starts before NATS.
    pub fn not_started() -> Result<NatsServer, ServerError> {
        NatsServer::not_started_with(Fsync::Always)
    }

    /// As [`NatsServer::not_started`], with writes reaching the disk as `fsync` says.
    pub fn not_started_with(fsync: Fsync) -> Result<NatsServer, ServerError> {
        let dir = tempfile::Builder::new()
            .prefix("monitor-nats-")
            .tempdir()
            .map_err(io("create a directory for nats-server"))?;
        Ok(NatsServer { process: None, dir, port: free_port()?, extra_config: String::new(), fsync })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
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
            "listen: 127.0.0.1:{port}\nserver_name: monitor-test-{port}\n\
             jetstream {{\n  store_dir: {store:?}\n{sync}}}\n{extra}\n",
            port = self.port,
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
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        // Ready when it greets a client (INFO) and JetStream is up, which the log says before it listens.
        process.wait_ready(self.port, || nats_greets(addr))?;
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
}

impl ClickHouseServer {
    pub fn start() -> Result<ClickHouseServer, ServerError> {
        let dir = tempfile::Builder::new()
            .prefix("monitor-clickhouse-")
            .tempdir()
            .map_err(io("create a directory for clickhouse-server"))?;
        let mut server =
            ClickHouseServer { process: None, dir, http_port: free_port()?, tcp_port: free_port()? };
        server.restart()?;
        Ok(server)
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
                 <timezone>UTC</timezone>\n  <mark_cache_size>5368709120</mark_cache_size>\n</yandex>\n",
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

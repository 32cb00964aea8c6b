//! `monitor console`: the fleet (or one host) in a browser. The first page lists the devices with their
//! health and the newest events; a device's timeline shows the proxy's address and the real target side
//! by side, with the process; a KQL box runs the same queries as `monitor hunt` (errors shown at the place
//! they point to, results downloadable as CSV or JSON lines); the Blocked view lists the blocked
//! connections; new events appear without a reload. The page is plain HTML, CSS and JavaScript embedded
//! in the binary.
//!
//! - [`source`]: what the console reads (the local store or the fleet store).
//! - [`server`]: the HTTP API and the page; [`auth`]: who may use it; [`feed`]: the live events.
//! - [`policy`]: the only writes, with `--allow-policy-edits`.

#![cfg_attr(
    test,
    expect(unused_crate_dependencies, reason = "base64 and tempfile are for the integration tests")
)]

pub mod auth;
pub mod feed;
pub mod policy;
pub mod render;
pub mod server;
pub mod source;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use monitor_fleet::NatsOptions;
use monitor_fleet::clickhouse::ClickHouse;
use tokio::sync::oneshot;

pub use policy::PolicyAccess;
pub use source::Source;

/// `monitor console`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsoleArgs {
    /// Where the console listens; beyond loopback only with --token.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Show this local store [default: /var/lib/monitor/events.db].
    #[arg(long, value_name = "PATH", conflicts_with = "fleet")]
    pub store: Option<PathBuf>,
    #[command(flatten)]
    pub fleet: monitor_hunt::cli::FleetArgs,
    /// Every request must carry this token (at least 16 characters): open http://HOST:PORT/?token=...
    /// once, and the browser keeps it in a cookie; scripts send `Authorization: Bearer ...`.
    #[arg(long, value_name = "TOKEN", env = "MONITOR_CONSOLE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// An agent whose last heartbeat is older than this is stale (e.g. 2m, 90s).
    #[arg(long, value_name = "DURATION", value_parser = monitor_hunt::cli::parse_duration, default_value = "2m")]
    pub stale_after: Duration,
    /// Show the fleet's policy from NATS (nats://HOST:PORT[,...]); changes need --allow-policy-edits.
    #[arg(long, value_name = "URLS")]
    pub policy: Option<String>,
    /// Let the page add and remove fleet indicators and set modes (the console's only writes).
    #[arg(long, requires = "policy")]
    pub allow_policy_edits: bool,
    /// A NATS credentials file for --policy.
    #[arg(long, value_name = "FILE", requires = "policy")]
    pub nats_creds: Option<PathBuf>,
    #[arg(long, value_name = "NAME", requires = "policy")]
    pub nats_user: Option<String>,
    /// Also from the environment, which `ps` does not show.
    #[arg(long, value_name = "PASSWORD", env = "MONITOR_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Trust this CA (PEM) and require TLS to NATS.
    #[arg(long, value_name = "FILE", requires = "policy")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Replicas of MONITOR_POLICY if the console's first change creates it.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "policy")]
    pub replicas: usize,
}

/// The console's settings, from [`ConsoleArgs`] or a test.
#[derive(Clone)]
pub struct ConsoleOptions {
    pub listen: SocketAddr,
    pub source: Source,
    pub token: Option<String>,
    pub policy: Option<PolicyAccess>,
    pub stale_after: Duration,
    /// How often the live feed reads the store.
    pub poll: Duration,
}

impl ConsoleArgs {
    pub fn options(&self) -> anyhow::Result<ConsoleOptions> {
        let source = match &self.fleet.url {
            Some(url) => Source::Fleet(
                ClickHouse::connect(
                    url,
                    self.fleet.user.clone(),
                    self.fleet.password.clone(),
                    self.fleet.tls_ca.as_deref(),
                )
                .context("--fleet")?,
            ),
            None => Source::Store(self.store.clone().unwrap_or_else(monitor_hunt::default_store_path)),
        };
        let policy = match &self.policy {
            Some(urls) => {
                if !(1..=5).contains(&self.replicas) {
                    anyhow::bail!("--replicas {}: must be 1 to 5 (JetStream's limit)", self.replicas);
                }
                Some(PolicyAccess {
                    nats: NatsOptions {
                        servers: NatsOptions::parse_servers(urls).context("--policy")?,
                        creds: self.nats_creds.clone(),
                        user: self.nats_user.clone(),
                        password: self.nats_password.clone(),
                        tls_ca: self.nats_tls_ca.clone(),
                    },
                    replicas: self.replicas,
                    editable: self.allow_policy_edits,
                })
            }
            None => None,
        };
        let token = self.token.clone().filter(|t| !t.is_empty());
        auth::check_settings(self.listen, token.as_deref(), self.allow_policy_edits)
            .map_err(anyhow::Error::msg)?;
        Ok(ConsoleOptions {
            listen: self.listen,
            source,
            token,
            policy,
            stale_after: self.stale_after,
            poll: feed::POLL,
        })
    }
}

/// A running console (for tests and for `monitor console`).
pub struct Console {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Console {
    /// Binds and serves on a thread of its own; answers once the port is open.
    pub fn start(options: ConsoleOptions) -> anyhow::Result<Console> {
        let edits = options.policy.as_ref().is_some_and(|p| p.editable);
        auth::check_settings(options.listen, options.token.as_deref(), edits).map_err(anyhow::Error::msg)?;
        let listener = std::net::TcpListener::bind(options.listen)
            .with_context(|| format!("listen on {}", options.listen))?;
        listener.set_nonblocking(true).context("a non-blocking listener")?;
        let address = listener.local_addr().context("the listening address")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .context("start tokio")?;
                let served = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).context("the listener")?;
                    let source = Arc::new(options.source);
                    let state = Arc::new(server::AppState {
                        feed: feed::Feed::start(Arc::clone(&source), options.poll),
                        source,
                        token: options.token,
                        policy: options.policy,
                        stale_after: options.stale_after,
                    });
                    // Stopping does not wait for the pages: their live feeds never end by themselves.
                    tokio::select! {
                        served = axum::serve(listener, server::router(state)) => served.context("serve"),
                        _ = stopped => Ok(()),
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
                served
            })
            .context("start the console's thread")?;
        Ok(Console { address, stop: Some(stop), thread: Some(thread) })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving; open live feeds are closed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `monitor console`: serves until SIGINT or SIGTERM.
pub fn run(args: &ConsoleArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    let what = options.source.describe();
    let console = Console::start(options)?;
    tracing::info!(
        "console on http://{} showing the {what}{}",
        console.address(),
        if args.token.is_some() { " (open it with ?token=...)" } else { "" }
    );
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(runtime) = runtime {
            runtime.block_on(async {
                #[cfg(unix)]
                if let Ok(mut terminate) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = terminate.recv() => {}
                    }
                    return;
                }
                let _ = tokio::signal::ctrl_c().await;
            });
        }
        let _ = done.send(());
    });
    let _ = finished.recv();
    tracing::info!("console stopped");
    console.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        console: ConsoleArgs,
    }

    fn parse(args: &[&str]) -> Result<ConsoleArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("console").chain(args.iter().copied())).map(|c| c.console)
    }

    #[test]
    fn arguments_make_the_settings() {
        let local = parse(&[]).expect("defaults").options().expect("settings");
        assert_eq!(local.listen.to_string(), "127.0.0.1:8080");
        assert!(matches!(local.source, Source::Store(ref p) if p == &monitor_hunt::default_store_path()));
        assert!(local.policy.is_none() && local.token.is_none());
        let fleet = parse(&["--fleet", "http://127.0.0.1:8123/fleet", "--policy", "nats://127.0.0.1:4222"])
            .expect("fleet")
            .options()
            .expect("settings");
        assert!(fleet.source.is_fleet());
        assert_eq!(fleet.policy.as_ref().map(|p| p.editable), Some(false));
        let edits = parse(&["--policy", "nats://127.0.0.1:4222", "--allow-policy-edits"]).expect("edits");
        assert!(edits.options().is_err(), "edits need a token");
        let edits = parse(&[
            "--policy",
            "nats://127.0.0.1:4222",
            "--allow-policy-edits",
            "--token",
            "0123456789abcdef",
        ])
        .expect("edits");
        assert_eq!(edits.options().expect("settings").policy.map(|p| p.editable), Some(true));
    }

    #[test]
    fn unsafe_settings_are_refused() {
        let wide = parse(&["--listen", "0.0.0.0:8080"]).expect("parses");
        assert!(wide.options().is_err(), "beyond loopback without a token");
        let with_token = parse(&["--listen", "0.0.0.0:8080", "--token", "0123456789abcdef"]).expect("parses");
        assert!(with_token.options().is_ok());
        assert!(parse(&["--allow-policy-edits"]).is_err(), "edits need --policy");
        assert!(parse(&["--store", "x.db", "--fleet", "http://ch:8123/f"]).is_err());
        let replicas = parse(&["--policy", "nats://127.0.0.1:4222", "--replicas", "9"]).expect("parses");
        assert!(replicas.options().is_err());
    }
}

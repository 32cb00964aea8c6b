//! `monitor ingest`: the stream into ClickHouse, in the foreground until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Args;

use crate::clickhouse::ClickHouse;
use crate::ingest::{self, DEFAULT_BATCH, DEFAULT_CONSUMER, IngestCounts, IngestOptions};
use crate::nats::NatsOptions;

#[derive(Args, Debug, Clone)]
pub struct IngestArgs {
    /// The NATS servers: nats://HOST:PORT[,nats://HOST:PORT...].
    #[arg(long, value_name = "URLS")]
    pub from: String,
    /// The ClickHouse database: http(s)://HOST:8123/DATABASE (created with its tables when absent).
    #[arg(long, value_name = "URL")]
    pub into: String,
    /// A NATS credentials file.
    #[arg(long, value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    #[arg(long, value_name = "NAME")]
    pub nats_user: Option<String>,
    /// Also from the environment, which `ps` does not show.
    #[arg(long, value_name = "PASSWORD", env = "MONITOR_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Trust this CA (PEM) and require TLS to NATS.
    #[arg(long, value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    #[arg(long, value_name = "NAME")]
    pub clickhouse_user: Option<String>,
    #[arg(long, value_name = "PASSWORD", env = "MONITOR_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<String>,
    /// Trust this CA (PEM) for an https:// ClickHouse URL's certificate (else the well-known roots).
    #[arg(long, value_name = "FILE")]
    pub clickhouse_tls_ca: Option<PathBuf>,
    /// The durable consumer; ingest processes with the same name share the work.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CONSUMER)]
    pub consumer: String,
    /// Messages per ClickHouse insert at most.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
}

impl IngestArgs {
    pub fn options(&self) -> anyhow::Result<IngestOptions> {
        if self.batch == 0 {
            anyhow::bail!("--batch must be at least 1");
        }
        Ok(IngestOptions {
            nats: NatsOptions {
                servers: NatsOptions::parse_servers(&self.from).context("--from")?,
                creds: self.nats_creds.clone(),
                user: self.nats_user.clone(),
                password: self.nats_password.clone(),
                tls_ca: self.nats_tls_ca.clone(),
            },
            clickhouse: ClickHouse::connect(
                &self.into,
                self.clickhouse_user.clone(),
                self.clickhouse_password.clone(),
                self.clickhouse_tls_ca.as_deref(),
            )
            .context("--into")?,
            consumer: self.consumer.clone(),
            batch: self.batch,
        })
    }
}

/// Runs the ingest until SIGINT or SIGTERM; logs what it did when it stops.
pub fn ingest(args: &IngestArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start tokio")?;
    let counts = Arc::new(Mutex::new(IngestCounts::default()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let result = runtime.block_on(async {
        #[cfg(unix)]
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("watch SIGTERM")?;
        tokio::spawn(async move {
            #[cfg(unix)]
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            let _ = stop.send(true);
        });
        ingest::run(&options, stopped, Arc::clone(&counts)).await.map_err(anyhow::Error::from)
    });
    let counts = counts.lock().map(|c| c.clone()).unwrap_or_default();
    tracing::info!(
        "ingest stopped: {} messages (events and heartbeats) ingested in {} batches, {} dead-lettered",
        counts.ingested,
        counts.batches,
        counts.dead_lettered
    );
    result
}

/// What `monitor indicators --fleet` and `monitor policy` do to the fleet's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyChange {
    Indicators {
        kind: monitor_core::policy::ListKind,
        values: Vec<String>,
        add: bool,
    },
    Mode(crate::policy::FleetMode),
    /// Print the lists (of one kind) of the scope.
    List(Option<monitor_core::policy::ListKind>),
    /// Print everything in the bucket, every scope.
    Show,
}

/// Writes or reads the fleet's policy (`MONITOR_POLICY`, created with `replicas` when absent) for the
/// fleet, or for `group` when given. Every value is checked before anything is written.
pub fn policy(
    nats: &NatsOptions,
    replicas: usize,
    group: Option<&str>,
    change: PolicyChange,
) -> anyhow::Result<()> {
    use crate::policy::{self, Scope};
    let scope = match group {
        Some(name) => Scope::group(name)?,
        None => Scope::Fleet,
    };
    if !(1..=5).contains(&replicas) {
        anyhow::bail!("--replicas {replicas}: must be 1 to 5 (JetStream's limit)");
    }
    let indicators = match &change {
        PolicyChange::Indicators { values, .. } => values
            .iter()
            .map(|v| {
                monitor_core::policy::Indicator::parse(v.trim())
                    .map_err(|reason| anyhow::anyhow!("{v:?}: {reason}; nothing was changed"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("start tokio")?;
    runtime.block_on(async {
        let store = policy::open_bucket(nats, replicas).await?;
        match change {
            PolicyChange::Indicators { kind, add, .. } => {
                let revision = policy::change_indicators(&store, &scope, kind, &indicators, add).await?;
                println!(
                    "{} {} {kind} indicator(s) for {scope}; policy revision {revision}",
                    if add { "added" } else { "removed" },
                    indicators.len()
                );
            }
            PolicyChange::Mode(mode) => {
                let revision = policy::set_mode(&store, &scope, mode).await?;
                println!("mode {} for {scope}; policy revision {revision}", mode.name());
            }
            PolicyChange::List(kind) => {
                let state = policy::snapshot(&store).await?;
                let groups: Vec<String> = match &scope {
                    Scope::Group(name) => vec![name.clone()],
                    Scope::Fleet => Vec::new(),
                };
                let mine = state.effective(&groups);
                for (list, entries) in [("allow", &mine.allow), ("block", &mine.block)] {
                    if kind.is_none_or(|k| k.to_string() == list) {
                        for entry in entries {
                            println!("{list}\t{entry}");
                        }
                    }
                }
            }
            PolicyChange::Show => {
                let state = policy::snapshot(&store).await?;
                println!("revision {}", state.revision);
                for line in policy::describe(&state) {
                    println!("{line}");
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    })
}

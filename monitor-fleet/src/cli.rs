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
        "ingest stopped: {} events ingested in {} batches, {} dead-lettered",
        counts.ingested,
        counts.batches,
        counts.dead_lettered
    );
    result
}

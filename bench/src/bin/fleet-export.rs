//! `fleet-export`: the agent's exporter (`monitor_fleet::Exporter`, what `monitor run --export` runs on
//! a thread of its own) in a process of its own, so that the bench reads the exporter's CPU time alone.
//! Exports a store until an event is acknowledged and prints a [`bench::fleet::ExportReport`] as JSON.

#![expect(unused_crate_dependencies, reason = "a binary of the package sees every dependency of its library")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bench::fleet::{ExportReport, unix_now};
use bench::procfs::cpu_seconds;
use clap::Parser;
use monitor_fleet::{ExportOptions, Exporter, NatsOptions};

#[derive(Parser, Debug)]
struct Args {
    /// The event store (the spool).
    #[arg(long)]
    store: PathBuf,
    /// nats://HOST:PORT
    #[arg(long)]
    nats: String,
    #[arg(long)]
    device_id: String,
    /// Stop once every event up to this Seq is acknowledged.
    #[arg(long)]
    until: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nats = NatsOptions { servers: NatsOptions::parse_servers(&args.nats)?, ..NatsOptions::default() };
    let pid = std::process::id();
    let cpu_before = cpu_seconds(pid);
    let started_unix = unix_now();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let exporter = Exporter::start(&args.store, &args.device_id, ExportOptions::new(nats))
        .context("start the exporter")?;
    let mut first_ack_unix = None;
    loop {
        let status = exporter.status();
        if first_ack_unix.is_none() && status.exported > 0 {
            first_ack_unix = Some(unix_now());
        }
        if status.acked_seq >= args.until {
            break;
        }
        if Instant::now() > deadline {
            bail!("Seq {} not acknowledged within {} s: {status:?}", args.until, args.timeout);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let done_unix = unix_now();
    let cpu_s = cpu_seconds(pid) - cpu_before;
    let status = exporter.status();
    exporter.stop();
    let report = ExportReport {
        started_unix,
        first_ack_unix,
        done_unix,
        cpu_s,
        exported: status.exported,
        errors: status.errors,
        last_error: status.last_error,
    };
    println!("{}", serde_json::to_string(&report).context("encode the report")?);
    Ok(())
}

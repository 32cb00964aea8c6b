//! The command line's types (what `main` dispatches). The `run` flags are a contract scripts rely on; keep
//! them stable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "monitor",
    version,
    about = "A network monitor that sees the real target behind forward proxies"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon in the foreground: attach the kernel programs and emit events.
    Run(Box<RunArgs>),
    /// Change or list the indicators of the running daemon.
    Indicators(IndicatorsArgs),
    /// Set or show the fleet's policy (with --fleet): the protection mode of every agent or of a group.
    Policy(PolicyArgs),
    /// Show what the running daemon is doing.
    Status(ControlArgs),
    /// Remove the enforcement a block-mode daemon left pinned (its programs and maps).
    Detach(DetachArgs),
    /// Check what this kernel supports: load and attach every program, then detach; one line each.
    Probe,
    /// Run the same extraction over a packet capture (pcap or pcapng) and print the same events
    /// (without process fields). Needs no kernel and runs on any OS.
    Replay(ReplayArgs),
    /// Run a KQL query over the stored DeviceNetworkEvents and DeviceEvents.
    Hunt(monitor_hunt::cli::HuntArgs),
    /// The device timeline, newest first (or a self-contained HTML page with --html); with --fleet, the
    /// timeline of any device of the fleet.
    Timeline(monitor_hunt::cli::TimelineArgs),
    /// The devices: name, id, first and last seen, events, blocked connections, mode (with --fleet, every
    /// device of the fleet).
    Devices(monitor_hunt::cli::DevicesArgs),
    /// Read the events every agent exports (NATS JetStream) into ClickHouse, the fleet store.
    #[cfg(target_os = "linux")]
    Ingest(monitor_fleet::cli::IngestArgs),
    /// Serve the web console: devices and health, timelines, KQL hunting, the Blocked view, live (over the
    /// local store, or the fleet store with --fleet).
    #[cfg(target_os = "linux")]
    Console(Box<monitor_console::ConsoleArgs>),
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The capture file.
    pub file: PathBuf,
    /// Where events go: a file path, or - for stdout.
    #[arg(long, value_name = "PATH|-", default_value = "-")]
    pub events: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No payload inspection: connection events only.
    Off,
    /// Inspect, name targets, report indicator matches, block nothing.
    Audit,
    /// As audit, and stop connections to blocked targets in the kernel.
    Block,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Uninspectable {
    Allow,
    Block,
}

/// `monitor run`. Every flag has a key of the same name (with `_`) in the configuration file; a flag
/// given on the command line wins over the file.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Configuration file [default: /etc/monitor/config.toml, if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration and the indicator files, then exit (attaches nothing).
    #[arg(long)]
    pub check: bool,
    /// [default: audit]
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// cgroup v2 directory to watch (repeatable) [default: the root of the cgroup2 hierarchy, the whole host].
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,
    /// Interface whose ingress is watched for forwarded flows (gateway mode; repeatable).
    #[arg(long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,
    /// Where events go: a file path, or - for stdout [default: -].
    #[arg(long, value_name = "PATH|-")]
    pub events: Option<String>,
    /// Block indicators: one domain, address or CIDR range per line.
    #[arg(long = "block", value_name = "FILE")]
    pub block: Option<PathBuf>,
    /// Allow indicators (allow wins over block).
    #[arg(long = "allow", value_name = "FILE")]
    pub allow: Option<PathBuf>,
    /// The embedded event store (SQLite), or `none` [default: /var/lib/monitor/events.db].
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Delete stored events older than this (e.g. 30d, 12h) [default: keep].
    #[arg(long, value_name = "DURATION")]
    pub store_max_age: Option<String>,
    /// Keep the store under this many bytes, deleting the oldest events [default: no limit].
    #[arg(long, value_name = "BYTES")]
    pub store_max_bytes: Option<u64>,
    /// In block mode, what to do with a connection whose first bytes name no target within the bounds
    /// [default: allow].
    #[arg(long, value_enum)]
    pub uninspectable: Option<Uninspectable>,
    /// In block mode, how long a send may be held while the rest of its request is awaited (e.g. 5s,
    /// 500ms); past it the connection is uninspectable and `--uninspectable` decides [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub hold_timeout: Option<String>,
    /// The control socket for `monitor indicators` and `monitor status` [default: /run/monitor/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Where block mode pins its programs' links and maps [default: <bpffs>/monitor].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Size of the kernel-to-user ring buffer: a power of two, at least 4096 [default: 16 MiB].
    #[arg(long, value_name = "BYTES", value_parser = ring_size)]
    pub ring_buffer_bytes: Option<u32>,
    /// Gateway mode (`--iface`): forwarded flows the kernel tracks at once while judging their first bytes;
    /// when full, block mode refuses new flows instead of evicting one [default: 65536].
    #[arg(long, value_name = "N")]
    pub wire_flows: Option<u32>,
    /// Gateway mode, block mode: how long a forwarded flow may stay open without sending its first bytes;
    /// past it the flow is reset at its next segment instead of judged (e.g. 1h, 90s) [default: 1h].
    #[arg(long, value_name = "DURATION")]
    pub silent_flow_timeout: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9900) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// This device's DeviceId on every event [default: /etc/machine-id].
    #[arg(long, value_name = "ID")]
    pub device_id: Option<String>,
    /// Export every event to NATS JetStream: nats://HOST:PORT[,nats://HOST:PORT...] (needs the store,
    /// which is the spool) [default: off].
    #[arg(long, value_name = "URLS")]
    pub export: Option<String>,
    /// A NATS credentials file for the export.
    #[arg(long, value_name = "FILE")]
    pub export_creds: Option<PathBuf>,
    #[arg(long, value_name = "NAME")]
    pub export_user: Option<String>,
    /// Visible to other local users in the process list: prefer the configuration file.
    #[arg(long, value_name = "PASSWORD")]
    pub export_password: Option<String>,
    /// Trust this CA (PEM) and require TLS to NATS.
    #[arg(long, value_name = "FILE")]
    pub export_tls_ca: Option<PathBuf>,
    /// Replicas of the stream MONITOR_EVENTS when the export creates it [default: 1].
    #[arg(long, value_name = "N")]
    pub export_replicas: Option<usize>,
    /// With --export: how often this device sends its heartbeat (version, kernel, mode, policy revision,
    /// events/s, kernel drops, export lag, degraded features) to the fleet's DeviceInfo table, e.g. 30s,
    /// 1m [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_interval: Option<String>,
    /// Take indicators and the mode from the fleet's policy (the NATS KV bucket MONITOR_POLICY):
    /// nats://HOST:PORT[,nats://HOST:PORT...]; the last set applied is kept beside the store, so a restart
    /// while NATS is down enforces it [default: off].
    #[arg(long, value_name = "URLS")]
    pub policy: Option<String>,
    /// A NATS credentials file for the policy (read access to MONITOR_POLICY is enough).
    #[arg(long, value_name = "FILE")]
    pub policy_creds: Option<PathBuf>,
    #[arg(long, value_name = "NAME")]
    pub policy_user: Option<String>,
    /// Visible to other local users in the process list: prefer the configuration file.
    #[arg(long, value_name = "PASSWORD")]
    pub policy_password: Option<String>,
    /// Trust this CA (PEM) and require TLS to the policy's NATS.
    #[arg(long, value_name = "FILE")]
    pub policy_tls_ca: Option<PathBuf>,
    /// A group whose fleet policy applies to this agent besides the fleet's (repeatable).
    #[arg(long = "group", value_name = "NAME")]
    pub groups: Vec<String>,
    /// The mode of this configuration (`--mode` or `mode`) wins over the fleet policy's mode.
    #[arg(long)]
    pub prefer_local_mode: bool,
}

pub fn ring_size(text: &str) -> Result<u32, String> {
    let n: u32 = text.parse().map_err(|e| format!("{e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err("must be a power of two of at least 4096".into());
    }
    Ok(n)
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    /// The pin directory of the block-mode daemon (default: <bpffs>/monitor).
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

pub const DEFAULT_CONTROL: &str = "/run/monitor/control.sock";

#[derive(Args, Debug)]
pub struct ControlArgs {
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL)]
    pub control: PathBuf,
}

#[derive(Args, Debug)]
pub struct IndicatorsArgs {
    #[command(subcommand)]
    pub op: IndicatorOp,
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL, global = true)]
    pub control: PathBuf,
    #[command(flatten)]
    pub fleet: FleetTarget,
}

/// `monitor policy`: the fleet's protection mode.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub op: PolicyOp,
    #[command(flatten)]
    pub fleet: FleetTarget,
}

#[derive(Subcommand, Debug)]
pub enum PolicyOp {
    /// Set the protection mode of the fleet's agents (or of a group's, with --group).
    Mode {
        #[arg(value_enum)]
        mode: Mode,
    },
    /// Print the whole fleet policy: every list entry and mode, by scope.
    Show,
}

/// The fleet's policy (the NATS KV bucket MONITOR_POLICY) as the target of `monitor indicators` and
/// `monitor policy`. Give operators write access to `$KV.MONITOR_POLICY.>` and agents only read access.
#[derive(Args, Debug, Clone, Default)]
pub struct FleetTarget {
    /// Change the fleet's policy, not the local daemon's: nats://HOST:PORT[,nats://HOST:PORT...].
    #[arg(long, value_name = "URLS", global = true)]
    pub fleet: Option<String>,
    /// With --fleet: only the agents of this group (`monitor run --group NAME`) [default: every agent].
    #[arg(long, value_name = "NAME", global = true)]
    pub group: Option<String>,
    /// A NATS credentials file.
    #[arg(long, value_name = "FILE", global = true)]
    pub nats_creds: Option<PathBuf>,
    #[arg(long, value_name = "NAME", global = true)]
    pub nats_user: Option<String>,
    /// Visible to other local users in the process list: prefer a credentials file.
    #[arg(long, value_name = "PASSWORD", global = true)]
    pub nats_password: Option<String>,
    /// Trust this CA (PEM) and require TLS to NATS.
    #[arg(long, value_name = "FILE", global = true)]
    pub nats_tls_ca: Option<PathBuf>,
    /// Replicas of MONITOR_POLICY when this command creates it.
    #[arg(long, value_name = "N", global = true, default_value_t = 1)]
    pub replicas: usize,
}

#[derive(Subcommand, Debug)]
pub enum IndicatorOp {
    /// Add indicators to a list of the running daemon.
    Add {
        #[arg(value_enum)]
        list: ListArg,
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Remove indicators from a list of the running daemon.
    Remove {
        #[arg(value_enum)]
        list: ListArg,
        #[arg(required = true)]
        values: Vec<String>,
    },
    /// Print the running daemon's indicators.
    List {
        #[arg(value_enum)]
        list: Option<ListArg>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListArg {
    Allow,
    Block,
}

//! The `monitor hunt` and `monitor timeline` subcommands: the daemon's binary flattens these arguments
//! into its clap parser and calls [`hunt`] or [`timeline`] with stdout.

use std::fs::OpenOptions;
use std::io::{self, IsTerminal, Write};
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::kql;
use crate::output::{write_csv, write_json_lines, write_table};
use crate::store::Store;
use crate::time::{now_micros, parse_timespan};
use crate::timeline::{TimelineFilter, render_html, write_text};

/// How `hunt` prints rows.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// One JSON object per row (JSON lines).
    Json,
    /// CSV with a header line.
    Csv,
}

/// When `timeline` colours its lines.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ColourChoice {
    /// When stdout is a terminal and NO_COLOR is not set.
    #[default]
    Auto,
    Always,
    Never,
}

/// The fleet store, read instead of the local one: ClickHouse, filled by `monitor ingest`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// Read the fleet store instead of the local one: http(s)://HOST:8123/DATABASE (ClickHouse, filled
    /// by `monitor ingest`).
    #[arg(id = "fleet", long = "fleet", value_name = "URL", conflicts_with = "store")]
    pub url: Option<String>,
    /// The ClickHouse user.
    #[arg(id = "fleet_user", long = "fleet-user", value_name = "NAME", requires = "fleet")]
    pub user: Option<String>,
    /// The ClickHouse user's password; also from the environment, which `ps` does not show (and which local
    /// reads ignore).
    #[arg(
        id = "fleet_password",
        long = "fleet-password",
        value_name = "PASSWORD",
        env = "MONITOR_CLICKHOUSE_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Trust this CA (PEM) for an https:// fleet URL's certificate (else the well-known roots).
    #[arg(id = "fleet_tls_ca", long = "fleet-tls-ca", value_name = "FILE", requires = "fleet")]
    pub tls_ca: Option<PathBuf>,
}

/// Which store to read (the local one, or the fleet's) and how to print its rows: `monitor devices`, and
/// the first arguments of `monitor hunt`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReadArgs {
    /// The event store [default: /var/lib/monitor/events.db].
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// List the devices: name, id, first and last seen, events, blocked connections, mode; with --fleet also
/// each agent's health from its heartbeats (stale: none for --stale-after).
#[derive(clap::Args, Debug, Clone)]
pub struct DevicesArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// With --fleet: an agent whose last heartbeat is older than this is stale (e.g. 2m, 90s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2m")]
    pub stale_after: Duration,
}

/// Run a KQL query over the event store.
#[derive(clap::Args, Debug, Clone)]
pub struct HuntArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// The query, e.g. 'DeviceNetworkEvents | where RemoteUrl has "example" | take 10'.
    pub query: String,
}

/// Show the device timeline, newest first.
#[derive(clap::Args, Debug, Clone)]
pub struct TimelineArgs {
    /// The event store [default: /var/lib/monitor/events.db].
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Only events of the last DURATION (e.g. 30m, 1h, 2d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Only events of processes with this file name (e.g. curl).
    #[arg(long, value_name = "NAME")]
    pub process: Option<String>,
    /// Write a self-contained HTML page to FILE instead of printing lines.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// At most N events (the newest).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Colour the lines.
    #[arg(long, value_enum, default_value = "auto")]
    pub colour: ColourChoice,
    /// The device whose timeline the fleet store shows (its DeviceName; `monitor devices --fleet URL`
    /// lists them).
    #[arg(long, value_name = "NAME", requires = "fleet")]
    pub device: Option<String>,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// A positive duration in KQL's timespan syntax: `90s`, `30m`, `1h`, `2d`, `1.5h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match parse_timespan(text) {
        Some(micros) if micros > 0 => Ok(Duration::from_micros(micros.unsigned_abs())),
        _ => Err(format!("'{text}' is not a duration; expected a number and a unit, e.g. 30m, 1h or 2d")),
    }
}

/// `monitor hunt`: checks the query, runs it over the store and prints the rows.
pub fn hunt(args: &HuntArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    // A query error is reported even where there is no store yet.
    kql::check(&args.query)?;
    let path = args.read.store.clone().unwrap_or_else(crate::default_store_path);
    let store = Store::open(&path)?;
    let result = store.query(&args.query)?;
    write_result(&result, args.read.format, out)
}

/// Prints `result` in `format` (local and fleet hunting alike).
pub fn write_result(result: &kql::QueryResult, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    let written = match format {
        Format::Table => write_table(result, out),
        Format::Json => write_json_lines(result, out),
        Format::Csv => write_csv(result, out),
    };
    finish_output(written.and_then(|()| out.flush()))
}

/// `monitor timeline`: prints the timeline, or writes it as an HTML page with `--html`.
pub fn timeline(args: &TimelineArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let path = args.store.clone().unwrap_or_else(crate::default_store_path);
    let store = Store::open(&path)?;
    let now = now_micros();
    let events = store.timeline(&timeline_filter(args), now)?;
    write_timeline(&events, args, now, out)
}

/// The filter `args` asks for.
pub fn timeline_filter(args: &TimelineArgs) -> TimelineFilter {
    TimelineFilter {
        since: args.since,
        process: args.process.clone(),
        limit: args.limit,
        action: None,
        device: args.device.clone(),
    }
}

/// `monitor devices`: the store's devices (one, locally), in `args.format`.
pub fn devices(args: &DevicesArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let path = args.read.store.clone().unwrap_or_else(crate::default_store_path);
    let store = Store::open(&path)?;
    write_result(&crate::devices::devices_result(&store.devices()?), args.read.format, out)
}

/// Prints `events` as lines, or writes them as the HTML page `args.html` (local and fleet timelines alike).
pub fn write_timeline(
    events: &[crate::TimelineEvent],
    args: &TimelineArgs,
    now: i64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if let Some(html) = &args.html {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        // The page holds the events (command lines, accounts): readable by its owner only. Elsewhere the
        // file inherits its folder's access list.
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options.open(html).with_context(|| format!("create {}", html.display()))?;
        file.write_all(render_html(events, now).as_bytes())
            .with_context(|| format!("write {}", html.display()))?;
        return finish_output(writeln!(out, "wrote {} events to {}", events.len(), html.display()));
    }
    let colour = match args.colour {
        ColourChoice::Always => true,
        ColourChoice::Never => false,
        ColourChoice::Auto => io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    finish_output(write_text(events, out, colour).and_then(|()| out.flush()))
}

/// A reader that stops early (`monitor hunt ... | head`) is not an error.
fn finish_output(result: io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("write the output"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    enum Command {
        Hunt(HuntArgs),
        Timeline(TimelineArgs),
        Devices(DevicesArgs),
    }

    #[test]
    fn arguments_parse() {
        let Command::Hunt(hunt) =
            Command::parse_from(["monitor", "hunt", "--format", "json", "DeviceEvents | take 1"])
        else {
            panic!("expected hunt");
        };
        assert_eq!(hunt.read.format, Format::Json);
        assert_eq!(hunt.query, "DeviceEvents | take 1");
        let Command::Timeline(timeline) =
            Command::parse_from(["monitor", "timeline", "--since", "1h", "--process", "curl"])
        else {
            panic!("expected timeline");
        };
        assert_eq!(timeline.since, Some(Duration::from_secs(3600)));
        assert_eq!(timeline.colour, ColourChoice::Auto);
        assert!(Command::try_parse_from(["monitor", "timeline", "--since", "soon"]).is_err());
        let Command::Devices(devices) =
            Command::parse_from(["monitor", "devices", "--fleet", "http://ch:8123/fleet", "--format", "csv"])
        else {
            panic!("expected devices");
        };
        assert_eq!(devices.read.fleet.url.as_deref(), Some("http://ch:8123/fleet"));
        assert_eq!(devices.read.format, Format::Csv);
        // --device is the fleet's; the local and the fleet store are one or the other.
        assert!(Command::try_parse_from(["monitor", "timeline", "--device", "a"]).is_err());
        assert!(
            Command::try_parse_from(["monitor", "devices", "--store", "x.db", "--fleet", "http://ch/f"])
                .is_err()
        );
        assert!(Command::try_parse_from(["monitor", "hunt", "--fleet-user", "u", "DeviceEvents"]).is_err());
        let Command::Timeline(timeline) =
            Command::parse_from(["monitor", "timeline", "--fleet", "http://ch:8123/fleet", "--device", "a"])
        else {
            panic!("expected timeline");
        };
        assert_eq!(timeline.device.as_deref(), Some("a"));
    }
}

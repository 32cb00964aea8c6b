//! The daemon's settings: command-line flags over the configuration file over defaults.
//!
//! Every `monitor run` flag has a key of the same name (with `_` for `-`) in the TOML file; unknown keys
//! and bad values are errors that name the key.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use monitor_hunt::time::TimespanError;
use serde::Deserialize;

use crate::cli::{DEFAULT_CONTROL, Mode, RunArgs, Uninspectable};

pub const DEFAULT_CONFIG: &str = "/etc/monitor/config.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    mode: Option<Mode>,
    cgroups: Option<Vec<PathBuf>>,
    ifaces: Option<Vec<String>>,
    events: Option<String>,
    block: Option<PathBuf>,
    allow: Option<PathBuf>,
    store: Option<PathBuf>,
    store_max_age: Option<String>,
    store_max_bytes: Option<u64>,
    uninspectable: Option<Uninspectable>,
    control: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    ring_buffer_bytes: Option<u32>,
    metrics: Option<SocketAddr>,
    hold_timeout: Option<String>,
    wire_flows: Option<u32>,
    silent_flow_timeout: Option<String>,
    device_id: Option<String>,
    export: Option<String>,
    export_creds: Option<PathBuf>,
    export_user: Option<String>,
    export_password: Option<String>,
    export_tls_ca: Option<PathBuf>,
    export_replicas: Option<usize>,
    heartbeat_interval: Option<String>,
    policy: Option<String>,
    policy_creds: Option<PathBuf>,
    policy_user: Option<String>,
    policy_password: Option<String>,
    policy_tls_ca: Option<PathBuf>,
    groups: Option<Vec<String>>,
    prefer_local_mode: Option<bool>,
}

/// Everything `monitor run` needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Option<PathBuf>,
    pub mode: Mode,
    pub cgroups: Vec<PathBuf>,
    pub ifaces: Vec<String>,
    pub events: String,
    pub block: Option<PathBuf>,
    pub allow: Option<PathBuf>,
    /// `None`: no store.
    pub store: Option<PathBuf>,
    pub store_max_age: Option<Duration>,
    pub store_max_bytes: Option<u64>,
    pub uninspectable: Uninspectable,
    pub control: PathBuf,
    pub pin_dir: Option<PathBuf>,
    pub ring_buffer_bytes: u32,
    pub metrics: Option<SocketAddr>,
    /// Block mode: how long a send may be held for the bytes that decide.
    pub hold_timeout: Duration,
    /// Gateway mode: the capacity of the kernel's forwarded-flow table.
    pub wire_flows: u32,
    /// Gateway mode, block mode: how long a forwarded flow may stay silent before its first bytes.
    pub silent_flow_timeout: Duration,
    /// `None`: /etc/machine-id.
    pub device_id: Option<String>,
    /// `None`: no export.
    pub export: Option<monitor_fleet::ExportOptions>,
    /// `None`: no fleet policy.
    pub policy: Option<monitor_fleet::policy::PolicyOptions>,
    /// The local mode wins over the fleet policy's.
    pub prefer_local_mode: bool,
    /// Whether the mode was set here (`--mode` or `mode`), not left to its default.
    pub mode_given: bool,
}

/// The default bound on a hold: far above what a real client takes to finish a request it started.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(5);
/// Forwarded flows the kernel tracks at once by default: about 8 MiB of kernel memory.
pub const DEFAULT_WIRE_FLOWS: u32 = 65_536;
/// A client that has sent nothing for an hour after its handshake is not waiting on anything real.
pub const DEFAULT_SILENT_FLOW_TIMEOUT: Duration = Duration::from_secs(3_600);
/// The kernel keeps the bound in milliseconds, in 32 bits; a day is already far beyond any use.
const HOLD_TIMEOUT_MAX: Duration = Duration::from_secs(86_400);

/// `30d`, `12h`, `15m`, `90s`, `500ms`, `1.5h` (KQL's timespans, [`monitor_hunt::time::parse_timespan_checked`]);
/// a bare number is seconds.
fn duration(key: &str, text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let with_unit = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        format!("{text}s")
    } else {
        text.to_string()
    };
    match monitor_hunt::time::parse_timespan_checked(&with_unit) {
        Ok(micros) => Ok(Duration::from_micros(micros.unsigned_abs())),
        Err(e @ (TimespanError::UnknownUnit(_) | TimespanError::TooLong)) => bail!("{key}: {text:?}: {e}"),
        Err(TimespanError::NotATimespan) => {
            bail!("{key}: {text:?} is not a duration like 30d, 12h, 15m, 90s, 500ms or 1.5h")
        }
    }
}

/// A duration given as a flag (which wins) or a configuration key, with the name it was given under,
/// for messages.
fn flag_or_key<'a>(
    flag: (&'static str, Option<&'a str>),
    key: (&'static str, Option<&'a str>),
) -> anyhow::Result<Option<(&'static str, &'a str, Duration)>> {
    match flag.1.map(|t| (flag.0, t)).or(key.1.map(|t| (key.0, t))) {
        Some((name, text)) => Ok(Some((name, text, duration(name, text)?))),
        None => Ok(None),
    }
}

/// `path` with `suffix` added to its file name (`events.db` → `events.db.fleet-policy.json`).
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// A file that sets policy must not be writable by anyone but root: whoever can write it can disable
/// protection.
pub fn check_owner(what: &str, path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        bail!(
            "{what} {} must be owned by root and not writable by group or others (it is uid {}, mode {:o}); \
             fix with `chown root {0} && chmod go-w {0}`",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

impl Settings {
    pub fn resolve(args: &RunArgs) -> anyhow::Result<Settings> {
        let (config, file) = match &args.config {
            Some(path) => (Some(path.clone()), Some(path.clone())),
            None if Path::new(DEFAULT_CONFIG).exists() => {
                (Some(PathBuf::from(DEFAULT_CONFIG)), Some(PathBuf::from(DEFAULT_CONFIG)))
            }
            None => (None, None),
        };
        let file: ConfigFile = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read the configuration file {}", path.display()))?;
                check_owner("the configuration file", path)?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => ConfigFile::default(),
        };
        let ConfigFile {
            mode,
            cgroups,
            ifaces,
            events,
            block,
            allow,
            store,
            store_max_age,
            store_max_bytes,
            uninspectable,
            control,
            pin_dir,
            ring_buffer_bytes,
            metrics,
            hold_timeout,
            wire_flows,
            silent_flow_timeout,
            device_id,
            export,
            export_creds,
            export_user,
            export_password,
            export_tls_ca,
            export_replicas,
            heartbeat_interval,
            policy,
            policy_creds,
            policy_user,
            policy_password,
            policy_tls_ca,
            groups,
            prefer_local_mode,
        } = file;
        let ring_buffer_bytes = match (args.ring_buffer_bytes, ring_buffer_bytes) {
            (Some(n), _) => n,
            (None, Some(n)) => crate::cli::ring_size(&n.to_string())
                .map_err(|e| anyhow::anyhow!("ring_buffer_bytes: {e}"))?,
            (None, None) => 16 << 20,
        };
        let store = args.store.clone().or(store);
        let store = match store {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some(p),
            None => Some(monitor_hunt::default_store_path()),
        };
        let store_max_age = flag_or_key(
            ("--store-max-age", args.store_max_age.as_deref()),
            ("store_max_age", store_max_age.as_deref()),
        )?
        .map(|(_, _, d)| d);
        let hold_timeout = match flag_or_key(
            ("--hold-timeout", args.hold_timeout.as_deref()),
            ("hold_timeout", hold_timeout.as_deref()),
        )? {
            Some((key, text, d)) if d.is_zero() || d > HOLD_TIMEOUT_MAX => {
                bail!("{key}: {text:?} must be above 0 and at most 1d")
            }
            Some((_, _, d)) => d,
            None => DEFAULT_HOLD_TIMEOUT,
        };
        let wire_flows = args.wire_flows.or(wire_flows).unwrap_or(DEFAULT_WIRE_FLOWS);
        if !(16..=(1 << 22)).contains(&wire_flows) {
            bail!("wire_flows: {wire_flows} must be 16 to 4194304");
        }
        let silent_flow_timeout = match flag_or_key(
            ("--silent-flow-timeout", args.silent_flow_timeout.as_deref()),
            ("silent_flow_timeout", silent_flow_timeout.as_deref()),
        )? {
            Some((key, text, d)) if d.is_zero() => bail!("{key}: {text:?} must be above 0"),
            Some((_, _, d)) => d,
            None => DEFAULT_SILENT_FLOW_TIMEOUT,
        };
        let device_id = args.device_id.clone().or(device_id);
        if device_id.as_deref().is_some_and(|id| id.trim().is_empty() || id.contains(':')) {
            bail!("device_id: must be non-empty and without ':' (it starts the export's message ids)");
        }
        let heartbeat_interval = match flag_or_key(
            ("--heartbeat-interval", args.heartbeat_interval.as_deref()),
            ("heartbeat_interval", heartbeat_interval.as_deref()),
        )? {
            Some((key, text, d)) if d < Duration::from_secs(1) || d > Duration::from_secs(3_600) => {
                bail!("{key}: {text:?} must be 1s to 1h")
            }
            Some((_, _, d)) => d,
            None => monitor_fleet::export::DEFAULT_HEARTBEAT_INTERVAL,
        };
        let export = match args.export.as_deref().or(export.as_deref()) {
            None => None,
            Some(urls) => {
                let servers = monitor_fleet::NatsOptions::parse_servers(urls).context("export")?;
                let replicas = args.export_replicas.or(export_replicas).unwrap_or(1);
                if !(1..=5).contains(&replicas) {
                    bail!("export_replicas: {replicas} must be 1 to 5 (JetStream's limit)");
                }
                Some(monitor_fleet::ExportOptions {
                    nats: monitor_fleet::NatsOptions {
                        servers,
                        creds: args.export_creds.clone().or(export_creds),
                        user: args.export_user.clone().or(export_user),
                        password: args.export_password.clone().or(export_password),
                        tls_ca: args.export_tls_ca.clone().or(export_tls_ca),
                    },
                    replicas,
                    heartbeat_interval,
                })
            }
        };
        let groups = if args.groups.is_empty() { groups.unwrap_or_default() } else { args.groups.clone() };
        for group in &groups {
            monitor_fleet::policy::Scope::group(group).map_err(|e| anyhow::anyhow!("groups: {e}"))?;
        }
        let policy = match args.policy.as_deref().or(policy.as_deref()) {
            None if groups.is_empty() => None,
            None => {
                bail!("groups: a group only means something with a fleet policy (policy = \"nats://...\")")
            }
            Some(urls) => Some(monitor_fleet::policy::PolicyOptions {
                nats: monitor_fleet::NatsOptions {
                    servers: monitor_fleet::NatsOptions::parse_servers(urls).context("policy")?,
                    creds: args.policy_creds.clone().or(policy_creds),
                    user: args.policy_user.clone().or(policy_user),
                    password: args.policy_password.clone().or(policy_password),
                    tls_ca: args.policy_tls_ca.clone().or(policy_tls_ca),
                },
                groups,
                // Beside the store (this daemon's own state), named after it: two daemons on one host
                // keep two copies. Without a store, named after the control socket for the same reason.
                cache: match store.as_deref() {
                    Some(store) => suffixed(store, ".fleet-policy.json"),
                    None => {
                        let control = args
                            .control
                            .clone()
                            .or(control.clone())
                            .unwrap_or_else(|| DEFAULT_CONTROL.into());
                        let name = suffixed(&control, ".fleet-policy.json");
                        PathBuf::from("/var/lib/monitor").join(name.file_name().unwrap_or_default())
                    }
                },
            }),
        };
        if export.is_some() && store.is_none() {
            bail!("export: needs the event store (it is the export's spool); remove store = \"none\"");
        }
        Ok(Settings {
            config,
            mode: args.mode.or(mode).unwrap_or(Mode::Audit),
            cgroups: if args.cgroups.is_empty() { cgroups.unwrap_or_default() } else { args.cgroups.clone() },
            ifaces: if args.ifaces.is_empty() { ifaces.unwrap_or_default() } else { args.ifaces.clone() },
            events: args.events.clone().or(events).unwrap_or_else(|| "-".into()),
            block: args.block.clone().or(block),
            allow: args.allow.clone().or(allow),
            store,
            store_max_age,
            store_max_bytes: args.store_max_bytes.or(store_max_bytes),
            uninspectable: args.uninspectable.or(uninspectable).unwrap_or(Uninspectable::Allow),
            control: args.control.clone().or(control).unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL)),
            pin_dir: args.pin_dir.clone().or(pin_dir),
            ring_buffer_bytes,
            metrics: args.metrics.or(metrics),
            hold_timeout,
            wire_flows,
            silent_flow_timeout,
            device_id,
            export,
            policy,
            prefer_local_mode: args.prefer_local_mode || prefer_local_mode.unwrap_or(false),
            mode_given: args.mode.is_some() || mode.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn every_flag_has_a_key() {
        let file = parse(
            r#"
mode = "block"
cgroups = ["/sys/fs/cgroup/a"]
ifaces = ["eth0"]
events = "/var/log/monitor.jsonl"
block = "/etc/monitor/block.txt"
allow = "/etc/monitor/allow.txt"
store = "none"
store_max_age = "30d"
store_max_bytes = 1000000
uninspectable = "block"
control = "/run/m.sock"
pin_dir = "/sys/fs/bpf/m"
ring_buffer_bytes = 65536
metrics = "127.0.0.1:9900"
hold_timeout = "2s"
wire_flows = 131072
silent_flow_timeout = "30m"
device_id = "web-1"
export = "nats://127.0.0.1:4222"
export_creds = "/etc/monitor/nats.creds"
export_user = "agent"
export_password = "secret"
export_tls_ca = "/etc/monitor/ca.pem"
export_replicas = 3
heartbeat_interval = "10s"
policy = "nats://127.0.0.1:4222"
policy_creds = "/etc/monitor/policy.creds"
policy_user = "agent"
policy_password = "secret"
policy_tls_ca = "/etc/monitor/ca.pem"
groups = ["web", "eu-west"]
prefer_local_mode = true
"#,
        )
        .expect("valid configuration");
        assert_eq!(file.groups, Some(vec!["web".to_string(), "eu-west".to_string()]));
        assert_eq!(file.mode, Some(Mode::Block));
        assert_eq!(file.metrics, Some("127.0.0.1:9900".parse().expect("address")));
    }

    #[test]
    fn the_packaged_configuration_parses() {
        let file = parse(include_str!("../../../packaging/config.toml")).expect("packaging/config.toml");
        assert_eq!(file.mode, Some(Mode::Audit));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = parse("modes = \"block\"\n").expect_err("unknown key").to_string();
        assert!(err.contains("modes"), "{err}");
        let err = parse("mode = \"blok\"\n").expect_err("bad value").to_string();
        assert!(err.contains("mode") && err.contains("blok"), "{err}");
        let err = parse("ring_buffer_bytes = \"big\"\n").expect_err("bad type").to_string();
        assert!(err.contains("ring_buffer_bytes"), "{err}");
        assert!(duration("store_max_age", "3w").unwrap_err().to_string().contains("store_max_age"));
        assert_eq!(duration("k", "2h").expect("2h"), Duration::from_secs(7200));
        assert_eq!(duration("k", "750ms").expect("750ms"), Duration::from_millis(750));
        let (name, _, d) =
            flag_or_key(("--x", Some("2s")), ("x", Some("3s"))).expect("valid").expect("given");
        assert_eq!((name, d), ("--x", Duration::from_secs(2)), "the flag wins");
        let (name, _, _) = flag_or_key(("--x", None), ("x", Some("3s"))).expect("valid").expect("given");
        assert_eq!(name, "x");
        let err = flag_or_key(("--x", None), ("x", Some("soon"))).expect_err("bad value").to_string();
        assert!(err.starts_with("x:"), "names the key: {err}");
        assert!(
            duration("hold_timeout", "99999999999999999999999d")
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
        assert_eq!(duration("k", "90").expect("a bare number"), Duration::from_secs(90), "seconds");
        assert_eq!(duration("k", "1.5h").expect("1.5h"), Duration::from_secs(5400));
        let err = duration("k", "2 fortnights").unwrap_err().to_string();
        assert!(err.contains("unknown unit") && err.starts_with("k:"), "{err}");
    }
}

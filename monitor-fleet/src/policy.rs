//! Fleet policy (issue 16): indicator lists and the protection mode, set once for the whole fleet or for
//! a named group in the NATS KV bucket `MONITOR_POLICY`. Every agent started with `--policy` watches the
//! bucket and applies each change to its kernel maps; it keeps the last set it applied on disk, so that an
//! agent restarted while NATS is down enforces it.
//!
//! One key per indicator, so that adding or removing one is a single put or delete and two operators never
//! overwrite each other's lists:
//! - `fleet.block.<indicator>`, `fleet.allow.<indicator>`, `fleet.mode`
//! - `group.<NAME>.block.<indicator>`, `group.<NAME>.allow.<indicator>`, `group.<NAME>.mode`
//!
//! An indicator's key is its text with every byte other than `[A-Za-z0-9-]` (and a `.` between two of
//! those) written `=XX`; the value is the indicator's text, which is what counts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use monitor_core::policy::{Indicator, ListKind};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::FleetError;
use crate::nats::NatsOptions;

/// The KV bucket of the fleet's policy.
pub const POLICY_BUCKET: &str = "MONITOR_POLICY";
/// Changes that arrive together (a list added in one command) are applied together: the watcher waits
/// this long after the last one before it applies.
const SETTLE: Duration = Duration::from_millis(20);
/// Waits between attempts to reach NATS: doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(4));
/// How often the watcher checks that its connection is up (a watch does not end when the link drops).
const LINK_CHECK: Duration = Duration::from_millis(500);

/// Who a setting is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    Fleet,
    Group(String),
}

impl Scope {
    /// A group named by `monitor run --group` or `--group` of the policy commands: letters, digits, `_`
    /// and `-`, 1 to 64 of them (it is one token of a NATS subject).
    pub fn group(name: &str) -> Result<Scope, FleetError> {
        let ok = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(FleetError::Config(format!(
                "group {name:?}: use 1 to 64 letters, digits, '_' or '-'"
            )));
        }
        Ok(Scope::Group(name.to_string()))
    }

    fn prefix(&self) -> String {
        match self {
            Scope::Fleet => "fleet".into(),
            Scope::Group(name) => format!("group.{name}"),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Fleet => f.write_str("the fleet"),
            Scope::Group(name) => write!(f, "group {name}"),
        }
    }
}

/// The protection mode as the fleet sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetMode {
    Off,
    Audit,
    Block,
}

impl FleetMode {
    pub fn parse(text: &str) -> Option<FleetMode> {
        match text.trim() {
            "off" => Some(FleetMode::Off),
            "audit" => Some(FleetMode::Audit),
            "block" => Some(FleetMode::Block),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FleetMode::Off => "off",
            FleetMode::Audit => "audit",
            FleetMode::Block => "block",
        }
    }
}

/// The key of `indicator` on `kind`'s list of `scope`.
pub fn indicator_key(scope: &Scope, kind: ListKind, indicator: &Indicator) -> String {
    let text = indicator.to_string();
    let bytes = text.as_bytes();
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
    let mut token = String::with_capacity(text.len() + 8);
    for (i, &b) in bytes.iter().enumerate() {
        let between = i > 0 && i + 1 < bytes.len() && plain(bytes[i - 1]) && plain(bytes[i + 1]);
        if plain(b) || (b == b'.' && between) {
            token.push(b as char);
        } else {
            token.push_str(&format!("={b:02X}"));
        }
    }
    format!("{}.{kind}.{token}", scope.prefix())
}

/// The key of `scope`'s mode.
pub fn mode_key(scope: &Scope) -> String {
    format!("{}.mode", scope.prefix())
}

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    Indicator(Scope, ListKind),
    Mode(Scope),
}

fn parse_key(key: &str) -> Option<Setting> {
    let (scope, rest) = match key.strip_prefix("fleet.") {
        Some(rest) => (Scope::Fleet, rest),
        None => {
            let (group, rest) = key.strip_prefix("group.")?.split_once('.')?;
            (Scope::group(group).ok()?, rest)
        }
    };
    if rest == "mode" {
        return Some(Setting::Mode(scope));
    }
    let (kind, token) = rest.split_once('.')?;
    (!token.is_empty()).then_some(())?;
    Some(Setting::Indicator(scope, ListKind::from_name(kind)?))
}

/// What the bucket holds, as an agent last saw it: every live key and its value, and the bucket's
/// revision (its stream sequence) at that point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    pub revision: u64,
    pub entries: BTreeMap<String, String>,
}

impl PolicyState {
    pub fn put(&mut self, key: &str, value: &str, revision: u64) {
        self.entries.insert(key.to_string(), value.to_string());
        self.revision = self.revision.max(revision);
    }

    pub fn delete(&mut self, key: &str, revision: u64) {
        self.entries.remove(key);
        self.revision = self.revision.max(revision);
    }

    /// One entry of a watch of the bucket: a put, or a delete or purge.
    fn apply(&mut self, entry: &kv::Entry) {
        match entry.operation {
            kv::Operation::Put => {
                self.put(&entry.key, &String::from_utf8_lossy(&entry.value), entry.revision)
            }
            kv::Operation::Delete | kv::Operation::Purge => self.delete(&entry.key, entry.revision),
        }
    }

    /// What applies to an agent in `groups`: the fleet's entries and its groups'. A group's mode wins over
    /// the fleet's; of several groups' modes the strictest. An entry whose value is no indicator or no mode
    /// is reported, not applied.
    pub fn effective(&self, groups: &[String]) -> FleetPolicy {
        let mine = |scope: &Scope| match scope {
            Scope::Fleet => true,
            Scope::Group(name) => groups.iter().any(|g| g == name),
        };
        let mut policy = FleetPolicy { revision: self.revision, ..FleetPolicy::default() };
        let (mut fleet_mode, mut group_mode) = (None, None::<FleetMode>);
        for (key, value) in &self.entries {
            match parse_key(key) {
                Some(Setting::Indicator(scope, kind)) if mine(&scope) => match Indicator::parse(value.trim())
                {
                    Ok(indicator) => match kind {
                        ListKind::Block => policy.block.push(indicator),
                        ListKind::Allow => policy.allow.push(indicator),
                    },
                    Err(reason) => policy.invalid.push(format!("{key}: {reason}: {value:?}")),
                },
                Some(Setting::Mode(scope)) if mine(&scope) => match (FleetMode::parse(value), &scope) {
                    (Some(mode), Scope::Fleet) => fleet_mode = Some(mode),
                    (Some(mode), Scope::Group(_)) => group_mode = group_mode.max(Some(mode)),
                    (None, _) => policy.invalid.push(format!("{key}: not off, audit or block: {value:?}")),
                },
                // Another group's, or a key this version does not know.
                _ => {}
            }
        }
        policy.mode = group_mode.or(fleet_mode);
        policy
    }

    /// The state kept on disk, if there is one.
    pub fn load(path: &Path) -> Result<Option<PolicyState>, FleetError> {
        let io =
            |source| FleetError::Io { what: format!("read the fleet policy {}", path.display()), source };
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                FleetError::Config(format!("the fleet policy {} is not valid: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// Keeps the state on disk (written beside, then renamed: a crash leaves the old file or the new one).
    pub fn save(&self, path: &Path) -> Result<(), FleetError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let io =
            |source| FleetError::Io { what: format!("write the fleet policy {}", path.display()), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let partial = path.with_extension("json.partial");
        let text = serde_json::to_string(self).map_err(|e| FleetError::Config(e.to_string()))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(io)?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(io)?;
        std::fs::rename(&partial, path).map_err(io)
    }
}

/// The policy that applies to one agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetPolicy {
    pub revision: u64,
    pub block: Vec<Indicator>,
    pub allow: Vec<Indicator>,
    pub mode: Option<FleetMode>,
    /// Entries that are not valid, with the reason: reported, not applied.
    pub invalid: Vec<String>,
}

/// Where an applied policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicySource {
    /// The copy on disk, at start (NATS may be down).
    Disk,
    Nats,
}

/// What the watcher tells the daemon.
#[derive(Debug, Clone)]
pub enum PolicyEvent {
    Apply(FleetPolicy, PolicySource),
    Link { connected: bool, error: Option<String> },
}

/// What `monitor run --policy` was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOptions {
    pub nats: NatsOptions,
    pub groups: Vec<String>,
    /// Where the last applied state is kept.
    pub cache: PathBuf,
}

/// The agent's side: watches the bucket and sends every change, reconnecting (and catching up from a
/// fresh snapshot) after any failure; each state it sends is first kept at `options.cache`. The caller
/// applies the copy there itself at start ([`PolicyState::load`]), before anything is attached. Runs until
/// `events` closes.
pub async fn watch(options: PolicyOptions, events: UnboundedSender<PolicyEvent>) {
    let mut wait = BACKOFF.0;
    while !events.is_closed() {
        let error = match session(&options, &events, &mut wait).await {
            Ok(()) => return,
            Err(e) => e,
        };
        let _ = events.send(PolicyEvent::Link { connected: false, error: Some(error.to_string()) });
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(BACKOFF.1);
    }
}

/// One connection: a snapshot of the bucket, then its changes. `Ok` only when the daemon stops. Once
/// connected, the next failure's wait starts again from the shortest.
async fn session(
    options: &PolicyOptions,
    events: &UnboundedSender<PolicyEvent>,
    wait: &mut Duration,
) -> Result<(), FleetError> {
    let client = options.nats.connect("monitor-policy").await?;
    let store = jetstream::new(client.clone()).get_key_value(POLICY_BUCKET).await.map_err(|e| {
        FleetError::Nats(format!(
            "open the bucket {POLICY_BUCKET} (set a policy first, e.g. `monitor policy mode`): {e}"
        ))
    })?;
    let mut changes = store
        .watch_with_history(">")
        .await
        .map_err(|e| FleetError::Nats(format!("watch {POLICY_BUCKET}: {e}")))?;
    // Asked after the watch exists: an empty bucket now delivers nothing to wait for; one with values
    // delivers them all, the last with nothing pending after it.
    let empty =
        store.status().await.map_err(|e| FleetError::Nats(format!("{POLICY_BUCKET}: {e}")))?.values() == 0;
    let _ = events.send(PolicyEvent::Link { connected: true, error: None });
    *wait = BACKOFF.0;
    let mut state = PolicyState::default();
    // Until the snapshot is whole nothing is applied: a part of the lists is not the policy.
    let mut current = empty;
    let mut unapplied = empty;
    let mut link = tokio::time::interval(LINK_CHECK);
    loop {
        let settle = async {
            if unapplied && current { tokio::time::sleep(SETTLE).await } else { std::future::pending().await }
        };
        tokio::select! {
            change = changes.next() => match change {
                Some(Ok(entry)) => {
                    state.apply(&entry);
                    current |= entry.delta == 0 || entry.seen_current;
                    unapplied = true;
                }
                Some(Err(e)) => return Err(FleetError::Nats(format!("watch {POLICY_BUCKET}: {e}"))),
                None => return Err(FleetError::Nats(format!("the watch of {POLICY_BUCKET} ended"))),
            },
            () = settle => {
                unapplied = false;
                if let Err(e) = state.save(&options.cache) {
                    let _ = events.send(PolicyEvent::Link { connected: true, error: Some(e.to_string()) });
                }
                if events.send(PolicyEvent::Apply(state.effective(&options.groups), PolicySource::Nats)).is_err() {
                    return Ok(());
                }
            }
            _ = link.tick() => {
                if events.is_closed() {
                    return Ok(());
                }
                if client.connection_state() == async_nats::connection::State::Disconnected {
                    return Err(FleetError::Nats("the connection to NATS is lost".into()));
                }
            }
        }
    }
}

/// The bucket if it exists (a reader's side: nothing is created).
pub async fn existing_bucket(nats: &NatsOptions) -> Result<Option<kv::Store>, FleetError> {
    let js = jetstream::new(nats.connect("monitor-policy-reader").await?);
    // Absent is an answer; a NATS that does not answer is an error.
    match js.get_stream(format!("KV_{POLICY_BUCKET}")).await {
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(FleetError::Nats(format!("look for the bucket {POLICY_BUCKET}: {e}"))),
        Ok(_) => {}
    }
    js.get_key_value(POLICY_BUCKET)
        .await
        .map(Some)
        .map_err(|e| FleetError::Nats(format!("open the bucket {POLICY_BUCKET}: {e}")))
}

/// The operators' side: the bucket, created when absent (with `replicas`).
pub async fn open_bucket(nats: &NatsOptions, replicas: usize) -> Result<kv::Store, FleetError> {
    let js = jetstream::new(nats.connect("monitor-policy-admin").await?);
    if let Ok(store) = js.get_key_value(POLICY_BUCKET).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: POLICY_BUCKET.into(),
        description: "monitor: fleet indicators and modes".into(),
        history: 5,
        num_replicas: replicas,
        ..kv::Config::default()
    })
    .await
    .map_err(|e| FleetError::Nats(format!("create the bucket {POLICY_BUCKET}: {e}")))
}

/// Adds (`add`) or removes indicators of `kind` for `scope`. Returns the bucket's revision after the change.
pub async fn change_indicators(
    store: &kv::Store,
    scope: &Scope,
    kind: ListKind,
    indicators: &[Indicator],
    add: bool,
) -> Result<u64, FleetError> {
    let mut revision = 0;
    for indicator in indicators {
        let key = indicator_key(scope, kind, indicator);
        if add {
            revision = store
                .put(&key, indicator.to_string().into())
                .await
                .map_err(|e| FleetError::Nats(format!("put {key}: {e}")))?;
        } else {
            store.delete(&key).await.map_err(|e| FleetError::Nats(format!("delete {key}: {e}")))?;
        }
    }
    if !add {
        revision =
            store.status().await.map_err(|e| FleetError::Nats(e.to_string()))?.info.state.last_sequence;
    }
    Ok(revision)
}

/// Sets `scope`'s mode. Returns the bucket's revision after the change.
pub async fn set_mode(store: &kv::Store, scope: &Scope, mode: FleetMode) -> Result<u64, FleetError> {
    let key = mode_key(scope);
    store.put(&key, mode.name().into()).await.map_err(|e| FleetError::Nats(format!("put {key}: {e}")))
}

/// What the bucket holds now.
pub async fn snapshot(store: &kv::Store) -> Result<PolicyState, FleetError> {
    let mut state = PolicyState::default();
    if store.status().await.map_err(|e| FleetError::Nats(e.to_string()))?.values() == 0 {
        return Ok(state);
    }
    let mut entries = store.watch_with_history(">").await.map_err(|e| FleetError::Nats(e.to_string()))?;
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| FleetError::Nats(e.to_string()))?;
        state.apply(&entry);
        if entry.delta == 0 {
            break;
        }
    }
    Ok(state)
}

/// The lists and modes of `state`, one line each: `<scope> <list|mode> <value>`.
pub fn describe(state: &PolicyState) -> Vec<String> {
    state
        .entries
        .iter()
        .filter_map(|(key, value)| {
            Some(match parse_key(key)? {
                Setting::Indicator(scope, kind) => format!("{} {kind} {value}", scope_word(&scope)),
                Setting::Mode(scope) => format!("{} mode {value}", scope_word(&scope)),
            })
        })
        .collect()
}

fn scope_word(scope: &Scope) -> String {
    match scope {
        Scope::Fleet => "fleet".into(),
        Scope::Group(name) => format!("group:{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ind(text: &str) -> Indicator {
        Indicator::parse(text).expect("an indicator")
    }

    #[test]
    fn keys_are_valid_nats_keys_and_name_their_setting() {
        let web = Scope::group("web").expect("a group");
        for (scope, text) in [
            (&Scope::Fleet, "denied.example.test"),
            (&web, "bücher.example"),
            (&Scope::Fleet, "2001:db8::/32"),
            (&web, "10.0.0.0/8"),
            (&Scope::Fleet, "a-b.c"),
        ] {
            let key = indicator_key(scope, ListKind::Block, &ind(text));
            assert!(
                !key.starts_with('.')
                    && !key.ends_with('.')
                    && !key.contains("..")
                    && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
                "{key}"
            );
            assert_eq!(parse_key(&key), Some(Setting::Indicator(scope.clone(), ListKind::Block)), "{key}");
        }
        assert_eq!(
            indicator_key(&Scope::Fleet, ListKind::Allow, &ind("Example.COM.")),
            "fleet.allow.example.com"
        );
        assert_eq!(
            indicator_key(&web, ListKind::Block, &ind("2001:db8::/32")),
            "group.web.block.2001=3Adb8=3A=3A=2F32"
        );
        assert_eq!(parse_key(&mode_key(&web)), Some(Setting::Mode(web)));
        assert_eq!(parse_key("fleet.deny.x"), None, "an unknown list");
        assert_eq!(parse_key("group.a b.mode"), None, "not a group name");
        assert!(
            Scope::group("a.b").is_err()
                && Scope::group("").is_err()
                && Scope::group(&"x".repeat(65)).is_err()
        );
    }

    #[test]
    fn an_agent_gets_the_fleets_and_its_groups_settings_with_a_groups_mode_first() {
        let mut state = PolicyState::default();
        let web = Scope::group("web").expect("a group");
        let db = Scope::group("db").expect("a group");
        let put = |state: &mut PolicyState, key: String, value: &str, rev: u64| state.put(&key, value, rev);
        put(&mut state, indicator_key(&Scope::Fleet, ListKind::Block, &ind("x.test")), "x.test", 1);
        put(&mut state, indicator_key(&web, ListKind::Block, &ind("y.test")), "y.test", 2);
        put(&mut state, indicator_key(&db, ListKind::Allow, &ind("z.test")), "z.test", 3);
        put(&mut state, mode_key(&Scope::Fleet), "block", 4);
        put(&mut state, mode_key(&web), "audit", 5);
        put(&mut state, mode_key(&db), "off", 6);
        put(&mut state, "fleet.block.bad".into(), "not a domain!", 7);

        let plain = state.effective(&[]);
        assert_eq!(
            (plain.block, plain.allow, plain.mode),
            (vec![ind("x.test")], vec![], Some(FleetMode::Block))
        );
        assert_eq!(plain.revision, 7);
        assert_eq!(plain.invalid.len(), 1, "{:?}", plain.invalid);

        let groups = |names: &str| names.split(',').map(str::to_string).collect::<Vec<_>>();
        let in_web = state.effective(&groups("web"));
        assert_eq!(in_web.block, vec![ind("x.test"), ind("y.test")]);
        assert_eq!(in_web.mode, Some(FleetMode::Audit), "the group's mode wins over the fleet's");
        let in_both = state.effective(&groups("web,db"));
        assert_eq!(in_both.allow, vec![ind("z.test")]);
        assert_eq!(in_both.mode, Some(FleetMode::Audit), "of two groups' modes, the strictest");

        state.delete(&mode_key(&Scope::Fleet), 8);
        state.delete(&indicator_key(&Scope::Fleet, ListKind::Block, &ind("x.test")), 9);
        let after = state.effective(&[]);
        assert_eq!((after.block.len(), after.mode, after.revision), (0, None, 9));
        assert_eq!(describe(&state).len(), 5, "{:?}", describe(&state));
    }

    #[test]
    fn the_state_survives_on_disk_and_a_bad_file_is_an_error() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("state/fleet-policy.json");
        assert_eq!(PolicyState::load(&path).expect("no file yet"), None);
        let mut state = PolicyState::default();
        state.put("fleet.block.x.test", "x.test", 42);
        state.save(&path).expect("save");
        assert_eq!(PolicyState::load(&path).expect("load"), Some(state));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "{not json").expect("write");
        let err = PolicyState::load(&path).expect_err("a bad file").to_string();
        assert!(err.contains("is not valid"), "{err}");
    }
}

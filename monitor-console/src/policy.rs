//! The fleet's policy as the console shows it, and the only writes the console makes: indicators and
//! modes in `MONITOR_POLICY` (NATS KV), and only when started with `--allow-policy-edits`. A change goes
//! through the same functions as `monitor indicators ... --fleet` and `monitor policy mode`.

use monitor_core::policy::{Indicator, ListKind};
use monitor_fleet::NatsOptions;
use monitor_fleet::policy::{self, FleetMode, Scope};
use serde::Deserialize;
use serde_json::{Value as Json, json};

/// Where the policy is, and whether the console may change it.
#[derive(Debug, Clone)]
pub struct PolicyAccess {
    pub nats: NatsOptions,
    /// Replicas of the bucket when the console's first change creates it.
    pub replicas: usize,
    pub editable: bool,
}

/// A change the page asks for.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum PolicyEdit {
    /// Add (or with `remove: true`, remove) one indicator of a list.
    Indicator {
        list: String,
        value: String,
        #[serde(default)]
        remove: bool,
        #[serde(default)]
        group: Option<String>,
    },
    Mode {
        mode: String,
        #[serde(default)]
        group: Option<String>,
    },
}

fn scope(group: Option<&str>) -> Result<Scope, String> {
    match group.map(str::trim).filter(|g| !g.is_empty()) {
        Some(name) => Scope::group(name).map_err(|e| e.to_string()),
        None => Ok(Scope::Fleet),
    }
}

/// A checked change: what is written, and to which scope.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Indicator { scope: Scope, kind: ListKind, indicator: Indicator, add: bool },
    Mode { scope: Scope, mode: FleetMode },
}

impl PolicyEdit {
    /// Checks every value before anything is written.
    pub fn check(&self) -> Result<Change, String> {
        match self {
            PolicyEdit::Indicator { list, value, remove, group } => Ok(Change::Indicator {
                scope: scope(group.as_deref())?,
                kind: ListKind::from_name(list).ok_or_else(|| format!("list {list:?}: allow or block"))?,
                indicator: Indicator::parse(value.trim()).map_err(|reason| format!("{value:?}: {reason}"))?,
                add: !remove,
            }),
            PolicyEdit::Mode { mode, group } => Ok(Change::Mode {
                scope: scope(group.as_deref())?,
                mode: FleetMode::parse(mode).ok_or_else(|| format!("mode {mode:?}: block, audit or off"))?,
            }),
        }
    }
}

/// The bucket's revision and its entries, one line each (`<scope> <list|mode> <value>`). Reading never
/// creates the bucket: a fleet without one has an empty policy.
pub async fn show(access: &PolicyAccess) -> anyhow::Result<Json> {
    let state = match policy::existing_bucket(&access.nats).await? {
        Some(store) => policy::snapshot(&store).await?,
        None => policy::PolicyState::default(),
    };
    Ok(
        json!({ "editable": access.editable, "revision": state.revision, "entries": policy::describe(&state) }),
    )
}

/// Writes `change`; answers the new revision.
pub async fn apply(access: &PolicyAccess, change: &Change) -> anyhow::Result<u64> {
    let store = policy::open_bucket(&access.nats, access.replicas).await?;
    Ok(match change {
        Change::Indicator { scope, kind, indicator, add } => {
            policy::change_indicators(&store, scope, *kind, std::slice::from_ref(indicator), *add).await?
        }
        Change::Mode { scope, mode } => policy::set_mode(&store, scope, *mode).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_are_checked_before_anything_is_written() {
        let edit: PolicyEdit =
            serde_json::from_str(r#"{"op":"indicator","list":"block","value":"Bad.Example."}"#)
                .expect("json");
        let Ok(Change::Indicator { scope, kind, add, .. }) = edit.check() else { panic!("{edit:?}") };
        assert_eq!((scope, kind, add), (Scope::Fleet, ListKind::Block, true));
        let mode: PolicyEdit =
            serde_json::from_str(r#"{"op":"mode","mode":"audit","group":"web"}"#).expect("json");
        assert_eq!(
            mode.check(),
            Ok(Change::Mode { scope: Scope::Group("web".into()), mode: FleetMode::Audit })
        );
        for bad in [
            r#"{"op":"indicator","list":"deny","value":"x.example"}"#,
            r#"{"op":"indicator","list":"block","value":""}"#,
            r#"{"op":"indicator","list":"block","value":"x.example","group":"no spaces"}"#,
            r#"{"op":"mode","mode":"loud"}"#,
        ] {
            let edit: PolicyEdit = serde_json::from_str(bad).expect("json");
            assert!(edit.check().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<PolicyEdit>(r#"{"op":"drop"}"#).is_err());
    }
}

//! `monitor indicators ... --fleet` and `monitor policy`: the command line's side of the fleet policy
//! (`monitor_fleet::policy` keeps the bucket's layout).

use std::process::ExitCode;

use anyhow::Context as _;
use monitor_core::policy::ListKind;
use monitor_fleet::{NatsOptions, cli::PolicyChange, policy::FleetMode};

use crate::cli::{FleetTarget, IndicatorOp, ListArg, Mode, PolicyArgs, PolicyOp};

fn nats(target: &FleetTarget) -> anyhow::Result<NatsOptions> {
    let urls = target.fleet.as_deref().context("the fleet's policy needs --fleet nats://HOST:PORT")?;
    Ok(NatsOptions {
        servers: NatsOptions::parse_servers(urls).context("--fleet")?,
        creds: target.nats_creds.clone(),
        user: target.nats_user.clone(),
        password: target.nats_password.clone(),
        tls_ca: target.nats_tls_ca.clone(),
    })
}

fn kind(list: ListArg) -> ListKind {
    match list {
        ListArg::Allow => ListKind::Allow,
        ListArg::Block => ListKind::Block,
    }
}

/// `monitor indicators add|remove|list ... --fleet URLS [--group NAME]`.
pub fn indicators(op: IndicatorOp, target: &FleetTarget) -> anyhow::Result<ExitCode> {
    let change = match op {
        IndicatorOp::Add { list, values } => PolicyChange::Indicators { kind: kind(list), values, add: true },
        IndicatorOp::Remove { list, values } => {
            PolicyChange::Indicators { kind: kind(list), values, add: false }
        }
        IndicatorOp::List { list } => PolicyChange::List(list.map(kind)),
    };
    monitor_fleet::cli::policy(&nats(target)?, target.replicas, target.group.as_deref(), change)?;
    Ok(ExitCode::SUCCESS)
}

/// `monitor policy mode|show --fleet URLS [--group NAME]`.
pub fn policy(args: PolicyArgs) -> anyhow::Result<ExitCode> {
    let change = match args.op {
        PolicyOp::Mode { mode } => PolicyChange::Mode(match mode {
            Mode::Off => FleetMode::Off,
            Mode::Audit => FleetMode::Audit,
            Mode::Block => FleetMode::Block,
        }),
        PolicyOp::Show => PolicyChange::Show,
    };
    monitor_fleet::cli::policy(
        &nats(&args.fleet)?,
        args.fleet.replicas,
        args.fleet.group.as_deref(),
        change,
    )?;
    Ok(ExitCode::SUCCESS)
}

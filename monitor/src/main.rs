//! `monitor`: the daemon and its command line.

mod cli;
#[cfg(target_os = "linux")]
mod daemon;
#[cfg(target_os = "linux")]
mod fleet_policy;
mod logging;
mod replay;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    logging::init();
    let cli = cli::Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the command: the one place that reaches every part (the command line's types stay in `cli`).
fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Replay(args) => crate::replay::run(&args),
        #[cfg(target_os = "linux")]
        Command::Hunt(args) if args.read.fleet.url.is_some() => {
            monitor_fleet::hunt::hunt(&args, &mut std::io::stdout().lock()).map(|_| ExitCode::SUCCESS)
        }
        #[cfg(target_os = "linux")]
        Command::Timeline(args) if args.fleet.url.is_some() => {
            monitor_fleet::views::timeline_cli(&args, &mut std::io::stdout().lock())
                .map(|_| ExitCode::SUCCESS)
        }
        #[cfg(target_os = "linux")]
        Command::Devices(args) if args.read.fleet.url.is_some() => {
            monitor_fleet::views::devices_cli(&args, &mut std::io::stdout().lock()).map(|_| ExitCode::SUCCESS)
        }
        #[cfg(not(target_os = "linux"))]
        Command::Hunt(monitor_hunt::cli::HuntArgs {
            read: monitor_hunt::cli::ReadArgs { fleet: monitor_hunt::cli::FleetArgs { url: Some(_), .. }, .. },
            ..
        })
        | Command::Timeline(monitor_hunt::cli::TimelineArgs {
            fleet: monitor_hunt::cli::FleetArgs { url: Some(_), .. },
            ..
        })
        | Command::Devices(monitor_hunt::cli::DevicesArgs {
            read: monitor_hunt::cli::ReadArgs { fleet: monitor_hunt::cli::FleetArgs { url: Some(_), .. }, .. },
            ..
        }) => anyhow::bail!("--fleet runs on Linux only for now"),
        Command::Hunt(args) => {
            monitor_hunt::cli::hunt(&args, &mut std::io::stdout().lock()).map(|_| ExitCode::SUCCESS)
        }
        Command::Timeline(args) => {
            monitor_hunt::cli::timeline(&args, &mut std::io::stdout().lock()).map(|_| ExitCode::SUCCESS)
        }
        Command::Devices(args) => {
            monitor_hunt::cli::devices(&args, &mut std::io::stdout().lock()).map(|_| ExitCode::SUCCESS)
        }
        #[cfg(target_os = "linux")]
        Command::Ingest(args) => monitor_fleet::cli::ingest(&args).map(|()| ExitCode::SUCCESS),
        #[cfg(target_os = "linux")]
        Command::Console(args) => monitor_console::run(&args).map(|()| ExitCode::SUCCESS),
        #[cfg(target_os = "linux")]
        Command::Run(args) => crate::daemon::run(*args),
        #[cfg(target_os = "linux")]
        Command::Indicators(args) if args.fleet.fleet.is_some() || args.fleet.group.is_some() => {
            crate::fleet_policy::indicators(args.op, &args.fleet)
        }
        #[cfg(target_os = "linux")]
        Command::Indicators(args) => crate::daemon::control::indicators(args),
        #[cfg(target_os = "linux")]
        Command::Policy(args) => crate::fleet_policy::policy(args),
        #[cfg(target_os = "linux")]
        Command::Status(args) => crate::daemon::control::status(args),
        #[cfg(target_os = "linux")]
        Command::Probe => crate::daemon::probe::run(),
        #[cfg(target_os = "linux")]
        Command::Detach(args) => crate::daemon::detach(args),
        #[cfg(not(target_os = "linux"))]
        Command::Run(_)
        | Command::Indicators(_)
        | Command::Policy(_)
        | Command::Status(_)
        | Command::Probe
        | Command::Detach(_) => {
            anyhow::bail!("the daemon runs on Linux only; replay, hunt and timeline work here")
        }
    }
}

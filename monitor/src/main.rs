//! `monitor`: the daemon and its command line.

mod cli;
#[cfg(target_os = "linux")]
mod daemon;
mod logging;
mod replay;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    logging::init();
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

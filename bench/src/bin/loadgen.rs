//! `loadgen`: see [`bench::loadgen`]. Runs inside the client namespace and a watched cgroup.

#![expect(unused_crate_dependencies, reason = "a binary of the package sees every dependency of its library")]

use anyhow::Context as _;
use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let args = bench::loadgen::LoadArgs::parse();
    let report = bench::loadgen::run(&args)?;
    println!("{}", serde_json::to_string(&report).context("encode the report")?);
    Ok(())
}

//! `bench`: the driver of `cargo xtask bench` (see [`bench::driver`]). Needs root.

use std::path::PathBuf;

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let args = bench::driver::Args::parse();
    let results = match &args.render {
        Some(json) => bench::driver::load(json)?,
        None => bench::driver::run(&args)?,
    };
    let dir = args.out.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    bench::driver::write(&results, &dir, args.render.is_some())?;
    println!("{}", results.markdown());
    eprintln!("bench: results in {}", dir.display());
    Ok(())
}

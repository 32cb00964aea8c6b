//! `bench`: the driver of `cargo xtask bench` (see [`bench::driver`]). Needs root.

#![expect(unused_crate_dependencies, reason = "a binary of the package sees every dependency of its library")]

use std::path::PathBuf;

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let args = bench::driver::Args::parse();
    let dir = args.out.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    let earlier = dir.join("latest.json");
    let results = match &args.render {
        Some(json) => bench::driver::load(json)?,
        // The fleet or gateway figures alone replace their sections of the results already there.
        None if !args.merged_sections().is_empty() && earlier.exists() => {
            let earlier = bench::driver::load(&earlier)?;
            bench::driver::merge_sections(earlier, bench::driver::run(&args)?, &args.merged_sections())
        }
        None => bench::driver::run(&args)?,
    };
    bench::driver::write(&results, &dir, args.render.is_some())?;
    println!("{}", results.markdown());
    eprintln!("bench: results in {}", dir.display());
    Ok(())
}

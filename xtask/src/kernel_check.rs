//! `cargo xtask kernel-check`: boot Debian's kernels under qemu with a small initramfs (busybox, the
//! release daemon and its shared libraries) whose /init runs `monitor probe`, then print which programs
//! each kernel's verifier accepts, beside this machine's own kernel.
//!
//! It fails when a kernel gives no probe report (no boot, a panic, the timeout), and with
//! `require_all` also when any kernel rejects a program or lacks a feature; otherwise those are findings,
//! shown in the table with the probe's reason.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    debian::install_debian_packages,
    elf::{EM_X86_64, Endian, expect_elf},
    exec, output, root, step,
};

/// Debian 12's default kernel (6.1) and its newer 6.12 line; meta packages, resolved to a release.
const DEFAULT_KERNELS: &[&str] = &["linux-image-amd64", "linux-image-6.12-amd64"];
pub(crate) const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static"];
/// tc clsact and the bpf classifier are modules in Debian's kernels; before 6.6 (tcx) the classifier
/// attaches through them.
const MODULES: &[&str] = &["sch_ingress", "cls_bpf"];
const BEGIN: &str = "@@monitor-probe-begin@@";
const END: &str = "@@monitor-probe-end rc=";

/// One line of `monitor probe`: a feature or program, and whether this kernel has or accepts it.
struct Finding {
    item: String,
    ok: bool,
    detail: String,
}

/// What one kernel said.
struct Report {
    kernel: String,
    findings: Vec<Finding>,
}

/// Boot each kernel package (`DEFAULT_KERNELS` when none is named) and probe this machine's kernel.
pub fn run(packages: &[String], timeout: Duration, require_all: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let packages: Vec<String> = if packages.is_empty() {
        DEFAULT_KERNELS.iter().map(|p| p.to_string()).collect()
    } else {
        packages.to_vec()
    };
    install_debian_packages(HOST_PACKAGES)?;
    crate::build(None)?;
    let daemon = root().join("target/release/monitor");
    expect_elf(&daemon, Endian::Little, EM_X86_64)?;
    let work = root().join("target/kernel-check");
    let mut reports = Vec::new();
    let mut missing = Vec::new();
    for package in &packages {
        match boot(package, &daemon, &work, timeout) {
            Ok(report) => reports.push(report),
            Err(e) => {
                step(&format!("{package}: no probe report: {e:#}"));
                missing.push(package.as_str());
            }
        }
    }
    reports.push(host_report(&daemon)?);
    print_table(&reports);
    step(&format!("kernel check done in {:.0} s", start.elapsed().as_secs_f64()));
    if !missing.is_empty() {
        bail!("no probe report from {}", missing.join(", "));
    }
    let failed: Vec<String> = reports
        .iter()
        .flat_map(|r| r.findings.iter().filter(|f| !f.ok).map(move |f| format!("{} on {}", f.item, r.kernel)))
        .collect();
    if require_all && !failed.is_empty() {
        bail!("not everything loads: {} (see the table)", failed.join(", "));
    }
    Ok(())
}

/// The kernel package a meta package (linux-image-amd64) stands for.
fn resolve(package: &str) -> anyhow::Result<String> {
    let depends = |name: &str| {
        output(Command::new("apt-cache").args([
            "depends",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            name,
        ]))
    };
    if depends(package).is_err() {
        exec(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    let mut name = package.to_string();
    for _ in 0..4 {
        let text = depends(&name).with_context(|| format!("look up the Debian package {name}"))?;
        let next = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|d| d.starts_with("linux-image-"))
            .map(str::to_string);
        match next {
            Some(next) => name = next,
            None => return Ok(name),
        }
    }
    bail!("{package}: linux-image dependencies nest too deep")
}

/// Download the kernel package once.
fn download(package: &str, work: &Path) -> anyhow::Result<PathBuf> {
    let debs = work.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("create {}", debs.display()))?;
    let find_deb = || -> anyhow::Result<Option<PathBuf>> {
        let prefix = format!("{package}_");
        Ok(fs::read_dir(&debs)
            .with_context(|| format!("read {}", debs.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            }))
    };
    if let Some(deb) = find_deb()? {
        return Ok(deb);
    }
    step(&format!("downloading {package}"));
    exec(Command::new("apt-get").args(["download", "-qq", package]).current_dir(&debs))?;
    find_deb()?.with_context(|| format!("apt-get download left no {package}_*.deb"))
}

/// Take vmlinuz and the tc modules out of a kernel package, once.
fn unpack(deb: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let name = deb.file_stem().and_then(|n| n.to_str()).context("kernel package file name")?;
    let dir = work.join(name);
    if vmlinuz(&dir).is_err() {
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut unpack = Command::new("dpkg-deb")
            .arg("--fsys-tarfile")
            .arg(deb)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start dpkg-deb --fsys-tarfile {}", deb.display()))?;
        let tar = unpack.stdout.take().context("dpkg-deb's output")?;
        let extracted = exec(
            Command::new("tar")
                .args(["-x", "--wildcards", "-C"])
                .arg(&dir)
                .args(["./boot/vmlinuz-*", "*/modules/*/kernel/net/sched/*"])
                .stdin(tar),
        );
        let status = unpack.wait().context("wait for dpkg-deb")?;
        extracted?;
        if !status.success() {
            bail!("dpkg-deb --fsys-tarfile {} failed with {status}", deb.display());
        }
    }
    Ok(dir)
}

/// The kernel image in an unpacked package, and its release.
fn vmlinuz(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let boot = dir.join("boot");
    fs::read_dir(&boot)
        .with_context(|| format!("read {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find_map(|p| {
            let release = p.file_name()?.to_str()?.strip_prefix("vmlinuz-")?.to_string();
            Some((p, release))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))
}

/// A module of the unpacked kernel: `name.ko`, or `name.ko.xz` (the guest decompresses it).
fn module(dir: &Path, release: &str, name: &str) -> Option<PathBuf> {
    ["lib", "usr/lib"]
        .iter()
        .map(|lib| dir.join(lib).join("modules").join(release).join("kernel/net/sched"))
        .flat_map(|sched| [sched.join(format!("{name}.ko")), sched.join(format!("{name}.ko.xz"))])
        .find(|p| p.exists())
}

/// The start of /init: mount what the probe reads (cgroup2, bpffs, debugfs); `load NAME FILE` loads a
/// module and reports it like a probe line.
const INIT_PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
load() {
    case $2 in *.xz) unxz -c "$2" > /tmp/module.ko ;; *) cp "$2" /tmp/module.ko ;; esac
    if insmod /tmp/module.ko 2> /tmp/insmod.err; then
        printf '%s.ko\tok\tmodule loaded\n' "$1"
    else
        printf '%s.ko\tFAILED\tinsmod: %s\n' "$1" "$(cat /tmp/insmod.err)"
    fi
}
"#;

/// /init: load the tc modules and run the probe between markers, then power off.
fn init_script(modules: &[(String, String)]) -> String {
    let mut script = format!("{INIT_PRELUDE}echo {BEGIN}\n");
    for (name, path) in modules {
        script.push_str(&format!("load {name} {path}\n"));
    }
    script.push_str(&format!("/bin/monitor probe\necho \"{END}$?@@\"\npoweroff -f\n"));
    script
}

/// The shared libraries `ldd` lists for the daemon (with the dynamic loader).
fn shared_libraries(daemon: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(daemon))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line.trim(),
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// A cpio archive in the "newc" format the kernel unpacks as its initramfs.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) -> anyhow::Result<()> {
        self.inode += 1;
        let size = u32::try_from(data.len()).with_context(|| format!("{name} is too large for cpio"))?;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [self.inode, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// A directory and its parents (the kernel creates none on its own).
    fn dir(&mut self, path: &str) -> anyhow::Result<()> {
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                self.entry(&prefix.clone(), S_IFDIR | 0o755, &[], (0, 0))?;
            }
        }
        Ok(())
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.entry(path, S_IFREG | mode, data, (0, 0))
    }

    /// Copy a host file (following symlinks) to the same path in the archive.
    fn copy(&mut self, host: &Path, path: &str, mode: u32) -> anyhow::Result<()> {
        let data = fs::read(host).with_context(|| format!("read {}", host.display()))?;
        self.file(path, &data, mode)
    }

    fn finish(mut self) -> anyhow::Result<Vec<u8>> {
        self.entry("TRAILER!!!", 0, &[], (0, 0))?;
        Ok(self.bytes)
    }
}

fn initramfs(daemon: &Path, modules: &[(String, PathBuf)]) -> anyhow::Result<Vec<u8>> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "modules"] {
        cpio.dir(dir)?;
    }
    // The kernel opens /dev/console for /init's output before anything is mounted.
    cpio.entry("dev/console", S_IFCHR | 0o600, &[], (5, 1))?;
    cpio.copy(Path::new("/bin/busybox"), "bin/busybox", 0o755)?;
    cpio.copy(daemon, "bin/monitor", 0o755)?;
    for lib in shared_libraries(daemon)? {
        let path = lib.to_str().with_context(|| format!("{} is not UTF-8", lib.display()))?;
        cpio.copy(&lib, path.trim_start_matches('/'), 0o755)?;
    }
    let mut in_guest = Vec::new();
    for (name, host) in modules {
        let file = host.file_name().and_then(|n| n.to_str()).context("module file name")?;
        cpio.copy(host, &format!("modules/{file}"), 0o644)?;
        in_guest.push((name.clone(), format!("/modules/{file}")));
    }
    cpio.file("init", init_script(&in_guest).as_bytes(), 0o755)?;
    cpio.finish()
}

/// KVM where the CPU offers it to this machine; software emulation otherwise (a VM without nested
/// virtualisation can have /dev/kvm and still hang in it).
fn accelerator() -> &'static [&'static str] {
    let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virt = cpu
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if virt && Path::new("/dev/kvm").exists() {
        &["-accel", "kvm", "-cpu", "host"]
    } else {
        &["-accel", "tcg", "-cpu", "max"]
    }
}

fn boot(package: &str, daemon: &Path, work: &Path, timeout: Duration) -> anyhow::Result<Report> {
    let (concrete, deb) = if package.ends_with(".deb") {
        (package.to_string(), fs::canonicalize(package).with_context(|| format!("kernel package {package}"))?)
    } else {
        let concrete = resolve(package)?;
        let deb = download(&concrete, work)?;
        (concrete, deb)
    };
    let dir = unpack(&deb, work)?;
    let (kernel, release) = vmlinuz(&dir)?;
    let mut modules = Vec::new();
    for name in MODULES {
        if let Some(path) = module(&dir, &release, name) {
            modules.push((name.to_string(), path));
        }
    }
    let initrd = dir.join("initramfs.cpio");
    fs::write(&initrd, initramfs(daemon, &modules)?)
        .with_context(|| format!("write {}", initrd.display()))?;
    let console = dir.join("console.log");
    let _ = fs::remove_file(&console);
    let accel = accelerator();
    step(&format!("booting {release} ({concrete}) under qemu {}, at most {} s", accel[1], timeout.as_secs()));
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-m",
        "1024",
        "-smp",
        "1",
    ])
    .args(accel)
    .arg("-kernel")
    .arg(&kernel)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", "console=ttyS0 panic=-1 quiet", "-serial"])
    .arg(format!("file:{}", console.display()))
    .stdin(Stdio::null());
    let line = format!("{qemu:?}");
    let mut child = qemu.spawn().with_context(|| format!("start {line}"))?;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("wait for {line}"))? {
            break status;
        }
        if started.elapsed() > timeout {
            child.kill().with_context(|| format!("stop {line}"))?;
            child.wait().with_context(|| format!("wait for {line}"))?;
            bail!(
                "{release} did not power off within {} s; console: {}",
                timeout.as_secs(),
                console.display()
            );
        }
        thread::sleep(Duration::from_millis(250));
    };
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    step(&format!("{release}: probe ran, powered off after {:.0} s", started.elapsed().as_secs_f64()));
    let log = fs::read(&console).with_context(|| format!("read {}", console.display()))?;
    let log = String::from_utf8_lossy(&log);
    let section = log
        .split_once(BEGIN)
        .and_then(|(_, rest)| rest.split_once(END))
        .map(|(section, _)| section)
        .with_context(|| format!("no probe report between the markers in {}", console.display()))?;
    Ok(parse(section, &release))
}

fn parse(text: &str, fallback_kernel: &str) -> Report {
    let mut kernel = fallback_kernel.to_string();
    let mut findings = Vec::new();
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        let mut fields = line.splitn(3, '\t');
        match (fields.next(), fields.next(), fields.next()) {
            (Some("kernel"), Some(release), None) => kernel = release.to_string(),
            (Some(item), Some(status @ ("ok" | "FAILED")), detail) => findings.push(Finding {
                item: item.to_string(),
                ok: status == "ok",
                detail: detail.unwrap_or_default().to_string(),
            }),
            // Kernel messages can interleave with the probe's lines on the console.
            _ => {}
        }
    }
    Report { kernel, findings }
}

/// This machine's kernel, probed directly: its image is not always a file qemu could boot.
fn host_report(daemon: &Path) -> anyhow::Result<Report> {
    step("probing this machine's kernel directly");
    let out = Command::new(daemon)
        .arg("probe")
        .output()
        .with_context(|| format!("run {} probe", daemon.display()))?;
    let mut report = parse(&String::from_utf8_lossy(&out.stdout), "host");
    report.kernel.push_str(" (host)");
    Ok(report)
}

fn print_table(reports: &[Report]) {
    let mut items: Vec<&str> = Vec::new();
    for finding in reports.iter().flat_map(|r| &r.findings) {
        if !items.contains(&finding.item.as_str()) {
            items.push(&finding.item);
        }
    }
    let mut notes = Vec::new();
    let mut rows = vec![
        std::iter::once("program / feature".to_string())
            .chain(reports.iter().map(|r| r.kernel.clone()))
            .collect::<Vec<_>>(),
    ];
    for item in &items {
        let mut row = vec![item.to_string()];
        for report in reports {
            row.push(match report.findings.iter().find(|f| f.item == *item) {
                None => "-".to_string(),
                Some(f) if f.ok => "ok".to_string(),
                Some(f) => {
                    notes.push(format!("[{}] {} on {}: {}", notes.len() + 1, item, report.kernel, f.detail));
                    format!("FAILED [{}]", notes.len())
                }
            });
        }
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    println!();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
        if i == 0 {
            println!("{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
        }
    }
    if !notes.is_empty() {
        println!();
        for note in notes {
            println!("{note}");
        }
    }
    println!();
}

//! Loading and attaching the kernel programs, and the maps user space writes.

use std::{fs::File, os::fd::AsFd as _, path::PathBuf};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf, SockHash},
    programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, SkMsg, SockOps, TcAttachType, tc},
};
use monitor_common::{config::Config, verdict::DROP_REASONS};

pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// Where each program is attached, for `monitor status` and the logs.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub program: &'static str,
    pub target: String,
}

pub struct Kernel {
    pub ebpf: Ebpf,
    pub attachments: Vec<Attachment>,
}

pub struct LoadOptions<'a> {
    pub config: Config,
    pub cgroups: &'a [PathBuf],
    pub ifaces: &'a [String],
    pub domain_capacity: u32,
    pub net_capacity: u32,
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (it is not always /sys/fs/cgroup).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2").then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 file system is mounted: the monitor attaches to cgroup v2 (mount it, e.g. `mount -t cgroup2 none /sys/fs/cgroup`)")
}

/// The interface exists in this network namespace (/sys may show another one under nsenter).
pub fn check_iface(iface: &str) -> anyhow::Result<()> {
    let name = std::ffi::CString::new(iface).with_context(|| format!("interface name {iface:?}"))?;
    if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
        bail!("no network interface named {iface:?} in this network namespace (see `ip link`)");
    }
    Ok(())
}

impl Kernel {
    pub fn load(opts: &LoadOptions<'_>) -> anyhow::Result<Kernel> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("DOMAINS", opts.domain_capacity.max(1024))
            .map_max_entries("NETS_V4", opts.net_capacity.max(1024))
            .map_max_entries("NETS_V6", opts.net_capacity.max(1024))
            .load(OBJECT)
            .context("load the kernel programs' object (maps and BTF)")?;
        {
            let mut config: Array<_, Config> =
                Array::try_from(ebpf.map_mut("CONFIG").context("map CONFIG")?).context("map CONFIG")?;
            config.set(0, opts.config, 0).context("write CONFIG")?;
        }
        let mut kernel = Kernel { ebpf, attachments: Vec::new() };
        kernel.attach_cgroups(opts.cgroups)?;
        kernel.attach_ifaces(opts.ifaces)?;
        Ok(kernel)
    }

    fn attach_cgroups(&mut self, cgroups: &[PathBuf]) -> anyhow::Result<()> {
        let files = cgroups
            .iter()
            .map(|p| File::open(p).with_context(|| format!("open cgroup {}", p.display())).map(|f| (p, f)))
            .collect::<anyhow::Result<Vec<_>>>()?;

        for name in ["connect4", "connect6"] {
            let prog: &mut CgroupSockAddr = self.program(name)?;
            prog.load().with_context(|| format!("load {name} (the verifier's log follows)"))?;
            for (path, file) in &files {
                prog.attach(file.as_fd(), CgroupAttachMode::Single)
                    .with_context(|| format!("attach {name} to cgroup {}", path.display()))?;
            }
        }
        let sock_fd = {
            let socks: SockHash<&MapData, u64> =
                SockHash::try_from(self.ebpf.map("SOCKS").context("map SOCKS")?).context("map SOCKS")?;
            socks.fd().try_clone().context("dup SOCKS fd")?
        };
        let prog: &mut SkMsg = self.program("inspect_send")?;
        prog.load().context("load inspect_send (sk_msg; the verifier's log follows)")?;
        prog.attach(&sock_fd).context("attach inspect_send (sk_msg) to SOCKS")?;
        self.attachments.push(Attachment { program: "inspect_send", target: "sockhash SOCKS".into() });

        let prog: &mut SockOps = self.program("track_connection")?;
        prog.load().context("load track_connection (sock_ops)")?;
        for (path, file) in &files {
            prog.attach(file.as_fd(), CgroupAttachMode::Single).with_context(|| {
                format!("attach track_connection (sock_ops) to cgroup {}", path.display())
            })?;
        }
        for (path, _) in &files {
            for program in ["connect4", "connect6", "track_connection"] {
                self.attachments.push(Attachment { program, target: format!("cgroup {}", path.display()) });
            }
        }
        Ok(())
    }

    fn attach_ifaces(&mut self, ifaces: &[String]) -> anyhow::Result<()> {
        if ifaces.is_empty() {
            return Ok(());
        }
        let prog: &mut SchedClassifier = self.program("wire_ingress")?;
        prog.load().context("load wire_ingress (tc classifier)")?;
        let mut attached = Vec::new();
        for iface in ifaces {
            check_iface(iface)?;
            // Links are independent of each other: Single only forbids the legacy multi-attach flag.
            // Already present is fine; tcx (6.6+) does not need it at all.
            let _ = tc::qdisc_add_clsact(iface);
            prog.attach(iface, TcAttachType::Ingress)
                .with_context(|| format!("attach wire_ingress to {iface} ingress"))?;
            attached.push(Attachment { program: "wire_ingress", target: format!("tc ingress {iface}") });
        }
        self.attachments.extend(attached);
        Ok(())
    }

    fn program<'p, T>(&'p mut self, name: &str) -> anyhow::Result<&'p mut T>
    where
        &'p mut T: TryFrom<&'p mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        let prog =
            self.ebpf.program_mut(name).with_context(|| format!("program {name} missing from the object"))?;
        prog.try_into().with_context(|| format!("program {name} has an unexpected type"))
    }

    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<aya::maps::MapData>> {
        RingBuf::try_from(self.ebpf.take_map("EVENTS").context("map EVENTS")?).context("map EVENTS")
    }

    pub fn take_socks(&mut self) -> anyhow::Result<SockHash<MapData, u64>> {
        SockHash::try_from(self.ebpf.take_map("SOCKS").context("map SOCKS")?).context("map SOCKS")
    }

    /// Kernel-side drop counters, summed over CPUs, by `DROP_*` reason.
    pub fn drops(&self) -> anyhow::Result<[u64; DROP_REASONS as usize]> {
        let drops: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("DROPS").context("map DROPS")?).context("map DROPS")?;
        let mut out = [0u64; DROP_REASONS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = drops.get(&(i as u32), 0).context("read DROPS")?.iter().sum();
        }
        Ok(out)
    }
}

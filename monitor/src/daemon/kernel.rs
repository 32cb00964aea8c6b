//! Loading and attaching the kernel programs, and the maps user space writes.

use std::{
    fs::File,
    os::{fd::AsFd as _, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf, SockHash},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SchedClassifier, SkMsg, SockOps,
        TcAttachType,
        links::{FdLink, PinnedLink},
        tc,
    },
};
use monitor_common::{
    config::{Config, MODE_BLOCK},
    record::{WireFlowKey, WireFlowState},
    verdict::DROP_REASONS,
};

/// The programs attached to cgroups (with `inspect_send`, which only cgroup-watched sockets reach).
const CGROUP_PROGRAMS: [&str; 6] =
    ["connect4", "connect6", "track_connection", "inspect_send", "proxy_reply", "quic_egress"];

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
    /// Links this daemon owns. Unpinned ones detach when dropped; pinned ones outlive the daemon.
    links: Vec<(String, FdLink)>,
    pinned: Vec<PinnedLink>,
    /// Where enforcement is pinned (block mode), so that it survives the daemon.
    pub pin_dir: Option<PathBuf>,
    mode: u32,
    /// Programs not attached where the monitor can do without them (what is lost is logged).
    pub degraded: Vec<&'static str>,
    inspection: bool,
    skb: bool,
}

pub struct LoadOptions<'a> {
    pub config: Config,
    pub cgroups: &'a [PathBuf],
    pub ifaces: &'a [String],
    pub domain_capacity: u32,
    pub net_capacity: u32,
    /// Block mode: pin maps and links here, adopting what a previous daemon left.
    pub pin_dir: Option<&'a Path>,
    pub ring_buffer_bytes: u32,
    /// Attach sk_msg (payload inspection); the features probe said this kernel can.
    pub inspection: bool,
    /// Attach the cgroup_skb programs (proxy answers, QUIC).
    pub skb: bool,
}

/// Maps that must outlive a daemon in block mode: the programs of a crashed daemon keep using them, and
/// the next daemon adopts them (its events resume from the same ring buffer).
const PERSISTENT_MAPS: &[&str] =
    &["EVENTS", "CONFIG", "DROPS", "SOCKS", "DOMAINS", "NETS_V4", "NETS_V6", "QUIC_DENY"];

/// The cgroup v2 mount point, from /proc/self/mountinfo (it is not always /sys/fs/cgroup).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    mount_point("cgroup2").context(
        "no cgroup2 file system is mounted: the monitor attaches to cgroup v2 (mount it, e.g. `mount -t cgroup2 none /sys/fs/cgroup`)",
    )
}

fn mount_point(fstype: &str) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        (post.split_whitespace().next()? == fstype)
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The bpffs mount point where pins live; mounted at /sys/fs/bpf when no BPF file system is.
pub fn bpffs() -> anyhow::Result<PathBuf> {
    if let Some(path) = mount_point("bpf") {
        return Ok(path);
    }
    let target = c"/sys/fs/bpf";
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        bail!(
            "no BPF file system is mounted and mounting one at /sys/fs/bpf failed ({}); block mode pins its \
             enforcement there (mount it: `mount -t bpf bpf /sys/fs/bpf`)",
            std::io::Error::last_os_error()
        );
    }
    tracing::info!("mounted the BPF file system at /sys/fs/bpf");
    Ok(PathBuf::from("/sys/fs/bpf"))
}

/// The interface exists in this network namespace (/sys may show another one under nsenter).
/// `--iface NAME` hooks TC ingress: the interface's clients are behind it. `NAME:egress` hooks egress: the
/// clients are on the host's other side, and this interface faces their servers. (`:` is never part of an
/// interface name.)
fn iface_hook(iface: &str) -> (&str, TcAttachType, &'static str) {
    match iface.strip_suffix(":egress") {
        Some(name) => (name, TcAttachType::Egress, "wire_egress"),
        None => (iface.strip_suffix(":ingress").unwrap_or(iface), TcAttachType::Ingress, "wire_ingress"),
    }
}

pub fn check_iface(iface: &str) -> anyhow::Result<()> {
    let (iface, _, _) = iface_hook(iface);
    if iface.contains(':') {
        // The kernel's name lookup would take `eth0:x` for `eth0`.
        bail!("--iface {iface:?}: give NAME, NAME:ingress or NAME:egress");
    }
    let name = std::ffi::CString::new(iface).with_context(|| format!("interface name {iface:?}"))?;
    if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
        bail!("no network interface named {iface:?} in this network namespace (see `ip link`)");
    }
    Ok(())
}

/// Link generations pinned under `pin_dir/links`, oldest first.
fn pinned_generations(pin_dir: &Path) -> Vec<PathBuf> {
    let mut gens: Vec<PathBuf> = std::fs::read_dir(pin_dir.join("links"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    gens.sort();
    gens
}

/// Detach every pinned link of `generation` and remove its pins.
fn release_generation(generation: &Path) -> anyhow::Result<usize> {
    let mut released = 0;
    for entry in std::fs::read_dir(generation).with_context(|| format!("read {}", generation.display()))? {
        let path = entry.context("read pinned link")?.path();
        let link =
            PinnedLink::from_pin(&path).with_context(|| format!("open pinned link {}", path.display()))?;
        // Unpinning hands back the last reference: dropping it detaches the program.
        drop(link.unpin().with_context(|| format!("unpin {}", path.display()))?);
        released += 1;
    }
    std::fs::remove_dir(generation).with_context(|| format!("remove {}", generation.display()))?;
    Ok(released)
}

/// Whether a previous block-mode daemon left enforcement pinned in `pin_dir`.
pub fn has_pins(pin_dir: &Path) -> bool {
    !pinned_generations(pin_dir).is_empty() || pin_dir.join("maps").exists()
}

/// `monitor detach`: remove everything a block-mode daemon pinned: links (detaching their programs),
/// the sk_msg attachment, and the maps. Returns the number of links released.
pub fn detach_pinned(pin_dir: &Path) -> anyhow::Result<usize> {
    let mut released = 0;
    for generation in pinned_generations(pin_dir) {
        released += release_generation(&generation)?;
    }
    let _ = std::fs::remove_dir(pin_dir.join("links"));
    let maps = pin_dir.join("maps");
    if maps.exists() {
        // The sk_msg program is attached to the sockhash itself; it goes when the last reference to the
        // map does, once its pin is removed and no program uses it.
        for entry in std::fs::read_dir(&maps).with_context(|| format!("read {}", maps.display()))? {
            let path = entry.context("read map pin")?.path();
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
        std::fs::remove_dir(&maps).with_context(|| format!("remove {}", maps.display()))?;
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(released)
}

impl Kernel {
    pub fn load(opts: &LoadOptions<'_>) -> anyhow::Result<Kernel> {
        let mut loader = EbpfLoader::new();
        // A map type this kernel lacks is left out instead of failing the whole object: the features probe
        // has already decided what can run without it, and the programs that use it stay unloaded.
        loader.allow_unsupported_maps();
        loader
            .map_max_entries("DOMAINS", opts.domain_capacity.max(1024))
            .map_max_entries("NETS_V4", opts.net_capacity.max(1024))
            .map_max_entries("NETS_V6", opts.net_capacity.max(1024))
            .map_max_entries("EVENTS", opts.ring_buffer_bytes);
        let map_paths: Vec<(&str, PathBuf)> = match opts.pin_dir {
            Some(dir) => {
                let maps = dir.join("maps");
                std::fs::create_dir_all(&maps).with_context(|| format!("create {}", maps.display()))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("chmod 0700 {}", dir.display()))?;
                PERSISTENT_MAPS.iter().map(|m| (*m, maps.join(m))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).context("load the kernel programs' object (maps and BTF)")?;
        {
            let mut config: Array<_, Config> =
                Array::try_from(ebpf.map_mut("CONFIG").context("map CONFIG")?).context("map CONFIG")?;
            config.set(0, opts.config, 0).context("write CONFIG")?;
        }
        let mut kernel = Kernel {
            ebpf,
            attachments: Vec::new(),
            links: Vec::new(),
            pinned: Vec::new(),
            pin_dir: opts.pin_dir.map(Path::to_path_buf),
            mode: opts.config.mode,
            degraded: Vec::new(),
            inspection: opts.inspection,
            skb: opts.skb,
        };
        if !opts.cgroups.is_empty() {
            let (links, attachments) = (kernel.links.len(), kernel.attachments.len());
            match kernel.attach_cgroups(opts.cgroups) {
                Ok(()) => {}
                // Audit with gateway interfaces can do without the cgroup hooks; block mode cannot.
                Err(e) if opts.config.mode != MODE_BLOCK && !opts.ifaces.is_empty() => {
                    kernel.links.truncate(links);
                    kernel.attachments.truncate(attachments);
                    kernel.degraded.extend(CGROUP_PROGRAMS);
                    tracing::warn!(
                        "the cgroup hooks could not be attached ({e:#}): local sockets are not watched (no processes, \
                         nothing blocked); audit continues from TC alone on {}",
                        opts.ifaces.join(", ")
                    );
                }
                Err(e) => return Err(e),
            }
        } else {
            kernel.degraded.extend(CGROUP_PROGRAMS);
        }
        kernel.degraded.sort_unstable();
        kernel.degraded.dedup();
        kernel.attach_ifaces(opts.ifaces)?;
        if let Some(dir) = opts.pin_dir {
            kernel.pin_links(dir)?;
        }
        Ok(kernel)
    }

    /// The configuration a previous daemon left in a pinned CONFIG map (its hash seeds key the
    /// pinned indicators).
    pub fn pinned_config(pin_dir: &Path) -> Option<Config> {
        let map = MapData::from_pin(pin_dir.join("maps/CONFIG")).ok()?;
        let config: Array<MapData, Config> = Array::try_from(aya::maps::Map::Array(map)).ok()?;
        config.get(&0, 0).ok().filter(|c| c.seed != [0, 0])
    }

    /// Pin this daemon's links as a new generation, then release the older generations: the new
    /// programs are attached before the old ones go, so enforcement has no gap.
    fn pin_links(&mut self, dir: &Path) -> anyhow::Result<()> {
        let older = pinned_generations(dir);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let generation = dir.join("links").join(format!("{stamp:024}"));
        std::fs::create_dir_all(&generation).with_context(|| format!("create {}", generation.display()))?;
        for (i, (name, link)) in std::mem::take(&mut self.links).into_iter().enumerate() {
            let path = generation.join(format!("{i:02}-{name}"));
            let pinned = link.pin(&path).with_context(|| format!("pin link {}", path.display()))?;
            self.pinned.push(pinned);
        }
        for old in older {
            let released = release_generation(&old)?;
            tracing::info!("adopted enforcement pinned by a previous daemon: released its {released} links");
        }
        Ok(())
    }

    fn keep(
        &mut self,
        name: &str,
        link: impl TryInto<FdLink, Error = aya::programs::links::LinkError>,
    ) -> anyhow::Result<()> {
        let link =
            link.try_into().with_context(|| format!("{name}: this kernel attached it without a bpf_link"))?;
        self.links.push((name.to_string(), link));
        Ok(())
    }

    fn attach_skb(
        &mut self,
        files: &[(&PathBuf, File)],
        name: &'static str,
        direction: CgroupSkbAttachType,
    ) -> anyhow::Result<()> {
        let mut taken = Vec::new();
        let prog: &mut CgroupSkb = self.program(name)?;
        prog.load().with_context(|| format!("load {name} (cgroup_skb)"))?;
        for (path, file) in files {
            let id = prog
                .attach(file.as_fd(), direction, CgroupAttachMode::Single)
                .with_context(|| format!("attach {name} (cgroup_skb) to cgroup {}", path.display()))?;
            taken.push(prog.take_link(id).context("take link")?);
        }
        for link in taken {
            self.keep(name, link)?;
        }
        Ok(())
    }

    fn attach_inspection(&mut self, sock_fd: &aya::maps::sock::SockMapFd) -> anyhow::Result<()> {
        let prog: &mut SkMsg = self.program("inspect_send")?;
        prog.load().context("load inspect_send (sk_msg; the verifier's log follows)")?;
        let id = prog.attach(sock_fd).context("attach inspect_send (sk_msg) to SOCKS")?;
        // The attachment belongs to the sockhash, not to a link: it lasts as long as the map, which is
        // pinned in block mode. Owning it here keeps aya from detaching it when the daemon exits.
        std::mem::forget(prog.take_link(id).context("take the sk_msg attachment")?);
        Ok(())
    }

    fn attach_cgroups(&mut self, cgroups: &[PathBuf]) -> anyhow::Result<()> {
        let files = cgroups
            .iter()
            .map(|p| File::open(p).with_context(|| format!("open cgroup {}", p.display())).map(|f| (p, f)))
            .collect::<anyhow::Result<Vec<_>>>()?;

        // sock_ops first: a socket must be enrolled for inspection before anything can judge it.
        let sock_fd = {
            let socks: SockHash<&MapData, u64> =
                SockHash::try_from(self.ebpf.map("SOCKS").context("map SOCKS")?).context("map SOCKS")?;
            socks.fd().try_clone().context("dup SOCKS fd")?
        };
        let block = self.mode == MODE_BLOCK;
        let inspection = if self.inspection {
            self.attach_inspection(&sock_fd)
        } else {
            Err(anyhow::anyhow!("not attempted"))
        };
        match inspection {
            Ok(()) => {
                self.attachments.push(Attachment { program: "inspect_send", target: "sockhash SOCKS".into() })
            }
            // Block mode without its enforcement hook would promise what it cannot do.
            Err(e) if block => {
                return Err(e.context("block mode needs payload inspection (sk_msg on a sockhash)"));
            }
            // The features probe already said why.
            Err(_) if !self.inspection => self.degraded.push("inspect_send"),
            Err(e) => {
                tracing::warn!("payload inspection is unavailable, events will name no targets: {e:#}");
                self.degraded.push("inspect_send");
            }
        }

        for name in ["connect4", "connect6"] {
            let mut taken = Vec::new();
            let prog: &mut CgroupSockAddr = self.program(name)?;
            prog.load().with_context(|| format!("load {name} (the verifier's log follows)"))?;
            for (path, file) in &files {
                let id = prog
                    .attach(file.as_fd(), CgroupAttachMode::Single)
                    .with_context(|| format!("attach {name} to cgroup {}", path.display()))?;
                taken.push(prog.take_link(id).context("take link")?);
            }
            for link in taken {
                self.keep(name, link)?;
            }
        }
        if !self.skb {
            self.degraded.extend(["proxy_reply", "quic_egress"]);
        } else {
            if let Err(e) = self.attach_skb(&files, "proxy_reply", CgroupSkbAttachType::Ingress) {
                tracing::warn!("proxy_reply is unavailable, proxy answers (ProxyStatus) are not read: {e:#}");
                self.degraded.push("proxy_reply");
            }
            if let Err(e) = self.attach_skb(&files, "quic_egress", CgroupSkbAttachType::Egress) {
                tracing::warn!("quic_egress is unavailable, QUIC flows are not named: {e:#}");
                self.degraded.push("quic_egress");
            }
        }
        let mut taken = Vec::new();
        let prog: &mut SockOps = self.program("track_connection")?;
        prog.load().context("load track_connection (sock_ops)")?;
        for (path, file) in &files {
            let id = prog.attach(file.as_fd(), CgroupAttachMode::Single).with_context(|| {
                format!("attach track_connection (sock_ops) to cgroup {}", path.display())
            })?;
            taken.push(prog.take_link(id).context("take link")?);
        }
        for link in taken {
            self.keep("track_connection", link)?;
        }
        for (path, _) in &files {
            for program in ["connect4", "connect6", "track_connection", "proxy_reply", "quic_egress"] {
                if self.degraded.contains(&program) {
                    continue;
                }
                self.attachments.push(Attachment { program, target: format!("cgroup {}", path.display()) });
            }
        }
        Ok(())
    }

    fn attach_ifaces(&mut self, ifaces: &[String]) -> anyhow::Result<()> {
        let mut taken = Vec::new();
        for program in ["wire_ingress", "wire_egress"] {
            let wanted: Vec<&String> = ifaces.iter().filter(|i| iface_hook(i).2 == program).collect();
            if wanted.is_empty() {
                continue;
            }
            let prog: &mut SchedClassifier = self.program(program)?;
            prog.load().with_context(|| format!("load {program} (tc classifier)"))?;
            for iface in wanted {
                check_iface(iface)?;
                let (name, hook, _) = iface_hook(iface);
                // Already present is fine; tcx (6.6+) does not need it at all.
                let _ = tc::qdisc_add_clsact(name);
                let id = prog.attach(name, hook).with_context(|| format!("attach {program} to {iface}"))?;
                let direction = if hook == TcAttachType::Egress { "egress" } else { "ingress" };
                taken.push((
                    program,
                    format!("tc {direction} {name}"),
                    prog.take_link(id).context("take link")?,
                ));
            }
        }
        for (program, target, link) in taken {
            self.keep(program, link)?;
            self.attachments.push(Attachment { program, target });
        }
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

    pub fn take_quic_deny(&mut self) -> anyhow::Result<aya::maps::HashMap<MapData, u64, u32>> {
        aya::maps::HashMap::try_from(self.ebpf.take_map("QUIC_DENY").context("map QUIC_DENY")?)
            .context("map QUIC_DENY")
    }

    pub fn take_socks(&mut self) -> anyhow::Result<SockHash<MapData, u64>> {
        SockHash::try_from(self.ebpf.take_map("SOCKS").context("map SOCKS")?).context("map SOCKS")
    }

    /// Per-connection entries the kernel holds now: sockets still enrolled for inspection, and forwarded
    /// flows being captured.
    pub fn flow_entries(&self, socks: &SockHash<MapData, u64>) -> (usize, usize) {
        let wire = self
            .ebpf
            .map("WIRE_FLOWS")
            .and_then(|m| aya::maps::HashMap::<&MapData, WireFlowKey, WireFlowState>::try_from(m).ok())
            .map(|m| m.keys().count())
            .unwrap_or(0);
        (socks.keys().count(), wire)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iface_names_their_tc_hook() {
        assert!(
            iface_hook("eth0") == ("eth0", TcAttachType::Ingress, "wire_ingress"),
            "a bare name is ingress"
        );
        assert!(
            iface_hook("eth0:ingress") == ("eth0", TcAttachType::Ingress, "wire_ingress"),
            "ingress named"
        );
        assert!(iface_hook("eth0:egress") == ("eth0", TcAttachType::Egress, "wire_egress"), "egress named");
        // Not a hook: left to the interface lookup, which refuses it.
        assert!(iface_hook("eth0:sideways").0 == "eth0:sideways", "an unknown suffix stays in the name");
        assert!(check_iface("lo:sideways").is_err(), "only ingress and egress are hooks");
    }
}

//! Loading and attaching the kernel programs, and the maps user space writes.

use std::{
    fs::File,
    os::{fd::AsFd as _, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
};

use super::wire_reclaim::Reclaim;
use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray, RingBuf, SockHash},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SchedClassifier, SkMsg, SockOps,
        TcAttachType,
        links::{FdLink, PinnedLink},
        tc,
    },
};
use monitor_common::{
    config::{Config, MODE_BLOCK},
    record::{PHASE_REFUSE, WireFlowKey, WireFlowState},
    verdict::DROP_REASONS,
};

/// The programs attached to cgroups (with `inspect_send`, which only cgroup-watched sockets reach).
const CGROUP_PROGRAMS: [&str; 7] =
    ["connect4", "connect6", "track_connection", "inspect_send", "proxy_reply", "quic_egress", "tcp_egress"];

pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// Where each program is attached, for `monitor status` and the logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attachment {
    pub program: &'static str,
    pub target: String,
}

/// The kernel programs' log records (aya-log), read into this process's log.
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The level the kernel programs write their aya-log records at: the most verbose one `RUST_LOG` enables
/// (aya-log's numbering: 0 off, 1 error ... 5 trace). Their records are at debug, so the default (info)
/// writes none, and the verifier removes their code: a constant the loader sets decides each one.
pub fn kernel_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    let current = LevelFilter::current();
    [LevelFilter::TRACE, LevelFilter::DEBUG, LevelFilter::INFO, LevelFilter::WARN, LevelFilter::ERROR]
        .iter()
        .position(|level| current >= *level)
        .map_or(0, |i| 5 - i as u8)
}

pub struct Kernel {
    pub ebpf: Ebpf,
    /// Present when `RUST_LOG` asks for the kernel's records.
    logger: Option<KernelLogger>,
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
    /// Block mode found enforcement pinned by a previous daemon: it stays untouched until `commit`.
    adopting: bool,
    /// Indicator maps made for this daemon because its lists outgrew the pinned ones; their pins
    /// replace the old ones at `commit`.
    fresh_maps: Vec<(&'static str, MapData)>,
}

pub struct LoadOptions<'a> {
    pub config: Config,
    pub cgroups: &'a [PathBuf],
    pub ifaces: &'a [String],
    pub domain_capacity: u32,
    pub net_capacity: u32,
    /// How many domains and address ranges the lists hold.
    pub indicator_counts: (usize, usize),
    /// Block mode: pin maps and links here, adopting what a previous daemon left.
    pub pin_dir: Option<&'a Path>,
    pub ring_buffer_bytes: u32,
    /// The capacity of `WIRE_FLOWS`.
    pub wire_flows: u32,
    /// Attach sk_msg (payload inspection); the features probe said this kernel can.
    pub inspection: bool,
    /// Attach the cgroup_skb programs (proxy answers, QUIC).
    pub skb: bool,
}

/// A map update that only replaces an existing entry (linux/bpf.h).
const BPF_EXIST: u64 = 2;

/// Maps that must outlive a daemon in block mode: the programs of a crashed daemon keep using them, and
/// the next daemon adopts them (its events resume from the same ring buffer).
const PERSISTENT_MAPS: &[&str] =
    &["EVENTS", "CONFIG", "DROPS", "SOCKS", "DOMAINS", "NETS_V4", "NETS_V6", "QUIC_DENY", "DEFERRED"];

/// The indicator maps, sized for the lists: a daemon whose lists outgrew the pinned ones makes its own.
const INDICATOR_MAPS: [&str; 3] = ["DOMAINS", "NETS_V4", "NETS_V6"];

/// Whether the lists fit the indicator maps a previous daemon pinned in `maps`: each is at least the
/// capacity this daemon would give it, and holds room for its entries next to the new ones (a new set
/// is staged beside the live one). `true` when none is pinned (there is nothing to outgrow).
fn lists_fit_pinned(maps: &Path, opts: &LoadOptions<'_>) -> anyhow::Result<bool> {
    for name in INDICATOR_MAPS {
        let path = maps.join(name);
        if !path.exists() {
            continue;
        }
        let data =
            MapData::from_pin(&path).with_context(|| format!("open the pinned map {}", path.display()))?;
        let max =
            data.info().with_context(|| format!("read the pinned map {}", path.display()))?.max_entries();
        let (wanted, count) = if name == "DOMAINS" {
            (opts.domain_capacity, opts.indicator_counts.0)
        } else {
            (opts.net_capacity, opts.indicator_counts.1)
        };
        let why = if max < wanted {
            format!("{max} entries, {wanted} wanted for {count}")
        } else {
            let held = pinned_entries(name, data)?;
            if held + count <= max as usize {
                continue;
            }
            format!("{max} entries: {held} in use, {count} new staged beside them")
        };
        tracing::info!(
            "the lists outgrew the pinned {name} ({why}): this daemon makes its own maps and swaps them in \
             once its programs are attached"
        );
        return Ok(false);
    }
    Ok(true)
}

/// How many entries a pinned indicator map holds.
fn pinned_entries(name: &str, data: MapData) -> anyhow::Result<usize> {
    use aya::maps::{HashMap as BpfHashMap, LpmTrie};
    use monitor_common::{name_hash::NameKey, verdict::IndicatorSlots};
    let count = match name {
        "DOMAINS" => BpfHashMap::<_, NameKey, IndicatorSlots>::try_from(Map::HashMap(data))?.keys().count(),
        "NETS_V4" => LpmTrie::<_, [u8; 4], IndicatorSlots>::try_from(Map::LpmTrie(data))?.keys().count(),
        _ => LpmTrie::<_, [u8; 16], IndicatorSlots>::try_from(Map::LpmTrie(data))?.keys().count(),
    };
    Ok(count)
}

/// For a daemon that stops before it is ready: says that what a previous daemon pinned is untouched.
pub fn left_as_it_was(err: anyhow::Error, pin_dir: Option<&Path>) -> anyhow::Error {
    let dir = pin_dir.map(Path::to_path_buf).or_else(|| mount_point("bpf").map(|fs| fs.join("monitor")));
    match dir {
        Some(dir) if has_pins(&dir) => err.context(format!(
            "the daemon did not start; the enforcement pinned in {} is left as it was (its programs and \
             indicators still apply)",
            dir.display()
        )),
        _ => err,
    }
}

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

/// Forwards the kernel programs' log records to this process's log as they come.
pub async fn forward_logs(logger: KernelLogger) {
    // SAFETY: the logger owns its ring buffer's fd and keeps it open for as long as the AsyncFd holds it.
    let watched =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut logger = match watched {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!("the kernel programs' log records cannot be watched: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = logger.readable_mut().await else { return };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

impl Kernel {
    /// Load the programs and maps; nothing is attached yet. In block mode the maps a previous daemon
    /// pinned are reused (its CONFIG is not written until `commit`), except indicator maps the lists
    /// outgrew: those are made anew, at the size wanted.
    pub fn load(opts: &LoadOptions<'_>) -> anyhow::Result<Kernel> {
        let mut loader = EbpfLoader::new();
        let log_level = kernel_log_level();
        loader.override_global(aya_log::LEVEL, &log_level, true);
        // A map type this kernel lacks is left out instead of failing the whole object: the features probe
        // has already decided what can run without it, and the programs that use it stay unloaded.
        loader.allow_unsupported_maps();
        loader
            .map_max_entries("DOMAINS", opts.domain_capacity.max(1024))
            .map_max_entries("NETS_V4", opts.net_capacity.max(1024))
            .map_max_entries("NETS_V6", opts.net_capacity.max(1024))
            .map_max_entries("EVENTS", opts.ring_buffer_bytes)
            .map_max_entries("WIRE_FLOWS", opts.wire_flows);
        let mut fresh_indicator_maps = false;
        let mut adopting = false;
        let map_paths: Vec<(&str, PathBuf)> = match opts.pin_dir {
            Some(dir) => {
                let maps = dir.join("maps");
                adopting = maps.join("CONFIG").exists();
                fresh_indicator_maps = !lists_fit_pinned(&maps, opts)?;
                std::fs::create_dir_all(&maps).with_context(|| format!("create {}", maps.display()))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("chmod 0700 {}", dir.display()))?;
                PERSISTENT_MAPS
                    .iter()
                    .filter(|m| !(fresh_indicator_maps && INDICATOR_MAPS.contains(m)))
                    .map(|m| (*m, maps.join(m)))
                    .collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).context("load the kernel programs' object (maps and BTF)")?;
        let logger = match log_level {
            0 => None,
            _ => aya_log::EbpfLogger::init(&mut ebpf)
                .map_err(|e| tracing::warn!("the kernel programs' log records cannot be read: {e}"))
                .ok(),
        };
        // A previous daemon's programs read the pinned CONFIG: it changes only at `commit`.
        if !adopting {
            let mut config: Array<_, Config> =
                Array::try_from(ebpf.map_mut("CONFIG").context("map CONFIG")?).context("map CONFIG")?;
            config.set(0, opts.config, 0).context("write CONFIG")?;
        }
        let mut fresh_maps = Vec::new();
        if fresh_indicator_maps {
            for name in INDICATOR_MAPS {
                let fd = match ebpf.map(name).with_context(|| format!("map {name}"))? {
                    Map::HashMap(data) | Map::LpmTrie(data) => data.fd().as_fd().try_clone_to_owned(),
                    _ => bail!("map {name} is neither a hash map nor an LPM trie"),
                }
                .with_context(|| format!("dup the {name} fd"))?;
                fresh_maps.push((name, MapData::from_fd(fd).with_context(|| format!("map {name}"))?));
            }
        }
        Ok(Kernel {
            ebpf,
            logger,
            attachments: Vec::new(),
            links: Vec::new(),
            pinned: Vec::new(),
            pin_dir: opts.pin_dir.map(Path::to_path_buf),
            mode: opts.config.mode,
            degraded: Vec::new(),
            inspection: opts.inspection,
            skb: opts.skb,
            adopting,
            fresh_maps,
        })
    }

    /// Attach the programs. Their links are this daemon's until `commit` pins them: if it stops before,
    /// they detach and a previous daemon's enforcement is as it was.
    pub fn attach(&mut self, opts: &LoadOptions<'_>) -> anyhow::Result<()> {
        if !opts.cgroups.is_empty() {
            let (links, attachments) = (self.links.len(), self.attachments.len());
            match self.attach_cgroups(opts.cgroups) {
                Ok(()) => {}
                // Audit with gateway interfaces can do without the cgroup hooks; block mode cannot.
                Err(e) if opts.config.mode != MODE_BLOCK && !opts.ifaces.is_empty() => {
                    self.links.truncate(links);
                    self.attachments.truncate(attachments);
                    self.degraded.extend(CGROUP_PROGRAMS);
                    tracing::warn!(
                        "the cgroup hooks could not be attached ({e:#}): local sockets are not watched (no processes, \
                         nothing blocked); audit continues from TC alone on {}",
                        opts.ifaces.join(", ")
                    );
                }
                Err(e) => return Err(e),
            }
        } else {
            self.degraded.extend(CGROUP_PROGRAMS);
        }
        self.degraded.sort_unstable();
        self.degraded.dedup();
        self.attach_ifaces(opts.ifaces)
    }

    /// Make this daemon's enforcement the one in force: pin its links as a new generation, let `flip`
    /// switch the programs to its indicators (CONFIG), replace the pins of indicator maps made anew, and
    /// only then release the older generations, so enforcement has no gap.
    pub fn commit(&mut self, flip: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        let Some(dir) = self.pin_dir.clone() else {
            return flip();
        };
        let older = pinned_generations(&dir);
        let generation = self.pin_links(&dir)?;
        if let Err(e) = flip().and_then(|()| self.replace_map_pins(&dir)) {
            // Back out: the previous daemon's links were never touched.
            self.pinned.clear();
            if let Err(undo) = release_generation(&generation) {
                tracing::warn!("could not release this daemon's links in {}: {undo:#}", generation.display());
            }
            return Err(e);
        }
        for old in older {
            let released = release_generation(&old)?;
            tracing::info!("adopted enforcement pinned by a previous daemon: released its {released} links");
        }
        Ok(())
    }

    /// Pin the fresh indicator maps where the old ones were pinned: each goes in by a rename over the old
    /// pin, so the path never points at nothing.
    fn replace_map_pins(&mut self, dir: &Path) -> anyhow::Result<()> {
        let maps = dir.join("maps");
        for (name, map) in &self.fresh_maps {
            let path = maps.join(name);
            // bpffs refuses names with a dot.
            let staged = maps.join(format!("{name}-new"));
            let _ = std::fs::remove_file(&staged);
            map.pin(&staged).with_context(|| format!("pin the new {name} at {}", staged.display()))?;
            std::fs::rename(&staged, &path)
                .with_context(|| format!("replace the pinned {} with the new one", path.display()))?;
        }
        self.fresh_maps.clear();
        Ok(())
    }

    /// The configuration a previous daemon left in a pinned CONFIG map (its hash seeds key the
    /// pinned indicators).
    pub fn pinned_config(pin_dir: &Path) -> Option<Config> {
        let map = MapData::from_pin(pin_dir.join("maps/CONFIG")).ok()?;
        let config: Array<MapData, Config> = Array::try_from(aya::maps::Map::Array(map)).ok()?;
        config.get(&0, 0).ok().filter(|c| c.seed != [0, 0])
    }

    /// Pin this daemon's links as a new generation; returns its directory.
    fn pin_links(&mut self, dir: &Path) -> anyhow::Result<PathBuf> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let generation = dir.join("links").join(format!("{stamp:024}"));
        std::fs::create_dir_all(&generation).with_context(|| format!("create {}", generation.display()))?;
        for (i, (name, link)) in std::mem::take(&mut self.links).into_iter().enumerate() {
            let path = generation.join(format!("{i:02}-{name}"));
            match link.pin(&path) {
                Ok(pinned) => self.pinned.push(pinned),
                Err(e) => {
                    self.pinned.clear();
                    let _ = release_generation(&generation);
                    return Err(e).with_context(|| format!("pin link {}", path.display()));
                }
            }
        }
        Ok(generation)
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

    /// Attach sk_msg to SOCKS, or say what is lost without it.
    fn inspect_sockets(&mut self, sock_fd: &aya::maps::sock::SockMapFd) -> anyhow::Result<()> {
        let block = self.mode == MODE_BLOCK;
        let inspection = if self.inspection {
            self.attach_inspection(sock_fd)
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
        // A previous daemon's sk_msg stays on the pinned SOCKS until this one's replaces it, and the
        // replacement cannot be undone: it comes last, once everything else is attached.
        if !self.adopting {
            self.inspect_sockets(&sock_fd)?;
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
            self.degraded.extend(["proxy_reply", "quic_egress", "tcp_egress"]);
        } else {
            if let Err(e) = self.attach_skb(&files, "proxy_reply", CgroupSkbAttachType::Ingress) {
                tracing::warn!("proxy_reply is unavailable, proxy answers (ProxyStatus) are not read: {e:#}");
                self.degraded.push("proxy_reply");
            }
            if let Err(e) = self.attach_skb(&files, "quic_egress", CgroupSkbAttachType::Egress) {
                tracing::warn!("quic_egress is unavailable, QUIC flows are not named: {e:#}");
                self.degraded.push("quic_egress");
            }
            if let Err(e) = self.attach_skb(&files, "tcp_egress", CgroupSkbAttachType::Egress) {
                if self.mode == MODE_BLOCK {
                    return Err(
                        e.context("block mode needs tcp_egress, which holds what sk_msg cannot judge")
                    );
                }
                tracing::warn!(
                    "tcp_egress is unavailable: TCP Fast Open data and ClientHellos past the kernel's window are not \
                     judged (block mode lets them through): {e:#}"
                );
                self.degraded.push("tcp_egress");
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
        if self.adopting {
            self.inspect_sockets(&sock_fd)?;
        }
        for (path, _) in &files {
            for program in
                ["connect4", "connect6", "track_connection", "proxy_reply", "quic_egress", "tcp_egress"]
            {
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

    /// The reader of the kernel programs' log records, when `RUST_LOG` asks for them.
    pub fn take_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }

    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<aya::maps::MapData>> {
        RingBuf::try_from(self.ebpf.take_map("EVENTS").context("map EVENTS")?).context("map EVENTS")
    }

    pub fn take_quic_deny(&mut self) -> anyhow::Result<aya::maps::HashMap<MapData, u64, u32>> {
        aya::maps::HashMap::try_from(self.ebpf.take_map("QUIC_DENY").context("map QUIC_DENY")?)
            .context("map QUIC_DENY")
    }

    /// Refuse a forwarded flow the kernel let through (block mode, a late verdict): its next segment is
    /// turned into resets and the rest dropped. `false` when the kernel no longer tracks it (it ended).
    pub fn refuse_wire_flow(&mut self, key: &WireFlowKey) -> anyhow::Result<bool> {
        let map = self.ebpf.map_mut("WIRE_FLOWS").context("map WIRE_FLOWS")?;
        let mut flows = aya::maps::HashMap::<&mut MapData, WireFlowKey, WireFlowState>::try_from(map)
            .context("map WIRE_FLOWS")?;
        let Ok(mut state) = flows.get(key, 0) else { return Ok(false) };
        state.phase = PHASE_REFUSE;
        flows.insert(key, state, 0).context("write WIRE_FLOWS")?;
        Ok(true)
    }

    /// Look at the forwarded flows `due` (with their age) and apply what `decide` says of each: delete
    /// the entry, mark it refused, or keep it. `None` for a flow the kernel no longer has.
    pub fn reclaim_wire_flows(
        &mut self,
        due: &[(WireFlowKey, std::time::Duration)],
        mut decide: impl FnMut(&WireFlowKey, &WireFlowState, std::time::Duration) -> Reclaim,
    ) -> anyhow::Result<Vec<(WireFlowKey, Option<Reclaim>)>> {
        let map = self.ebpf.map_mut("WIRE_FLOWS").context("map WIRE_FLOWS")?;
        let mut flows = aya::maps::HashMap::<&mut MapData, WireFlowKey, WireFlowState>::try_from(map)
            .context("map WIRE_FLOWS")?;
        let mut out = Vec::with_capacity(due.len());
        for (key, age) in due {
            let Ok(mut state) = flows.get(key, 0) else {
                out.push((*key, None));
                continue;
            };
            let outcome = decide(key, &state, *age);
            match outcome {
                // Gone already (a FIN raced the look) is as good as removed.
                Reclaim::Remove => _ = flows.remove(key),
                Reclaim::Refuse => {
                    state.phase = PHASE_REFUSE;
                    // BPF_EXIST: a flow that ended meanwhile is not brought back.
                    if flows.insert(key, state, BPF_EXIST).is_err() {
                        out.push((*key, None));
                        continue;
                    }
                }
                Reclaim::Keep { .. } => {}
            }
            out.push((*key, Some(outcome)));
        }
        Ok(out)
    }

    /// Forwarded QUIC flows on TC: user space writes the denied ones and removes the forgotten ones.
    pub fn take_wire_quic(&mut self) -> anyhow::Result<aya::maps::HashMap<MapData, WireFlowKey, u32>> {
        aya::maps::HashMap::try_from(self.ebpf.take_map("WIRE_QUIC").context("map WIRE_QUIC")?)
            .context("map WIRE_QUIC")
    }

    /// User space's answers for connections whose verdict the kernel left to it (`PHASE_EGRESS`).
    pub fn take_deferred(&mut self) -> anyhow::Result<aya::maps::HashMap<MapData, u64, u32>> {
        let map = self.ebpf.take_map("DEFERRED").context("map DEFERRED")?;
        aya::maps::HashMap::try_from(map).context("map DEFERRED")
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

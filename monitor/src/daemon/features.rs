//! What this kernel offers, probed before anything is loaded, and what the daemon does about what is
//! missing: each gap gets a message saying what is missing and what still works. The daemon degrades
//! where that is safe (audit from TC alone when the cgroup hooks are missing) and refuses where it is
//! not (block mode without an enforcement hook).

use std::{fs, path::PathBuf};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};
use monitor_common::config::{MODE_AUDIT, MODE_BLOCK, MODE_OFF};
use serde::Serialize;

use super::kernel::cgroup2_root;

/// RLIMIT_MEMLOCK after the daemon tried to lift it, and whether this kernel charges BPF memory to it
/// (before 5.11; later kernels charge the memory cgroup instead).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memlock {
    /// `None`: unlimited.
    pub limit: Option<u64>,
    pub charged: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Features {
    pub release: String,
    /// /sys/kernel/btf/vmlinux: the kernel's own types (the programs use no CO-RE relocations).
    pub kernel_btf: bool,
    /// BPF_BTF_LOAD: the programs' BTF loads (sk_storage maps need it).
    pub btf_load: bool,
    pub cgroup2: Option<PathBuf>,
    pub ringbuf: bool,
    pub sk_storage: bool,
    pub sockhash: bool,
    pub sk_msg: bool,
    /// bpf_loop from sk_msg (5.17+): the scans that name a target in the kernel.
    pub bpf_loop: bool,
    pub cgroup_sock_addr: bool,
    pub sock_ops: bool,
    pub cgroup_skb: bool,
    /// The TC classifier (clsact ingress) of gateway mode.
    pub sched_cls: bool,
    pub memlock: Memlock,
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so maps of a million indicators load.
fn raise_memlock() -> Option<u64> {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return None;
    }
    // Not allowed to raise the hard limit (a container): take the soft limit up to it.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return None;
    }
    limit.rlim_cur = limit.rlim_max;
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    (limit.rlim_max != libc::RLIM_INFINITY).then_some(limit.rlim_max)
}

/// `5.10.0-32-amd64` → (5, 10).
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl Features {
    /// Probe this kernel. Each probe loads or creates a tiny object; an unexpected probe error counts as
    /// missing (and is named in the message of whatever then fails).
    pub fn detect() -> Features {
        let program = |t: ProgramType| is_program_supported(t).unwrap_or(false);
        let map = |t: MapType| is_map_supported(t).unwrap_or(false);
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let limit = raise_memlock();
        let sk_msg = program(ProgramType::SkMsg);
        Features {
            kernel_btf: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
            btf_load: aya::features().btf().is_some(),
            cgroup2: cgroup2_root().ok(),
            ringbuf: map(MapType::RingBuf),
            sk_storage: map(MapType::SkStorage),
            sockhash: map(MapType::SockHash),
            sk_msg,
            bpf_loop: sk_msg
                && is_helper_supported(ProgramType::SkMsg, BpfHelper::BPF_FUNC_loop).unwrap_or(false),
            cgroup_sock_addr: program(ProgramType::CgroupSockAddr),
            sock_ops: program(ProgramType::SockOps),
            cgroup_skb: program(ProgramType::CgroupSkb),
            sched_cls: program(ProgramType::SchedClassifier),
            memlock: Memlock { limit, charged: version(&release).is_some_and(|v| v < (5, 11)) },
            release,
        }
    }

    /// One line per feature, as `monitor probe` prints them: (name, present, what it is for).
    pub fn lines(&self) -> Vec<(&'static str, bool, String)> {
        let memlock = match (self.memlock.charged, self.memlock.limit) {
            (false, _) => {
                "BPF memory is charged to the memory cgroup (5.11+), not RLIMIT_MEMLOCK".to_string()
            }
            (true, None) => "RLIMIT_MEMLOCK unlimited".to_string(),
            (true, Some(n)) => format!("RLIMIT_MEMLOCK {n} bytes, which this kernel charges BPF maps to"),
        };
        vec![
            ("btf", self.btf_load, "BPF_BTF_LOAD (the programs' BTF; sk_storage maps need it)".into()),
            (
                "kernel_btf",
                self.kernel_btf,
                "/sys/kernel/btf/vmlinux (not needed: no CO-RE relocations)".into(),
            ),
            (
                "cgroup2",
                self.cgroup2.is_some(),
                self.cgroup2.as_ref().map(|p| p.display().to_string()).unwrap_or("not mounted".into()),
            ),
            ("ringbuf", self.ringbuf, "BPF_MAP_TYPE_RINGBUF (5.8+)".into()),
            ("sk_storage", self.sk_storage, "BPF_MAP_TYPE_SK_STORAGE (5.2+)".into()),
            ("sockhash", self.sockhash, "BPF_MAP_TYPE_SOCKHASH (4.18+)".into()),
            ("sk_msg", self.sk_msg, "BPF_PROG_TYPE_SK_MSG (4.17+)".into()),
            ("bpf_loop", self.bpf_loop, "bpf_loop from sk_msg (5.17+)".into()),
            ("cgroup_sock_addr", self.cgroup_sock_addr, "cgroup/connect4, connect6 (4.17+)".into()),
            ("sock_ops", self.sock_ops, "BPF_PROG_TYPE_SOCK_OPS (4.13+)".into()),
            ("cgroup_skb", self.cgroup_skb, "BPF_PROG_TYPE_CGROUP_SKB (4.10+)".into()),
            ("tc_clsact", self.sched_cls, "BPF_PROG_TYPE_SCHED_CLS on clsact ingress".into()),
            ("memlock", true, memlock),
        ]
    }
}

/// What the daemon will attach on this kernel, and what it says about what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// connect4/6 and sock_ops on the cgroups: local sockets and their processes.
    pub cgroup_hooks: bool,
    /// sk_msg on the sockhash: the first bytes of local sockets, named (and judged) in the kernel.
    pub inspection: bool,
    /// cgroup_skb: proxy answers and QUIC.
    pub skb: bool,
    /// TC on the `--iface` interfaces.
    pub gateway: bool,
    /// Warnings: what is missing and what still works.
    pub notes: Vec<String>,
}

/// What the operator asked for.
#[derive(Clone, Copy)]
pub struct Wanted<'a> {
    pub mode: u32,
    pub ifaces: &'a [String],
    /// `--cgroup` given: those directories must exist (checked elsewhere); none: the cgroup2 root.
    pub explicit_cgroups: bool,
    /// A rough size of the maps the daemon will create, to check RLIMIT_MEMLOCK against.
    pub map_bytes: u64,
}

const STILL_WORKS: &str = "`monitor replay`, `monitor hunt` and `monitor timeline` still work";

fn missing(list: &[(&str, bool)]) -> String {
    list.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Decide from the probed features. `Err` is the reason to refuse, for the operator.
pub fn decide(f: &Features, want: &Wanted<'_>) -> Result<Plan, String> {
    let block = want.mode == MODE_BLOCK;
    let kernel = format!("this host (kernel {})", f.release);
    let core = missing(&[
        ("the BPF ring buffer (5.8+)", f.ringbuf),
        ("BTF loading", f.btf_load),
        ("socket local storage (sk_storage, 5.2+)", f.sk_storage),
    ]);
    if !core.is_empty() {
        return Err(format!(
            "{kernel} lacks {core}: the kernel programs could not hand what they see to the daemon, so the \
             monitor cannot run here; {STILL_WORKS}"
        ));
    }
    if let (true, Some(limit)) = (f.memlock.charged, f.memlock.limit)
        && limit < want.map_bytes
    {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} KiB and {kernel} charges BPF maps to it (before 5.11); the maps need about {} MiB: \
             raise it (systemd: LimitMEMLOCK=infinity; a shell: ulimit -l unlimited) or load fewer indicators",
            limit / 1024,
            want.map_bytes.div_ceil(1 << 20)
        ));
    }
    let mut notes = Vec::new();
    if !f.kernel_btf {
        notes.push(format!(
            "{kernel} has no /sys/kernel/btf/vmlinux: the monitor does not need it (its programs use no CO-RE \
             relocations), only bpftool's views of kernel types are poorer"
        ));
    }
    let gateway_wanted = !want.ifaces.is_empty();
    let ifaces = want.ifaces.join(", ");
    let cgroup_gap = missing(&[
        ("a mounted cgroup v2 hierarchy", f.cgroup2.is_some() || want.explicit_cgroups),
        ("cgroup/connect programs", f.cgroup_sock_addr),
        ("sock_ops programs", f.sock_ops),
        // sock_ops enrols sockets in the sockhash: without it the program does not load.
        ("sockhash maps", f.sockhash),
    ]);
    let cgroup_hooks = cgroup_gap.is_empty();
    if !cgroup_hooks {
        if block {
            return Err(format!(
                "block mode needs the cgroup hooks, and {kernel} lacks {cgroup_gap}: refusing to start rather \
                 than promise blocking it cannot do. Audit mode with --iface still works from TC alone"
            ));
        }
        if !gateway_wanted || !f.sched_cls {
            return Err(format!(
                "{kernel} lacks {cgroup_gap}{}: there is nothing the monitor can watch. Mount cgroup v2 \
                 (mount -t cgroup2 none /sys/fs/cgroup) or watch forwarded traffic with --iface; {STILL_WORKS}",
                if gateway_wanted { " and the TC classifier" } else { "" }
            ));
        }
        notes.push(format!(
            "{kernel} lacks {cgroup_gap}: local sockets are not watched (no processes, nothing blocked); \
             audit continues from TC alone on {ifaces} (forwarded flows, named without a process)"
        ));
    }
    let inspection_gap =
        missing(&[("sk_msg programs", f.sk_msg), ("bpf_loop from sk_msg (5.17+)", f.bpf_loop)]);
    let inspection = cgroup_hooks && inspection_gap.is_empty() && want.mode != MODE_OFF;
    if cgroup_hooks && !inspection_gap.is_empty() {
        if block {
            return Err(format!(
                "block mode needs payload inspection in the kernel, and {kernel} lacks {inspection_gap}: the \
                 kernel could not stop a denied request before it leaves, so block mode refuses to start. \
                 Audit mode still reports each connection with its process and proxy"
            ));
        }
        if want.mode != MODE_OFF {
            notes.push(format!(
                "{kernel} lacks {inspection_gap}: payload inspection is off, so events carry the process and the \
                 proxy address but not the real target; IP and CIDR indicators still apply"
            ));
        }
    }
    let skb = cgroup_hooks && f.cgroup_skb;
    if cgroup_hooks && !f.cgroup_skb {
        if block {
            // tcp_egress holds what sk_msg cannot judge (Fast Open data, ClientHellos past its window).
            return Err(format!(
                "block mode needs cgroup_skb programs, and {kernel} lacks them: TCP Fast Open data and \
                 ClientHellos larger than the kernel's window would leave unjudged, so block mode refuses to \
                 start. Audit mode still names connections (not QUIC, nor those bytes)"
            ));
        }
        notes.push(format!(
            "{kernel} lacks cgroup_skb programs: proxies' answers (ProxyStatus, refused tunnels), QUIC, TCP Fast \
             Open data and ClientHellos past the kernel's window are not read; other TCP inspection is unaffected"
        ));
    }
    let gateway = gateway_wanted && f.sched_cls;
    if gateway_wanted && !f.sched_cls {
        notes.push(format!(
            "{kernel} lacks the TC classifier (sched_cls): gateway mode on {ifaces} is off, forwarded flows are \
             not seen; local sockets are still watched"
        ));
    }
    Ok(Plan { cgroup_hooks, inspection, skb, gateway, notes })
}

/// What an agent under a fleet policy loads: what block mode needs wherever the kernel has it, since the
/// fleet may ask for block at any time. Where this kernel cannot block and the block is the fleet's (not
/// this host's configuration, `fleet_asks_block`), the agent starts in audit rather than refuse to run, and
/// the reason comes back beside the plan; a block the local configuration asks for still refuses.
pub fn decide_under_fleet(
    f: &Features,
    want: &Wanted<'_>,
    fleet_asks_block: bool,
) -> Result<(Plan, Option<String>), String> {
    match decide(f, &Wanted { mode: MODE_BLOCK, ..*want }) {
        Ok(plan) => Ok((plan, None)),
        Err(why) if fleet_asks_block => {
            decide(f, &Wanted { mode: MODE_AUDIT, ..*want }).map(|plan| (plan, Some(why)))
        }
        Err(_) => decide(f, want).map(|plan| (plan, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Features {
        Features {
            release: "6.18.0".into(),
            kernel_btf: true,
            btf_load: true,
            cgroup2: Some("/sys/fs/cgroup".into()),
            ringbuf: true,
            sk_storage: true,
            sockhash: true,
            sk_msg: true,
            bpf_loop: true,
            cgroup_sock_addr: true,
            sock_ops: true,
            cgroup_skb: true,
            sched_cls: true,
            memlock: Memlock { limit: None, charged: false },
        }
    }

    fn want(mode: u32, ifaces: &[String]) -> Wanted<'_> {
        Wanted { mode, ifaces, explicit_cgroups: false, map_bytes: 64 << 20 }
    }

    #[test]
    fn a_full_kernel_attaches_everything_without_notes() {
        let eth = ["eth1".to_string()];
        let plan = decide(&full(), &want(MODE_BLOCK, &eth)).expect("plan");
        assert_eq!(
            plan,
            Plan { cgroup_hooks: true, inspection: true, skb: true, gateway: true, notes: Vec::new() }
        );
    }

    #[test]
    fn no_ring_buffer_or_sk_storage_refuses_and_says_what_still_works() {
        for f in [Features { ringbuf: false, ..full() }, Features { sk_storage: false, ..full() }] {
            let err = decide(&f, &want(MODE_AUDIT, &[])).expect_err("refused");
            assert!(err.contains("cannot run here") && err.contains("monitor replay"), "{err}");
        }
        let err =
            decide(&Features { ringbuf: false, ..full() }, &want(MODE_AUDIT, &[])).expect_err("refused");
        assert!(err.contains("ring buffer (5.8+)"), "{err}");
    }

    #[test]
    fn no_cgroup2_degrades_to_tc_in_audit_and_refuses_block() {
        let f = Features { cgroup2: None, ..full() };
        let eth = ["eth1".to_string()];
        let plan = decide(&f, &want(MODE_AUDIT, &eth)).expect("audit from TC alone");
        assert!(!plan.cgroup_hooks && !plan.inspection && !plan.skb && plan.gateway, "{plan:?}");
        assert!(plan.notes[0].contains("audit continues from TC alone on eth1"), "{:?}", plan.notes);
        let err = decide(&f, &want(MODE_BLOCK, &eth)).expect_err("block refused");
        assert!(err.contains("block mode needs the cgroup hooks") && err.contains("cgroup v2"), "{err}");
        let err = decide(&f, &want(MODE_AUDIT, &[])).expect_err("nothing to watch");
        assert!(err.contains("nothing the monitor can watch") && err.contains("--iface"), "{err}");
        // An explicit --cgroup directory stands for the mount (its existence is checked elsewhere).
        let explicit = Wanted { explicit_cgroups: true, ..want(MODE_BLOCK, &[]) };
        assert!(decide(&f, &explicit).is_ok());
    }

    #[test]
    fn no_sk_msg_or_bpf_loop_refuses_block_and_audits_without_targets() {
        for f in
            [Features { sk_msg: false, bpf_loop: false, ..full() }, Features { bpf_loop: false, ..full() }]
        {
            let err = decide(&f, &want(MODE_BLOCK, &[])).expect_err("block refused");
            assert!(err.contains("payload inspection") && err.contains("refuses to start"), "{err}");
            let plan = decide(&f, &want(MODE_AUDIT, &[])).expect("audit degrades");
            assert!(plan.cgroup_hooks && !plan.inspection, "{plan:?}");
            assert!(plan.notes.iter().any(|n| n.contains("not the real target")), "{:?}", plan.notes);
        }
        let plan = decide(&Features { bpf_loop: false, ..full() }, &want(MODE_OFF, &[])).expect("off");
        assert!(plan.notes.is_empty(), "mode off needs no inspection: {:?}", plan.notes);
    }

    #[test]
    fn a_fleet_block_the_kernel_cannot_serve_starts_audit_and_says_why() {
        let weak = Features { bpf_loop: false, ..full() };
        let (plan, why) = decide_under_fleet(&weak, &want(MODE_BLOCK, &[]), true).expect("audit instead");
        assert!(plan.cgroup_hooks && !plan.inspection, "{plan:?}");
        assert!(why.is_some_and(|w| w.contains("block mode")), "the reason is kept for status");
        // A block this host's configuration asks for still refuses.
        let err = decide_under_fleet(&weak, &want(MODE_BLOCK, &[]), false).expect_err("local block refused");
        assert!(err.contains("refuses to start"), "{err}");
        // Audit asked for: the audit plan, nothing to report.
        let (_, why) = decide_under_fleet(&weak, &want(MODE_AUDIT, &[]), false).expect("audit");
        assert!(why.is_none());
        // A kernel that can block loads what block needs whatever the mode.
        let (plan, why) = decide_under_fleet(&full(), &want(MODE_AUDIT, &[]), false).expect("full");
        assert!(plan.inspection && plan.skb && why.is_none(), "{plan:?}");
    }

    #[test]
    fn no_tc_classifier_drops_gateway_mode_only() {
        let f = Features { sched_cls: false, ..full() };
        let eth = ["eth1".to_string()];
        let plan = decide(&f, &want(MODE_BLOCK, &eth)).expect("local sockets still watched");
        assert!(plan.cgroup_hooks && plan.inspection && !plan.gateway, "{plan:?}");
        assert!(plan.notes[0].contains("gateway mode on eth1 is off"), "{:?}", plan.notes);
        let f = Features { sched_cls: false, cgroup2: None, ..full() };
        assert!(decide(&f, &want(MODE_AUDIT, &eth)).is_err());
    }

    #[test]
    fn no_cgroup_skb_loses_proxy_answers_and_quic() {
        let plan = decide(&Features { cgroup_skb: false, ..full() }, &want(MODE_AUDIT, &[])).expect("plan");
        assert!(!plan.skb && plan.inspection);
        assert!(plan.notes[0].contains("QUIC"), "{:?}", plan.notes);
    }

    #[test]
    fn no_cgroup_skb_refuses_block_mode() {
        // What sk_msg cannot judge (Fast Open data, large ClientHellos) would pass without tcp_egress.
        let err =
            decide(&Features { cgroup_skb: false, ..full() }, &want(MODE_BLOCK, &[])).expect_err("refused");
        assert!(err.contains("Fast Open"), "{err}");
    }

    #[test]
    fn locked_memory_is_checked_where_the_kernel_charges_it() {
        let tight = Memlock { limit: Some(8 << 20), charged: true };
        let err =
            decide(&Features { memlock: tight, ..full() }, &want(MODE_AUDIT, &[])).expect_err("too little");
        assert!(err.contains("RLIMIT_MEMLOCK is 8192 KiB") && err.contains("LimitMEMLOCK=infinity"), "{err}");
        let uncharged = Memlock { limit: Some(8 << 20), charged: false };
        assert!(decide(&Features { memlock: uncharged, ..full() }, &want(MODE_AUDIT, &[])).is_ok());
    }

    #[test]
    fn missing_kernel_btf_is_only_a_note() {
        let plan = decide(&Features { kernel_btf: false, ..full() }, &want(MODE_BLOCK, &[])).expect("plan");
        assert!(plan.notes[0].contains("does not need it"), "{:?}", plan.notes);
    }

    #[test]
    fn kernel_versions_are_read() {
        assert_eq!(version("5.10.0-32-amd64"), Some((5, 10)));
        assert_eq!(version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(version("garbage"), None);
    }
}

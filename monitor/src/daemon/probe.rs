//! `monitor probe`: what this kernel supports. Loads every program (the verifier must accept it) and
//! attaches it to a scratch cgroup and to `lo`, then detaches; prints one line per program and feature.
//! Used by `cargo xtask kernel-check` under other kernels, and by operators before deploying.

use std::{fs, os::fd::AsFd as _, process::ExitCode};

use anyhow::Context as _;
use aya::{
    EbpfLoader,
    maps::{MapData, SockHash},
    programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, SkMsg, SockOps, TcAttachType, tc},
};

use super::{
    features::Features,
    kernel::{OBJECT, cgroup2_root, kernel_log_level},
};

/// Each program, its hook, and the oldest kernel it is written for.
pub const PROGRAMS: &[(&str, &str, &str)] = &[
    ("connect4", "cgroup/connect4", "5.8 (ring buffer)"),
    ("connect6", "cgroup/connect6", "5.8 (ring buffer)"),
    ("track_connection", "cgroup sock_ops", "5.8 (ring buffer; sk_storage from sock_ops 5.3)"),
    ("inspect_send", "sk_msg on a sockhash", "5.17 (bpf_loop)"),
    ("proxy_reply", "cgroup_skb ingress", "5.8 (ring buffer; sk_storage from cgroup_skb 5.2)"),
    ("quic_egress", "cgroup_skb egress", "5.8 (ring buffer; sk_storage from cgroup_skb 5.2)"),
    ("tcp_egress", "cgroup_skb egress", "5.8 (ring buffer; sk_storage from cgroup_skb 5.2)"),
    ("wire_ingress", "tc clsact ingress", "5.17 (bpf_loop; tcx links from 6.6, netlink before)"),
    ("wire_egress", "tc clsact egress", "5.17 (bpf_loop; tcx links from 6.6, netlink before)"),
];

struct Line {
    name: String,
    result: Result<String, String>,
}

fn feature(name: &str, ok: bool, what: &str) -> Line {
    Line { name: name.into(), result: if ok { Ok(what.into()) } else { Err(format!("missing: {what}")) } }
}

pub fn run() -> anyhow::Result<ExitCode> {
    let found = Features::detect();
    println!("kernel\t{}", found.release);
    let mut lines: Vec<Line> =
        found.lines().into_iter().map(|(name, ok, what)| feature(name, ok, &what)).collect();
    // The object as the daemon loads it: its log records at the level RUST_LOG gives.
    let log_level = kernel_log_level();
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, &log_level, true);
    let mut ebpf = match loader.load(OBJECT) {
        Ok(e) => e,
        Err(e) => {
            lines.push(Line { name: "maps".into(), result: Err(format!("{e:#}")) });
            return Ok(report(&lines));
        }
    };
    lines.push(Line {
        name: "maps".into(),
        result: Ok("ring buffer, sockhash, sk_storage, LPM tries created".into()),
    });
    let scratch = cgroup2_root().map(|r| r.join(format!("monitor-probe-{}", std::process::id())));
    let cgroup =
        scratch.as_ref().ok().and_then(|p| fs::create_dir_all(p).ok().and_then(|_| fs::File::open(p).ok()));
    let socks_fd = ebpf
        .map("SOCKS")
        .and_then(|m| SockHash::<&MapData, u64>::try_from(m).ok())
        .and_then(|m| m.fd().try_clone().ok());
    for (name, hook, minimum) in PROGRAMS {
        let Some(program) = ebpf.program_mut(name) else {
            lines.push(Line { name: (*name).into(), result: Err("not in the object".into()) });
            continue;
        };
        let result: anyhow::Result<()> = (|| {
            match program {
                aya::programs::Program::CgroupSockAddr(p) => {
                    p.load().context("verifier")?;
                    let cg = cgroup.as_ref().context("no scratch cgroup to attach to")?;
                    let link = p.attach(cg.as_fd(), CgroupAttachMode::Single).context("attach")?;
                    CgroupSockAddr::detach(p, link).context("detach")?;
                }
                aya::programs::Program::SockOps(p) => {
                    p.load().context("verifier")?;
                    let cg = cgroup.as_ref().context("no scratch cgroup to attach to")?;
                    let link = p.attach(cg.as_fd(), CgroupAttachMode::Single).context("attach")?;
                    SockOps::detach(p, link).context("detach")?;
                }
                aya::programs::Program::CgroupSkb(p) => {
                    p.load().context("verifier")?;
                    let cg = cgroup.as_ref().context("no scratch cgroup to attach to")?;
                    let link = p
                        .attach(
                            cg.as_fd(),
                            aya::programs::CgroupSkbAttachType::Ingress,
                            CgroupAttachMode::Single,
                        )
                        .context("attach")?;
                    aya::programs::CgroupSkb::detach(p, link).context("detach")?;
                }
                aya::programs::Program::SkMsg(p) => {
                    p.load().context("verifier")?;
                    let fd = socks_fd.as_ref().context("sockhash SOCKS missing")?;
                    let link = p.attach(fd).context("attach")?;
                    SkMsg::detach(p, link).context("detach")?;
                }
                aya::programs::Program::SchedClassifier(p) => {
                    p.load().context("verifier")?;
                    let _ = tc::qdisc_add_clsact("lo");
                    let link = p.attach("lo", TcAttachType::Ingress).context("attach to lo")?;
                    SchedClassifier::detach(p, link).context("detach")?;
                }
                _ => anyhow::bail!("unexpected program type"),
            }
            Ok(())
        })();
        lines.push(Line {
            name: (*name).into(),
            result: result
                .map(|_| {
                    // How hard the verifier worked (its limit is a million): room left for changes.
                    let verified = program
                        .info()
                        .ok()
                        .and_then(|i| i.verified_instruction_count())
                        .map(|n| format!("; {n} instructions verified"))
                        .unwrap_or_default();
                    format!("loaded and attached ({hook}; written for {minimum}{verified})")
                })
                .map_err(|e| {
                    // The verifier's log ends with statistics; its reason comes just before them.
                    let text = format!("{e:#}");
                    let statistics = ["verification time", "stack depth", "processed ", ": "];
                    let reason: Vec<&str> = text
                        .lines()
                        .rev()
                        .filter(|l| {
                            !l.trim().is_empty() && !statistics.iter().any(|s| l.trim_start().starts_with(s))
                        })
                        .take(2)
                        .collect();
                    reason.into_iter().rev().collect::<Vec<_>>().join(" | ")
                }),
        });
    }
    if let Ok(p) = scratch {
        let _ = fs::remove_dir(p);
    }
    Ok(report(&lines))
}

fn report(lines: &[Line]) -> ExitCode {
    let mut ok = true;
    for line in lines {
        match &line.result {
            Ok(what) => println!("{}\tok\t{what}", line.name),
            Err(why) => {
                ok = false;
                println!("{}\tFAILED\t{why}", line.name);
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

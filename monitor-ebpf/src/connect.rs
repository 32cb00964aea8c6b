//! `connect4`/`connect6`: the process behind each outgoing TCP connection, and IP/CIDR indicators
//! judged before the SYN is sent (returning 0 makes connect() fail with EPERM).

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::bpf_get_socket_cookie,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use monitor_common::{
    record::{AF_INET, AF_INET6, COMM_LEN, Endpoints, KIND_PROCESS, ProcessRecord},
    verdict::{DROP_RINGBUF_FULL, VERDICT_BLOCKED, VERDICT_NO_MATCH},
};

use crate::{
    maps::{EVENTS, config, count_drop},
    policy::{ipv4_bits, ipv6_bits, verdict},
    records::header,
};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// UDP sockets worth naming a process for: QUIC's port (DNS and the rest would only add noise).
const QUIC_PORT: u16 = 443;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, AF_INET)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    on_connect(&ctx, AF_INET6)
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, family: u32) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    let sock_type = unsafe { core::ptr::read_volatile(&raw const sa.type_) };
    if sock_type != SOCK_STREAM && sock_type != SOCK_DGRAM {
        return 1;
    }
    // Context fields are read one by one: the verifier rejects loads through a moved context pointer.
    let field = |p: *const u32| unsafe { core::ptr::read_volatile(p) };
    let remote_addr = if family == AF_INET {
        [field(&raw const sa.user_ip4), 0, 0, 0]
    } else {
        [
            field(&raw const sa.user_ip6[0]),
            field(&raw const sa.user_ip6[1]),
            field(&raw const sa.user_ip6[2]),
            field(&raw const sa.user_ip6[3]),
        ]
    };
    let user_port = field(&raw const sa.user_port);
    if sock_type == SOCK_DGRAM && u16::from_be(user_port as u16) != QUIC_PORT {
        return 1;
    }
    let outcome = match config() {
        Some(config) => {
            let bits = if family == AF_INET {
                ipv4_bits(remote_addr[0], config)
            } else {
                ipv6_bits(remote_addr, config)
            };
            verdict(bits, config)
        }
        None => VERDICT_NO_MATCH,
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
    match EVENTS.reserve::<ProcessRecord>(0) {
        Some(mut entry) => {
            entry.write(ProcessRecord {
                header: header(KIND_PROCESS, cookie),
                tgid: (pid_tgid >> 32) as u32,
                pid: pid_tgid as u32,
                uid: uid_gid as u32,
                gid: (uid_gid >> 32) as u32,
                comm,
                endpoints: Endpoints {
                    family,
                    local_port: 0,
                    remote_port: u16::from_be(user_port as u16) as u32,
                    _pad: 0,
                    local_addr: [0; 4],
                    remote_addr,
                },
                verdict: outcome,
                sock_type,
            });
            // The process is read from /proc when user space gets this record: wake it now, before a
            // short-lived client exits.
            entry.submit(0);
        }
        None => count_drop(DROP_RINGBUF_FULL),
    }
    if outcome == VERDICT_BLOCKED {
        // Off unless RUST_LOG asks for debug: the loader sets the level, and the verifier drops the
        // branches of levels below it.
        debug!(
            ctx,
            "connect() refused by an IP or CIDR indicator, tgid {} port {}",
            (pid_tgid >> 32) as u32,
            u16::from_be(user_port as u16)
        );
        0
    } else {
        1
    }
}

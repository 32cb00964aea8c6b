//! `sock_ops`: outgoing TCP connections of the watched cgroup, from connect to close.

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use monitor_common::{
    config::MODE_OFF,
    record::{
        AF_INET, Endpoints, FlowState, KIND_CLOSED, KIND_ESTABLISHED, KIND_FAILED, PHASE_DONE, PHASE_FIRST,
        SocketRecord,
    },
    verdict::DROP_RINGBUF_FULL,
};

use crate::{
    maps::{EVENTS, SOCKS, config, count_drop, flow_state, wakeup},
    records::header,
};

const TCP_SYN_SENT: u32 = 2;
const TCP_SYN_RECV: u32 = 3;
const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn track_connection(ctx: SockOpsContext) -> u32 {
    try_track_connection(&ctx);
    1
}

fn try_track_connection(ctx: &SockOpsContext) {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
            let mut initial = FlowState { cookie, phase: PHASE_FIRST, ..Default::default() };
            let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
            // A reused socket may carry an old state: start afresh.
            if let Some(state) = flow_state(sk, Some(&mut initial)) {
                *state = initial;
            }
            // Ask for state changes: they tell established-then-closed from failed.
            let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
            emit(ctx, KIND_ESTABLISHED, cookie, 0);
            let inspect = config().map(|c| c.mode != MODE_OFF).unwrap_or(false);
            if inspect {
                let mut key = cookie;
                if SOCKS.update(&mut key, unsafe { &mut *ctx.ops }, BPF_ANY as u64).is_err() {
                    // Not enrolled (map full): the connection is reported without inspection.
                    mark_done(ctx);
                }
            }
        }
        BPF_SOCK_OPS_STATE_CB => {
            let old = ctx.arg(0);
            let new = ctx.arg(1);
            if new == TCP_CLOSE {
                let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
                let kind = if old == TCP_SYN_SENT || old == TCP_SYN_RECV { KIND_FAILED } else { KIND_CLOSED };
                emit(ctx, kind, cookie, old);
            }
        }
        _ => {}
    }
}

fn mark_done(ctx: &SockOpsContext) {
    if let Some(state) = flow_state(unsafe { (*ctx.ops).__bindgen_anon_2.sk }, None) {
        state.phase = PHASE_DONE;
    }
}

#[inline(always)]
fn endpoints(ctx: &SockOpsContext) -> Endpoints {
    let ops = ctx.ops;
    // Each context field is read on its own: the verifier rejects loads through a moved context pointer.
    let field = |p: *const u32| unsafe { core::ptr::read_volatile(p) };
    let family = field(unsafe { &raw const (*ops).family });
    let (local_addr, remote_addr) = if family == AF_INET {
        (
            [field(unsafe { &raw const (*ops).local_ip4 }), 0, 0, 0],
            [field(unsafe { &raw const (*ops).remote_ip4 }), 0, 0, 0],
        )
    } else {
        unsafe {
            (
                [
                    field(&raw const (*ops).local_ip6[0]),
                    field(&raw const (*ops).local_ip6[1]),
                    field(&raw const (*ops).local_ip6[2]),
                    field(&raw const (*ops).local_ip6[3]),
                ],
                [
                    field(&raw const (*ops).remote_ip6[0]),
                    field(&raw const (*ops).remote_ip6[1]),
                    field(&raw const (*ops).remote_ip6[2]),
                    field(&raw const (*ops).remote_ip6[3]),
                ],
            )
        }
    };
    let local_port = field(unsafe { &raw const (*ops).local_port });
    let remote_port = field(unsafe { &raw const (*ops).remote_port });
    Endpoints {
        family,
        local_port,
        remote_port: remote_port_of(remote_port),
        _pad: 0,
        local_addr,
        remote_addr,
    }
}

/// sock_ops gives the local port in host order, and the remote one in network order in the upper
/// 16 bits of the word on little-endian machines (the lower ones on big-endian machines).
#[inline(always)]
fn remote_port_of(raw: u32) -> u32 {
    #[cfg(target_endian = "little")]
    let be = (raw >> 16) as u16;
    #[cfg(target_endian = "big")]
    let be = raw as u16;
    u16::from_be(be) as u32
}

#[inline(always)]
fn emit(ctx: &SockOpsContext, kind: u32, cookie: u64, old_state: u32) {
    let Some(mut entry) = EVENTS.reserve::<SocketRecord>(0) else {
        count_drop(DROP_RINGBUF_FULL);
        return;
    };
    entry.write(SocketRecord { header: header(kind, cookie), endpoints: endpoints(ctx), old_state, _pad: 0 });
    entry.submit(wakeup());
}

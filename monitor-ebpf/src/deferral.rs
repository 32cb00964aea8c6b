//! Verdicts the kernel leaves to user space (`PHASE_EGRESS`): the record that says so, and the copy of
//! every byte user space needs for it.
//!
//! A ClientHello larger than the kernel's window is deferred by sk_msg, which sees each send whole and
//! hands all of it over ([`capture_send`]): TCP sends only a congestion window's worth before its first
//! segments are acknowledged, so the segments tcp_egress holds back would never show the rest. Bytes
//! that never passed sk_msg (Fast Open) are handed over by tcp_egress itself.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, sk_msg_md},
    helpers::generated::bpf_msg_pull_data,
    programs::SkMsgContext,
};
use monitor_common::{
    record::{DEFER_LIMIT, DeferRecord, FlowState, KIND_DEFER},
    verdict::{DROP_PULL_FAILED, DROP_RINGBUF_FULL},
};

use crate::{
    maps::{EVENTS, count_drop},
    parse::{WINDOW, bounded_loop},
    records::{header, submit_payload},
};

#[inline(always)]
pub fn report_defer(state: &FlowState, from: u32, reason: u32) {
    let Some(mut entry) = EVENTS.reserve::<DeferRecord>(0) else {
        count_drop(DROP_RINGBUF_FULL);
        return;
    };
    entry.write(DeferRecord { header: header(KIND_DEFER, state.cookie), from, reason });
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
}

struct Windows {
    msg: *mut sk_msg_md,
    cookie: u64,
    /// Stream offset of the send's first byte.
    base: u32,
    size: u32,
    /// Stream offset past which nothing is handed over.
    limit: u32,
    /// The next window's offset in the send.
    off: u32,
}

/// Hand user space every byte of this send, window by window, up to `DEFER_LIMIT` past the deferral.
#[inline(always)]
pub fn capture_send(ctx: &SkMsgContext, state: &mut FlowState) {
    let size = ctx.size();
    let mut windows = Windows {
        msg: ctx.msg,
        cookie: state.cookie,
        base: state.seen,
        size,
        limit: state.defer_from.saturating_add(DEFER_LIMIT),
        off: 0,
    };
    state.seen = state.seen.saturating_add(size);
    // bpf_loop: the verifier checks one window's copy, not each of them.
    bounded_loop(DEFER_LIMIT / WINDOW + 1, window, &mut windows);
}

extern "C" fn window(_: u64, w: *mut Windows) -> i64 {
    let w = unsafe { &mut *w };
    if w.off >= w.size || w.base.saturating_add(w.off) >= w.limit {
        return 1;
    }
    let left = w.size - w.off;
    let len = if left < WINDOW { left } else { WINDOW };
    if unsafe { bpf_msg_pull_data(w.msg, w.off, w.off + len, 0) } != 0 {
        count_drop(DROP_PULL_FAILED);
        return 1;
    }
    // After the pull, `data` is the window's first byte. User space answers before TCP sends the held
    // segments again: wake it at once.
    let data = unsafe { (*w.msg).__bindgen_anon_1.data } as *const u8;
    if !submit_payload(w.cookie, w.base + w.off, data, len, w.limit, true) {
        return 1;
    }
    w.off += len;
    0
}

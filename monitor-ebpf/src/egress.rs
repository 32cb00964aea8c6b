//! `tcp_egress` (cgroup_skb egress): the client bytes sk_msg could not judge, read where they leave.
//!
//! sk_msg sees a socket's sends only once the socket is established and in the sockhash. Bytes that
//! leave before that (TCP Fast Open data in the SYN or queued before the handshake completed, a send
//! that began while the socket was still connecting) never pass it; nor can the kernel read a
//! ClientHello larger than its window. For such a connection (`PHASE_EGRESS`) this program hands every
//! payload segment to user space, which reassembles and judges it, and in block mode drops them until
//! user space has answered through `DEFERRED`: TCP keeps the bytes and sends them again, and they pass
//! once allowed. Segments sk_msg has already judged pass at once.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_RB_FORCE_WAKEUP},
    helpers::generated::bpf_skb_load_bytes,
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use monitor_common::{
    config::{MODE_BLOCK, MODE_OFF},
    record::{
        DEFER_EARLY_DATA, DEFER_LIMIT, FlowState, KIND_PAYLOAD, PAYLOAD_CHUNK, PHASE_BLOCKED, PHASE_DONE,
        PHASE_EGRESS, PHASE_FIRST, PayloadRecord,
    },
    verdict::DROP_RINGBUF_FULL,
};

use crate::{
    deferral::report_defer,
    maps::{EVENTS, config, count_drop, flow_state, resolve_deferred},
    parse::bounded_loop,
    records::header,
};

const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
/// Segments of one skb handed over at most: a 64 KiB GSO skb and its tail.
const CHUNKS_MAX: u32 = DEFER_LIMIT / PAYLOAD_CHUNK as u32;

#[cgroup_skb(egress)]
pub fn tcp_egress(ctx: SkBuffContext) -> i32 {
    try_tcp_egress(&ctx).unwrap_or(1)
}

fn try_tcp_egress(ctx: &SkBuffContext) -> Result<i32, i64> {
    let first = ctx.load::<u8>(0)?;
    let l4 = match first >> 4 {
        4 if ctx.load::<u8>(9)? == IPPROTO_TCP => ((first & 0x0f) as u32) * 4,
        6 if ctx.load::<u8>(6)? == IPPROTO_TCP => 40,
        _ => return Ok(1),
    };
    let skb = ctx.skb.skb;
    let Some(state) = flow_state(unsafe { (*skb).__bindgen_anon_2.sk }, None) else {
        return Ok(1);
    };
    let phase = state.phase;
    // Most segments belong to connections already judged, or that sk_msg is reading: leave at once. The
    // SYN (whose sequence number places the stream) is sent in `PHASE_FIRST`.
    if phase != PHASE_FIRST && phase != PHASE_EGRESS && phase != PHASE_BLOCKED {
        return Ok(1);
    }
    let flags = ctx.load::<u8>((l4 + 13) as usize)?;
    let seq = u32::from_be(ctx.load::<u32>((l4 + 4) as usize)?);
    let syn = flags & TCP_SYN != 0;
    if syn {
        state.isn = seq;
        state.isn_known = 1;
    }
    let payload_at = l4 + ((ctx.load::<u8>((l4 + 12) as usize)? >> 4) as u32) * 4;
    let len = ctx.len();
    if len <= payload_at {
        return Ok(1);
    }
    if phase == PHASE_BLOCKED {
        return Ok(0);
    }
    let Some(config) = config() else { return Ok(1) };
    if config.mode == MODE_OFF || state.isn_known == 0 {
        return Ok(1);
    }
    // The data of a SYN starts one past its sequence number.
    let offset = seq.wrapping_add(syn as u32).wrapping_sub(state.isn).wrapping_sub(1);
    let end = offset.wrapping_add(len - payload_at);
    if phase == PHASE_FIRST {
        // sk_msg never saw these bytes.
        state.phase = PHASE_EGRESS;
        state.defer_from = 0;
        state.egress_seen = 0;
        state.egress_capture = 1;
        report_defer(state, 0, DEFER_EARLY_DATA);
    } else {
        resolve_deferred(state);
        if state.phase != PHASE_EGRESS {
            return Ok(if state.phase == PHASE_BLOCKED { 0 } else { 1 });
        }
        // A copy of bytes sk_msg judged before the deferral (a retransmitted CONNECT) goes as it went.
        if end <= state.defer_from {
            return Ok(1);
        }
    }
    if state.egress_capture != 0 {
        capture(ctx, state, offset, end, payload_at);
    }
    if config.mode == MODE_BLOCK {
        return Ok(0);
    }
    // Audit: past the bound user space has what it can read.
    if end >= state.defer_from + DEFER_LIMIT {
        state.phase = PHASE_DONE;
    }
    Ok(1)
}

/// Hand user space the bytes `offset..end` of the client stream that it has not had yet, up to the bound.
#[inline(always)]
fn capture(ctx: &SkBuffContext, state: &mut FlowState, offset: u32, end: u32, payload_at: u32) {
    let limit = state.defer_from + DEFER_LIMIT;
    let start = if offset > state.egress_seen { offset } else { state.egress_seen };
    let mut chunks = Chunks {
        skb: ctx.skb.skb,
        cookie: state.cookie,
        pos: start,
        end: if end < limit { end } else { limit },
        skb_offset: payload_at.wrapping_sub(offset),
    };
    // bpf_loop: the verifier checks the body once, not once per chunk.
    bounded_loop(CHUNKS_MAX, chunk, &mut chunks);
    if chunks.pos > state.egress_seen {
        state.egress_seen = chunks.pos;
    }
}

struct Chunks {
    skb: *mut __sk_buff,
    cookie: u64,
    /// Stream offset of the next chunk, and where to stop.
    pos: u32,
    end: u32,
    /// Added to a stream offset, the offset in the skb.
    skb_offset: u32,
}

extern "C" fn chunk(_: u64, c: *mut Chunks) -> i64 {
    let c = unsafe { &mut *c };
    if c.pos >= c.end {
        return 1;
    }
    let remaining = c.end - c.pos;
    let n = if remaining < PAYLOAD_CHUNK as u32 { remaining } else { PAYLOAD_CHUNK as u32 };
    let Some(mut entry) = EVENTS.reserve::<PayloadRecord>(0) else {
        count_drop(DROP_RINGBUF_FULL);
        return 1;
    };
    let rec = entry.as_mut_ptr();
    unsafe {
        (*rec).header = header(KIND_PAYLOAD, c.cookie);
        (*rec).offset = c.pos;
        (*rec).len = 0;
        // A volatile read keeps the bounds check on the register the helper gets (see wire.rs).
        let below = core::ptr::read_volatile(&(n.wrapping_sub(1)));
        if below < PAYLOAD_CHUNK as u32
            && bpf_skb_load_bytes(
                c.skb.cast(),
                c.pos.wrapping_add(c.skb_offset),
                (*rec).data.as_mut_ptr().cast(),
                below + 1,
            ) == 0
        {
            (*rec).len = below + 1;
        }
    }
    // User space answers these before TCP sends them again: wake it now.
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    c.pos += n;
    0
}

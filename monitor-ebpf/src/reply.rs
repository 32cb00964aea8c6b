//! `proxy_reply` (cgroup_skb ingress): the first segment a proxy sends back after a CONNECT or SOCKS
//! request, so user space learns the proxy's answer (200, 403, 407, 502, a SOCKS reply code) and can
//! report a refused tunnel as ConnectionFailed for the real target. Every other packet passes untouched
//! after one socket-storage lookup.

use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, macros::cgroup_skb, programs::SkBuffContext};
use monitor_common::{
    record::{KIND_REPLY, REPLY_CHUNK, ReplyRecord},
    verdict::DROP_RINGBUF_FULL,
};

use crate::{
    maps::{EVENTS, count_drop, flow_state, wakeup},
    records::header,
};

const IPPROTO_TCP: u8 = 6;

#[cgroup_skb(ingress)]
pub fn proxy_reply(ctx: SkBuffContext) -> i32 {
    let _ = try_proxy_reply(&ctx);
    // Capture only: every packet is let in.
    1
}

fn try_proxy_reply(ctx: &SkBuffContext) -> Result<(), i64> {
    let Some(state) = flow_state(unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk }, None) else {
        return Ok(());
    };
    if state.awaiting_reply == 0 {
        return Ok(());
    }
    // cgroup_skb sees the packet from its network header on.
    let version = ctx.load::<u8>(0)? >> 4;
    let (l4, ip_payload) = match version {
        4 => {
            let ihl = ((ctx.load::<u8>(0)? & 0x0f) as u32) * 4;
            if ctx.load::<u8>(9)? != IPPROTO_TCP {
                return Ok(());
            }
            let total = u16::from_be(ctx.load::<u16>(2)?) as u32;
            (ihl, total.saturating_sub(ihl))
        }
        6 => {
            if ctx.load::<u8>(6)? != IPPROTO_TCP {
                return Ok(());
            }
            (40, u16::from_be(ctx.load::<u16>(4)?) as u32)
        }
        _ => return Ok(()),
    };
    let doff = ((ctx.load::<u8>(l4 as usize + 12)? >> 4) as u32) * 4;
    let len = ip_payload.saturating_sub(doff);
    if len == 0 {
        return Ok(());
    }
    state.awaiting_reply = 0;
    let Some(mut entry) = EVENTS.reserve::<ReplyRecord>(0) else {
        count_drop(DROP_RINGBUF_FULL);
        return Ok(());
    };
    let rec = entry.as_mut_ptr();
    let n = if len < REPLY_CHUNK as u32 { len } else { REPLY_CHUNK as u32 };
    unsafe {
        (*rec).header = header(KIND_REPLY, state.cookie);
        (*rec).len = 0;
        (*rec)._pad = 0;
        // A volatile read keeps the bounds check on the register the helper gets (see wire.rs).
        let below = core::ptr::read_volatile(&(n - 1));
        if below < REPLY_CHUNK as u32
            && bpf_skb_load_bytes(ctx.skb.skb.cast(), l4 + doff, (*rec).data.as_mut_ptr().cast(), below + 1)
                == 0
        {
            (*rec).len = below + 1;
        }
    }
    entry.submit(wakeup());
    Ok(())
}

//! `quic_egress` (cgroup_skb egress): QUIC's ClientHello is encrypted with keys any observer can derive,
//! but deriving them (HKDF, AES) is user space's job: this program hands over the first long-header
//! datagrams of each UDP socket and drops the later ones of a socket user space has denied.

use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use monitor_common::{
    config::MODE_OFF,
    record::{AF_INET, AF_INET6, Endpoints, FlowState, KIND_QUIC, QUIC_CHUNK, QUIC_DATAGRAMS, QuicRecord},
    verdict::DROP_RINGBUF_FULL,
};

use crate::{
    maps::{EVENTS, QUIC_DENY, config, count_drop, flow_state, wakeup},
    records::header,
};

const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: u32 = 8;

#[cgroup_skb(egress)]
pub fn quic_egress(ctx: SkBuffContext) -> i32 {
    try_quic_egress(&ctx).unwrap_or(1)
}

fn try_quic_egress(ctx: &SkBuffContext) -> Result<i32, i64> {
    let version = ctx.load::<u8>(0)? >> 4;
    let (family, l4, src, dst) = match version {
        4 => {
            if ctx.load::<u8>(9)? != IPPROTO_UDP {
                return Ok(1);
            }
            let ihl = ((ctx.load::<u8>(0)? & 0x0f) as u32) * 4;
            (AF_INET, ihl, [ctx.load::<u32>(12)?, 0, 0, 0], [ctx.load::<u32>(16)?, 0, 0, 0])
        }
        6 => {
            if ctx.load::<u8>(6)? != IPPROTO_UDP {
                return Ok(1);
            }
            (AF_INET6, 40, ctx.load::<[u32; 4]>(8)?, ctx.load::<[u32; 4]>(24)?)
        }
        _ => return Ok(1),
    };
    let skb = ctx.skb.skb;
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
    if QUIC_DENY.get_ptr(cookie).is_some() {
        return Ok(0);
    }
    if config().is_none_or(|c| c.mode == MODE_OFF) {
        return Ok(1);
    }
    // A long header (the handshake's packets); short-header packets come after it.
    if ctx.load::<u8>((l4 + UDP_HLEN) as usize)? & 0x80 == 0 {
        return Ok(1);
    }
    let mut initial = FlowState { cookie, ..Default::default() };
    let Some(state) = flow_state(unsafe { (*skb).__bindgen_anon_2.sk }, Some(&mut initial)) else {
        return Ok(1);
    };
    if state.seen >= QUIC_DATAGRAMS {
        return Ok(1);
    }
    state.seen += 1;
    let ports = ctx.load::<[u16; 2]>(l4 as usize)?;
    let udp_len = u16::from_be(ctx.load::<u16>(l4 as usize + 4)?) as u32;
    let len = udp_len.saturating_sub(UDP_HLEN);
    let Some(mut entry) = EVENTS.reserve::<QuicRecord>(0) else {
        count_drop(DROP_RINGBUF_FULL);
        return Ok(1);
    };
    let rec = entry.as_mut_ptr();
    let n = if len < QUIC_CHUNK as u32 { len } else { QUIC_CHUNK as u32 };
    unsafe {
        (*rec).header = header(KIND_QUIC, cookie);
        (*rec).endpoints = Endpoints {
            family,
            local_port: u16::from_be(ports[0]) as u32,
            remote_port: u16::from_be(ports[1]) as u32,
            _pad: 0,
            local_addr: src,
            remote_addr: dst,
        };
        (*rec).len = 0;
        (*rec)._pad = 0;
        // A volatile read keeps the bounds check on the register the helper gets (see wire.rs).
        let below = core::ptr::read_volatile(&(n.wrapping_sub(1)));
        if below < QUIC_CHUNK as u32
            && bpf_skb_load_bytes(skb.cast(), l4 + UDP_HLEN, (*rec).data.as_mut_ptr().cast(), below + 1) == 0
        {
            (*rec).len = below + 1;
        }
    }
    entry.submit(wakeup());
    Ok(1)
}

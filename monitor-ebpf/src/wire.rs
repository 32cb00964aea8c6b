//! `wire_ingress` (TC clsact ingress): forwarded TCP flows on an interface, for a host that routes
//! other machines' or containers' traffic. No socket, so no process: the flow is its 4-tuple, and
//! its first client bytes are handed to user space by sequence offset, to be reassembled there.

use aya_ebpf::{
    bindings::TC_ACT_OK, helpers::generated::bpf_skb_load_bytes, macros::classifier, programs::TcContext,
};
use monitor_common::{
    config::CAPTURE_LIMIT,
    record::{
        AF_INET, AF_INET6, Endpoints, KIND_WIRE, PAYLOAD_CHUNK, WireFlowKey, WireFlowState, WireRecord,
    },
    verdict::{DROP_FLOW_TABLE_FULL, DROP_RINGBUF_FULL},
};

use crate::{
    maps::{EVENTS, WIRE_FLOWS, count_drop, wakeup},
    send::header,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const CHUNKS_PER_PACKET: u32 = 2;

#[classifier]
pub fn wire_ingress(ctx: TcContext) -> i32 {
    // Capture only: never change what the packet does.
    let _ = try_wire_ingress(&ctx);
    TC_ACT_OK
}

struct Segment {
    key: WireFlowKey,
    seq: u32,
    flags: u8,
    payload_off: u32,
    payload_len: u32,
}

fn try_wire_ingress(ctx: &TcContext) -> Result<(), i64> {
    let segment = parse(ctx)?;
    let key = segment.key;
    if segment.flags & TCP_SYN != 0 && segment.flags & TCP_ACK == 0 {
        let state = WireFlowState { isn_next: segment.seq.wrapping_add(1), established: 0 };
        if WIRE_FLOWS.insert(&key, &state, 0).is_err() {
            count_drop(DROP_FLOW_TABLE_FULL);
            return Ok(());
        }
        emit(ctx, &segment, 0, 0, 0);
        return Ok(());
    }
    let Some(state) = WIRE_FLOWS.get_ptr_mut(&key) else {
        return Ok(());
    };
    let state = unsafe { &mut *state };
    if segment.flags & (TCP_FIN | TCP_RST) != 0 {
        emit(ctx, &segment, 0, 0, 0);
        let _ = WIRE_FLOWS.remove(&key);
        return Ok(());
    }
    if state.established == 0 && segment.flags & TCP_ACK != 0 {
        state.established = 1;
        if segment.payload_len == 0 {
            emit(ctx, &segment, 0, 0, 0);
        }
    }
    if segment.payload_len == 0 {
        return Ok(());
    }
    let offset = segment.seq.wrapping_sub(state.isn_next);
    if offset >= CAPTURE_LIMIT {
        // Past the first bytes (or a segment from before the SYN we saw): nothing more to take.
        return Ok(());
    }
    let mut off = 0u32;
    for _ in 0..CHUNKS_PER_PACKET {
        if off >= segment.payload_len || offset + off >= CAPTURE_LIMIT {
            break;
        }
        let remaining = segment.payload_len - off;
        let n = if remaining < PAYLOAD_CHUNK as u32 { remaining } else { PAYLOAD_CHUNK as u32 };
        emit(ctx, &segment, offset + off, off, n);
        off += n;
    }
    Ok(())
}

fn parse(ctx: &TcContext) -> Result<Segment, i64> {
    let proto = u16::from_be(ctx.load::<u16>(12)?);
    let (family, l4, ip_payload, client_addr, server_addr) = match proto {
        ETH_P_IP => {
            let vihl = ctx.load::<u8>(ETH_HLEN)?;
            let ihl = ((vihl & 0x0f) as usize) * 4;
            let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6)?);
            if ctx.load::<u8>(ETH_HLEN + 9)? != IPPROTO_TCP || frag & 0x1fff != 0 || ihl < 20 {
                return Err(0);
            }
            let total = u16::from_be(ctx.load::<u16>(ETH_HLEN + 2)?) as u32;
            let src = ctx.load::<u32>(ETH_HLEN + 12)?;
            let dst = ctx.load::<u32>(ETH_HLEN + 16)?;
            (AF_INET, ETH_HLEN + ihl, total.saturating_sub(ihl as u32), [src, 0, 0, 0], [dst, 0, 0, 0])
        }
        ETH_P_IPV6 => {
            // Extension headers before TCP are not followed.
            if ctx.load::<u8>(ETH_HLEN + 6)? != IPPROTO_TCP {
                return Err(0);
            }
            let payload = u16::from_be(ctx.load::<u16>(ETH_HLEN + 4)?) as u32;
            let src = ctx.load::<[u32; 4]>(ETH_HLEN + 8)?;
            let dst = ctx.load::<[u32; 4]>(ETH_HLEN + 24)?;
            (AF_INET6, ETH_HLEN + 40, payload, src, dst)
        }
        _ => return Err(0),
    };
    let ports = ctx.load::<[u16; 2]>(l4)?;
    let seq = u32::from_be(ctx.load::<u32>(l4 + 4)?);
    let doff = ((ctx.load::<u8>(l4 + 12)? >> 4) as u32) * 4;
    let flags = ctx.load::<u8>(l4 + 13)?;
    Ok(Segment {
        key: WireFlowKey {
            family,
            client_port: u16::from_be(ports[0]),
            server_port: u16::from_be(ports[1]),
            client_addr,
            server_addr,
        },
        seq,
        flags,
        payload_off: l4 as u32 + doff,
        payload_len: ip_payload.saturating_sub(doff),
    })
}

#[inline(always)]
/// One record: `len` bytes at `in_packet` in this segment's payload, which are at `offset` in the stream.
fn emit(ctx: &TcContext, segment: &Segment, offset: u32, in_packet: u32, len: u32) {
    let Some(mut entry) = EVENTS.reserve::<WireRecord>(0) else {
        count_drop(DROP_RINGBUF_FULL);
        return;
    };
    let rec = entry.as_mut_ptr();
    let key = &segment.key;
    unsafe {
        (*rec).header = header(KIND_WIRE, 0);
        (*rec).endpoints = Endpoints {
            family: key.family,
            local_port: key.client_port as u32,
            remote_port: key.server_port as u32,
            _pad: 0,
            local_addr: key.client_addr,
            remote_addr: key.server_addr,
        };
        (*rec).tcp_flags = segment.flags as u32;
        (*rec).offset = offset;
        (*rec).len = 0;
        (*rec)._pad = 0;
        if len > 0 && len <= PAYLOAD_CHUNK as u32 {
            let from = segment.payload_off + in_packet;
            // A volatile read hides what the compiler knows of `len`, so the bounds check below stays on
            // the very register passed to the helper, where the verifier can see it.
            let below = core::ptr::read_volatile(&(len - 1));
            if below < PAYLOAD_CHUNK as u32
                && bpf_skb_load_bytes(ctx.skb.skb.cast(), from, (*rec).data.as_mut_ptr().cast(), below + 1)
                    == 0
            {
                (*rec).len = len;
            }
        }
    }
    entry.submit(wakeup());
}

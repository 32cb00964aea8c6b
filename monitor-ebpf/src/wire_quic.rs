//! QUIC in forwarded traffic (part of `wire_ingress`/`wire_egress`): the first long-header datagrams of
//! each UDP flow to port 443 are handed to user space, which decrypts the Initials and names the SNI, as
//! `quic_egress` does for local sockets. A flow user space denied (block mode) loses every later datagram
//! here, so its handshake cannot complete and the client falls back to TCP, where it is judged again.
//! UDP cannot be held: the first Initial leaves before the verdict.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::bpf_skb_load_bytes,
    programs::TcContext,
};
use monitor_common::{
    config::MODE_OFF,
    record::{
        AF_INET, AF_INET6, Endpoints, KIND_WIRE_QUIC, QUIC_CHUNK, QUIC_DATAGRAMS, QuicRecord,
        WIRE_QUIC_DENIED, WireFlowKey,
    },
    verdict::{DROP_FLOW_TABLE_FULL, DROP_RINGBUF_FULL},
};

use crate::{
    maps::{EVENTS, WIRE_QUIC, config, count_drop, wakeup},
    records::header,
};

/// What [`wire_quic`] returns for a packet that is not UDP: the TCP path takes it.
pub const NOT_UDP: i32 = -1;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: u32 = 8;
/// QUIC's port: other UDP (DNS, NTP, WireGuard) is neither read nor held.
const QUIC_PORT: u16 = 443;

/// The fate of a UDP packet, or [`NOT_UDP`]. Its own function, so the TCP path's stack and the
/// verifier's walk of it stay as they were.
#[inline(never)]
pub fn wire_quic(ctx: &TcContext) -> i32 {
    try_wire_quic(ctx).unwrap_or(TC_ACT_OK as i32)
}

#[inline(always)]
fn try_wire_quic(ctx: &TcContext) -> Result<i32, i64> {
    let proto = u16::from_be(ctx.load::<u16>(12)?);
    let (family, l4, client_addr, server_addr) = match proto {
        ETH_P_IP => {
            if ctx.load::<u8>(ETH_HLEN + 9)? != IPPROTO_UDP {
                return Ok(NOT_UDP);
            }
            // A later fragment has no UDP header.
            if u16::from_be(ctx.load::<u16>(ETH_HLEN + 6)?) & 0x1fff != 0 {
                return Ok(TC_ACT_OK as i32);
            }
            let ihl = ((ctx.load::<u8>(ETH_HLEN)? & 0x0f) as usize) * 4;
            let src = ctx.load::<u32>(ETH_HLEN + 12)?;
            let dst = ctx.load::<u32>(ETH_HLEN + 16)?;
            (AF_INET, ETH_HLEN + ihl, [src, 0, 0, 0], [dst, 0, 0, 0])
        }
        ETH_P_IPV6 => {
            if ctx.load::<u8>(ETH_HLEN + 6)? != IPPROTO_UDP {
                return Ok(NOT_UDP);
            }
            (
                AF_INET6,
                ETH_HLEN + 40,
                ctx.load::<[u32; 4]>(ETH_HLEN + 8)?,
                ctx.load::<[u32; 4]>(ETH_HLEN + 24)?,
            )
        }
        _ => return Ok(NOT_UDP),
    };
    let ports = ctx.load::<[u16; 2]>(l4)?;
    if u16::from_be(ports[1]) != QUIC_PORT {
        return Ok(TC_ACT_OK as i32);
    }
    let key = WireFlowKey {
        family,
        client_port: u16::from_be(ports[0]),
        server_port: QUIC_PORT,
        client_addr,
        server_addr,
    };
    let seen = WIRE_QUIC.get_ptr_mut(&key);
    if let Some(seen) = seen
        && unsafe { *seen } == WIRE_QUIC_DENIED
    {
        return Ok(TC_ACT_SHOT as i32);
    }
    if config().is_none_or(|c| c.mode == MODE_OFF) {
        return Ok(TC_ACT_OK as i32);
    }
    // A long header (the handshake's packets); short-header packets come after it.
    if ctx.load::<u8>(l4 + UDP_HLEN as usize)? & 0x80 == 0 {
        return Ok(TC_ACT_OK as i32);
    }
    match seen {
        Some(seen) => unsafe {
            if *seen >= QUIC_DATAGRAMS {
                return Ok(TC_ACT_OK as i32);
            }
            *seen += 1;
        },
        None => {
            if WIRE_QUIC.insert(&key, &1, 0).is_err() {
                count_drop(DROP_FLOW_TABLE_FULL);
                return Ok(TC_ACT_OK as i32);
            }
        }
    }
    let udp_len = u16::from_be(ctx.load::<u16>(l4 + 4)?) as u32;
    let len = udp_len.saturating_sub(UDP_HLEN);
    let Some(mut entry) = EVENTS.reserve::<QuicRecord>(0) else {
        count_drop(DROP_RINGBUF_FULL);
        return Ok(TC_ACT_OK as i32);
    };
    let rec = entry.as_mut_ptr();
    let n = if len < QUIC_CHUNK as u32 { len } else { QUIC_CHUNK as u32 };
    unsafe {
        (*rec).header = header(KIND_WIRE_QUIC, 0);
        (*rec).endpoints = Endpoints {
            family,
            local_port: key.client_port as u32,
            remote_port: QUIC_PORT as u32,
            _pad: 0,
            local_addr: client_addr,
            remote_addr: server_addr,
        };
        (*rec).len = 0;
        (*rec)._pad = 0;
        // A volatile read keeps the bounds check on the register the helper gets (see wire.rs).
        let below = core::ptr::read_volatile(&(n.wrapping_sub(1)));
        if below < QUIC_CHUNK as u32
            && bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                l4 as u32 + UDP_HLEN,
                (*rec).data.as_mut_ptr().cast(),
                below + 1,
            ) == 0
        {
            (*rec).len = below + 1;
        }
    }
    entry.submit(wakeup());
    Ok(TC_ACT_OK as i32)
}

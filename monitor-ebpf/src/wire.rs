//! `wire_ingress` and `wire_egress` (TC clsact): forwarded TCP flows on an interface, for a host that
//! routes other machines' or containers' traffic. Ingress sees the flows of clients behind the interface;
//! egress those of clients on the host's other side, on their way out to their servers. No socket, so no process: the flow is its 4-tuple, and
//! its first client bytes are handed to user space by sequence offset, to be reassembled there.
//!
//! In block mode the program also judges each flow, as `inspect_send` does a socket's: IP and CIDR
//! indicators on the SYN, then the client's first payload (a request, a SOCKS5 greeting and request, a
//! ClientHello, and the first bytes inside a tunnel) against the domain indicators. A refused flow's
//! deciding segment is rewritten into resets for both ends (see [`refuse`]), and every later segment of
//! it is dropped. TC cannot hold a segment the way sk_msg corks a send: a segment that does not carry the
//! whole name makes the flow uninspectable (`--uninspectable` decides), unless it names no target yet
//! only because the name is still to come (see [`judge`]).

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_probe_read_kernel, bpf_skb_change_tail, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use monitor_common::{
    config::{CAPTURE_LIMIT, Config, MODE_BLOCK, UNINSPECTABLE_BLOCK},
    record::{
        AF_INET, AF_INET6, Endpoints, KIND_WIRE, KIND_WIRE_VERDICT, NAME_MAX, PAYLOAD_CHUNK, PHASE_BLOCKED,
        PHASE_DONE, PHASE_FIRST, PHASE_REFUSE, PHASE_SOCKS5_REQUEST, PHASE_TUNNEL, WireFlowKey,
        WireFlowState, WireRecord, WireVerdictRecord,
    },
    verdict::{
        DROP_FLOW_TABLE_FULL, DROP_RINGBUF_FULL, SOURCE_CONNECT, SOURCE_NONE, SOURCE_REMOTE_IP,
        SOURCE_SOCKS_IP, SOURCE_SOCKS4A, SOURCE_SOCKS5, SOURCE_TLS_SNI, VERDICT_BLOCKED, VERDICT_NO_MATCH,
        VERDICT_UNINSPECTABLE_ALLOWED, VERDICT_UNINSPECTABLE_BLOCKED,
    },
};

use crate::{
    maps::{EVENTS, WIRE_FLOWS, config, count_drop, wakeup},
    parse::{
        MASK, SCAN_GREETING, SCAN_IPV4, SCAN_NAME, SCAN_NEED_BYTES, Scan, Scratch, WINDOW, bounded_loop,
        scan_client_hello, scan_http, scan_socks,
    },
    policy::{domain_bits, ipv4_bits, ipv6_bits, verdict},
    records::header,
    wire_quic::{NOT_UDP, wire_quic},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// A reset carries a bare TCP header, without options.
const TCP_HLEN: u32 = 20;
const CHUNKS_PER_PACKET: u32 = 2;
const TLS_RECORDS_MAX: u32 = 8;
const TLS_EXTENSIONS_MAX: u32 = 48;
/// Wire-only phases: a ClientHello (first in the flow, or inside a tunnel) continues in the next segment,
/// which holds its next extension (`WireFlowState::hello_next`).
const PHASE_HELLO_REST: u32 = 16;
const PHASE_HELLO_REST_TUNNEL: u32 = 17;

/// The judging scratch of TC, apart from the socket path's: a softirq may run this program on a CPU
/// where `inspect_send` is half-way through its own scan.
#[map]
static WIRE_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// A reset being written, in map memory: the programs' stack is nearly full where [`refuse`] is called.
#[repr(C)]
struct Reset {
    /// The segment's MAC addresses as it came, then swapped for the client's reset.
    macs: [u8; 12],
    swapped: [u8; 12],
    tcp: [u8; TCP_HLEN as usize],
    v4_addrs: [u32; 2],
}

#[map]
static WIRE_RESET: PerCpuArray<Reset> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
pub fn wire_ingress(ctx: TcContext) -> i32 {
    // A segment the program cannot read passes, as a send does on the socket path.
    try_wire(&ctx, Hook::Ingress).unwrap_or(TC_ACT_OK as i32)
}

#[classifier]
pub fn wire_egress(ctx: TcContext) -> i32 {
    try_wire(&ctx, Hook::Egress).unwrap_or(TC_ACT_OK as i32)
}

/// Where the program runs, which says how a reset gets back to the client: out of the interface the client's
/// segment came in on, or into the host again from the interface it was leaving by, to be routed back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Ingress,
    Egress,
}

struct Segment {
    key: WireFlowKey,
    seq: u32,
    ack: u32,
    flags: u8,
    /// Where the TCP header starts (the IP header starts at `ETH_HLEN`).
    l4: u32,
    payload_off: u32,
    payload_len: u32,
}

// Inlined in each entry: as one function called by both, its stack and its callees' exceed 512 bytes.
#[inline(always)]
fn try_wire(ctx: &TcContext, hook: Hook) -> Result<i32, i64> {
    let udp = wire_quic(ctx);
    if udp != NOT_UDP {
        return Ok(udp);
    }
    let segment = parse(ctx)?;
    let key = segment.key;
    let block = config().filter(|c| c.mode == MODE_BLOCK);
    if segment.flags & TCP_SYN != 0 && segment.flags & TCP_ACK == 0 {
        if let Some(config) = block {
            let bits = if key.family == AF_INET {
                ipv4_bits(key.server_addr[0], config)
            } else {
                ipv6_bits(key.server_addr, config)
            };
            if verdict(bits, config) == VERDICT_BLOCKED {
                report_verdict(&key, None, VERDICT_BLOCKED, SOURCE_REMOTE_IP, 0, 0);
                return Ok(refuse(ctx, hook, &segment, false));
            }
        }
        let state = WireFlowState {
            isn_next: segment.seq.wrapping_add(1),
            established: 0,
            phase: PHASE_FIRST,
            next_offset: 0,
            hello_next: 0,
            hello_end: 0,
        };
        if WIRE_FLOWS.insert(&key, &state, 0).is_err() {
            // The table is full (a hash map, not an LRU: evicting a flow still being judged would let its
            // first bytes pass unread). Block mode fails closed: the client is reset at once.
            count_drop(DROP_FLOW_TABLE_FULL);
            if block.is_some() {
                return Ok(refuse(ctx, hook, &segment, false));
            }
            return Ok(TC_ACT_OK as i32);
        }
        emit(ctx, &segment, 0, 0, 0);
        if segment.payload_len == 0 {
            return Ok(TC_ACT_OK as i32);
        }
        // Data on the SYN (TCP Fast Open): judged and captured as any first payload.
    }
    let Some(state) = WIRE_FLOWS.get_ptr_mut(&key) else {
        return Ok(TC_ACT_OK as i32);
    };
    let state = unsafe { &mut *state };
    if state.phase == PHASE_BLOCKED {
        if segment.flags & TCP_RST != 0 {
            let _ = WIRE_FLOWS.remove(&key);
            return Ok(TC_ACT_SHOT as i32);
        }
        // Refused: nothing more of the flow passes, and a client that missed its reset gets another.
        return Ok(refuse(ctx, hook, &segment, false));
    }
    if state.phase == PHASE_REFUSE {
        // User space refused it late: the server has had the flow's first bytes, and gets a reset too.
        state.phase = PHASE_BLOCKED;
        return Ok(refuse(ctx, hook, &segment, true));
    }
    // A SYN's data starts after the SYN's own sequence number.
    let syn = (segment.flags & TCP_SYN != 0) as u32;
    let offset = segment.seq.wrapping_add(syn).wrapping_sub(state.isn_next);
    if let Some(config) = block
        && state.phase != PHASE_DONE
        && segment.payload_len > 0
    {
        let action = judge(ctx, hook, &segment, state, offset, config)?;
        if action != TC_ACT_OK as i32 {
            return Ok(action);
        }
    } else if block.is_none() && segment.payload_len > 0 {
        // Its first bytes passed under another mode: a switch to block mode leaves the flow alone, as it
        // does an established socket (judging it from its middle would drop all it sends).
        state.phase = PHASE_DONE;
    }
    if segment.flags & (TCP_FIN | TCP_RST) != 0 {
        emit(ctx, &segment, 0, 0, 0);
        let _ = WIRE_FLOWS.remove(&key);
        return Ok(TC_ACT_OK as i32);
    }
    if state.established == 0 && segment.flags & TCP_ACK != 0 {
        state.established = 1;
        if segment.payload_len == 0 {
            emit(ctx, &segment, 0, 0, 0);
        }
    }
    if segment.payload_len == 0 || offset >= CAPTURE_LIMIT {
        // Past the first bytes (or a segment from before the SYN we saw): nothing more to take.
        return Ok(TC_ACT_OK as i32);
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
    Ok(TC_ACT_OK as i32)
}

/// Block mode: a payload segment of a flow whose target is not decided yet, at `offset` in the client's
/// stream. `TC_ACT_OK` lets it on (to be captured as any other); anything else is the segment's fate.
#[inline(always)]
fn judge(
    ctx: &TcContext,
    hook: Hook,
    seg: &Segment,
    state: &mut WireFlowState,
    offset: u32,
    config: &Config,
) -> Result<i32, i64> {
    let expected = if state.phase == PHASE_FIRST { 0 } else { state.next_offset };
    let end = offset.wrapping_add(seg.payload_len);
    if offset != expected {
        if end.wrapping_sub(expected) as i32 <= 0 {
            // A retransmission of bytes already judged.
            return Ok(TC_ACT_OK as i32);
        }
        // Bytes past the ones that decide (reordered, or after a segment lost on the way here): the server
        // must not have them before those are judged. The client sends them again.
        return Ok(TC_ACT_SHOT as i32);
    }
    let scratch = WIRE_SCRATCH.get_ptr_mut(0).ok_or(0i64)?;
    let scratch = unsafe { &mut *scratch };
    let tunnel = state.phase == PHASE_TUNNEL || state.phase == PHASE_HELLO_REST_TUNNEL;
    let first = ctx.load::<u8>(seg.payload_off as usize)?;
    let window = if seg.payload_len < WINDOW { seg.payload_len } else { WINDOW };
    let mut scan = if state.phase == PHASE_HELLO_REST || state.phase == PHASE_HELLO_REST_TUNNEL {
        if !copy(ctx, scratch, 0, seg.payload_off, window) {
            return Ok(TC_ACT_OK as i32);
        }
        // Positions in this segment. The next extension's header may have begun in the one before (split,
        // it is not read: the segment is cut), or it may start past this segment, which then holds nothing
        // but the data of another extension.
        let at = state.hello_next.wrapping_sub(offset);
        let ext_end = state.hello_end.wrapping_sub(offset);
        let walked = if (at as i32) < 0 {
            Walked::Cut
        } else if at < window {
            walk_extensions(scratch, at, ext_end, window)
        } else if window == seg.payload_len && at < ext_end {
            Walked::Further(at)
        } else {
            Walked::Cut
        };
        match walked {
            Walked::Name(start, n) => Scan::name(SOURCE_TLS_SNI, start, n),
            Walked::None => Scan::UNNAMED,
            Walked::Further(next) => {
                state.hello_next = offset.wrapping_add(next);
                state.next_offset = end;
                return Ok(TC_ACT_OK as i32);
            }
            Walked::Cut => Scan::need(window + 1),
        }
    } else if first == 0x16 && (state.phase == PHASE_FIRST || tunnel) {
        let (n, whole) = copy_handshake(ctx, scratch, seg.payload_off, seg.payload_len);
        let scan = scan_client_hello(scratch, n);
        if whole || scan.kind == SCAN_NAME {
            scan
        } else {
            match hello_continues(ctx, scratch, seg.payload_off, n) {
                // Nothing of a name in this segment: it passes, and the next one is read from `next`.
                Some((next, ext_end)) => {
                    state.phase = if tunnel { PHASE_HELLO_REST_TUNNEL } else { PHASE_HELLO_REST };
                    // The handshake starts after the record header, at stream offset `offset + 5`.
                    state.hello_next = offset.wrapping_add(5 + next);
                    state.hello_end = offset.wrapping_add(5 + ext_end);
                    state.next_offset = end;
                    return Ok(TC_ACT_OK as i32);
                }
                None => Scan::need(n + 1),
            }
        }
    } else {
        if !copy(ctx, scratch, 0, seg.payload_off, window) {
            return Ok(TC_ACT_OK as i32);
        }
        match state.phase {
            PHASE_SOCKS5_REQUEST => scan_socks(scratch, window, true),
            PHASE_FIRST if first == 4 || first == 5 => scan_socks(scratch, window, false),
            _ => scan_http(scratch, window),
        }
    };
    // The verifier would walk what follows once per scan kind and source the scans return as constants;
    // read back from map memory they are plain values, and its paths merge (as in `send::settle`).
    unsafe {
        core::ptr::write_volatile(&mut scratch.scan, scan);
        scan = core::ptr::read_volatile(&scratch.scan);
    }
    let (outcome, source, start, len) = match scan.kind {
        SCAN_NAME => {
            (verdict(domain_bits(scratch, scan.a, scan.b, config), config), scan.source, scan.a, scan.b)
        }
        SCAN_IPV4 => (verdict(ipv4_bits(scan.a, config), config), scan.source, 0, 0),
        SCAN_GREETING => {
            // The request is the client's next write, after the server's method choice.
            state.phase = PHASE_SOCKS5_REQUEST;
            state.next_offset = end;
            return Ok(TC_ACT_OK as i32);
        }
        // Inside a tunnel the outer request already named the target.
        SCAN_NEED_BYTES => (uninspectable(config), SOURCE_NONE, 0, 0),
        _ if tunnel => (VERDICT_NO_MATCH, SOURCE_NONE, 0, 0),
        _ => (uninspectable(config), SOURCE_NONE, 0, 0),
    };
    let refused = outcome == VERDICT_BLOCKED || outcome == VERDICT_UNINSPECTABLE_BLOCKED;
    if refused || outcome == VERDICT_UNINSPECTABLE_ALLOWED {
        report_verdict(&seg.key, Some(scratch), outcome, source, start, len);
    }
    if refused {
        state.phase = PHASE_BLOCKED;
        // A server that has seen nothing of the flow (data on its SYN) needs no reset.
        return Ok(refuse(ctx, hook, seg, seg.flags & TCP_SYN == 0));
    }
    let opens_tunnel =
        !tunnel && matches!(source, SOURCE_CONNECT | SOURCE_SOCKS5 | SOURCE_SOCKS4A | SOURCE_SOCKS_IP);
    if opens_tunnel {
        // The tunnel's first bytes follow the proxy's answer: they are the next ones to judge.
        state.phase = PHASE_TUNNEL;
        state.next_offset = end;
    } else {
        state.phase = PHASE_DONE;
    }
    Ok(TC_ACT_OK as i32)
}

#[inline(always)]
fn uninspectable(config: &Config) -> u32 {
    if config.uninspectable == UNINSPECTABLE_BLOCK {
        VERDICT_UNINSPECTABLE_BLOCKED
    } else {
        VERDICT_UNINSPECTABLE_ALLOWED
    }
}

/// Copy `len` (1..=WINDOW) bytes of the packet at `from` into the scratch buffer at `at`.
#[inline(always)]
fn copy(ctx: &TcContext, scratch: &mut Scratch, at: u32, from: u32, len: u32) -> bool {
    if len == 0 {
        return false;
    }
    // A volatile read hides what the compiler knows of `len`, so the bound below stays on the register
    // passed to the helper, where the verifier sees it.
    let below = unsafe { core::ptr::read_volatile(&(len - 1)) };
    if below >= WINDOW {
        return false;
    }
    // So is the offset's: the compiler drops a mask it can prove idle, the verifier cannot.
    let at = unsafe { core::ptr::read_volatile(&at) } & MASK;
    let to = unsafe { scratch.bytes.as_mut_ptr().add(at as usize) };
    unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), from, to.cast(), below + 1) == 0 }
}

/// Copy the TLS handshake bytes of the records at the start of the payload (`size` bytes at `from`) into
/// the scratch buffer without their record headers, so a ClientHello fragmented over several records
/// reads as one message. Returns the bytes copied and whether the handshake message is whole.
#[inline(always)]
fn copy_handshake(ctx: &TcContext, scratch: &mut Scratch, from: u32, size: u32) -> (u32, bool) {
    let mut src = 0u32;
    let mut dst = 0u32;
    for _ in 0..TLS_RECORDS_MAX {
        if src + 5 > size {
            return (dst, false);
        }
        let Ok(header) = ctx.load::<[u8; 5]>((from + src) as usize) else {
            return (dst, false);
        };
        if header[0] != 0x16 {
            return (dst, true);
        }
        let record_len = ((header[3] as u32) << 8) | header[4] as u32;
        let available = size - src - 5;
        let mut n = if record_len < available { record_len } else { available };
        if dst + n > WINDOW {
            n = WINDOW - dst;
        }
        if n > 0 && !copy(ctx, scratch, dst, from + src + 5, n) {
            return (dst, false);
        }
        dst += n;
        src += 5 + record_len;
        if dst >= 4 {
            let handshake_len =
                ((scratch.at(1) as u32) << 16) | ((scratch.at(2) as u32) << 8) | scratch.at(3) as u32;
            if dst >= handshake_len + 4 {
                return (dst, true);
            }
        }
        if src > size || dst >= WINDOW {
            return (dst, false);
        }
    }
    (dst, false)
}

/// What a walk over a ClientHello's extensions found in the bytes it had.
enum Walked {
    /// The server_name's host name, whole: `n` bytes at `start`.
    Name(u32, u32),
    /// The extensions ended without a server_name.
    None,
    /// The bytes ended before the extensions did, between two of them: the next starts at this position.
    Further(u32),
    /// The bytes ended inside the server_name, or inside the ClientHello's fixed part.
    Cut,
}

#[inline(always)]
fn be16(buf: &Scratch, i: u32) -> u32 {
    ((buf.at(i) as u32) << 8) | buf.at(i + 1) as u32
}

struct ExtensionWalk<'a> {
    buf: &'a Scratch,
    pos: u32,
    end: u32,
    len: u32,
    found: u32,
}

/// Stops at the server_name extension (type 0) with found = 1, or where the extensions or the bytes end.
extern "C" fn extension_step(_: u64, w: *mut ExtensionWalk<'_>) -> i64 {
    let w = unsafe { &mut *w };
    let p = w.pos;
    if p >= w.end || p + 4 > w.len {
        return 1;
    }
    if be16(w.buf, p) == 0 {
        w.found = 1;
        return 1;
    }
    w.pos = p + 4 + be16(w.buf, p + 2);
    0
}

/// Walk extensions from `at` to `end` over the `len` bytes in `buf`.
#[inline(always)]
fn walk_extensions(buf: &Scratch, at: u32, end: u32, len: u32) -> Walked {
    let mut walk = ExtensionWalk { buf, pos: at, end, len, found: 0 };
    bounded_loop(TLS_EXTENSIONS_MAX, extension_step, &mut walk);
    let p = walk.pos;
    if walk.found == 0 {
        return if p >= end {
            Walked::None
        } else if p + 4 > len {
            Walked::Further(p)
        } else {
            // More extensions than the walk takes: not a ClientHello a client sends.
            Walked::Cut
        };
    }
    // server_name_list length(2), name_type(1) = host_name, name length(2), name
    if p + 9 > len {
        return Walked::Cut;
    }
    let n = be16(buf, p + 7);
    let start = p + 9;
    if buf.at(p + 6) != 0 || n == 0 || start + n > end {
        // Not a host name: nothing the indicators could match.
        return Walked::None;
    }
    if start + n > len { Walked::Cut } else { Walked::Name(start, n) }
}

/// The first part of a ClientHello, `n` handshake bytes in `buf` (from one TLS record at `from` that holds
/// the whole message), with no server_name in it: where its next extension and its extensions' end are,
/// when the bytes end between two extensions. `None` when the segment may hold part of a name, or when the
/// message spans records as well as segments.
#[inline(always)]
fn hello_continues(ctx: &TcContext, buf: &Scratch, from: u32, n: u32) -> Option<(u32, u32)> {
    let record = ctx.load::<[u8; 5]>(from as usize).ok()?;
    let record_len = ((record[3] as u32) << 8) | record[4] as u32;
    let handshake_len = ((buf.at(1) as u32) << 16) | ((buf.at(2) as u32) << 8) | buf.at(3) as u32;
    if n < 4 || buf.at(0) != 1 || record_len < handshake_len + 4 {
        return None;
    }
    // type(1) length(3) version(2) random(32) session_id, cipher_suites, compression_methods, extensions
    let mut p = 38u32;
    if p >= n {
        return None;
    }
    p += 1 + buf.at(p) as u32;
    if p + 2 > n {
        return None;
    }
    p += 2 + be16(buf, p);
    if p >= n {
        return None;
    }
    p += 1 + buf.at(p) as u32;
    if p + 2 > n {
        return None;
    }
    let ext_end = p + 2 + be16(buf, p);
    let message_end = handshake_len + 4;
    let ext_end = if ext_end < message_end { ext_end } else { message_end };
    match walk_extensions(buf, p + 2, ext_end, n) {
        Walked::Further(next) => Some((next, ext_end)),
        _ => None,
    }
}

/// Refuse the flow at `seg`. The segment becomes a reset to the client, sent back the way it came (see
/// [`Hook`]); then, `to_server`, a reset to the server, which goes on in its place. Its payload goes
/// nowhere. A segment that cannot be rewritten is dropped all the same.
// A function of its own: inlined at its three callers, its stack would add to theirs past 512 bytes.
#[inline(never)]
fn refuse(ctx: &TcContext, hook: Hook, seg: &Segment, to_server: bool) -> i32 {
    let shot = TC_ACT_SHOT as i32;
    let skb = ctx.skb.skb;
    let partial = checksum_partial(ctx, seg);
    let Some(reset) = WIRE_RESET.get_ptr_mut(0) else { return shot };
    let reset = unsafe { &mut *reset };
    // Straight into map memory: a copy on this frame would take the programs past 512 bytes of stack.
    if unsafe { bpf_skb_load_bytes(skb.cast(), 0, reset.macs.as_mut_ptr().cast(), 12) } != 0 {
        return shot;
    }
    if unsafe { bpf_skb_change_tail(skb, seg.l4 + TCP_HLEN, 0) } != 0 {
        return shot;
    }
    if seg.key.family == AF_INET {
        let Ok(old) = ctx.load::<u16>(ETH_HLEN + 2) else { return shot };
        let new = ((seg.l4 - ETH_HLEN as u32 + TCP_HLEN) as u16).to_be();
        if ctx.store(ETH_HLEN + 2, &new, 0).is_err()
            || ctx.l3_csum_replace(ETH_HLEN + 10, old as u64, new as u64, 2).is_err()
        {
            return shot;
        }
    } else if ctx.store(ETH_HLEN + 4, &(TCP_HLEN as u16).to_be(), 0).is_err() {
        return shot;
    }
    // To the client, from the server: at the sequence number the client expects next, acknowledging all
    // it sent (a SYN counts one).
    let (seq, ack) = if seg.flags & TCP_SYN != 0 {
        (0, seg.seq.wrapping_add(1))
    } else {
        let fin = (seg.flags & TCP_FIN != 0) as u32;
        (seg.ack, seg.seq.wrapping_add(seg.payload_len).wrapping_add(fin))
    };
    let mut i = 0;
    while i < 6 {
        reset.swapped[i] = reset.macs[i + 6];
        reset.swapped[i + 6] = reset.macs[i];
        i += 1;
    }
    if !rewrite(ctx, seg, reset, true, seq, ack, partial) {
        return shot;
    }
    let ifindex = unsafe { (*skb).ifindex };
    let flags = if hook == Hook::Egress { BPF_F_INGRESS as u64 } else { 0 };
    let _ = ctx.clone_redirect(ifindex, flags);
    // To the server, from the client, at the sequence number of the refused bytes: the server forgets
    // the connection (a proxy, the half-open tunnel it would have made).
    if !to_server || !rewrite(ctx, seg, reset, false, seg.seq, seg.ack, partial) {
        return shot;
    }
    TC_ACT_OK as i32
}

/// Write a reset over the (already truncated) segment: the MAC addresses (swapped when `reversed`), the
/// flow's addresses and ports (the server's first when `reversed`), `seq` and `ack`, and its checksum.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    seg: &Segment,
    reset: &mut Reset,
    reversed: bool,
    seq: u32,
    ack: u32,
    partial: bool,
) -> bool {
    let key = &seg.key;
    let (src, dst, sport, dport) = if reversed {
        (&key.server_addr, &key.client_addr, key.server_port, key.client_port)
    } else {
        (&key.client_addr, &key.server_addr, key.client_port, key.server_port)
    };
    let tcp = &mut reset.tcp;
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = ((TCP_HLEN / 4) as u8) << 4;
    tcp[13] = TCP_RST | TCP_ACK;
    tcp[14] = 0;
    tcp[15] = 0;
    tcp[16] = 0;
    tcp[17] = 0;
    tcp[18] = 0;
    tcp[19] = 0;
    let v4 = key.family == AF_INET;
    let check = tcp_checksum(tcp, src, dst, v4, partial);
    tcp[16..18].copy_from_slice(&check.to_ne_bytes());
    let addresses = if v4 {
        reset.v4_addrs = [src[0], dst[0]];
        ctx.store(ETH_HLEN + 12, &reset.v4_addrs, 0)
    } else {
        ctx.store(ETH_HLEN + 8, src, 0).and_then(|()| ctx.store(ETH_HLEN + 24, dst, 0))
    };
    let macs = if reversed { &reset.swapped } else { &reset.macs };
    ctx.store(0, macs, 0).is_ok() && addresses.is_ok() && ctx.store(seg.l4 as usize, &reset.tcp, 0).is_ok()
}

/// One's-complement sum of the pseudo header (addresses, protocol, TCP length), not yet folded. Summed in
/// the byte order the words sit in memory, as the rest of the checksum is: the sum is then in that order too.
#[inline(always)]
fn pseudo_sum(src: &[u32; 4], dst: &[u32; 4], v4: bool, tcp_len: u32) -> u32 {
    let words = if v4 { 1 } else { 4 };
    let mut sum = 0u32;
    let mut i = 0;
    while i < 4 {
        if i < words {
            sum += (src[i] & 0xffff) + (src[i] >> 16) + (dst[i] & 0xffff) + (dst[i] >> 16);
        }
        i += 1;
    }
    sum += u16::from_ne_bytes([0, IPPROTO_TCP]) as u32;
    sum += u16::from_ne_bytes((tcp_len as u16).to_be_bytes()) as u32;
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum field of a reset with header `tcp`. With checksum offload pending (`partial`) the field
/// holds only the folded pseudo-header sum: the device (or the receiving stack, on a veth) completes it.
#[inline(always)]
fn tcp_checksum(
    tcp: &[u8; TCP_HLEN as usize],
    src: &[u32; 4],
    dst: &[u32; 4],
    v4: bool,
    partial: bool,
) -> u16 {
    let mut sum = pseudo_sum(src, dst, v4, TCP_HLEN);
    if partial {
        return fold(sum);
    }
    let mut i = 0;
    while i < TCP_HLEN as usize {
        // The checksum field itself (bytes 16 and 17) counts as zero.
        if i != 16 {
            sum += u16::from_ne_bytes([tcp[i], tcp[i + 1]]) as u32;
        }
        i += 2;
    }
    !fold(sum)
}

/// Whether the segment's checksum is left to offload (CHECKSUM_PARTIAL: sent by a local socket over a
/// veth, or merged by GRO), which the program cannot ask the kernel directly: its field then holds exactly
/// the folded pseudo-header sum. A complete checksum equal to it by chance (1 in 65536) makes a reset with a
/// wrong checksum, which its receiver drops: the flow is still refused, the client just waits longer.
#[inline(always)]
fn checksum_partial(ctx: &TcContext, seg: &Segment) -> bool {
    let Ok(field) = ctx.load::<u16>(seg.l4 as usize + 16) else { return false };
    let tcp_len = seg.payload_off - seg.l4 + seg.payload_len;
    let v4 = seg.key.family == AF_INET;
    field == fold(pseudo_sum(&seg.key.client_addr, &seg.key.server_addr, v4, tcp_len))
}

#[inline(always)]
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
    let ack = u32::from_be(ctx.load::<u32>(l4 + 8)?);
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
        ack,
        flags,
        l4: l4 as u32,
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
    unsafe {
        (*rec).header = header(KIND_WIRE, 0);
        (*rec).endpoints = endpoints(&segment.key);
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

#[inline(always)]
fn endpoints(key: &WireFlowKey) -> Endpoints {
    Endpoints {
        family: key.family,
        local_port: key.client_port as u32,
        remote_port: key.server_port as u32,
        _pad: 0,
        local_addr: key.client_addr,
        remote_addr: key.server_addr,
    }
}

/// The verdict on a flow for user space: the name that decided is `len` bytes at `start` in `scratch`.
#[inline(always)]
fn report_verdict(
    key: &WireFlowKey,
    scratch: Option<&Scratch>,
    outcome: u32,
    source: u32,
    start: u32,
    len: u32,
) {
    let Some(mut entry) = EVENTS.reserve::<WireVerdictRecord>(0) else {
        count_drop(DROP_RINGBUF_FULL);
        return;
    };
    let rec = entry.as_mut_ptr();
    let n = match scratch {
        Some(_) if len < NAME_MAX as u32 => len,
        Some(_) => NAME_MAX as u32 - 1,
        None => 0,
    };
    unsafe {
        (*rec).header = header(KIND_WIRE_VERDICT, 0);
        (*rec).endpoints = endpoints(key);
        (*rec).verdict = outcome;
        (*rec).source = source;
        (*rec).name_len = n;
        (*rec)._pad = 0;
        if let Some(scratch) = scratch {
            bpf_probe_read_kernel(
                (*rec).name.as_mut_ptr().cast(),
                n & (NAME_MAX as u32 - 1),
                scratch.bytes.as_ptr().add((start & MASK) as usize).cast(),
            );
        }
    }
    entry.submit(wakeup());
}

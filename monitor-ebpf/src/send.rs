//! `inspect_send`: sk_msg on every send of an enrolled socket until its target is judged.
//!
//! A send that does not yet hold the bytes that decide (a ClientHello still arriving, a request line
//! written a byte at a time) is corked: the kernel holds it, nothing is transmitted, and the program
//! runs again on the whole when the rest has been written. So a denied request never leaves, however
//! it is split. A hold is bounded: in bytes by the inspection window, in time by `hold_timeout_ms`, past
//! which the connection is uninspectable and `--uninspectable` decides.

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    helpers::generated::{
        bpf_ktime_get_ns, bpf_msg_apply_bytes, bpf_msg_cork_bytes, bpf_msg_pull_data, bpf_probe_read_kernel,
    },
    macros::sk_msg,
    programs::SkMsgContext,
};
use monitor_common::{
    config::{CAPTURE_LIMIT, Config, MODE_BLOCK, MODE_OFF, UNINSPECTABLE_BLOCK},
    record::{
        DEFER_LARGE_HELLO, FlowState, HoldRecord, KIND_HOLD, KIND_VERDICT, NAME_MAX, PHASE_BLOCKED,
        PHASE_CAPTURE, PHASE_DONE, PHASE_EGRESS, PHASE_FIRST, PHASE_HTTP, PHASE_SOCKS5_REQUEST, PHASE_TUNNEL,
        VerdictRecord,
    },
    verdict::{
        DROP_PULL_FAILED, DROP_RINGBUF_FULL, SOURCE_ABSOLUTE_FORM, SOURCE_CONNECT, SOURCE_HOLD_EXPIRED,
        SOURCE_HTTP_HOST, SOURCE_NONE, SOURCE_SOCKS_IP, SOURCE_SOCKS4A, SOURCE_SOCKS5, SOURCE_UNFRAMED,
        VERDICT_ALLOWED, VERDICT_BLOCKED, VERDICT_NO_MATCH, VERDICT_UNINSPECTABLE_ALLOWED,
        VERDICT_UNINSPECTABLE_BLOCKED,
    },
};

use crate::{
    deferral::{capture_send, report_defer},
    maps::{EVENTS, SCRATCH, config, count_drop, flow_state, resolve_deferred, wakeup},
    parse::{
        Framing, MASK, SCAN_DEFER, SCAN_GREETING, SCAN_IPV4, SCAN_NAME, SCAN_NEED_BYTES, Scan, Scratch,
        WINDOW, head_framing, scan_http, scan_socks, scan_tls_message,
    },
    policy::{domain_bits, ipv4_bits, verdict},
    records::{header, submit_payload},
};

#[sk_msg]
pub fn inspect_send(ctx: SkMsgContext) -> u32 {
    // Any failure to inspect lets the bytes through: the daemon counts and reports it.
    try_inspect_send(&ctx).unwrap_or(SK_PASS)
}

fn try_inspect_send(ctx: &SkMsgContext) -> Result<u32, ()> {
    let Some(state) = flow_state(unsafe { (*ctx.msg).__bindgen_anon_3.sk }, None) else {
        return Ok(SK_PASS);
    };
    if state.phase == PHASE_EGRESS {
        resolve_deferred(state);
        if state.phase == PHASE_EGRESS {
            // User space has not answered yet: it gets these bytes too, and tcp_egress holds them back
            // (block mode) until it has.
            if state.egress_capture == 0 {
                capture_send(ctx, state);
            }
            return Ok(SK_PASS);
        }
    }
    match state.phase {
        PHASE_DONE => return Ok(SK_PASS),
        PHASE_BLOCKED => return Ok(SK_DROP),
        _ => {}
    }
    let config = config().ok_or(())?;
    let size = ctx.size();
    let window = if size < WINDOW { size } else { WINDOW };
    if window == 0 {
        return Ok(SK_PASS);
    }
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, window, 0) } != 0 {
        count_drop(DROP_PULL_FAILED);
        return Ok(SK_PASS);
    }
    let data = ctx.data() as *const u8;
    if state.phase == PHASE_CAPTURE {
        capture(state, data, size, window);
        if state.seen >= CAPTURE_LIMIT {
            state.phase = PHASE_DONE;
            let scratch = SCRATCH.get_ptr_mut(0).ok_or(())?;
            report_verdict(state, unsafe { &*scratch }, uninspectable(config), SOURCE_NONE, 0, 0);
        }
        return Ok(SK_PASS);
    }
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(())?;
    let scratch = unsafe { &mut *scratch };

    let mut first = 0u8;
    read(&mut first as *mut u8, 1, data);
    let scan = if first == 0x16 && (state.phase == PHASE_FIRST || state.phase == PHASE_TUNNEL) {
        scan_tls_message(scratch, |dst, len, at| read(dst, len, unsafe { data.add(at as usize) }), window)
    } else {
        read(scratch.bytes.as_mut_ptr(), window, data);
        match state.phase {
            PHASE_SOCKS5_REQUEST => scan_socks(scratch, window, true),
            PHASE_FIRST if first == 4 || first == 5 => scan_socks(scratch, window, false),
            _ => scan_http(scratch, window),
        }
    };

    let tunnel = state.phase == PHASE_TUNNEL;
    let keep_alive = state.phase == PHASE_HTTP;
    let named = scan.kind == SCAN_NAME || scan.kind == SCAN_IPV4;
    let mut need = if scan.kind == SCAN_NEED_BYTES { scan.a } else { 0 };
    // Plain HTTP: a request is framed (its head, its Content-Length) before it passes, so that the next
    // request on the connection (keep-alive, pipelining) is judged as well. Audit mode frames what it can
    // without holding anything; only block mode makes an unframable request uninspectable.
    let mut framed = 0u32;
    let mut unframed = false;
    if config.mode != MODE_OFF
        && !tunnel
        && named
        && (scan.source == SOURCE_ABSOLUTE_FORM || scan.source == SOURCE_HTTP_HOST)
    {
        match head_framing(scratch, window) {
            Framing::Length(n) => framed = n,
            Framing::NeedBytes(n) => need = n,
            Framing::Unknown => unframed = config.mode == MODE_BLOCK,
        }
    }

    // The verifier would walk what follows once per combination of the constants above (scan kind,
    // source, framing); read back from map memory they are plain unknown values, and its paths merge.
    let (scan, need, framed, unframed) = settle(scratch, scan, need, framed, unframed);

    if scan.kind == SCAN_DEFER {
        // Nothing is judged here: from this send on, tcp_egress hands the bytes to user space (and in
        // block mode holds them until it answers).
        state.phase = PHASE_EGRESS;
        state.defer_from = state.seen;
        state.egress_capture = 0;
        end_hold(ctx, state);
        report_defer(state, state.seen, DEFER_LARGE_HELLO);
        capture_send(ctx, state);
        return Ok(SK_PASS);
    }

    // Before the proxy has answered, the rest of a judged CONNECT or SOCKS request is never held: the client
    // is bound to send it, and holding it gains nothing (a new request in it is named by user space, which
    // aborts the connection if it is denied).
    let continuation = tunnel && state.awaiting_reply != 0 && first != 0x16;
    let mut expired = false;
    if need != 0 && !continuation {
        if config.mode != MODE_BLOCK {
            // Audit never holds traffic: user space reads the request across sends.
            capture(state, data, size, window);
            state.phase = PHASE_CAPTURE;
            // The peer's first answer comes after the whole request: if it was a CONNECT, it says
            // whether the tunnel opened.
            state.awaiting_reply = 1;
            return Ok(SK_PASS);
        }
        if need > size && need <= WINDOW {
            // Hold this send until the rest is written; nothing leaves meanwhile. Only bytes that are a
            // prefix of a request we read get here, so the client is bound to send the rest, but a hold is
            // bounded in time too: past the timeout the connection is uninspectable.
            let now = unsafe { bpf_ktime_get_ns() };
            if state.hold_since == 0 {
                state.hold_since = now;
                report_hold(state, size, need);
            }
            if now - state.hold_since < config.hold_timeout_ms as u64 * 1_000_000 {
                unsafe { bpf_msg_cork_bytes(ctx.msg, need) };
                return Ok(SK_PASS);
            }
            expired = true;
        }
    }
    end_hold(ctx, state);

    if !keep_alive {
        capture(state, data, size, window);
    }

    // A named request whose end could not be found within the bounds cannot be framed.
    let lost = if expired { SOURCE_HOLD_EXPIRED } else { SOURCE_UNFRAMED };
    let (outcome, source, start, len) = match scan.kind {
        SCAN_NAME | SCAN_IPV4 => {
            let bits = if scan.kind == SCAN_NAME {
                domain_bits(scratch, scan.a, scan.b, config)
            } else {
                ipv4_bits(scan.a, config)
            };
            let outcome = verdict(bits, config);
            let (start, len) = if scan.kind == SCAN_NAME { (scan.a, scan.b) } else { (0, 0) };
            // A denied name is refused whatever the framing; an allowed one needs its request framed.
            if outcome != VERDICT_BLOCKED && (unframed || need != 0) {
                (uninspectable(config), lost, start, len)
            } else {
                (outcome, scan.source, start, len)
            }
        }
        SCAN_GREETING => {
            // The method choice answers the greeting; user space needs it to read the reply that follows.
            state.phase = PHASE_SOCKS5_REQUEST;
            state.awaiting_reply = 1;
            return Ok(SK_PASS);
        }
        // Before the proxy has answered, bytes after a CONNECT or SOCKS request that are no request of
        // their own are the rest of it (written in pieces): captured above, and the tunnel's first bytes
        // are still to come. A ClientHello or a new request sent without waiting is judged as such.
        _ if tunnel && state.awaiting_reply != 0 && first != 0x16 => return Ok(SK_PASS),
        // Inside a tunnel the outer request already named the target.
        _ if tunnel => (VERDICT_NO_MATCH, SOURCE_NONE, 0, 0),
        _ => (uninspectable(config), if expired { SOURCE_HOLD_EXPIRED } else { SOURCE_NONE }, 0, 0),
    };
    // A CONNECT inside a tunnel phase is the client asking again on the same connection (after a 407,
    // as proxy authentication works): the next write after it is judged like the first one's.
    let opens_tunnel = source == SOURCE_CONNECT
        || (matches!(source, SOURCE_SOCKS5 | SOURCE_SOCKS4A | SOURCE_SOCKS_IP) && !tunnel);
    state.verdict = outcome;
    state.phase = if outcome == VERDICT_BLOCKED || outcome == VERDICT_UNINSPECTABLE_BLOCKED {
        PHASE_BLOCKED
    } else if opens_tunnel {
        state.awaiting_reply = 1;
        PHASE_TUNNEL
    } else if framed != 0 && outcome != VERDICT_UNINSPECTABLE_ALLOWED && source != SOURCE_CONNECT {
        PHASE_HTTP
    } else {
        PHASE_DONE
    };
    // Every first request is reported; later ones on a kept-alive connection only when they are refused
    // or cannot be read.
    if !keep_alive || !(outcome == VERDICT_NO_MATCH || outcome == VERDICT_ALLOWED) {
        report_verdict(state, scratch, outcome, source, start, len);
    }
    if state.phase == PHASE_BLOCKED {
        return Ok(SK_DROP);
    }
    if state.phase == PHASE_HTTP {
        // This request passes; the program runs again where the next one starts, in this send or a later one.
        unsafe { bpf_msg_apply_bytes(ctx.msg, framed) };
    } else if state.phase == PHASE_DONE {
        // Later sends of this socket need no program run until user space takes it out of SOCKS.
        unsafe { bpf_msg_apply_bytes(ctx.msg, u32::MAX) };
    }
    Ok(SK_PASS)
}

/// Store the scan's outcome in the per-CPU scratch map and load it back (volatile, so the compiler keeps
/// both): values loaded from map memory carry no constants for the verifier to tell paths apart by.
#[inline(always)]
fn settle(
    scratch: &mut Scratch,
    scan: Scan,
    need: u32,
    framed: u32,
    unframed: bool,
) -> (Scan, u32, u32, bool) {
    unsafe {
        core::ptr::write_volatile(&mut scratch.scan, scan);
        core::ptr::write_volatile(&mut scratch.need, need);
        core::ptr::write_volatile(&mut scratch.framed, framed);
        core::ptr::write_volatile(&mut scratch.unframed, unframed as u32);
        (
            core::ptr::read_volatile(&scratch.scan),
            core::ptr::read_volatile(&scratch.need),
            core::ptr::read_volatile(&scratch.framed),
            core::ptr::read_volatile(&scratch.unframed) != 0,
        )
    }
}

/// This send is not held: a hold that was on ends here.
#[inline(always)]
fn end_hold(ctx: &SkMsgContext, state: &mut FlowState) {
    if state.hold_since != 0 {
        // The kernel keeps a corked message's byte count for the sends after it: without this, they would
        // be held until that many bytes had come again.
        unsafe { bpf_msg_cork_bytes(ctx.msg, 0) };
    }
    state.hold_since = 0;
}

#[inline(always)]
fn uninspectable(config: &Config) -> u32 {
    if config.mode == MODE_BLOCK && config.uninspectable == UNINSPECTABLE_BLOCK {
        VERDICT_UNINSPECTABLE_BLOCKED
    } else {
        VERDICT_UNINSPECTABLE_ALLOWED
    }
}

#[inline(always)]
fn read(dst: *mut u8, len: u32, src: *const u8) {
    unsafe { bpf_probe_read_kernel(dst.cast(), len, src.cast()) };
}

/// Hand this send's bytes to user space, up to `CAPTURE_LIMIT` per connection.
#[inline(always)]
fn capture(state: &mut FlowState, data: *const u8, size: u32, window: u32) {
    let base = state.seen;
    state.seen = base.saturating_add(size);
    submit_payload(state.cookie, base, data, window, CAPTURE_LIMIT, false);
}

#[inline(always)]
fn report_verdict(state: &FlowState, scratch: &Scratch, outcome: u32, source: u32, start: u32, len: u32) {
    let Some(mut entry) = EVENTS.reserve::<VerdictRecord>(0) else {
        count_drop(DROP_RINGBUF_FULL);
        return;
    };
    let rec = entry.as_mut_ptr();
    let n = if len < NAME_MAX as u32 { len } else { NAME_MAX as u32 - 1 };
    unsafe {
        (*rec).header = header(KIND_VERDICT, state.cookie);
        (*rec).verdict = outcome;
        (*rec).source = source;
        (*rec).last = (state.phase == PHASE_DONE || state.phase == PHASE_BLOCKED) as u32;
        (*rec).name_len = n;
        bpf_probe_read_kernel(
            (*rec).name.as_mut_ptr().cast(),
            n & (NAME_MAX as u32 - 1),
            scratch.bytes.as_ptr().add((start & MASK) as usize).cast(),
        );
    }
    entry.submit(wakeup());
}

#[inline(always)]
fn report_hold(state: &FlowState, held: u32, need: u32) {
    let Some(mut entry) = EVENTS.reserve::<HoldRecord>(0) else {
        count_drop(DROP_RINGBUF_FULL);
        return;
    };
    entry.write(HoldRecord { header: header(KIND_HOLD, state.cookie), held, need });
    entry.submit(wakeup());
}

//! The records every program writes to the ring buffer: their common header, and a send's bytes as
//! payload records.

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::generated::{bpf_ktime_get_ns, bpf_probe_read_kernel},
};
use monitor_common::{
    record::{KIND_PAYLOAD, PAYLOAD_CHUNK, PayloadRecord, RecordHeader},
    verdict::DROP_RINGBUF_FULL,
};

use crate::{
    maps::{EVENTS, count_drop, wakeup},
    parse::WINDOW,
};

/// Copy `len` bytes at `data` (at most one window) to the ring as payload records at stream offset `base`,
/// none at or past stream offset `limit`. `force_wake` wakes the reader at once (someone waits on it).
/// False when the ring is full.
#[inline(always)]
pub fn submit_payload(
    cookie: u64,
    base: u32,
    data: *const u8,
    len: u32,
    limit: u32,
    force_wake: bool,
) -> bool {
    let mut off = 0u32;
    for _ in 0..(WINDOW / PAYLOAD_CHUNK as u32) {
        if off >= len || base + off >= limit {
            break;
        }
        let remaining = len - off;
        let n = if remaining < PAYLOAD_CHUNK as u32 { remaining } else { PAYLOAD_CHUNK as u32 };
        // The 6.1 verifier walks a path of the unrolled loop that cannot happen, where `n` looks negative;
        // a bound on an opaque copy holds on every path.
        let n = core::hint::black_box(n);
        if n > PAYLOAD_CHUNK as u32 {
            break;
        }
        let Some(mut entry) = EVENTS.reserve::<PayloadRecord>(0) else {
            count_drop(DROP_RINGBUF_FULL);
            return false;
        };
        let rec = entry.as_mut_ptr();
        unsafe {
            (*rec).header = header(KIND_PAYLOAD, cookie);
            (*rec).offset = base + off;
            (*rec).len = n;
            bpf_probe_read_kernel((*rec).data.as_mut_ptr().cast(), n, data.add(off as usize).cast());
        }
        entry.submit(if force_wake { BPF_RB_FORCE_WAKEUP as u64 } else { wakeup() });
        off += PAYLOAD_CHUNK as u32;
    }
    true
}

#[inline(always)]
pub fn header(kind: u32, cookie: u64) -> RecordHeader {
    RecordHeader { kind, _pad: 0, cookie, ktime_ns: unsafe { bpf_ktime_get_ns() } }
}

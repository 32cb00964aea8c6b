//! Matching a named target against the indicator maps.

use aya_ebpf::maps::lpm_trie::Key;
use monitor_common::{
    config::{Config, MODE_AUDIT, MODE_BLOCK},
    name_hash::ReverseNameHash,
    record::NAME_MAX,
    verdict::{
        IND_ALLOW, IND_BLOCK, IndicatorSlots, VERDICT_ALLOWED, VERDICT_AUDITED, VERDICT_BLOCKED,
        VERDICT_NO_MATCH,
    },
};

use crate::{
    maps::{DOMAINS, NETS_V4, NETS_V6},
    parse::{Scratch, bounded_loop},
};

#[inline(always)]
fn live_bits(slots: &IndicatorSlots, config: &Config) -> u8 {
    slots[(config.generation & 1) as usize]
}

struct SuffixWalk<'a> {
    buf: &'a Scratch,
    config: &'a Config,
    start: u32,
    /// Bytes of the name not yet hashed (the walk goes from the end to the start).
    left: u32,
    hash: ReverseNameHash,
    bits: u8,
}

extern "C" fn suffix_step(_: u64, w: *mut SuffixWalk<'_>) -> i64 {
    let w = unsafe { &mut *w };
    if w.left == 0 {
        return 1;
    }
    w.left -= 1;
    let i = w.start + w.left;
    w.hash.push(w.buf.at(i));
    if w.left == 0 || w.buf.at(i - 1) == b'.' {
        if let Some(slots) = unsafe { DOMAINS.get(&w.hash.key()) } {
            w.bits |= live_bits(slots, w.config);
        }
    }
    0
}

/// `IND_*` bits of every label suffix of `name` (at `start`, `len` bytes in `buf`), or-ed together.
/// A trailing dot is ignored; letters are folded to lower case by the hash.
#[inline(always)]
pub fn domain_bits(buf: &Scratch, start: u32, len: u32, config: &Config) -> u8 {
    let mut len = len;
    if len > 0 && buf.at(start + len - 1) == b'.' {
        len -= 1;
    }
    if len == 0 || len > NAME_MAX as u32 {
        return 0;
    }
    let mut walk =
        SuffixWalk { buf, config, start, left: len, hash: ReverseNameHash::new(config.seed), bits: 0 };
    bounded_loop(NAME_MAX as u32, suffix_step, &mut walk);
    walk.bits
}

#[inline(always)]
pub fn ipv4_bits(addr_be: u32, config: &Config) -> u8 {
    let key = Key::new(32, addr_be.to_ne_bytes());
    NETS_V4.get(&key).map(|s| live_bits(s, config)).unwrap_or(0)
}

#[inline(always)]
pub fn ipv6_bits(addr: [u32; 4], config: &Config) -> u8 {
    // An IPv4-mapped address (::ffff:a.b.c.d) is judged by the IPv4 indicators.
    if addr[0] == 0 && addr[1] == 0 && addr[2] == u32::to_be(0xffff) {
        return ipv4_bits(addr[3], config);
    }
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = addr[i].to_ne_bytes();
        bytes[i * 4] = b[0];
        bytes[i * 4 + 1] = b[1];
        bytes[i * 4 + 2] = b[2];
        bytes[i * 4 + 3] = b[3];
        i += 1;
    }
    let key = Key::new(128, bytes);
    NETS_V6.get(&key).map(|s| live_bits(s, config)).unwrap_or(0)
}

/// Allow wins over block; a block match blocks only in block mode.
#[inline(always)]
pub fn verdict(bits: u8, config: &Config) -> u32 {
    if bits & IND_ALLOW != 0 {
        return VERDICT_ALLOWED;
    }
    if bits & IND_BLOCK == 0 {
        return VERDICT_NO_MATCH;
    }
    match config.mode {
        MODE_BLOCK => VERDICT_BLOCKED,
        MODE_AUDIT => VERDICT_AUDITED,
        _ => VERDICT_NO_MATCH,
    }
}

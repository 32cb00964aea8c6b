//! The hash under which domain indicators are stored, computed the same way by the kernel and the daemon.
//!
//! A name is hashed from its last byte to its first, so the hash of every label suffix
//! (`com`, `example.com`, `www.example.com`) falls out of one pass: the kernel looks each suffix up
//! as it reaches a label boundary, which gives subdomain matching at a cost that depends on the name's
//! length and not on the number of indicators. Two FNV-1a lanes with secret seeds (chosen at random when
//! the maps are created) make a 128-bit key, so a sender cannot construct a name that collides with an
//! allow indicator without knowing the seeds.

const PRIME_A: u64 = 0x0000_0100_0000_01b3;
const PRIME_B: u64 = 0x0000_0100_0000_0233;

/// A domain indicator's key in the kernel map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NameKey {
    pub lanes: [u64; 2],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for NameKey {}

/// Incremental hash over a name read backwards.
#[derive(Clone, Copy, Debug)]
pub struct ReverseNameHash {
    lanes: [u64; 2],
}

impl ReverseNameHash {
    #[inline(always)]
    pub const fn new(seed: [u64; 2]) -> Self {
        ReverseNameHash { lanes: seed }
    }

    /// Feed the next byte (moving towards the start of the name). The byte is folded to lower case.
    #[inline(always)]
    pub fn push(&mut self, byte: u8) {
        let b = to_lower(byte) as u64;
        self.lanes[0] = (self.lanes[0] ^ b).wrapping_mul(PRIME_A);
        self.lanes[1] = (self.lanes[1] ^ b).wrapping_mul(PRIME_B);
    }

    #[inline(always)]
    pub const fn key(&self) -> NameKey {
        NameKey { lanes: self.lanes }
    }
}

#[inline(always)]
pub const fn to_lower(b: u8) -> u8 {
    if b >= b'A' && b <= b'Z' { b + 32 } else { b }
}

/// The key of a whole (already normalised) name: what the daemon stores for an indicator.
pub fn name_key(name: &[u8], seed: [u64; 2]) -> NameKey {
    let mut h = ReverseNameHash::new(seed);
    for &b in name.iter().rev() {
        h.push(b);
    }
    h.key()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_keys_fall_out_of_one_backward_pass() {
        let seed = [0x1234, 0x5678];
        let name = b"www.Example.COM";
        let mut h = ReverseNameHash::new(seed);
        let mut at_boundaries = [NameKey::default(); 3];
        let mut n = 0;
        for i in (0..name.len()).rev() {
            h.push(name[i]);
            if i == 0 || name[i - 1] == b'.' {
                at_boundaries[n] = h.key();
                n += 1;
            }
        }
        assert_eq!(n, 3);
        assert_eq!(at_boundaries[0], name_key(b"com", seed));
        assert_eq!(at_boundaries[1], name_key(b"example.com", seed));
        assert_eq!(at_boundaries[2], name_key(b"www.example.com", seed));
        assert_ne!(name_key(b"com", seed), name_key(b"com", [1, 2]));
    }
}

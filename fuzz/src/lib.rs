//! Helpers shared by the fuzz targets: the promise every parser step keeps, and a deterministic way
//! to cut one input into pieces of varied sizes.

use monitor_core::extract::Step;

/// What a [`Step`] promises about a buffer of `len` bytes: `Done` took no more than was there, and
/// `NeedMore` asks for more than is there (else a streaming caller would wait forever).
pub fn check_step<T>(step: &Step<T>, len: usize, parser: &str) {
    match step {
        Step::Done(_, taken) => assert!(*taken <= len, "{parser}: Done({taken}) from {len} bytes"),
        Step::NeedMore(need) => assert!(*need > len, "{parser}: NeedMore({need}) with {len} bytes there"),
        Step::Malformed(_) => {}
    }
}

/// Piece sizes from a seed: mostly small (1 to 64 bytes, where boundaries fall inside headers and
/// lengths), sometimes up to 2 KiB. A xorshift generator, so a crashing input replays exactly.
pub struct PieceSizes(u32);

impl PieceSizes {
    pub fn new(seed: u8) -> Self {
        PieceSizes(u32::from(seed) << 8 | 0x5a5a_0001)
    }

    pub fn next_size(&mut self) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        let size = if x & 0x0700 == 0 { x % 2048 } else { x % 64 };
        size as usize + 1
    }

    /// Whether the next step feeds the other side's bytes (for interleaving two streams).
    pub fn flip(&mut self) -> bool {
        self.next_size().is_multiple_of(3)
    }
}

/// Splits `data` at the first `marker`: (before, after); without one, all of it is before.
pub fn split_at_marker<'a>(data: &'a [u8], marker: &[u8]) -> (&'a [u8], &'a [u8]) {
    match data.windows(marker.len()).position(|w| w == marker) {
        Some(at) => (&data[..at], &data[at + marker.len()..]),
        None => (data, &[]),
    }
}

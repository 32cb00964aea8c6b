//! The daemon's settings as the kernel programs read them (map `CONFIG`, one entry).

/// No payload inspection: connection events only.
pub const MODE_OFF: u32 = 0;
/// Inspect and report, block nothing.
pub const MODE_AUDIT: u32 = 1;
/// Inspect, report, and stop connections whose target matches a block indicator.
pub const MODE_BLOCK: u32 = 2;

/// What happens to a connection whose first bytes could not name a target within the bounds.
pub const UNINSPECTABLE_ALLOW: u32 = 0;
pub const UNINSPECTABLE_BLOCK: u32 = 1;

/// Bytes of a connection's client stream the kernel hands to user space, at most.
pub const CAPTURE_LIMIT: u32 = 16 * 1024;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub mode: u32,
    pub uninspectable: u32,
    /// Which slot of an indicator value is live (0 or 1): a reload fills the other slot, then flips this.
    pub generation: u32,
    /// Block mode: how long a send may be held for the bytes that decide, in milliseconds. Past it, the
    /// connection is uninspectable (the kernel applies this at the client's next write; user space, which
    /// sees the hold begin, acts on a client that writes nothing more).
    pub hold_timeout_ms: u32,
    /// Secret seeds of the indicator name hash (see [`crate::name_hash`]).
    pub seed: [u64; 2],
}

impl Config {
    pub const fn new(
        mode: u32,
        uninspectable: u32,
        generation: u32,
        hold_timeout_ms: u32,
        seed: [u64; 2],
    ) -> Self {
        Config { mode, uninspectable, generation, hold_timeout_ms, seed }
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}

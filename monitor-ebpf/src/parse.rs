//! The kernel's scanners live in `monitor_common::scan`, built for the host too so that a differential
//! test runs them against the user-space parsers; this module keeps the kernel's paths to them.

pub use monitor_common::scan::*;

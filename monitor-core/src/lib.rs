//! Everything the monitor does that needs no kernel: naming the real target from a connection's
//! first bytes, indicators and verdicts, the event schema, and replay of packet captures.
//! It builds on any OS; the Linux daemon in `monitor` feeds it what the kernel programs capture.

#![cfg_attr(test, expect(unused_crate_dependencies, reason = "criterion is for the benches"))]

pub mod device_info;
pub mod event;
pub mod extract;
pub mod policy;
pub mod replay;
pub mod stream;

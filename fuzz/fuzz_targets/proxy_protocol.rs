//! PROXY protocol v1 and v2 headers in front of a connection's first bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_core::extract::proxy_protocol;
use monitor_fuzz::check_step;

fuzz_target!(|data: &[u8]| {
    let _ = proxy_protocol::looks_like_proxy_header(data);
    check_step(&proxy_protocol::parse_proxy_header(data), data.len(), "parse_proxy_header");
});

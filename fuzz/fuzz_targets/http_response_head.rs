//! HTTP response heads: a proxy's reply to CONNECT.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_core::extract::http;
use monitor_fuzz::check_step;

fuzz_target!(|data: &[u8]| {
    let step = http::parse_response_head(data);
    check_step(&step, data.len(), "parse_response_head");
});

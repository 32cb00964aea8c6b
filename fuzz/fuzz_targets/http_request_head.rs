//! HTTP request heads: CONNECT, absolute-form and origin-form requests, Host headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_core::extract::http;
use monitor_fuzz::check_step;

fuzz_target!(|data: &[u8]| {
    let _ = http::looks_like_request(data);
    let step = http::parse_request_head(data);
    check_step(&step, data.len(), "parse_request_head");
});

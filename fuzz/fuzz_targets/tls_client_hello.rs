//! A ClientHello in TLS records, and the same bytes as a bare handshake message (as QUIC carries it),
//! whole and salvaged from a cut-short stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_core::extract::tls;
use monitor_fuzz::check_step;

fuzz_target!(|data: &[u8]| {
    let _ = tls::looks_like_handshake_record(data);
    let _ = tls::looks_like_sslv2_client_hello(data);
    check_step(&tls::parse_client_hello(data), data.len(), "parse_client_hello");
    let _ = tls::salvage_client_hello(data);
    check_step(&tls::parse_client_hello_message(data), data.len(), "parse_client_hello_message");
    let _ = tls::salvage_client_hello_message(data);
});

//! SOCKS4/4a requests and replies, SOCKS5 greetings, sub-negotiation, requests and server messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_core::extract::socks;
use monitor_fuzz::check_step;

fuzz_target!(|data: &[u8]| {
    let len = data.len();
    let _ = socks::looks_like_socks5_greeting(data);
    let _ = socks::looks_like_socks4_request(data);
    check_step(&socks::parse_socks5_greeting(data), len, "parse_socks5_greeting");
    check_step(&socks::parse_socks5_client_message(data), len, "parse_socks5_client_message");
    check_step(&socks::parse_socks5_request(data), len, "parse_socks5_request");
    check_step(&socks::parse_socks4_request(data), len, "parse_socks4_request");
    check_step(&socks::parse_socks4_reply(data), len, "parse_socks4_reply");
    // The server side's reading depends on the method it chose and whether auth is done: take them
    // from the first byte, and parse the rest.
    if let Some((&mode, rest)) = data.split_first() {
        let method = (mode & 0x80 != 0).then_some(mode & 0x03);
        let step = socks::parse_socks5_server_message(rest, method, mode & 0x40 != 0);
        check_step(&step, rest.len(), "parse_socks5_server_message");
    }
});

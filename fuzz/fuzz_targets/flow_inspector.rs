//! The streaming FlowInspector, fed a connection's client bytes in pieces of varied sizes with the
//! server's bytes interleaved. Input: a seed byte for the piece sizes, the client stream, then
//! optionally `--server--` and the server stream.
//!
//! Pieces must not change the answer: the client stream fed in pieces gives, once finished, the
//! inspection it gives fed whole. Server bytes only add the proxy's status; with them interleaved the
//! only check is that nothing panics and the answer is final after `finish`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_core::extract::FlowInspector;
use monitor_fuzz::{PieceSizes, split_at_marker};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let (client, server) = split_at_marker(rest, b"--server--");

    let mut whole = FlowInspector::new();
    whole.client_bytes(client);
    whole.finish();

    let mut sizes = PieceSizes::new(seed);
    let mut pieces = FlowInspector::new();
    let mut at = 0;
    while at < client.len() {
        let end = (at + sizes.next_size()).min(client.len());
        pieces.client_bytes(&client[at..end]);
        at = end;
    }
    pieces.finish();
    assert_eq!(pieces.inspection(), whole.inspection(), "pieces and the whole stream disagree");

    let mut interleaved = FlowInspector::new();
    let (mut c, mut s) = (0, 0);
    while c < client.len() || s < server.len() {
        let feed_server = s < server.len() && (c == client.len() || sizes.flip());
        let size = sizes.next_size();
        if feed_server {
            let end = (s + size).min(server.len());
            interleaved.server_bytes(&server[s..end]);
            s = end;
        } else {
            let end = (c + size).min(client.len());
            interleaved.client_bytes(&client[c..end]);
            c = end;
        }
    }
    interleaved.finish();
    assert!(interleaved.is_complete());
    let inspection = interleaved.inspection();
    let _ = (inspection.remote_url(), inspection.names(), inspection.additional_fields());
});

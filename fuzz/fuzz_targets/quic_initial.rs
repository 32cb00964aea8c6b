//! The QUIC Initial reader over a flow's client datagrams. Input: records of a tag byte, a 2-byte
//! big-endian length and that many bytes.
//!
//! Tag bit 0 clear: the bytes are a raw datagram (headers, coalescing, versions, damage). Set: they
//! are the plaintext frames of an Initial that this target protects with the client's keys, so that
//! the frame walk, CRYPTO reassembly and the TLS parser behind the AEAD are reached too; bits 1-2
//! pick the version, bit 3 addresses the server's connection ID (keys stay the first DCID's), bits
//! 4-7 are the packet number. Tag bit 6 of a raw record glues it to the previous datagram
//! (coalesced packets).
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor_core::extract::QuicInspector;
use monitor_core::extract::quic::{QuicVersion, seal_client_initial};

const CLIENT_DCID: [u8; 8] = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
const SERVER_CID: [u8; 5] = [0x50, 0x51, 0x52, 0x53, 0x54];

fuzz_target!(|data: &[u8]| {
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    let mut rest = data;
    while let [tag, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        if tag & 1 == 1 {
            let version = [QuicVersion::V1, QuicVersion::V2, QuicVersion::Draft29, QuicVersion::Draft23]
                [usize::from(tag >> 1 & 3)];
            let dcid: &[u8] = if tag & 0x08 != 0 { &SERVER_CID } else { &CLIENT_DCID };
            datagrams.push(seal_client_initial(version, dcid, &CLIENT_DCID, u64::from(tag >> 4), bytes));
        } else if tag & 0x40 != 0
            && let Some(last) = datagrams.last_mut()
        {
            last.extend_from_slice(bytes);
        } else {
            datagrams.push(bytes.to_vec());
        }
    }
    let mut inspector = QuicInspector::new();
    for datagram in &datagrams {
        inspector.client_datagram(datagram);
    }
    inspector.finish();
    assert!(inspector.is_complete());
    let inspection = inspector.inspection();
    if inspection.sni.is_some() {
        assert_eq!(inspection.host, inspection.sni);
    }
    let _ = (inspection.remote_url(), inspection.additional_fields());
});

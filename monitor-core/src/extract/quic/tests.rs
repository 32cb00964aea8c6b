use super::crypto::InitialKeys;
use super::*;
use crate::extract::tests::unhex;
use crate::extract::tls::tests::{client_hello_message, sni_extension};

/// RFC 9001 A.2: the client Initial of the RFC's worked example (SNI example.com, packet number 2).
const RFC9001_A2: &str = include_str!("../../../tests/data/rfc9001_a2_client_initial.hex");
/// First client datagram of the corpus's ndpi__quic-v2.pcapng: QUIC version 2, SNI `test`.
const NDPI_V2: &str = include_str!("../../../tests/data/ndpi_quic_v2.client.hex");
/// First client datagram of the corpus's ndpi__quic-29.pcap: draft-29, SNI `localhost`.
const NDPI_DRAFT29: &str = include_str!("../../../tests/data/ndpi_quic_29.client.hex");
/// The two client datagrams of the corpus's suricata__quic-frag-unordered.pcap, one per line: a
/// post-quantum Chrome ClientHello in CRYPTO frames out of order across two Initial packets.
const SURICATA_UNORDERED: &str = include_str!("../../../tests/data/suricata_quic_frag_unordered.client.hex");

const DCID: [u8; 8] = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];

fn datagrams(fixture: &str) -> Vec<Vec<u8>> {
    fixture.lines().filter(|l| !l.trim().is_empty()).map(unhex).collect()
}

fn inspect(datagrams: &[Vec<u8>]) -> QuicInspector {
    let mut inspector = QuicInspector::new();
    for datagram in datagrams {
        inspector.client_datagram(datagram);
    }
    inspector
}

fn varint(value: u64) -> Vec<u8> {
    match value {
        0..=0x3f => vec![value as u8],
        0x40..=0x3fff => (value as u16 | 0x4000).to_be_bytes().to_vec(),
        0x4000..=0x3fff_ffff => (value as u32 | 0x8000_0000).to_be_bytes().to_vec(),
        _ => (value | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
    }
}

fn crypto_frame(offset: usize, data: &[u8]) -> Vec<u8> {
    [vec![0x06], varint(offset as u64), varint(data.len() as u64), data.to_vec()].concat()
}

/// A protected v1 client Initial.
fn initial(dcid: &[u8], keys_dcid: &[u8], pn: u64, frames: &[u8]) -> Vec<u8> {
    seal_client_initial(QuicVersion::V1, dcid, keys_dcid, pn, frames)
}

/// A 0-RTT packet: only its length matters to us.
fn zero_rtt(body_len: usize) -> Vec<u8> {
    let mut packet = vec![0xd3, 0, 0, 0, 1, 8];
    packet.extend_from_slice(&DCID);
    packet.push(0);
    packet.extend_from_slice(&varint(body_len as u64));
    packet.extend(std::iter::repeat_n(0x5a, body_len));
    packet
}

fn hello(name: &str, key_share: usize) -> Vec<u8> {
    client_hello_message(&[(51, vec![7; key_share]), sni_extension(name), (0xfe0d, vec![0, 0, 1])])
}

#[test]
fn rfc_9001_client_initial_names_example_com() {
    let packet = unhex(RFC9001_A2);
    assert_eq!(packet.len(), 1200);
    // The header fields, by hand: long header, v1, 8-byte DCID, no SCID, no token, length 0x49e.
    let opened = InitialKeys::client(QuicVersion::V1, &DCID).open(&packet, 18, None).expect("opens");
    assert_eq!(opened.packet_number, 2);
    assert_eq!(&opened.payload[..10], &unhex("060040f1010000ed0303")[..]);
    let inspector = inspect(&[packet]);
    let found = inspector.inspection();
    assert!(inspector.is_complete());
    assert_eq!(found.sni.as_deref(), Some("example.com"));
    assert_eq!(found.host.as_deref(), Some("example.com"));
    assert_eq!(found.source, Some(TargetSource::QuicSni));
    assert_eq!(found.protocol, Some(WireProtocol::Quic));
    assert_eq!(found.remote_url(), Some("example.com"));
    assert_eq!((found.ech, found.malformed), (false, None));
    assert_eq!(inspector.crypto_packets(), 1);
}

#[test]
fn one_flipped_bit_fails_the_tag() {
    let mut packet = unhex(RFC9001_A2);
    packet[600] ^= 1;
    let inspector = inspect(&[packet]);
    let found = inspector.inspection();
    assert_eq!(found.sni, None);
    assert_eq!(found.protocol, Some(WireProtocol::Quic));
    assert_eq!(found.malformed, Some("QUIC Initial packet does not decrypt with the client's Initial keys"));
    assert!(!inspector.is_complete());
}

#[test]
fn version_2_and_draft_29_from_the_corpus() {
    let v2 = inspect(&datagrams(NDPI_V2));
    assert_eq!(v2.inspection().sni.as_deref(), Some("test"));
    assert!(v2.is_complete());
    let draft = inspect(&datagrams(NDPI_DRAFT29));
    assert_eq!(draft.inspection().sni.as_deref(), Some("localhost"));
    assert!(draft.is_complete());
}

#[test]
fn post_quantum_hello_over_two_initials_in_either_order() {
    let mut both = datagrams(SURICATA_UNORDERED);
    assert_eq!(both.len(), 2);
    for _ in 0..2 {
        let first_only = inspect(&both[..1]);
        assert!(!first_only.is_complete(), "one Initial does not hold the whole ClientHello");
        let inspector = inspect(&both);
        let found = inspector.inspection();
        assert_eq!(found.sni.as_deref(), Some("mastodon.social"));
        assert!(found.ech, "Chrome's (GREASE) ECH is flagged");
        assert_eq!(found.malformed, None);
        assert_eq!(inspector.crypto_packets(), 2);
        both.reverse();
    }
}

#[test]
fn crypto_frames_out_of_order_with_a_gap_filled_last() {
    let message = hello("gap.example", 1500);
    let (a, rest) = message.split_at(700);
    let (b, c) = rest.split_at(700);
    let packets = [
        initial(&DCID, &DCID, 0, &[crypto_frame(1400, c), vec![0; 20]].concat()),
        initial(&DCID, &DCID, 1, &crypto_frame(0, a)),
        initial(&DCID, &DCID, 2, &[vec![1], crypto_frame(700, b)].concat()),
    ];
    let mut inspector = QuicInspector::new();
    inspector.client_datagram(&packets[0]);
    inspector.client_datagram(&packets[1]);
    assert!(!inspector.is_complete());
    assert_eq!(inspector.inspection().sni, None);
    inspector.client_datagram(&packets[2]);
    assert!(inspector.is_complete());
    assert_eq!(inspector.inspection().sni.as_deref(), Some("gap.example"));
    assert!(inspector.inspection().ech);
    assert_eq!(inspector.crypto_packets(), 3);
}

#[test]
fn coalesced_initials_and_zero_rtt_in_one_datagram() {
    let message = hello("coalesced.example", 900);
    // Chrome's order: later half first, and the halves overlap by 10 bytes.
    let datagram = [
        initial(&DCID, &DCID, 0, &crypto_frame(390, &message[390..])),
        zero_rtt(50),
        initial(&DCID, &DCID, 1, &[crypto_frame(0, &message[..400]), vec![0; 8]].concat()),
        vec![0; 30],
    ]
    .concat();
    let inspector = inspect(&[zero_rtt(40), datagram]);
    assert_eq!(inspector.inspection().sni.as_deref(), Some("coalesced.example"));
    assert_eq!(inspector.inspection().malformed, None);
}

#[test]
fn later_initials_to_the_servers_connection_id_keep_the_first_keys() {
    let message = hello("rekey.example", 1300);
    let (a, b) = message.split_at(800);
    let server_cid = [9u8; 12];
    let inspector = inspect(&[
        initial(&DCID, &DCID, 0, &crypto_frame(0, a)),
        initial(&server_cid, &DCID, 1, &crypto_frame(800, b)),
    ]);
    assert_eq!(inspector.inspection().sni.as_deref(), Some("rekey.example"));
}

#[test]
fn ack_ping_and_close_frames_are_stepped_over() {
    let message = hello("frames.example", 100);
    let ack = [0x02, 5, 0x40, 0x10, 2, 1, 0, 1, 1, 0];
    let ack_ecn = [0x03, 5, 0, 0, 0, 1, 2, 3];
    let close = [vec![0x1c, 0x0a, 0x06, 3], b"bye".to_vec()].concat();
    let frames = [vec![0x01], ack.to_vec(), ack_ecn.to_vec(), close, crypto_frame(0, &message)].concat();
    let inspector = inspect(&[initial(&DCID, &DCID, 0, &frames)]);
    assert_eq!(inspector.inspection().sni.as_deref(), Some("frames.example"));
    assert_eq!(inspector.inspection().malformed, None);
}

#[test]
fn unknown_frame_stops_the_packet_but_keeps_what_came_before() {
    let message = hello("stop.example", 100);
    let frames = [crypto_frame(0, &message), vec![0x08, 1, 2, 3]].concat();
    let inspector = inspect(&[initial(&DCID, &DCID, 0, &frames)]);
    let found = inspector.inspection();
    assert_eq!(found.sni.as_deref(), Some("stop.example"));
    assert_eq!(found.malformed, Some("frame type not allowed in a QUIC Initial packet"));
}

#[test]
fn not_quic_is_final_and_names_nothing() {
    for datagram in [&b"\x12\x34\x01\x00\x00\x01"[..], &[0x40, 1, 2, 3, 4, 5], &[], &[0xc6, 0x10, 1, 0, 0]] {
        let inspector = inspect(&[datagram.to_vec()]);
        assert!(inspector.is_complete());
        assert_eq!(inspector.inspection(), &Inspection::default());
    }
    assert!(!looks_like_quic(b"\xc8Q024 rest"));
    assert!(looks_like_quic(&unhex(RFC9001_A2)));
}

#[test]
fn datagram_limit_and_cut_short_hello_are_final() {
    let message = hello("cut.example", 3000);
    let first = initial(&DCID, &DCID, 0, &crypto_frame(0, &message[..600]));
    let mut inspector = QuicInspector::new();
    inspector.client_datagram(&first);
    for _ in 1..MAX_DATAGRAMS {
        assert!(!inspector.is_complete());
        inspector.client_datagram(&zero_rtt(30));
    }
    assert!(inspector.is_complete());
    assert_eq!(inspector.inspection().malformed, Some("ClientHello is cut short"));
    // The SNI sits after the 3000-byte key share, past the 600 bytes that came.
    assert_eq!(inspector.inspection().sni, None);

    let early_sni = client_hello_message(&[sni_extension("early.example"), (51, vec![7; 3000])]);
    let mut inspector = inspect(&[initial(&DCID, &DCID, 0, &crypto_frame(0, &early_sni[..600]))]);
    inspector.finish();
    assert_eq!(inspector.inspection().sni.as_deref(), Some("early.example"));
    assert_eq!(inspector.inspection().malformed, Some("ClientHello is cut short"));
}

#[test]
fn crypto_past_the_budget_is_dropped_and_said() {
    let frames = [crypto_frame(CRYPTO_BUDGET - 2, &[1, 2, 3, 4]), crypto_frame(1 << 40, &[5])].concat();
    let inspector = inspect(&[initial(&DCID, &DCID, 0, &frames)]);
    assert_eq!(inspector.inspection().malformed, Some("CRYPTO data past the 64 KiB inspection budget"));
}

#[test]
fn not_a_client_hello_is_malformed() {
    let server_hello = [2, 0, 0, 4, 3, 3, 0, 0];
    let inspector = inspect(&[initial(&DCID, &DCID, 0, &crypto_frame(0, &server_hello))]);
    assert!(inspector.is_complete());
    assert_eq!(inspector.inspection().malformed, Some("first handshake message is not a ClientHello"));
}

#[test]
fn broken_headers_are_malformed_not_panics() {
    let good = unhex(RFC9001_A2);
    // Every prefix of a real packet: cut-short headers and packets that run past the datagram.
    for cut in 0..good.len() {
        let inspector = inspect(&[good[..cut].to_vec()]);
        assert_eq!(inspector.inspection().sni, None, "cut at {cut}");
    }
    let mut long_cid = good.clone();
    long_cid[5] = 21;
    assert_eq!(inspect(&[long_cid]).inspection().malformed, Some("QUIC connection ID longer than 20 bytes"));
}

#[test]
fn crypto_stream_keeps_the_first_bytes_for_an_offset() {
    let mut stream = CryptoStream::default();
    assert!(stream.insert(2, b"cd"));
    assert_eq!(stream.contiguous(), b"");
    assert!(stream.insert(0, b"ab"));
    assert_eq!(stream.contiguous(), b"abcd");
    assert!(stream.insert(1, b"XYZe"));
    assert_eq!(stream.contiguous(), b"abcde");
    assert!(!stream.insert(u64::MAX, b"x"));
    assert_eq!(stream.contiguous(), b"abcde");
}

#[test]
fn every_version_we_read_round_trips() {
    let message = hello("versions.example", 50);
    for version in [QuicVersion::V1, QuicVersion::V2, QuicVersion::Draft29, QuicVersion::Draft23] {
        let packet = seal_client_initial(version, &DCID, &DCID, 0, &crypto_frame(0, &message));
        assert!(looks_like_quic(&packet));
        let inspector = inspect(&[packet]);
        assert_eq!(inspector.inspection().sni.as_deref(), Some("versions.example"), "{version:?}");
    }
}

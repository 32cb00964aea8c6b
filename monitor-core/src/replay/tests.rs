//! Replay over small captures built here, so that reassembly and client detection are tested without
//! the corpus.

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapPacket, PcapWriter};

use super::*;
use crate::event::ActionType;
use crate::extract::tls::tests::{client_hello_message, records, sni_extension};

const CLIENT: ([u8; 4], u16) = ([10, 0, 0, 2], 40000);
const SERVER: ([u8; 4], u16) = ([10, 0, 0, 5], 3128);

/// One TCP segment to put in a capture.
struct Packet {
    from_client: bool,
    seq: u32,
    flags: &'static str,
    payload: Vec<u8>,
}

fn packet(from_client: bool, seq: u32, flags: &'static str, payload: &[u8]) -> Packet {
    Packet { from_client, seq, flags, payload: payload.to_vec() }
}

/// A capture file in the temp directory, removed when dropped.
struct TempCapture(PathBuf);

impl Drop for TempCapture {
    fn drop(&mut self) {
        // Best effort: a leftover file in the temp directory harms nothing.
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_capture(name: &str, packets: &[Packet]) -> TempCapture {
    let path = std::env::temp_dir().join(format!("monitor-core-{}-{name}.pcap", std::process::id()));
    let file = File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut writer = PcapWriter::new(file).expect("pcap header");
    for (i, p) in packets.iter().enumerate() {
        let ((src, sport), (dst, dport)) = if p.from_client { (CLIENT, SERVER) } else { (SERVER, CLIENT) };
        let mut tcp =
            PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4(src, dst, 64).tcp(sport, dport, p.seq, 65535);
        for flag in p.flags.chars() {
            tcp = match flag {
                'S' => tcp.syn(),
                'A' => tcp.ack(1),
                'F' => tcp.fin(),
                'R' => tcp.rst(),
                other => panic!("unknown flag {other}"),
            };
        }
        let mut frame = Vec::new();
        tcp.write(&mut frame, &p.payload).expect("build frame");
        let time = Duration::from_secs(1_700_000_000) + Duration::from_millis(i as u64);
        writer.write_packet(&PcapPacket::new(time, frame.len() as u32, &frame)).expect("write packet");
    }
    TempCapture(path)
}

fn replay_all(capture: &TempCapture) -> (Vec<DeviceEvent>, ReplayStats) {
    let mut events = Vec::new();
    let stats = replay(&capture.0, &mut |e| events.push(e)).expect("replay");
    (events, stats)
}

#[test]
fn out_of_order_and_retransmitted_segments_are_reassembled() {
    let mut client = b"CONNECT tunnel.example:443 HTTP/1.1\r\n\r\n".to_vec();
    client.extend(records(
        &client_hello_message(&[(21, vec![0; 900]), sni_extension("tunnel.example")]),
        1 << 14,
    ));
    let (head, rest) = client.split_at(39);
    let (middle, tail) = rest.split_at(500);
    let isn = u32::MAX - 100; // the sequence numbers wrap inside the ClientHello
    let at = |offset: usize| isn.wrapping_add(1).wrapping_add(offset as u32);
    let capture = write_capture(
        "reorder",
        &[
            packet(true, isn, "S", b""),
            packet(false, 7000, "SA", b""),
            packet(true, at(0), "A", head),
            packet(false, 7001, "A", b"HTTP/1.1 200 Connection established\r\n\r\n"),
            packet(true, at(39 + 500), "A", tail),
            packet(true, at(39), "A", middle),
            packet(true, at(39), "A", middle),
            packet(true, at(client.len()), "FA", b""),
            packet(false, 7040, "FA", b""),
            packet(true, at(client.len()) + 1, "A", b""),
        ],
    );
    let (events, stats) = replay_all(&capture);
    assert_eq!((stats.packets, stats.flows, stats.flows_named), (10, 1, 1));
    let event = &events[0];
    assert_eq!(event.action_type, ActionType::ConnectionSuccess);
    assert_eq!((event.local_ip.as_str(), event.local_port), ("10.0.0.2", 40000));
    assert_eq!((event.remote_ip.as_str(), event.remote_port), ("10.0.0.5", 3128));
    assert_eq!(event.remote_url, "tunnel.example");
    assert_eq!(event.timestamp, "2023-11-14T22:13:20.000000Z");
    assert_eq!(event.device_name, capture.0.file_name().unwrap().to_string_lossy());
    assert_eq!(event.initiating_process_id, None);
    let fields = &event.additional_fields;
    assert_eq!(fields["TargetSource"], "Connect");
    assert_eq!(fields["Sni"], "tunnel.example");
    assert_eq!(fields["ProxyStatus"], 200);
    assert_eq!(fields["Tunneled"], true);
}

#[test]
fn refused_syn_is_a_failed_connection() {
    let capture = write_capture("refused", &[packet(true, 10, "S", b""), packet(false, 0, "RA", b"")]);
    let (events, _) = replay_all(&capture);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action_type, ActionType::ConnectionFailed);
    assert_eq!(events[0].remote_url, "");
    assert_eq!(events[0].remote_port, 3128);
}

#[test]
fn without_syn_the_requester_is_the_client() {
    // The capture starts with the server's reply; the client's request comes second.
    let capture = write_capture(
        "nosyn",
        &[
            packet(false, 500, "A", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            packet(true, 100, "A", b"GET / HTTP/1.1\r\nHost: late.example\r\n\r\n"),
        ],
    );
    let (events, _) = replay_all(&capture);
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].local_ip.as_str(), events[0].local_port), ("10.0.0.2", 40000));
    assert_eq!(events[0].remote_url, "late.example");
}

#[test]
fn stray_acks_after_close_open_no_new_flow() {
    let capture = write_capture(
        "stray",
        &[
            packet(true, 1, "S", b""),
            packet(false, 9, "SA", b""),
            packet(true, 2, "A", b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            packet(true, 40, "RA", b""),
            packet(false, 10, "A", b""),
            packet(true, 1000, "S", b""),
        ],
    );
    let (events, stats) = replay_all(&capture);
    assert_eq!(stats.flows, 2, "the RST closes the first flow; only the new SYN opens another");
    assert_eq!(events[0].remote_url, "a.example");
    assert_eq!(events[1].action_type, ActionType::ConnectionFailed);
}

#[test]
fn damaged_captures_do_not_panic() {
    let mut client = b"GET / HTTP/1.1\r\nHost: ok.example\r\n\r\n".to_vec();
    client.extend(records(&client_hello_message(&[sni_extension("x.example")]), 50));
    let capture = write_capture("damaged", &[packet(true, 1, "S", b""), packet(true, 2, "A", &client)]);
    let bytes = std::fs::read(&capture.0).expect("read capture");
    let damaged = std::env::temp_dir().join(format!("monitor-core-{}-damaged-cut.pcap", std::process::id()));
    let _cleanup = TempCapture(damaged.clone());
    for cut in (0..bytes.len()).step_by(7) {
        std::fs::write(&damaged, &bytes[..cut]).expect("write");
        match replay(&damaged, &mut |_| {}) {
            Ok(_) => assert!(cut >= 24, "a capture cut at {cut} has no full header"),
            Err(ReplayError::NotACapture { .. } | ReplayError::Header { .. }) => assert!(cut < 24),
            Err(other) => panic!("cut at {cut}: {other}"),
        }
    }
    for flip in (40..bytes.len()).step_by(3) {
        let mut flipped = bytes.clone();
        flipped[flip] ^= 0xa5;
        std::fs::write(&damaged, &flipped).expect("write");
        replay(&damaged, &mut |_| {}).expect("the header is intact");
    }
    let missing = std::env::temp_dir().join("monitor-core-no-such-capture.pcap");
    assert!(matches!(replay(&missing, &mut |_| {}), Err(ReplayError::Io { .. })));
}

/// A capture of UDP datagrams: (from the client?, payload).
fn write_udp_capture(name: &str, datagrams: &[(bool, Vec<u8>)]) -> TempCapture {
    let path = std::env::temp_dir().join(format!("monitor-core-{}-{name}.pcap", std::process::id()));
    let file = File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut writer = PcapWriter::new(file).expect("pcap header");
    for (i, (from_client, payload)) in datagrams.iter().enumerate() {
        let ((src, sport), (dst, dport)) =
            if *from_client { (CLIENT, (SERVER.0, 443)) } else { ((SERVER.0, 443), CLIENT) };
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4(src, dst, 64)
            .udp(sport, dport)
            .write(&mut frame, payload)
            .expect("build frame");
        let time = Duration::from_secs(1_700_000_000) + Duration::from_millis(i as u64);
        writer.write_packet(&PcapPacket::new(time, frame.len() as u32, &frame)).expect("write packet");
    }
    TempCapture(path)
}

#[test]
fn quic_initial_is_one_udp_event_and_other_udp_is_counted() {
    let initial =
        crate::extract::tests::unhex(include_str!("../../tests/data/rfc9001_a2_client_initial.hex"));
    let dns_query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00".to_vec();
    // The server's reply and the client's later datagrams belong to the reported flow.
    let capture = write_udp_capture(
        "quic",
        &[(true, initial.clone()), (false, vec![0xc0; 60]), (true, vec![0x40; 30]), (true, dns_query)],
    );
    let (events, stats) = replay_all(&capture);
    assert_eq!((stats.flows, stats.quic_flows, stats.flows_named), (1, 1, 1));
    // The last datagram uses the reported flow's ports: it is that flow's, not a new one.
    assert_eq!(stats.udp_datagrams_not_inspected, 0);
    let event = &events[0];
    assert_eq!(event.protocol, "Udp");
    assert_eq!(event.action_type, ActionType::ConnectionSuccess);
    assert_eq!(event.remote_url, "example.com");
    assert_eq!((event.local_ip.as_str(), event.local_port), ("10.0.0.2", 40000));
    assert_eq!((event.remote_ip.as_str(), event.remote_port), ("10.0.0.5", 443));
    assert_eq!(event.additional_fields["TargetSource"], "QuicSni");
    assert_eq!(event.additional_fields["Protocol"], "Quic");
    assert_eq!(event.additional_fields["Sni"], "example.com");

    let not_quic = write_udp_capture("dns", &[(true, b"\x12\x34\x01\x00".to_vec()), (false, vec![0x80; 20])]);
    let (events, stats) = replay_all(&not_quic);
    assert!(events.is_empty());
    assert_eq!((stats.flows, stats.udp_datagrams_not_inspected), (0, 2));
}

#[test]
fn quic_capture_starting_with_the_server_names_the_real_client() {
    let initial =
        crate::extract::tests::unhex(include_str!("../../tests/data/rfc9001_a2_client_initial.hex"));
    // A server Initial comes first (its header is long, version 1), then the client's.
    let mut server_initial = initial.clone();
    server_initial[600] ^= 0xff;
    let capture = write_udp_capture("quic-late", &[(false, server_initial), (true, initial)]);
    let (events, _) = replay_all(&capture);
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].local_ip.as_str(), events[0].local_port), ("10.0.0.2", 40000));
    assert_eq!(events[0].remote_url, "example.com");
}

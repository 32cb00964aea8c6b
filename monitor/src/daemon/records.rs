//! Decoding ring-buffer records. A record of unknown kind or short length is counted, never trusted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use monitor_common::record::{
    AF_INET, DeferRecord, Endpoints, HoldRecord, KIND_CLOSED, KIND_DEFER, KIND_ESTABLISHED, KIND_FAILED,
    KIND_HOLD, KIND_PAYLOAD, KIND_PROCESS, KIND_QUIC, KIND_REPLY, KIND_VERDICT, KIND_WIRE, KIND_WIRE_QUIC,
    KIND_WIRE_VERDICT, PayloadRecord, ProcessRecord, QuicRecord, RecordHeader, ReplyRecord, SocketRecord,
    VerdictRecord, WireFlowKey, WireRecord, WireVerdictRecord,
};

pub enum Record {
    Process(ProcessRecord),
    Established(SocketRecord),
    Failed(SocketRecord),
    Closed(SocketRecord),
    Payload(Box<PayloadRecord>),
    Verdict(Box<VerdictRecord>),
    Wire(Box<WireRecord>),
    WireVerdict(Box<WireVerdictRecord>),
    Reply(Box<ReplyRecord>),
    Quic(Box<QuicRecord>),
    /// A forwarded flow's QUIC datagram, seen on TC.
    WireQuic(Box<QuicRecord>),
    Hold(HoldRecord),
    Defer(DeferRecord),
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // The kernel wrote a `T` (checked by kind and length); the ring buffer gives no alignment promise.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Option<Record> {
    let header: RecordHeader = read(bytes)?;
    Some(match header.kind {
        KIND_PROCESS => Record::Process(read(bytes)?),
        KIND_ESTABLISHED => Record::Established(read(bytes)?),
        KIND_FAILED => Record::Failed(read(bytes)?),
        KIND_CLOSED => Record::Closed(read(bytes)?),
        KIND_PAYLOAD => Record::Payload(Box::new(read(bytes)?)),
        KIND_VERDICT => Record::Verdict(Box::new(read(bytes)?)),
        KIND_WIRE => Record::Wire(Box::new(read(bytes)?)),
        KIND_WIRE_VERDICT => Record::WireVerdict(Box::new(read(bytes)?)),
        KIND_REPLY => Record::Reply(Box::new(read(bytes)?)),
        KIND_QUIC => Record::Quic(Box::new(read(bytes)?)),
        KIND_WIRE_QUIC => Record::WireQuic(Box::new(read(bytes)?)),
        KIND_HOLD => Record::Hold(read(bytes)?),
        KIND_DEFER => Record::Defer(read(bytes)?),
        _ => return None,
    })
}

pub fn addr(family: u32, raw: [u32; 4]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(u32::from_be(raw[0])))
    } else {
        let mut bytes = [0u8; 16];
        for (i, word) in raw.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        let v6 = Ipv6Addr::from(bytes);
        // Report an IPv4-mapped peer as the IPv4 address it is.
        v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
    }
}

pub fn local(e: &Endpoints) -> (IpAddr, u16) {
    (addr(e.family, e.local_addr), e.local_port as u16)
}

pub fn remote(e: &Endpoints) -> (IpAddr, u16) {
    (addr(e.family, e.remote_addr), e.remote_port as u16)
}

pub fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// A forwarded segment's TCP flags, as the kernel copied them into its record.
const TCP_FIN: u32 = 0x01;
const TCP_SYN: u32 = 0x02;
const TCP_RST: u32 = 0x04;
const TCP_ACK: u32 = 0x10;

/// The client's SYN (not the server's SYN-ACK): the segment that opens a forwarded flow.
pub fn wire_opens(rec: &WireRecord) -> bool {
    rec.tcp_flags & TCP_SYN != 0 && rec.tcp_flags & TCP_ACK == 0
}

/// A FIN or RST: the kernel has removed the flow's entry.
pub fn wire_ends(rec: &WireRecord) -> bool {
    rec.tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// The segment acknowledges the server: the handshake completed.
pub fn wire_acks(rec: &WireRecord) -> bool {
    rec.tcp_flags & TCP_ACK != 0
}

/// The kernel's key of a forwarded flow, from a record's endpoints (the client is the local side).
pub fn wire_key(e: &Endpoints) -> WireFlowKey {
    WireFlowKey {
        family: e.family,
        client_port: e.local_port as u16,
        server_port: e.remote_port as u16,
        client_addr: e.local_addr,
        server_addr: e.remote_addr,
    }
}

/// `client:port -> server:port`, for logs.
pub fn wire_text(key: &WireFlowKey) -> String {
    let (client, server) = wire_tuple(key);
    format!("{} -> {}", SocketAddr::from(client), SocketAddr::from(server))
}

/// A forwarded flow's (client, server) addresses and ports.
pub fn wire_tuple(key: &WireFlowKey) -> ((IpAddr, u16), (IpAddr, u16)) {
    (
        (addr(key.family, key.client_addr), key.client_port),
        (addr(key.family, key.server_addr), key.server_port),
    )
}

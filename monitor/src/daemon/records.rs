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

/// A record that ends in a `len`-byte payload (`len` a u32 at `len_at`, the bytes at `data_at`): only the
/// bytes the kernel wrote are copied, the rest of the slot (what an older record left) is zero. A record
/// without payload (a SYN, an ACK, a FIN) then costs a few dozen bytes, not a kilobyte of cold memory.
fn read_with_payload<T: Copy>(bytes: &[u8], len_at: usize, data_at: usize) -> Option<Box<T>> {
    if bytes.len() < size_of::<T>() || len_at + 4 > data_at || data_at > size_of::<T>() {
        return None;
    }
    let len = u32::from_ne_bytes(bytes[len_at..len_at + 4].try_into().ok()?) as usize;
    let used = data_at.saturating_add(len).min(size_of::<T>());
    let mut boxed = Box::<T>::new_zeroed();
    // SAFETY: the record types are plain data (integers and byte arrays), for which all-zero bytes are a
    // value; `used` ≤ size_of::<T>() ≤ bytes.len(), so the copy stays inside both.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), boxed.as_mut_ptr().cast::<u8>(), used);
        Some(boxed.assume_init())
    }
}

pub fn decode(bytes: &[u8]) -> Option<Record> {
    let header: RecordHeader = read(bytes)?;
    Some(match header.kind {
        KIND_PROCESS => Record::Process(read(bytes)?),
        KIND_ESTABLISHED => Record::Established(read(bytes)?),
        KIND_FAILED => Record::Failed(read(bytes)?),
        KIND_CLOSED => Record::Closed(read(bytes)?),
        KIND_PAYLOAD => Record::Payload(read_with_payload(
            bytes,
            std::mem::offset_of!(PayloadRecord, len),
            std::mem::offset_of!(PayloadRecord, data),
        )?),
        KIND_VERDICT => Record::Verdict(Box::new(read(bytes)?)),
        KIND_WIRE => Record::Wire(read_with_payload(
            bytes,
            std::mem::offset_of!(WireRecord, len),
            std::mem::offset_of!(WireRecord, data),
        )?),
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

#[cfg(test)]
mod tests {
    use monitor_common::record::PAYLOAD_CHUNK;

    use super::*;

    /// A ring slot holding a wire record of `len` payload bytes, its unused tail left as 0xAA.
    fn slot(len: u32) -> Vec<u8> {
        let mut bytes = vec![0xAAu8; size_of::<WireRecord>()];
        let put =
            |bytes: &mut Vec<u8>, at: usize, v: u32| bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        put(&mut bytes, std::mem::offset_of!(RecordHeader, kind), KIND_WIRE);
        put(&mut bytes, std::mem::offset_of!(WireRecord, tcp_flags), 0x18);
        put(&mut bytes, std::mem::offset_of!(WireRecord, offset), 7);
        put(&mut bytes, std::mem::offset_of!(WireRecord, len), len);
        let data = std::mem::offset_of!(WireRecord, data);
        for i in 0..(len as usize).min(PAYLOAD_CHUNK) {
            bytes[data + i] = b'a' + (i % 26) as u8;
        }
        bytes
    }

    #[test]
    fn a_wire_record_keeps_its_payload_and_nothing_of_the_slot_behind_it() {
        let Some(Record::Wire(rec)) = decode(&slot(5)) else { panic!("a wire record") };
        assert_eq!((rec.tcp_flags, rec.offset, rec.len), (0x18, 7, 5));
        assert_eq!(&rec.data[..5], b"abcde");
        assert!(rec.data[5..].iter().all(|&b| b == 0), "the slot's stale bytes are not copied");
        let Some(Record::Wire(rec)) = decode(&slot(0)) else { panic!("a record without payload") };
        assert!(rec.data.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_wire_record_whose_length_passes_the_chunk_is_read_to_its_end_only() {
        let Some(Record::Wire(rec)) = decode(&slot(u32::MAX)) else { panic!("a wire record") };
        assert_eq!(rec.len, u32::MAX, "the length is reported as the kernel wrote it; readers clamp it");
        assert_eq!(rec.data[PAYLOAD_CHUNK - 1], b'a' + ((PAYLOAD_CHUNK - 1) % 26) as u8);
        assert!(decode(&slot(3)[..size_of::<WireRecord>() - 1]).is_none(), "a short slot is refused");
    }
}

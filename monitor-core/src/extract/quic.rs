//! QUIC: the SNI of the TLS ClientHello that a client's Initial packets carry (RFC 9000, RFC 9001).
//!
//! Initial packets are encrypted, but with keys anyone can derive from the Destination Connection ID
//! of the client's first Initial. [`QuicInspector`] is fed the client's datagrams of one flow, in the
//! order they were sent: it splits each datagram into its coalesced packets, opens the Initial ones,
//! walks their frames and puts the CRYPTO frames back in offset order (a post-quantum ClientHello
//! spans two or three Initial packets, and Chrome shuffles its CRYPTO frames on purpose). Once the
//! ClientHello is whole it goes to the TLS parser in [`super::tls`].

mod crypto;

pub use crypto::{LongPacketType, QuicVersion};

use crypto::InitialKeys;

use super::tls::{self, ClientHello};
use super::{Inspection, Step, TargetSource, WireProtocol};

/// CRYPTO stream bytes kept per flow: the same budget as for a ClientHello over TCP.
pub const CRYPTO_BUDGET: usize = tls::MAX_CLIENT_HELLO_LEN;
/// Client datagrams read per flow. A ClientHello spans a handful of Initial packets at most (a
/// post-quantum one two or three, each in its own datagram); datagrams past these are 0-RTT or 1-RTT
/// data, which cannot help.
pub const MAX_DATAGRAMS: usize = 16;
/// Sets of Initial keys kept per flow: one per Destination Connection ID the client's Initials used
/// to derive keys (the first, and one per Retry). More would only be an attack on our memory.
const MAX_KEY_SETS: usize = 4;
/// Long-header packets read per datagram. Clients coalesce a few (in the order Initial, 0-RTT,
/// Handshake, now and then two of a kind); the cap bounds the key derivations and decryptions a
/// crafted datagram of many tiny packets could ask for.
const MAX_PACKETS_PER_DATAGRAM: usize = 8;
/// RFC 9000 17.2: connection IDs are at most 20 bytes in the versions we read.
const MAX_CID_LEN: usize = 20;

/// Frame types allowed in Initial packets (RFC 9000 12.4), the only ones we need to step over.
const FRAME_PADDING: u64 = 0x00;
const FRAME_PING: u64 = 0x01;
const FRAME_ACK: u64 = 0x02;
const FRAME_ACK_ECN: u64 = 0x03;
const FRAME_CRYPTO: u64 = 0x06;
const FRAME_CONNECTION_CLOSE: u64 = 0x1c;
const FRAME_CONNECTION_CLOSE_APP: u64 = 0x1d;

/// Whether a UDP datagram starts with a long-header packet of a QUIC version whose Initial packets
/// we can read: how a flow's first datagram says it is QUIC worth inspecting. A datagram of an
/// unknown version, a short-header packet or anything else (DNS, gQUIC) answers false.
pub fn looks_like_quic(datagram: &[u8]) -> bool {
    match datagram {
        [first, v0, v1, v2, v3, ..] if first & 0x80 != 0 => {
            QuicVersion::from_wire(u32::from_be_bytes([*v0, *v1, *v2, *v3])).is_some()
        }
        _ => false,
    }
}

/// A client Initial as a client would protect it: long header of `version` with `dcid`, a 4-byte SCID,
/// no token, a 4-byte packet number, `frames` as the payload, keys from `keys_dcid` (the DCID of the
/// client's first Initial). For tests, and for the fuzzer, which could never forge the AEAD tag
/// itself and would not get past it to the frames.
#[cfg(any(test, fuzzing))]
pub fn seal_client_initial(
    version: QuicVersion,
    dcid: &[u8],
    keys_dcid: &[u8],
    packet_number: u64,
    frames: &[u8],
) -> Vec<u8> {
    let (wire_version, type_bits) = match version {
        QuicVersion::V1 => (0x0000_0001u32, 0x00),
        QuicVersion::V2 => (0x6b33_43cf, 0x10),
        QuicVersion::Draft29 => (0xff00_001d, 0x00),
        QuicVersion::Draft23 => (0xff00_0017, 0x00),
    };
    let mut header = vec![0xc0 | type_bits | 0x03];
    header.extend_from_slice(&wire_version.to_be_bytes());
    header.push(dcid.len().min(usize::from(u8::MAX)) as u8);
    header.extend_from_slice(&dcid[..dcid.len().min(usize::from(u8::MAX))]);
    header.extend_from_slice(&[4, 0xaa, 0xbb, 0xcc, 0xdd]);
    header.push(0);
    // A 4-byte varint length (prefix 0b10) fits any payload a datagram can carry.
    let length = (4 + frames.len() + crypto::TAG_LEN) as u32 & 0x3fff_ffff;
    header.extend_from_slice(&(length | 0x8000_0000).to_be_bytes());
    let pn_offset = header.len();
    header.extend_from_slice(&(packet_number as u32).to_be_bytes());
    InitialKeys::client(version, keys_dcid).seal(&header, pn_offset, packet_number, frames)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No datagram yet.
    Sniff,
    /// QUIC of a version we read; the ClientHello is not whole yet.
    Reading,
    /// Nothing more to learn.
    Done,
}

/// The Initial keys for one (version, Destination Connection ID).
#[derive(Debug, Clone)]
struct KeySet {
    version: QuicVersion,
    dcid: Vec<u8>,
    keys: InitialKeys,
}

/// Streaming, per-flow analyser of a QUIC client's datagrams. Never panics; holds at most
/// [`CRYPTO_BUDGET`] bytes of CRYPTO data and looks at [`MAX_DATAGRAMS`] datagrams.
#[derive(Debug, Clone)]
pub struct QuicInspector {
    inspection: Inspection,
    state: State,
    keys: Vec<KeySet>,
    /// The largest packet number opened so far (one number space for all client Initials).
    largest_pn: Option<u64>,
    crypto: CryptoStream,
    datagrams: usize,
    /// Initial packets opened, and of those the ones that carried CRYPTO data.
    initials_opened: usize,
    crypto_packets: usize,
}

impl Default for QuicInspector {
    fn default() -> Self {
        Self::new()
    }
}

impl QuicInspector {
    pub fn new() -> Self {
        QuicInspector {
            inspection: Inspection::default(),
            state: State::Sniff,
            keys: Vec::new(),
            largest_pn: None,
            crypto: CryptoStream::default(),
            datagrams: 0,
            initials_opened: 0,
            crypto_packets: 0,
        }
    }

    /// One UDP payload the client sent, whole and in the order sent (after splitting a GSO batch into
    /// its datagrams). A payload cut short never opens, since the AEAD tag covers the whole packet.
    /// The first datagram decides: if it does not look like QUIC (see [`looks_like_quic`]) the flow
    /// names nothing and the answer is final at once.
    pub fn client_datagram(&mut self, datagram: &[u8]) {
        if self.state == State::Done {
            return;
        }
        self.datagrams += 1;
        if self.state == State::Sniff {
            if !looks_like_quic(datagram) {
                self.state = State::Done;
                return;
            }
            self.state = State::Reading;
            self.inspection.protocol = Some(WireProtocol::Quic);
        }
        self.read_datagram(datagram);
        if self.state == State::Reading && self.datagrams >= MAX_DATAGRAMS {
            self.finish();
        }
    }

    /// No more datagrams will come (the flow ended, or the caller stops waiting): what a ClientHello
    /// cut short still carries is read, with `malformed` saying so. The answer is final afterwards.
    pub fn finish(&mut self) {
        if self.state == State::Reading {
            let stream = self.crypto.contiguous();
            if let Some(hello) = tls::salvage_client_hello_message(stream) {
                self.apply_client_hello(hello);
            }
            let why = if self.initials_opened == 0 {
                "no client Initial packet could be opened"
            } else if self.crypto_packets == 0 {
                "no CRYPTO data in the client's Initial packets"
            } else {
                "ClientHello is cut short"
            };
            self.note_malformed(why);
        }
        self.done();
    }

    pub fn inspection(&self) -> &Inspection {
        &self.inspection
    }

    /// True once more datagrams cannot change the answer: the ClientHello was read, the flow is not
    /// QUIC we read, the bytes are broken beyond use, or [`MAX_DATAGRAMS`] were read.
    pub fn is_complete(&self) -> bool {
        self.state == State::Done
    }

    /// Client Initial packets that carried CRYPTO data, up to the one that completed the ClientHello
    /// (what tshark counts as the Initials a ClientHello needed).
    pub fn crypto_packets(&self) -> usize {
        self.crypto_packets
    }

    fn done(&mut self) {
        self.state = State::Done;
        // Keys and stream are of no further use; flows can live long.
        self.keys = Vec::new();
        self.crypto = CryptoStream::default();
    }

    fn note_malformed(&mut self, why: &'static str) {
        self.inspection.malformed.get_or_insert(why);
    }

    /// Walks the packets coalesced in one datagram (RFC 9000 12.2).
    fn read_datagram(&mut self, datagram: &[u8]) {
        let mut rest = datagram;
        // A short-header packet runs to the end of the datagram, and a zero first byte is padding
        // after the last packet: neither can hold an Initial.
        for _ in 0..MAX_PACKETS_PER_DATAGRAM {
            let long_header = rest.first().is_some_and(|first| first & 0x80 != 0);
            if !long_header || self.state != State::Reading {
                break;
            }
            match self.read_packet(rest) {
                Ok(Some(next)) => rest = next,
                Ok(None) => break,
                Err(why) => {
                    self.note_malformed(why);
                    break;
                }
            }
        }
    }

    /// Reads the long-header packet at the start of `data`; returns what follows it in the
    /// datagram, or `None` when the rest of the datagram cannot be split further.
    fn read_packet<'d>(&mut self, data: &'d [u8]) -> Result<Option<&'d [u8]>, &'static str> {
        const CUT_SHORT: &str = "QUIC long header is cut short";
        let mut reader = Reader::new(data);
        let first = reader.u8().ok_or(CUT_SHORT)?;
        let wire_version = reader.u32().ok_or(CUT_SHORT)?;
        // Version Negotiation (version 0) and versions we do not know: their length field, if any, is
        // not ours to read, so nothing after them in the datagram can be found.
        let Some(version) = QuicVersion::from_wire(wire_version) else {
            return Ok(None);
        };
        let dcid_len = usize::from(reader.u8().ok_or(CUT_SHORT)?);
        if dcid_len > MAX_CID_LEN {
            return Err("QUIC connection ID longer than 20 bytes");
        }
        let dcid = reader.bytes(dcid_len).ok_or(CUT_SHORT)?;
        let scid_len = usize::from(reader.u8().ok_or(CUT_SHORT)?);
        if scid_len > MAX_CID_LEN {
            return Err("QUIC connection ID longer than 20 bytes");
        }
        reader.bytes(scid_len).ok_or(CUT_SHORT)?;
        let packet_type = version.long_packet_type(first);
        match packet_type {
            // A Retry has no length and ends the datagram; clients never send one.
            LongPacketType::Retry => return Ok(None),
            LongPacketType::Initial => {
                let token_len = reader.varint_len().ok_or(CUT_SHORT)?;
                reader.bytes(token_len).ok_or("QUIC Initial token runs past the datagram")?;
            }
            LongPacketType::ZeroRtt | LongPacketType::Handshake => {}
        }
        let length = reader.varint_len().ok_or(CUT_SHORT)?;
        let pn_offset = reader.position();
        let Some(end) = pn_offset.checked_add(length).filter(|&end| end <= data.len()) else {
            return Err("QUIC packet runs past the end of the datagram");
        };
        if packet_type == LongPacketType::Initial {
            self.open_initial(version, dcid, &data[..end], pn_offset);
        }
        Ok(Some(&data[end..]))
    }

    /// Decrypts one Initial packet and reads its frames.
    fn open_initial(&mut self, version: QuicVersion, dcid: &[u8], packet: &[u8], pn_offset: usize) {
        // An Initial's keys come from the DCID of the client's first Initial (or its first after a
        // Retry): try the packet's own DCID first, then the keys that opened earlier packets, since
        // later Initials address the connection ID the server chose but keep the first keys.
        let largest_pn = self.largest_pn;
        let own = match self.keys.iter().find(|set| set.version == version && set.dcid == dcid) {
            Some(set) => set.keys.open(packet, pn_offset, largest_pn),
            None => {
                let keys = InitialKeys::client(version, dcid);
                let opened = keys.open(packet, pn_offset, largest_pn);
                if opened.is_some() && self.keys.len() < MAX_KEY_SETS {
                    self.keys.push(KeySet { version, dcid: dcid.to_vec(), keys });
                }
                opened
            }
        };
        let opened = own.or_else(|| {
            self.keys
                .iter()
                .filter(|set| set.version == version && set.dcid != dcid)
                .find_map(|set| set.keys.open(packet, pn_offset, largest_pn))
        });
        let Some(opened) = opened else {
            self.note_malformed("QUIC Initial packet does not decrypt with the client's Initial keys");
            return;
        };
        self.initials_opened += 1;
        self.largest_pn =
            Some(self.largest_pn.map_or(opened.packet_number, |pn| pn.max(opened.packet_number)));
        let mut carried_crypto = false;
        let walked = self.read_frames(&opened.payload, &mut carried_crypto);
        if let Err(why) = walked {
            self.note_malformed(why);
        }
        if carried_crypto {
            self.crypto_packets += 1;
            // Checked per packet, so that packets coalesced after the one that completes the
            // ClientHello are not read at all.
            self.check_client_hello();
        }
    }

    /// Reads the frames of an opened Initial packet, noting whether any was CRYPTO. An error stops the
    /// walk: frames have no length of their own, so nothing after a bad one can be found.
    fn read_frames(&mut self, payload: &[u8], carried_crypto: &mut bool) -> Result<(), &'static str> {
        const CUT_SHORT: &str = "QUIC frame is cut short";
        let mut reader = Reader::new(payload);
        while !reader.is_empty() {
            match reader.varint().ok_or(CUT_SHORT)? {
                FRAME_PADDING => reader.skip_zeros(),
                FRAME_PING => {}
                kind @ (FRAME_ACK | FRAME_ACK_ECN) => {
                    // Largest Acknowledged, ACK Delay, ACK Range Count, First ACK Range: once one read
                    // fails, the ones after it fail too.
                    let [_, _, ranges, first_range] = [(); 4].map(|()| reader.varint());
                    let (Some(ranges), Some(_)) = (ranges, first_range) else {
                        return Err(CUT_SHORT);
                    };
                    // Each range is two varints of at least one byte each: a count larger than what is
                    // left is a lie, and the loop ends as soon as the payload does.
                    for _ in 0..ranges {
                        reader.varint().ok_or(CUT_SHORT)?;
                        reader.varint().ok_or(CUT_SHORT)?;
                    }
                    if kind == FRAME_ACK_ECN {
                        for _ in 0..3 {
                            reader.varint().ok_or(CUT_SHORT)?;
                        }
                    }
                }
                FRAME_CRYPTO => {
                    let offset = reader.varint().ok_or(CUT_SHORT)?;
                    let len = reader.varint_len().ok_or(CUT_SHORT)?;
                    let data = reader.bytes(len).ok_or(CUT_SHORT)?;
                    *carried_crypto = true;
                    if !self.crypto.insert(offset, data) {
                        self.note_malformed("CRYPTO data past the 64 KiB inspection budget");
                    }
                }
                kind @ (FRAME_CONNECTION_CLOSE | FRAME_CONNECTION_CLOSE_APP) => {
                    // Error code; the transport variant also names the frame type that caused it.
                    reader.varint().ok_or(CUT_SHORT)?;
                    if kind == FRAME_CONNECTION_CLOSE {
                        reader.varint().ok_or(CUT_SHORT)?;
                    }
                    let reason = reader.varint_len().ok_or(CUT_SHORT)?;
                    reader.bytes(reason).ok_or(CUT_SHORT)?;
                }
                _ => return Err("frame type not allowed in a QUIC Initial packet"),
            }
        }
        Ok(())
    }

    /// Parses the ClientHello once the CRYPTO stream holds all of it from offset 0.
    fn check_client_hello(&mut self) {
        match tls::parse_client_hello_message(self.crypto.contiguous()) {
            Step::Done(hello, _) => {
                self.apply_client_hello(hello);
                self.done();
            }
            Step::NeedMore(_) => {}
            Step::Malformed(why) => {
                self.note_malformed(why);
                self.done();
            }
        }
    }

    fn apply_client_hello(&mut self, hello: ClientHello) {
        let ClientHello { sni, ech, esni, malformed } = hello;
        let found = &mut self.inspection;
        found.ech |= ech || esni;
        if let Some(why) = malformed {
            found.malformed.get_or_insert(why);
        }
        if let Some(name) = &sni {
            found.source = Some(TargetSource::QuicSni);
            found.host = Some(name.clone());
        }
        found.sni = sni;
    }
}

/// The Initial CRYPTO stream, put back in offset order. Frames may come in any order, overlap and
/// leave gaps; the first bytes received for an offset are kept, as the server would keep them.
#[derive(Debug, Clone, Default)]
struct CryptoStream {
    data: Vec<u8>,
    /// One bit per byte of `data`: received.
    received: Vec<u64>,
    /// Bytes received without a gap from offset 0.
    contiguous: usize,
}

impl CryptoStream {
    /// Adds a CRYPTO frame's data; false when part of it lies past [`CRYPTO_BUDGET`] (and is dropped).
    fn insert(&mut self, offset: u64, bytes: &[u8]) -> bool {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let wanted_end = start.saturating_add(bytes.len());
        let end = wanted_end.min(CRYPTO_BUDGET);
        if start < end {
            if self.data.len() < end {
                self.data.resize(end, 0);
                self.received.resize(end.div_ceil(64), 0);
            }
            for (at, &byte) in (start..end).zip(bytes) {
                let (word, bit) = (at / 64, 1u64 << (at % 64));
                if self.received[word] & bit == 0 {
                    self.received[word] |= bit;
                    self.data[at] = byte;
                }
            }
            while self.contiguous < self.data.len()
                && self.received[self.contiguous / 64] & (1 << (self.contiguous % 64)) != 0
            {
                self.contiguous += 1;
            }
        }
        wanted_end <= CRYPTO_BUDGET
    }

    fn contiguous(&self) -> &[u8] {
        &self.data[..self.contiguous]
    }
}

/// A cursor over packet bytes. Reads past the end return `None` and leave the cursor at the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn position(&self) -> usize {
        self.pos
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        match self.pos.checked_add(n).and_then(|end| self.buf.get(self.pos..end)) {
            Some(bytes) => {
                self.pos += n;
                Some(bytes)
            }
            None => {
                self.pos = self.buf.len();
                None
            }
        }
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A variable-length integer (RFC 9000 16): the top two bits of the first byte give its length.
    fn varint(&mut self) -> Option<u64> {
        let first = self.u8()?;
        let len = 1usize << (first >> 6);
        let rest = self.bytes(len - 1)?;
        Some(rest.iter().fold(u64::from(first & 0x3f), |value, &b| value << 8 | u64::from(b)))
    }

    /// A varint that counts bytes to come; one larger than the address space cannot be satisfied and
    /// reads as `usize::MAX`, which the following `bytes` call refuses.
    fn varint_len(&mut self) -> Option<usize> {
        self.varint().map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn skip_zeros(&mut self) {
        let zeros = self.buf[self.pos.min(self.buf.len())..].iter().take_while(|&&b| b == 0).count();
        self.pos += zeros;
    }
}

#[cfg(test)]
mod tests;

//! Initial packet protection (RFC 9001 5.2 and 5.4; RFC 9369 3.3 for version 2): keys derived from
//! the client's Destination Connection ID, header protection removal and AES-128-GCM decryption.
//!
//! Everything here is public knowledge by design: Initial protection only keeps off-path middleboxes
//! from ossifying the protocol, so anyone who sees the first client datagram can read it, as we do.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;

/// AES-128-GCM's tag, which ends every protected payload.
pub(super) const TAG_LEN: usize = 16;
/// Bytes of ciphertext sampled for the header protection mask.
const SAMPLE_LEN: usize = 16;
/// The sample starts this far after the start of the packet number field, as if the packet number
/// were 4 bytes long (RFC 9001 5.4.2).
const SAMPLE_OFFSET: usize = 4;

/// A QUIC version whose Initial packets we can read: each has its own salt and labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicVersion {
    /// RFC 9000, and drafts 33 and 34, which already used its salt.
    V1,
    /// RFC 9369.
    V2,
    /// Drafts 29 to 32, still sent by older clients and lab tools.
    Draft29,
    /// Drafts 23 to 28 (lab tools and old captures).
    Draft23,
}

impl QuicVersion {
    pub fn from_wire(version: u32) -> Option<Self> {
        match version {
            0x0000_0001 | 0xff00_0021 | 0xff00_0022 => Some(QuicVersion::V1),
            0x6b33_43cf => Some(QuicVersion::V2),
            0xff00_001d..=0xff00_0020 => Some(QuicVersion::Draft29),
            0xff00_0017..=0xff00_001c => Some(QuicVersion::Draft23),
            _ => None,
        }
    }

    fn initial_salt(self) -> &'static [u8; 20] {
        match self {
            QuicVersion::V1 => &[
                0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c,
                0xad, 0xcc, 0xbb, 0x7f, 0x0a,
            ],
            QuicVersion::V2 => &[
                0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d,
                0xcb, 0xf9, 0xbd, 0x2e, 0xd9,
            ],
            QuicVersion::Draft29 => &[
                0xaf, 0xbf, 0xec, 0x28, 0x99, 0x93, 0xd2, 0x4c, 0x9e, 0x97, 0x86, 0xf1, 0x9c, 0x61, 0x11,
                0xe0, 0x43, 0x90, 0xa8, 0x99,
            ],
            QuicVersion::Draft23 => &[
                0xc3, 0xee, 0xf7, 0x12, 0xc7, 0x2e, 0xbb, 0x5a, 0x11, 0xa7, 0xd2, 0x43, 0x2b, 0xb4, 0x63,
                0x65, 0xbe, 0xf9, 0xf5, 0x02,
            ],
        }
    }

    /// The labels for the packet protection key, IV and header protection key.
    fn labels(self) -> [&'static str; 3] {
        match self {
            QuicVersion::V1 | QuicVersion::Draft29 | QuicVersion::Draft23 => {
                ["quic key", "quic iv", "quic hp"]
            }
            QuicVersion::V2 => ["quicv2 key", "quicv2 iv", "quicv2 hp"],
        }
    }

    /// What the long-header type bits (0x30 of the first byte) say. Version 2 shuffled the type codes
    /// so that middleboxes cannot hard-code version 1's.
    pub fn long_packet_type(self, first_byte: u8) -> LongPacketType {
        let bits = (first_byte >> 4) & 0x03;
        let bits = if self == QuicVersion::V2 { bits.wrapping_sub(1) & 0x03 } else { bits };
        match bits {
            0 => LongPacketType::Initial,
            1 => LongPacketType::ZeroRtt,
            2 => LongPacketType::Handshake,
            _ => LongPacketType::Retry,
        }
    }
}

/// What a long-header packet is, by its type bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongPacketType {
    Initial,
    ZeroRtt,
    Handshake,
    Retry,
}

/// The client's Initial keys for one Destination Connection ID.
#[derive(Clone)]
pub(super) struct InitialKeys {
    packet: Aes128Gcm,
    iv: [u8; 12],
    header: Aes128,
}

impl std::fmt::Debug for InitialKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Public keys by design, but a key dump in a log line helps no one.
        f.write_str("InitialKeys")
    }
}

/// A packet whose protection was removed.
pub(super) struct Opened {
    /// The full (reconstructed) packet number.
    pub packet_number: u64,
    pub payload: Vec<u8>,
}

impl InitialKeys {
    /// The client's keys: initial_secret = HKDF-Extract(salt, DCID), then "client in", then the
    /// version's key, IV and header-protection labels.
    pub fn client(version: QuicVersion, dcid: &[u8]) -> Self {
        let (key, iv, hp) = client_key_material(version, dcid);
        InitialKeys {
            packet: Aes128Gcm::new(GenericArray::from_slice(&key)),
            iv,
            header: Aes128::new(GenericArray::from_slice(&hp)),
        }
    }

    /// Removes header protection and decrypts the packet `packet[..end]` whose packet number field
    /// starts at `pn_offset`. `largest_pn` is the largest packet number opened so far (to expand the
    /// truncated number). `None` when the sample does not fit or the tag does not verify: wrong keys,
    /// damage, or not a client Initial at all.
    pub fn open(&self, packet: &[u8], pn_offset: usize, largest_pn: Option<u64>) -> Option<Opened> {
        let sample = packet.get(pn_offset + SAMPLE_OFFSET..pn_offset + SAMPLE_OFFSET + SAMPLE_LEN)?;
        let mut mask = GenericArray::clone_from_slice(sample);
        self.header.encrypt_block(&mut mask);
        let first = *packet.first()? ^ (mask[0] & 0x0f);
        let pn_len = usize::from(first & 0x03) + 1;
        let payload_start = pn_offset + pn_len;
        if packet.len() < payload_start + TAG_LEN {
            return None;
        }
        let mut header = packet[..payload_start].to_vec();
        header[0] = first;
        let mut truncated = 0u64;
        for (i, byte) in header[pn_offset..].iter_mut().enumerate() {
            *byte ^= mask[1 + i];
            truncated = truncated << 8 | u64::from(*byte);
        }
        let packet_number = decode_packet_number(largest_pn, truncated, pn_len);
        let tag_at = packet.len() - TAG_LEN;
        let mut payload = packet[payload_start..tag_at].to_vec();
        self.packet
            .decrypt_in_place_detached(
                Nonce::from_slice(&self.nonce(packet_number)),
                &header,
                &mut payload,
                Tag::from_slice(&packet[tag_at..]),
            )
            .ok()?;
        Some(Opened { packet_number, payload })
    }

    /// The IV with the packet number XORed into its low bytes (RFC 9001 5.3).
    fn nonce(&self, packet_number: u64) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, p) in nonce[4..].iter_mut().zip(packet_number.to_be_bytes()) {
            *n ^= p;
        }
        nonce
    }

    /// Protects a packet as a client would: `header` is the whole unprotected header, ending with the
    /// packet number field at `pn_offset`. For building test packets.
    #[cfg(any(test, fuzzing))]
    pub fn seal(&self, header: &[u8], pn_offset: usize, packet_number: u64, payload: &[u8]) -> Vec<u8> {
        let mut body = payload.to_vec();
        let tag = self
            .packet
            .encrypt_in_place_detached(Nonce::from_slice(&self.nonce(packet_number)), header, &mut body)
            .expect("test payloads are far below the AES-GCM limit");
        let mut packet = [header, &body, &tag].concat();
        let sample = &packet[pn_offset + SAMPLE_OFFSET..pn_offset + SAMPLE_OFFSET + SAMPLE_LEN];
        let mut mask = GenericArray::clone_from_slice(sample);
        self.header.encrypt_block(&mut mask);
        let pn_len = usize::from(packet[0] & 0x03) + 1;
        packet[0] ^= mask[0] & 0x0f;
        for i in 0..pn_len {
            packet[pn_offset + i] ^= mask[1 + i];
        }
        packet
    }
}

/// The client's packet protection key, IV and header protection key.
fn client_key_material(version: QuicVersion, dcid: &[u8]) -> ([u8; 16], [u8; 12], [u8; 16]) {
    let (_, initial) = Hkdf::<Sha256>::extract(Some(version.initial_salt()), dcid);
    let mut client_secret = [0u8; 32];
    expand_label(&initial, "client in", &mut client_secret);
    let client = Hkdf::<Sha256>::from_prk(&client_secret).expect("a 32-byte secret is a valid SHA-256 PRK");
    let [key_label, iv_label, hp_label] = version.labels();
    let (mut key, mut iv, mut hp) = ([0u8; 16], [0u8; 12], [0u8; 16]);
    expand_label(&client, key_label, &mut key);
    expand_label(&client, iv_label, &mut iv);
    expand_label(&client, hp_label, &mut hp);
    (key, iv, hp)
}

/// HKDF-Expand-Label (RFC 8446 7.1) with an empty context, as QUIC uses it.
fn expand_label(secret: &Hkdf<Sha256>, label: &str, out: &mut [u8]) {
    const PREFIX: &[u8] = b"tls13 ";
    let mut info = Vec::with_capacity(4 + PREFIX.len() + label.len());
    // Output lengths here are 12 to 32 bytes and labels a few characters: the casts cannot truncate.
    info.extend_from_slice(&(out.len() as u16).to_be_bytes());
    info.push((PREFIX.len() + label.len()) as u8);
    info.extend_from_slice(PREFIX);
    info.extend_from_slice(label.as_bytes());
    info.push(0);
    secret.expand(&info, out).expect("32 bytes or fewer is a valid HKDF-SHA256 output length");
}

/// The full packet number from its truncated encoding (RFC 9000 A.3).
pub(super) fn decode_packet_number(largest_pn: Option<u64>, truncated: u64, pn_len: usize) -> u64 {
    let expected = largest_pn.map_or(0, |pn| pn + 1);
    let window = 1u64 << (8 * pn_len);
    let half = window / 2;
    let candidate = (expected & !(window - 1)) | truncated;
    if candidate + half <= expected && candidate < (1 << 62) - window {
        candidate + window
    } else if candidate > expected + half && candidate >= window {
        candidate - window
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn client_keys_match_the_rfc_vectors() {
        let dcid = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
        // RFC 9001 A.1.
        let (key, iv, hp) = client_key_material(QuicVersion::V1, &dcid);
        assert_eq!(hex(&key), "1f369613dd76d5467730efcbe3b1a22d");
        assert_eq!(hex(&iv), "fa044b2f42a3fd3b46fb255c");
        assert_eq!(hex(&hp), "9f50449e04a0e810283a1e9933adedd2");
        // RFC 9369 A.1.
        let (key, iv, hp) = client_key_material(QuicVersion::V2, &dcid);
        assert_eq!(hex(&key), "8b1a0bc121284290a29e0971b5cd045d");
        assert_eq!(hex(&iv), "91f73e2351d8fa91660e909f");
        assert_eq!(hex(&hp), "45b95e15235d6f45a6b19cbcb0294ba9");
    }

    #[test]
    fn packet_number_expansion_follows_rfc_9000_appendix_a3() {
        // The RFC's own example: largest 0xa82f30ea, 2-byte truncated 0x9b32.
        assert_eq!(decode_packet_number(Some(0xa82f_30ea), 0x9b32, 2), 0xa82f_9b32);
        assert_eq!(decode_packet_number(None, 0, 1), 0);
        assert_eq!(decode_packet_number(Some(2), 1, 1), 1);
        assert_eq!(decode_packet_number(Some(250), 3, 1), 259);
    }

    #[test]
    fn versions_and_packet_types() {
        assert_eq!(QuicVersion::from_wire(1), Some(QuicVersion::V1));
        assert_eq!(QuicVersion::from_wire(0x6b33_43cf), Some(QuicVersion::V2));
        assert_eq!(QuicVersion::from_wire(0xff00_001d), Some(QuicVersion::Draft29));
        assert_eq!(QuicVersion::from_wire(0xff00_001c), Some(QuicVersion::Draft23));
        assert_eq!(QuicVersion::from_wire(0x5130_3530), None); // gQUIC "Q050"
        assert_eq!(QuicVersion::V1.long_packet_type(0xc3), LongPacketType::Initial);
        assert_eq!(QuicVersion::V2.long_packet_type(0xd3), LongPacketType::Initial);
        assert_eq!(QuicVersion::V2.long_packet_type(0xc3), LongPacketType::Retry);
        assert_eq!(QuicVersion::V1.long_packet_type(0xd3), LongPacketType::ZeroRtt);
        assert_eq!(QuicVersion::V2.long_packet_type(0xe3), LongPacketType::ZeroRtt);
        assert_eq!(QuicVersion::V2.long_packet_type(0xf3), LongPacketType::Handshake);
        assert_eq!(QuicVersion::V1.long_packet_type(0xf3), LongPacketType::Retry);
    }
}

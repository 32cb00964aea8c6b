//! TLS ClientHello: the server_name (SNI) and whether Encrypted Client Hello is offered.
//!
//! The handshake message is reassembled from as many TLS records as the client used before it is
//! parsed (a post-quantum ClientHello is often bigger than one record's worth of a TCP segment, and a
//! client may split it into several records on purpose). The fixed part and the server_name list are
//! parsed with `tls-parser`; the extension list is walked one (type, length) frame at a time so that
//! an extension `tls-parser` would be strict about cannot hide the server_name that follows it.

use tls_parser::{
    SNIType, TlsExtension, TlsExtensionType, TlsRecordType, parse_tls_extension_sni_content,
    parse_tls_extension_unknown, parse_tls_handshake_client_hello, parse_tls_record_header,
};

use super::Step;
use super::host::normalize_host;

/// TLS record header: type, version, length.
const RECORD_HEADER_LEN: usize = 5;
/// Handshake header: type, 24-bit length.
const HANDSHAKE_HEADER_LEN: usize = 4;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// RFC 8446 5.1 allows 2^14 bytes of plaintext per record; compressed or padded peers go a little
/// further, and the extra slack costs nothing here.
const MAX_RECORD_LEN: usize = (1 << 14) + 2048;
/// Any ClientHello we will look at fits in the inspection budget.
pub const MAX_CLIENT_HELLO_LEN: usize = 64 * 1024;

const EXT_SERVER_NAME: u16 = 0;
/// RFC 9849 encrypted_client_hello.
const EXT_ECH: u16 = 0xfe0d;
/// The draft ESNI extension Cloudflare and Firefox deployed before ECH.
const EXT_ESNI: u16 = 0xffce;
/// ECHClientHello.type: 0 = outer (sent on the wire), 1 = inner (only inside the encrypted payload).
const ECH_OUTER: u8 = 0;

/// What a ClientHello says about its destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The first host_name entry of server_name, normalised.
    pub sni: Option<String>,
    /// An `encrypted_client_hello` extension of the outer type is present. Chrome sends a GREASE one
    /// that looks the same on the wire as a real one, so this means "ECH offered (maybe GREASE)"; in
    /// both cases `sni` is the outer name, which for real ECH is the provider's public name.
    pub ech: bool,
    /// The pre-standard ESNI extension (0xffce) is present: the real name is encrypted.
    pub esni: bool,
    /// Why part of the message could not be parsed, while the rest could (a corrupt extension after
    /// server_name, a server_name that is not a host name, a ClientHello cut short).
    pub malformed: Option<&'static str>,
}

/// Whether `buf` starts a TLS handshake record: `None` while fewer than 3 bytes are there.
pub fn looks_like_handshake_record(buf: &[u8]) -> Option<bool> {
    match buf {
        [] | [0x16] | [0x16, 0x03] => None,
        [0x16, 0x03, minor, ..] => Some(*minor <= 0x04),
        _ => Some(false),
    }
}

/// Whether `buf` starts an SSL 2.0-format CLIENT-HELLO (2-byte length with the high bit set, message
/// type 1, version 2.0 or 3.x). It has no extensions and so never names a server.
pub fn looks_like_sslv2_client_hello(buf: &[u8]) -> Option<bool> {
    match buf {
        [first, ..] if first & 0x80 == 0 => Some(false),
        [_, _, 0x01, 0x00 | 0x03, ..] => Some(true),
        [_, _, _, _, ..] => Some(false),
        _ => None,
    }
}

/// Handshake bytes gathered from consecutive handshake records.
struct Gathered {
    handshake: Vec<u8>,
    /// The last record runs past the end of the bytes.
    truncated: bool,
}

/// Parses the ClientHello at the start of `buf`. `NeedMore(n)` says how many bytes in total must be
/// there before trying again.
pub fn parse_client_hello(buf: &[u8]) -> Step<ClientHello> {
    ClientHelloReader::default().read(buf)
}

/// Gathers a ClientHello's handshake bytes record by record across calls, so that a stream growing a
/// little at a time (a client may send one tiny record per write) is walked once, not once per call.
#[derive(Debug, Clone, Default)]
pub struct ClientHelloReader {
    /// Stream bytes of the records already gathered.
    pos: usize,
    handshake: Vec<u8>,
}

impl ClientHelloReader {
    /// Reads on in `buf`, which must be the same stream as in earlier calls, grown at the end.
    pub fn read(&mut self, buf: &[u8]) -> Step<ClientHello> {
        loop {
            let record = match record_at(buf, self.pos) {
                Ok(Some(record)) => record,
                Ok(None) => return Step::NeedMore(self.pos + RECORD_HEADER_LEN),
                Err(why) => return Step::Malformed(why),
            };
            let end = self.pos + RECORD_HEADER_LEN + record;
            if buf.len() < end {
                return Step::NeedMore(end);
            }
            self.handshake.extend_from_slice(&buf[self.pos + RECORD_HEADER_LEN..end]);
            self.pos = end;
            if self.handshake.len() < HANDSHAKE_HEADER_LEN {
                continue;
            }
            let body_len = match handshake_body_len(&self.handshake) {
                Ok(len) => len,
                Err(why) => return Step::Malformed(why),
            };
            if self.handshake.len() >= HANDSHAKE_HEADER_LEN + body_len {
                let body = &self.handshake[HANDSHAKE_HEADER_LEN..HANDSHAKE_HEADER_LEN + body_len];
                return match parse_body(body, false) {
                    Some(hello) => Step::Done(hello, self.pos),
                    None => Step::Malformed("ClientHello fixed fields are corrupt"),
                };
            }
        }
    }
}

/// Reads what a ClientHello cut short (the stream ended, or a segment was never captured) still
/// carries: often the whole server_name, which comes early in most clients' extension order.
pub fn salvage_client_hello(buf: &[u8]) -> Option<ClientHello> {
    let gathered = gather_truncated(buf)?;
    let mut hello = salvage_client_hello_message(&gathered.handshake)?;
    if gathered.truncated {
        hello.malformed = Some("ClientHello is cut short");
    }
    Some(hello)
}

/// Parses a bare ClientHello handshake message (type, 24-bit length, body) at the start of
/// `message`, as QUIC carries it in CRYPTO frames, without TLS records around it.
pub fn parse_client_hello_message(message: &[u8]) -> Step<ClientHello> {
    if message.len() < HANDSHAKE_HEADER_LEN {
        return Step::NeedMore(HANDSHAKE_HEADER_LEN);
    }
    let end = match handshake_body_len(message) {
        Ok(len) => HANDSHAKE_HEADER_LEN + len,
        Err(why) => return Step::Malformed(why),
    };
    let Some(body) = message.get(HANDSHAKE_HEADER_LEN..end) else {
        return Step::NeedMore(end);
    };
    match parse_body(body, false) {
        Some(hello) => Step::Done(hello, end),
        None => Step::Malformed("ClientHello fixed fields are corrupt"),
    }
}

/// [`salvage_client_hello`] for a bare handshake message that was cut short.
pub fn salvage_client_hello_message(message: &[u8]) -> Option<ClientHello> {
    let body_len = handshake_body_len(message).ok()?;
    let available = message.len().saturating_sub(HANDSHAKE_HEADER_LEN).min(body_len);
    let body = message.get(HANDSHAKE_HEADER_LEN..HANDSHAKE_HEADER_LEN + available)?;
    let mut hello = parse_body(body, true)?;
    if available < body_len {
        hello.malformed = Some("ClientHello is cut short");
    }
    Some(hello)
}

fn gather_truncated(buf: &[u8]) -> Option<Gathered> {
    let mut gathered = Gathered { handshake: Vec::new(), truncated: false };
    let mut pos = 0;
    while let Ok(Some(record)) = record_at(buf, pos) {
        let start = pos + RECORD_HEADER_LEN;
        let end = (start + record).min(buf.len());
        gathered.handshake.extend_from_slice(&buf[start..end]);
        gathered.truncated = end < start + record;
        pos = end;
        if gathered.truncated {
            break;
        }
    }
    (gathered.handshake.len() >= HANDSHAKE_HEADER_LEN).then_some(gathered)
}

/// The length of the handshake record at `pos`: `Ok(None)` when its header is not all there yet.
fn record_at(buf: &[u8], pos: usize) -> Result<Option<usize>, &'static str> {
    let Some(header) = buf.get(pos..pos + RECORD_HEADER_LEN) else {
        return Ok(None);
    };
    let Ok((_, header)) = parse_tls_record_header(header) else {
        return Ok(None);
    };
    if header.record_type != TlsRecordType::Handshake {
        return Err(if pos == 0 {
            "not a TLS handshake record"
        } else {
            "a non-handshake TLS record interrupts the ClientHello"
        });
    }
    if header.version.0 >> 8 != 3 {
        return Err("TLS record version is not 3.x");
    }
    match usize::from(header.len) {
        0 => Err("empty TLS handshake record"),
        len if len > MAX_RECORD_LEN => Err("TLS record longer than the protocol allows"),
        len => Ok(Some(len)),
    }
}

fn handshake_body_len(handshake: &[u8]) -> Result<usize, &'static str> {
    let [kind, a, b, c, ..] = *handshake else {
        return Err("handshake header is cut short");
    };
    if kind != HANDSHAKE_CLIENT_HELLO {
        return Err("first handshake message is not a ClientHello");
    }
    let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    if len > MAX_CLIENT_HELLO_LEN {
        return Err("ClientHello longer than the inspection budget");
    }
    Ok(len)
}

/// Parses the ClientHello body. With `truncated`, an extension list that runs past the end of `body`
/// is walked as far as it goes instead of being corrupt.
fn parse_body(body: &[u8], truncated: bool) -> Option<ClientHello> {
    let (rest, fixed) = parse_tls_handshake_client_hello(body).ok()?;
    let mut hello = ClientHello::default();
    match fixed.ext {
        Some(extensions) => {
            walk_extensions(extensions, false, &mut hello);
            if !rest.is_empty() && hello.malformed.is_none() {
                hello.malformed = Some("bytes after the ClientHello extensions");
            }
        }
        // tls-parser gives no extension block when its length runs past the body: either a cut-short
        // message (walk what is there) or a corrupt length.
        None if rest.len() >= 2 => {
            if truncated {
                walk_extensions(&rest[2..], true, &mut hello);
            } else {
                hello.malformed = Some("ClientHello extensions length runs past the message");
            }
        }
        // No extensions at all (TLS 1.0-era clients): no SNI, nothing wrong.
        None => {}
    }
    Some(hello)
}

fn walk_extensions(mut extensions: &[u8], truncated: bool, hello: &mut ClientHello) {
    while !extensions.is_empty() {
        let Ok((rest, TlsExtension::Unknown(TlsExtensionType(kind), data))) =
            parse_tls_extension_unknown(extensions)
        else {
            if !truncated {
                hello.malformed = Some("corrupt ClientHello extension list");
            }
            return;
        };
        extensions = rest;
        match kind {
            EXT_SERVER_NAME if hello.sni.is_none() => match server_name(data) {
                Ok(name) => hello.sni = name,
                Err(why) => hello.malformed = Some(why),
            },
            EXT_ECH => hello.ech |= data.first() == Some(&ECH_OUTER),
            EXT_ESNI => hello.esni = true,
            _ => {}
        }
    }
}

/// The first host_name of a server_name extension; `Ok(None)` for an empty list (legal, names nothing).
fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let Ok((_, TlsExtension::SNI(names))) = parse_tls_extension_sni_content(data) else {
        return Err("corrupt server_name extension");
    };
    let Some((_, raw)) = names.iter().find(|(kind, _)| *kind == SNIType::HostName) else {
        return Ok(None);
    };
    std::str::from_utf8(raw).ok().and_then(normalize_host).map(Some).ok_or("server_name is not a host name")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a ClientHello handshake message (no record header) with the given extensions.
    pub(crate) fn client_hello_message(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x11; 32]);
        body.push(32);
        body.extend_from_slice(&[0x22; 32]);
        body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02, 0x01, 0x00]);
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut message = vec![HANDSHAKE_CLIENT_HELLO];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        message
    }

    pub(crate) fn sni_extension(name: &str) -> (u16, Vec<u8>) {
        let mut data = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        data.push(0);
        data.extend_from_slice(&(name.len() as u16).to_be_bytes());
        data.extend_from_slice(name.as_bytes());
        (EXT_SERVER_NAME, data)
    }

    /// Wraps a handshake message into records of at most `max` bytes each.
    pub(crate) fn records(message: &[u8], max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(max) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn done(step: Step<ClientHello>) -> (ClientHello, usize) {
        match step {
            Step::Done(hello, n) => (hello, n),
            Step::NeedMore(n) => panic!("expected a ClientHello, got NeedMore({n})"),
            Step::Malformed(why) => panic!("expected a ClientHello, got Malformed({why})"),
        }
    }

    /// The ClientHello `openssl s_client -servername x.example` (OpenSSL 3.0) sent to a local listener.
    const OPENSSL_HELLO: &str = include_str!("../../tests/data/openssl_client_hello.hex");

    pub(crate) fn openssl_hello() -> Vec<u8> {
        super::super::tests::unhex(OPENSSL_HELLO)
    }

    #[test]
    fn real_openssl_hello_names_its_server() {
        let bytes = openssl_hello();
        let (hello, n) = done(parse_client_hello(&bytes));
        assert_eq!(n, bytes.len());
        assert_eq!(hello.sni.as_deref(), Some("x.example"));
        assert!(!hello.ech && hello.malformed.is_none());
    }

    #[test]
    fn extensions_in_any_order() {
        let grease = (0x0a0a, vec![]);
        let alpn = (16, b"\x00\x03\x02h2".to_vec());
        let first = client_hello_message(&[sni_extension("A.Example."), alpn.clone(), grease.clone()]);
        let last = client_hello_message(&[grease, alpn, (21, vec![0; 300]), sni_extension("a.example")]);
        for message in [first, last] {
            let (hello, _) = done(parse_client_hello(&records(&message, 1 << 14)));
            assert_eq!(hello.sni.as_deref(), Some("a.example"));
        }
    }

    #[test]
    fn hello_split_over_several_records_is_reassembled() {
        // A 2 KB post-quantum-sized key share, split into records of 100 bytes.
        let message = client_hello_message(&[(51, vec![7; 1216 + 36]), sni_extension("pq.example")]);
        let stream = records(&message, 100);
        let (hello, n) = done(parse_client_hello(&stream));
        assert_eq!((hello.sni.as_deref(), n), (Some("pq.example"), stream.len()));
        // Every prefix asks for more, and never for fewer bytes than it already has.
        for cut in 0..stream.len() {
            match parse_client_hello(&stream[..cut]) {
                Step::NeedMore(need) => assert!(need > cut, "cut {cut} need {need}"),
                _ => panic!("prefix of {cut} bytes did not ask for more"),
            }
        }
    }

    #[test]
    fn big_hello_over_4k() {
        let message = client_hello_message(&[(21, vec![0; 6000]), sni_extension("big.example")]);
        let (hello, _) = done(parse_client_hello(&records(&message, 1 << 14)));
        assert_eq!(hello.sni.as_deref(), Some("big.example"));
    }

    #[test]
    fn ech_outer_and_esni_are_flagged() {
        let message = client_hello_message(&[sni_extension("cloudflare-ech.com"), (EXT_ECH, vec![0, 0, 1])]);
        let (hello, _) = done(parse_client_hello(&records(&message, 1 << 14)));
        assert!(hello.ech);
        assert_eq!(hello.sni.as_deref(), Some("cloudflare-ech.com"));
        let inner_type = client_hello_message(&[(EXT_ECH, vec![1])]);
        assert!(!done(parse_client_hello(&records(&inner_type, 1 << 14))).0.ech);
        let esni = client_hello_message(&[(EXT_ESNI, vec![0; 10])]);
        assert!(done(parse_client_hello(&records(&esni, 1 << 14))).0.esni);
    }

    #[test]
    fn corrupt_extension_after_sni_keeps_the_sni_and_says_why() {
        let mut message =
            client_hello_message(&[sni_extension("e.crashlytics.com"), (0x47e3, vec![1, 2, 3])]);
        // Make the second extension's length run past the end of the list.
        let len_at = message.len() - 5;
        message[len_at..len_at + 2].copy_from_slice(&0x4fc6u16.to_be_bytes());
        let (hello, _) = done(parse_client_hello(&records(&message, 1 << 14)));
        assert_eq!(hello.sni.as_deref(), Some("e.crashlytics.com"));
        assert_eq!(hello.malformed, Some("corrupt ClientHello extension list"));
    }

    #[test]
    fn invalid_names_are_not_reported() {
        let message = client_hello_message(&[sni_extension("bad name/")]);
        let (hello, _) = done(parse_client_hello(&records(&message, 1 << 14)));
        assert_eq!((hello.sni, hello.malformed), (None, Some("server_name is not a host name")));
    }

    #[test]
    fn bogus_records_are_malformed() {
        // suricata http-connect-tls: a handshake record header of length 0.
        assert!(matches!(parse_client_hello(&[0x16, 3, 0, 0, 0, 0, 0, 0]), Step::Malformed(_)));
        // A ServerHello where a ClientHello should be.
        assert!(matches!(parse_client_hello(&[0x16, 3, 3, 0, 4, 2, 0, 0, 0]), Step::Malformed(_)));
        assert!(matches!(parse_client_hello(&[0x17, 3, 3, 0, 1, 0]), Step::Malformed(_)));
    }

    #[test]
    fn truncated_hello_gives_up_its_sni_on_salvage() {
        let message = client_hello_message(&[sni_extension("r1.googlevideo.com"), (51, vec![9; 1200])]);
        let stream = records(&message, 1 << 14);
        let cut = &stream[..300];
        assert!(matches!(parse_client_hello(cut), Step::NeedMore(_)));
        let hello = salvage_client_hello(cut).expect("salvage");
        assert_eq!(hello.sni.as_deref(), Some("r1.googlevideo.com"));
        assert_eq!(hello.malformed, Some("ClientHello is cut short"));
        assert_eq!(salvage_client_hello(&stream[..20]), None);
    }

    #[test]
    fn sslv2_hello_is_recognised() {
        assert_eq!(looks_like_sslv2_client_hello(&[0x80, 0x2e, 0x01, 0x03, 0x01]), Some(true));
        assert_eq!(looks_like_sslv2_client_hello(&[0x16, 3, 1]), Some(false));
        assert_eq!(looks_like_sslv2_client_hello(&[0xdd, 0, 0, 0, 0x20]), Some(false));
    }
}

//! HAProxy PROXY protocol headers, which a load balancer puts in front of the client's own first bytes.
//! They carry addresses, never the target name, so they are only skipped.

use super::Step;

const V1_PREFIX: &[u8] = b"PROXY ";
/// The spec's bound on a v1 line, CRLF included.
const V1_MAX_LEN: usize = 107;
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;

/// Whether `buf` starts a PROXY header (v1 or v2): `None` while a prefix of one.
pub fn looks_like_proxy_header(buf: &[u8]) -> Option<bool> {
    let matches_prefix = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    if buf.starts_with(V1_PREFIX) || buf.starts_with(V2_SIGNATURE) {
        Some(true)
    } else if matches_prefix(V1_PREFIX) || matches_prefix(V2_SIGNATURE) {
        None
    } else {
        Some(false)
    }
}

/// The length of the PROXY header at the start of `buf`.
pub fn parse_proxy_header(buf: &[u8]) -> Step<()> {
    if buf.starts_with(V2_SIGNATURE) {
        let Some(len) = buf.get(14..16) else {
            return Step::NeedMore(V2_FIXED_LEN);
        };
        if buf[12] >> 4 != 2 {
            return Step::Malformed("PROXY v2 header with an unknown version");
        }
        let total = V2_FIXED_LEN + usize::from(u16::from_be_bytes([len[0], len[1]]));
        return if buf.len() < total { Step::NeedMore(total) } else { Step::Done((), total) };
    }
    match buf.windows(2).take(V1_MAX_LEN - 1).position(|w| w == b"\r\n") {
        Some(at) => Step::Done((), at + 2),
        None if buf.len() >= V1_MAX_LEN => Step::Malformed("PROXY v1 line longer than 107 bytes"),
        None => Step::NeedMore(buf.len() + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_line_is_skipped() {
        // ndpi haproxy.pcap.
        let line = b"PROXY TCP4 11.111.11.111 222.222.222.22 52176 443\r\n\x16\x03\x01";
        assert_eq!(looks_like_proxy_header(&line[..3]), None);
        assert_eq!(looks_like_proxy_header(line), Some(true));
        assert!(matches!(parse_proxy_header(line), Step::Done((), 51)));
        assert!(matches!(parse_proxy_header(&line[..20]), Step::NeedMore(_)));
        assert!(matches!(parse_proxy_header(&[b'P'; 200]), Step::Malformed(_)));
        assert_eq!(looks_like_proxy_header(b"POST /"), Some(false));
    }

    #[test]
    fn v2_header_is_skipped() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x11, 0, 12]);
        header.extend_from_slice(&[1; 12]);
        header.push(0x16);
        assert!(matches!(parse_proxy_header(&header), Step::Done((), 28)));
        assert!(matches!(parse_proxy_header(&header[..14]), Step::NeedMore(16)));
    }
}

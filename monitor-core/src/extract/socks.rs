//! SOCKS4, SOCKS4a and SOCKS5 messages, client side and server side.
//!
//! The live path sees only what the client sends, so the client messages are parsed without knowing the
//! server's choices: after a SOCKS5 greeting, a first byte of 1 is the username/password
//! sub-negotiation (RFC 1929) and 5 is the request (or a repeated greeting, told apart by shape).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Step;
use super::host::request_host;

pub const SOCKS4_VERSION: u8 = 4;
pub const SOCKS5_VERSION: u8 = 5;
/// RFC 1929 sub-negotiation version.
const USERPASS_VERSION: u8 = 1;
const METHOD_USERPASS: u8 = 2;
const CMD_CONNECT: u8 = 1;
const ATYP_IPV4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_IPV6: u8 = 4;
/// SOCKS4 user ids and SOCKS4a names end with a NUL; RFC-less as it is, nothing real sends more than this.
const MAX_SOCKS4_FIELD: usize = 255;

/// Where a SOCKS request asks to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocksTarget {
    Ip(IpAddr),
    /// A normalised name; `Err(())` when the bytes are not a host name.
    Name(Result<String, ()>),
}

/// A SOCKS CONNECT/BIND/UDP ASSOCIATE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksRequest {
    pub version: u8,
    /// 1 CONNECT, 2 BIND, 3 UDP ASSOCIATE (SOCKS5 only).
    pub command: u8,
    pub target: SocksTarget,
    pub port: u16,
}

impl SocksRequest {
    pub fn is_connect(&self) -> bool {
        self.command == CMD_CONNECT
    }
}

/// One client message after the SOCKS5 greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socks5ClientMessage {
    /// The greeting again (some clients repeat it).
    Greeting {
        offers_userpass: bool,
    },
    /// RFC 1929 username/password; the credentials are not kept.
    UserPass,
    Request(SocksRequest),
}

/// Whether `buf` starts a SOCKS5 greeting (`05 n methods[n]`): `None` until the methods are all there.
pub fn looks_like_socks5_greeting(buf: &[u8]) -> Option<bool> {
    match buf {
        [] | [SOCKS5_VERSION] => None,
        [SOCKS5_VERSION, n, methods @ ..] => {
            let n = usize::from(*n);
            if n == 0 {
                return Some(false);
            }
            // Methods are 0..=9 (IANA) or private 0x80..=0xfe; 0xff means "none acceptable" and only
            // a server sends it.
            let plausible = |m: &u8| *m <= 0x09 || (0x80..=0xfe).contains(m);
            if !methods.iter().take(n).all(plausible) {
                return Some(false);
            }
            (methods.len() >= n).then_some(true)
        }
        _ => Some(false),
    }
}

/// Parses the greeting at the start of `buf`: whether it offers username/password.
pub fn parse_socks5_greeting(buf: &[u8]) -> Step<bool> {
    match looks_like_socks5_greeting(buf) {
        // Each method byte that comes may show the bytes are no greeting, so promise nothing past
        // the next byte: asking for all the methods at once would make the answer depend on how
        // the bytes were cut into pieces.
        None => Step::NeedMore(buf.len() + 1),
        Some(false) => Step::Malformed("not a SOCKS5 greeting"),
        Some(true) => {
            let n = usize::from(buf[1]);
            Step::Done(buf[2..2 + n].contains(&METHOD_USERPASS), 2 + n)
        }
    }
}

/// Parses the client message that follows the greeting.
pub fn parse_socks5_client_message(buf: &[u8]) -> Step<Socks5ClientMessage> {
    match buf {
        [] => Step::NeedMore(1),
        [USERPASS_VERSION, ..] => parse_userpass(buf),
        [SOCKS5_VERSION, cmd, ..] if buf.len() < 4 && (1..=3).contains(cmd) => Step::NeedMore(4),
        [SOCKS5_VERSION, cmd, 0, ATYP_IPV4 | ATYP_DOMAIN | ATYP_IPV6, ..] if (1..=3).contains(cmd) => {
            parse_socks5_request(buf).map(Socks5ClientMessage::Request)
        }
        [SOCKS5_VERSION, ..] => parse_socks5_greeting(buf)
            .map(|offers_userpass| Socks5ClientMessage::Greeting { offers_userpass }),
        _ => Step::Malformed("unexpected bytes after the SOCKS5 greeting"),
    }
}

fn parse_userpass(buf: &[u8]) -> Step<Socks5ClientMessage> {
    let Some(&user_len) = buf.get(1) else {
        return Step::NeedMore(2);
    };
    let pass_len_at = 2 + usize::from(user_len);
    let Some(&pass_len) = buf.get(pass_len_at) else {
        return Step::NeedMore(pass_len_at + 1);
    };
    let end = pass_len_at + 1 + usize::from(pass_len);
    if buf.len() < end { Step::NeedMore(end) } else { Step::Done(Socks5ClientMessage::UserPass, end) }
}

/// `05 cmd 00 atyp addr port`.
pub fn parse_socks5_request(buf: &[u8]) -> Step<SocksRequest> {
    let [SOCKS5_VERSION, command, 0, atyp, ..] = *buf else {
        return if buf.len() < 4 { Step::NeedMore(4) } else { Step::Malformed("not a SOCKS5 request") };
    };
    let (target, addr_end) = match socks5_address(atyp, &buf[4..]) {
        Step::Done(target, n) => (target, 4 + n),
        Step::NeedMore(n) => return Step::NeedMore(4 + n),
        Step::Malformed(why) => return Step::Malformed(why),
    };
    let Some(port) = buf.get(addr_end..addr_end + 2) else {
        return Step::NeedMore(addr_end + 2);
    };
    let port = u16::from_be_bytes([port[0], port[1]]);
    Step::Done(SocksRequest { version: SOCKS5_VERSION, command, target, port }, addr_end + 2)
}

/// A SOCKS5 address (after ATYP); `Done` counts the address bytes.
fn socks5_address(atyp: u8, buf: &[u8]) -> Step<SocksTarget> {
    match atyp {
        ATYP_IPV4 => match buf.get(..4) {
            Some(a) => Step::Done(SocksTarget::Ip(Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()), 4),
            None => Step::NeedMore(4),
        },
        ATYP_IPV6 => match buf.get(..16).and_then(|a| <[u8; 16]>::try_from(a).ok()) {
            Some(a) => Step::Done(SocksTarget::Ip(Ipv6Addr::from(a).into()), 16),
            None => Step::NeedMore(16),
        },
        ATYP_DOMAIN => {
            let Some(&len) = buf.first() else {
                return Step::NeedMore(1);
            };
            let len = usize::from(len);
            if len == 0 {
                return Step::Malformed("SOCKS5 domain of length 0");
            }
            match buf.get(1..1 + len) {
                // The server resolves the name as a C string (microsocks does): it ends at its first NUL.
                Some(name) => {
                    let name = name.split(|&b| b == 0).next().unwrap_or_default();
                    Step::Done(SocksTarget::Name(name_from_bytes(name)), 1 + len)
                }
                None => Step::NeedMore(1 + len),
            }
        }
        _ => Step::Malformed("unknown SOCKS5 address type"),
    }
}

/// Whether `buf` starts a SOCKS4 request (`04 cmd port ip`): decided from the first two bytes.
pub fn looks_like_socks4_request(buf: &[u8]) -> Option<bool> {
    match buf {
        [] | [SOCKS4_VERSION] => None,
        [SOCKS4_VERSION, 1 | 2, ..] => Some(true),
        _ => Some(false),
    }
}

/// `04 cmd port(2) ip(4) userid NUL`, and for SOCKS4a (ip 0.0.0.x, x != 0) `domain NUL` after it.
pub fn parse_socks4_request(buf: &[u8]) -> Step<SocksRequest> {
    const FIXED: usize = 8;
    if buf.len() < FIXED {
        return Step::NeedMore(FIXED + 1);
    }
    let command = buf[1];
    let port = u16::from_be_bytes([buf[2], buf[3]]);
    let ip = Ipv4Addr::new(buf[4], buf[5], buf[6], buf[7]);
    let user_end = match nul_terminated(&buf[FIXED..]) {
        Step::Done(_, n) => FIXED + n,
        Step::NeedMore(n) => return Step::NeedMore(FIXED + n),
        Step::Malformed(why) => return Step::Malformed(why),
    };
    // SOCKS4a marks "the name follows" with the otherwise invalid address 0.0.0.x, x != 0.
    let is_4a = matches!(ip.octets(), [0, 0, 0, last] if last != 0);
    if !is_4a {
        let target = SocksTarget::Ip(ip.into());
        return Step::Done(SocksRequest { version: SOCKS4_VERSION, command, target, port }, user_end);
    }
    match nul_terminated(&buf[user_end..]) {
        Step::Done(name, n) => {
            let target = SocksTarget::Name(name_from_bytes(name));
            Step::Done(SocksRequest { version: SOCKS4_VERSION, command, target, port }, user_end + n)
        }
        Step::NeedMore(n) => Step::NeedMore(user_end + n),
        Step::Malformed(why) => Step::Malformed(why),
    }
}

/// The bytes before a NUL; `Done` counts the NUL too.
fn nul_terminated(buf: &[u8]) -> Step<&[u8]> {
    match buf.iter().take(MAX_SOCKS4_FIELD + 1).position(|&b| b == 0) {
        Some(at) => Step::Done(&buf[..at], at + 1),
        None if buf.len() > MAX_SOCKS4_FIELD => Step::Malformed("SOCKS4 field without its NUL terminator"),
        None => Step::NeedMore(buf.len() + 1),
    }
}

fn name_from_bytes(raw: &[u8]) -> Result<String, ()> {
    std::str::from_utf8(raw).ok().and_then(request_host).ok_or(())
}

/// What a SOCKS server's bytes say, read in step with the client's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocksServerMessage {
    /// SOCKS5 method selection.
    Method(u8),
    /// RFC 1929 status (0 = success).
    UserPassStatus(u8),
    /// The reply to the request: SOCKS5 REP (0 = succeeded) or SOCKS4 CD (90 = granted).
    Reply(u8),
}

/// The next SOCKS5 server message, given whether the method selection was already read and which
/// method it chose.
pub fn parse_socks5_server_message(
    buf: &[u8],
    chosen_method: Option<u8>,
    auth_done: bool,
) -> Step<SocksServerMessage> {
    match (chosen_method, buf) {
        (_, []) => Step::NeedMore(1),
        (None, [SOCKS5_VERSION, method, ..]) => Step::Done(SocksServerMessage::Method(*method), 2),
        (None, [SOCKS5_VERSION]) => Step::NeedMore(2),
        (Some(METHOD_USERPASS), [USERPASS_VERSION, status, ..]) if !auth_done => {
            Step::Done(SocksServerMessage::UserPassStatus(*status), 2)
        }
        (Some(METHOD_USERPASS), [USERPASS_VERSION]) if !auth_done => Step::NeedMore(2),
        (Some(_), [SOCKS5_VERSION]) => Step::NeedMore(2),
        (Some(_), [SOCKS5_VERSION, rep, ..]) => {
            // Same layout as a request: reuse its parser for the bound address to find the end.
            let mut as_request = buf.to_vec();
            as_request[1] = CMD_CONNECT;
            match parse_socks5_request(&as_request) {
                Step::Done(_, n) => Step::Done(SocksServerMessage::Reply(*rep), n),
                Step::NeedMore(n) => Step::NeedMore(n),
                Step::Malformed(why) => Step::Malformed(why),
            }
        }
        _ => Step::Malformed("server bytes are not a SOCKS5 reply"),
    }
}

/// A SOCKS4 reply: `VN(0) CD port(2) ip(4)`. Some servers put 4 in VN.
pub fn parse_socks4_reply(buf: &[u8]) -> Step<SocksServerMessage> {
    match buf {
        [0 | SOCKS4_VERSION, code, _, _, _, _, _, _, ..] => Step::Done(SocksServerMessage::Reply(*code), 8),
        [0 | SOCKS4_VERSION, ..] | [] => Step::NeedMore(8),
        _ => Step::Malformed("server bytes are not a SOCKS4 reply"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done<T: std::fmt::Debug>(step: Step<T>) -> (T, usize) {
        match step {
            Step::Done(v, n) => (v, n),
            Step::NeedMore(n) => panic!("NeedMore({n})"),
            Step::Malformed(why) => panic!("Malformed({why})"),
        }
    }

    #[test]
    fn socks5_domain_request() {
        // zeek socks-with-ssl: CONNECT www.google.com:443.
        let mut request = vec![5, 1, 0, 3, 14];
        request.extend_from_slice(b"www.google.com");
        request.extend_from_slice(&443u16.to_be_bytes());
        let (req, n) = done(parse_socks5_request(&request));
        assert_eq!(n, request.len());
        assert_eq!(req.target, SocksTarget::Name(Ok("www.google.com".into())));
        assert_eq!((req.port, req.is_connect()), (443, true));
        for cut in 0..request.len() {
            assert!(
                matches!(parse_socks5_request(&request[..cut]), Step::NeedMore(n) if n > cut),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn socks5_ip_requests() {
        let (req, _) = done(parse_socks5_request(&[5, 1, 0, 1, 192, 168, 0, 2, 0, 22]));
        assert_eq!(req.target, SocksTarget::Ip("192.168.0.2".parse().unwrap()));
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[1, 187]);
        let (req, _) = done(parse_socks5_request(&v6));
        assert_eq!((req.target, req.port), (SocksTarget::Ip("2001:db8::1".parse().unwrap()), 443));
    }

    /// Found by fuzz/flow_inspector: `05 2a` asked for all 42 methods at once, but the bytes that
    /// came next already showed it was no greeting; fed whole the answer was "not a SOCKS5 greeting",
    /// fed in pieces the inspector waited for bytes that never came and said "cut short".
    #[test]
    fn greeting_never_promises_past_a_method_that_can_break_it() {
        let bytes = [5, 0x2a, 5, 3, 0x62, 3];
        for cut in 0..bytes.len() {
            match parse_socks5_greeting(&bytes[..cut]) {
                Step::NeedMore(n) => assert_eq!(n, cut + 1, "cut {cut}"),
                other => assert_eq!(cut, 5, "cut {cut}: {other:?}"),
            }
        }
        assert_eq!(parse_socks5_greeting(&bytes), Step::Malformed("not a SOCKS5 greeting"));
        let client = b"\x05\x03\x00\x00\x04\x01\x03bob\x05alice\x05\x2a\x05\x03\x62\x03";
        let mut whole = crate::extract::FlowInspector::new();
        whole.client_bytes(client);
        whole.finish();
        let mut pieces = crate::extract::FlowInspector::new();
        for byte in client.chunks(1) {
            pieces.client_bytes(byte);
        }
        pieces.finish();
        assert_eq!(pieces.inspection(), whole.inspection());
        assert_eq!(whole.inspection().malformed, Some("not a SOCKS5 greeting"));
    }

    #[test]
    fn client_messages_after_the_greeting() {
        // zeek socks-auth: greeting offering 0, 3, 2; user "bob", pass "alice"; then the request.
        assert_eq!(done(parse_socks5_greeting(&[5, 3, 0, 3, 2])), (true, 5));
        let auth = b"\x01\x03bob\x05alice";
        assert_eq!(done(parse_socks5_client_message(auth)), (Socks5ClientMessage::UserPass, auth.len()));
        let (msg, _) = done(parse_socks5_client_message(&[5, 1, 0, 1, 192, 168, 0, 2, 0, 22]));
        assert!(matches!(msg, Socks5ClientMessage::Request(_)));
        // arkime socks5-smtp-503 repeats the greeting `05 01 00`.
        let (msg, n) = done(parse_socks5_client_message(&[5, 1, 0, 5, 1, 0, 3]));
        assert!(matches!(msg, Socks5ClientMessage::Greeting { offers_userpass: false }), "{msg:?}");
        assert_eq!(n, 3);
    }

    #[test]
    fn socks4_and_socks4a() {
        let mut plain = vec![4, 1, 0, 80, 93, 184, 216, 119];
        plain.extend_from_slice(b"user\0");
        let (req, n) = done(parse_socks4_request(&plain));
        assert_eq!((req.target, n), (SocksTarget::Ip("93.184.216.119".parse().unwrap()), plain.len()));
        let mut named = vec![4, 1, 1, 187, 0, 0, 0, 1, 0];
        named.extend_from_slice(b"Login.Live.com\0");
        let (req, n) = done(parse_socks4_request(&named));
        assert_eq!(
            (req.target, req.port, n),
            (SocksTarget::Name(Ok("login.live.com".into())), 443, named.len())
        );
        for cut in 0..named.len() {
            assert!(matches!(parse_socks4_request(&named[..cut]), Step::NeedMore(_)), "cut {cut}");
        }
        let runaway = [&[4u8, 1, 0, 80, 1, 2, 3, 4][..], &[b'a'; 300]].concat();
        assert!(matches!(parse_socks4_request(&runaway), Step::Malformed(_)));
    }

    #[test]
    fn sniffing() {
        assert_eq!(looks_like_socks5_greeting(&[5]), None);
        assert_eq!(looks_like_socks5_greeting(&[5, 2, 0]), None);
        assert_eq!(looks_like_socks5_greeting(&[5, 2, 0, 2]), Some(true));
        assert_eq!(looks_like_socks5_greeting(&[5, 1, 0x41]), Some(false));
        assert_eq!(looks_like_socks5_greeting(&[5, 0]), Some(false));
        assert_eq!(looks_like_socks4_request(&[4, 1]), Some(true));
        assert_eq!(looks_like_socks4_request(&[4, 9]), Some(false));
    }

    #[test]
    fn server_replies() {
        assert_eq!(
            done(parse_socks5_server_message(&[5, 2], None, false)),
            (SocksServerMessage::Method(2), 2)
        );
        assert_eq!(
            done(parse_socks5_server_message(&[1, 0], Some(2), false)),
            (SocksServerMessage::UserPassStatus(0), 2)
        );
        let reply = [5, 0, 0, 1, 10, 0, 0, 1, 0xd1, 0xcd];
        assert_eq!(
            done(parse_socks5_server_message(&reply, Some(0), false)),
            (SocksServerMessage::Reply(0), 10)
        );
        assert_eq!(done(parse_socks4_reply(&[0, 90, 0, 0, 0, 0, 0, 0])), (SocksServerMessage::Reply(90), 8));
        assert!(matches!(parse_socks4_reply(b"HTTP/1.1"), Step::Malformed(_)));
    }
}

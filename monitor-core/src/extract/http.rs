//! HTTP/1.x request and response heads, parsed with `httparse`: the CONNECT authority, the
//! absolute-form URI of a proxy request, the Host header, and the status of a proxy's reply.

use super::Step;
use super::host::{request_host, split_authority};

/// Header lines accepted in one head. Browsers send about 20; more than this is not a client we
/// can reason about, and the bound keeps the parse cheap.
const MAX_HEADERS: usize = 128;

/// Methods that mark the first bytes of a stream as an HTTP request. A known-method list (rather than
/// "any token and a space") keeps SMTP's `EHLO x` or a PROXY-protocol line from being taken for
/// broken HTTP. `PRI` (the HTTP/2 preface) is left out: its authority is in HPACK, not in a header line.
const METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "SEARCH",
    "REPORT",
    "MKCALENDAR",
    "ACL",
    "MERGE",
    "CHECKOUT",
    "CHECKIN",
    "MKACTIVITY",
    "VERSION-CONTROL",
    "UPDATE",
    "LABEL",
    "PURGE",
    "LINK",
    "UNLINK",
    "BIND",
    "UNBIND",
    "REBIND",
    "ORDERPATCH",
    "MKWORKSPACE",
    "BASELINE-CONTROL",
];

/// The longest method in [`METHODS`], plus one for the space.
const MAX_METHOD_PREFIX: usize = 17;

/// What the request-target names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestTarget {
    /// `CONNECT host:port`.
    Authority { host: String, port: Option<u16> },
    /// `GET http://host[:port]/path`: port is the explicit one or the scheme's default.
    Absolute { host: String, port: Option<u16>, url: String },
    /// `/path`, `*`, or anything else that names no host.
    Origin { path: String },
}

/// The `Host` header, split and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHeader {
    pub host: String,
    pub port: Option<u16>,
}

/// One parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: RequestTarget,
    /// `None` when absent; `Some(Err(()))` when present but not a host name.
    pub host_header: Option<Result<HostHeader, ()>>,
    /// What was irregular about the head although it could be read.
    pub quirk: Option<&'static str>,
}

impl RequestHead {
    pub fn is_connect(&self) -> bool {
        self.method.eq_ignore_ascii_case("CONNECT")
    }
}

/// A proxy's reply head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Body bytes that follow the head, when the head says so (`Content-Length`); `None` when the
    /// body length is not known from the head (chunked, or read until close).
    pub body_len: Option<usize>,
}

/// Whether `buf` starts like an HTTP request: `Some(true)`/`Some(false)` once decided, `None` while the
/// method token is still incomplete. The method is matched in any case and may be followed by a space
/// or a tab: squid takes `get\thttp://...`.
pub fn looks_like_request(buf: &[u8]) -> Option<bool> {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let buf = &buf[start..];
    match buf.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(end) => Some(std::str::from_utf8(&buf[..end]).is_ok_and(is_method)),
        None => {
            let token_so_far = buf.iter().all(|&b| b.is_ascii_alphabetic() || b == b'-');
            if token_so_far && buf.len() < MAX_METHOD_PREFIX { None } else { Some(false) }
        }
    }
}

fn is_method(token: &str) -> bool {
    METHODS.iter().any(|m| m.eq_ignore_ascii_case(token))
}

/// `buf` with the tabs up to the end of its request line (`line_end`) turned into spaces, for httparse, which
/// takes only spaces between the method, the target and the version.
fn request_line_spaced(buf: &[u8], line_end: usize) -> Vec<u8> {
    let mut spaced = buf.to_vec();
    for b in &mut spaced[..line_end] {
        if *b == b'\t' {
            *b = b' ';
        }
    }
    spaced
}

/// Parses one request head from the start of `buf`. `Done` carries the head's length in bytes.
pub fn parse_request_head(buf: &[u8]) -> Step<RequestHead> {
    let line_start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    let line_end = buf[line_start..].iter().position(|&b| b == b'\n').map_or(buf.len(), |n| line_start + n);
    let spaced;
    let buf = if buf[..line_end].contains(&b'\t') {
        spaced = request_line_spaced(buf, line_end);
        &spaced[..]
    } else {
        buf
    };
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = httparse::ParserConfig::default()
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .ignore_invalid_headers_in_requests(true)
        .parse_request(&mut request, buf);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Step::NeedMore(buf.len() + 1),
        Err(httparse::Error::TooManyHeaders) => {
            return Step::Malformed("HTTP request head has too many header lines");
        }
        Err(error @ (httparse::Error::Version | httparse::Error::Token)) => {
            return lenient_connect(buf).unwrap_or(Step::Malformed(match error {
                httparse::Error::Version => "HTTP request line has no valid HTTP/1.x version",
                _ => "HTTP request line is not method, target and version",
            }));
        }
        Err(_) => return Step::Malformed("HTTP request head has invalid header lines"),
    };
    // A complete parse always fills method and path.
    let (Some(method), Some(path)) = (request.method, request.path) else {
        return Step::Malformed("HTTP request line is incomplete");
    };
    let host_header = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| parse_host_header(h.value));
    let target = if method.eq_ignore_ascii_case("CONNECT") {
        match authority_host(path) {
            Some((host, port)) => RequestTarget::Authority { host, port },
            None => return Step::Malformed("CONNECT request-target is not host:port"),
        }
    } else if let Some(absolute) = parse_absolute_uri(path) {
        match absolute {
            Some(target) => target,
            None => return Step::Malformed("absolute-form request-target has no valid host"),
        }
    } else {
        RequestTarget::Origin { path: path.to_string() }
    };
    Step::Done(RequestHead { method: method.to_string(), target, host_header, quirk: None }, head_len)
}

/// A CONNECT whose request line has extra words (`CONNECT host:25 / HTTP/1.0`, sent by spam tools and
/// accepted by proxies): the authority is still the second word. `None` when `buf` is not such a CONNECT.
/// The words are split by spaces and tabs only, no other control byte is in the line, and it still ends in
/// an HTTP/1.x version: a line without one (`CONNECT \rhost x`) is refused by squid (400) and opens no
/// tunnel, so it names nothing.
fn lenient_connect(buf: &[u8]) -> Option<Step<RequestHead>> {
    let line_end = buf.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&buf[..line_end]).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return None;
    }
    let mut words = line.split([' ', '\t']).filter(|w| !w.is_empty());
    let method = words.next().filter(|m| m.eq_ignore_ascii_case("CONNECT"))?;
    let (host, port) = authority_host(words.next()?)?;
    if !matches!(words.next_back(), Some("HTTP/1.0" | "HTTP/1.1")) {
        return None;
    }
    // The head ends at an empty line, as httparse (and the kernel) end it: `\n\n` or `\n\r\n`.
    let head_len = [&b"\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|end| buf.windows(end.len()).position(|w| w == *end).map(|at| at + end.len()))
        .min();
    let Some(head_len) = head_len else {
        return Some(Step::NeedMore(buf.len() + 1));
    };
    let target = RequestTarget::Authority { host, port };
    let head = RequestHead {
        method: method.to_string(),
        target,
        host_header: None,
        quirk: Some("CONNECT request line has extra words"),
    };
    Some(Step::Done(head, head_len))
}

/// Parses one response head (a proxy's reply to CONNECT).
pub fn parse_response_head(buf: &[u8]) -> Step<ResponseHead> {
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let Some(status) = response.code else {
                return Step::Malformed("HTTP response has no status code");
            };
            let header = |name: &str| response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name));
            let chunked = header("transfer-encoding").is_some();
            let content_length = header("content-length")
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            let body_len = match (status, chunked, content_length) {
                // 1xx, 204 and 304 never carry a body; a 2xx reply to CONNECT starts the tunnel.
                (100..=199 | 204 | 304 | 200..=299, _, _) => Some(0),
                (_, false, Some(n)) => Some(n),
                _ => None,
            };
            Step::Done(ResponseHead { status, body_len }, n)
        }
        Ok(httparse::Status::Partial) => Step::NeedMore(buf.len() + 1),
        Err(_) => Step::Malformed("proxy reply is not an HTTP response"),
    }
}

fn parse_host_header(value: &[u8]) -> Result<HostHeader, ()> {
    let text = std::str::from_utf8(value).map_err(|_| ())?.trim();
    let (host, port) = authority_host(text).ok_or(())?;
    Ok(HostHeader { host, port })
}

/// The host and port of an authority (CONNECT target, absolute URI, Host value). Userinfo
/// (`user:pass@`) is not part of the target: squid and tinyproxy drop it (up to the last `@`, as squid
/// reads it), and it must not end up in events. "Userinfo" with a blank, a control byte or a URI delimiter
/// (`/`, `?`, `#`, which end an authority) in it is none (`Host: a / @b` is words, not an authority): such an
/// authority names nothing.
fn authority_host(authority: &str) -> Option<(String, Option<u16>)> {
    let not_userinfo = |b: u8| matches!(b, b' ' | b'/' | b'?' | b'#') || b.is_ascii_control();
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, _)) if userinfo.bytes().any(not_userinfo) => return None,
        Some((_, host)) => host,
        None => authority,
    };
    let (host, port) = split_authority(authority)?;
    Some((request_host(host)?, port))
}

/// `None` when `target` is not an absolute URI; `Some(None)` when it is one with no usable host.
fn parse_absolute_uri(target: &str) -> Option<Option<RequestTarget>> {
    let (scheme, rest) = target.split_once("://")?;
    // The kernel reads schemes up to this long; no proxy knows a longer one.
    let scheme_ok = scheme.len() <= monitor_common::scan::SCHEME_MAX as usize
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((host, explicit_port)) = authority_host(authority) else {
        return Some(None);
    };
    let default_port = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        "ftp" => Some(21),
        _ => None,
    };
    let host_in_url = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    let port_in_url = explicit_port.map(|p| format!(":{p}")).unwrap_or_default();
    let path = if path.is_empty() { "/" } else { path };
    let url = format!("{scheme}://{host_in_url}{port_in_url}{path}");
    Some(Some(RequestTarget::Absolute { host, port: explicit_port.or(default_port), url }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done<T>(step: Step<T>) -> (T, usize) {
        match step {
            Step::Done(v, n) => (v, n),
            Step::NeedMore(_) => panic!("expected a complete parse, got NeedMore"),
            Step::Malformed(why) => panic!("expected a complete parse, got Malformed({why})"),
        }
    }

    #[test]
    fn connect_names_the_authority() {
        let head = b"CONNECT apache.org:443 HTTP/1.1\r\nHost: apache.org:443\r\n\r\n";
        let (req, n) = done(parse_request_head(head));
        assert_eq!(n, head.len());
        assert!(req.is_connect());
        assert_eq!(req.target, RequestTarget::Authority { host: "apache.org".into(), port: Some(443) });
        let (req, _) = done(parse_request_head(b"CONNECT [2001:db8::1]:8443 HTTP/1.0\r\n\r\n"));
        assert_eq!(req.target, RequestTarget::Authority { host: "2001:db8::1".into(), port: Some(8443) });
    }

    #[test]
    fn connect_without_authority_is_malformed() {
        // suricata bug-7851: `CONNECT / HTTP/1.1`.
        assert!(matches!(parse_request_head(b"CONNECT / HTTP/1.1\r\nHost:\r\n\r\n"), Step::Malformed(_)));
    }

    #[test]
    fn absolute_form_names_host_port_and_url() {
        let (req, _) = done(parse_request_head(b"GET HTTP://Bro.org/ HTTP/1.1\r\nHost: bro.org\r\n\r\n"));
        assert_eq!(
            req.target,
            RequestTarget::Absolute { host: "bro.org".into(), port: Some(80), url: "http://bro.org/".into() }
        );
        let (req, _) = done(parse_request_head(b"GET https://u:p@x.example:8443?q HTTP/1.1\r\n\r\n"));
        assert_eq!(
            req.target,
            RequestTarget::Absolute {
                host: "x.example".into(),
                port: Some(8443),
                url: "https://x.example:8443?q".into()
            }
        );
        assert!(matches!(parse_request_head(b"GET http://bad host/ HTTP/1.1\r\n\r\n"), Step::Malformed(_)));
    }

    #[test]
    fn connect_with_extra_words_still_names_its_authority() {
        // zeek connect-with-smtp: the request line of a spam tool.
        let head = b"CONNECT mailin03.sul.t-online.de:25 / HTTP/1.0\r\nMozilla 4.0 (compatible)\r\n\r\n";
        let (req, n) = done(parse_request_head(head));
        assert_eq!(n, head.len());
        assert_eq!(
            req.target,
            RequestTarget::Authority { host: "mailin03.sul.t-online.de".into(), port: Some(25) }
        );
        assert!(req.quirk.is_some());
        assert!(matches!(parse_request_head(&head[..50]), Step::NeedMore(_)));
        assert!(matches!(parse_request_head(b"GET a b c\r\n\r\n"), Step::Malformed(_)));
        // Found by fuzzing: no version, or a CR among the words, is no CONNECT a proxy takes.
        for line in [
            &b"CONNECT \rq4 m\n\n"[..],
            b"CONNECT q4:443 m\r\n\r\n",
            b"CONNECT q4:443 /\rHTTP/1.1\r\n\r\n",
            b"CONNECT q4:443 \x0c/ HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request_head(line), Step::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        // The head ends at the first empty line, `\n\r\n` included.
        let head = b"CONNECT q4:443 / HTTP/1.1\r\nX: y\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(done(parse_request_head(head)).1, head.len() - 18);
        let tab = b"CONNECT\tq4:443\t/\tHTTP/1.1\r\n\r\n";
        assert_eq!(
            done(parse_request_head(tab)).0.target,
            RequestTarget::Authority { host: "q4".into(), port: Some(443) }
        );
    }

    #[test]
    fn host_header_with_port_and_lf_only_lines() {
        let (req, _) = done(parse_request_head(b"GET / HTTP/1.1\nHost: Toni.LAN:31337\n\n"));
        assert_eq!(req.target, RequestTarget::Origin { path: "/".into() });
        assert_eq!(req.host_header, Some(Ok(HostHeader { host: "toni.lan".into(), port: Some(31337) })));
        let (req, _) = done(parse_request_head(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"));
        assert_eq!(req.host_header, Some(Err(())));
        // Found by fuzzing: words before an `@` are no userinfo; real userinfo is still dropped.
        for head in
            [&b"GET / HTTP/1.1\r\nHost: gET / @t\r\n\r\n"[..], b"GET / HTTP/1.1\r\nHost: a//b:8@t\r\n\r\n"]
        {
            assert_eq!(done(parse_request_head(head)).0.host_header, Some(Err(())));
        }
        let (req, _) = done(parse_request_head(b"GET / HTTP/1.1\r\nHost: u:p@t.example\r\n\r\n"));
        assert_eq!(req.host_header, Some(Ok(HostHeader { host: "t.example".into(), port: None })));
    }

    #[test]
    fn partial_heads_ask_for_more() {
        let head = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
        for cut in 0..head.len() {
            assert!(matches!(parse_request_head(&head[..cut]), Step::NeedMore(_)), "cut at {cut}");
        }
    }

    #[test]
    fn method_sniffing() {
        assert_eq!(looks_like_request(b"GE"), None);
        assert_eq!(looks_like_request(b"\r\nGET /"), Some(true));
        assert_eq!(looks_like_request(b"CONNECT "), Some(true));
        assert_eq!(looks_like_request(b"EHLO User\r\n"), Some(false));
        assert_eq!(looks_like_request(b"SSH-2.0-OpenSSH_8.9\r\n"), Some(false));
        assert_eq!(looks_like_request(b"PROXY TCP4 "), Some(false));
        assert_eq!(looks_like_request(b"PRI * HTTP/2.0"), Some(false));
        assert_eq!(looks_like_request(&[0x16, 3, 1]), Some(false));
    }

    #[test]
    fn proxy_replies() {
        let (reply, n) = done(parse_response_head(b"HTTP/1.1 200 Connection established\r\n\r\nrest"));
        assert_eq!((reply.status, reply.body_len, n), (200, Some(0), 39));
        let (reply, _) = done(parse_response_head(b"HTTP/1.1 407 Auth\r\nContent-Length: 5\r\n\r\nhello"));
        assert_eq!((reply.status, reply.body_len), (407, Some(5)));
        assert!(matches!(parse_response_head(b"\x05\x00"), Step::Malformed(_)));
    }
}

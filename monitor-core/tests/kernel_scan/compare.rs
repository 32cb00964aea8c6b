//! The comparison of the kernel's scanners with the user-space parsers, shared by the differential test
//! (`tests/kernel_scan.rs`) and the `kernel_scan` fuzz target: the kernel's reading of a client stream,
//! one message per send as `inspect_send` sees it; user space's reading of the whole stream; and
//! [`explain`], which says whether the two agree and, where a difference is expected, why.

use std::net::{Ipv4Addr, Ipv6Addr};

use monitor_common::scan::{
    BLANKS_MAX, Framing, HEAD_MAX, SCAN_DEFER, SCAN_GREETING, SCAN_IPV4, SCAN_NAME, SCAN_NEED_BYTES,
    SCAN_UNKNOWN, SCHEME_MAX, Scan, Scratch, TLS_EXTENSIONS_MAX, WINDOW, head_framing, scan_http, scan_socks,
    scan_tls_message,
};
use monitor_common::verdict::{SOURCE_CONNECT, SOURCE_SOCKS_IP, SOURCE_SOCKS4A, SOURCE_SOCKS5};
use monitor_core::extract::{FlowInspector, Inspection, normalize_host, request_host};

/// What the kernel concluded about one message, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernel {
    /// Judged by this name (folded as the kernel's hash folds it: lower case, one trailing dot off) or
    /// IPv4 address.
    Named(String),
    /// Waits for bytes the stream does not hold (a hold, until its timeout).
    Short,
    /// A protocol it reads, naming nothing it judges.
    Unnamed,
    /// Not a protocol it reads.
    Unknown,
    /// Left to user space (a ClientHello past the kernel's window): tcp_egress holds it until user space
    /// has judged it.
    Deferred,
}

/// The kernel's reading of a connection: its first message, and the first one inside a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelReading {
    pub outer: Kernel,
    pub outer_source: u32,
    pub tunnel: Option<Kernel>,
    /// Where the tunnel's first message starts in the stream, when the kernel reads one.
    pub tunnel_at: Option<usize>,
}

/// One scan over `bytes` copied into a scratch buffer whose other bytes are `fill`.
pub fn scratch_with(fill: u8, bytes: &[u8]) -> Box<Scratch> {
    let mut scratch = Box::new(Scratch::zeroed());
    scratch.bytes.fill(fill);
    let n = bytes.len().min(WINDOW as usize);
    scratch.bytes[..n].copy_from_slice(&bytes[..n]);
    scratch
}

pub fn kernel_view(scratch: &Scratch, scan: Scan) -> Kernel {
    match scan.kind {
        SCAN_NAME => {
            let name: Vec<u8> = (0..scan.b).map(|i| scratch.at(scan.a + i)).collect();
            let mut name = String::from_utf8_lossy(&name).to_ascii_lowercase();
            if name.len() > 1 && name.ends_with('.') {
                name.pop();
            }
            Kernel::Named(name)
        }
        SCAN_IPV4 => Kernel::Named(Ipv4Addr::from(scan.a.to_ne_bytes()).to_string()),
        SCAN_NEED_BYTES => Kernel::Short,
        SCAN_DEFER => Kernel::Deferred,
        SCAN_UNKNOWN => Kernel::Unknown,
        _ => Kernel::Unnamed,
    }
}

/// Runs `scan` on `bytes` over two different stale fills; they must agree.
pub fn scan_twice(bytes: &[u8], scan: impl Fn(&Scratch, u32) -> Scan) -> Result<(Scan, Kernel), String> {
    let len = bytes.len().min(WINDOW as usize) as u32;
    let views: Vec<(Scan, Kernel)> = [0x00u8, 0xa5]
        .iter()
        .map(|&fill| {
            let scratch = scratch_with(fill, bytes);
            let s = scan(&scratch, len);
            (s, kernel_view(&scratch, s))
        })
        .collect();
    if views[0].1 != views[1].1 {
        return Err(format!(
            "the kernel's answer depends on stale scratch bytes: {:?} / {:?}",
            views[0], views[1]
        ));
    }
    Ok(views[0].clone())
}

/// `scan_tls_message` as sk_msg runs it, over a byte slice: its reads stay within `size` bytes of the
/// message (a read past them is a bug in the kernel's code, and panics here).
fn scan_tls(scratch: &mut Scratch, data: &[u8], size: u32) -> Scan {
    let read = |dst: *mut u8, len: u32, at: u32| {
        let (at, len) = (at as usize, len as usize);
        assert!(at + len <= size as usize, "the kernel reads {len} bytes at {at} of a {size}-byte message");
        // `dst` is the scratch buffer or a 5-byte header, and the kernel's code bounds `len` for both.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().add(at), dst, len) };
    };
    scan_tls_message(scratch, read, size)
}

pub fn kernel_tls(bytes: &[u8]) -> Result<Kernel, String> {
    let size = bytes.len().min(WINDOW as usize) as u32;
    let views: Vec<Kernel> = [0x00u8, 0xa5]
        .iter()
        .map(|&fill| {
            let mut scratch = Box::new(Scratch::zeroed());
            scratch.bytes.fill(fill);
            let scan = scan_tls(&mut scratch, bytes, size);
            kernel_view(&scratch, scan)
        })
        .collect();
    if views[0] != views[1] {
        return Err(format!("the kernel's ClientHello answer depends on stale scratch bytes: {views:?}"));
    }
    Ok(views[0].clone())
}

/// The kernel's reading of a client stream, one message per send (as clients write them): the first
/// message, and after a CONNECT or SOCKS request the tunnel's first.
pub fn kernel_read(stream: &[u8]) -> Result<KernelReading, String> {
    let Some(&first) = stream.first() else {
        return Ok(KernelReading { outer: Kernel::Short, outer_source: 0, tunnel: None, tunnel_at: None });
    };
    let (outer, source, rest): (Kernel, u32, Option<&[u8]>) = match first {
        0x16 => (kernel_tls(stream)?, 0, None),
        4 => {
            let (scan, view) = scan_twice(stream, |b, l| scan_socks(b, l, false))?;
            let end = socks4_end(stream);
            (view, scan.source, end.map(|e| &stream[e..]))
        }
        5 => {
            let (scan, view) = scan_twice(stream, |b, l| scan_socks(b, l, false))?;
            if scan.kind != SCAN_GREETING {
                (view, scan.source, None)
            } else {
                let mut at = 2 + usize::from(stream[1]);
                let mut answer = (Kernel::Short, 0, None);
                // A sub-negotiation, then the request: each its own send.
                for _ in 0..4 {
                    let Some(message) = stream.get(at..).filter(|m| !m.is_empty()) else { break };
                    let (scan, view) = scan_twice(message, |b, l| scan_socks(b, l, true))?;
                    if scan.kind == SCAN_GREETING && message[0] == 1 {
                        at += socks_userpass_len(message).unwrap_or(message.len());
                        continue;
                    }
                    let end = socks5_request_len(message).map(|n| at + n);
                    answer = (view, scan.source, end.and_then(|e| stream.get(e..)));
                    break;
                }
                answer
            }
        }
        _ => {
            let (scan, view) = scan_twice(stream, scan_http)?;
            let rest = if scan.source == SOURCE_CONNECT && matches!(view, Kernel::Named(_)) {
                let scratch = scratch_with(0, stream);
                match head_framing(&scratch, stream.len().min(WINDOW as usize) as u32) {
                    Framing::Length(n) => stream.get(n as usize..),
                    _ => None,
                }
            } else {
                None
            };
            (view, scan.source, rest)
        }
    };
    let opens_tunnel = matches!(source, SOURCE_CONNECT | SOURCE_SOCKS5 | SOURCE_SOCKS4A | SOURCE_SOCKS_IP);
    let rest = rest.filter(|r| !r.is_empty() && opens_tunnel);
    let tunnel = match rest {
        Some(inner) if inner[0] == 0x16 => Some(kernel_tls(inner)?),
        Some(inner) => Some(scan_twice(inner, scan_http)?.1),
        None => None,
    };
    let tunnel_at = rest.map(|inner| stream.len() - inner.len());
    Ok(KernelReading { outer, outer_source: source, tunnel, tunnel_at })
}

pub fn socks4_end(stream: &[u8]) -> Option<usize> {
    let user_end = 8 + stream.get(8..)?.iter().position(|&b| b == 0)? + 1;
    let is_4a = stream[4..7] == [0, 0, 0] && stream[7] != 0;
    if !is_4a {
        return Some(user_end);
    }
    Some(user_end + stream.get(user_end..)?.iter().position(|&b| b == 0)? + 1)
}

pub fn socks_userpass_len(m: &[u8]) -> Option<usize> {
    let ulen = usize::from(*m.get(1)?);
    let plen = usize::from(*m.get(2 + ulen)?);
    Some(3 + ulen + plen)
}

pub fn socks5_request_len(m: &[u8]) -> Option<usize> {
    let addr = match *m.get(3)? {
        1 => 4,
        3 => 1 + usize::from(*m.get(4)?),
        4 => 16,
        _ => return None,
    };
    Some(4 + addr + 2)
}

/// What user space reads from the whole stream.
pub fn user_read(stream: &[u8]) -> Inspection {
    let mut inspector = FlowInspector::new();
    inspector.client_bytes(stream);
    inspector.finish();
    inspector.inspection().clone()
}

pub fn user_outer(found: &Inspection) -> Option<String> {
    found.source.and(found.host.clone())
}

pub fn user_tunnel(found: &Inspection) -> Option<String> {
    if !found.tunneled {
        return None;
    }
    if found.tunneled_sni { found.sni.clone() } else { found.http_host.clone() }
}

/// Methods `scan_http` reads; user space reads WebDAV and other registered methods too.
pub const KERNEL_METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "TRACE", "PATCH"];

pub fn first_word(stream: &[u8]) -> String {
    let start = stream.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(stream.len());
    let word: Vec<u8> = stream[start..].iter().take_while(|&&b| b != b' ' && b != b'\t').copied().collect();
    String::from_utf8_lossy(&word).into_owned()
}

/// Reasons a disagreement is expected, each with the predicate that shows it applies.
pub const NOT_A_HOST: &str = "the kernel judges a string user space does not take for a host name \
    (percent-encoding, `@` in a SOCKS name, bytes no DNS name has): squid and tinyproxy refuse such \
    names (checked), and the kernel still matches its label suffixes, so it fails closed";
pub const BAD_HOST_LINE: &str = "a Host line whose value is no host (a control byte, words after \
    the name): user space ignores the invalid line (naming nothing, or a later Host line), the kernel judges the \
    value's first word; tinyproxy takes the first Host line and fails on such a value, nginx refuses two";
/// Found by fuzzing: the kernel finds a Host line in a head whose other lines user space's HTTP parser refuses
/// (so it names nothing). The kernel judges more than user space there: it blocks more, never less.
pub const DEFERRED: &str = "a ClientHello past the kernel's window or its record walk: the kernel leaves it \
    to user space, which judges it while tcp_egress holds its segments";
/// Found by fuzzing: a stream user space reads as no protocol at all (a SOCKS5 greeting it refuses),
/// whose tunnel the kernel still reads: the kernel judges more, never less.
pub const USER_READS_NO_PROTOCOL: &str = "user space reads no protocol in the stream, the kernel still reads \
    a tunnel in it (fail closed)";
/// Found by fuzzing: user space reads a tunnel after a CONNECT whose request line carries no HTTP version;
/// squid answers 400 to such a line, so no tunnel opens.
pub const CONNECT_NO_VERSION: &str = "a CONNECT line without an HTTP version: the proxy refuses it (400), no \
    tunnel opens";
/// Found by fuzzing: a CONNECT inside a tunnel (through a SOCKS server or a CONNECT to a second proxy, or
/// a CONNECT sent again on the same connection after a 407).
pub const CHAINED_CONNECT: &str = "a CONNECT inside the tunnel (a chained proxy, or the request sent again \
    after a 407): the kernel judges its name, user space keeps the first request's target and reads on to \
    the message after it, which a late verdict judges (both names are judged)";
/// Found by fuzzing: the kernel stops at a first Host line that is no host, user space names a second one.
pub const SECOND_HOST_LINE: &str = "two Host lines, the first no host: user space skips it and names the second \
    (a late verdict judges it), the kernel stops at the first; nginx refuses two Host lines (400), tinyproxy \
    takes the first and fails on it";
/// Found by fuzzing: a ClientHello whose server_name extension comes twice.
pub const REPEATED_SERVER_NAME: &str = "a ClientHello with server_name twice: the kernel reads the first, user \
    space a later one (a late verdict judges it); TLS servers refuse a repeated extension (RFC 8446 4.2, \
    OpenSSL aborts the handshake)";
/// Found by fuzzing: line ends, then a ClientHello, as a tunnel's first bytes.
pub const LINE_ENDS_BEFORE_TUNNEL: &str = "line ends before a tunnel's ClientHello: user space reads past them (a \
    proxy skips them after a CONNECT head) and a late verdict judges the name, the kernel reads only an HTTP \
    request after line ends";
pub const KERNEL_READS_REFUSED_HEAD: &str = "the kernel reads a Host line in a head user space refuses";
pub const NOT_TLS_RECORD: &str = "a handshake record whose version is not TLS (3.0 to 3.4): no TLS \
    server reads it and user space does not take it for TLS, while the kernel reads the ClientHello in it \
    (fail closed)";
pub const USER_MALFORMED: &str = "user space finds the message malformed and names nothing; the kernel's \
    name is judged (fail closed)";
pub const IPV6_LITERAL: &str = "an IPv6 literal: the kernel judges it by the connect-time address only, \
    user space by the name and, in block mode, a late verdict aborts the connection";
pub const OTHER_METHOD: &str = "a method the kernel does not read (WebDAV, PURGE, ...): user space names \
    the target and, in block mode, a late verdict aborts the connection";
pub const BEYOND_BOUNDS: &str = "past a kernel bound (a Host line after 2 KiB of head, more than 64 \
    blanks or empty lines, a URI scheme of 16 letters or more, more than 48 TLS extensions before server_name, a message past the 8 KiB \
    window): user space names the target and a late verdict judges it";
pub const CUT_SHORT: &str = "the stream ends inside the message: the kernel holds the send until its \
    timeout (then uninspectable), user space names what the cut-short message carries";
pub const PROXY_HEADER: &str = "a PROXY-protocol header first (a load balancer's, not a client's): the kernel \
    does not read past it, user space does and a late verdict judges the name";
pub const TUNNEL_AFTER_UNNAMED: &str = "the kernel stops at an outer request it cannot name (an IPv6 literal, \
    a name that is no host name): the connection is uninspectable to it, while user space reads on into \
    the tunnel and a late verdict judges what it names there";
pub const SOCKS_AFTER_REPEATED_GREETING: &str = "a SOCKS5 greeting sent twice: the kernel reads the second \
    as the request, user space skips it (a late verdict judges the real request)";
pub const SOCKS_ODD_COMMAND: &str = "a SOCKS request that is not CONNECT (BIND, UDP ASSOCIATE) or not \
    version 5: user space names no destination, the kernel judges the address anyway";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    Outer,
    Tunnel,
}

/// Whether `kernel` and `user` (one layer of one input) agree, and if not, why that is expected.
pub fn explain(
    layer: Layer,
    kernel: &Kernel,
    outer: &Kernel,
    user: Option<&str>,
    stream: &[u8],
    found: &Inspection,
) -> Result<Option<&'static str>, String> {
    let http = found.protocol == Some(monitor_core::extract::WireProtocol::Http) || layer == Layer::Tunnel;
    match (kernel, user) {
        // Deferred to user space, whose reading is then the verdict.
        (Kernel::Deferred, _) => Ok(Some(DEFERRED)),
        (Kernel::Named(k), Some(u)) if k == u => Ok(None),
        (Kernel::Named(k), Some(u)) => {
            if layer == Layer::Outer && stream.first() == Some(&5) && found.protocol.is_some() {
                // The kernel read a repeated greeting as the request.
                if repeated_socks5_greeting(stream) {
                    return Ok(Some(SOCKS_AFTER_REPEATED_GREETING));
                }
            }
            if layer == Layer::Outer && host_line_is_no_host(stream) {
                return Ok(Some(BAD_HOST_LINE));
            }
            if layer == Layer::Outer && long_scheme(stream) {
                // The kernel judges the Host line of a request whose long scheme it does not read.
                return Ok(Some(BEYOND_BOUNDS));
            }
            if request_host(k).is_none() && normalize_host(k).is_none() {
                return Ok(Some(NOT_A_HOST));
            }
            Err(format!("the kernel judges {k:?}, user space names {u:?}"))
        }
        (Kernel::Named(k), None) => {
            if request_host(k).is_none() && normalize_host(k).is_none() {
                Ok(Some(NOT_A_HOST))
            } else if found.malformed.is_some() {
                Ok(Some(USER_MALFORMED))
            } else if host_line_is_no_host(stream) {
                Ok(Some(BAD_HOST_LINE))
            } else if not_tls_record(stream) {
                Ok(Some(NOT_TLS_RECORD))
            } else if layer == Layer::Outer && matches!(stream.first(), Some(4 | 5)) {
                Ok(Some(SOCKS_ODD_COMMAND))
            } else if http && layer == Layer::Outer && found.source.is_none() && found.host.is_none() {
                Ok(Some(KERNEL_READS_REFUSED_HEAD))
            } else if layer == Layer::Tunnel && found.protocol.is_none() {
                Ok(Some(USER_READS_NO_PROTOCOL))
            } else {
                Err(format!("the kernel judges {k:?}, user space names nothing ({found:?})"))
            }
        }
        (_, None) => Ok(None),
        (kernel, Some(u)) => {
            if stream.starts_with(b"PROXY ") || stream.starts_with(b"\r\n\r\n\0\r\nQUIT\n") {
                Ok(Some(PROXY_HEADER))
            } else if layer == Layer::Tunnel && !matches!(outer, Kernel::Named(_)) {
                Ok(Some(TUNNEL_AFTER_UNNAMED))
            } else if layer == Layer::Tunnel && stream.starts_with(b"CONNECT ") && !http_version_line(stream)
            {
                Ok(Some(CONNECT_NO_VERSION))
            } else if u.parse::<Ipv6Addr>().is_ok() {
                Ok(Some(IPV6_LITERAL))
            } else if found.malformed.is_some_and(|m| m.contains("cut short")) || *kernel == Kernel::Short {
                Ok(Some(CUT_SHORT))
            } else if http
                && layer == Layer::Outer
                && !KERNEL_METHODS.iter().any(|m| m.eq_ignore_ascii_case(&first_word(stream)))
            {
                Ok(Some(OTHER_METHOD))
            } else if beyond_bounds(stream) {
                Ok(Some(BEYOND_BOUNDS))
            } else if layer == Layer::Outer && http && second_host_line(stream) {
                Ok(Some(SECOND_HOST_LINE))
            } else if layer == Layer::Outer && repeated_server_name(stream) {
                Ok(Some(REPEATED_SERVER_NAME))
            } else if repeated_socks5_greeting(stream) {
                Ok(Some(SOCKS_AFTER_REPEATED_GREETING))
            } else {
                Err(format!("user space names {u:?}, the kernel {kernel:?}"))
            }
        }
    }
}

/// Whether `message` is a handshake record whose version is not TLS's.
pub fn not_tls_record(message: &[u8]) -> bool {
    message.first() == Some(&0x16) && !matches!(message.get(1..3), Some([3, 0..=4]))
}

/// Whether the stream has two Host lines and the first is no host: user space skips the first and names
/// the second, the kernel stops at the first.
pub fn second_host_line(stream: &[u8]) -> bool {
    let lines = stream.windows(6).filter(|w| w.eq_ignore_ascii_case(b"\nhost:")).count();
    lines >= 2 && host_line_is_no_host(stream)
}

/// Whether `message` is line ends, then a TLS record.
pub fn line_ends_then_tls(message: &[u8]) -> bool {
    let start = message.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(message.len());
    start > 0 && message.get(start) == Some(&0x16)
}

/// Whether `message` is a CONNECT request (after the line ends a proxy skips) whose authority names `name`
/// (as the kernel folds it: userinfo dropped, lower case, no trailing dot).
pub fn connect_names(message: &[u8], name: &str) -> bool {
    let start = message.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(message.len());
    let line = &message[start..];
    if !line.get(..8).is_some_and(|m| m.eq_ignore_ascii_case(b"CONNECT ")) {
        return false;
    }
    let authority: Vec<u8> = line[8..]
        .iter()
        .skip_while(|&&b| b == b' ' || b == b'\t')
        .take_while(|&&b| !b" \t\r\n".contains(&b))
        .copied()
        .collect();
    let authority = String::from_utf8_lossy(&authority).to_ascii_lowercase();
    let host = authority.rsplit_once('@').map_or(authority.as_str(), |(_, h)| h);
    let host = host.split(':').next().unwrap_or_default();
    host.strip_suffix('.').filter(|h| !h.is_empty()).unwrap_or(host) == name
}

/// Whether the request line ends in an HTTP version a proxy accepts (`HTTP/1.0`, `HTTP/1.1`).
pub fn http_version_line(stream: &[u8]) -> bool {
    let line_end = stream.windows(2).position(|w| w == b"\r\n").unwrap_or(stream.len());
    let line = &stream[..line_end];
    line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0")
}

pub fn repeated_socks5_greeting(stream: &[u8]) -> bool {
    let Some(&n) = stream.get(1) else { return false };
    let mut second = &stream[(2 + usize::from(n)).min(stream.len())..];
    // Past username/password sub-negotiations, which the kernel skips as well (as many as it reads).
    for _ in 0..3 {
        match socks_userpass_len(second) {
            Some(len) if second.first() == Some(&1) => second = &second[len.min(second.len())..],
            _ => break,
        }
    }
    second.first() == Some(&5)
        && second.get(3).is_none_or(|&atyp| !matches!(atyp, 1 | 3 | 4) || second.get(2) != Some(&0))
        || second.len() >= 3 && second[0] == 5 && second[2] == 0 && second.get(1).is_some_and(|&m| m > 3)
        || second.first() == Some(&5) && second.get(2) != Some(&0)
}

/// Whether the message is longer than a kernel bound lets it read.
pub fn beyond_bounds(stream: &[u8]) -> bool {
    if stream.first() == Some(&0x16) {
        return tls_extensions_before_sni(stream).is_some_and(|n| n >= TLS_EXTENSIONS_MAX as usize)
            || stream.len() > WINDOW as usize
            || tls_records(stream) > 8;
    }
    let head_end = stream.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(stream.len());
    let host_at = find_ci(stream, b"\nhost:").unwrap_or(head_end);
    let leading = stream.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    host_at + 6 >= HEAD_MAX as usize
        || leading >= BLANKS_MAX as usize
        || longest_blank_run(stream) >= BLANKS_MAX as usize
        || long_scheme(stream)
}

/// Whether the request target is an absolute URI whose scheme is longer than the kernel reads.
pub fn long_scheme(stream: &[u8]) -> bool {
    let start = stream.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(stream.len());
    let stream = &stream[start..];
    let line_end = stream.iter().position(|&b| b == b'\n').unwrap_or(stream.len());
    let line = String::from_utf8_lossy(&stream[..line_end]);
    let target = line.split([' ', '\t']).filter(|w| !w.is_empty()).nth(1).unwrap_or_default();
    target.split_once("://").is_some_and(|(scheme, _)| scheme.len() >= SCHEME_MAX as usize)
}

pub fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle))
}

pub fn longest_blank_run(stream: &[u8]) -> usize {
    let head_end = find_ci(stream, b"\r\n\r\n").unwrap_or(stream.len());
    let mut best = 0;
    let mut run = 0;
    for &b in &stream[..head_end] {
        run = if b == b' ' || b == b'\t' { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

pub fn tls_records(stream: &[u8]) -> usize {
    let mut at = 0;
    let mut n = 0;
    while let Some(h) = stream.get(at..at + 5) {
        if h[0] != 0x16 {
            break;
        }
        n += 1;
        at += 5 + usize::from(u16::from_be_bytes([h[3], h[4]]));
    }
    n
}

/// The extension types of the ClientHello in `stream` (its records joined), in order; `None` when the
/// stream is no ClientHello that far.
pub fn client_hello_extensions(stream: &[u8]) -> Option<Vec<u16>> {
    let mut hs = Vec::new();
    let mut at = 0;
    while let Some(h) = stream.get(at..at + 5) {
        if h[0] != 0x16 {
            break;
        }
        let n = usize::from(u16::from_be_bytes([h[3], h[4]]));
        hs.extend_from_slice(stream.get(at + 5..at + 5 + n).unwrap_or(&stream[(at + 5).min(stream.len())..]));
        at += 5 + n;
    }
    let mut p = 38;
    p += 1 + usize::from(*hs.get(p)?);
    p += 2 + usize::from(u16::from_be_bytes([*hs.get(p)?, *hs.get(p + 1)?]));
    p += 1 + usize::from(*hs.get(p)?);
    p += 2;
    let mut types = Vec::new();
    while let (Some(&a), Some(&b)) = (hs.get(p), hs.get(p + 1)) {
        types.push(u16::from_be_bytes([a, b]));
        let Some(len) = hs.get(p + 2..p + 4) else { break };
        p += 4 + usize::from(u16::from_be_bytes([len[0], len[1]]));
    }
    Some(types)
}

/// How many extensions come before server_name in a ClientHello.
pub fn tls_extensions_before_sni(stream: &[u8]) -> Option<usize> {
    client_hello_extensions(stream)?.iter().position(|&t| t == 0)
}

/// Whether the ClientHello carries server_name more than once.
pub fn repeated_server_name(stream: &[u8]) -> bool {
    client_hello_extensions(stream).is_some_and(|types| types.iter().filter(|&&t| t == 0).count() > 1)
}

/// One layer of one input, compared.
pub struct LayerOutcome {
    pub layer: Layer,
    pub kernel: Kernel,
    pub user: Option<String>,
    /// Agreed (`Ok(None)`), an expected difference (`Ok(Some(reason))`), or a disagreement.
    pub result: Result<Option<&'static str>, String>,
}

/// Both readings of `stream`, layer by layer; `Err` when the kernel's reading itself is unsound (it
/// depends on stale scratch bytes).
pub fn compare(stream: &[u8]) -> Result<Vec<LayerOutcome>, String> {
    let kernel = kernel_read(stream)?;
    let found = user_read(stream);
    let layers = [
        (Layer::Outer, Some(kernel.outer.clone()), user_outer(&found)),
        (Layer::Tunnel, kernel.tunnel.clone(), user_tunnel(&found)),
    ];
    Ok(layers
        .into_iter()
        .map(|(layer, k, user)| {
            let k = k.unwrap_or(Kernel::Unnamed);
            let mut result = explain(layer, &k, &kernel.outer, user.as_deref(), stream, &found);
            if result.is_err()
                && layer == Layer::Tunnel
                && let Some(message) = kernel.tunnel_at.and_then(|at| stream.get(at..))
                && let Some(reason) = explain_tunnel_message(&k, user.as_deref(), message)
            {
                result = Ok(Some(reason));
            }
            LayerOutcome { layer, kernel: k, user, result }
        })
        .collect())
}

/// The reasons that apply to the tunnel's first message itself, as they would outside a tunnel.
pub fn explain_tunnel_message(kernel: &Kernel, user: Option<&str>, message: &[u8]) -> Option<&'static str> {
    match (kernel, user) {
        // A ClientHello the kernel reads in a record that is not TLS's: fail closed.
        (Kernel::Named(_), None) if not_tls_record(message) => Some(NOT_TLS_RECORD),
        (_, Some(_)) if repeated_server_name(message) => Some(REPEATED_SERVER_NAME),
        (Kernel::Unnamed, Some(_)) if second_host_line(message) => Some(SECOND_HOST_LINE),
        (Kernel::Named(k), _) if connect_names(message, k) => Some(CHAINED_CONNECT),
        (Kernel::Named(_), _) if host_line_is_no_host(message) => Some(BAD_HOST_LINE),
        (_, Some(_)) if beyond_bounds(message) => Some(BEYOND_BOUNDS),
        (_, Some(_)) if line_ends_then_tls(message) => Some(LINE_ENDS_BEFORE_TUNNEL),
        _ => None,
    }
}

/// Whether the stream's first Host line carries a value that is no host name: bytes past the name (a
/// blank, a control byte) that neither httparse nor a proxy takes as part of one.
pub fn host_line_is_no_host(stream: &[u8]) -> bool {
    let Some(at) = stream.windows(6).position(|w| w.eq_ignore_ascii_case(b"\nhost:")) else { return false };
    let value = &stream[at + 6..];
    let end = value.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(value.len());
    let text = String::from_utf8_lossy(&value[..end]);
    let text = text.trim_matches(|c| c == ' ' || c == '\t');
    let host = match text.rsplit_once('@') {
        // Words before an `@` are no userinfo (user space refuses such a value).
        Some((userinfo, _)) if userinfo.bytes().any(|b| b == b' ' || b.is_ascii_control()) => return true,
        Some((_, h)) => h,
        None => text,
    };
    // A port that is not all digits makes the whole value no host (httparse or the host parser refuses it).
    match monitor_core::extract::split_authority(host) {
        Some((host, _)) => request_host(host).is_none(),
        None => true,
    }
}

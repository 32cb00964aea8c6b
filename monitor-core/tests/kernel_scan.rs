//! Differential test: the kernel's scanners against the user-space parsers, on the same bytes.
//!
//! `monitor_common::scan` is the very code `inspect_send` runs, built here for the host (a plain loop
//! stands in for bpf_loop); `monitor_core::extract` is what names the event and judges what the kernel
//! let through. Both must name the same target, and it must be the one the proxy or origin really uses.
//! Inputs: the parser fixtures, the capture corpus's client streams, the fuzz corpora when present, and
//! a generator of request forms proxies accept. A disagreement is either fixed or one of the cases
//! [`explain`] writes down with its reason; anything else fails the test. The kernel's answer must also
//! not depend on the stale scratch bytes past the message (each scan runs twice, on two fills).
//!
//! `KERNEL_SCAN_SHOW=TEXT` prints every input whose expected difference's reason contains TEXT.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use monitor_common::scan::{
    BLANKS_MAX, Framing, HEAD_MAX, MASK, SCAN_GREETING, SCAN_IPV4, SCAN_NAME, SCAN_NEED_BYTES, SCAN_UNKNOWN,
    Scan, Scratch, TLS_EXTENSIONS_MAX, WINDOW, head_framing, scan_client_hello, scan_http, scan_socks,
};
use monitor_common::verdict::{SOURCE_CONNECT, SOURCE_SOCKS_IP, SOURCE_SOCKS4A, SOURCE_SOCKS5};
use monitor_core::extract::{FlowInspector, Inspection, TargetSource, normalize_host, request_host};

/// What the kernel concluded about one message, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kernel {
    /// Judged by this name (folded as the kernel's hash folds it: lower case, one trailing dot off) or
    /// IPv4 address.
    Named(String),
    /// Waits for bytes the stream does not hold (a hold, until its timeout).
    Short,
    /// A protocol it reads, naming nothing it judges.
    Unnamed,
    /// Not a protocol it reads.
    Unknown,
}

/// The kernel's reading of a connection: its first message, and the first one inside a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelReading {
    outer: Kernel,
    outer_source: u32,
    tunnel: Option<Kernel>,
}

/// One scan over `bytes` copied into a scratch buffer whose other bytes are `fill`.
fn scratch_with(fill: u8, bytes: &[u8]) -> Box<Scratch> {
    let mut scratch = Box::new(Scratch::zeroed());
    scratch.bytes.fill(fill);
    let n = bytes.len().min(WINDOW as usize);
    scratch.bytes[..n].copy_from_slice(&bytes[..n]);
    scratch
}

fn kernel_view(scratch: &Scratch, scan: Scan) -> Kernel {
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
        SCAN_UNKNOWN => Kernel::Unknown,
        _ => Kernel::Unnamed,
    }
}

/// Runs `scan` on `bytes` over two different stale fills; they must agree.
fn scan_twice(bytes: &[u8], scan: impl Fn(&Scratch, u32) -> Scan) -> Result<(Scan, Kernel), String> {
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

const TLS_RECORDS_MAX: u32 = 8;

/// `send::copy_handshake`, transcribed for a byte slice (the kernel reads the message with
/// bpf_probe_read_kernel): the handshake bytes of the records at the start, without their headers.
fn copy_handshake(scratch: &mut Scratch, data: &[u8], size: u32) -> Result<u32, u32> {
    let mut src = 0u32;
    let mut dst = 0u32;
    for _ in 0..TLS_RECORDS_MAX {
        if src + 5 > size {
            return Err(src + 5);
        }
        let header = &data[src as usize..src as usize + 5];
        if header[0] != 0x16 {
            break;
        }
        let record_len = ((header[3] as u32) << 8) | header[4] as u32;
        let available = size - src - 5;
        let mut n = if record_len < available { record_len } else { available };
        if dst + n > WINDOW {
            n = WINDOW - dst;
        }
        let n = n & (WINDOW * 2 - 1);
        if n > WINDOW {
            break;
        }
        let at = (dst & MASK) as usize;
        let from = (src + 5) as usize;
        scratch.bytes[at..at + n as usize].copy_from_slice(&data[from..from + n as usize]);
        dst += n;
        src += 5 + record_len;
        if dst >= 4 {
            let handshake_len =
                ((scratch.at(1) as u32) << 16) | ((scratch.at(2) as u32) << 8) | scratch.at(3) as u32;
            if dst >= handshake_len + 4 || dst >= WINDOW {
                return Ok(dst);
            }
        }
        if src > size {
            return Err(if src < WINDOW { src } else { WINDOW });
        }
    }
    Ok(dst)
}

fn kernel_tls(bytes: &[u8]) -> Result<Kernel, String> {
    let size = bytes.len().min(WINDOW as usize) as u32;
    let views: Vec<Kernel> = [0x00u8, 0xa5]
        .iter()
        .map(|&fill| {
            let mut scratch = Box::new(Scratch::zeroed());
            scratch.bytes.fill(fill);
            match copy_handshake(&mut scratch, bytes, size) {
                Ok(n) => kernel_view(&scratch, scan_client_hello(&scratch, n)),
                Err(_) => Kernel::Short,
            }
        })
        .collect();
    if views[0] != views[1] {
        return Err(format!("the kernel's ClientHello answer depends on stale scratch bytes: {views:?}"));
    }
    Ok(views[0].clone())
}

/// The kernel's reading of a client stream, one message per send (as clients write them): the first
/// message, and after a CONNECT or SOCKS request the tunnel's first.
fn kernel_read(stream: &[u8]) -> Result<KernelReading, String> {
    let Some(&first) = stream.first() else {
        return Ok(KernelReading { outer: Kernel::Short, outer_source: 0, tunnel: None });
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
    let tunnel = match rest.filter(|r| !r.is_empty() && opens_tunnel) {
        Some(inner) if inner[0] == 0x16 => Some(kernel_tls(inner)?),
        Some(inner) => Some(scan_twice(inner, scan_http)?.1),
        None => None,
    };
    Ok(KernelReading { outer, outer_source: source, tunnel })
}

fn socks4_end(stream: &[u8]) -> Option<usize> {
    let user_end = 8 + stream.get(8..)?.iter().position(|&b| b == 0)? + 1;
    let is_4a = stream[4..7] == [0, 0, 0] && stream[7] != 0;
    if !is_4a {
        return Some(user_end);
    }
    Some(user_end + stream.get(user_end..)?.iter().position(|&b| b == 0)? + 1)
}

fn socks_userpass_len(m: &[u8]) -> Option<usize> {
    let ulen = usize::from(*m.get(1)?);
    let plen = usize::from(*m.get(2 + ulen)?);
    Some(3 + ulen + plen)
}

fn socks5_request_len(m: &[u8]) -> Option<usize> {
    let addr = match *m.get(3)? {
        1 => 4,
        3 => 1 + usize::from(*m.get(4)?),
        4 => 16,
        _ => return None,
    };
    Some(4 + addr + 2)
}

/// What user space reads from the whole stream.
fn user_read(stream: &[u8]) -> Inspection {
    let mut inspector = FlowInspector::new();
    inspector.client_bytes(stream);
    inspector.finish();
    inspector.inspection().clone()
}

fn user_outer(found: &Inspection) -> Option<String> {
    found.source.and(found.host.clone())
}

fn user_tunnel(found: &Inspection) -> Option<String> {
    if !found.tunneled {
        return None;
    }
    if found.tunneled_sni { found.sni.clone() } else { found.http_host.clone() }
}

/// Methods `scan_http` reads; user space reads WebDAV and other registered methods too.
const KERNEL_METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "TRACE", "PATCH"];

fn first_word(stream: &[u8]) -> String {
    let start = stream.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(stream.len());
    let word: Vec<u8> = stream[start..].iter().take_while(|&&b| b != b' ' && b != b'\t').copied().collect();
    String::from_utf8_lossy(&word).into_owned()
}

/// Reasons a disagreement is expected, each with the predicate that shows it applies.
const NOT_A_HOST: &str = "the kernel judges a string user space does not take for a host name \
    (percent-encoding, `@` in a SOCKS name, bytes no DNS name has): squid and tinyproxy refuse such \
    names (checked), and the kernel still matches its label suffixes, so it fails closed";
const USER_MALFORMED: &str = "user space finds the message malformed and names nothing; the kernel's \
    name is judged (fail closed)";
const IPV6_LITERAL: &str = "an IPv6 literal: the kernel judges it by the connect-time address only, \
    user space by the name and, in block mode, a late verdict aborts the connection";
const OTHER_METHOD: &str = "a method the kernel does not read (WebDAV, PURGE, ...): user space names \
    the target and, in block mode, a late verdict aborts the connection";
const BEYOND_BOUNDS: &str = "past a kernel bound (a Host line after 2 KiB of head, more than 64 \
    blanks or empty lines, more than 48 TLS extensions before server_name, a message past the 8 KiB \
    window): user space names the target and a late verdict judges it";
const CUT_SHORT: &str = "the stream ends inside the message: the kernel holds the send until its \
    timeout (then uninspectable), user space names what the cut-short message carries";
const PROXY_HEADER: &str = "a PROXY-protocol header first (a load balancer's, not a client's): the kernel \
    does not read past it, user space does and a late verdict judges the name";
const TUNNEL_AFTER_UNNAMED: &str = "the kernel stops at an outer request it cannot name (an IPv6 literal, \
    a name that is no host name): the connection is uninspectable to it, while user space reads on into \
    the tunnel and a late verdict judges what it names there";
const SOCKS_AFTER_REPEATED_GREETING: &str = "a SOCKS5 greeting sent twice: the kernel reads the second \
    as the request, user space skips it (a late verdict judges the real request)";
const SOCKS_ODD_COMMAND: &str = "a SOCKS request that is not CONNECT (BIND, UDP ASSOCIATE) or not \
    version 5: user space names no destination, the kernel judges the address anyway";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    Outer,
    Tunnel,
}

/// Whether `kernel` and `user` (one layer of one input) agree, and if not, why that is expected.
fn explain(
    layer: Layer,
    kernel: &Kernel,
    outer: &Kernel,
    user: Option<&str>,
    stream: &[u8],
    found: &Inspection,
) -> Result<Option<&'static str>, String> {
    let http = found.protocol == Some(monitor_core::extract::WireProtocol::Http) || layer == Layer::Tunnel;
    match (kernel, user) {
        (Kernel::Named(k), Some(u)) if k == u => Ok(None),
        (Kernel::Named(k), Some(u)) => {
            if layer == Layer::Outer && stream.first() == Some(&5) && found.protocol.is_some() {
                // The kernel read a repeated greeting as the request.
                if repeated_socks5_greeting(stream) {
                    return Ok(Some(SOCKS_AFTER_REPEATED_GREETING));
                }
            }
            Err(format!("the kernel judges {k:?}, user space names {u:?}"))
        }
        (Kernel::Named(k), None) => {
            if request_host(k).is_none() && normalize_host(k).is_none() {
                Ok(Some(NOT_A_HOST))
            } else if found.malformed.is_some() {
                Ok(Some(USER_MALFORMED))
            } else if layer == Layer::Outer && matches!(stream.first(), Some(4 | 5)) {
                Ok(Some(SOCKS_ODD_COMMAND))
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
            } else if repeated_socks5_greeting(stream) {
                Ok(Some(SOCKS_AFTER_REPEATED_GREETING))
            } else {
                Err(format!("user space names {u:?}, the kernel {kernel:?}"))
            }
        }
    }
}

fn repeated_socks5_greeting(stream: &[u8]) -> bool {
    let Some(&n) = stream.get(1) else { return false };
    let second = &stream[(2 + usize::from(n)).min(stream.len())..];
    second.first() == Some(&5)
        && second.get(3).is_none_or(|&atyp| !matches!(atyp, 1 | 3 | 4) || second.get(2) != Some(&0))
        || second.len() >= 3 && second[0] == 5 && second[2] == 0 && second.get(1).is_some_and(|&m| m > 3)
        || second.first() == Some(&5) && second.get(2) != Some(&0)
}

/// Whether the message is longer than a kernel bound lets it read.
fn beyond_bounds(stream: &[u8]) -> bool {
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
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle))
}

fn longest_blank_run(stream: &[u8]) -> usize {
    let head_end = find_ci(stream, b"\r\n\r\n").unwrap_or(stream.len());
    let mut best = 0;
    let mut run = 0;
    for &b in &stream[..head_end] {
        run = if b == b' ' || b == b'\t' { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

fn tls_records(stream: &[u8]) -> usize {
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

/// How many extensions come before server_name in a single-record ClientHello.
fn tls_extensions_before_sni(stream: &[u8]) -> Option<usize> {
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
    let mut count = 0;
    while let (Some(&a), Some(&b)) = (hs.get(p), hs.get(p + 1)) {
        if a == 0 && b == 0 {
            return Some(count);
        }
        count += 1;
        p += 4 + usize::from(u16::from_be_bytes([*hs.get(p + 2)?, *hs.get(p + 3)?]));
    }
    None
}

#[derive(Default)]
struct Tally {
    inputs: usize,
    layers: usize,
    agreed_named: usize,
    documented: BTreeMap<&'static str, (usize, String)>,
    failures: Vec<String>,
}

impl Tally {
    fn compare(&mut self, origin: &str, stream: &[u8]) {
        self.inputs += 1;
        let kernel = match kernel_read(stream) {
            Ok(k) => k,
            Err(why) => {
                self.failures
                    .push(format!("{origin}: {why}\n  bytes: {:?}", String::from_utf8_lossy(stream)));
                return;
            }
        };
        let found = user_read(stream);
        let layers = [
            (Layer::Outer, Some(kernel.outer.clone()), user_outer(&found)),
            (Layer::Tunnel, kernel.tunnel.clone(), user_tunnel(&found)),
        ];
        for (layer, k, u) in layers {
            let k = k.unwrap_or(Kernel::Unnamed);
            self.layers += 1;
            match explain(layer, &k, &kernel.outer, u.as_deref(), stream, &found) {
                Ok(None) => self.agreed_named += usize::from(u.is_some()),
                Ok(Some(reason)) => {
                    if std::env::var("KERNEL_SCAN_SHOW").is_ok_and(|v| reason.contains(&v)) {
                        eprintln!(
                            "SHOW {origin}: {:?} k={k:?} u={u:?} {:?}",
                            String::from_utf8_lossy(&stream[..stream.len().min(120)]),
                            found.malformed
                        );
                    }
                    let seen = self.documented.entry(reason).or_insert_with(|| {
                        let head = String::from_utf8_lossy(&stream[..stream.len().min(90)]).into_owned();
                        (0, format!("{origin} ({layer:?}): {head:?}"))
                    });
                    seen.0 += 1;
                }
                Err(why) => self.failures.push(format!(
                    "{origin} ({layer:?}): {why}\n  bytes: {:?}",
                    String::from_utf8_lossy(&stream[..stream.len().min(160)])
                )),
            }
        }
    }
}

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks(2)
        .map(|p| {
            u8::from_str_radix(std::str::from_utf8(p).expect("hex is ASCII"), 16).expect("fixture is hex")
        })
        .collect()
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("fixture entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        // QUIC is judged by user space only; the kernel hands its Initials over without reading them.
        let client_side = name.ends_with(".client.hex") || name == "openssl_client_hello.hex";
        if !client_side || name.contains("quic") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        out.push((format!("fixture {name}"), unhex(&text)));
    }
    out
}

fn corpus_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MONITOR_CORPUS") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|dir| dir.join("shared").join("corpus"))
        .find(|dir| dir.join("expected.tsv").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no shared/corpus/expected.tsv in any directory above {}; set MONITOR_CORPUS to the corpus directory",
                manifest.display()
            )
        })
}

fn corpus_streams() -> Vec<(String, Vec<u8>)> {
    let pcaps = corpus_dir().join("pcaps");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&pcaps)
        .unwrap_or_else(|e| panic!("read {}: {e}", pcaps.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        // A capture the replay cannot read is the replay test's business; here it only has no streams.
        let Ok(streams) = monitor_core::replay::client_streams(&path) else { continue };
        for (i, stream) in streams.into_iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            out.push((format!("corpus {name} #{i}"), stream));
        }
    }
    out
}

/// Inputs the fuzzers kept (fuzz/corpus/TARGET, ignored by git), when a fuzz run left them here.
fn fuzz_inputs() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut out = Vec::new();
    for target in ["kernel_scan", "http_request_head", "socks", "tls_client_hello", "flow_inspector"] {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else { continue };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.into_iter().take(5000) {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            // flow_inspector and kernel_scan inputs start with a seed byte; flow_inspector's may carry server bytes.
            let client = match target {
                "flow_inspector" | "kernel_scan" => {
                    let rest = bytes.get(1..).unwrap_or_default();
                    let end = rest.windows(10).position(|w| w == b"--server--").unwrap_or(rest.len());
                    rest[..end].to_vec()
                }
                _ => bytes,
            };
            out.push((format!("fuzz {target} {}", path.display()), client));
        }
    }
    out
}

/// A ClientHello naming `sni` (or none), with `before` other extensions ahead of server_name, cut into
/// `records` TLS records.
fn client_hello(sni: Option<&[u8]>, before: usize, records: usize) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(32);
    body.extend_from_slice(&[9; 32]);
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02, 1, 0]);
    let mut ext = Vec::new();
    for i in 0..before {
        ext.extend_from_slice(&(0x1000u16 + i as u16).to_be_bytes());
        ext.extend_from_slice(&[0, 2, 0, 0]);
    }
    if let Some(name) = sni {
        let n = name.len() as u16;
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&(n + 5).to_be_bytes());
        ext.extend_from_slice(&(n + 3).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&n.to_be_bytes());
        ext.extend_from_slice(name);
    }
    ext.extend_from_slice(&[0, 0x2b, 0, 3, 2, 3, 4]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let piece = hs.len().div_ceil(records.max(1));
    let mut out = Vec::new();
    for chunk in hs.chunks(piece) {
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

const DENIED: &str = "denied.example.test";
const ALPHA: &str = "alpha.example.test";

/// Host forms a request may carry.
const HOSTS: &[&str] = &[
    DENIED,
    "DENIED.Example.TEST",
    "denied.example.test.",
    "127.0.0.12",
    "2130706444",
    "0x7f00000c",
    "0177.0.0.014",
    "127.12",
    "[::1]",
    "[::ffff:127.0.0.12]",
    "denied%2Eexample.test",
    "xn--bcher-kva.example",
    "_svc.denied.example.test",
];
const USERINFO: &[&str] = &["", "u@", "u:p@", "u@v@", "alpha.example.test\\@", "%40@"];
const PORTS: &[&str] = &["", ":80", ":", ":8080", ":99999"];
const PATHS: &[&str] = &["/", "", "?q=1", "#f", "/a/b?c"];
const METHODS: &[&str] =
    &["GET", "get", "Get", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "PURGE"];
const SEPARATORS: &[&str] = &[" ", "  ", "\t", " \t "];
const LEADING: &[&str] = &["", "\r\n", "\n", "\r\n\r\n"];
const SCHEMES: &[&str] = &["http", "HTTP", "https", "Http", "ftp", "ws"];
const VERSIONS: &[&str] = &["HTTP/1.1", "HTTP/1.0"];
const HOST_HEADERS: &[&str] = &[
    "",
    "Host: alpha.example.test\r\n",
    "Host:alpha.example.test\r\n",
    "host: denied.example.test\r\n",
    "Host: alpha.example.test\r\nHost: denied.example.test\r\n",
];

/// A deterministic xorshift, so that a failing generated input replays exactly.
struct Rng(u64);

impl Rng {
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        from[(self.0 % from.len() as u64) as usize]
    }
}

fn absolute(rng: &mut Rng) -> String {
    let (lead, method, sep, scheme, user, host, port, path, version, header) = (
        rng.pick(LEADING),
        rng.pick(METHODS),
        rng.pick(SEPARATORS),
        rng.pick(SCHEMES),
        rng.pick(USERINFO),
        rng.pick(HOSTS),
        rng.pick(PORTS),
        rng.pick(PATHS),
        rng.pick(VERSIONS),
        rng.pick(HOST_HEADERS),
    );
    format!(
        "{lead}{method}{sep}{scheme}://{user}{host}{port}{path}{sep}{version}\r\n{header}Accept: */*\r\n\r\n"
    )
}

fn origin_form(rng: &mut Rng) -> String {
    let name = rng.pick(&["Host", "host", "HOST"]);
    let blanks = rng.pick(&["", " ", "   ", "\t", " \t", &" ".repeat(70)]).to_string();
    let host = rng.pick(HOSTS);
    let port = rng.pick(PORTS);
    let trailing = rng.pick(&["", "  ", "\t"]);
    let before = rng
        .pick(&["", "X-A: b\r\n", "X-A: b\r\n c\r\n", &format!("X-Pad: {}\r\n", "p".repeat(3000))])
        .to_string();
    let dup = rng.pick(&["", "Host: alpha.example.test\r\n"]);
    let method = rng.pick(METHODS);
    let end = rng.pick(&["\r\n", "\n"]);
    let head = format!(
        "{method} /p HTTP/1.1\r\n{before}{name}:{blanks}{host}{port}{trailing}\r\n{dup}Accept: */*\r\n\r\n"
    );
    if end == "\n" { head.replace("\r\n", "\n") } else { head }
}

fn connect(rng: &mut Rng) -> Vec<u8> {
    let method = rng.pick(&["CONNECT", "connect", "Connect"]);
    let sep = rng.pick(SEPARATORS);
    let user = rng.pick(&["", "u@"]);
    let host = rng.pick(HOSTS);
    let port = rng.pick(&[":443", "", ":80"]);
    let version = rng.pick(VERSIONS);
    let mut out =
        format!("{method}{sep}{user}{host}{port}{sep}{version}\r\nHost: {host}{port}\r\n\r\n").into_bytes();
    match rng.pick(&["tls", "http", "none"]) {
        "tls" => out.extend(client_hello(
            Some(rng.pick(&[ALPHA, DENIED, "DENIED.example.test."]).as_bytes()),
            2,
            1,
        )),
        "http" => {
            out.extend(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", rng.pick(&[ALPHA, DENIED])).into_bytes())
        }
        _ => {}
    }
    out
}

fn socks(rng: &mut Rng) -> Vec<u8> {
    let names: &[&[u8]] = &[
        b"denied.example.test",
        b"DENIED.Example.TEST",
        b"denied.example.test.",
        b"denied.example.test\0.alpha.example.test",
        b"\0denied.example.test",
        b"127.0.0.12",
        b"2130706444",
        b"u@denied.example.test",
        b"denied%2Eexample.test",
    ];
    let choice = |rng: &mut Rng, n: usize| {
        rng.0 ^= rng.0 << 13;
        rng.0 ^= rng.0 >> 7;
        rng.0 ^= rng.0 << 17;
        (rng.0 % n as u64) as usize
    };
    let name = names[choice(rng, names.len())];
    let mut out = Vec::new();
    match choice(rng, 4) {
        0 | 1 => {
            let with_auth = choice(rng, 2) == 0;
            out.extend_from_slice(if with_auth { &[5, 2, 0, 2] } else { &[5, 1, 0] });
            if with_auth {
                out.extend_from_slice(b"\x01\x03bob\x05alice");
            }
            match choice(rng, 3) {
                0 => {
                    out.extend_from_slice(&[5, 1, 0, 3, name.len() as u8]);
                    out.extend_from_slice(name);
                }
                1 => out.extend_from_slice(&[5, 1, 0, 1, 127, 0, 0, 12]),
                _ => {
                    out.extend_from_slice(&[5, 1, 0, 4]);
                    out.extend_from_slice(&"::ffff:127.0.0.12".parse::<Ipv6Addr>().expect("v6").octets());
                }
            }
            out.extend_from_slice(&443u16.to_be_bytes());
        }
        2 => {
            out.extend_from_slice(&[4, 1, 1, 187, 0, 0, 0, 1]);
            out.extend_from_slice(b"user\0");
            let cut = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            out.extend_from_slice(&name[..cut]);
            out.push(0);
        }
        _ => {
            out.extend_from_slice(&[4, 1, 1, 187, 127, 0, 0, 12]);
            out.extend_from_slice(b"\0");
        }
    }
    if choice(rng, 2) == 0 {
        out.extend(client_hello(Some(if choice(rng, 2) == 0 { ALPHA } else { DENIED }.as_bytes()), 1, 1));
    }
    out
}

fn generated() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..4000 {
        out.push((format!("generated absolute-form #{i}"), absolute(&mut rng).into_bytes()));
        out.push((format!("generated origin-form #{i}"), origin_form(&mut rng).into_bytes()));
    }
    for i in 0..2000 {
        out.push((format!("generated CONNECT #{i}"), connect(&mut rng)));
        out.push((format!("generated SOCKS #{i}"), socks(&mut rng)));
    }
    for (before, records) in [(0, 1), (1, 1), (5, 3), (47, 1), (48, 1), (60, 2), (3, 8), (3, 9)] {
        for sni in [Some(DENIED.as_bytes()), Some(b"DENIED.Example.TEST.".as_slice()), None] {
            out.push((
                format!("generated ClientHello {before} before SNI, {records} records"),
                client_hello(sni, before, records),
            ));
        }
    }
    // Every host form with every userinfo and port, absolute and CONNECT, plain otherwise.
    for host in HOSTS {
        for user in USERINFO {
            for port in PORTS {
                out.push((
                    format!("generated absolute {user}{host}{port}"),
                    format!("GET http://{user}{host}{port}/ HTTP/1.1\r\nHost: {ALPHA}\r\n\r\n").into_bytes(),
                ));
                out.push((
                    format!("generated CONNECT {user}{host}{port}"),
                    format!("CONNECT {user}{host}{port} HTTP/1.1\r\n\r\n").into_bytes(),
                ));
            }
        }
    }
    out
}

/// Request forms checked against the real proxies (squid 5.7, tinyproxy 1.11.1, microsocks 1.0.3, with
/// alpha and denied resolving to different addresses and the origin logging where it was reached):
/// (form, bytes, the host the proxy connected to). Both parsers must name that host.
fn proxy_forms() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let get =
        |target: &str, host: &str| format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    let socks5 = |name: &[u8]| {
        let mut m = vec![5, 1, 0, 5, 1, 0, 3, name.len() as u8];
        m.extend_from_slice(name);
        m.extend_from_slice(&80u16.to_be_bytes());
        m
    };
    vec![
        // squid and tinyproxy: both drop the userinfo and fetch denied.
        ("userinfo", get("http://u@denied.example.test/", ALPHA), DENIED),
        ("userinfo with password", get("http://u:p@denied.example.test/", ALPHA), DENIED),
        // squid takes the last `@` (tinyproxy the first, and fails to resolve `v@denied...`).
        ("two @", get("http://u@v@denied.example.test/", ALPHA), DENIED),
        // Both take `denied.example.test\` as userinfo and fetch alpha.
        ("backslash before @", get("http://denied.example.test\\@alpha.example.test/", ALPHA), ALPHA),
        ("port", get("http://denied.example.test:80/", ALPHA), DENIED),
        ("upper case", get("http://DENIED.Example.TEST/", ALPHA), DENIED),
        ("trailing dot (squid)", get("http://denied.example.test./", ALPHA), DENIED),
        ("empty port (tinyproxy)", get("http://denied.example.test:/", ALPHA), DENIED),
        ("scheme in capitals", get("HTTP://denied.example.test/", ALPHA), DENIED),
        ("no path", get("http://denied.example.test", ALPHA), DENIED),
        ("query right after the host (squid)", get("http://denied.example.test?x", ALPHA), DENIED),
        ("IPv4-mapped IPv6 literal", get("http://[::ffff:127.0.0.12]/", ALPHA), "::ffff:127.0.0.12"),
        ("decimal IPv4", get("http://2130706444/", ALPHA), "127.0.0.12"),
        ("hex IPv4", get("http://0x7f00000c/", ALPHA), "127.0.0.12"),
        ("short IPv4", get("http://127.12/", ALPHA), "127.0.0.12"),
        ("octal IPv4", get("http://0177.0.0.12/", ALPHA), "127.0.0.12"),
        (
            "tab between the words (squid)",
            b"GET\thttp://denied.example.test/\tHTTP/1.1\r\nHost: alpha.example.test\r\n\r\n".to_vec(),
            DENIED,
        ),
        (
            "two spaces",
            b"GET  http://denied.example.test/  HTTP/1.1\r\nHost: alpha.example.test\r\n\r\n".to_vec(),
            DENIED,
        ),
        (
            "empty line first",
            b"\r\nGET http://denied.example.test/ HTTP/1.1\r\nHost: alpha.example.test\r\n\r\n".to_vec(),
            DENIED,
        ),
        (
            "method in lower case",
            b"get http://denied.example.test/ HTTP/1.1\r\nHost: alpha.example.test\r\n\r\n".to_vec(),
            DENIED,
        ),
        ("HTTP/1.0 without Host", b"GET http://denied.example.test/ HTTP/1.0\r\n\r\n".to_vec(), DENIED),
        // tinyproxy serves origin-form requests by their Host header (squid answers 400).
        ("origin-form, Host", get("/", DENIED), DENIED),
        (
            "origin-form, Host after three spaces",
            b"GET / HTTP/1.1\r\nHost:   denied.example.test\r\n\r\n".to_vec(),
            DENIED,
        ),
        (
            "origin-form, Host after tabs",
            b"GET / HTTP/1.1\r\nHost:\t\tdenied.example.test\r\n\r\n".to_vec(),
            DENIED,
        ),
        (
            "origin-form, Host without a blank",
            b"GET / HTTP/1.1\r\nHost:denied.example.test\r\n\r\n".to_vec(),
            DENIED,
        ),
        (
            "origin-form, host in lower case",
            b"GET / HTTP/1.1\r\nhost: denied.example.test\r\n\r\n".to_vec(),
            DENIED,
        ),
        (
            "origin-form, two Host lines (the first counts)",
            b"GET / HTTP/1.1\r\nHost: alpha.example.test\r\nHost: denied.example.test\r\n\r\n".to_vec(),
            ALPHA,
        ),
        (
            "origin-form, two Host lines, denied first",
            b"GET / HTTP/1.1\r\nHost: denied.example.test\r\nHost: alpha.example.test\r\n\r\n".to_vec(),
            DENIED,
        ),
        ("origin-form, LF line ends", b"GET / HTTP/1.1\nHost: denied.example.test\n\n".to_vec(), DENIED),
        (
            "CONNECT",
            b"CONNECT denied.example.test:80 HTTP/1.1\r\nHost: alpha.example.test:80\r\n\r\n".to_vec(),
            DENIED,
        ),
        (
            "CONNECT, capitals and trailing dot (squid)",
            b"CONNECT DENIED.example.test.:80 HTTP/1.1\r\n\r\n".to_vec(),
            DENIED,
        ),
        (
            "CONNECT with userinfo (tinyproxy)",
            b"CONNECT u@denied.example.test:80 HTTP/1.1\r\n\r\n".to_vec(),
            DENIED,
        ),
        ("CONNECT to a decimal IPv4", b"CONNECT 2130706444:80 HTTP/1.1\r\n\r\n".to_vec(), "127.0.0.12"),
        ("CONNECT, two spaces", b"CONNECT  denied.example.test:80 HTTP/1.1\r\n\r\n".to_vec(), DENIED),
        (
            "CONNECT in lower case (squid)",
            b"connect denied.example.test:80 HTTP/1.1\r\n\r\n".to_vec(),
            DENIED,
        ),
        (
            "CONNECT to an IPv4-mapped IPv6 literal",
            b"CONNECT [::ffff:127.0.0.12]:80 HTTP/1.1\r\n\r\n".to_vec(),
            "::ffff:127.0.0.12",
        ),
        // microsocks resolves the name as a C string and the numeric forms as addresses.
        ("SOCKS5 name", socks5(b"denied.example.test"), DENIED),
        ("SOCKS5 name in capitals", socks5(b"DENIED.example.TEST"), DENIED),
        ("SOCKS5 name with a NUL", socks5(b"denied.example.test\0.alpha.example.test"), DENIED),
        ("SOCKS5 name that is an IPv4 address", socks5(b"127.0.0.12"), "127.0.0.12"),
        ("SOCKS5 name that is a decimal IPv4", socks5(b"2130706444"), "127.0.0.12"),
        ("SOCKS5 IPv4", vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 12, 0, 80], "127.0.0.12"),
    ]
}

#[test]
fn kernel_scanners_name_what_the_proxies_use() {
    let mut wrong = Vec::new();
    for (form, bytes, target) in proxy_forms() {
        let kernel = kernel_read(&bytes).unwrap_or_else(|e| panic!("{form}: {e}"));
        let user = user_read(&bytes);
        let user_target = user_outer(&user);
        let kernel_ok = match &kernel.outer {
            Kernel::Named(k) => k == target,
            // The kernel leaves IPv6 literals to the connect-time address and user space.
            _ => target.parse::<Ipv6Addr>().is_ok(),
        };
        if !kernel_ok || user_target.as_deref() != Some(target) {
            wrong.push(format!(
                "{form}: the proxy reaches {target}; kernel {:?}, user space {user_target:?}",
                kernel.outer
            ));
        }
    }
    assert!(wrong.is_empty(), "parsers that do not follow the proxies:\n{}", wrong.join("\n"));
}

#[test]
fn kernel_and_user_space_name_the_same_target() {
    let mut inputs = fixtures();
    let fixture_count = inputs.len();
    let corpus = corpus_streams();
    let corpus_count = corpus.len();
    inputs.extend(corpus);
    let fuzz = fuzz_inputs();
    let fuzz_count = fuzz.len();
    inputs.extend(fuzz);
    let gen_items = generated();
    let generated_count = gen_items.len();
    inputs.extend(gen_items);
    inputs.extend(proxy_forms().into_iter().map(|(form, bytes, _)| (format!("proxy form {form}"), bytes)));

    let mut tally = Tally::default();
    for (origin, bytes) in &inputs {
        tally.compare(origin, bytes);
    }
    println!(
        "compared {} inputs ({fixture_count} fixtures, {corpus_count} capture streams, {fuzz_count} fuzz inputs, \
         {generated_count} generated, {} proxy forms): {} layers, {} named alike",
        tally.inputs,
        proxy_forms().len(),
        tally.layers,
        tally.agreed_named
    );
    for (reason, (n, example)) in &tally.documented {
        println!("  {n:5} expected differences: {reason}\n        e.g. {example}");
    }
    assert!(
        fixture_count > 5 && corpus_count > 20,
        "too few real inputs: {fixture_count} fixtures, {corpus_count} streams"
    );
    assert!(
        tally.failures.is_empty(),
        "{} disagreements between the kernel's scanners and user space:\n{}",
        tally.failures.len(),
        tally.failures.iter().take(25).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn explained_only_when_the_reason_applies() {
    // The reasons are predicates, not a blanket pass: a kernel that names another host than user space
    // is always a failure, whatever the input.
    let found = user_read(b"GET http://alpha.example.test/ HTTP/1.1\r\n\r\n");
    let wrong = Kernel::Named(DENIED.into());
    assert!(explain(Layer::Outer, &wrong, &wrong, Some(ALPHA), b"GET ...", &found).is_err());
    assert!(
        explain(
            Layer::Outer,
            &Kernel::Unnamed,
            &Kernel::Unnamed,
            Some(ALPHA),
            b"GET http://alpha.example.test/ HTTP/1.1\r\n\r\n",
            &found
        )
        .is_err()
    );
    assert_eq!(
        explain(
            Layer::Outer,
            &Kernel::Unnamed,
            &Kernel::Unnamed,
            Some("::1"),
            b"GET http://[::1]/ HTTP/1.1\r\n\r\n",
            &found
        ),
        Ok(Some(IPV6_LITERAL))
    );
    let _ = TargetSource::Connect;
}

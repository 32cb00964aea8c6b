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

#![expect(unused_crate_dependencies, reason = "a test target sees every dev-dependency of the package")]

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
#[path = "common/corpus_dir.rs"]
mod corpus_dir;

use corpus_dir::corpus_dir;
use std::path::{Path, PathBuf};

#[path = "kernel_scan/compare.rs"]
mod compare;

use compare::*;

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
        let bytes = |n: usize| String::from_utf8_lossy(&stream[..stream.len().min(n)]).into_owned();
        let outcomes = match compare(stream) {
            Ok(outcomes) => outcomes,
            Err(why) => {
                self.failures.push(format!("{origin}: {why}\n  bytes: {:?}", bytes(160)));
                return;
            }
        };
        for LayerOutcome { layer, kernel, user, result } in outcomes {
            self.layers += 1;
            match result {
                Ok(None) => self.agreed_named += usize::from(user.is_some()),
                Ok(Some(reason)) => {
                    if std::env::var("KERNEL_SCAN_SHOW").is_ok_and(|v| reason.contains(&v)) {
                        eprintln!(
                            "{origin} ({layer:?}): kernel {kernel:?}, user space {user:?}: {:?}",
                            bytes(120)
                        );
                    }
                    let seen = self
                        .documented
                        .entry(reason)
                        .or_insert_with(|| (0, format!("{origin} ({layer:?}): {:?}", bytes(90))));
                    seen.0 += 1;
                }
                Err(why) => {
                    self.failures.push(format!("{origin} ({layer:?}): {why}\n  bytes: {:?}", bytes(160)))
                }
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

/// Inputs the fuzzers kept (fuzz/corpus/TARGET) and kernel_scan's findings (fuzz/artifacts/kernel_scan/findings),
/// both ignored by git, when a fuzz run left them here.
fn fuzz_inputs() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut out = Vec::new();
    for target in ["kernel_scan", "http_request_head", "socks", "tls_client_hello", "flow_inspector"] {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else { continue };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.into_iter().take(5000) {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            // flow_inspector inputs start with a seed byte and may carry server bytes after a marker.
            let client = match target {
                "flow_inspector" => {
                    let rest = bytes.get(1..).unwrap_or_default();
                    let end = rest.windows(10).position(|w| w == b"--server--").unwrap_or(rest.len());
                    rest[..end].to_vec()
                }
                _ => bytes,
            };
            out.push((format!("fuzz {target} {}", path.display()), client));
        }
    }
    // What a bounded fuzz run kept as findings (disagreements no reason covers): they fail here until fixed
    // or written down.
    let findings = root.join("../artifacts/kernel_scan/findings");
    if let Ok(entries) = std::fs::read_dir(&findings) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            out.push((format!("fuzz finding {}", path.display()), bytes));
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
}

#[test]
fn a_chained_connect_is_judged_by_the_kernel() {
    // Found by fuzzing: a CONNECT to a second proxy inside a SOCKS4 tunnel, and inside a CONNECT tunnel.
    let inner = b"CONNECT denied.example.test:443 HTTP/1.1\r\nHost: denied.example.test:443\r\n\r\n";
    let mut socks4 = vec![4, 1, 0x0c, 0x38, 10, 0, 0, 1, b'u', 0];
    socks4.extend_from_slice(inner);
    let mut connect =
        b"CONNECT alpha.example.test:443 HTTP/1.1\r\nHost: alpha.example.test:443\r\n\r\n".to_vec();
    connect.extend_from_slice(inner);
    for stream in [socks4, connect] {
        let kernel = kernel_read(&stream).expect("a sound reading");
        assert_eq!(
            kernel.tunnel,
            Some(Kernel::Named(DENIED.into())),
            "{:?}",
            String::from_utf8_lossy(&stream)
        );
        let outcomes = compare(&stream).expect("a sound reading");
        let tunnel = outcomes.iter().find(|o| o.layer == Layer::Tunnel).expect("a tunnel layer");
        assert_eq!(tunnel.result, Ok(Some(CHAINED_CONNECT)));
        // The reason is the kernel judging the inner CONNECT's own name, not any name.
        let message = &stream[kernel.tunnel_at.expect("the tunnel's start")..];
        let other = Kernel::Named("beta.example.test".into());
        assert_eq!(explain_tunnel_message(&other, None, message), None);
    }
}

#[test]
fn what_fuzzing_found_stays_explained() {
    // The smallest forms of what the fuzz walks found (the corpora that found them are not in git).
    let mut repeated_sni = client_hello(Some(DENIED.as_bytes()), 1, 1);
    let first =
        repeated_sni.windows(6).position(|w| w == [0x10, 0, 0, 2, 0, 0]).expect("the extension before");
    repeated_sni[first] = 0; // server_name, with an empty list, before the real one
    let mut socks4_then_hello = vec![4, 1, 1, 0xbb, 10, 0, 0, 1, b'u', 0];
    socks4_then_hello.extend_from_slice(&repeated_sni);
    let socks4_connect = [4u8, 1, 1, 0xbb, 10, 0, 0, 1, b'u', 0];
    let repeated_sni_free = client_hello(Some(DENIED.as_bytes()), 0, 1);
    let mut blank_tunnel = b"CONNECT alpha.example.test:443 HTTP/1.1\r\n\r\n".to_vec();
    blank_tunnel.extend_from_slice(&[b'\r'; 90]);
    blank_tunnel.extend_from_slice(b"GET / HTTP/1.1\r\nHost: denied.example.test\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("words before an @ in Host", b"GET / HTTP/1.1\r\nHost:gET / @t\n\r\n".to_vec(), USER_MALFORMED),
        ("a / before an @ in Host", b"GET / HTTP/1.1\r\nHost: a//b:8@t\r\n\r\n".to_vec(), USER_MALFORMED),
        ("CONNECT without a version", b"CONNECT \rq4 m\n\n\n".to_vec(), ""),
        (
            "a second Host line after one that is no host",
            b"GET / HTTP/1.1\r\nHost:\xdf\xdf\xdf@ t: g\x02.1\r\nHost: alpha.example.test\r\n\r\n".to_vec(),
            SECOND_HOST_LINE,
        ),
        ("server_name twice", repeated_sni.clone(), REPEATED_SERVER_NAME),
        ("server_name twice in a SOCKS4 tunnel", socks4_then_hello, REPEATED_SERVER_NAME),
        (
            "a CONNECT in a SOCKS4 tunnel",
            [
                &[4u8, 1, 1, 0xbb, 10, 0, 0, 1, b'u', 0][..],
                b"CONNECT denied.example.test:443 HTTP/1.1\r\n\r\n",
            ]
            .concat(),
            CHAINED_CONNECT,
        ),
        (
            "a userinfo-only CONNECT in a CONNECT tunnel",
            b"CONNECT alpha.example.test:443 HTTP/1.1\r\n\r\nCONNECT @denied.example.test:443 HTTP/1.1\r\n\r\n"
                .to_vec(),
            CHAINED_CONNECT,
        ),
        (
            "a scheme longer than the kernel reads",
            b"GET hddddddddddddttp://denied.example.test/ HTTP/1.1\r\nHost: alpha.example.test\r\n\r\n".to_vec(),
            BEYOND_BOUNDS,
        ),
        ("a tunnel's request after 90 line ends", blank_tunnel, BEYOND_BOUNDS),
        (
            "a greeting again after two sub-negotiations",
            [&[5u8, 2, 0, 2, 1, 1, b'u', 1, b'p', 1, 0, 0, 5, 1, 0][..], &[5, 1, 0, 1, 10, 0, 0, 1, 1, 0xbb]].concat(),
            SOCKS_AFTER_REPEATED_GREETING,
        ),
        (
            "a long scheme after empty lines",
            b"\n\n\nGET hddddddddddddttp://denied.example.test/ HTTP/1.1\r\nHost: alpha.example.test\r\n\r\n".to_vec(),
            BEYOND_BOUNDS,
        ),
        ("line ends before a tunnel's ClientHello", [&socks4_connect[..], b"\r\r", &repeated_sni_free].concat(), LINE_ENDS_BEFORE_TUNNEL),
    ];
    for (what, stream, reason) in cases {
        let outcomes = compare(&stream).unwrap_or_else(|e| panic!("{what}: {e}"));
        let reasons: Vec<_> =
            outcomes.iter().map(|o| o.result.clone().unwrap_or_else(|e| panic!("{what}: {e}"))).collect();
        if reason.is_empty() {
            assert!(reasons.iter().all(Option::is_none), "{what}: agreed, not explained: {reasons:?}");
            assert!(outcomes.iter().all(|o| o.user.is_none()), "{what}: user space names nothing");
        } else {
            assert!(reasons.contains(&Some(reason)), "{what}: {reasons:?}");
        }
    }
}

#[test]
fn a_socks4a_request_and_its_client_hello_in_one_write_agree() {
    // A fuzz walk reported that a client writing the SOCKS4a request and the tunnel's ClientHello at once
    // had the kernel judge the SOCKS4a name and user space name nothing (its corpus was lost): both name
    // both, the SOCKS4a name outside and the SNI inside.
    let hello = client_hello(Some(DENIED.as_bytes()), 0, 1);
    let stream = [&[4u8, 1, 1, 0xbb, 0, 0, 0, 1, b'u', 0][..], b"four.example\0", &hello].concat();
    let outcomes = compare(&stream).expect("a sound kernel reading");
    for o in &outcomes {
        assert_eq!(o.result, Ok(None), "{:?}: the kernel {:?}, user space {:?}", o.layer, o.kernel, o.user);
    }
    assert_eq!(outcomes[0].user.as_deref(), Some("four.example"));
    assert_eq!(outcomes[1].user.as_deref(), Some(DENIED));
}

//! Per-message cost of the first-bytes parsers and of event serialisation, on the byte fixtures real
//! clients sent (tests/data). `cargo xtask bench` runs these with a short measurement time and puts the
//! figures in its table; `cargo bench -p monitor-core` runs them at criterion's defaults.

#![expect(unused_crate_dependencies, reason = "a test target sees every dev-dependency of the package")]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use monitor_core::{
    event::{ActionType, DeviceEvent, InitiatingProcess, rfc3339_utc},
    extract::{
        FlowInspector, Step,
        http::parse_request_head,
        socks::{parse_socks5_client_message, parse_socks5_greeting},
        tls::{ClientHelloReader, parse_client_hello},
    },
};

/// A segment's worth of payload on a 1500-byte MTU path (what splits a 2 KB ClientHello in two).
const SEGMENT: usize = 1448;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read fixture {path}: {e}"));
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("hex digits are ASCII");
            u8::from_str_radix(pair, 16).unwrap_or_else(|e| panic!("fixture {path} is not hex: {e}"))
        })
        .collect()
}

/// Splits `CONNECT ... \r\n\r\n` from the tunnel bytes that follow it.
fn split_connect(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
        .expect("fixture starts with a CONNECT head");
    bytes.split_at(end)
}

/// The bytes of each SOCKS5 client message: greeting, user/pass, request, then the tunnel.
fn socks5_request(bytes: &[u8]) -> &[u8] {
    let Step::Done(_, greeting) = parse_socks5_greeting(bytes) else {
        panic!("fixture starts with a greeting")
    };
    let mut at = greeting;
    loop {
        match parse_socks5_client_message(&bytes[at..]) {
            Step::Done(monitor_core::extract::socks::Socks5ClientMessage::Request(_), n) => {
                return &bytes[at..at + n];
            }
            Step::Done(_, n) => at += n,
            other => panic!("fixture's SOCKS5 messages do not parse: {other:?}"),
        }
    }
}

fn inspect(chunks: &[&[u8]]) -> FlowInspector {
    let mut inspector = FlowInspector::new();
    for chunk in chunks {
        inspector.client_bytes(chunk);
    }
    inspector
}

fn parsers(c: &mut Criterion) {
    let small_hello = fixture("openssl_client_hello.hex");
    let chromium = fixture("chromium_connect_pq.client.hex");
    let (chromium_connect, pq_hello) = split_connect(&chromium);
    let curl = fixture("connect_curl.client.hex");
    let (curl_connect, _) = split_connect(&curl);
    let socks5 = fixture("socks5h_curl.client.hex");
    let socks5_req = socks5_request(&socks5);
    assert!(pq_hello.len() > SEGMENT, "the Chromium ClientHello spans two segments");
    assert!(
        matches!(parse_client_hello(pq_hello), Step::Done(ref h, _) if h.sni.as_deref() == Some("pq.example"))
    );

    let mut tls = c.benchmark_group("tls");
    tls.bench_function("client_hello_small", |b| b.iter(|| parse_client_hello(black_box(&small_hello))));
    tls.bench_function("client_hello_pq_2k", |b| b.iter(|| parse_client_hello(black_box(pq_hello))));
    tls.bench_function("client_hello_pq_2k_two_segments", |b| {
        b.iter(|| {
            let mut reader = ClientHelloReader::default();
            let first = reader.read(black_box(&pq_hello[..SEGMENT]));
            assert!(matches!(first, Step::NeedMore(_)));
            reader.read(black_box(pq_hello))
        })
    });
    tls.finish();

    let mut http = c.benchmark_group("http");
    http.bench_function("connect_head_curl", |b| b.iter(|| parse_request_head(black_box(curl_connect))));
    http.bench_function("connect_head_chromium", |b| {
        b.iter(|| parse_request_head(black_box(chromium_connect)))
    });
    http.finish();

    let mut socks = c.benchmark_group("socks");
    socks.bench_function("socks5_request", |b| b.iter(|| parse_socks5_client_message(black_box(socks5_req))));
    socks.finish();

    // Whole flows as the daemon feeds them: the CONNECT head, then the ClientHello in two segments.
    let mut flow = c.benchmark_group("inspector");
    flow.bench_function("connect_tunnel_pq_2k", |b| {
        b.iter(|| {
            inspect(&[
                black_box(chromium_connect),
                black_box(&pq_hello[..SEGMENT]),
                black_box(&pq_hello[SEGMENT..]),
            ])
        })
    });
    flow.bench_function("socks5h_tunnel", |b| b.iter(|| inspect(&[black_box(&socks5)])));
    flow.finish();

    let inspection = inspect(&[chromium_connect, pq_hello]).inspection().clone();
    let process = InitiatingProcess {
        pid: 4242,
        parent_pid: Some(1),
        file_name: "chromium".into(),
        folder_path: Some("/usr/lib/chromium".into()),
        command_line: "/usr/lib/chromium/chromium --proxy-server=http://10.0.0.5:3128 https://pq.example/"
            .into(),
        account_name: "alice".into(),
        account_uid: 1000,
    };
    let event = DeviceEvent::new(
        rfc3339_utc(1_709_210_096_789_012_000),
        "workstation-17".into(),
        ActionType::ConnectionSuccess,
        ("10.0.0.5".into(), 3128),
        ("10.0.0.2".into(), 40_000),
        "Tcp",
        inspection.remote_url().unwrap_or_default().to_string(),
        Some(&process),
        123_456,
        inspection.additional_fields(),
    );
    let mut events = c.benchmark_group("event");
    events.bench_function("to_json_line", |b| b.iter(|| black_box(&event).to_json_line()));
    events.finish();
}

criterion_group!(benches, parsers);
criterion_main!(benches);

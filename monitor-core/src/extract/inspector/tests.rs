use super::*;
use crate::extract::tests::unhex;
use crate::extract::tls::tests::{client_hello_message, records, sni_extension};

macro_rules! fixture {
    ($name:literal) => {
        unhex(include_str!(concat!("../../../tests/data/", $name, ".hex")))
    };
}

/// Piece sizes each fixture is fed in; 1 is the hardest (every boundary is a split).
const PIECES: [usize; 6] = [1, 2, 3, 7, 100, usize::MAX];

/// Feeds `client` in pieces of `piece` bytes, then `server` the same way.
fn inspect_in_pieces(client: &[u8], server: &[u8], piece: usize) -> FlowInspector {
    let mut inspector = FlowInspector::new();
    for chunk in client.chunks(piece.min(client.len().max(1))) {
        inspector.client_bytes(chunk);
    }
    for chunk in server.chunks(piece.min(server.len().max(1))) {
        inspector.server_bytes(chunk);
    }
    inspector
}

/// Inspects `client` (and `server`) in every piece size, checks they all agree, and returns the answer.
fn inspect(client: &[u8], server: &[u8]) -> (Inspection, bool) {
    let whole = inspect_in_pieces(client, server, usize::MAX);
    for piece in PIECES {
        let split = inspect_in_pieces(client, server, piece);
        assert_eq!(split.inspection(), whole.inspection(), "pieces of {piece} bytes disagree with one piece");
        assert_eq!(split.is_complete(), whole.is_complete(), "pieces of {piece}");
    }
    (whole.inspection().clone(), whole.is_complete())
}

fn tls_records(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    records(&client_hello_message(extensions), 1 << 14)
}

#[test]
fn curl_connect_then_client_hello() {
    let client = fixture!("connect_curl.client");
    let server = fixture!("connect_curl.server");
    let (found, complete) = inspect(&client, &server);
    assert!(complete);
    assert_eq!(found.source, Some(TargetSource::Connect));
    assert_eq!(found.host.as_deref(), Some("curl.example"));
    assert_eq!(found.port, Some(443));
    assert_eq!(found.connect_host.as_deref(), Some("curl.example"));
    assert_eq!(found.sni.as_deref(), Some("curl.example"));
    assert!(found.tunneled_sni && found.tunneled && !found.fronting);
    assert_eq!(found.proxy_status, Some(200));
    assert_eq!(found.protocol, Some(WireProtocol::Http));
    assert_eq!(found.malformed, None);
    assert_eq!(found.remote_url(), Some("curl.example"));
}

#[test]
fn connect_head_alone_wants_the_tunnel_hello() {
    let client = fixture!("connect_curl.client");
    let head_len = client.windows(4).position(|w| w == b"\r\n\r\n").expect("head end") + 4;
    let mut inspector = FlowInspector::new();
    inspector.client_bytes(&client[..head_len]);
    assert!(inspector.wants_more() && !inspector.is_complete());
    assert_eq!(inspector.inspection().connect_host.as_deref(), Some("curl.example"));
    inspector.client_bytes(&client[head_len..]);
    assert!(inspector.is_complete() && !inspector.wants_more());
}

#[test]
fn chromium_post_quantum_hello_in_a_tunnel() {
    let (found, complete) = inspect(&fixture!("chromium_connect_pq.client"), b"HTTP/1.1 200 OK\r\n\r\n");
    assert!(complete);
    assert_eq!(found.connect_host.as_deref(), Some("pq.example"));
    assert_eq!(found.sni.as_deref(), Some("pq.example"));
    // Chromium always offers (GREASE) ECH; the outer SNI is still the real name.
    assert!(found.ech && found.tunneled_sni && !found.fronting);
    assert_eq!(found.malformed, None);
}

#[test]
fn socks5_with_password_then_client_hello() {
    let (found, complete) = inspect(&fixture!("socks5h_curl.client"), &fixture!("socks5h_curl.server"));
    assert!(complete);
    assert_eq!(found.source, Some(TargetSource::Socks5));
    assert_eq!(found.socks_host.as_deref(), Some("socks.example"));
    assert_eq!((found.host.as_deref(), found.port), (Some("socks.example"), Some(443)));
    assert_eq!(found.sni.as_deref(), Some("socks.example"));
    assert_eq!(found.proxy_status, Some(0));
    assert_eq!(found.protocol, Some(WireProtocol::Socks5));
}

#[test]
fn socks4a_then_client_hello() {
    let (found, complete) = inspect(&fixture!("socks4a_curl.client"), &fixture!("socks4a_curl.server"));
    assert!(complete);
    assert_eq!(found.source, Some(TargetSource::Socks4a));
    assert_eq!(found.socks_host.as_deref(), Some("four.example"));
    assert_eq!(found.sni.as_deref(), Some("four.example"));
    assert_eq!(found.proxy_status, Some(90));
}

#[test]
fn client_bytes_alone_are_enough() {
    for client in
        [fixture!("socks5h_curl.client"), fixture!("socks4a_curl.client"), fixture!("connect_curl.client")]
    {
        let (found, complete) = inspect(&client, &[]);
        assert!(complete && found.tunneled_sni, "{found:?}");
        assert_eq!(found.proxy_status, None);
    }
}

#[test]
fn absolute_form_request() {
    let (found, complete) = inspect(&fixture!("absolute_curl.client"), &fixture!("absolute_curl.server"));
    assert!(complete);
    assert_eq!(found.source, Some(TargetSource::AbsoluteForm));
    assert_eq!((found.host.as_deref(), found.port), (Some("plain.example"), Some(8080)));
    assert_eq!(found.url.as_deref(), Some("http://plain.example:8080/a/b?c=d"));
    assert_eq!(found.http_host.as_deref(), Some("plain.example"));
    // Only CONNECT and SOCKS replies are a proxy status.
    assert_eq!(found.proxy_status, None);
    assert_eq!(found.remote_url(), Some("http://plain.example:8080/a/b?c=d"));
}

#[test]
fn plain_http_host_header() {
    let (found, complete) = inspect(&fixture!("ndpi_http.client"), &[]);
    assert!(complete);
    assert_eq!(found.source, Some(TargetSource::HttpHost));
    assert_eq!(found.http_host.as_deref(), Some("google.com"));
    assert_eq!(found.url.as_deref(), Some("http://google.com/"));
    assert_eq!(found.port, None);
}

#[test]
fn proxy_protocol_line_is_skipped() {
    let (found, complete) = inspect(&fixture!("ndpi_haproxy.client"), &[]);
    assert!(complete);
    assert_eq!(found.source, Some(TargetSource::TlsSni));
    assert_eq!(found.sni.as_deref(), Some("aaaaaaaaaaaaaaaa.xx"));
    assert_eq!(found.protocol, Some(WireProtocol::Tls));
}

#[test]
fn sslv2_hello_names_nothing_and_is_not_malformed() {
    let (found, complete) = inspect(&fixture!("zeek_sslv2.client"), &[]);
    assert!(complete);
    assert_eq!(found.protocol, Some(WireProtocol::Sslv2));
    assert_eq!((found.host, found.malformed), (None, None));
}

#[test]
fn fronting_is_flagged_when_connect_and_sni_differ() {
    let mut client = b"CONNECT allowed.example:443 HTTP/1.1\r\n\r\n".to_vec();
    client.extend(tls_records(&[sni_extension("Denied.Example.")]));
    let (found, _) = inspect(&client, &[]);
    assert!(found.fronting);
    assert_eq!(found.host.as_deref(), Some("allowed.example"));
    assert_eq!(found.sni.as_deref(), Some("denied.example"));
    assert_eq!(found.names(), ["allowed.example", "denied.example"]);

    let mut same = b"CONNECT Same.Example.:443 HTTP/1.1\r\n\r\n".to_vec();
    same.extend(tls_records(&[sni_extension("same.example")]));
    assert!(!inspect(&same, &[]).0.fronting);
}

#[test]
fn line_ends_after_a_connect_head_do_not_hide_the_hello() {
    // suricata http-connect-tls ends its CONNECT with an extra LF.
    let mut client = b"CONNECT abc:443 HTTP/1.1\r\n\r\n\n".to_vec();
    client.extend(tls_records(&[sni_extension("abc")]));
    let (found, complete) = inspect(&client, &[]);
    assert!(complete && found.tunneled_sni);
}

#[test]
fn socks5_by_address_takes_the_tunnel_name_for_remote_url() {
    let mut client = vec![5, 1, 0, 5, 1, 0, 1, 93, 184, 216, 119, 1, 187];
    client.extend(tls_records(&[sni_extension("www.example.com")]));
    let (found, _) = inspect(&client, &[]);
    assert_eq!((found.source, found.host.as_deref()), (Some(TargetSource::Socks5), Some("93.184.216.119")));
    assert_eq!(found.socks_host, None);
    assert!(!found.fronting, "an address is not compared with a name");
    assert_eq!(found.remote_url(), Some("www.example.com"));
}

#[test]
fn inner_plain_http_in_a_socks4_tunnel() {
    let mut client = vec![4, 1, 0, 80, 93, 184, 216, 119, 0];
    client.extend_from_slice(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n");
    let (found, complete) = inspect(&client, &[0, 90, 0, 0, 0, 0, 0, 0]);
    assert!(complete && found.tunneled && !found.tunneled_sni);
    assert_eq!(found.source, Some(TargetSource::Socks4));
    assert_eq!(found.http_host.as_deref(), Some("www.example.com"));
    assert_eq!(found.proxy_status, Some(90));
}

#[test]
fn connect_retried_after_407() {
    let mut client = b"CONNECT a.example:443 HTTP/1.1\r\n\r\n".to_vec();
    client.extend_from_slice(b"CONNECT a.example:443 HTTP/1.1\r\nProxy-Authorization: Basic eDp5\r\n\r\n");
    client.extend(tls_records(&[sni_extension("a.example")]));
    let server =
        b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 4\r\n\r\ndenyHTTP/1.1 200 OK\r\n\r\n\x16\x03\x03";
    let (found, complete) = inspect(&client, server);
    assert!(complete && found.tunneled_sni && !found.fronting);
    assert_eq!(found.proxy_status, Some(200));
}

#[test]
fn pipelined_requests_first_one_names() {
    let client =
        b"GET /1 HTTP/1.1\r\nHost: first.example\r\n\r\nGET /2 HTTP/1.1\r\nHost: second.example\r\n\r\n";
    let (found, complete) = inspect(client, &[]);
    assert!(complete);
    assert_eq!(found.host.as_deref(), Some("first.example"));
}

#[test]
fn other_protocols_are_not_malformed() {
    for client in [&b"SSH-2.0-OpenSSH_8.9\r\n"[..], b"EHLO mail\r\n", &[0, 3, 1, 0, 5, 1, 0, 0, 1, 1]] {
        let (found, complete) = inspect(client, &[]);
        assert!(complete, "{client:?}");
        assert_eq!(found, Inspection::default(), "{client:?}");
    }
}

#[test]
fn broken_bytes_say_why() {
    let cases: [(&[u8], &str); 4] = [
        (b"CONNECT / HTTP/1.1\r\n\r\n", "CONNECT request-target is not host:port"),
        (b"GET /x\r\n\r\n", "HTTP request line is not method, target and version"),
        (b"GET / HTTP/1.1\r\nHost: bad/name\r\n\r\n", "Host header is not a host name"),
        (&[0x16, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "empty TLS handshake record"),
    ];
    for (client, why) in cases {
        let (found, complete) = inspect(client, &[]);
        assert!(complete);
        assert_eq!(found.malformed, Some(why));
        assert_eq!(found.host, None);
    }
}

#[test]
fn finish_salvages_a_cut_short_hello() {
    let stream = tls_records(&[sni_extension("r1.example"), (51, vec![1; 1200])]);
    let mut inspector = FlowInspector::new();
    inspector.client_bytes(&stream[..600]);
    assert!(inspector.wants_more());
    inspector.finish();
    assert!(inspector.is_complete());
    assert_eq!(inspector.inspection().sni.as_deref(), Some("r1.example"));
    assert_eq!(inspector.inspection().malformed, Some("ClientHello is cut short"));
}

#[test]
fn tiny_records_and_lines_cost_linear_time() {
    // A ClientHello in 1-byte records, and a head of many short invalid lines, each fed a byte at a
    // time: parsing must not restart from the first byte on every piece.
    let message = client_hello_message(&[(21, vec![0; 8000]), sni_extension("slow.example")]);
    let stream = records(&message, 1);
    let start = std::time::Instant::now();
    let mut inspector = FlowInspector::new();
    for byte in stream.chunks(1) {
        inspector.client_bytes(byte);
    }
    assert_eq!(inspector.inspection().sni.as_deref(), Some("slow.example"));
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    head.extend(b"x\r\n".repeat(10_000));
    head.extend_from_slice(b"Host: h.example\r\n\r\n");
    let mut inspector = FlowInspector::new();
    for byte in head.chunks(1) {
        inspector.client_bytes(byte);
    }
    assert!(inspector.is_complete());
    assert!(start.elapsed() < std::time::Duration::from_secs(5), "took {:?}", start.elapsed());
}

#[test]
fn budget_ends_an_endless_head() {
    let mut inspector = FlowInspector::new();
    inspector.client_bytes(b"GET / HTTP/1.1\r\n");
    let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
    while !inspector.is_complete() {
        inspector.client_bytes(filler.as_bytes());
    }
    assert_eq!(inspector.inspection().malformed, Some("message larger than the 64 KiB inspection budget"));
}

#[test]
fn additional_fields_use_event_keys() {
    let (found, _) = inspect(&fixture!("connect_curl.client"), &fixture!("connect_curl.server"));
    let fields = found.additional_fields();
    assert_eq!(fields["TargetSource"], "Connect");
    assert_eq!(fields["ConnectHost"], "curl.example");
    assert_eq!(fields["Sni"], "curl.example");
    assert_eq!(fields["ProxyStatus"], 200);
    assert_eq!(fields["Tunneled"], true);
    assert_eq!(fields["Ech"], false);
    assert_eq!(fields["DomainFronting"], false);
    assert!(
        !fields.contains_key("Malformed")
            && !fields.contains_key("SocksHost")
            && !fields.contains_key("HttpHost")
    );
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Truncated, bit-flipped and random bytes, fed in random pieces with server bytes interleaved, must
/// never panic, never leave the inspector incomplete after `finish`, and never name a host that
/// `normalize_host` would not produce.
#[test]
fn garbage_never_panics() {
    let samples = [
        fixture!("connect_curl.client"),
        fixture!("chromium_connect_pq.client"),
        fixture!("socks5h_curl.client"),
        fixture!("socks4a_curl.client"),
        fixture!("absolute_curl.client"),
        fixture!("ndpi_haproxy.client"),
        fixture!("zeek_sslv2.client"),
        fixture!("openssl_client_hello"),
    ];
    let servers =
        [fixture!("connect_curl.server"), fixture!("socks5h_curl.server"), vec![0, 90, 0, 0, 0, 0, 0, 0]];
    let first_bytes = [0x16, 0x05, 0x04, b'G', b'C', b'P', 0x80, 0x01];
    let mut rng = Prng(0x9e37_79b9_7f4a_7c15);
    for round in 0..3000 {
        let mut client = if round % 5 == 4 {
            let mut random: Vec<u8> = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
            if let Some(first) = random.first_mut() {
                *first = first_bytes[rng.below(first_bytes.len())];
            }
            random
        } else {
            let sample = &samples[rng.below(samples.len())];
            sample[..rng.below(sample.len() + 1)].to_vec()
        };
        for _ in 0..rng.below(4) {
            if !client.is_empty() {
                let at = rng.below(client.len());
                client[at] = rng.next() as u8;
            }
        }
        let server = &servers[rng.below(servers.len())];
        let mut inspector = FlowInspector::new();
        let (mut c, mut s) = (0, 0);
        while c < client.len() || s < server.len() {
            let piece = 1 + rng.below(300);
            if rng.below(4) == 0 && s < server.len() {
                let end = (s + piece).min(server.len());
                inspector.server_bytes(&server[s..end]);
                s = end;
            } else if c < client.len() {
                let end = (c + piece).min(client.len());
                inspector.client_bytes(&client[c..end]);
                c = end;
            } else {
                s = server.len();
            }
        }
        inspector.finish();
        assert!(inspector.is_complete(), "round {round}");
        let found = inspector.inspection();
        for name in [&found.host, &found.sni, &found.http_host, &found.socks_host, &found.connect_host]
            .into_iter()
            .flatten()
        {
            assert_eq!(normalize(name).as_deref(), Some(name.as_str()), "round {round}: {name:?}");
        }
        let _ = (found.remote_url(), found.additional_fields());
    }
}

fn normalize(name: &str) -> Option<String> {
    crate::extract::normalize_host(name)
}

/// Found by fuzz/flow_inspector: a head with a bad header line and no blank line was "invalid" fed
/// whole but "cut short" (and, in a tunnel, not marked as read) fed in pieces, since the bad line
/// was never parsed before `finish`.
#[test]
fn bad_header_line_without_blank_line_reads_the_same_in_pieces() {
    let finished = |client: &[u8], piece: usize| {
        let mut inspector = inspect_in_pieces(client, b"", piece);
        inspector.finish();
        inspector.inspection().clone()
    };
    for outer in [&b""[..], b"\x05\x01\x00\x05\x01\x00\x01\x0a\x00\x00\x01\x01\xbb"] {
        // A bare CR inside a header value: httparse refuses the line.
        let client = [outer, b"GET / HTTP/1.1\r\nHost: plain.example\rx\r\n"].concat();
        let whole = finished(&client, usize::MAX);
        for piece in PIECES {
            assert_eq!(finished(&client, piece), whole, "pieces of {piece} bytes");
        }
        assert_eq!(whole.malformed, Some("HTTP request head has invalid header lines"));
        assert_eq!(whole.tunneled, !outer.is_empty());
    }
}

//! Differential test against the third-party capture corpus (`shared/corpus`): for every row of
//! `expected.tsv` (tshark's answer per flow and layer, plus hand-checked rows), TCP and UDP (QUIC),
//! replay the capture and check that our event for that flow names the same domain for that layer.
//!
//! The corpus is found through `MONITOR_CORPUS`, or by looking for `shared/corpus` in the directories
//! above this crate (the repository and `shared/` sit side by side, here and in CI).

#![expect(unused_crate_dependencies, reason = "a test target sees every dev-dependency of the package")]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
#[path = "common/corpus_dir.rs"]
mod corpus_dir;

use corpus_dir::corpus_dir;
use std::path::{Path, PathBuf};

use monitor_core::event::DeviceEvent;
use monitor_core::replay::{ReplayStats, replay};
use serde_json::Value;

/// Rows where our answer knowingly differs from the oracle, with the reason: (pcap, client, layer, why).
/// A listed row that starts to match fails the test, so this table cannot go stale.
const EXCEPTIONS: &[(&str, &str, &str, &str)] = &[
    (
        "arkime__socks5-smtp-503.pcap",
        "10.0.0.2:53709",
        "outer",
        "the SOCKS5 name is the numeric string 010.000.00.003, which a SOCKS server resolves the way \
         inet_aton reads it (octal parts, as microsocks does through getaddrinfo): the target is 8.0.0.3, \
         which we name; tshark shows the string",
    ),
    (
        "ndpi__quic-fuzz-overflow.pcapng",
        "255.255.255.255:8224",
        "outer",
        "no event: the only packet is an IPv4 fragment at offset 256 with MF set, so no first fragment \
         (no UDP header) exists and the datagram is never reassembled; the oracle's row is the hand-read \
         fuzzer payload. Names nothing, as the row expects",
    ),
    (
        "zeek__quic_vector-max-size-crash.pcap",
        "1.2.3.4:45492",
        "outer",
        "no event: the datagram's long header carries version 0x10010000, no QUIC version we read, so the \
         UDP flow is counted as not inspected rather than reported. Names nothing, as the row expects",
    ),
];

/// One row of expected.tsv.
#[derive(Debug)]
struct Row {
    pcap: String,
    client: String,
    server: String,
    transport: String,
    layer: String,
    kind: String,
    domain: String,
    port: String,
}

fn read_rows(corpus: &Path) -> Vec<Row> {
    let path = corpus.join("expected.tsv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().expect("expected.tsv has a header line").split('\t').collect();
    let column = |name: &str| {
        header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("expected.tsv has no column {name}"))
    };
    let [pcap, client, server, transport, layer, kind, domain, port] =
        ["pcap", "client", "server", "transport", "layer", "kind", "domain", "port"].map(column);
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            let cell = |i: usize| {
                cells.get(i).unwrap_or_else(|| panic!("short row in expected.tsv: {line}")).to_string()
            };
            Row {
                pcap: cell(pcap),
                client: cell(client),
                server: cell(server),
                transport: cell(transport),
                layer: cell(layer),
                kind: cell(kind),
                domain: cell(domain),
                port: cell(port),
            }
        })
        .collect()
}

/// `ip:port`, IPv6 in brackets: the notation of expected.tsv.
fn endpoint(ip: &str, port: u16) -> String {
    let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("event has a bad IP {ip:?}: {e}"));
    SocketAddr::new(ip, port).to_string()
}

fn field<'a>(event: &'a DeviceEvent, key: &str) -> Option<&'a str> {
    event.additional_fields.get(key).and_then(Value::as_str)
}

fn flag(event: &DeviceEvent, key: &str) -> bool {
    event.additional_fields.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// What our event says for the row's layer: (name, port).
fn our_answer(row: &Row, event: &DeviceEvent) -> (Option<String>, Option<u64>) {
    match row.layer.as_str() {
        "outer" => (
            field(event, "TargetHost").map(str::to_string),
            event.additional_fields.get("TargetPort").and_then(Value::as_u64),
        ),
        "tunneled" => {
            if !flag(event, "Tunneled") {
                return (None, None);
            }
            let name = match row.kind.as_str() {
                "tls-sni" | "ech" => field(event, "Sni"),
                "http-host" => field(event, "HttpHost"),
                _ => field(event, "Sni").or(field(event, "HttpHost")),
            };
            (name.map(str::to_string), None)
        }
        other => panic!("unknown layer {other:?} in expected.tsv"),
    }
}

/// Why our answer is wrong for this row, or `None` when it is right.
fn mismatch(row: &Row, event: &DeviceEvent) -> Option<String> {
    let want_protocol = if row.transport == "udp" { "Udp" } else { "Tcp" };
    if event.protocol != want_protocol {
        return Some(format!("expected Protocol {want_protocol}, the event has {}", event.protocol));
    }
    if row.kind == "quic-sni" && field(event, "TargetSource") != Some("QuicSni") {
        return Some(format!("expected TargetSource QuicSni, we have {:?}", field(event, "TargetSource")));
    }
    let (name, port) = our_answer(row, event);
    let is_ip = |n: &str| n.parse::<IpAddr>().is_ok();
    let expected = (row.domain != "-").then_some(row.domain.as_str());
    let name_ok = match (row.kind.as_str(), expected, name.as_deref()) {
        // A broken flow: naming nothing is right, and so is the name that is really in the bytes.
        ("malformed", None, ours) => ours.is_none_or(is_ip),
        ("malformed", Some(there), ours) => ours.is_none_or(|n| n == there),
        // "-": no domain. An address (a SOCKS request by IP) is not a domain.
        (_, None, ours) => ours.is_none_or(is_ip),
        (_, Some(want), ours) => ours == Some(want),
    };
    if !name_ok {
        return Some(format!("expected {:?}, we named {:?}", row.domain, name));
    }
    if row.layer == "outer" && row.kind != "malformed" && row.port != "-" {
        let want: u64 = row.port.parse().unwrap_or_else(|e| panic!("bad port {:?}: {e}", row.port));
        if port != Some(want) {
            return Some(format!("expected port {want}, we have {port:?}"));
        }
    }
    if row.kind == "ech" && !flag(event, "Ech") {
        return Some("expected the ECH flag".to_string());
    }
    None
}

#[derive(Default)]
struct FileSummary {
    rows: usize,
    matched: usize,
    excepted: usize,
    stats: ReplayStats,
}

#[test]
fn replay_names_what_tshark_names() {
    let corpus = corpus_dir();
    let rows = read_rows(&corpus);
    assert!(!rows.is_empty(), "expected.tsv has no rows");
    let mut by_pcap: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in &rows {
        by_pcap.entry(row.pcap.as_str()).or_default().push(row);
    }
    let mut failures = Vec::new();
    let mut summaries = BTreeMap::new();
    for (pcap, rows) in &by_pcap {
        let path = corpus.join("pcaps").join(pcap);
        let mut events = Vec::new();
        let stats =
            replay(&path, &mut |event| events.push(event)).unwrap_or_else(|e| panic!("replay {pcap}: {e}"));
        let mut summary = FileSummary { stats, ..FileSummary::default() };
        for row in rows {
            summary.rows += 1;
            let exception =
                EXCEPTIONS.iter().find(|(p, c, l, _)| p == pcap && *c == row.client && *l == row.layer);
            let event = events.iter().find(|e| {
                endpoint(&e.local_ip, e.local_port) == row.client
                    && endpoint(&e.remote_ip, e.remote_port) == row.server
            });
            let problem = match event {
                None => Some(format!("no event for flow {} -> {}", row.client, row.server)),
                Some(event) => mismatch(row, event),
            };
            match (problem, exception) {
                (None, None) => summary.matched += 1,
                (Some(problem), Some((.., why))) => {
                    println!("exception {pcap} {} {}: {problem} ({why})", row.client, row.layer);
                    summary.excepted += 1;
                }
                (None, Some(_)) => failures.push(format!(
                    "{pcap} {} {}: listed in EXCEPTIONS but now matches; remove it from the table",
                    row.client, row.layer
                )),
                (Some(problem), None) => failures.push(format!(
                    "{pcap} {} -> {} {} {}: {problem}",
                    row.client, row.server, row.layer, row.kind
                )),
            }
        }
        summaries.insert(*pcap, summary);
    }
    println!(
        "{:<68} {:>4} {:>5} {:>4} {:>7} {:>5} {:>4} {:>5}",
        "capture", "rows", "match", "exc", "packets", "flows", "quic", "named"
    );
    for (pcap, s) in &summaries {
        println!(
            "{pcap:<68} {:>4} {:>5} {:>4} {:>7} {:>5} {:>4} {:>5}",
            s.rows,
            s.matched,
            s.excepted,
            s.stats.packets,
            s.stats.flows,
            s.stats.quic_flows,
            s.stats.flows_named
        );
    }
    let total = |f: fn(&FileSummary) -> usize| summaries.values().map(f).sum::<usize>();
    println!(
        "{} rows: {} match, {} known exceptions, {} wrong",
        total(|s| s.rows),
        total(|s| s.matched),
        total(|s| s.excepted),
        failures.len()
    );
    assert!(failures.is_empty(), "replay disagrees with the corpus oracle:\n{}", failures.join("\n"));
}

/// Every capture in the corpus replays without error or panic, including those without a TCP row.
#[test]
fn every_capture_replays() {
    let corpus = corpus_dir();
    let dir = corpus.join("pcaps");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no captures in {}", dir.display());
    for path in names {
        let mut events = 0;
        let stats =
            replay(&path, &mut |_| events += 1).unwrap_or_else(|e| panic!("replay {}: {e}", path.display()));
        assert_eq!(stats.flows, events, "{}: one event per flow", path.display());
        assert!(stats.packets > 0, "{}: no packets read", path.display());
    }
}

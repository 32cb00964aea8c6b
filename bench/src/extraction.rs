//! Extraction speed and correctness against a reference: `monitor replay` and tshark over the same
//! synthetic capture, the same four names per flow (CONNECT host, SNI, HTTP Host, SOCKS name), compared
//! flow by flow with each other and with the ground truth the generator knows.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::capture::{self, CaptureSummary, Truth};

/// Disagreements listed in the report (the count is always complete).
const EXAMPLES: usize = 5;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KindCount {
    pub flows: usize,
    pub disagreements: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtractionResult {
    pub capture: CaptureSummary,
    pub capture_mib: f64,
    pub replay_s: f64,
    pub tshark_s: f64,
    /// tshark's time over replay's.
    pub speedup: f64,
    /// Flows `monitor replay` reported.
    pub replay_flows: usize,
    /// Flows tshark named anything in.
    pub tshark_flows: usize,
    /// Flows where replay and tshark name something different in any of the four fields.
    pub disagreements: usize,
    /// Flows where replay differs from the ground truth.
    pub replay_wrong: usize,
    /// Flows where tshark differs from the ground truth.
    pub tshark_wrong: usize,
    pub by_kind: BTreeMap<String, KindCount>,
    pub examples: Vec<String>,
    pub replay_stderr: String,
    pub tshark_version: String,
}

/// Lower case, no trailing dot, no port: both tools' answers are compared in this form.
fn norm_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw,
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

fn norm(truth: &Truth) -> Truth {
    let n = |v: &Option<String>| v.as_deref().and_then(norm_host);
    Truth {
        connect_host: n(&truth.connect_host),
        sni: n(&truth.sni),
        http_host: n(&truth.http_host),
        socks_host: n(&truth.socks_host),
    }
}

fn replay(
    monitor: &Path,
    pcap: &Path,
    events: &Path,
) -> anyhow::Result<(f64, String, HashMap<String, Truth>)> {
    let started = Instant::now();
    let out = Command::new(monitor)
        .arg("replay")
        .arg(pcap)
        .arg("--events")
        .arg(events)
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("run {} replay", monitor.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        bail!("monitor replay failed ({}): {stderr}", out.status);
    }
    let text = std::fs::read_to_string(events).with_context(|| format!("read {}", events.display()))?;
    let mut flows = HashMap::new();
    for line in text.lines() {
        let e: Value =
            serde_json::from_str(line).with_context(|| format!("replay event is not JSON: {line}"))?;
        let key = format!("{}:{}", e["LocalIP"].as_str().unwrap_or_default(), e["LocalPort"]);
        let f = &e["AdditionalFields"];
        let field = |k: &str| f[k].as_str().and_then(norm_host);
        flows.insert(
            key,
            Truth {
                connect_host: field("ConnectHost"),
                sni: field("Sni"),
                http_host: field("HttpHost"),
                socks_host: field("SocksHost"),
            },
        );
    }
    Ok((secs, stderr, flows))
}

/// tshark's answers per client end. `-d tcp.port==1080,socks`: SOCKS has no registered port.
fn tshark(pcap: &Path, out_path: &Path) -> anyhow::Result<(f64, HashMap<String, Truth>)> {
    let out = File::create(out_path).with_context(|| format!("create {}", out_path.display()))?;
    let started = Instant::now();
    let status = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-n", "-d", "tcp.port==1080,socks"])
        .args(["-Y", "http.request || tls.handshake.type == 1 || socks.remote_name"])
        .args(["-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"])
        .args(["-e", "ip.src", "-e", "tcp.srcport", "-e", "ip.dst", "-e", "tcp.dstport"])
        .args(["-e", "http.request.method", "-e", "http.request.uri", "-e", "http.host"])
        .args(["-e", "tls.handshake.extensions_server_name", "-e", "socks.remote_name"])
        .stdout(out)
        .stderr(Stdio::piped())
        .output()
        .context("run tshark")?;
    let secs = started.elapsed().as_secs_f64();
    if !status.status.success() {
        bail!("tshark failed ({}): {}", status.status, String::from_utf8_lossy(&status.stderr));
    }
    let text = std::fs::read_to_string(out_path).with_context(|| format!("read {}", out_path.display()))?;
    let mut flows: HashMap<String, Truth> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let get = |i: usize| f.get(i).copied().unwrap_or_default();
        // The client is the end with the ephemeral port (the generator's are all >= 20000).
        let src_port: u32 = get(1).parse().unwrap_or(0);
        let key = if src_port >= 20_000 {
            format!("{}:{}", get(0), get(1))
        } else {
            format!("{}:{}", get(2), get(3))
        };
        let entry = flows.entry(key).or_default();
        let (method, uri, host, sni, socks) = (get(4), get(5), get(6), get(7), get(8));
        if method == "CONNECT" {
            entry.connect_host = entry.connect_host.take().or_else(|| norm_host(uri));
        } else if !method.is_empty() {
            entry.http_host = entry.http_host.take().or_else(|| norm_host(host));
        }
        entry.sni = entry.sni.take().or_else(|| norm_host(sni));
        entry.socks_host = entry.socks_host.take().or_else(|| norm_host(socks));
    }
    Ok((secs, flows))
}

fn describe(t: Option<&Truth>) -> String {
    match t {
        None => "nothing".into(),
        Some(t) => format!(
            "connect={} sni={} host={} socks={}",
            t.connect_host.as_deref().unwrap_or("-"),
            t.sni.as_deref().unwrap_or("-"),
            t.http_host.as_deref().unwrap_or("-"),
            t.socks_host.as_deref().unwrap_or("-")
        ),
    }
}

/// Generates the capture in `dir`, runs both extractors, compares.
pub fn run(monitor: &Path, dir: &Path, flows: usize) -> anyhow::Result<ExtractionResult> {
    let pcap = dir.join("extraction.pcap");
    let (summary, generated) = capture::write(&pcap, flows)?;
    let capture_mib = std::fs::metadata(&pcap).map(|m| m.len() as f64 / (1 << 20) as f64).unwrap_or(0.0);
    eprintln!(
        "bench: capture {} flows, {} packets, {capture_mib:.0} MiB; monitor replay, then tshark",
        summary.flows, summary.packets
    );
    let (replay_s, replay_stderr, ours) = replay(monitor, &pcap, &dir.join("extraction-replay.jsonl"))?;
    let (tshark_s, theirs) = tshark(&pcap, &dir.join("extraction-tshark.tsv"))?;
    let tshark_version = Command::new("tshark")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string())
        .unwrap_or_default();
    let mut result = ExtractionResult {
        capture: summary,
        capture_mib,
        replay_s,
        tshark_s,
        speedup: tshark_s / replay_s.max(1e-9),
        replay_flows: ours.len(),
        tshark_flows: theirs.len(),
        replay_stderr,
        tshark_version,
        ..ExtractionResult::default()
    };
    for flow in &generated {
        let key = flow.client.to_string();
        let truth = norm(&flow.truth);
        let (a, b) = (ours.get(&key), theirs.get(&key));
        let kind = result.by_kind.entry(flow.kind.to_string()).or_default();
        kind.flows += 1;
        if a != Some(&truth) {
            result.replay_wrong += 1;
        }
        if b != Some(&truth) {
            result.tshark_wrong += 1;
        }
        if a != b {
            kind.disagreements += 1;
            result.disagreements += 1;
            if result.examples.len() < EXAMPLES {
                result.examples.push(format!(
                    "{} {key}: replay {}; tshark {}; truth {}",
                    flow.kind,
                    describe(a),
                    describe(b),
                    describe(Some(&truth))
                ));
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_compare_without_port_case_or_dot() {
        assert_eq!(norm_host("Example.COM:443").as_deref(), Some("example.com"));
        assert_eq!(norm_host("example.com.").as_deref(), Some("example.com"));
        assert_eq!(norm_host(""), None);
        assert_eq!(norm_host("fd00::1").as_deref(), Some("fd00::1"));
    }
}

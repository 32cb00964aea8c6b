//! The results of one bench run: kept as JSON, shown as Markdown tables (printed and written).

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

pub use crate::markdown::Goal;
use crate::markdown::table;
use crate::{
    extraction::ExtractionResult,
    fleet::FleetResult,
    kernel::{MapMemory, ProgStats},
    micro::MicroResult,
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    /// `git describe --always --dirty` of the workspace the daemon was built from.
    #[serde(default)]
    pub revision: String,
    pub kernel: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_gib: f64,
    /// /proc/loadavg before and after: other work on the machine skews every figure.
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub squid: String,
    pub nginx: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    pub quick: bool,
    pub rounds: usize,
    pub requests: usize,
    pub workers: usize,
    pub burst_rounds: usize,
    pub burst_requests: usize,
    pub burst_workers: usize,
    pub bulk_mib: u64,
    pub bulk_rounds: usize,
    pub indicators: usize,
    pub flows: usize,
}

/// One workload under one variant, over the rounds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RateRow {
    pub workload: String,
    pub variant: String,
    pub runs: usize,
    /// Requests per second, median over rounds.
    pub rate: f64,
    /// Per round, this variant's rate over the no-monitor rate of the same round: median, min, max.
    pub ratio: Option<f64>,
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
    /// The ratio predicted from CPU time (see the driver's `estimate_ratios`).
    pub cpu_estimate: Option<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: usize,
    pub first_error: Option<String>,
}

/// Where the CPU went per request (microseconds), summed over the rounds of one workload and variant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuRow {
    pub workload: String,
    pub variant: String,
    pub client_us: f64,
    pub proxy_us: f64,
    pub origin_us: f64,
    pub monitor_us: f64,
    /// Busy CPU not in those processes: softirq network work, other processes on the machine.
    pub other_us: f64,
    /// Busy share of all CPUs during the runs.
    pub busy_pct: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BulkRow {
    pub workload: String,
    pub variant: String,
    pub runs: usize,
    pub mib_s: f64,
    pub ratio: Option<f64>,
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
}

/// Connections a variant's cgroup made against what its daemon reported.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventsRow {
    pub variant: String,
    pub connections: u64,
    pub connection_success: u64,
    pub other_events: u64,
    /// Connections without a ConnectionSuccess event.
    pub missing: i64,
    pub kernel_drops: BTreeMap<String, u64>,
    pub lost_payload: u64,
    /// The highest request rate this cgroup ran at (plain HTTP).
    pub peak_rate: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProgRow {
    pub runs: u64,
    pub ns_per_run: Option<f64>,
    pub runs_per_connection: f64,
    pub ns_per_connection: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KernelRow {
    pub variant: String,
    pub connections: u64,
    pub programs: BTreeMap<String, ProgRow>,
}

impl KernelRow {
    pub fn new(variant: &str, connections: u64, stats: &BTreeMap<String, ProgStats>) -> KernelRow {
        let per = |x: f64| if connections > 0 { x / connections as f64 } else { f64::NAN };
        KernelRow {
            variant: variant.to_string(),
            connections,
            programs: stats
                .iter()
                .map(|(name, s)| {
                    let row = ProgRow {
                        runs: s.runs,
                        ns_per_run: s.ns_per_run(),
                        runs_per_connection: per(s.runs as f64),
                        ns_per_connection: per(s.run_time_ns as f64),
                    };
                    (name.clone(), row)
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonRow {
    pub variant: String,
    /// All the daemon's CPU time: start-up, indicator loads and reloads, traffic.
    pub cpu_s: f64,
    /// CPU time during the load runs only, per connection made.
    pub cpu_us_per_connection: f64,
    /// VmHWM right after "ready" (indicators loaded).
    pub peak_rss_at_ready_mib: f64,
    /// VmHWM at the end of the run (after traffic and, for the 1M set, reloads).
    pub peak_rss_mib: f64,
    pub rss_mib: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndicatorResults {
    pub count: usize,
    /// From the daemon's log line: "(W map writes in T ms)".
    pub load_log_ms: Option<f64>,
    pub load_map_writes: Option<u64>,
    /// From spawning the daemon to its "ready" line (file read, maps, programs, indicators).
    pub start_to_ready_s: f64,
    /// From appending one line to the block file to the "indicators now" log line.
    pub reload_ms: Vec<f64>,
    /// The daemon's own figure for those reloads (map writes only).
    pub reload_log_ms: Vec<f64>,
    pub reload_under_load: Option<ReloadUnderLoad>,
    pub maps: BTreeMap<String, MapMemory>,
    pub maps_total_mib: f64,
    /// The same total for the 100-indicator daemon, for comparison.
    pub small_maps_total_mib: f64,
}

/// One reload while plain-HTTP load ran in the big daemon's cgroup.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadUnderLoad {
    pub reload_ms: f64,
    /// The load's request rate over its whole run.
    pub rate: f64,
    pub connections: u64,
    /// Kernel drops (all reasons) between before and after.
    pub kernel_drops: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GatewayResult {
    pub rounds: usize,
    pub workload: String,
    /// The daemon's mode and list ("block, 1000000 indicators"); empty in results from audit-mode runs.
    #[serde(default)]
    pub mode: String,
    pub rate_none: f64,
    pub rate_gateway: f64,
    pub ratio: Option<f64>,
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
    /// One TLS download of this size forwarded through the router per round and side.
    #[serde(default)]
    pub download_mib: u64,
    #[serde(default)]
    pub mib_s_none: f64,
    #[serde(default)]
    pub mib_s_gateway: f64,
    #[serde(default)]
    pub throughput_ratio: Option<f64>,
    #[serde(default)]
    pub throughput_ratio_min: Option<f64>,
    #[serde(default)]
    pub throughput_ratio_max: Option<f64>,
    /// Busy CPU of the whole machine per connection of the load (median of rounds), µs.
    #[serde(default)]
    pub machine_us_per_connection_none: f64,
    #[serde(default)]
    pub machine_us_per_connection_gateway: f64,
    /// That cost without the daemon over the cost with it, paired by round: the connection rate a
    /// saturated gateway keeps.
    #[serde(default)]
    pub cpu_ratio: Option<f64>,
    #[serde(default)]
    pub cpu_ratio_min: Option<f64>,
    #[serde(default)]
    pub cpu_ratio_max: Option<f64>,
    /// Busy CPU of the whole machine per forwarded MiB of the download, ms.
    #[serde(default)]
    pub machine_ms_per_mib_none: f64,
    #[serde(default)]
    pub machine_ms_per_mib_gateway: f64,
    #[serde(default)]
    pub throughput_cpu_ratio: Option<f64>,
    #[serde(default)]
    pub throughput_cpu_ratio_min: Option<f64>,
    #[serde(default)]
    pub throughput_cpu_ratio_max: Option<f64>,
    /// The monitor's own CPU (daemon and TC program) per connection, µs, and per forwarded MiB, ms.
    #[serde(default)]
    pub monitor_us_per_connection: f64,
    #[serde(default)]
    pub monitor_ms_per_mib: f64,
    /// The machine's cost without the monitor over that cost plus the monitor's own.
    #[serde(default)]
    pub cost_estimate_ratio: Option<f64>,
    #[serde(default)]
    pub throughput_cost_estimate_ratio: Option<f64>,
    #[serde(default)]
    pub daemon_us_per_connection: f64,
    /// wire_ingress time per packet during the download (full-sized, GRO-merged segments).
    #[serde(default)]
    pub download_ns_per_packet: Option<f64>,
    /// Rounds in which a request naming a listed domain failed while the daemon ran.
    #[serde(default)]
    pub denied_refused: usize,
    pub wire_ingress: ProgRow,
    pub connections: u64,
    pub events: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub settings: Settings,
    pub started_unix: u64,
    pub duration_s: f64,
    pub rate: Vec<RateRow>,
    pub cpu: Vec<CpuRow>,
    pub bulk: Vec<BulkRow>,
    pub events: Vec<EventsRow>,
    pub kernel: Vec<KernelRow>,
    pub daemon: Vec<DaemonRow>,
    pub indicators: IndicatorResults,
    pub gateway: Option<GatewayResult>,
    pub extraction: Option<ExtractionResult>,
    pub parsers: Vec<MicroResult>,
    /// The fleet path (issue 14); absent in results from before it was measured.
    #[serde(default)]
    pub fleet: Option<FleetResult>,
    /// Time to block across the fleet (issue 16); absent in results from before it was measured.
    #[serde(default)]
    pub policy: Option<crate::policy::PolicyResult>,
    pub goals: Vec<Goal>,
    pub notes: Vec<String>,
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() { format!("{v:.decimals$}") } else { "–".into() }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".into(), |v| num(v, decimals))
}

pub(crate) fn ratio_cell(ratio: Option<f64>, lo: Option<f64>, hi: Option<f64>) -> String {
    match (ratio, lo, hi) {
        (Some(r), Some(lo), Some(hi)) => format!("{r:.3} ({lo:.3}–{hi:.3})"),
        (Some(r), _, _) => format!("{r:.3}"),
        _ => "–".into(),
    }
}

/// The programs in a fixed order: connect, sock_ops, sk_msg, tc.
const PROGRAMS: &[&str] = &["connect4", "connect6", "track_connection", "inspect_send", "wire_ingress"];

impl Results {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let s = &self.settings;
        let _ = writeln!(out, "# Monitor bench\n");
        let _ = writeln!(
            out,
            "Daemon built from {}. Machine: Linux {}, {} CPUs ({}), {:.0} GiB RAM; load average at start {}, \
             at end {}. {}; {}. One run of `cargo xtask bench{}` took {:.0} s.\n",
            if m.revision.is_empty() { "an unknown revision" } else { &m.revision },
            m.kernel,
            m.nproc,
            m.cpu_model,
            m.mem_gib,
            m.loadavg_start,
            m.loadavg_end,
            m.squid,
            m.nginx,
            if s.quick { " --quick" } else { "" },
            self.duration_s
        );
        let _ = writeln!(
            out,
            "Settings: {} rounds × {} requests from {} workers per HTTPS run; {} rounds × {} plain-HTTP requests \
             from {} workers at the highest rate; {} MiB bulk × {}; {} indicators; {} capture flows. \
             Variants run in turn within each round (order rotated per round); ratios are to the no-monitor run \
             of the same round (median, then min–max over rounds).\n",
            s.rounds,
            s.requests,
            s.workers,
            s.burst_rounds,
            s.burst_requests,
            s.burst_workers,
            s.bulk_mib,
            s.bulk_rounds,
            s.indicators,
            s.flows
        );

        let _ = writeln!(out, "## Goals\n");
        let rows: Vec<Vec<String>> = self
            .goals
            .iter()
            .map(|g| {
                let met = match g.met {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None => "not measured",
                };
                vec![g.goal.clone(), g.measured.clone(), met.into()]
            })
            .collect();
        table(&mut out, &["goal", "measured", ""], &rows);

        let _ = writeln!(out, "## Connection rate\n");
        let rows: Vec<Vec<String>> = self
            .rate
            .iter()
            .map(|r| {
                vec![
                    r.workload.clone(),
                    r.variant.clone(),
                    r.runs.to_string(),
                    num(r.rate, 0),
                    ratio_cell(r.ratio, r.ratio_min, r.ratio_max),
                    opt(r.cpu_estimate, 3),
                    num(r.p50_ms, 2),
                    num(r.p99_ms, 2),
                    format!(
                        "{}{}",
                        r.errors,
                        r.first_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
                    ),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "workload",
                "variant",
                "runs",
                "req/s",
                "ratio to none",
                "from CPU time",
                "p50 ms",
                "p99 ms",
                "errors",
            ],
            &rows,
        );
        let _ = writeln!(
            out,
            "\"from CPU time\": base / (base + added), base = load generator + squid + nginx CPU per request \
             without a monitor, added = the daemon's CPU per connection + its BPF run time per connection: the \
             ratio on a saturated machine that runs nothing else. The measured ratios also carry the noise of \
             whatever else runs on the machine (\"other\" below).\n"
        );

        let _ = writeln!(
            out,
            "CPU per request (µs; client = load generator, proxy = squid's namespace, origin = nginx's, \
             other = busy CPU outside those: softirq and anything else on the machine):\n"
        );
        let rows: Vec<Vec<String>> = self
            .cpu
            .iter()
            .map(|c| {
                vec![
                    c.workload.clone(),
                    c.variant.clone(),
                    num(c.client_us, 0),
                    num(c.proxy_us, 0),
                    num(c.origin_us, 0),
                    num(c.monitor_us, 0),
                    num(c.other_us, 0),
                    num(c.busy_pct, 0),
                ]
            })
            .collect();
        table(
            &mut out,
            &["workload", "variant", "client", "proxy", "origin", "monitor", "other", "busy %"],
            &rows,
        );

        let _ = writeln!(out, "## Bulk download\n");
        let rows: Vec<Vec<String>> = self
            .bulk
            .iter()
            .map(|b| {
                vec![
                    b.workload.clone(),
                    b.variant.clone(),
                    b.runs.to_string(),
                    num(b.mib_s, 0),
                    ratio_cell(b.ratio, b.ratio_min, b.ratio_max),
                ]
            })
            .collect();
        table(&mut out, &["workload", "variant", "runs", "MiB/s", "ratio to none"], &rows);

        let _ = writeln!(out, "## Events\n");
        let rows: Vec<Vec<String>> = self
            .events
            .iter()
            .map(|e| {
                let drops: u64 = e.kernel_drops.values().sum();
                let named: Vec<String> =
                    e.kernel_drops.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
                vec![
                    e.variant.clone(),
                    e.connections.to_string(),
                    e.connection_success.to_string(),
                    e.missing.to_string(),
                    if named.is_empty() {
                        drops.to_string()
                    } else {
                        format!("{drops} ({})", named.join(", "))
                    },
                    e.lost_payload.to_string(),
                    num(e.peak_rate, 0),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "variant",
                "connections",
                "ConnectionSuccess",
                "missing",
                "kernel drops",
                "lost payload",
                "peak req/s",
            ],
            &rows,
        );

        let _ = writeln!(out, "## Kernel programs (bpf_stats: ns per run × runs per connection)\n");
        // The known programs in pipeline order, then any other one a daemon loaded.
        let mut programs: Vec<String> = PROGRAMS.iter().map(|p| p.to_string()).collect();
        for k in &self.kernel {
            for name in k.programs.keys() {
                if !programs.contains(name) {
                    programs.push(name.clone());
                }
            }
        }
        let mut headers = vec!["variant"];
        headers.extend(programs.iter().map(String::as_str));
        headers.push("ns per connection");
        let mut rows: Vec<Vec<String>> = Vec::new();
        let gateway_row = self.gateway.as_ref().map(|g| {
            let mut programs = BTreeMap::new();
            programs.insert("wire_ingress".to_string(), g.wire_ingress.clone());
            KernelRow { variant: "gateway (tc on the router)".into(), connections: g.connections, programs }
        });
        for k in self.kernel.iter().chain(gateway_row.iter()).filter(|k| k.connections > 0) {
            let mut row = vec![k.variant.clone()];
            for p in &programs {
                row.push(match k.programs.get(p) {
                    Some(s) if s.runs > 0 => {
                        format!("{} ns × {}", opt(s.ns_per_run, 0), num(s.runs_per_connection, 2))
                    }
                    _ => "–".into(),
                });
            }
            let costs: Vec<f64> =
                k.programs.values().map(|p| p.ns_per_connection).filter(|x| x.is_finite()).collect();
            row.push(if costs.is_empty() { "–".into() } else { num(costs.iter().sum(), 0) });
            rows.push(row);
        }
        table(&mut out, &headers, &rows);

        let _ = writeln!(out, "## Daemon\n");
        let rows: Vec<Vec<String>> = self
            .daemon
            .iter()
            .map(|d| {
                vec![
                    d.variant.clone(),
                    num(d.cpu_s, 2),
                    num(d.cpu_us_per_connection, 1),
                    num(d.peak_rss_at_ready_mib, 1),
                    num(d.peak_rss_mib, 1),
                    num(d.rss_mib, 1),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "variant",
                "CPU s in all",
                "CPU µs per connection (load runs)",
                "peak RSS at ready MiB",
                "peak RSS MiB",
                "RSS at end MiB",
            ],
            &rows,
        );

        let i = &self.indicators;
        let _ = writeln!(out, "## Indicators\n");
        let reload = crate::stats::median(&i.reload_ms);
        let reload_log = crate::stats::median(&i.reload_log_ms);
        let _ = writeln!(
            out,
            "{} block domains: the daemon logged {} map writes in {} ms; spawn to ready {:.2} s. \
             Reload after appending one line (median of {}): {} ms from the write to the log line \
             (the daemon polls the file every 250 ms), of which {} ms map writes. Kernel memory of the \
             maps: {:.1} MiB (the 100-indicator daemon: {:.1} MiB).\n",
            i.count,
            i.load_map_writes.map_or_else(|| "?".into(), |w| w.to_string()),
            opt(i.load_log_ms, 0),
            i.start_to_ready_s,
            i.reload_ms.len(),
            opt(reload, 0),
            opt(reload_log, 0),
            i.maps_total_mib,
            i.small_maps_total_mib
        );
        if let Some(r) = &i.reload_under_load {
            let _ = writeln!(
                out,
                "One more reload while plain-HTTP load ran in the same cgroup ({} connections at {:.0} req/s): \
                 {:.0} ms; kernel drops meanwhile: {}.\n",
                r.connections, r.rate, r.reload_ms, r.kernel_drops
            );
        }
        let rows: Vec<Vec<String>> = i
            .maps
            .iter()
            .filter(|(_, m)| m.bytes >= 64 * 1024)
            .map(|(name, m)| {
                vec![
                    name.clone(),
                    m.kind.clone(),
                    m.max_entries.to_string(),
                    num(m.bytes as f64 / (1 << 20) as f64, 1),
                ]
            })
            .collect();
        table(&mut out, &["map (≥ 64 KiB)", "type", "max entries", "MiB"], &rows);

        if let Some(g) = &self.gateway {
            let _ = writeln!(out, "## Gateway mode\n");
            let _ = writeln!(
                out,
                "Daemon in the router namespace ({}) with tc on the client-facing interface, {} rounds \
                 alternating without and with it. {}: {:.0} req/s without, {:.0} with, ratio {}. A {} MiB TLS \
                 download forwarded through the router: {:.0} MiB/s without, {:.0} with, ratio {} \
                 (wire_ingress on the client's packets, mostly ACKs: {} ns each). Connections: wire_ingress {} ns per packet, {:.1} packets \
                 per connection; daemon {:.1} µs of CPU per \
                 connection; {} events for {} connections; a listed name refused in {} of {} rounds. \
                 Busy CPU of the whole machine (every process, forwarding softirqs, the programs, the \
                 daemon): {:.0} µs per connection without, {:.0} with, ratio {}; {:.2} ms per forwarded MiB \
                 without, {:.2} with, ratio {}. The monitor's own CPU (daemon and TC): {:.1} µs per connection, \
                 {:.3} ms per forwarded MiB, so a saturated gateway keeps {} of its connection rate and {} of \
                 its throughput.\n",
                if g.mode.is_empty() { "audit" } else { &g.mode },
                g.rounds,
                g.workload,
                g.rate_none,
                g.rate_gateway,
                ratio_cell(g.ratio, g.ratio_min, g.ratio_max),
                g.download_mib,
                g.mib_s_none,
                g.mib_s_gateway,
                ratio_cell(g.throughput_ratio, g.throughput_ratio_min, g.throughput_ratio_max),
                opt(g.download_ns_per_packet, 0),
                opt(g.wire_ingress.ns_per_run, 0),
                g.wire_ingress.runs_per_connection,
                g.daemon_us_per_connection,
                g.events,
                g.connections,
                g.denied_refused,
                g.rounds,
                g.machine_us_per_connection_none,
                g.machine_us_per_connection_gateway,
                ratio_cell(g.cpu_ratio, g.cpu_ratio_min, g.cpu_ratio_max),
                g.machine_ms_per_mib_none,
                g.machine_ms_per_mib_gateway,
                ratio_cell(g.throughput_cpu_ratio, g.throughput_cpu_ratio_min, g.throughput_cpu_ratio_max),
                g.monitor_us_per_connection,
                g.monitor_ms_per_mib,
                ratio_cell(g.cost_estimate_ratio, None, None),
                ratio_cell(g.throughput_cost_estimate_ratio, None, None),
            );
        }

        if let Some(x) = &self.extraction {
            let _ = writeln!(out, "## Extraction: monitor replay against tshark\n");
            let _ = writeln!(
                out,
                "{} flows ({} packets, {:.0} MiB; {} post-quantum ClientHellos, {} split over two segments). \
                 monitor replay {:.2} s, tshark {:.2} s: {:.1}× faster. Flows where they disagree: {} \
                 (replay wrong against the generator's truth: {}, tshark wrong: {}). {}\n",
                x.capture.flows,
                x.capture.packets,
                x.capture_mib,
                x.capture.pq_client_hellos,
                x.capture.split_client_hellos,
                x.replay_s,
                x.tshark_s,
                x.speedup,
                x.disagreements,
                x.replay_wrong,
                x.tshark_wrong,
                x.tshark_version
            );
            let rows: Vec<Vec<String>> = x
                .by_kind
                .iter()
                .map(|(k, c)| vec![k.clone(), c.flows.to_string(), c.disagreements.to_string()])
                .collect();
            table(&mut out, &["flow kind", "flows", "disagreements"], &rows);
            for e in &x.examples {
                let _ = writeln!(out, "- {e}");
            }
            if !x.examples.is_empty() {
                out.push('\n');
            }
        }

        if let Some(p) = &self.policy {
            crate::policy::markdown(p, &mut out);
        }
        if let Some(f) = &self.fleet {
            crate::fleet_report::markdown(f, &mut out);
        }

        let _ = writeln!(out, "## Parsers (criterion, median ns per call)\n");
        let rows: Vec<Vec<String>> =
            self.parsers.iter().map(|p| vec![p.id.clone(), num(p.median_ns, 0), num(p.mean_ns, 0)]).collect();
        table(&mut out, &["benchmark", "median ns", "mean ns"], &rows);

        if !self.notes.is_empty() {
            let _ = writeln!(out, "## Notes\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
            out.push('\n');
        }
        out
    }
}

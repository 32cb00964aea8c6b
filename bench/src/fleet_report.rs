//! The fleet figures beside the goals of issue 14, and their Markdown section.

use std::fmt::Write as _;

use crate::fleet::{EXPORT_GOAL, FleetResult, INGEST_GOAL, QUERY_GOAL_MS, QueryRun};
use crate::markdown::{Goal, table};

/// Every fleet goal's text starts so: a run of the fleet part alone replaces these in an earlier run's
/// results and keeps the others.
pub const GOAL_PREFIX: &str = "fleet: ";
const STEP_COLUMNS: &[&str] = &["step", "measured", "CPU", "goal"];
const QUERY_COLUMNS: &[&str] = &["query", "median ms", "range ms", "in process ms", "rows", "goal"];

fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

fn query_goal(q: &QueryRun) -> Goal {
    Goal {
        goal: format!("{GOAL_PREFIX}`{}` over {} rows < 1 s", q.query, thousands(q.rows_in_table as f64)),
        measured: format!(
            "median {:.0} ms ({:.0}–{:.0} over {} runs of `monitor hunt --fleet`), {} rows returned",
            q.median_ms, q.min_ms, q.max_ms, q.runs, q.result_rows
        ),
        met: Some(q.median_ms < QUERY_GOAL_MS),
    }
}

/// A throughput goal: `per_s` against `target`, measured `over` what.
fn rate_goal(goal: &str, per_s: f64, target: f64, over: String) -> Goal {
    Goal {
        goal: format!("{GOAL_PREFIX}{goal}"),
        measured: format!("{}/s over {over}", thousands(per_s)),
        met: Some(per_s >= target),
    }
}

pub fn goals(f: &FleetResult) -> Vec<Goal> {
    let (e, i) = (&f.export, &f.ingest);
    let mut goals = vec![
        rate_goal(
            "events one agent exports with NATS up ≥ 50,000/s",
            e.events_per_s,
            EXPORT_GOAL,
            format!(
                "{} stored events ({:.1} µs of the exporter's CPU per event)",
                thousands(e.events as f64),
                e.cpu_us_per_event
            ),
        ),
        rate_goal(
            "ingest into ClickHouse ≥ 100,000 rows/s",
            i.rows_per_s,
            INGEST_GOAL,
            format!(
                "{} rows ({:.1} µs of `monitor ingest`'s CPU per row)",
                thousands(i.rows as f64),
                i.cpu_us_per_row
            ),
        ),
    ];
    goals.extend(f.queries.iter().map(query_goal));
    goals
}

pub fn markdown(f: &FleetResult, out: &mut String) {
    let s = &f.sizes;
    let _ = writeln!(out, "## Fleet (issue 14)\n");
    let _ = writeln!(
        out,
        "Real servers on loopback, each in a temporary directory: nats-server {} (JetStream, file storage, \
         its default periodic fsync) and clickhouse-server {}. The exporter is `monitor_fleet::Exporter` (what \
         `monitor run --export` runs) in a process of its own (`fleet-export`), so that its CPU time is its \
         own; the stores are written with the store code ({} events/s). {:.0} s in all.\n",
        f.nats_version,
        f.clickhouse_version,
        thousands(f.store_write_events_per_s),
        f.duration_s
    );
    let e = &f.export;
    let d = &f.drain;
    let i = &f.ingest;
    let rows = vec![
        vec![
            format!("export, NATS up: {} stored events", thousands(e.events as f64)),
            format!(
                "{}/s ({:.2} s from the exporter's start; first ack after {:.2} s)",
                thousands(e.events_per_s),
                e.seconds,
                e.first_ack_s
            ),
            format!("{:.1} µs per event", e.cpu_us_per_event),
            "≥ 50,000/s".into(),
        ],
        vec![
            format!(
                "drain after an outage: {} events stored while NATS was down",
                thousands(d.events as f64)
            ),
            format!(
                "{:.1} s from NATS answering again (first ack after {:.2} s, the reconnect included); {}/s once connected",
                d.seconds,
                d.first_ack_s,
                thousands(d.connected_events_per_s)
            ),
            format!("{:.1} µs per event", d.cpu_us_per_event),
            "–".into(),
        ],
        vec![
            format!("`monitor ingest`: those {} events into ClickHouse", thousands(i.rows as f64)),
            format!(
                "{}/s ({:.2} s from its start; {} rows with FINAL)",
                thousands(i.rows_per_s),
                i.seconds,
                thousands(i.final_rows as f64)
            ),
            format!(
                "{:.1} µs per row (meanwhile clickhouse-server {:.1} µs, nats-server {:.1} µs)",
                i.cpu_us_per_row, i.clickhouse_cpu_us_per_row, i.nats_cpu_us_per_row
            ),
            "≥ 100,000/s".into(),
        ],
    ];
    table(out, STEP_COLUMNS, &rows);
    let _ = writeln!(
        out,
        "Stream messages after the export: {}, after the drain: {} (exporter errors: {} and {}; the drain's are \
         the failed connects during the outage).\n",
        thousands(e.stream_messages as f64),
        thousands(d.stream_messages as f64),
        e.errors,
        d.errors
    );
    let _ = writeln!(
        out,
        "Queries through `monitor hunt --fleet URL --format json` (process start to exit, one warm-up run \
         then {} runs) over {} rows ClickHouse generated itself in {:.0} s (`INSERT ... SELECT ... FROM \
         numbers(...)`, {} devices, {} remote names, a week of events) into the table the ingest creates. \
         \"in process\": the same compile, HTTP query and parse (`monitor_fleet::hunt::query_at`) without the \
         CLI's start and output.\n",
        s.query_runs,
        thousands(s.query_rows as f64),
        f.fill_s,
        s.devices,
        thousands(s.urls as f64)
    );
    let rows: Vec<Vec<String>> = f
        .queries
        .iter()
        .map(|q| {
            vec![
                format!("`{}`", q.query),
                format!("{:.0}", q.median_ms),
                format!("{:.0}–{:.0}", q.min_ms, q.max_ms),
                format!("{:.0}", q.in_process_median_ms),
                q.result_rows.to_string(),
                "< 1,000 ms".into(),
            ]
        })
        .collect();
    table(out, QUERY_COLUMNS, &rows);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{ExportRun, IngestRun, SEED_QUERY};

    #[test]
    fn goals_and_the_section_show_the_figures() {
        let result = FleetResult {
            export: ExportRun { events: 200_000, events_per_s: 60_000.0, ..ExportRun::default() },
            ingest: IngestRun { rows: 1_000_000, rows_per_s: 90_000.0, ..IngestRun::default() },
            queries: vec![QueryRun {
                query: SEED_QUERY.into(),
                rows_in_table: 10_000_000,
                median_ms: 190.0,
                ..QueryRun::default()
            }],
            ..FleetResult::default()
        };
        let goals = goals(&result);
        let met: Vec<Option<bool>> = goals.iter().map(|g| g.met).collect();
        assert_eq!(met, [Some(true), Some(false), Some(true)]);
        assert!(goals.iter().all(|g| g.goal.starts_with(GOAL_PREFIX)));
        assert!(goals[0].measured.starts_with("60,000/s over 200,000"), "{}", goals[0].measured);
        let mut md = String::new();
        markdown(&result, &mut md);
        let row = md.lines().find(|l| l.contains("RemoteIP")).expect("the seed's row");
        assert!(row.contains(r#"`DeviceNetworkEvents \| where"#), "a KQL pipe is escaped in a table: {row}");
    }
}

//! The device timeline: every event of both tables, newest first, as terminal lines or as a
//! self-contained HTML page.

use std::io::{self, Write};
use std::time::Duration;

use serde_json::{Value as Json, json};

use crate::output::terminal_safe;
use crate::store::{Store, StoreError};
use crate::time::{format_datetime, parse_datetime};

/// Which events the timeline shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimelineFilter {
    /// Only events newer than this.
    pub since: Option<Duration>,
    /// Only events of processes with this file name (ASCII case-insensitive).
    pub process: Option<String>,
    /// At most this many (the newest).
    pub limit: Option<usize>,
    /// Only events with this ActionType (e.g. ExploitGuardNetworkProtectionBlocked).
    pub action: Option<String>,
    /// Only events of the device with this DeviceName.
    pub device: Option<String>,
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEvent {
    /// Microseconds since the epoch.
    pub timestamp: i64,
    pub table: String,
    pub device: String,
    /// The device's stable id, and the event's number on it (none on events of a store older than the
    /// export): together they name the event across the fleet.
    pub device_id: String,
    pub seq: Option<i64>,
    pub action: String,
    /// Empty for flows seen only on the wire.
    pub process: String,
    pub pid: Option<i64>,
    pub account: String,
    pub remote_ip: String,
    pub remote_port: Option<i64>,
    pub protocol: String,
    /// The real target (RemoteUrl); empty when none was named.
    pub target: String,
    pub additional: Json,
}

impl TimelineEvent {
    /// `ip:port`, with IPv6 addresses in brackets.
    pub fn remote(&self) -> String {
        let ip = if self.remote_ip.contains(':') {
            format!("[{}]", self.remote_ip)
        } else {
            self.remote_ip.clone()
        };
        match self.remote_port {
            Some(port) => format!("{ip}:{port}"),
            None => ip,
        }
    }

    /// `curl[4242]`, or `-` without a process.
    pub fn process_label(&self) -> String {
        match (&self.process, self.pid) {
            (p, _) if p.is_empty() => "-".to_string(),
            (p, Some(pid)) => format!("{p}[{pid}]"),
            (p, None) => p.clone(),
        }
    }

    /// Flags worth a glance: the matched indicator, domain fronting, ECH.
    pub fn notes(&self) -> String {
        let mut notes = Vec::new();
        if let Some(indicator) = self.additional.get("MatchedIndicator").and_then(Json::as_str) {
            notes.push(format!("indicator={indicator}"));
        }
        for (key, note) in [("DomainFronting", "fronting"), ("Ech", "ech")] {
            if self.additional.get(key) == Some(&Json::Bool(true)) {
                notes.push(note.to_string());
            }
        }
        notes.join(" ")
    }
}

impl Store {
    /// The timeline, newest first. `now` (microseconds since the epoch) anchors `since`.
    pub fn timeline(&self, filter: &TimelineFilter, now: i64) -> Result<Vec<TimelineEvent>, StoreError> {
        let since = filter.since.map(|d| {
            let age = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
            format_datetime(now.saturating_sub(age))
        });
        let limit = filter.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let select = |table: &str| {
            format!(
                "SELECT '{table}', Timestamp, DeviceName, ActionType, InitiatingProcessFileName, InitiatingProcessId, \
                 InitiatingProcessAccountName, RemoteIP, RemotePort, Protocol, RemoteUrl, AdditionalFields, ReportId, \
                 DeviceId, Seq \
                 FROM {table} WHERE (?1 IS NULL OR Timestamp >= ?1) \
                 AND (?2 IS NULL OR InitiatingProcessFileName = ?2 COLLATE NOCASE) \
                 AND (?4 IS NULL OR ActionType = ?4) AND (?5 IS NULL OR DeviceName = ?5)"
            )
        };
        let sql = format!(
            "{} UNION ALL {} ORDER BY 2 DESC, 13 DESC LIMIT ?3",
            select("DeviceNetworkEvents"),
            select("DeviceEvents")
        );
        let sqlite =
            |source| StoreError::Sqlite { op: "read the timeline", path: self.path().to_path_buf(), source };
        let mut statement = self.conn.prepare(&sql).map_err(sqlite)?;
        let rows = statement
            .query_map(rusqlite::params![since, filter.process, limit, filter.action, filter.device], |row| {
                let text = |i: usize| -> rusqlite::Result<String> {
                    Ok(row.get::<_, Option<String>>(i)?.unwrap_or_default())
                };
                let timestamp = text(1)?;
                let additional = text(11)?;
                Ok(TimelineEvent {
                    timestamp: parse_datetime(&timestamp).unwrap_or(0),
                    table: text(0)?,
                    device: text(2)?,
                    device_id: text(13)?,
                    seq: row.get(14)?,
                    action: text(3)?,
                    process: text(4)?,
                    pid: row.get(5)?,
                    account: text(6)?,
                    remote_ip: text(7)?,
                    remote_port: row.get(8)?,
                    protocol: text(9)?,
                    target: text(10)?,
                    additional: serde_json::from_str(&additional).unwrap_or(Json::Null),
                })
            })
            .map_err(sqlite)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sqlite)
    }
}

const RESET: &str = "\x1b[0m";

fn action_colour(action: &str) -> &'static str {
    match action {
        "ConnectionSuccess" => "\x1b[32m",
        "ConnectionFailed" => "\x1b[35m",
        a if a.ends_with("Blocked") => "\x1b[1;31m",
        a if a.ends_with("Audited") => "\x1b[33m",
        _ => "",
    }
}

/// One line per event: time, process, action, remote ip:port (the proxy, for proxied connections), real
/// target, notes. Columns are aligned; `colour` adds ANSI colours.
pub fn write_text(events: &[TimelineEvent], out: &mut dyn Write, colour: bool) -> io::Result<()> {
    if events.is_empty() {
        return writeln!(out, "no events");
    }
    let rows: Vec<[String; 6]> = events
        .iter()
        .map(|e| {
            let time = format_datetime(e.timestamp).replacen('T', " ", 1).trim_end_matches('Z').to_string();
            let target = if e.target.is_empty() { "-".to_string() } else { e.target.clone() };
            [time, e.process_label(), e.action.clone(), e.remote(), target, e.notes()]
                .map(|field| terminal_safe(&field).into_owned())
        })
        .collect();
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, field) in widths.iter_mut().zip(row) {
            *w = (*w).max(field.chars().count());
        }
    }
    for (row, event) in rows.iter().zip(events) {
        let mut line = String::new();
        for (i, field) in row.iter().enumerate() {
            let pad = " ".repeat(widths[i] - field.chars().count());
            let (start, end) = match (colour, i) {
                (true, 0) => ("\x1b[2m", RESET),
                (true, 2) => (action_colour(&event.action), RESET),
                (true, 4) => ("\x1b[1m", RESET),
                _ => ("", ""),
            };
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(&format!("{start}{field}{end}{pad}"));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// A page that needs nothing but itself: inline CSS and JS, the events as JSON inside it, and a Content
/// Security Policy that forbids loading anything else. The script draws the events on a time axis with
/// one lane per process, lists them grouped by process, and filters both.
pub fn render_html(events: &[TimelineEvent], generated_at: i64) -> String {
    let data: Vec<Json> = events
        .iter()
        .map(|e| {
            json!({
                "t": e.timestamp / 1000,
                "time": format_datetime(e.timestamp),
                "table": e.table,
                "device": e.device,
                "action": e.action,
                "process": e.process,
                "pid": e.pid,
                "account": e.account,
                "remote": e.remote(),
                "protocol": e.protocol,
                "target": e.target,
                "notes": e.notes(),
                "details": if e.additional.is_null() { String::new() } else { e.additional.to_string() },
            })
        })
        .collect();
    let json = Json::Array(data).to_string();
    // Inside <script>, "</script>" or "<!--" in the data would end or confuse the element: escape the
    // characters that can start them. JSON.parse reads the escapes back.
    let json = json.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026");
    HTML_TEMPLATE.replace("__GENERATED__", &format_datetime(generated_at)).replace("__EVENTS__", &json)
}

const HTML_TEMPLATE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Device timeline</title>
<style>
  :root { --fg: #1d2330; --muted: #667085; --line: #d0d5dd; --bg: #ffffff; --band: #f5f7fa;
          --ok: #2e7d32; --fail: #8e24aa; --audit: #c77700; --block: #c62828; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
  header { padding: 16px 24px; border-bottom: 1px solid var(--line); position: sticky; top: 0; background: var(--bg); }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 16px; margin: 0 0 8px; }
  h3 { font-size: 14px; margin: 16px 0 4px; }
  .muted, .count { color: var(--muted); font-weight: normal; }
  .filters { display: flex; gap: 16px; flex-wrap: wrap; margin-top: 8px; }
  .filters label { display: flex; gap: 6px; align-items: center; }
  input, select { font: inherit; padding: 2px 6px; }
  section { padding: 12px 24px; }
  .ticks { position: relative; height: 18px; margin: 0 16px 0 180px; }
  .tick-label { position: absolute; transform: translateX(-50%); font-size: 11px; color: var(--muted); white-space: nowrap; }
  .lane { display: flex; align-items: center; height: 26px; }
  .lane:nth-child(odd) { background: var(--band); }
  .lane-label { width: 180px; flex: none; padding-left: 6px; font-size: 12px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .track { position: relative; flex: 1; height: 100%; margin-right: 16px; border-left: 1px solid var(--line); }
  .dot { position: absolute; top: 50%; width: 11px; height: 11px; margin: -5.5px 0 0 -5.5px; border-radius: 50%;
         background: currentColor; border: 1px solid #fff; }
  .ConnectionSuccess { color: var(--ok); }
  .ConnectionFailed { color: var(--fail); }
  .ExploitGuardNetworkProtectionAudited { color: var(--audit); }
  .ExploitGuardNetworkProtectionBlocked { color: var(--block); font-weight: bold; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 2px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
  td.time, td.remote { font-family: ui-monospace, monospace; white-space: nowrap; }
  td.target { font-weight: 600; min-width: 12em; overflow-wrap: anywhere; }
  td.action { white-space: nowrap; }
  td.notes { overflow-wrap: anywhere; min-width: 8em; }
  /* AdditionalFields go on a row of their own under the event, across the table, so the table fits the page. */
  tr.has-details td { border-bottom: none; }
  td.details { color: var(--muted); font-family: ui-monospace, monospace; font-size: 12px; overflow-wrap: anywhere;
               padding: 0 8px 6px 24px; }
  .legend span { margin-right: 12px; }
</style>
</head>
<body>
<header>
  <h1>Device timeline</h1>
  <div class="muted">Generated __GENERATED__ &middot; showing <span id="shown-count"></span> of <span id="total-count"></span> events <span id="range"></span></div>
  <div class="filters">
    <label>Process <input id="filter-process" type="search" placeholder="e.g. curl"></label>
    <label>Target <input id="filter-target" type="search" placeholder="e.g. example.com"></label>
    <label>Action <select id="filter-action"><option value="">all</option></select></label>
  </div>
</header>
<section>
  <h2>Time axis</h2>
  <div class="legend muted" id="legend"></div>
  <div id="axis"></div>
</section>
<section>
  <h2>Events by process</h2>
  <div id="groups"></div>
</section>
<noscript><section>This page draws the timeline with JavaScript; enable it to see the events.</section></noscript>
<script type="application/json" id="timeline-data">__EVENTS__</script>
<script>
(function () {
  "use strict";
  var events = JSON.parse(document.getElementById("timeline-data").textContent);
  var byId = function (id) { return document.getElementById(id); };
  var processInput = byId("filter-process"), targetInput = byId("filter-target"), actionSelect = byId("filter-action");

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  function processName(e) { return e.process || "(no process)"; }
  function shortTime(ms, span) {
    var iso = new Date(ms).toISOString();
    return span > 2 * 86400000 ? iso.slice(0, 16).replace("T", " ") : iso.slice(11, 19);
  }

  var actions = [];
  events.forEach(function (e) { if (actions.indexOf(e.action) < 0) { actions.push(e.action); } });
  actions.sort().forEach(function (a) {
    var option = el("option", "", a);
    option.value = a;
    actionSelect.appendChild(option);
    var key = el("span", a, "\u25CF " + a);
    byId("legend").appendChild(key);
  });
  byId("total-count").textContent = String(events.length);
  // Filters can be preset in the address: timeline.html#process=curl&action=ExploitGuardNetworkProtectionBlocked
  var preset = new URLSearchParams(location.hash.replace(/^#/, ""));
  processInput.value = preset.get("process") || "";
  targetInput.value = preset.get("target") || "";
  actionSelect.value = preset.get("action") || "";

  function selected() {
    var p = processInput.value.trim().toLowerCase();
    var t = targetInput.value.trim().toLowerCase();
    var a = actionSelect.value;
    return events.filter(function (e) {
      return (!p || processName(e).toLowerCase().indexOf(p) >= 0) &&
             (!t || (e.target + " " + e.remote).toLowerCase().indexOf(t) >= 0) &&
             (!a || e.action === a);
    });
  }

  function groupByProcess(list) {
    var groups = [], index = {};
    list.forEach(function (e) {
      var name = processName(e);
      if (!(name in index)) { index[name] = groups.length; groups.push({ name: name, events: [] }); }
      groups[index[name]].events.push(e);
    });
    return groups;
  }

  function drawAxis(groups, list) {
    var axis = byId("axis");
    axis.textContent = "";
    if (list.length === 0) { axis.appendChild(el("p", "muted", "No events match the filters.")); return; }
    var min = Infinity, max = -Infinity;
    list.forEach(function (e) { min = Math.min(min, e.t); max = Math.max(max, e.t); });
    var span = Math.max(max - min, 1000);
    var percent = function (t) { return (100 * (t - min) / span).toFixed(3) + "%"; };
    var ticks = el("div", "ticks");
    for (var k = 0; k <= 4; k++) {
      var t = min + (span * k) / 4;
      var tick = el("span", "tick-label", shortTime(t, span));
      tick.style.left = percent(t);
      ticks.appendChild(tick);
    }
    axis.appendChild(ticks);
    groups.forEach(function (g) {
      var lane = el("div", "lane");
      lane.appendChild(el("div", "lane-label", g.name + " (" + g.events.length + ")"));
      var track = el("div", "track");
      g.events.forEach(function (e) {
        var dot = el("span", "dot " + e.action);
        dot.style.left = percent(e.t);
        dot.title = e.time + "  " + e.action + "  " + processName(e) + (e.pid !== null ? "[" + e.pid + "]" : "") +
          "  " + e.remote + "  \u2192 " + (e.target || "-");
        track.appendChild(dot);
      });
      lane.appendChild(track);
      axis.appendChild(lane);
    });
  }

  function drawGroups(groups) {
    var container = byId("groups");
    container.textContent = "";
    groups.forEach(function (g) {
      var section = el("div", "group");
      var heading = el("h3", "", g.name + " ");
      heading.appendChild(el("span", "count", g.events.length + (g.events.length === 1 ? " event" : " events")));
      section.appendChild(heading);
      var table = el("table");
      var head = el("tr");
      ["Time", "Action", "PID", "Account", "Remote (proxy)", "Target", "Notes"].forEach(function (h) { head.appendChild(el("th", "", h)); });
      table.appendChild(el("thead")).appendChild(head);
      var body = el("tbody");
      g.events.forEach(function (e) {
        var row = el("tr", "event");
        row.appendChild(el("td", "time", e.time));
        row.appendChild(el("td", "action " + e.action, e.action));
        row.appendChild(el("td", "pid", e.pid === null ? "" : String(e.pid)));
        row.appendChild(el("td", "account", e.account));
        row.appendChild(el("td", "remote", e.remote + " " + e.protocol));
        row.appendChild(el("td", "target", e.target || "-"));
        row.appendChild(el("td", "notes", e.notes));
        body.appendChild(row);
        if (e.details) {
          row.className += " has-details";
          var more = el("tr", "details-row");
          var cell = el("td", "details", e.details);
          cell.colSpan = 7;
          more.appendChild(cell);
          body.appendChild(more);
        }
      });
      table.appendChild(body);
      section.appendChild(table);
      container.appendChild(section);
    });
  }

  function render() {
    var list = selected();
    var groups = groupByProcess(list);
    byId("shown-count").textContent = String(list.length);
    byId("range").textContent = list.length ? "from " + list[list.length - 1].time + " to " + list[0].time : "";
    drawAxis(groups, list);
    drawGroups(groups);
  }

  [processInput, targetInput].forEach(function (input) { input.addEventListener("input", render); });
  actionSelect.addEventListener("change", render);
  render();
})();
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    fn event(target: &str) -> TimelineEvent {
        TimelineEvent {
            timestamp: 1_000_000,
            table: "DeviceNetworkEvents".into(),
            device: "host".into(),
            device_id: "id".into(),
            seq: Some(1),
            action: "ConnectionSuccess".into(),
            process: "curl".into(),
            pid: Some(42),
            account: "root".into(),
            remote_ip: "10.0.0.5".into(),
            remote_port: Some(3128),
            protocol: "Tcp".into(),
            target: target.into(),
            additional: json!({"MatchedIndicator": "example.com"}),
        }
    }

    #[test]
    fn data_cannot_break_out_of_the_script() {
        let page = render_html(&[event("</script><img src=x onerror=alert(1)>")], 0);
        assert!(!page.contains("</script><img"), "the target must be escaped inside the page");
        assert!(page.contains("\\u003c/script\\u003e"));
    }

    #[test]
    fn text_lines_are_aligned_and_escaped() {
        let mut out = Vec::new();
        write_text(&[event("example.com"), event("\u{1b}]0;x")], &mut out, false).expect("write to a vector");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "1970-01-01 00:00:01.000000  curl[42]  ConnectionSuccess  10.0.0.5:3128  example.com  indicator=example.com"
        );
        assert!(lines[1].contains("\\u{1b}]0;x"), "{:?}", lines[1]);
    }

    #[test]
    fn ipv6_remotes_get_brackets() {
        let mut e = event("x");
        e.remote_ip = "2001:db8::1".into();
        assert_eq!(e.remote(), "[2001:db8::1]:3128");
    }
}

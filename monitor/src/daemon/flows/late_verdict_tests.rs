//! Block mode fails closed: a denied target user space names on a connection the kernel let through is
//! blocked late (aborted, reported Blocked with `LateVerdict`), never reported as Audited.

use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf, sync::Arc, time::Duration};

use monitor_common::{
    config::{MODE_AUDIT, MODE_BLOCK},
    record::{
        AF_INET, Endpoints, KIND_ESTABLISHED, KIND_PAYLOAD, KIND_VERDICT, NAME_MAX, PAYLOAD_CHUNK,
        PayloadRecord, RecordHeader, SocketRecord, VerdictRecord,
    },
    verdict::{SOURCE_NONE, VERDICT_NO_MATCH, VERDICT_UNINSPECTABLE_ALLOWED},
};
use monitor_core::policy::{Indicator, IndicatorSet};
use serde_json::Value;

use super::{AbortReason, Flows, Sink};

const COOKIE: u64 = 0x17;

fn header(kind: u32) -> RecordHeader {
    RecordHeader { kind, _pad: 0, cookie: COOKIE, ktime_ns: 1 }
}

fn endpoints() -> Endpoints {
    let ip = |a: [u8; 4]| [u32::from_ne_bytes(a), 0, 0, 0];
    Endpoints {
        family: AF_INET,
        local_port: 40000,
        remote_port: 3128,
        _pad: 0,
        local_addr: ip([10, 200, 0, 2]),
        remote_addr: ip([10, 200, 1, 1]),
    }
}

struct Run {
    flows: Flows,
    sink: Sink,
    events: PathBuf,
}

impl Run {
    fn new(mode: u32, name: &str) -> Run {
        let events =
            std::env::temp_dir().join(format!("monitor-late-verdict-{name}-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&events);
        let sink = Sink::open(events.to_str().expect("utf-8 temp path"), None, "test-device".into())
            .expect("open events file");
        let block = [Indicator::parse("denied.example.test").expect("indicator")];
        let set = Arc::new(IndicatorSet::from_lists(&[], &block));
        let flows = Flows::new(
            mode,
            false,
            Duration::from_secs(1),
            set,
            Arc::new(std::sync::Mutex::new(HashMap::new())),
        );
        Run { flows, sink, events }
    }

    /// An established connection to the proxy whose first send is `request`, and the kernel's verdict.
    fn request(&mut self, request: &[u8], outcome: u32) {
        let established =
            SocketRecord { header: header(KIND_ESTABLISHED), endpoints: endpoints(), old_state: 0, _pad: 0 };
        self.flows.on_established(&established, &mut self.sink);
        let mut data = [0u8; PAYLOAD_CHUNK];
        data[..request.len()].copy_from_slice(request);
        let payload =
            PayloadRecord { header: header(KIND_PAYLOAD), offset: 0, len: request.len() as u32, data };
        self.flows.on_payload(&payload, &mut self.sink);
        let verdict = VerdictRecord {
            header: header(KIND_VERDICT),
            verdict: outcome,
            source: SOURCE_NONE,
            last: 1,
            name_len: 0,
            name: [0; NAME_MAX],
        };
        self.flows.on_verdict(&verdict, &mut self.sink);
    }

    /// The events written so far (the event loop flushes at the end of each turn; here, now).
    fn events(&mut self) -> Vec<Value> {
        self.sink.flush_events();
        let text = std::fs::read_to_string(&self.events).expect("read events file");
        text.lines().map(|l| serde_json::from_str(l).expect("event is JSON")).collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.events);
    }
}

/// A WebDAV method the kernel does not read: it lets the request through as uninspectable.
const PROPFIND: &[u8] = b"PROPFIND http://denied.example.test/ HTTP/1.1\r\nHost: denied.example.test\r\n\r\n";

#[test]
fn block_mode_aborts_what_the_kernel_let_through() {
    let mut run = Run::new(MODE_BLOCK, "block");
    run.request(PROPFIND, VERDICT_UNINSPECTABLE_ALLOWED);
    assert_eq!(run.flows.counters.late_verdicts, 1);
    assert_eq!(run.flows.counters.blocked, 1);
    assert_eq!(run.flows.counters.audited, 0);
    let aborts: Vec<_> = run.flows.aborts.drain(..).collect();
    assert_eq!(aborts.len(), 1, "the socket is aborted: {aborts:?}");
    assert_eq!(aborts[0].why, AbortReason::LateVerdict);
    assert_eq!(aborts[0].cookie, COOKIE);
    assert_eq!(aborts[0].local, (Ipv4Addr::new(10, 200, 0, 2).into(), 40000));
    let events = run.events();
    let actions: Vec<&str> = events.iter().filter_map(|e| e["ActionType"].as_str()).collect();
    assert_eq!(actions, ["ExploitGuardNetworkProtectionBlocked"], "{events:?}");
    let blocked = &events[0];
    assert_eq!(blocked["RemoteUrl"], "denied.example.test", "{blocked}");
    assert_eq!(blocked["AdditionalFields"]["LateVerdict"], true, "{blocked}");
    assert_eq!(blocked["AdditionalFields"]["IsAudit"], false, "{blocked}");
    assert_eq!(blocked["AdditionalFields"]["TargetSource"], "AbsoluteForm", "{blocked}");
    assert_eq!(blocked["AdditionalFields"]["MatchedIndicator"], "denied.example.test", "{blocked}");
    // Closing later reports nothing more: the connection was blocked.
    let closed = SocketRecord {
        header: header(monitor_common::record::KIND_CLOSED),
        endpoints: endpoints(),
        old_state: 0,
        _pad: 0,
    };
    run.flows.on_closed(&closed, &mut run.sink);
    assert_eq!(run.events().len(), 1);
}

#[test]
fn block_mode_leaves_allowed_names_alone() {
    let mut run = Run::new(MODE_BLOCK, "allowed");
    run.request(
        b"GET http://alpha.example.test/ HTTP/1.1\r\nHost: alpha.example.test\r\n\r\n",
        VERDICT_NO_MATCH,
    );
    assert_eq!(run.flows.counters.late_verdicts, 0);
    assert!(run.flows.aborts.is_empty());
    let events = run.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["ActionType"], "ConnectionSuccess");
}

#[test]
fn audit_mode_reports_the_same_as_audited() {
    let mut run = Run::new(MODE_AUDIT, "audit");
    run.request(PROPFIND, VERDICT_NO_MATCH);
    assert_eq!(run.flows.counters.late_verdicts, 0);
    assert!(run.flows.aborts.is_empty(), "audit mode aborts nothing");
    let events = run.events();
    let actions: Vec<&str> = events.iter().filter_map(|e| e["ActionType"].as_str()).collect();
    assert_eq!(actions, ["ExploitGuardNetworkProtectionAudited", "ConnectionSuccess"], "{events:?}");
    assert_eq!(events[0]["AdditionalFields"]["IsAudit"], true);
    assert_eq!(events[0]["AdditionalFields"].get("LateVerdict"), None);
}

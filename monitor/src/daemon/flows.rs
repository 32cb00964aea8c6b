//! Connections as user space follows them, from the kernel's records to events.
//!
//! A socket flow (keyed by socket cookie) starts with its process at connect(), learns its addresses
//! when established, gets its first bytes from sk_msg and the kernel's verdicts, and ends when closed.
//! Its ConnectionSuccess is emitted once the real target is named (or clearly will not be), so the
//! event carries the target, the proxy and the process together. A wire flow (gateway mode, keyed by
//! its 4-tuple) is the same without a process.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use monitor_common::{
    config::{MODE_AUDIT, MODE_BLOCK, MODE_OFF},
    record::{
        DEFER_EARLY_DATA, DEFER_LIMIT, DeferRecord, HoldRecord, PHASE_BLOCKED, PHASE_DONE, PHASE_HTTP,
        PHASE_SOCKS5_REQUEST, PHASE_TUNNEL, PayloadRecord, ProcessRecord, ReplyRecord, SocketRecord,
        VerdictRecord, WireFlowKey, WireRecord, WireVerdictRecord,
    },
    verdict::{
        SOURCE_ABSOLUTE_FORM, SOURCE_CONNECT, SOURCE_HOLD_EXPIRED, SOURCE_HTTP_HOST, SOURCE_NONE,
        SOURCE_REMOTE_IP, SOURCE_SOCKS_IP, SOURCE_SOCKS4A, SOURCE_SOCKS5, SOURCE_TLS_SNI, VERDICT_AUDITED,
        VERDICT_BLOCKED, VERDICT_UNINSPECTABLE_ALLOWED, VERDICT_UNINSPECTABLE_BLOCKED, source_name,
    },
};
use monitor_core::{
    event::{ActionType, DeviceEvent, InitiatingProcess, rfc3339_utc},
    extract::{FlowInspector, TargetSource, WireProtocol},
    policy::{Decision, IndicatorSet},
    stream::Stream,
};
use serde_json::{Map, Value};

use super::{
    abort::{Abort, AbortReason},
    process::{Accounts, EXEC_REMEMBERED, ExecCache, describe},
    records::{addr, comm, local, remote, wire_acks, wire_ends, wire_key, wire_opens, wire_tuple},
    sink::Sink,
};

/// How long a connection may stay silent before its ConnectionSuccess goes out without a target
/// (a server-speaks-first protocol, an idle client).
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(1500);
/// While a request is incomplete, or after a CONNECT or SOCKS request until the proxy answers (it may
/// have to resolve and reach the target first): how long to wait before reporting what is known.
const TUNNEL_WAIT: Duration = Duration::from_secs(15);
/// After the proxy accepted a tunnel: how long to wait for the client's first bytes in it (a protocol
/// whose server speaks first sends none).
const TUNNEL_OPEN_WAIT: Duration = Duration::from_millis(1500);
/// How long a named connection waits for the kernel's verdict record before it is reported anyway.
const VERDICT_GRACE: Duration = Duration::from_millis(250);
/// Reported flows whose close was never seen are forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// User space acts on a stalled hold this long after the kernel's bound.
const TICK_SLACK: Duration = Duration::from_millis(200);
const SOCK_DGRAM: u32 = 2;

struct Verdict {
    outcome: u32,
    source: u32,
    name: String,
}

struct SocketFlow {
    opened_ns: u64,
    process: Option<InitiatingProcess>,
    remote: Option<(IpAddr, u16)>,
    local: Option<(IpAddr, u16)>,
    inspector: FlowInspector,
    next_offset: u32,
    lost_bytes: bool,
    verdicts: Vec<Verdict>,
    reported: bool,
    blocked: bool,
    /// Block mode: bytes the kernel holds until the rest of a request arrives (from its hold record).
    held: Option<u32>,
    /// The hold ran out before the bytes that decide arrived.
    hold_expired: bool,
    /// Block mode: user space named a denied target the kernel had let through; the socket is aborted.
    late_verdict: bool,
    /// The kernel judges every request on this (plain HTTP) connection: it stays in the sockhash.
    kernel_follows: bool,
    /// The kernel left the verdict to user space (its bytes are read at egress).
    deferred: Option<Deferral>,
    /// Refused before its handshake completed (Fast Open data in the SYN): aborted once established.
    abort_when_established: Option<AbortReason>,
    deadline: Option<Instant>,
    touched: Instant,
}

/// A verdict the kernel named from a plain-HTTP request (absolute form or Host).
fn is_plain_http(source: u32) -> bool {
    matches!(source, SOURCE_ABSOLUTE_FORM | SOURCE_HTTP_HOST)
}

impl SocketFlow {
    /// Whether a verdict from `source` is on a later request of a kept-alive (or pipelined) plain-HTTP
    /// connection: the connection was already reported for its first request.
    fn later_request(&self, source: u32) -> bool {
        // A CONNECT after an earlier one (a 407, then the request with credentials, on one connection).
        (self.reported && is_plain_http(source))
            || (source == SOURCE_CONNECT && self.verdicts.iter().any(|v| v.source == SOURCE_CONNECT))
    }
}

/// A connection whose verdict the kernel left to user space (`PHASE_EGRESS`).
struct Deferral {
    /// Stream offset the deferred bytes start at.
    from: u32,
    /// The bytes handed over from `from` on, in order: tcp_egress sees TCP's own order, retransmissions
    /// included.
    stream: Stream,
    /// User space has answered (the kernel's next phase is written, or the socket aborted).
    answered: bool,
}

struct WireFlow {
    /// The kernel's key of the flow in `WIRE_FLOWS`.
    key: WireFlowKey,
    opened_ns: u64,
    established: bool,
    inspector: FlowInspector,
    /// The client's bytes in order (offsets from the kernel: sequence number minus ISN minus one).
    stream: Stream,
    reported: bool,
    /// Block mode: the kernel could not read what names the target, and let the flow through.
    uninspectable: bool,
    deadline: Option<Instant>,
}

type FourTuple = ((IpAddr, u16), (IpAddr, u16));

/// Counters for `monitor status` and the logs.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct FlowCounters {
    pub records: u64,
    pub undecodable_records: u64,
    pub connections: u64,
    pub named: u64,
    pub blocked: u64,
    pub audited: u64,
    pub lost_payload: u64,
    pub wire_flows: u64,
    pub wire_duplicates: u64,
    /// Held sends whose hold ran out (block mode): reported uninspectable.
    pub holds_expired: u64,
    /// Of those, sockets aborted because `--uninspectable block`.
    pub holds_aborted: u64,
    /// Connections whose verdict the kernel left to user space: a ClientHello past its window.
    pub deferred_large_hello: u64,
    /// ... and bytes that left without passing sk_msg (TCP Fast Open, a send begun while connecting).
    pub deferred_early_data: u64,
    /// Block mode: connections the kernel let through whose target user space found denied (a form the
    /// kernel does not read, or past its bounds): reported Blocked with `LateVerdict` and aborted.
    pub late_verdicts: u64,
}

pub struct Flows {
    inspect: bool,
    /// Audit mode: nothing waits on the kernel's verdict, so a socket leaves the sockhash as soon as
    /// user space has named its target.
    release_when_named: bool,
    /// The indicators in force, to explain verdicts and to judge what the kernel could not.
    pub set: Arc<IndicatorSet>,
    sockets: HashMap<u64, SocketFlow>,
    wires: HashMap<FourTuple, WireFlow>,
    /// 4-tuples of local sockets, so TC does not report them a second time.
    local_tuples: HashSet<FourTuple>,
    accounts: Accounts,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to date kernel records.
    wall_offset_ns: i128,
    pub counters: FlowCounters,
    /// Cookies the kernel will not inspect again: user space takes them out of SOCKS.
    pub judged: Vec<u64>,
    block: bool,
    /// `--uninspectable block` (applies in block mode).
    refuse_uninspectable: bool,
    hold_timeout: Duration,
    /// Held sockets to abort: their hold ran out and `--uninspectable block` refuses them.
    pub aborts: Vec<Abort>,
    /// Forwarded flows the kernel let through whose target user space found denied (block mode): the
    /// kernel refuses their next segment (resets at both ends) and drops the rest.
    pub refused_wires: Vec<WireFlowKey>,
    /// QUIC flows whose target is denied (block mode): the kernel drops their later datagrams.
    pub denied_quic: Vec<QuicKey>,
    /// Forwarded QUIC flows forgotten: their `WIRE_QUIC` entries go too.
    pub expired_wire_quic: Vec<WireFlowKey>,
    /// Answers for deferred connections: the phase the kernel goes on in, by cookie.
    pub deferred_answers: Vec<(u64, u32)>,
    quic: HashMap<QuicKey, QuicFlow>,
    /// Processes as they were at their exec (see `process::watch_execs`).
    execs: ExecCache,
    /// Recent /proc answers by tgid, with the comm they were read for (a reused pid has another one).
    processes: HashMap<u32, (Instant, String, InitiatingProcess)>,
    /// Processes of UDP sockets (connect() to port 443), until their QUIC flow is seen or they age out.
    udp_processes: HashMap<u64, (InitiatingProcess, Instant)>,
}

/// How long a process's /proc description is reused for its next connections (its command line rarely
/// changes; a pid reused this quickly by a process with the same comm and uid is not told apart).
const PROCESS_CACHE_FOR: Duration = Duration::from_secs(2);

pub(super) fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // Both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Flows {
    pub fn new(
        mode: u32,
        refuse_uninspectable: bool,
        hold_timeout: Duration,
        set: Arc<IndicatorSet>,
        execs: ExecCache,
    ) -> Self {
        Flows {
            inspect: mode != MODE_OFF,
            release_when_named: mode == MODE_AUDIT,
            set,
            sockets: HashMap::new(),
            wires: HashMap::new(),
            local_tuples: HashSet::new(),
            accounts: Accounts::load(),
            wall_offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
            counters: FlowCounters::default(),
            judged: Vec::new(),
            block: mode == MODE_BLOCK,
            refuse_uninspectable,
            hold_timeout,
            aborts: Vec::new(),
            denied_quic: Vec::new(),
            refused_wires: Vec::new(),
            expired_wire_quic: Vec::new(),
            deferred_answers: Vec::new(),
            quic: HashMap::new(),
            execs,
            processes: HashMap::new(),
            udp_processes: HashMap::new(),
        }
    }

    pub fn set_mode(&mut self, mode: u32, refuse_uninspectable: bool, hold_timeout: Duration) {
        self.refuse_uninspectable = refuse_uninspectable;
        self.hold_timeout = hold_timeout;
        self.block = mode == MODE_BLOCK;
        self.inspect = mode != MODE_OFF;
        self.release_when_named = mode == MODE_AUDIT;
    }

    pub fn open_count(&self) -> usize {
        self.sockets.len() + self.wires.len()
    }

    fn timestamp(&self, ktime_ns: u64) -> String {
        rfc3339_utc((ktime_ns as i128 + self.wall_offset_ns).max(0) as u128)
    }

    fn socket(&mut self, cookie: u64, ktime_ns: u64) -> &mut SocketFlow {
        self.sockets.entry(cookie).or_insert_with(|| SocketFlow {
            opened_ns: ktime_ns,
            process: None,
            remote: None,
            local: None,
            inspector: FlowInspector::new(),
            next_offset: 0,
            lost_bytes: false,
            verdicts: Vec::new(),
            reported: false,
            blocked: false,
            held: None,
            hold_expired: false,
            late_verdict: false,
            kernel_follows: false,
            deferred: None,
            abort_when_established: None,
            deadline: None,
            touched: Instant::now(),
        })
    }

    /// The process behind `rec`, from /proc, or from the last few seconds' answers for the same process:
    /// a client making many connections would otherwise cost three /proc reads each.
    fn process_of(&mut self, rec: &ProcessRecord) -> InitiatingProcess {
        let name = comm(&rec.comm);
        let now = Instant::now();
        if let Some((seen, cached_comm, process)) = self.processes.get(&rec.tgid)
            && now.duration_since(*seen) < PROCESS_CACHE_FOR
            && *cached_comm == name
            && process.account_uid == rec.uid
        {
            return process.clone();
        }
        // A process that exec'd moments ago was read at its exec, while it surely existed: a client that
        // connects and exits at once (a refused connect()) may be gone from /proc by now.
        let exec = {
            let execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
            execs
                .get(&rec.tgid)
                .filter(|e| {
                    e.comm == name && e.uid == rec.uid && now.duration_since(e.seen) < EXEC_REMEMBERED
                })
                .map(|e| e.process.clone())
        };
        let process = match exec {
            Some(mut process) => {
                process.account_name = self.accounts.name(rec.uid);
                process.account_uid = rec.uid;
                process
            }
            None => describe(rec.tgid, rec.uid, &name, &self.accounts),
        };
        self.processes.insert(rec.tgid, (now, name, process.clone()));
        process
    }

    pub fn on_process(&mut self, rec: &ProcessRecord, sink: &mut Sink) {
        let process = self.process_of(rec);
        let cookie = rec.header.cookie;
        if rec.sock_type == SOCK_DGRAM {
            self.udp_processes.insert(cookie, (process, Instant::now()));
            return;
        }
        self.counters.connections += 1;
        let flow = self.socket(cookie, rec.header.ktime_ns);
        flow.opened_ns = rec.header.ktime_ns;
        flow.process = Some(process);
        flow.remote = Some(remote(&rec.endpoints));
        if matches!(rec.verdict, VERDICT_BLOCKED | VERDICT_AUDITED) {
            let target = remote(&rec.endpoints).0.to_string();
            let verdict = Verdict {
                outcome: rec.verdict,
                source: monitor_common::verdict::SOURCE_REMOTE_IP,
                name: target,
            };
            self.protection_event(cookie, &verdict, sink);
            if rec.verdict == VERDICT_BLOCKED {
                // connect() failed with EPERM: there will be no other record for this socket.
                self.sockets.remove(&cookie);
            }
        }
    }

    pub fn on_established(&mut self, rec: &SocketRecord, sink: &mut Sink) {
        let inspect = self.inspect;
        let tuple = (local(&rec.endpoints), remote(&rec.endpoints));
        self.local_tuples.insert(tuple);
        let cookie = rec.header.cookie;
        let flow = self.socket(cookie, rec.header.ktime_ns);
        flow.local = Some(tuple.0);
        flow.remote = Some(tuple.1);
        flow.touched = Instant::now();
        if let Some(why) = flow.abort_when_established.take() {
            self.abort(cookie, why);
            return;
        }
        if inspect {
            flow.deadline = Some(Instant::now() + FIRST_BYTES_WAIT);
        } else {
            self.report_success(rec.header.cookie, sink);
        }
    }

    pub fn on_failed(&mut self, rec: &SocketRecord, sink: &mut Sink) {
        let cookie = rec.header.cookie;
        let flow = self.socket(cookie, rec.header.ktime_ns);
        flow.remote = Some(remote(&rec.endpoints));
        let endpoints_local = local(&rec.endpoints);
        if endpoints_local.1 != 0 {
            flow.local = Some(endpoints_local);
        }
        if !flow.blocked {
            let mut fields = Map::new();
            fields.insert(
                "TcpStateBeforeClose".into(),
                Value::from(if rec.old_state == 2 { "SYN_SENT" } else { "SYN_RECV" }),
            );
            self.report(cookie, ActionType::ConnectionFailed, fields, sink);
        }
        self.forget(cookie);
    }

    pub fn on_closed(&mut self, rec: &SocketRecord, sink: &mut Sink) {
        let cookie = rec.header.cookie;
        if let Some(flow) = self.sockets.get_mut(&cookie) {
            flow.inspector.finish();
            if !flow.reported && !flow.blocked {
                let inspection = flow.inspector.inspection();
                let asked_for_tunnel = matches!(
                    inspection.source,
                    Some(
                        TargetSource::Connect
                            | TargetSource::Socks5
                            | TargetSource::Socks4a
                            | TargetSource::Socks4
                    )
                );
                if asked_for_tunnel && inspection.proxy_status.is_none() && !inspection.tunneled {
                    // The proxy closed (or the client gave up) before any tunnel opened.
                    let mut fields = Self::base_fields(flow);
                    fields.insert("TunnelOpened".into(), Value::from(false));
                    self.report(cookie, ActionType::ConnectionFailed, fields, sink);
                } else {
                    self.report_success(cookie, sink);
                }
            }
        }
        self.forget(cookie);
    }

    fn forget(&mut self, cookie: u64) {
        if let Some(flow) = self.sockets.remove(&cookie)
            && let (Some(l), Some(r)) = (flow.local, flow.remote)
        {
            self.local_tuples.remove(&(l, r));
        }
    }

    pub fn on_payload(&mut self, rec: &PayloadRecord, sink: &mut Sink) {
        let cookie = rec.header.cookie;
        let flow = self.socket(cookie, rec.header.ktime_ns);
        let len = (rec.len as usize).min(rec.data.len());
        let data = &rec.data[..len];
        if let Some(deferral) = &mut flow.deferred {
            let ready = deferral.stream.on_data(rec.offset, data);
            flow.inspector.client_bytes(&ready);
            flow.next_offset += ready.len() as u32;
            flow.touched = Instant::now();
            self.consider_deferred(cookie, false, sink);
            return;
        }
        if rec.offset != flow.next_offset {
            // A chunk was lost (ring buffer full): the bytes after it cannot be parsed in order.
            if !flow.lost_bytes {
                flow.lost_bytes = true;
                self.counters.lost_payload += 1;
            }
            return;
        }
        flow.inspector.client_bytes(data);
        flow.next_offset += len as u32;
        flow.held = None;
        flow.touched = Instant::now();
        // The kernel's verdict on these bytes follows them in the ring buffer: the success is reported
        // when it arrives (a blocked connection reports no success), or after a grace period if it was lost.
        flow.deadline =
            Some(Instant::now() + if flow.inspector.is_complete() { VERDICT_GRACE } else { TUNNEL_WAIT });
    }

    /// The kernel left this connection's verdict to user space (block mode: its bytes wait at egress).
    pub fn on_defer(&mut self, rec: &DeferRecord) {
        let timeout = self.hold_timeout;
        if rec.reason == DEFER_EARLY_DATA {
            self.counters.deferred_early_data += 1;
        } else {
            self.counters.deferred_large_hello += 1;
        }
        let flow = self.socket(rec.header.cookie, rec.header.ktime_ns);
        // Bytes before `from` came from sk_msg's records; the stream goes on from where they end.
        let stream = Stream::starting_at(flow.next_offset);
        flow.deferred = Some(Deferral { from: rec.from, stream, answered: false });
        // Bytes before `from` were judged by sk_msg and fed from its records; a gap there is a loss.
        let lost = flow.next_offset < rec.from && !flow.lost_bytes;
        flow.lost_bytes |= lost;
        flow.held = None;
        flow.touched = Instant::now();
        flow.deadline = Some(Instant::now() + timeout);
        if lost {
            self.counters.lost_payload += 1;
        }
    }

    /// Answer a deferred connection once its bytes say enough (or, `timed_out`, when no more are coming
    /// in time): the next phase for the kernel, or in block mode a refusal (the socket is aborted and
    /// its bytes never leave).
    fn consider_deferred(&mut self, cookie: u64, timed_out: bool, sink: &mut Sink) {
        let block = self.block;
        let refuse_uninspectable = self.refuse_uninspectable;
        let Some(flow) = self.sockets.get_mut(&cookie) else { return };
        let Some(deferral) = &flow.deferred else { return };
        if deferral.answered {
            return;
        }
        let read_all = flow.next_offset >= deferral.from.saturating_add(DEFER_LIMIT);
        if timed_out || read_all {
            flow.inspector.finish();
        }
        let inspection = flow.inspector.inspection();
        let tunnel_request = matches!(
            inspection.source,
            Some(TargetSource::Connect | TargetSource::Socks5 | TargetSource::Socks4a | TargetSource::Socks4)
        ) && !inspection.tunneled;
        // A SOCKS5 greeting: the proxy must answer it before the client names a target; the kernel
        // judges the request that follows.
        let greeting = inspection.protocol == Some(WireProtocol::Socks5) && inspection.source.is_none();
        let ready = flow.inspector.is_complete() || (tunnel_request && inspection.host.is_some()) || greeting;
        if !ready {
            return;
        }
        let denied = denied_name(&self.set, inspection);
        let named = !inspection.names().is_empty();
        let source = denied.as_deref().map(|name| user_source(inspection, name)).unwrap_or(SOURCE_NONE);
        let next = if greeting && !flow.inspector.is_complete() {
            PHASE_SOCKS5_REQUEST
        } else if tunnel_request {
            PHASE_TUNNEL
        } else if matches!(inspection.source, Some(TargetSource::AbsoluteForm | TargetSource::HttpHost)) {
            PHASE_HTTP
        } else {
            PHASE_DONE
        };
        let uninspectable = !named && !greeting;
        if let Some(deferral) = flow.deferred.as_mut() {
            deferral.answered = true;
        }
        flow.deadline = None;
        let refuse = block && (denied.is_some() || (uninspectable && refuse_uninspectable));
        if refuse {
            flow.blocked = true;
            self.deferred_answers.push((cookie, PHASE_BLOCKED));
            let verdict = match &denied {
                Some(name) => Verdict { outcome: VERDICT_BLOCKED, source, name: name.clone() },
                None => Verdict {
                    outcome: VERDICT_UNINSPECTABLE_BLOCKED,
                    source: SOURCE_NONE,
                    name: String::new(),
                },
            };
            self.protection_event(cookie, &verdict, sink);
            self.abort(cookie, AbortReason::Deferred);
            return;
        }
        self.deferred_answers.push((cookie, next));
        if uninspectable {
            flow.verdicts.push(Verdict {
                outcome: VERDICT_UNINSPECTABLE_ALLOWED,
                source: SOURCE_NONE,
                name: String::new(),
            });
        }
        if next == PHASE_DONE && !flow.reported {
            flow.inspector.finish();
            self.report_success(cookie, sink);
        } else if !flow.reported {
            // The kernel takes over: it judges what follows (the tunnel's first bytes, the request after
            // a greeting, the next request) and its verdicts report the connection.
            flow.deadline = Some(Instant::now() + TUNNEL_WAIT);
        }
    }

    /// The proxy's answer to a CONNECT or SOCKS request. A refusal (or a proxy that could not reach the
    /// target) makes the connection a ConnectionFailed for the real target.
    pub fn on_reply(&mut self, rec: &ReplyRecord, sink: &mut Sink) {
        let cookie = rec.header.cookie;
        let Some(flow) = self.sockets.get_mut(&cookie) else { return };
        let len = (rec.len as usize).min(rec.data.len());
        flow.inspector.server_bytes(&rec.data[..len]);
        let inspection = flow.inspector.inspection();
        let refused = match (inspection.proxy_status, inspection.protocol) {
            (Some(code), Some(WireProtocol::Socks5)) => code != 0,
            (Some(code), Some(WireProtocol::Socks4)) => code != 90,
            (Some(code), _) => !(200..300).contains(&code),
            (None, _) => false,
        };
        if refused && !flow.reported && !flow.blocked {
            let fields = Self::base_fields(flow);
            self.report(cookie, ActionType::ConnectionFailed, fields, sink);
        } else if !flow.reported {
            flow.deadline = Some(Instant::now() + TUNNEL_OPEN_WAIT);
        }
    }

    pub fn on_verdict(&mut self, rec: &VerdictRecord, sink: &mut Sink) {
        let cookie = rec.header.cookie;
        let len = (rec.name_len as usize).min(rec.name.len());
        let verdict = Verdict {
            outcome: rec.verdict,
            source: rec.source,
            name: String::from_utf8_lossy(&rec.name[..len])
                .to_ascii_lowercase()
                .trim_end_matches('.')
                .to_string(),
        };
        if rec.last != 0 {
            self.judged.push(cookie);
        }
        let outcome = verdict.outcome;
        let later = self.sockets.get(&cookie).is_some_and(|f| f.later_request(verdict.source));
        // Audited events come from user space's reading of the whole request (see `report_success`),
        // which also covers requests the kernel saw only in pieces; later requests on a kept-alive
        // connection only the kernel sees.
        if matches!(outcome, VERDICT_BLOCKED | VERDICT_UNINSPECTABLE_BLOCKED)
            || (outcome == VERDICT_AUDITED && later)
        {
            self.protection_event(cookie, &verdict, sink);
        }
        let flow = self.socket(cookie, rec.header.ktime_ns);
        flow.kernel_follows |= is_plain_http(verdict.source) && rec.last == 0;
        flow.held = None;
        flow.hold_expired |= verdict.source == SOURCE_HOLD_EXPIRED;
        flow.verdicts.push(verdict);
        if matches!(outcome, VERDICT_BLOCKED | VERDICT_UNINSPECTABLE_BLOCKED) {
            flow.blocked = true;
        } else if self.block && !later && self.audit_names(cookie, sink) {
            // The kernel let through what user space names denied: blocked now, not when reported.
        } else if let Some(flow) = self.sockets.get_mut(&cookie)
            && (rec.last != 0 || flow.inspector.is_complete())
            && !flow.reported
        {
            // The kernel has judged what named the target: what we have is the answer.
            if rec.last != 0 {
                flow.inspector.finish();
            }
            self.report_success(cookie, sink);
        }
    }

    fn base_fields(flow: &SocketFlow) -> Map<String, Value> {
        let mut fields = flow.inspector.inspection().additional_fields();
        if let Some(v) = flow.verdicts.iter().rev().find(|v| !v.name.is_empty()) {
            fields.insert("KernelTarget".into(), Value::from(v.name.as_str()));
            fields.insert("KernelTargetSource".into(), Value::from(source_name(v.source)));
        }
        if flow.verdicts.iter().any(|v| v.outcome == VERDICT_UNINSPECTABLE_ALLOWED) {
            fields.insert("Uninspectable".into(), Value::from(true));
        }
        if flow.lost_bytes {
            fields.insert("PayloadLost".into(), Value::from(true));
        }
        if flow.hold_expired {
            fields.insert("Uninspectable".into(), Value::from(true));
            fields.insert("HoldExpired".into(), Value::from(true));
        }
        if flow.late_verdict {
            fields.insert("LateVerdict".into(), Value::from(true));
        }
        fields
    }

    /// The kernel began holding a send (block mode): its verdict waits for the rest of the request,
    /// for at most the hold timeout.
    pub fn on_hold(&mut self, rec: &HoldRecord) {
        let timeout = self.hold_timeout;
        let flow = self.socket(rec.header.cookie, rec.header.ktime_ns);
        flow.held = Some(rec.held);
        flow.touched = Instant::now();
        if !flow.reported && !flow.blocked {
            // A little past the kernel's own bound, so a client that does write again is judged there.
            flow.deadline = Some(Instant::now() + timeout + TICK_SLACK);
        }
    }

    /// Abort the socket of `cookie` (SOCK_DESTROY, by the daemon's loop); one whose handshake has not
    /// completed yet is aborted once it is established. Whether it was queued now.
    fn abort(&mut self, cookie: u64, why: AbortReason) -> bool {
        let Some(flow) = self.sockets.get_mut(&cookie) else { return false };
        match (flow.local, flow.remote) {
            (Some(local), Some(remote)) => {
                let pid = flow.process.as_ref().map(|p| p.pid);
                self.aborts.push(Abort { cookie, why, pid, local, remote });
                true
            }
            _ => {
                flow.abort_when_established = Some(why);
                false
            }
        }
    }

    /// A hold ran out and the client wrote nothing more: the kernel will not look again until it does.
    /// The connection is uninspectable: refused (the socket is aborted, its held bytes never leave) or
    /// reported and left to the kernel, which lets the bytes through at the client's next write.
    fn hold_expired(&mut self, cookie: u64, sink: &mut Sink) {
        let refuse = self.block && self.refuse_uninspectable;
        let Some(flow) = self.sockets.get_mut(&cookie) else { return };
        flow.hold_expired = true;
        self.counters.holds_expired += 1;
        if !refuse {
            self.report_success(cookie, sink);
            return;
        }
        flow.blocked = true;
        flow.deadline = None;
        let verdict = Verdict {
            outcome: VERDICT_UNINSPECTABLE_BLOCKED,
            source: SOURCE_HOLD_EXPIRED,
            name: String::new(),
        };
        self.protection_event(cookie, &verdict, sink);
        if self.abort(cookie, AbortReason::HoldExpired) {
            self.counters.holds_aborted += 1;
        }
    }

    fn report_success(&mut self, cookie: u64, sink: &mut Sink) {
        let named = self
            .sockets
            .get(&cookie)
            .map(|f| f.inspector.inspection().remote_url().is_some())
            .unwrap_or(false);
        if named {
            self.counters.named += 1;
        }
        if self.release_when_named && !self.sockets.get(&cookie).is_some_and(|f| f.kernel_follows) {
            self.judged.push(cookie);
        }
        let fields = self.sockets.get(&cookie).map(Self::base_fields).unwrap_or_default();
        self.report(cookie, ActionType::ConnectionSuccess, fields, sink);
    }

    fn report(&mut self, cookie: u64, action: ActionType, fields: Map<String, Value>, sink: &mut Sink) {
        if self.inspect && self.audit_names(cookie, sink) && action == ActionType::ConnectionSuccess {
            // Blocked late: the Blocked event stands for the connection, as for one the kernel refused.
            if let Some(flow) = self.sockets.get_mut(&cookie) {
                flow.reported = true;
                flow.deadline = None;
            }
            return;
        }
        let Some(flow) = self.sockets.get(&cookie) else { return };
        let timestamp = self.timestamp(flow.opened_ns);
        let unknown = (IpAddr::from([0u8, 0, 0, 0]), 0);
        let remote_url = flow.inspector.inspection().remote_url().unwrap_or("").to_string();
        let event = DeviceEvent::new(
            timestamp,
            sink.device_name.clone(),
            action,
            to_text(flow.remote.unwrap_or(unknown)),
            to_text(flow.local.unwrap_or(unknown)),
            "Tcp",
            remote_url,
            flow.process.as_ref(),
            sink.next_report_id(),
            fields,
        );
        sink.emit(event);
        if let Some(flow) = self.sockets.get_mut(&cookie) {
            flow.reported = true;
            flow.deadline = None;
        }
    }

    /// A name the request carried that a block indicator matches, where the kernel did not block.
    /// Audit mode reports it as Audited. Block mode fails closed: the kernel let the connection through
    /// (a form it does not read, past one of its bounds, an IPv6 literal), so the socket is aborted at
    /// once, through the SOCK_DESTROY path the hold timeout uses, and the connection is reported Blocked
    /// with `LateVerdict`; block mode never reports a denied target as Audited. Returns whether it
    /// blocked the connection so.
    fn audit_names(&mut self, cookie: u64, sink: &mut Sink) -> bool {
        let Some(flow) = self.sockets.get(&cookie) else { return false };
        if flow.blocked {
            return false;
        }
        let inspection = flow.inspector.inspection();
        let Some(name) = denied_name(&self.set, inspection) else { return false };
        let kernel_source = flow.verdicts.iter().rev().find(|v| v.name == name).map(|v| v.source);
        let source = kernel_source.unwrap_or_else(|| user_source(inspection, &name));
        if !self.block {
            let verdict = Verdict { outcome: VERDICT_AUDITED, source, name };
            self.protection_event(cookie, &verdict, sink);
            return false;
        }
        let Some(flow) = self.sockets.get_mut(&cookie) else { return false };
        flow.blocked = true;
        flow.late_verdict = true;
        flow.deadline = None;
        self.counters.late_verdicts += 1;
        let verdict = Verdict { outcome: VERDICT_BLOCKED, source, name };
        self.protection_event(cookie, &verdict, sink);
        self.abort(cookie, AbortReason::LateVerdict);
        true
    }

    /// ExploitGuardNetworkProtectionBlocked / Audited.
    fn protection_event(&mut self, cookie: u64, verdict: &Verdict, sink: &mut Sink) {
        let set = self.set.clone();
        let (action, is_audit) = match verdict.outcome {
            VERDICT_AUDITED => (ActionType::ExploitGuardNetworkProtectionAudited, true),
            _ => (ActionType::ExploitGuardNetworkProtectionBlocked, false),
        };
        if is_audit {
            self.counters.audited += 1;
        } else {
            self.counters.blocked += 1;
        }
        let flow = self.socket(cookie, 0);
        let mut fields = Self::base_fields(flow);
        fields.insert("IsAudit".into(), Value::from(is_audit));
        let uninspectable = verdict.outcome == VERDICT_UNINSPECTABLE_BLOCKED;
        fields.insert(
            "ResponseCategory".into(),
            Value::from(if uninspectable { "Uninspectable" } else { "CustomBlockList" }),
        );
        if flow.later_request(verdict.source) {
            // A later request on a kept-alive (or pipelined) connection: what the inspector read describes
            // the first one.
            for key in ["Url", "HttpHost", "TargetHost", "TargetPort", "KernelTarget", "KernelTargetSource"] {
                fields.remove(key);
            }
            fields.insert("KeptAliveRequest".into(), Value::from(true));
        }
        fields.insert("TargetSource".into(), Value::from(source_name(verdict.source)));
        if !uninspectable {
            // A verdict on an address carries no name: the address is the host user space read.
            let judged = match verdict.name.as_str() {
                "" => flow.inspector.inspection().host.clone().unwrap_or_default(),
                name => name.to_string(),
            };
            let matched = match set.judge_host(&judged) {
                Decision::Blocked(indicator) => Some(indicator.to_string()),
                _ => None,
            };
            fields.insert("MatchedIndicator".into(), matched.map(Value::from).unwrap_or(Value::Null));
        }
        let remote_url = if verdict.name.is_empty() {
            flow.inspector.inspection().remote_url().unwrap_or("").to_string()
        } else {
            verdict.name.clone()
        };
        let unknown = (IpAddr::from([0u8, 0, 0, 0]), 0);
        let ktime = if flow.opened_ns == 0 { None } else { Some(flow.opened_ns) };
        let timestamp = match ktime {
            Some(k) => self.timestamp(k),
            None => rfc3339_utc(clock_ns(libc::CLOCK_REALTIME).max(0) as u128),
        };
        let flow = self.sockets.get(&cookie);
        let event = DeviceEvent::new(
            timestamp,
            sink.device_name.clone(),
            action,
            to_text(flow.and_then(|f| f.remote).unwrap_or(unknown)),
            to_text(flow.and_then(|f| f.local).unwrap_or(unknown)),
            "Tcp",
            remote_url,
            flow.and_then(|f| f.process.as_ref()),
            sink.next_report_id(),
            fields,
        );
        sink.emit(event);
    }

    /// A forwarded flow user space has yet to report (a late verdict may still need its kernel entry).
    pub fn wire_pending(&self, key: &WireFlowKey) -> bool {
        self.wires.get(&wire_tuple(key)).is_some_and(|f| !f.reported)
    }

    pub fn on_wire(&mut self, rec: &WireRecord, sink: &mut Sink) {
        let e = &rec.endpoints;
        let key = wire_tuple(&wire_key(e));
        if self.local_tuples.contains(&key) {
            self.counters.wire_duplicates += 1;
            return;
        }
        // The SYN's own record has no bytes; data on a SYN (TCP Fast Open) follows in records of its own.
        if wire_opens(rec) && rec.len == 0 {
            self.counters.wire_flows += 1;
            self.wires.insert(
                key,
                WireFlow {
                    key: wire_key(e),
                    opened_ns: rec.header.ktime_ns,
                    established: false,
                    inspector: FlowInspector::new(),
                    stream: Stream::starting_at(0),
                    reported: false,
                    uninspectable: false,
                    deadline: Some(Instant::now() + FIRST_BYTES_WAIT),
                },
            );
            return;
        }
        let Some(flow) = self.wires.get_mut(&key) else { return };
        if wire_acks(rec) {
            flow.established = true;
        }
        let len = (rec.len as usize).min(rec.data.len());
        if len > 0 {
            flow.established = true;
            let ready = flow.stream.on_data(rec.offset, &rec.data[..len]);
            flow.inspector.client_bytes(&ready);
            flow.deadline = Some(Instant::now() + TUNNEL_OPEN_WAIT);
        }
        let ended = wire_ends(rec);
        if ended {
            flow.inspector.finish();
        }
        if !flow.reported && (ended || flow.inspector.is_complete()) {
            self.report_wire(key, sink);
        }
        if ended {
            self.wires.remove(&key);
        }
    }

    fn report_wire(&mut self, key: FourTuple, sink: &mut Sink) {
        let Some(flow) = self.wires.get(&key) else { return };
        let action =
            if flow.established { ActionType::ConnectionSuccess } else { ActionType::ConnectionFailed };
        let inspection = flow.inspector.inspection();
        if inspection.remote_url().is_some() {
            self.counters.named += 1;
        }
        let mut fields = inspection.additional_fields();
        fields.insert("SeenOn".into(), Value::from("tc"));
        if flow.uninspectable {
            fields.insert("Uninspectable".into(), Value::from(true));
        }
        let denied = if self.inspect { denied_name(&self.set, inspection) } else { None };
        let remote_url = inspection.remote_url().unwrap_or("").to_string();
        let (timestamp, wire_key) = (self.timestamp(flow.opened_ns), flow.key);
        let event = |sink: &mut Sink, action: ActionType, remote_url: String, fields: Map<String, Value>| {
            DeviceEvent::new(
                timestamp.clone(),
                sink.device_name.clone(),
                action,
                to_text(key.1),
                to_text(key.0),
                "Tcp",
                remote_url,
                None,
                sink.next_report_id(),
                fields,
            )
        };
        let refused_late = self.block && denied.is_some();
        if let Some(name) = denied {
            // A name the kernel did not refuse: Audited in audit mode; in block mode the kernel let the flow
            // through (a form it does not read, or unread), so it is refused now, at its next segment.
            let mut protection = fields.clone();
            protection.insert("IsAudit".into(), Value::from(!self.block));
            protection.insert("ResponseCategory".into(), Value::from("CustomBlockList"));
            protection
                .insert("TargetSource".into(), Value::from(source_name(user_source(inspection, &name))));
            let matched = match self.set.judge_host(&name) {
                Decision::Blocked(indicator) => Some(indicator.to_string()),
                _ => None,
            };
            protection.insert("MatchedIndicator".into(), matched.map(Value::from).unwrap_or(Value::Null));
            if self.block {
                protection.insert("LateVerdict".into(), Value::from(true));
                self.counters.blocked += 1;
                self.counters.late_verdicts += 1;
                self.refused_wires.push(wire_key);
                let blocked = event(sink, ActionType::ExploitGuardNetworkProtectionBlocked, name, protection);
                sink.emit(blocked);
            } else {
                self.counters.audited += 1;
                let audited = event(sink, ActionType::ExploitGuardNetworkProtectionAudited, name, protection);
                sink.emit(audited);
            }
        }
        if !refused_late {
            let connection = event(sink, action, remote_url, fields);
            sink.emit(connection);
        }
        if let Some(flow) = self.wires.get_mut(&key) {
            flow.reported = true;
            flow.deadline = None;
        }
    }

    /// The kernel's verdict on a forwarded flow (block mode). A refusal is the flow's one event, a Blocked
    /// row without process; a flow let through unread says so in its own event.
    pub fn on_wire_verdict(&mut self, rec: &WireVerdictRecord, sink: &mut Sink) {
        let e = &rec.endpoints;
        let client = (addr(e.family, e.local_addr), e.local_port as u16);
        let server = (addr(e.family, e.remote_addr), e.remote_port as u16);
        let key = (client, server);
        if !matches!(rec.verdict, VERDICT_BLOCKED | VERDICT_UNINSPECTABLE_BLOCKED) {
            if rec.verdict == VERDICT_UNINSPECTABLE_ALLOWED
                && let Some(flow) = self.wires.get_mut(&key)
            {
                flow.uninspectable = true;
            }
            return;
        }
        let len = (rec.name_len as usize).min(rec.name.len());
        let name = if rec.source == SOURCE_REMOTE_IP {
            server.0.to_string()
        } else {
            String::from_utf8_lossy(&rec.name[..len]).to_ascii_lowercase().trim_end_matches('.').to_string()
        };
        let uninspectable = rec.verdict == VERDICT_UNINSPECTABLE_BLOCKED;
        let (opened_ns, mut fields, read_url) = match self.wires.get_mut(&key) {
            Some(flow) => {
                // Refused: nothing else is reported for it.
                flow.reported = true;
                flow.deadline = None;
                let inspection = flow.inspector.inspection();
                (flow.opened_ns, inspection.additional_fields(), inspection.remote_url().map(str::to_string))
            }
            None => (rec.header.ktime_ns, Map::new(), None),
        };
        fields.insert("SeenOn".into(), Value::from("tc"));
        fields.insert("IsAudit".into(), Value::from(false));
        fields.insert(
            "ResponseCategory".into(),
            Value::from(if uninspectable { "Uninspectable" } else { "CustomBlockList" }),
        );
        fields.insert("TargetSource".into(), Value::from(source_name(rec.source)));
        if uninspectable {
            fields.insert("Uninspectable".into(), Value::from(true));
        } else {
            let matched = match self.set.judge_host(&name) {
                Decision::Blocked(indicator) => Some(indicator.to_string()),
                _ => None,
            };
            fields.insert("MatchedIndicator".into(), matched.map(Value::from).unwrap_or(Value::Null));
        }
        self.counters.blocked += 1;
        let remote_url = if name.is_empty() { read_url.unwrap_or_default() } else { name };
        let event = DeviceEvent::new(
            self.timestamp(opened_ns),
            sink.device_name.clone(),
            ActionType::ExploitGuardNetworkProtectionBlocked,
            to_text(server),
            to_text(client),
            "Tcp",
            remote_url,
            None,
            sink.next_report_id(),
            fields,
        );
        sink.emit(event);
    }

    /// Report flows whose wait ran out; forget ones whose close was lost.
    pub fn tick(&mut self, sink: &mut Sink) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(_, f)| !f.reported && !f.blocked && f.deadline.is_some_and(|d| d <= now))
            .map(|(c, _)| *c)
            .collect();
        for cookie in due {
            if let Some(flow) = self.sockets.get_mut(&cookie) {
                if flow.deferred.as_ref().is_some_and(|d| !d.answered) {
                    self.consider_deferred(cookie, true, sink);
                    continue;
                }
                if flow.held.is_some() {
                    self.hold_expired(cookie, sink);
                    continue;
                }
                flow.inspector.finish();
            }
            self.report_success(cookie, sink);
        }
        let stale: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(_, f)| (f.reported || f.blocked) && now.duration_since(f.touched) > FORGET_AFTER)
            .map(|(c, _)| *c)
            .collect();
        for cookie in stale {
            self.forget(cookie);
        }
        let due: Vec<FourTuple> = self
            .wires
            .iter()
            .filter(|(_, f)| !f.reported && f.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(flow) = self.wires.get_mut(&key) {
                flow.inspector.finish();
            }
            self.report_wire(key, sink);
        }
        self.wires.retain(|_, f| !f.reported || f.deadline.is_some());
        self.forget_quic(now);
        self.processes.retain(|_, (seen, _, _)| now.duration_since(*seen) < PROCESS_CACHE_FOR);
        self.udp_processes.retain(|_, (_, seen)| now.duration_since(*seen) < QUIC_FORGET_AFTER);
    }

    /// Report everything still pending (at shutdown).
    pub fn drain(&mut self, sink: &mut Sink) {
        let cookies: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(_, f)| !f.reported && !f.blocked && f.remote.is_some())
            .map(|(c, _)| *c)
            .collect();
        for cookie in cookies {
            if let Some(flow) = self.sockets.get_mut(&cookie) {
                flow.inspector.finish();
            }
            self.report_success(cookie, sink);
        }
    }
}

/// The first name (or address) the connection carried that a block indicator matches.
fn denied_name(set: &IndicatorSet, inspection: &monitor_core::extract::Inspection) -> Option<String> {
    inspection
        .names()
        .into_iter()
        .find(|name| matches!(set.judge_host(name), Decision::Blocked(_)))
        .map(String::from)
}

/// The kernel's name for what named `name` in user space's reading, for a verdict the kernel did not make.
fn user_source(inspection: &monitor_core::extract::Inspection, name: &str) -> u32 {
    if inspection.sni.as_deref() == Some(name) {
        return SOURCE_TLS_SNI;
    }
    if inspection.http_host.as_deref() == Some(name) && inspection.source != Some(TargetSource::AbsoluteForm)
    {
        return SOURCE_HTTP_HOST;
    }
    match inspection.source {
        Some(TargetSource::Connect) => SOURCE_CONNECT,
        Some(TargetSource::AbsoluteForm) => SOURCE_ABSOLUTE_FORM,
        Some(TargetSource::HttpHost) => SOURCE_HTTP_HOST,
        Some(TargetSource::TlsSni) => SOURCE_TLS_SNI,
        Some(TargetSource::Socks5) => SOURCE_SOCKS5,
        Some(TargetSource::Socks4a) => SOURCE_SOCKS4A,
        Some(TargetSource::Socks4) => SOURCE_SOCKS_IP,
        Some(TargetSource::QuicSni) | None => SOURCE_NONE,
    }
}

fn to_text((ip, port): (IpAddr, u16)) -> (String, u16) {
    (ip.to_string(), port)
}

mod quic;
pub use quic::QuicKey;
use quic::{QUIC_FORGET_AFTER, QuicFlow};

#[cfg(test)]
#[path = "flows/late_verdict_tests.rs"]
mod late_verdict_tests;

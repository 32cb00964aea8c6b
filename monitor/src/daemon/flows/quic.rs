//! QUIC flows: a local UDP socket's (by cookie, from `quic_egress`, with its process) or a forwarded one's
//! (by 4-tuple, from TC, without a process). Their first long-header datagrams are decrypted and the SNI
//! named; in block mode the rest of a flow to a denied name is dropped by the kernel.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use monitor_common::record::{QUIC_DATAGRAMS, QuicRecord, WireFlowKey};
use monitor_core::{
    event::{ActionType, DeviceEvent, InitiatingProcess},
    extract::QuicInspector,
    policy::Decision,
};
use serde_json::{Map, Value};

use super::{Flows, to_text};
use crate::daemon::{records::addr, sink::Sink};

/// QUIC flows (and UDP sockets' processes) are forgotten after this long: UDP has no close to see.
pub(super) const QUIC_FORGET_AFTER: Duration = Duration::from_secs(120);

/// Which kernel map holds a QUIC flow's state, and under what key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuicKey {
    /// A local socket (`QUIC_DENY`).
    Socket(u64),
    /// A forwarded flow seen on TC (`WIRE_QUIC`).
    Wire(WireFlowKey),
}

pub(super) struct QuicFlow {
    opened_ns: u64,
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    process: Option<InitiatingProcess>,
    inspector: QuicInspector,
    datagrams: u32,
    reported: bool,
    pub(super) touched: Instant,
}

fn endpoints(rec: &QuicRecord) -> ((IpAddr, u16), (IpAddr, u16)) {
    let e = &rec.endpoints;
    (
        (addr(e.family, e.local_addr), e.local_port as u16),
        (addr(e.family, e.remote_addr), e.remote_port as u16),
    )
}

impl Flows {
    /// A QUIC long-header datagram of a local UDP socket.
    pub fn on_quic(&mut self, rec: &QuicRecord, sink: &mut Sink) {
        let key = QuicKey::Socket(rec.header.cookie);
        if !self.quic.contains_key(&key) {
            let process = self.udp_processes.remove(&rec.header.cookie).map(|(p, _)| p);
            self.open_quic(key, rec, process);
        }
        self.quic_datagram(key, rec, sink);
    }

    /// A QUIC long-header datagram of a forwarded flow (gateway mode). One a local socket sent as well
    /// (TC on an interface local traffic leaves by) is reported by the socket's flow alone.
    pub fn on_wire_quic(&mut self, rec: &QuicRecord, sink: &mut Sink) {
        let e = &rec.endpoints;
        let key = QuicKey::Wire(WireFlowKey {
            family: e.family,
            client_port: e.local_port as u16,
            server_port: e.remote_port as u16,
            client_addr: e.local_addr,
            server_addr: e.remote_addr,
        });
        if !self.quic.contains_key(&key) {
            let (local, remote) = endpoints(rec);
            let local_socket = self
                .quic
                .iter()
                .any(|(k, f)| matches!(k, QuicKey::Socket(_)) && f.local == local && f.remote == remote);
            if local_socket {
                self.counters.wire_duplicates += 1;
                return;
            }
            self.counters.wire_flows += 1;
            self.open_quic(key, rec, None);
        }
        self.quic_datagram(key, rec, sink);
    }

    fn open_quic(&mut self, key: QuicKey, rec: &QuicRecord, process: Option<InitiatingProcess>) {
        let (local, remote) = endpoints(rec);
        self.quic.insert(
            key,
            QuicFlow {
                opened_ns: rec.header.ktime_ns,
                local,
                remote,
                process,
                inspector: QuicInspector::new(),
                datagrams: 0,
                reported: false,
                touched: Instant::now(),
            },
        );
    }

    /// Decrypt the Initials; once the ClientHello is whole (or the kernel hands over no more), report the
    /// flow, and in block mode deny the rest of a flow to a blocked name.
    fn quic_datagram(&mut self, key: QuicKey, rec: &QuicRecord, sink: &mut Sink) {
        let len = (rec.len as usize).min(rec.data.len());
        let Some(flow) = self.quic.get_mut(&key) else { return };
        flow.touched = Instant::now();
        if flow.reported {
            return;
        }
        flow.inspector.client_datagram(&rec.data[..len]);
        flow.datagrams += 1;
        if !flow.inspector.is_complete() {
            if flow.datagrams < QUIC_DATAGRAMS {
                return;
            }
            // The kernel hands over no more: what they carry is the answer.
            flow.inspector.finish();
        }
        flow.reported = true;
        let (local, remote) = (flow.local, flow.remote);
        let inspection = flow.inspector.inspection().clone();
        let crypto_packets = flow.inspector.crypto_packets();
        let (process, opened_ns) = (flow.process.clone(), flow.opened_ns);
        self.counters.connections += 1;
        let name = inspection.sni.clone().unwrap_or_default();
        if !name.is_empty() {
            self.counters.named += 1;
        }
        let decision = if name.is_empty() { Decision::NoMatch } else { self.set.judge_host(&name) };
        let timestamp = self.timestamp(opened_ns);
        let mut fields = inspection.additional_fields();
        if matches!(key, QuicKey::Wire(_)) {
            fields.insert("SeenOn".into(), Value::from("tc"));
        }
        let emit = |sink: &mut Sink, action: ActionType, fields: Map<String, Value>| {
            let event = DeviceEvent::new(
                timestamp.clone(),
                sink.device_name.clone(),
                action,
                to_text(remote),
                to_text(local),
                "Udp",
                name.clone(),
                process.as_ref(),
                sink.next_report_id(),
                fields,
            );
            sink.emit(event);
        };
        if let Decision::Blocked(indicator) = decision {
            let blocking = self.block;
            let mut protection = fields.clone();
            protection.insert("IsAudit".into(), Value::from(!blocking));
            protection.insert("ResponseCategory".into(), Value::from("CustomBlockList"));
            protection.insert("MatchedIndicator".into(), Value::from(indicator.to_string()));
            if blocking {
                // The first Initial has left; dropping the rest means the handshake cannot complete.
                self.denied_quic.push(key);
                self.counters.blocked += 1;
                emit(sink, ActionType::ExploitGuardNetworkProtectionBlocked, protection);
                return;
            }
            self.counters.audited += 1;
            emit(sink, ActionType::ExploitGuardNetworkProtectionAudited, protection);
        }
        fields.insert("QuicInitials".into(), Value::from(crypto_packets));
        emit(sink, ActionType::ConnectionSuccess, fields);
    }

    /// Forget QUIC flows with no datagram for [`QUIC_FORGET_AFTER`]; forwarded ones leave the kernel's
    /// `WIRE_QUIC` too (see `expired_wire_quic`).
    pub(super) fn forget_quic(&mut self, now: Instant) {
        let expired = &mut self.expired_wire_quic;
        self.quic.retain(|key, f| {
            let keep = now.duration_since(f.touched) < QUIC_FORGET_AFTER;
            if let (false, QuicKey::Wire(wire)) = (keep, key) {
                expired.push(*wire);
            }
            keep
        });
    }
}

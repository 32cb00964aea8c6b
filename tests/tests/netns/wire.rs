//! Gateway mode (issue 15) beyond the TCP first payload: QUIC flows forwarded through the router, named
//! from their Initials and, in block mode, dropped after the first; denied targets on TC in audit mode
//! (Audited rows without a process); and a late verdict, where user space names a denied target in a form
//! the kernel let through and the kernel refuses the flow at its next segment.

use std::time::Duration;

use serde_json::Value;
use tests::{Bed, Cgroup, Monitor, Runner, bed::ORIGIN_V4, client};

use super::{SQUID, curl, describe, quic_client};

/// A QUIC client behind the router sends three rounds of Initials 300 ms apart; returns the flow's local
/// port, datagrams per round, and how many of them reached the origin.
fn quic_through_router(bed: &Bed, clients: &Cgroup, name: &str) -> (Value, u64, usize) {
    let (run, result) = quic_client(bed, clients, ORIGIN_V4, name);
    let per_attempt = result["per_attempt"].as_u64().expect("per_attempt");
    assert!(per_attempt >= 1, "{result}");
    assert_eq!(result["sent"].as_u64(), Some(3 * per_attempt), "the client sent every round: {run:?}");
    assert_eq!(result["errno"], Value::Null, "a forwarded flow's sends never fail locally: {result}");
    std::thread::sleep(Duration::from_millis(300));
    let port = result["port"].clone();
    let port_number = port.as_u64().expect("port") as u16;
    (port, per_attempt, bed.quic_datagrams_from(port_number))
}

/// The one event of `action` for the forwarded QUIC flow from `port` naming `name`.
fn wire_quic_event(mon: &Monitor, action: &str, name: &str, port: &Value) -> Value {
    let found = mon.wait_events(10, |e| {
        e["ActionType"] == action
            && e["RemoteUrl"] == name
            && e["LocalPort"] == *port
            && e["Protocol"] == "Udp"
    });
    assert_eq!(found.len(), 1, "one {action} naming {name} from port {port}:\n{}", describe(&mon.events()));
    let e = found[0].clone();
    assert_eq!(e["RemoteIP"], ORIGIN_V4, "{e}");
    assert_eq!(e["RemotePort"], 443, "{e}");
    assert_eq!(e["InitiatingProcessId"], Value::Null, "no process on the wire: {e}");
    assert_eq!(e["AdditionalFields"]["SeenOn"], "tc", "{e}");
    assert_eq!(e["AdditionalFields"]["TargetSource"], "QuicSni", "{e}");
    e
}

/// Audit mode on TC: every datagram passes, the flow is named, and a denied name is reported Audited too.
pub fn audit_cases(r: &mut Runner, bed: &Bed, mon: &Monitor, clients: &Cgroup) {
    r.case("gateway_quic_named_from_initials", || {
        let (port, per_attempt, arrived) = quic_through_router(bed, clients, "origin.test");
        assert_eq!(arrived as u64, 3 * per_attempt, "audit mode drops nothing");
        let e = wire_quic_event(mon, "ConnectionSuccess", "origin.test", &port);
        assert_eq!(e["Table"], "DeviceNetworkEvents", "{e}");
    });
    r.case("gateway_quic_denied_name_audited", || {
        let (port, per_attempt, arrived) = quic_through_router(bed, clients, "a.blocked.test");
        assert_eq!(arrived as u64, 3 * per_attempt, "audit mode drops nothing");
        let e = wire_quic_event(mon, "ExploitGuardNetworkProtectionAudited", "a.blocked.test", &port);
        assert_eq!(e["AdditionalFields"]["IsAudit"], true, "{e}");
        assert_eq!(e["AdditionalFields"]["MatchedIndicator"], "blocked.test", "{e}");
        wire_quic_event(mon, "ConnectionSuccess", "a.blocked.test", &port);
    });
    r.case("gateway_audit_denied_connect_audited", || {
        let run = curl(bed, clients, &["-x", SQUID, "https://a.blocked.test/"]);
        assert!(run.ok(), "audit mode lets the flow through: {run:?}");
        let audited = mon.wait_events(10, |e| {
            e["ActionType"] == "ExploitGuardNetworkProtectionAudited"
                && e["RemoteUrl"] == "a.blocked.test"
                && e["Protocol"] == "Tcp"
        });
        assert_eq!(audited.len(), 1, "one Audited row:\n{}", describe(&mon.events()));
        let e = &audited[0];
        assert_eq!(e["Table"], "DeviceEvents", "{e}");
        assert_eq!(e["InitiatingProcessId"], Value::Null, "{e}");
        assert_eq!(e["AdditionalFields"]["SeenOn"], "tc", "{e}");
        assert_eq!(e["AdditionalFields"]["IsAudit"], true, "{e}");
        // Audit mode holds nothing: the row is written once the tunnel's ClientHello is read too.
        assert_eq!(e["AdditionalFields"]["ConnectHost"], "a.blocked.test", "{e}");
        assert_eq!(e["AdditionalFields"]["Tunneled"], true, "{e}");
        assert_eq!(e["AdditionalFields"]["MatchedIndicator"], "blocked.test", "{e}");
        let success = mon.wait_events(5, |e| {
            e["ActionType"] == "ConnectionSuccess"
                && e["RemoteUrl"] == "a.blocked.test"
                && e["Protocol"] == "Tcp"
                && e["AdditionalFields"]["SeenOn"] == "tc"
        });
        assert_eq!(success.len(), 1, "and its ConnectionSuccess:\n{}", describe(&mon.events()));
    });
}

/// Block mode on TC: a QUIC flow to a denied name loses every datagram after the first round's; an
/// allowed one passes whole; a denied target in a form the kernel does not read is refused late.
pub fn block_cases(r: &mut Runner, bed: &Bed, mon: &Monitor, clients: &Cgroup) {
    r.case("gateway_block_quic_denied_name_dropped", || {
        let (port, per_attempt, arrived) = quic_through_router(bed, clients, "quic.blocked.test");
        let e = wire_quic_event(mon, "ExploitGuardNetworkProtectionBlocked", "quic.blocked.test", &port);
        assert_eq!(e["AdditionalFields"]["IsAudit"], false, "{e}");
        assert_eq!(e["AdditionalFields"]["MatchedIndicator"], "blocked.test", "{e}");
        // UDP cannot be held: the first Initial leaves before the verdict; the later rounds do not.
        assert!(
            (1..=per_attempt as usize).contains(&arrived),
            "only the first round's datagrams reach the origin: {arrived} of {}",
            3 * per_attempt
        );
        let successes = mon
            .events()
            .into_iter()
            .filter(|e| e["ActionType"] == "ConnectionSuccess" && e["RemoteUrl"] == "quic.blocked.test")
            .count();
        assert_eq!(successes, 0, "a refused QUIC flow reports no ConnectionSuccess");
    });
    r.case("gateway_block_quic_allowed_passes", || {
        let (port, per_attempt, arrived) = quic_through_router(bed, clients, "origin.test");
        assert_eq!(arrived as u64, 3 * per_attempt, "an allowed QUIC flow passes whole");
        wire_quic_event(mon, "ConnectionSuccess", "origin.test", &port);
    });
    r.case("gateway_block_late_verdict_refuses_next_segment", || {
        // PURGE is a method the kernel does not read: the flow passes unread (`--uninspectable allow`),
        // user space names late.blocked.test from its Host, and the next segment the client sends is
        // turned into resets; nginx never sees the second request.
        let script = format!(
            "import json, socket, time\n\
             s = socket.create_connection(('{ORIGIN_V4}', 80), timeout=5)\n\
             s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n\
             s.sendall(b'PURGE /late-first HTTP/1.1\\r\\nHost: late.blocked.test\\r\\n\\r\\n')\n\
             first = s.recv(65536).decode(errors='replace')\n\
             time.sleep(2)\n\
             res = {{'first': first.split('\\r\\n')[0], 'keep_alive': 'connection: close' not in first.lower(), 'errno': None}}\n\
             try:\n    s.sendall(b'GET /late-second HTTP/1.1\\r\\nHost: late.blocked.test\\r\\n\\r\\n')\n    res['second'] = s.recv(65536).decode(errors='replace').split('\\r\\n')[0]\n\
             except OSError as e:\n    res['errno'] = e.errno\n\
             print(json.dumps(res))\n"
        );
        let run = client(clients, &bed.client_ns, &["/usr/bin/python3", "-c", &script], Duration::from_secs(15));
        let res: Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"));
        assert_eq!(res["keep_alive"], true, "nginx keeps the connection open after the first answer: {res}");
        assert_eq!(res["errno"].as_i64(), Some(104), "the second request meets a reset: {res}");
        let found = mon.wait_events(5, |e| {
            e["ActionType"] == "ExploitGuardNetworkProtectionBlocked" && e["RemoteUrl"] == "late.blocked.test"
        });
        assert_eq!(found.len(), 1, "one Blocked row:\n{}", describe(&mon.events()));
        let e = &found[0];
        assert_eq!(e["AdditionalFields"]["LateVerdict"], true, "{e}");
        assert_eq!(e["AdditionalFields"]["SeenOn"], "tc", "{e}");
        assert_eq!(e["AdditionalFields"]["TargetSource"], "HttpHost", "{e}");
        assert_eq!(e["InitiatingProcessId"], Value::Null, "{e}");
        let log = std::fs::read_to_string(bed.dir.join("nginx-access.log")).unwrap_or_default();
        assert!(log.contains("/late-first"), "the first request reached nginx: {log}");
        assert!(!log.contains("/late-second"), "the request after the verdict did not: {log}");
    });
}

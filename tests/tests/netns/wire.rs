//! Gateway mode (issue 15) beyond the TCP first payload: QUIC flows forwarded through the router, named
//! from their Initials and, in block mode, dropped after the first; denied targets on TC in audit mode
//! (Audited rows without a process); and a late verdict, where user space names a denied target in a form
//! the kernel let through and the kernel refuses the flow at its next segment.

use std::time::Duration;

use serde_json::Value;
use tests::{Bed, Cgroup, Monitor, Runner, bed::ORIGIN_V4, client};

use super::{SQUID, curl, describe, quic_client, status, write_lists};

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

/// A Python client in the client namespace, behind the router; its one JSON line.
fn python(bed: &Bed, clients: &Cgroup, script: &str, timeout: Duration) -> Value {
    let run = client(clients, &bed.client_ns, &["/usr/bin/python3", "-c", script], timeout);
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

fn forwarded(mon: &Monitor) -> Value {
    status(mon)["kernel_flow_entries"].clone()
}

/// The forwarded-flow table is a bounded hash map user space reclaims: judged flows that stay open leave
/// it, a flow silent past `--silent-flow-timeout` is reset instead of judged, and a full table refuses
/// new flows in block mode rather than evicting one still to be judged.
pub fn reclaim_cases(r: &mut Runner, bed: &Bed) {
    let cg = Cgroup::new("gateway-reclaim-empty");
    let clients = Cgroup::new("gateway-reclaim-clients");
    let (block, allow) = write_lists(bed, "gateway-reclaim");
    let Some(mon) = r.setup("gateway_reclaim_monitor_starts", || {
        let args: Vec<String> = [
            "--mode",
            "block",
            "--cgroup",
            &cg.path.display().to_string(),
            "--iface",
            &bed.router_client_if,
            "--block",
            &block,
            "--allow",
            &allow,
            "--wire-flows",
            "16",
            "--silent-flow-timeout",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Monitor::start(&bed.dir, "gateway-reclaim", Some(&bed.router_ns), &args)
    }) else {
        return;
    };
    let tls = "import json, socket, ssl, time\n\
               ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
               def tls(s): return ctx.wrap_socket(s, server_hostname='origin.test')\n\
               def tcp(port): return socket.create_connection(('ORIGIN', port), timeout=5)\n"
        .replace("ORIGIN", ORIGIN_V4);
    r.case("gateway_reclaims_judged_flows_that_stay_open", || {
        let before = forwarded(&mon)["forwarded_reclaimed"].as_u64().expect("forwarded_reclaimed");
        let script = format!(
            "{tls}conns = [tls(tcp(443)) for _ in range(3)]\n\
             time.sleep(4)\n\
             codes = []\n\
             for c in conns:\n    c.sendall(b'GET / HTTP/1.1\\r\\nHost: origin.test\\r\\n\\r\\n')\n    codes.append(c.recv(4096).decode(errors='replace').split('\\r\\n')[0])\n\
             print(json.dumps({{'codes': codes}}))\n"
        );
        std::thread::scope(|s| {
            let run = s.spawn(|| python(bed, &clients, &script, Duration::from_secs(15)));
            // While the three connections stay open, their judged entries leave the kernel's table.
            let mut entries = Value::Null;
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(100));
                entries = forwarded(&mon);
                let reclaimed = entries["forwarded_reclaimed"].as_u64().unwrap_or(0);
                if reclaimed >= before + 3 && entries["forwarded_flows"] == 0 {
                    break;
                }
            }
            let res = run.join().expect("client thread");
            assert_eq!(entries["forwarded_flows"], 0, "judged open flows were reclaimed: {entries}");
            assert!(entries["forwarded_reclaimed"].as_u64() >= Some(before + 3), "{entries}");
            assert_eq!(entries["forwarded_capacity"], 16, "{entries}");
            // And the flows go on untracked: each still gets its answer.
            let codes = res["codes"].as_array().expect("codes");
            assert_eq!(codes.len(), 3, "{res}");
            assert!(codes.iter().all(|c| c == "HTTP/1.1 200 OK"), "reclaimed flows keep working: {res}");
        });
    });
    r.case("gateway_silent_flow_reset_past_timeout", || {
        let script = format!(
            "{tls}res = {{}}\n\
             for name, wait in (('brief', 0.5), ('silent', 4)):\n\
             \x20   s = tcp(443)\n\
             \x20   time.sleep(wait)\n\
             \x20   try:\n        tls(s).close(); res[name] = 'ok'\n\
             \x20   except OSError as e:\n        res[name] = e.errno\n\
             print(json.dumps(res))\n"
        );
        let res = python(bed, &clients, &script, Duration::from_secs(15));
        assert_eq!(res["brief"], "ok", "a flow silent for less than the timeout is judged as any: {res}");
        assert_eq!(res["silent"], 104, "one silent past it is reset at its first bytes: {res}");
        let entries = forwarded(&mon);
        assert!(entries["forwarded_silent_refused"].as_u64() >= Some(1), "{entries}");
    });
    r.case("gateway_full_flow_table_refuses_new_flows", || {
        // Sixteen entries: hold connections open until one is refused at its SYN; once they close, the
        // table has room again.
        let script = format!(
            "{tls}held, errno = [], None\n\
             for _ in range(24):\n\
             \x20   try:\n        held.append(tcp(80))\n\
             \x20   except OSError as e:\n        errno = e.errno; break\n\
             for s in held: s.close()\n\
             time.sleep(0.5)\n\
             after = tls(tcp(443)); after.close()\n\
             print(json.dumps({{'held': len(held), 'errno': errno}}))\n"
        );
        let res = python(bed, &clients, &script, Duration::from_secs(20));
        let held = res["held"].as_u64().expect("held");
        assert!((8..=16).contains(&held), "at most the table's 16 flows are open at once: {res}");
        assert_eq!(res["errno"], 111, "the next SYN is answered with a reset (ECONNREFUSED): {res}");
        let drops = &status(&mon)["kernel_drops"];
        assert!(drops["flow_table_full"].as_u64() >= Some(1), "the refusal is counted: {drops}");
    });
    drop(mon);
}

//! Bytes sk_msg cannot judge by itself (issue 12): TCP Fast Open (the request before the handshake, and
//! in the SYN once the server has handed out a cookie), ClientHellos far larger than the kernel's window,
//! a CONNECT written a byte at a time, and a second CONNECT after the proxy's 407. In block mode each is
//! judged before a byte of it leaves; in audit mode each is named.

use std::{process::Command, time::Duration};

use serde_json::Value;
use tests::{
    Bed, Cgroup, ClientRun, Runner,
    bed::{ORIGIN_V4, ROUTER_V4, SQUID_AUTH_PORT, SQUID_PORT, sh},
    monitor::of_pid,
};

use super::{
    SINK_PORT, SOCKS, SQUID, curl, describe, expect_blocked, expect_event, expect_protection, expect_success,
    policy_monitor, rawclient,
};

/// A sink that accepts TCP Fast Open, in the origin namespace.
const FASTOPEN_SINK_PORT: u16 = SINK_PORT + 1;

/// Bytes a sink logged for the connection from `local_port` (`sink` is its log's stem).
fn logged_bytes(bed: &Bed, sink: &str, local_port: &Value) -> Option<u64> {
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(bed.dir.join(format!("{sink}.log"))).unwrap_or_default();
    let port = local_port.as_u64()?.to_string();
    log.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 3 && f[1] == port).then(|| f[2].parse().ok())?
    })
}

/// The client's socket was aborted (ECONNABORTED) or reset, quickly, with nothing delivered.
fn expect_aborted(run: &ClientRun, result: &Value) {
    let errno = result["errno"].as_i64();
    assert!(
        matches!(errno, Some(103 | 104 | 32)),
        "the connection must be aborted (ECONNABORTED/ECONNRESET/EPIPE): {result} {run:?}"
    );
    assert!(run.elapsed < Duration::from_secs(2), "refused at once: {run:?}");
}

pub fn cases(r: &mut Runner, bed: &mut Bed) {
    let origin = bed.origin_ns.clone();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/rawclient.py");
    let log = bed.dir.join("sink-fastopen.log").display().to_string();
    let port = FASTOPEN_SINK_PORT.to_string();
    if r.setup("early_data_fast_open_sink_starts", || {
        // Servers in the origin namespace may hand out Fast Open cookies (clients may use them by default).
        sh(Command::new("ip").args([
            "netns",
            "exec",
            &origin,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.tcp_fastopen=3",
        ]));
        bed.serve(&origin, "sink-fastopen", &["/usr/bin/python3", script, "sink", &port, &log, "--fastopen"]);
        bed.wait_port(&origin, ORIGIN_V4, FASTOPEN_SINK_PORT);
    })
    .is_none()
    {
        return;
    }
    for block in [true, false] {
        mode_cases(r, bed, block);
    }
}

fn mode_cases(r: &mut Runner, bed: &Bed, block: bool) {
    let mode = if block { "block" } else { "audit" };
    let cg = Cgroup::new(&format!("early-{mode}"));
    let Some(mon) = r.setup(&format!("early_{mode}_monitor_starts"), || {
        policy_monitor(bed, &cg, &format!("early-{mode}"), mode, true, &["--hold-timeout", "2s"])
    }) else {
        return;
    };
    let (blocked, audited) = ("ExploitGuardNetworkProtectionBlocked", "ExploitGuardNetworkProtectionAudited");
    let squid_port = SQUID_PORT.to_string();
    let auth_port = SQUID_AUTH_PORT.to_string();
    let sink_port = SINK_PORT.to_string();

    for (name, args, target) in [
        ("absolute_form", vec!["-x", SQUID, "http://blocked.test/"], "blocked.test"),
        ("connect", vec!["-x", SQUID, "https://blocked.test/"], "blocked.test"),
        ("socks5", vec!["--socks5-hostname", SOCKS, "https://blocked.test/"], "blocked.test"),
    ] {
        r.case(&format!("early_{mode}_curl_fast_open_{name}_denied"), || {
            let mut argv = vec!["--tcp-fastopen"];
            argv.extend_from_slice(&args);
            let mark = bed.log_mark();
            let run = curl(bed, &cg, &argv);
            if block {
                expect_blocked(bed, &mon, &run, target, mark);
            } else {
                assert!(run.ok(), "audit mode blocks nothing: {run:?}");
                expect_protection(&mon, &run, audited, target);
            }
        });
    }
    r.case(&format!("early_{mode}_curl_fast_open_allowed_is_named"), || {
        let run = curl(bed, &cg, &["--tcp-fastopen", "-x", SQUID, "http://origin.test/"]);
        assert!(run.ok(), "an allowed Fast Open request goes through: {run:?}");
        assert_eq!(run.stdout.trim(), "200", "{run:?}");
        expect_success(&mon, &run, (ROUTER_V4, SQUID_PORT), "http://origin.test/", "curl");
        let run = curl(bed, &cg, &["--tcp-fastopen", "-x", SQUID, "https://origin.test/"]);
        assert!(run.ok(), "an allowed Fast Open CONNECT goes through: {run:?}");
        expect_success(&mon, &run, (ROUTER_V4, SQUID_PORT), "origin.test", "curl");
    });
    r.case(&format!("early_{mode}_fast_open_request_in_the_syn"), || {
        // The first connection gets a cookie from the server; the next ones carry their request in the SYN.
        let fastopen_port = FASTOPEN_SINK_PORT.to_string();
        let (run, res) = rawclient(
            bed,
            &cg,
            &["fastopen", ORIGIN_V4, &fastopen_port, "origin.test,origin.test,blocked.test"],
        );
        let runs = res["runs"].as_array().unwrap_or_else(|| panic!("no runs: {res}"));
        assert_eq!(runs.len(), 3, "{res}");
        for allowed in &runs[..2] {
            assert_eq!(allowed["errno"], Value::Null, "allowed: {res}");
            assert!(
                logged_bytes(bed, "sink-fastopen", &allowed["local_port"]).unwrap_or(0) > 0,
                "the allowed request arrives: {res}"
            );
        }
        if !block {
            assert_eq!(runs[1]["syn_data"], true, "the request rode in the SYN (a cookie was used): {res}");
            assert_eq!(runs[2]["syn_data"], true, "the request rode in the SYN: {res}");
        }
        let events = of_pid(&mon.events(), run.pid);
        let named = mon.wait_events(10, |e| {
            e["InitiatingProcessId"] == run.pid
                && e["ActionType"] == "ConnectionSuccess"
                && e["RemoteUrl"] == "origin.test"
        });
        assert!(named.len() >= 2, "both allowed connections are named:\n{}", describe(&events));
        let denied = &runs[2];
        if block {
            assert!(denied["errno"].as_i64().is_some(), "the denied request is refused: {res}");
            assert_eq!(
                logged_bytes(bed, "sink-fastopen", &denied["local_port"]).unwrap_or(0),
                0,
                "nothing of the denied request arrives: {res}"
            );
            expect_event(&mon, &run, blocked, "blocked.test");
        } else {
            assert!(logged_bytes(bed, "sink-fastopen", &denied["local_port"]).unwrap_or(0) > 0, "{res}");
            expect_event(&mon, &run, audited, "blocked.test");
        }
    });
    for (name, pad, records) in [("10_kib", "10000", "1"), ("40_kib_four_records", "40000", "4")] {
        r.case(&format!("early_{mode}_client_hello_{name}_before_sni"), || {
            let (run, res) = rawclient(
                bed,
                &cg,
                &["tls", ORIGIN_V4, &sink_port, "--sni", "blocked.test", "--pad", pad, "--records", records],
            );
            let delivered = super::sink_bytes(bed, &res["local_port"]).unwrap_or(0);
            if block {
                expect_aborted(&run, &res);
                assert_eq!(delivered, 0, "nothing of the ClientHello reaches the peer: {res}");
                expect_event(&mon, &run, blocked, "blocked.test");
            } else {
                assert_eq!(res["step"], "done", "audit mode blocks nothing: {res}");
                assert!(delivered > 10_000, "the whole ClientHello arrives ({delivered} bytes): {res}");
                expect_event(&mon, &run, audited, "blocked.test");
            }
        });
    }
    r.case(&format!("early_{mode}_client_hello_40_kib_allowed_is_named"), || {
        let (run, res) = rawclient(
            bed,
            &cg,
            &["tls", ORIGIN_V4, &sink_port, "--sni", "origin.test", "--pad", "40000", "--records", "4"],
        );
        assert_eq!(res["step"], "done", "an allowed ClientHello passes: {res}");
        let delivered = super::sink_bytes(bed, &res["local_port"]).unwrap_or(0);
        assert!(delivered > 40_000, "the whole ClientHello arrives ({delivered} bytes): {res}");
        expect_event(&mon, &run, "ConnectionSuccess", "origin.test");
    });
    r.case(&format!("early_{mode}_connect_one_byte_writes_allowed_is_named"), || {
        let (run, res) = rawclient(
            bed,
            &cg,
            &[
                "connect",
                ROUTER_V4,
                &squid_port,
                "origin.test:443",
                "--connect-chunk",
                "1",
                "--sni",
                "origin.test",
            ],
        );
        assert_eq!(
            res["status"],
            200,
            "squid opens the tunnel: {res}\n{}",
            describe(&of_pid(&mon.events(), run.pid))
        );
        let e = expect_event(&mon, &run, "ConnectionSuccess", "origin.test");
        assert_eq!(e["AdditionalFields"]["ConnectHost"], "origin.test", "{e}");
        assert_eq!(e["AdditionalFields"]["Malformed"], Value::Null, "the whole request was read: {e}");
    });
    r.case(&format!("early_{mode}_second_connect_after_407"), || {
        let (run, res) =
            rawclient(bed, &cg, &["reconnect", ROUTER_V4, &auth_port, "origin.test:443", "blocked.test:443"]);
        assert_eq!(res["statuses"][0], 407, "squid asks for credentials first: {res}");
        if block {
            assert_eq!(res["step"], "second-connect", "{res}");
            assert_eq!(res["errno"], 13, "the second CONNECT is refused: {res}");
            expect_event(&mon, &run, blocked, "blocked.test");
        } else {
            assert_eq!(res["statuses"][1], 200, "audit mode blocks nothing: {res}");
            expect_event(&mon, &run, audited, "blocked.test");
        }
    });
    r.case(&format!("early_{mode}_fronting_after_407"), || {
        let (run, res) = rawclient(
            bed,
            &cg,
            &[
                "reconnect",
                ROUTER_V4,
                &auth_port,
                "origin.test:443",
                "origin.test:443",
                "--sni",
                "blocked.test",
            ],
        );
        assert_eq!(res["statuses"], serde_json::json!([407, 200]), "{res}");
        if block {
            assert_eq!(res["step"], "send-hello", "{res}");
            assert_eq!(res["errno"], 13, "the denied SNI inside the tunnel is refused: {res}");
            expect_event(&mon, &run, blocked, "blocked.test");
        } else {
            expect_event(&mon, &run, audited, "blocked.test");
        }
    });
    drop(mon);
}

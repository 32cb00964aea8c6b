//! The console's HTTP side without a browser: who may use it (loopback names only without a token; the
//! token by bearer or by the cookie its link sets), the downloads, query errors, and policy changes only
//! with `--allow-policy-edits` (through nats-server, into MONITOR_POLICY).

#![expect(unused_crate_dependencies, reason = "a test target sees every dependency of the package")]

mod common;

use std::time::Duration;

use common::{get, post_json};
use monitor_console::{Console, ConsoleOptions, PolicyAccess, Source};
use monitor_fleet::NatsOptions;
use monitor_fleet::samples::write_sample_store;
use monitor_fleet::servers::NatsServer;
use monitor_hunt::time::now_micros;
use serde_json::json;

const TOKEN: &str = "correct-horse-battery-staple";

fn options(store: &std::path::Path) -> ConsoleOptions {
    ConsoleOptions {
        listen: "127.0.0.1:0".parse().expect("an address"),
        source: Source::Store(store.to_path_buf()),
        token: None,
        policy: None,
        stale_after: Duration::from_secs(120),
        poll: Duration::from_millis(200),
    }
}

fn sample_store(dir: &std::path::Path) -> std::path::PathBuf {
    let store = dir.join("events.db");
    let now = now_micros();
    write_sample_store(&store, 25, "host-1.example", |seq| now - 10_000_000 + seq as i64)
        .unwrap_or_else(|e| panic!("write the store: {e}"));
    store
}

#[test]
fn without_a_token_only_loopback_names_and_never_beyond_loopback() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = sample_store(dir.path());
    let mut wide = options(&store);
    wide.listen = "0.0.0.0:0".parse().expect("an address");
    let refused = Console::start(wide).err().expect("no console beyond loopback without a token");
    assert!(refused.to_string().contains("--token"), "{refused}");

    let console = Console::start(options(&store)).expect("start the console");
    let address = console.address();
    let page = get(address, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<script src=\"/app.js\" defer>"));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    for host in ["localhost", "127.0.0.1:1", "[::1]:8080"] {
        assert_eq!(get(address, "/api/devices", &[("Host", host)]).status, 200, "{host}");
    }
    // A page elsewhere whose name now points at 127.0.0.1 (DNS rebinding) gets nothing.
    let rebound = get(address, "/api/devices", &[("Host", "attacker.example:8080")]);
    assert_eq!(rebound.status, 403, "{}", rebound.text());

    let devices = get(address, "/api/devices", &[]).json();
    let name =
        devices["columns"].as_array().and_then(|c| c.iter().position(|c| c == "DeviceName")).expect("names");
    assert_eq!(devices["rows"][0][name], "host-1.example", "{devices}");
    let events = get(address, "/api/events?limit=7", &[]).json();
    assert_eq!(events.as_array().map(Vec::len), Some(7), "{events}");
    assert_eq!(events[0]["remote"].as_str().map(|r| r.ends_with(":3128")), Some(true), "{events}");
    let blocked = get(address, "/api/events?action=blocked", &[]).json();
    assert_eq!(blocked.as_array().map(Vec::len), Some(5), "every fifth sample is a block: {blocked}");
    assert!(
        blocked
            .as_array()
            .is_some_and(|b| b.iter().all(|e| e["action"] == "ExploitGuardNetworkProtectionBlocked"))
    );

    // Queries: rows, errors at their place, downloads.
    let seed = "DeviceNetworkEvents | where ActionType == \"ConnectionSuccess\" | take 10";
    let result = post_json(address, "/api/hunt", &[], &json!({ "query": seed }));
    assert_eq!(result.status, 200, "{}", result.text());
    assert_eq!(
        (result.json()["rows"].as_array().map(Vec::len), result.json()["truncated"].as_bool()),
        (Some(10), Some(false))
    );
    let bad = post_json(address, "/api/hunt", &[], &json!({ "query": "DeviceEvents | sort by Nope" }));
    assert_eq!(bad.status, 400);
    let error = bad.json();
    assert_eq!(
        (error["line"].as_u64(), error["column"].as_u64(), error["start"].as_u64()),
        (Some(1), Some(24), Some(23)),
        "{error}"
    );
    let csv =
        get(address, "/api/hunt?format=csv&q=DeviceEvents%20%7C%20project%20RemoteUrl%2C%20ActionType", &[]);
    assert_eq!(csv.status, 200, "{}", csv.text());
    assert_eq!(csv.header("content-disposition"), Some("attachment; filename=\"hunt.csv\""));
    let text = csv.text();
    assert_eq!(text.lines().next(), Some("RemoteUrl,ActionType"));
    assert_eq!(text.lines().count(), 6, "a header and the five blocks: {text}");
    let lines = get(address, "/api/hunt?format=json&q=DeviceEvents%20%7C%20count", &[]);
    assert_eq!(lines.text().trim(), r#"{"Count":5}"#);
    assert_eq!(get(address, "/api/hunt?format=xml&q=DeviceEvents", &[]).status, 400);
    // Writes: none here, and never from a form or another site.
    let text_body =
        common::http(address, "POST", "/api/hunt", &[("Content-Type", "text/plain")], b"{\"query\":\"x\"}");
    assert_eq!(text_body.status, 403);
    let foreign =
        post_json(address, "/api/hunt", &[("Origin", "http://attacker.example")], &json!({ "query": seed }));
    assert_eq!(foreign.status, 403);
    assert_eq!(get(address, "/api/policy", &[]).status, 404, "no policy without --policy");
    console.stop();
}

#[test]
fn with_a_token_every_request_carries_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = sample_store(dir.path());
    let mut short = options(&store);
    short.token = Some("short".into());
    assert!(Console::start(short).is_err(), "a short token is refused");
    let mut with_token = options(&store);
    with_token.token = Some(TOKEN.into());
    let console = Console::start(with_token).expect("start the console");
    let address = console.address();
    assert_eq!(get(address, "/api/devices", &[]).status, 401);
    assert_eq!(get(address, "/", &[]).status, 401);
    assert_eq!(
        get(address, "/api/devices", &[("Authorization", "Bearer wrong-token-of-some-length")]).status,
        401
    );
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(get(address, "/api/devices", &[("Authorization", &bearer)]).status, 200);
    // Any Host: the token is the check.
    assert_eq!(
        get(address, "/api/devices", &[("Host", "console.example"), ("Authorization", &bearer)]).status,
        200
    );
    assert_eq!(get(address, "/?token=wrong", &[]).status, 401);
    let link = get(address, &format!("/?token={TOKEN}"), &[]);
    assert_eq!((link.status, link.header("location")), (303, Some("/")), "the token leaves the address bar");
    let cookie = link.header("set-cookie").expect("a cookie").to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    let pair = cookie.split(';').next().expect("name=value");
    assert_eq!(get(address, "/api/devices", &[("Cookie", pair)]).status, 200);
    assert_eq!(get(address, "/", &[("Cookie", pair)]).status, 200);
    console.stop();
}

#[test]
fn policy_changes_only_with_allow_policy_edits() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = sample_store(dir.path());
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("start nats-server: {e}"));
    let access = |editable| PolicyAccess {
        nats: NatsOptions { servers: vec![nats.url()], ..NatsOptions::default() },
        replicas: 1,
        editable,
    };
    let add = json!({ "op": "indicator", "list": "block", "value": "Denied.Example." });

    let mut read_only = options(&store);
    read_only.policy = Some(access(false));
    let console = Console::start(read_only).expect("start the console");
    let refused = post_json(console.address(), "/api/policy", &[], &add);
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(refused.text().contains("--allow-policy-edits"));
    let shown = get(console.address(), "/api/policy", &[]).json();
    assert_eq!(
        (shown["editable"].as_bool(), shown["entries"].as_array().map(Vec::len)),
        (Some(false), Some(0)),
        "{shown}"
    );
    console.stop();

    let mut editable = options(&store);
    editable.policy = Some(access(true));
    assert!(Console::start(editable.clone()).is_err(), "policy edits need a token");
    editable.token = Some(TOKEN.into());
    let console = Console::start(editable).expect("start the console");
    let address = console.address();
    let bearer = format!("Bearer {TOKEN}");
    let auth: &[(&str, &str)] = &[("Authorization", &bearer)];
    let added = post_json(address, "/api/policy", auth, &add);
    assert_eq!(added.status, 200, "{}", added.text());
    let mode =
        post_json(address, "/api/policy", auth, &json!({ "op": "mode", "mode": "audit", "group": "web" }));
    assert_eq!(mode.status, 200, "{}", mode.text());
    let bad = post_json(
        address,
        "/api/policy",
        auth,
        &json!({ "op": "indicator", "list": "block", "value": "no such thing" }),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("nothing was changed"));
    let foreign = post_json(address, "/api/policy", &[("Origin", "http://attacker.example"), auth[0]], &add);
    assert_eq!(foreign.status, 403, "another site cannot change the policy");
    let shown = get(address, "/api/policy", auth).json();
    let entries: Vec<&str> =
        shown["entries"].as_array().expect("entries").iter().filter_map(|e| e.as_str()).collect();
    assert_eq!(entries, vec!["fleet block denied.example", "group:web mode audit"], "{shown}");
    assert!(shown["revision"].as_u64().is_some_and(|r| r >= 2), "{shown}");
    let removed = post_json(
        address,
        "/api/policy",
        auth,
        &json!({ "op": "indicator", "list": "block", "value": "denied.example", "remove": true }),
    );
    assert_eq!(removed.status, 200, "{}", removed.text());
    let shown = get(address, "/api/policy", auth).json();
    assert_eq!(shown["entries"], json!(["group:web mode audit"]), "{shown}");
    console.stop();
}

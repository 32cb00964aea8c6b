//! The timeline as text and as an HTML page rendered by headless Chromium.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use monitor_hunt::TimelineFilter;
use monitor_hunt::cli::{self, ColourChoice, Format, HuntArgs, ReadArgs, TimelineArgs};

use crate::common::{fixture, fixture_events, fixture_now};

const CHROMIUM: &str = "/usr/bin/chromium";

fn timeline_args(store: &Path) -> TimelineArgs {
    TimelineArgs {
        store: Some(store.to_path_buf()),
        since: None,
        process: None,
        html: None,
        limit: None,
        colour: ColourChoice::Never,
        device: None,
        fleet: Default::default(),
    }
}

#[test]
fn timeline_is_newest_first_and_filters() {
    let fixture = fixture();
    let all = fixture.store.timeline(&TimelineFilter::default(), fixture_now()).expect("read the timeline");
    assert_eq!(all.len(), 30);
    assert!(all.windows(2).all(|w| w[0].timestamp >= w[1].timestamp), "newest first");
    let recent = fixture
        .store
        .timeline(
            &TimelineFilter { since: Some(Duration::from_secs(600)), ..Default::default() },
            fixture_now(),
        )
        .expect("read the timeline");
    let targets: Vec<&str> = recent.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["pastebin.com", "pastebin.com"]);
    let python = fixture
        .store
        .timeline(
            &TimelineFilter { process: Some("PYTHON3".into()), limit: Some(3), ..Default::default() },
            fixture_now(),
        )
        .expect("read the timeline");
    let actions: Vec<&str> = python.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["ConnectionSuccess", "ExploitGuardNetworkProtectionAudited", "ConnectionSuccess"]);
}

#[test]
fn timeline_lines_show_process_action_proxy_and_target() {
    let fixture = fixture();
    let mut out = Vec::new();
    let mut args = timeline_args(&fixture.path);
    args.process = Some("wget".into());
    cli::timeline(&args, &mut out).expect("print the timeline");
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(
        text,
        "2026-11-29 05:03:30.000000  wget[6001]  ConnectionSuccess  10.0.0.5:3128  http://downloads.example.org/file.tar.gz\n"
    );

    let mut out = Vec::new();
    let mut args = timeline_args(&fixture.path);
    args.colour = ColourChoice::Always;
    args.process = Some("curl".into());
    cli::timeline(&args, &mut out).expect("print the timeline");
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(text.lines().count(), 13, "curl has 13 events:\n{text}");
    let blocked =
        text.lines().find(|l| l.contains("malware.test") && l.contains("Blocked")).expect("the blocked line");
    assert!(blocked.contains("\x1b[1;31mExploitGuardNetworkProtectionBlocked\x1b[0m"), "{blocked:?}");
    assert!(blocked.contains("indicator=203.0.113.0/24"), "{blocked:?}");
    let ipv6 = text.lines().find(|l| l.contains("curl[4700]")).expect("the IPv6 line");
    assert!(ipv6.contains("[2606:2800:220:1:248:1893:25c8:1946]:443"), "{ipv6:?}");
}

#[test]
fn hunt_cli_prints_table_json_and_csv() {
    let fixture = fixture();
    let query = r#"DeviceNetworkEvents | where RemoteIP == "10.0.0.5" and isnotempty(RemoteUrl) | project Timestamp, InitiatingProcessFileName, RemoteUrl | take 2"#;
    let run = |format: Format| {
        let mut out = Vec::new();
        let args = HuntArgs {
            read: ReadArgs { store: Some(fixture.path.clone()), format, fleet: Default::default() },
            query: query.to_string(),
        };
        cli::hunt(&args, &mut out).expect("hunt runs");
        String::from_utf8(out).expect("utf-8")
    };
    assert_eq!(
        run(Format::Table),
        "Timestamp                    InitiatingProcessFileName  RemoteUrl\n\
         ---------------------------  -------------------------  --------------\n\
         2026-11-29T05:00:10.000001Z  curl                       example.com\n\
         2026-11-29T05:02:00.000000Z  python3                    api.github.com\n"
    );
    assert_eq!(
        run(Format::Json),
        "{\"Timestamp\":\"2026-11-29T05:00:10.000001Z\",\"InitiatingProcessFileName\":\"curl\",\"RemoteUrl\":\"example.com\"}\n\
         {\"Timestamp\":\"2026-11-29T05:02:00.000000Z\",\"InitiatingProcessFileName\":\"python3\",\"RemoteUrl\":\"api.github.com\"}\n"
    );
    assert_eq!(
        run(Format::Csv),
        "Timestamp,InitiatingProcessFileName,RemoteUrl\r\n\
         2026-11-29T05:00:10.000001Z,curl,example.com\r\n\
         2026-11-29T05:02:00.000000Z,python3,api.github.com\r\n"
    );
    let args = HuntArgs {
        read: ReadArgs {
            store: Some(fixture.path.clone()),
            format: Format::Table,
            fleet: Default::default(),
        },
        query: "DeviceEvents | wher".into(),
    };
    let error = cli::hunt(&args, &mut Vec::new()).expect_err("a bad query fails");
    assert!(format!("{error:#}").contains("query error at 1:16"), "{error:#}");
}

/// Runs headless Chromium on `page` and returns the DOM after the page's scripts ran.
fn rendered_dom(page: &Path, fragment: &str) -> String {
    let profile = tempfile::tempdir().expect("a profile directory for Chromium");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}{fragment}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Chromium");
    let stdout = child.stdout.take().expect("Chromium's stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).expect("read Chromium's output"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match child.try_wait().expect("poll Chromium") {
            Some(_) => break,
            None if Instant::now() > deadline => {
                child.kill().expect("stop Chromium");
                child.wait().expect("reap Chromium");
                panic!("Chromium did not finish within two minutes");
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    reader.join().expect("the reader thread ends")
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[test]
fn html_timeline_renders_offline_in_chromium() {
    if !Path::new(CHROMIUM).exists() {
        let why = format!("{CHROMIUM} is not installed; the HTML timeline cannot be rendered");
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    let fixture = fixture();
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let page = dir.path().join("timeline.html");
    let mut args = timeline_args(&fixture.path);
    args.html = Some(page.clone());
    let mut out = Vec::new();
    cli::timeline(&args, &mut out).expect("write the page");
    assert_eq!(String::from_utf8(out).expect("utf-8"), format!("wrote 30 events to {}\n", page.display()));

    let html = std::fs::read_to_string(&page).expect("read the page");
    for external in ["src=", "href=", "url(", "@import", "http-equiv=\"refresh\""] {
        assert!(!html.contains(external), "the page loads nothing from elsewhere, but it has {external:?}");
    }
    assert!(!html.contains("<td class=\"target\">"), "the static page has no rows: the script makes them");

    let dom = rendered_dom(&page, "");
    assert!(dom.contains("<span id=\"shown-count\">30</span>"), "the script counted 30 events:\n{dom}");
    let mut targets: Vec<String> = fixture_events()
        .iter()
        .filter_map(|e| e["RemoteUrl"].as_str().map(str::to_string))
        .filter(|t| !t.is_empty())
        .collect();
    targets.sort();
    targets.dedup();
    assert!(targets.len() > 15);
    for target in &targets {
        let cell = format!("<td class=\"target\">{}</td>", html_escape(target));
        assert!(dom.contains(&cell), "the rendered page shows {target}");
    }
    assert_eq!(dom.matches("<tr class=\"event").count(), 30, "one row per event");
    // AdditionalFields go on a full-width row of their own, so the table fits the page.
    let with_details = fixture_events().iter().filter(|e| e["AdditionalFields"].is_object()).count();
    assert!(with_details > 0);
    assert_eq!(dom.matches("<tr class=\"event has-details\">").count(), with_details);
    assert_eq!(dom.matches("<td class=\"details\" colspan=\"7\">").count(), with_details);
    assert!(dom.contains("<div class=\"lane-label\">curl (13)</div>"), "a lane per process on the time axis");
    assert!(
        dom.contains("<div class=\"lane-label\">(no process) (2)</div>"),
        "gateway flows have their own lane"
    );
    assert_eq!(dom.matches("class=\"dot ").count(), 30, "one dot per event on the axis");
    assert!(
        dom.contains("<option value=\"ExploitGuardNetworkProtectionBlocked\">"),
        "the action filter is filled"
    );

    // The filters work: curl's blocked events only.
    let filtered = rendered_dom(&page, "#process=curl&action=ExploitGuardNetworkProtectionBlocked");
    assert!(
        filtered.contains("<span id=\"shown-count\">2</span>"),
        "two of curl's events were blocked:\n{filtered}"
    );
    assert_eq!(filtered.matches("<tr class=\"event").count(), 2);
    assert!(filtered.contains("<td class=\"target\">malware.test</td>"));
    assert!(filtered.contains("<td class=\"target\">blocked.example.net</td>"));
    assert!(!filtered.contains("<td class=\"target\">pastebin.com</td>"));
}

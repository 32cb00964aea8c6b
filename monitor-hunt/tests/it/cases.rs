//! The local KQL test suite's queries over the fixture (tests/data/events.jsonl), with the rows each must
//! give. `queries.rs` checks them on the local store; the fleet's differential test
//! (monitor-fleet/tests/fleet.rs, which includes this file) runs every one the fleet supports on
//! ClickHouse and compares the answers with the local store's.

/// The fixture: 30 events (proxied, direct, gateway, audited and blocked), one JSON object a line.
pub const FIXTURE: &str = include_str!("../data/events.jsonl");

/// The `now` the fixture's queries run at: ten minutes after the last event.
pub const FIXTURE_NOW: &str = "2026-11-29T06:00:00Z";

/// (query, expected columns joined by `|` or "" not to check them, expected rows as `a|b|c`).
pub type Case = (&'static str, &'static str, &'static [&'static str]);

pub const CASES: &[Case] = &[
    // ---- comparison operators; == is case-sensitive, =~ is not ----
    (
        r#"DeviceNetworkEvents | where InitiatingProcessFileName == "python3" | project ReportId"#,
        "ReportId",
        &["3", "18", "27", "30"],
    ),
    (r#"DeviceNetworkEvents | where RemoteUrl == "www.mozilla.org" | project ReportId"#, "", &[]),
    (r#"DeviceNetworkEvents | where RemoteUrl =~ "www.mozilla.org" | project ReportId"#, "", &["10"]),
    (
        r#"DeviceEvents | where ActionType != "ExploitGuardNetworkProtectionAudited" | project ReportId"#,
        "",
        &["12", "23"],
    ),
    (r#"DeviceEvents | where InitiatingProcessFileName !~ "CURL" | project ReportId"#, "", &["29"]),
    ("DeviceNetworkEvents | where RemotePort < 80 | project ReportId", "", &["2", "8"]),
    ("DeviceNetworkEvents | where LocalPort > 40025 | project ReportId", "", &["26", "27", "28", "30"]),
    ("DeviceNetworkEvents | where LocalPort >= 40028 | project ReportId", "", &["28", "30"]),
    ("DeviceNetworkEvents | where LocalPort <= 40002 | project ReportId", "", &["1", "2"]),
    (
        "DeviceEvents | where Timestamp > datetime(2026-11-29T05:25:00Z) | project ReportId",
        "",
        &["22", "23", "29"],
    ),
    ("DeviceNetworkEvents | where Timestamp >= ago(15m) | project ReportId", "", &["28", "30"]),
    ("DeviceEvents | where Timestamp < now() - 50m | project ReportId", "", &["7"]),
    (r#"DeviceEvents | where Timestamp < datetime("2026-11-29 05:10:00") | project ReportId"#, "", &["7"]),
    // ---- has: whole terms, case-insensitive ----
    (
        r#"DeviceNetworkEvents | where RemoteUrl has "example" | project ReportId"#,
        "",
        &["1", "4", "5", "6", "11", "16", "17", "21", "26", "28"],
    ),
    (r#"DeviceNetworkEvents | where RemoteUrl has "exam" | project ReportId"#, "", &[]),
    (r#"DeviceNetworkEvents | where RemoteUrl has "MOZILLA" | project ReportId"#, "", &["10"]),
    (
        r#"DeviceNetworkEvents | where RemoteUrl has "example.com" | project ReportId"#,
        "",
        &["1", "5", "17", "21", "26", "28"],
    ),
    (r#"DeviceEvents | where RemoteUrl !has "example" | project ReportId"#, "", &["23", "29"]),
    (
        r#"DeviceNetworkEvents | where RemoteUrl has_any ("github", "pypi", "npmjs") | project ReportId"#,
        "",
        &["3", "18", "20", "27"],
    ),
    (
        r#"DeviceNetworkEvents | where InitiatingProcessCommandLine has_all ("curl", "example") | project ReportId"#,
        "",
        &["1", "5", "6", "11", "21", "26", "28"],
    ),
    // ---- contains / startswith / endswith: case-insensitive substrings ----
    (r#"DeviceNetworkEvents | where RemoteUrl contains "MOZ" | project ReportId"#, "", &["10"]),
    (
        r#"DeviceNetworkEvents | where RemoteUrl contains "exam" | project ReportId"#,
        "",
        &["1", "4", "5", "6", "11", "16", "17", "21", "26", "28"],
    ),
    (r#"DeviceEvents | where RemoteUrl !contains "EXAMPLE" | project ReportId"#, "", &["23", "29"]),
    (
        r#"DeviceNetworkEvents | where RemoteUrl startswith "HTTP://" | project ReportId"#,
        "",
        &["4", "14", "16"],
    ),
    (
        r#"DeviceEvents | where InitiatingProcessCommandLine !startswith "curl" | project ReportId"#,
        "",
        &["29"],
    ),
    (
        r#"DeviceNetworkEvents | where RemoteUrl endswith ".ORG" | project ReportId"#,
        "",
        &["10", "18", "19", "20"],
    ),
    (r#"DeviceEvents | where RemoteUrl !endswith ".net" | project ReportId"#, "", &["22", "23", "29"]),
    // ---- in is case-sensitive, in~ is not ----
    (
        r#"DeviceNetworkEvents | where InitiatingProcessFileName in ("pip", "node", "Git") | project ReportId"#,
        "",
        &["19", "20"],
    ),
    (
        r#"DeviceNetworkEvents | where InitiatingProcessFileName in~ ("pip", "node", "Git") | project ReportId"#,
        "",
        &["19", "20", "25"],
    ),
    (r#"DeviceEvents | where InitiatingProcessFileName !in ("curl") | project ReportId"#, "", &["29"]),
    (
        r#"DeviceEvents | where ActionType !in~ ("exploitguardnetworkprotectionaudited") | project ReportId"#,
        "",
        &["12", "23"],
    ),
    ("DeviceNetworkEvents | where RemotePort in (53, 22, 1080) | project ReportId", "", &["2", "8", "25"]),
    (
        r#"let watched = dynamic(["pastebin.com", "malware.test"]); union DeviceNetworkEvents, DeviceEvents | where RemoteUrl in (watched) | project ReportId"#,
        "",
        &["24", "30", "23", "29"],
    ),
    // ---- between, matches regex, and/or/not ----
    ("DeviceNetworkEvents | where ReportId between (10 .. 13) | project ReportId", "", &["10", "11", "13"]),
    (
        "union DeviceNetworkEvents, DeviceEvents | where Timestamp between (datetime(2026-11-29 05:12) .. datetime(2026-11-29 05:14)) | sort by ReportId asc | project ReportId",
        "",
        &["11", "12", "13"],
    ),
    ("DeviceEvents | where ReportId !between (10 .. 25) | project ReportId", "", &["7", "29"]),
    (
        r#"DeviceNetworkEvents | where RemoteIP matches regex @"^104\.16\." | project ReportId"#,
        "",
        &["15", "20"],
    ),
    (
        r#"DeviceNetworkEvents | where (ActionType == "ConnectionFailed" or RemotePort == 22) and not(RemoteUrl has "malware") | project ReportId"#,
        "",
        &["8", "9", "11"],
    ),
    // ---- project (renames, expressions), project-away, project-rename, extend ----
    (
        r#"DeviceEvents | where ReportId == 7 | project Id = ReportId, Proc = toupper(InitiatingProcessFileName), Target = strcat(RemoteUrl, ":", RemotePort)"#,
        "Id|Proc|Target",
        &["7|CURL|evil.example.net:3128"],
    ),
    (
        "DeviceEvents | where ReportId == 12 | project-away Initiating*, AdditionalFields, LocalIP, LocalPort, Protocol, Device*, Timestamp, Seq",
        "ActionType|RemoteIP|RemotePort|RemoteUrl|ReportId",
        &["ExploitGuardNetworkProtectionBlocked|10.0.0.5|3128|blocked.example.net|12"],
    ),
    (
        "DeviceEvents | where ReportId == 7 | project-rename Target = RemoteUrl | project Target",
        "Target",
        &["evil.example.net"],
    ),
    (
        "DeviceNetworkEvents | where ReportId == 21 | extend Sni = tostring(AdditionalFields.Sni), Fronted = AdditionalFields.Sni != RemoteUrl | project ReportId, Sni, Fronted",
        "ReportId|Sni|Fronted",
        &["21|hidden.example.org|true"],
    ),
    (
        "DeviceEvents | where ReportId == 7 | extend RemoteUrl = toupper(RemoteUrl) | project RemoteUrl",
        "RemoteUrl",
        &["EVIL.EXAMPLE.NET"],
    ),
    (
        "DeviceNetworkEvents | where ReportId == 25 | project AdditionalFields.SocksHost",
        "AdditionalFields_SocksHost",
        &["git.internal.corp"],
    ),
    // ---- summarize ----
    (
        "DeviceEvents | summarize count() by ActionType | sort by ActionType asc",
        "ActionType|count_",
        &["ExploitGuardNetworkProtectionAudited|3", "ExploitGuardNetworkProtectionBlocked|2"],
    ),
    (
        r#"DeviceNetworkEvents | where RemoteIP == "10.0.0.5" and DeviceName == "host1" | summarize Targets = dcount(RemoteUrl), Processes = dcount(InitiatingProcessFileName)"#,
        "Targets|Processes",
        &["12|7"],
    ),
    (
        r#"DeviceNetworkEvents | summarize Failed = countif(ActionType == "ConnectionFailed"), Total = count()"#,
        "Failed|Total",
        &["3|25"],
    ),
    (
        r#"DeviceNetworkEvents | where InitiatingProcessFileName == "python3" | summarize Targets = make_set(RemoteUrl)"#,
        "Targets",
        &[r#"["api.github.com","pypi.org","pastebin.com"]"#],
    ),
    (
        "DeviceNetworkEvents | summarize First = min(Timestamp), Last = max(Timestamp), MaxPort = max(RemotePort)",
        "First|Last|MaxPort",
        &["2026-11-29T05:00:10.000001Z|2026-11-29T05:50:00.000200Z|3128"],
    ),
    (
        "DeviceNetworkEvents | where RemotePort < 100 | summarize sum(RemotePort), avg(RemotePort)",
        "sum_RemotePort|avg_RemotePort",
        &["155|51.666666666666664"],
    ),
    (
        r#"DeviceNetworkEvents | where isnotempty(InitiatingProcessFileName) | summarize arg_max(Timestamp, RemoteUrl, ReportId) by InitiatingProcessFileName | where InitiatingProcessFileName in ("curl", "python3") | sort by InitiatingProcessFileName asc"#,
        "InitiatingProcessFileName|Timestamp|RemoteUrl|ReportId",
        &[
            "curl|2026-11-29T05:45:00.000000Z|example.com|28",
            "python3|2026-11-29T05:50:00.000200Z|pastebin.com|30",
        ],
    ),
    (
        "DeviceEvents | summarize arg_min(Timestamp, *) by ActionType | project ActionType, ReportId | sort by ActionType asc",
        "ActionType|ReportId",
        &["ExploitGuardNetworkProtectionAudited|7", "ExploitGuardNetworkProtectionBlocked|12"],
    ),
    (
        "union DeviceNetworkEvents, DeviceEvents | where Timestamp < datetime(2026-11-29T05:20:00Z) | summarize Events = count() by bin(Timestamp, 5m) | sort by Timestamp asc",
        "Timestamp|Events",
        &[
            "2026-11-29T05:00:00.000000Z|5",
            "2026-11-29T05:05:00.000000Z|4",
            "2026-11-29T05:10:00.000000Z|4",
            "2026-11-29T05:15:00.000000Z|4",
        ],
    ),
    ("DeviceEvents | where ReportId > 100 | summarize count()", "count_", &["0"]),
    // ---- take/limit, sort/order (desc by default), top, distinct, count ----
    ("DeviceEvents | take 2 | project ReportId", "", &["7", "12"]),
    ("DeviceEvents | limit 1 | project ReportId", "", &["7"]),
    ("DeviceEvents | sort by Timestamp | project ReportId", "", &["29", "23", "22", "12", "7"]),
    (
        "DeviceEvents | order by InitiatingProcessFileName asc, ReportId desc | project ReportId",
        "",
        &["23", "22", "12", "7", "29"],
    ),
    (
        "DeviceNetworkEvents | where RemotePort == 80 or InitiatingProcessId == 300 or ReportId == 17 | sort by InitiatingProcessId desc | project ReportId",
        "",
        &["2", "16", "17"],
    ),
    (
        "DeviceNetworkEvents | where RemotePort == 80 or InitiatingProcessId == 300 or ReportId == 17 | sort by InitiatingProcessId asc | project ReportId",
        "",
        &["16", "17", "2"],
    ),
    ("DeviceNetworkEvents | top 3 by Timestamp | project ReportId", "", &["30", "28", "27"]),
    ("DeviceNetworkEvents | top 2 by LocalPort asc | project ReportId", "", &["1", "2"]),
    (
        "DeviceEvents | distinct InitiatingProcessFileName, InitiatingProcessAccountName | sort by InitiatingProcessFileName asc",
        "InitiatingProcessFileName|InitiatingProcessAccountName",
        &["curl|root", "python3|alice"],
    ),
    (r#"DeviceNetworkEvents | where Protocol == "Udp" | count"#, "Count", &["2"]),
    // ---- let, comments, single quotes, timespans ----
    (
        r#"let proxy = "10.0.0.5"; let window = 10m; DeviceNetworkEvents | where RemoteIP == proxy and Timestamp > now() - window | project ReportId"#,
        "",
        &["30"],
    ),
    (
        "DeviceNetworkEvents // every network event\n| where InitiatingProcessAccountName == '_apt'\n| project ReportId",
        "",
        &["14"],
    ),
    (
        "DeviceNetworkEvents | where Timestamp between (ago(1h) .. ago(30s)) and Timestamp < ago(2h) + 1d | summarize Events = count(), Span = max(Timestamp) - min(Timestamp) | extend Tick = 100ms + 30s",
        "Events|Span|Tick",
        &["25|00:49:50.000199|00:00:30.100000"],
    ),
    // ---- join kinds ----
    (
        r#"DeviceEvents | where ActionType endswith "Audited" | project AuditId = ReportId, InitiatingProcessId, RemoteUrl | join kind=inner (DeviceNetworkEvents | project ConnId = ReportId, InitiatingProcessId, RemoteUrl) on InitiatingProcessId, RemoteUrl | project AuditId, ConnId | sort by AuditId asc"#,
        "AuditId|ConnId",
        &["7|6", "29|30"],
    ),
    (
        r#"DeviceEvents | project ReportId, InitiatingProcessId | join kind=leftouter (DeviceNetworkEvents | where ActionType == "ConnectionFailed" | project FailedId = ReportId, InitiatingProcessId) on InitiatingProcessId | project ReportId, FailedId | sort by ReportId asc"#,
        "ReportId|FailedId",
        &["7|", "12|11", "22|", "23|24", "29|"],
    ),
    (
        r#"DeviceNetworkEvents | where RemoteIP == "10.0.0.5" | join kind=leftanti (DeviceEvents) on InitiatingProcessId | project ReportId"#,
        "",
        &["1", "4", "10", "14", "17", "19", "25", "26"],
    ),
    (
        "DeviceEvents | where ReportId == 12 | join kind=inner (DeviceNetworkEvents | project ConnUrl = RemoteUrl, ConnId = ReportId) on $left.RemoteUrl == $right.ConnUrl | project ReportId, ConnId",
        "ReportId|ConnId",
        &["12|11"],
    ),
    (
        r#"DeviceNetworkEvents | where InitiatingProcessFileName == "python3" | project InitiatingProcessId, ReportId | join (DeviceEvents | project InitiatingProcessId, AuditId = ReportId) on InitiatingProcessId | project ReportId, AuditId, InitiatingProcessId1"#,
        "ReportId|AuditId|InitiatingProcessId1",
        &["3|29|5151"],
    ),
    (
        r#"let blocked = DeviceEvents | where ActionType endswith "Blocked" | project InitiatingProcessId; DeviceNetworkEvents | join kind=leftsemi (blocked) on InitiatingProcessId | project ReportId"#,
        "ReportId",
        &["11", "24"],
    ),
    // ---- union ----
    (
        r#"union DeviceNetworkEvents, DeviceEvents | where RemoteUrl == "evil.example.net" | project ReportId"#,
        "",
        &["6", "7"],
    ),
    (
        "union withsource=SourceTable DeviceEvents, (DeviceNetworkEvents | where ReportId == 1) | where ReportId in (1, 7) | project SourceTable, ReportId",
        "SourceTable|ReportId",
        &["DeviceEvents|7", "union_arg1|1"],
    ),
    (
        "DeviceEvents | where ReportId == 7 | union (DeviceNetworkEvents | where ReportId == 6) | project ReportId",
        "",
        &["7", "6"],
    ),
    // ---- scalar functions and dynamic access ----
    (
        r#"DeviceEvents | project ReportId, Mode = iff(AdditionalFields.IsAudit == true, "audit", "block"), Kind = case(RemotePort == 3128, "proxy", RemotePort == 443, "direct", "other") | sort by ReportId asc"#,
        "ReportId|Mode|Kind",
        &["7|audit|proxy", "12|block|proxy", "22|audit|proxy", "23|block|direct", "29|audit|proxy"],
    ),
    (
        r#"DeviceNetworkEvents | where ReportId == 4 | project Host = tostring(split(RemoteUrl, "/")[2]), File = extract(@"/([^/]+)$", 1, RemoteUrl), Lower = tolower(InitiatingProcessFileName), Upper = toupper("x")"#,
        "Host|File|Lower|Upper",
        &["downloads.example.org|file.tar.gz|wget|X"],
    ),
    (
        r#"DeviceNetworkEvents | where ReportId == 1 | project Port = toint("3128") + 1, Text = tostring(RemotePort), Bad = toint("abc"), Pid = tostring(InitiatingProcessId)"#,
        "Port|Text|Bad|Pid",
        &["3129|3128||4242"],
    ),
    ("DeviceNetworkEvents | where isempty(RemoteUrl) | project ReportId", "", &["2", "8", "9"]),
    (
        "DeviceNetworkEvents | where isempty(InitiatingProcessAccountName) | project ReportId",
        "",
        &["16", "17"],
    ),
    (
        r#"DeviceEvents | where AdditionalFields.IsAudit == false | project ReportId, Indicator = AdditionalFields["MatchedIndicator"], Category = parse_json(AdditionalFields).ResponseCategory"#,
        "ReportId|Indicator|Category",
        &["12|example.net|CustomBlockList", "23|203.0.113.0/24|CustomBlockList"],
    ),
    (
        r#"DeviceNetworkEvents | where tostring(AdditionalFields.Method) == "SOCKS5" or AdditionalFields["Ech"] == true | project ReportId"#,
        "",
        &["15", "25"],
    ),
];

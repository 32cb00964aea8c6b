//! `hunt` over the fixture: every operator of the subset, with the rows it must give, and the errors it
//! must give with their place.

use crate::cases::CASES;
use crate::common::{fixture, fixture_now, render_rows};

#[test]
fn queries_give_the_expected_rows() {
    let fixture = fixture();
    let mut failures = Vec::new();
    for (query, columns, rows) in CASES {
        match fixture.store.query_at(query, fixture_now()) {
            Ok(result) => {
                let got_rows = render_rows(&result.rows);
                let got_columns = result.columns.join("|");
                if got_rows != *rows || (!columns.is_empty() && got_columns != *columns) {
                    failures.push(format!(
                        "{query}\n  expected columns {columns:?} rows {rows:?}\n  got      columns {got_columns:?} rows {got_rows:?}"
                    ));
                }
            }
            Err(e) => failures.push(format!("{query}\n  failed: {e}")),
        }
    }
    assert!(CASES.len() >= 40, "the table covers at least 40 queries");
    assert!(
        failures.is_empty(),
        "{} of {} queries differ:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn product_query_without_proxy() {
    let fixture = fixture();
    let result = fixture
        .store
        .query_at(
            r#"DeviceNetworkEvents | where ActionType == "ConnectionSuccess" and RemoteIP != "10.0.0.5" | take 10"#,
            fixture_now(),
        )
        .unwrap_or_else(|e| panic!("the product query runs: {e}"));
    assert_eq!(result.columns.len(), 19, "all columns: {:?}", result.columns);
    let id = result.columns.iter().position(|c| c == "ReportId").expect("a ReportId column");
    let ids: Vec<String> = result.rows.iter().map(|r| r[id].to_text()).collect();
    assert_eq!(ids, ["2", "5", "8", "13", "15", "16", "20", "28"]);
}

#[test]
fn product_query_through_proxy() {
    let fixture = fixture();
    let result = fixture
        .store
        .query_at(
            r#"DeviceNetworkEvents | where RemoteIP == "10.0.0.5" and isnotempty(RemoteUrl) | project Timestamp, InitiatingProcessFileName, RemoteUrl"#,
            fixture_now(),
        )
        .unwrap_or_else(|e| panic!("the product query runs: {e}"));
    assert_eq!(result.columns, ["Timestamp", "InitiatingProcessFileName", "RemoteUrl"]);
    assert_eq!(
        render_rows(&result.rows),
        [
            "2026-11-29T05:00:10.000001Z|curl|example.com",
            "2026-11-29T05:02:00.000000Z|python3|api.github.com",
            "2026-11-29T05:03:30.000000Z|wget|http://downloads.example.org/file.tar.gz",
            "2026-11-29T05:05:00.000000Z|curl|evil.example.net",
            "2026-11-29T05:10:00.000000Z|firefox-esr|www.Mozilla.org",
            "2026-11-29T05:12:00.000000Z|curl|blocked.example.net",
            "2026-11-29T05:15:00.000000Z|http|http://deb.debian.org/debian/dists/bookworm/InRelease",
            "2026-11-29T05:19:00.000000Z||example.com",
            "2026-11-29T05:20:00.000000Z|python3|pypi.org",
            "2026-11-29T05:21:00.000000Z|pip|files.pythonhosted.org",
            "2026-11-29T05:25:00.000000Z|curl|cdn.example.com",
            "2026-11-29T05:30:00.000000Z|git|git.internal.corp",
            "2026-11-29T05:35:00.000000Z|curl|example.com",
            "2026-11-29T05:40:00.000000Z|python3|api.github.com",
            "2026-11-29T05:50:00.000200Z|python3|pastebin.com",
        ]
    );
}

/// (query, line, column, a part of the message).
const ERRORS: &[(&str, usize, usize, &str)] = &[
    (
        r#"DeviceNetworkEvents | wher ActionType == "x""#,
        1,
        23,
        "unknown tabular operator 'wher' (did you mean 'where'?); expected one of: where, project",
    ),
    ("DeviceNetworkEvents | where", 1, 28, "expected a predicate after 'where', found end of query"),
    (
        r#"DeviceNetworkEvents | where RemoteIP = "10.0.0.5""#,
        1,
        38,
        "'=' assigns a name; expected '==' to compare",
    ),
    (
        "DeviceNetworkEvent | take 1",
        1,
        1,
        "unknown table 'DeviceNetworkEvent' (did you mean 'DeviceNetworkEvents'?); expected DeviceNetworkEvents or DeviceEvents",
    ),
    (
        "DeviceEvents | project RemoteIp",
        1,
        24,
        "unknown column 'RemoteIp' (did you mean 'RemoteIP'?); expected one of: Timestamp,",
    ),
    (
        "DeviceEvents\n| where RemoteUrl has \"x\"\n| summarize by",
        3,
        15,
        "expected a column or an expression to group by, found end of query",
    ),
    (r#"DeviceEvents | where RemoteUrl has "x"#, 1, 36, "unterminated string literal; expected a closing \""),
    (
        "DeviceEvents | mv-expand AdditionalFields",
        1,
        16,
        "'mv-expand' is outside the supported KQL subset; expected one of:",
    ),
    ("DeviceEvents | where Timestamp > ago(1x)", 1, 39, "unknown timespan unit 'x'; expected d, h, m, s, ms"),
    (
        "DeviceEvents | take 10 | where foo(RemoteUrl)",
        1,
        32,
        "unknown function 'foo'; expected one of: ago, now",
    ),
    (r#"DeviceEvents | where RemoteUrl matches regex "(""#, 1, 46, "invalid regular expression"),
    (
        "DeviceEvents | summarize count() by ActionType | where count() > 1",
        1,
        56,
        "aggregation 'count()' is only allowed in summarize; expected a scalar function",
    ),
    (
        "DeviceEvents | join kind=fullouter (DeviceNetworkEvents) on ReportId",
        1,
        26,
        "join kind 'fullouter' is outside the supported subset; expected inner, innerunique, leftouter, leftanti",
    ),
    (
        "DeviceEvents | where ReportId between (1, 3)",
        1,
        41,
        "expected '..' between the lower and the upper bound, found ','",
    ),
    ("DeviceEvents | take -1", 1, 21, "expected a constant, non-negative whole number"),
    (
        r#"DeviceEvents | where RemoteUrl has_any "x""#,
        1,
        40,
        "expected '(' and a list of values after 'has_any', found string \"x\"",
    ),
    ("DeviceEvents | project a = 1, a = 2", 1, 31, "duplicate column name 'a' in project"),
    ("let x = 5 DeviceEvents", 1, 11, "expected ';' after the let statement, found 'DeviceEvents'"),
    (r#"DeviceEvents | where tolower(RemoteUrl, 1) == "x""#, 1, 22, "tolower() takes 1 argument(s), found 2"),
    ("DeviceEvents | sort RemoteUrl", 1, 21, "expected 'by' after 'sort', found 'RemoteUrl'"),
    (r#"DeviceEvents | where RemoteUrl !hass "x""#, 1, 32, "unknown operator '!hass'; expected one of !has"),
    (
        "DeviceEvents | take 1 extra",
        1,
        23,
        "expected '|' and an operator, or the end of the query, found 'extra'",
    ),
    (
        "DeviceEvents | summarize tolower(RemoteUrl)",
        1,
        26,
        "'tolower' is not an aggregation; expected one of: count",
    ),
    ("DeviceEvents | where RemoteUrl == \"a\" | project @", 1, 49, "unexpected character '@'"),
];

#[test]
fn errors_point_at_the_place_and_say_what_was_expected() {
    let fixture = fixture();
    let mut failures = Vec::new();
    for (query, line, column, message) in ERRORS {
        match fixture.store.query_at(query, fixture_now()) {
            Ok(result) => failures.push(format!("{query}\n  ran and gave {} rows", result.rows.len())),
            Err(monitor_hunt::HuntError::Query(e)) => {
                if (e.line, e.column) != (*line, *column) || !e.message.contains(message) {
                    failures.push(format!(
                        "{query}\n  expected {line}:{column} {message:?}\n  got      {}:{} {:?}",
                        e.line, e.column, e.message
                    ));
                }
            }
            Err(other) => failures.push(format!("{query}\n  failed but not as a query error: {other}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} errors differ:\n{}",
        failures.len(),
        ERRORS.len(),
        failures.join("\n")
    );
}

#[test]
fn error_text_shows_the_line_with_a_caret() {
    let e = monitor_hunt::kql::check("DeviceEvents\n| where RemoteUrl hass \"x\"")
        .expect_err("not a valid query");
    assert_eq!(
        e.to_string(),
        "query error at 2:19: expected '|' and an operator, or the end of the query, found 'hass'\n  | where RemoteUrl hass \"x\"\n                    ^^^^"
    );
}

#[test]
fn arbitrary_input_never_panics() {
    // Every prefix of valid queries, and some noise: each must give rows or an error, never a panic.
    let fixture = fixture();
    let mut inputs: Vec<String> = Vec::new();
    for (query, ..) in CASES.iter().take(20) {
        for (i, _) in query.char_indices() {
            inputs.push(query[..i].to_string());
        }
    }
    inputs.extend(
        ["", "|", "((", "\"", "let", "let x", "union", "DeviceEvents | join", "dynamic([", "\u{1F600}"]
            .map(String::from),
    );
    for input in &inputs {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = fixture.store.query_at(input, fixture_now());
        }));
        assert!(outcome.is_ok(), "query {input:?} panicked");
    }
}

#[test]
fn token_soup_never_panics() {
    // Deterministic pseudo-random sequences of query fragments: each gives rows or an error.
    const WORDS: &[&str] = &[
        "DeviceEvents",
        "DeviceNetworkEvents",
        "|",
        "where",
        "project",
        "extend",
        "summarize",
        "by",
        "count()",
        "arg_max(Timestamp, *)",
        "join",
        "kind=leftouter",
        "on",
        "union",
        "(",
        ")",
        "[",
        "]",
        ",",
        ";",
        "let",
        "x",
        "=",
        "==",
        "!has",
        "in~",
        "between",
        "..",
        "1",
        "-1",
        "9223372036854775807",
        "1.5",
        "5m",
        "\"a\"",
        "'b'",
        "datetime(2026-11-29)",
        "ago(1h)",
        "bin(Timestamp, 1h)",
        "AdditionalFields.Sni",
        "AdditionalFields[0]",
        "RemotePort",
        "Timestamp",
        "take",
        "sort",
        "top",
        "distinct",
        "*",
        "-",
        "/",
        "%",
        "and",
        "or",
        "not(",
        "dynamic([1,",
        "matches regex",
        "\"(\"",
        "toint(",
        "split(RemoteUrl, \".\")",
        "0",
        "iff(",
    ];
    let fixture = fixture();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..1500 {
        let len = 2 + (next() % 12) as usize;
        let query: Vec<&str> = (0..len).map(|_| WORDS[(next() % WORDS.len() as u64) as usize]).collect();
        let query = query.join(" ");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = fixture.store.query_at(&query, fixture_now());
        }));
        assert!(outcome.is_ok(), "query {query:?} panicked");
    }
}

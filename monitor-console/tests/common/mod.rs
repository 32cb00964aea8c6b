//! What the console's tests share: plain HTTP/1.1 requests (any Host header, any status) and a small
//! WebDriver client for Chromium through chromedriver.

#![allow(dead_code, reason = "each test target uses part of it")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One answer: status, headers (names in lower case) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends one request and reads the whole answer (the connection closes after it).
pub fn http(address: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("a read timeout");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {address}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send the request");
    stream.write_all(body).expect("send the body");
    // Read the head, then the body by its length (a server may keep the connection open), by its chunks,
    // or to the end.
    let mut raw = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let read = |stream: &mut TcpStream, raw: &mut Vec<u8>, buffer: &mut [u8]| -> usize {
        let n = stream.read(buffer).unwrap_or_else(|e| panic!("read the answer of {method} {path}: {e}"));
        raw.extend_from_slice(&buffer[..n]);
        n
    };
    let split = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        assert!(read(&mut stream, &mut raw, &mut buffer) > 0, "the answer ended in its head: {raw:?}");
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    loop {
        let have = raw.len() - split - 4;
        let complete = match length {
            Some(length) => have >= length,
            None if chunked => raw.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if complete || read(&mut stream, &mut raw, &mut buffer) == 0 {
            break;
        }
    }
    let mut body = raw[split + 4..].to_vec();
    if let Some(length) = length {
        body.truncate(length);
    }
    if chunked {
        body = dechunk(&body);
    }
    Answer { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
}

pub fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    http(address, "GET", path, headers, b"")
}

pub fn post_json(address: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> Answer {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    http(address, "POST", path, &all, body.to_string().as_bytes())
}

/// Waits until `done` answers true, at most `limit`; panics with `context()` otherwise.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}: {}", context());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where the screenshots of the browser tests go: target/console-screenshots.
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Debian's Chromium, which chromedriver starts.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver (package chromium-driver).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Chromium headless in a fresh profile, driven through chromedriver (WebDriver), both killed on drop.
pub struct Browser {
    driver: Child,
    address: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts chromedriver and a headless Chromium; `None` (after saying why) when they are not installed
    /// and this is not CI, where that fails.
    pub fn start() -> Option<Browser> {
        let missing: Vec<&str> =
            [CHROMIUM, CHROMEDRIVER].into_iter().filter(|p| !Path::new(p).exists()).collect();
        if !missing.is_empty() {
            let why = format!(
                "{} not installed (cargo xtask setup --test-peers installs them)",
                missing.join(" and ")
            );
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("skipped (outside CI): {why}");
            return None;
        }
        let port = monitor_fleet::servers::free_port().expect("a free port");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start chromedriver: {e}"));
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut browser = Browser { driver, address, session: String::new(), _profile: profile };
        wait_for(
            "chromedriver to listen",
            Duration::from_secs(20),
            || TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok(),
            || format!("port {port}"),
        );
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1500,1000".into(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let answer = browser.command(
            "POST",
            "/session",
            &json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
                "goog:loggingPrefs": {"browser": "ALL"},
            }}}),
        );
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_string();
        Some(browser)
    }

    /// One WebDriver command; answers its `value`.
    fn command(&self, method: &str, path: &str, body: &Value) -> Value {
        let path = if path.starts_with("/session/") || path == "/session" {
            path.to_string()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let payload =
            if method == "GET" || method == "DELETE" { Vec::new() } else { body.to_string().into_bytes() };
        let answer = http(self.address, method, &path, &[("Content-Type", "application/json")], &payload);
        let json = answer.json();
        assert_eq!(answer.status, 200, "WebDriver {method} {path}: {json}");
        json["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", &json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; answers what it returns.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.command("POST", "/execute/sync", &json!({ "script": script, "args": args }))
    }

    fn element(&self, css: &str) -> String {
        let found = self.command("POST", "/element", &json!({ "using": "css selector", "value": css }));
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_string()
    }

    /// Clicks the element as a user does.
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.command("POST", &format!("/element/{id}/click"), &json!({}));
    }

    /// Empties a text field and types `text` into it, key by key.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.command("POST", &format!("/element/{id}/clear"), &json!({}));
        self.command("POST", &format!("/element/{id}/value"), &json!({ "text": text }));
    }

    /// Waits until `script` returns true in the page, at most `limit`.
    pub fn wait_until(&self, what: &str, limit: Duration, script: &str) {
        wait_for(
            what,
            limit,
            || self.eval(script, json!([])) == Value::Bool(true),
            || {
                let page = self.eval("return document.body.innerText.slice(0, 2000)", json!([]));
                format!("the page says {page}; its console: {}", self.logs())
            },
        );
    }

    /// What the page wrote to its console (errors included) since the last call.
    pub fn logs(&self) -> Value {
        self.command("POST", "/se/log", &json!({ "type": "browser" }))
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let data = self.command("GET", "/screenshot", &Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("a base64 screenshot"))
            .expect("base64");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                http(self.address, "DELETE", &path, &[], b"")
            }));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

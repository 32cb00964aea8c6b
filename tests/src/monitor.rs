//! The daemon under test: `monitor run` started with its events in a file, stopped on drop.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

pub fn monitor_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MONITOR_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target/release/monitor")
}

pub struct Monitor {
    child: Child,
    pub events_path: PathBuf,
    pub store_path: PathBuf,
    pub control: PathBuf,
    stderr: Arc<Mutex<String>>,
    /// A pin directory of this monitor's own (block mode pins there), detached when it is dropped.
    own_pin_dir: Option<String>,
}

impl Monitor {
    /// Start `monitor run ARGS` (plus events, store and control paths under `dir`), optionally inside a
    /// network namespace, and wait until it says it is ready.
    pub fn start(dir: &std::path::Path, name: &str, netns: Option<&str>, args: &[String]) -> Monitor {
        Self::start_wrapped(dir, name, netns, &[], args)
    }

    /// As [`Monitor::start`], with the daemon run through `wrapper` (a command that ends by executing its
    /// remaining arguments), e.g. to give it a mount namespace of its own.
    pub fn start_wrapped(
        dir: &std::path::Path,
        name: &str,
        netns: Option<&str>,
        wrapper: &[&str],
        args: &[String],
    ) -> Monitor {
        let events_path = dir.join(format!("{name}-events.jsonl"));
        let store_path = dir.join(format!("{name}-events.db"));
        let control = dir.join(format!("{name}-control.sock"));
        let _ = fs::remove_file(&events_path);
        let bin = monitor_bin();
        assert!(bin.exists(), "no monitor binary at {} (run `cargo xtask build`)", bin.display());
        let mut cmd = command(netns, wrapper);
        cmd.arg(&bin);
        // Each test daemon pins (in block mode) in a directory of its own, never the host's default one.
        let own_pin_dir = (!args.iter().any(|a| a == "--pin-dir"))
            .then(|| format!("/sys/fs/bpf/monitor-test-{}-{name}", std::process::id()));
        cmd.arg("run").args(args);
        if let Some(dir) = &own_pin_dir {
            cmd.arg("--pin-dir").arg(dir);
        }
        cmd.arg("--events")
            .arg(&events_path)
            .arg("--store")
            .arg(&store_path)
            .arg("--control")
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr pipe");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("  [monitor] {line}");
                sink.lock().expect("stderr lock").push_str(&(line + "\n"));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if stderr.lock().expect("stderr lock").contains("ready") {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("monitor exited ({status}) before it was ready:\n{}", stderr.lock().expect("lock"));
            }
            assert!(Instant::now() < deadline, "monitor not ready after 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Monitor { child, events_path, store_path, control, stderr, own_pin_dir }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    pub fn events(&self) -> Vec<Value> {
        fs::read_to_string(&self.events_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event line is not JSON ({e}): {l}")))
            .collect()
    }

    /// Wait (up to `secs`) for events matching `pred`; returns all matching.
    pub fn wait_events(&self, secs: u64, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let found: Vec<Value> = self.events().into_iter().filter(|e| pred(e)).collect();
            if !found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Run a `monitor` subcommand against this daemon's control socket.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(monitor_bin())
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .output()
            .unwrap_or_else(|e| panic!("run monitor {args:?}: {e}"))
    }

    /// SIGTERM and wait; dropping `self` then detaches what a block-mode daemon left pinned.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait monitor");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
        if let Some(dir) = &self.own_pin_dir {
            let _ = Command::new(monitor_bin()).args(["detach", "--pin-dir", dir]).output();
        }
    }
}

/// Events of one client process.
/// `[nsenter --net=NS --] [WRAPPER...]`, to which the daemon's path and arguments are added.
pub fn command(netns: Option<&str>, wrapper: &[&str]) -> Command {
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = netns {
        argv.extend(["nsenter".into(), format!("--net=/run/netns/{ns}"), "--".into()]);
    }
    argv.extend(wrapper.iter().map(|s| s.to_string()));
    if argv.is_empty() {
        return Command::new("env");
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// A wrapper that runs the daemon in a mount namespace of its own where no cgroup v2 hierarchy is
/// mounted: a host without cgroup2, for the daemon only.
pub const WITHOUT_CGROUP2: &[&str] = &[
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    "for m in $(awk '{for (i = 7; i <= NF; i++) if ($i == \"-\") { if ($(i + 1) == \"cgroup2\") print $5; break }}' /proc/self/mountinfo); do umount -l \"$m\" || exit 1; done; exec \"$@\"",
    "sh",
];

pub fn of_pid(events: &[Value], pid: u32) -> Vec<Value> {
    events.iter().filter(|e| e["InitiatingProcessId"] == pid).cloned().collect()
}

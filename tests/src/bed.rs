//! Network namespaces, proxies, origins and the clients' cgroup.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

pub const ROUTER_V4: &str = "10.200.1.1";
pub const ROUTER_V6: &str = "fd00:200:1::1";
pub const CLIENT_V4: &str = "10.200.1.2";
pub const ORIGIN_V4: &str = "10.200.2.2";
/// A second origin address, for IP and CIDR indicators.
pub const ORIGIN2_V4: &str = "10.200.2.3";
pub const ORIGIN_V6: &str = "fd00:200:2::2";
pub const SQUID_PORT: u16 = 3128;
/// The same squid, asking for (any) credentials: it answers 407 to a CONNECT without them.
pub const SQUID_AUTH_PORT: u16 = 3129;
pub const TINYPROXY_PORT: u16 = 8888;
pub const SOCKS_PORT: u16 = 1080;

/// Names the proxies resolve to the origin.
pub const ORIGIN_NAMES: &[&str] = &[
    "origin.test",
    "other.test",
    "blocked.test",
    "a.blocked.test",
    "ok.blocked.test",
    "later.test",
    "front.test",
    "v6.test",
    // bücher.example, as the wire carries it (a Unicode indicator blocks it).
    "xn--bcher-kva.example",
];

/// The origin's unthrottled 100 MiB file.
pub const HUGE_FILE: &str = "huge.bin";
const QUIC_SINK_LOG: &str = "quic-sink.log";
const QUIC_SINK: &str = r#"
import select, socket, sys
socks = []
for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, 443))
    socks.append(s)
log = open(sys.argv[1], "a", buffering=1)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(65535)
        log.write(f"{peer[0]} {peer[1]} {len(data)}\n")
"#;

/// 100 MiB from a fixed xorshift sequence: every byte position differs from its neighbours, so a
/// reordered, repeated or lost segment changes the file.
fn huge_bytes() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(100 << 20);
    while out.len() < 100 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Run a command; panic with its command line and output when it fails.
pub fn sh(cmd: &mut Command) -> Output {
    let line = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {line}: {e}"));
    assert!(
        out.status.success(),
        "{line} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

pub fn cgroup2_root() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    info.lines()
        .find_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .expect("no cgroup2 mount: the monitor needs cgroup v2")
}

/// A cgroup for the clients; removed (after killing what is left in it) on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(name: &str) -> Cgroup {
        let path = cgroup2_root().join(format!("monitor-test-{}-{name}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create cgroup {}: {e}", path.display()));
        Cgroup { path }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Ok(procs) = fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The namespaces, their addresses, and the servers running in them.
pub struct Bed {
    pub client_ns: String,
    pub router_ns: String,
    pub origin_ns: String,
    /// Router-side interface facing the client (gateway-mode capture point).
    pub router_client_if: String,
    pub dir: PathBuf,
    servers: Vec<(String, Child)>,
}

impl Bed {
    pub fn new() -> Bed {
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("monitor-test-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test dir");
        // The proxies drop privileges; their logs live here.
        sh(Command::new("chmod").arg("0777").arg(&dir));
        let mut bed = Bed {
            client_ns: format!("mt{id}c"),
            router_ns: format!("mt{id}r"),
            origin_ns: format!("mt{id}o"),
            router_client_if: "vr1".into(),
            dir,
            servers: Vec::new(),
        };
        bed.network();
        bed.origin();
        bed.proxies();
        bed
    }

    pub fn netns_path(ns: &str) -> String {
        format!("/run/netns/{ns}")
    }

    fn network(&self) {
        let (c, r, o) = (&self.client_ns, &self.router_ns, &self.origin_ns);
        for ns in [c, r, o] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", c, "link", "add", "vc", "type", "veth", "peer", "name", "vr1", "netns", r]);
        ip(&["-n", r, "link", "add", "vr2", "type", "veth", "peer", "name", "vo", "netns", o]);
        for (ns, dev, addrs) in [
            (c, "vc", vec!["10.200.1.2/24", "fd00:200:1::2/64"]),
            (r, "vr1", vec!["10.200.1.1/24", "fd00:200:1::1/64"]),
            (r, "vr2", vec!["10.200.2.1/24", "fd00:200:2::1/64"]),
            (o, "vo", vec!["10.200.2.2/24", "10.200.2.3/24", "fd00:200:2::2/64"]),
        ] {
            for a in addrs {
                ip(&["-n", ns, "addr", "add", a, "dev", dev, "nodad"]);
            }
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", c, "route", "add", "default", "via", ROUTER_V4]);
        ip(&["-n", c, "-6", "route", "add", "default", "via", ROUTER_V6]);
        ip(&["-n", o, "route", "add", "default", "via", "10.200.2.1"]);
        ip(&["-n", o, "-6", "route", "add", "default", "via", "fd00:200:2::1"]);
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            sh(Command::new("ip").args(["netns", "exec", r, "sysctl", "-q", "-w", key]));
        }
        // `ip netns exec` mounts this over /etc/hosts for the proxies.
        let hosts_dir = PathBuf::from("/etc/netns").join(r);
        fs::create_dir_all(&hosts_dir).expect("create /etc/netns dir");
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for name in ORIGIN_NAMES {
            if *name == "v6.test" {
                hosts.push_str(&format!("{ORIGIN_V6} {name}\n"));
            } else {
                hosts.push_str(&format!("{ORIGIN_V4} {name}\n"));
            }
        }
        fs::write(hosts_dir.join("hosts"), hosts).expect("write hosts");
    }

    /// Spawn a long-running server inside `ns` (through `ip netns exec`, for the hosts file); it is
    /// stopped with the bed.
    pub fn serve(&mut self, ns: &str, name: &str, args: &[&str]) {
        let log = fs::File::create(self.dir.join(format!("{name}.out"))).expect("server log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.servers.push((name.to_string(), child));
    }

    fn origin(&mut self) {
        let dir = self.dir.clone();
        let san = ORIGIN_NAMES.iter().map(|n| format!("DNS:{n}")).collect::<Vec<_>>().join(",");
        sh(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=origin.test"])
            .arg("-keyout")
            .arg(dir.join("origin.key"))
            .arg("-out")
            .arg(dir.join("origin.crt"))
            .args(["-addext", &format!("subjectAltName={san}")]));
        let www = dir.join("www");
        fs::create_dir_all(&www).expect("www");
        fs::write(www.join("index.html"), "origin ok\n").expect("index");
        // 24 MiB served at 4 MiB/s: a download that lasts about six seconds.
        fs::write(www.join("big.bin"), vec![7u8; 24 << 20]).expect("big file");
        // 100 MiB of pseudo-random bytes served at full speed: a download checked byte for byte.
        fs::write(www.join(HUGE_FILE), huge_bytes()).expect("huge file");
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{ worker_connections 512; }}\n\
             http {{\n access_log {d}/nginx-access.log;\n client_body_temp_path {d}/nb; proxy_temp_path {d}/np; fastcgi_temp_path {d}/nf; uwsgi_temp_path {d}/nu; scgi_temp_path {d}/ns;\n\
             server {{\n  listen 80; listen [::]:80;\n  listen 443 ssl; listen [::]:443 ssl;\n  ssl_certificate {d}/origin.crt; ssl_certificate_key {d}/origin.key;\n\
               root {d}/www;\n  location /big.bin {{ limit_rate 4m; }}\n }}\n}}\n",
            d = dir.display()
        );
        fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let conf = dir.join("nginx.conf");
        let ns = self.origin_ns.clone();
        self.serve(&ns, "nginx", &["nginx", "-c", conf.to_str().expect("utf-8 path"), "-g", "daemon off;"]);
        self.wait_port(&ns, ORIGIN_V4, 443);
        self.wait_port(&ns, ORIGIN_V4, 80);
        // UDP port 443: a sink that logs each datagram's source, to count what a QUIC client got through.
        let log = dir.join(QUIC_SINK_LOG).display().to_string();
        self.serve(&ns, "quic-sink", &["/usr/bin/python3", "-c", QUIC_SINK, &log]);
    }

    /// The datagrams the origin's UDP port 443 received from `port` (any address) so far.
    pub fn quic_datagrams_from(&self, port: u16) -> usize {
        let log = fs::read_to_string(self.dir.join(QUIC_SINK_LOG)).unwrap_or_default();
        log.lines().filter(|l| l.split(' ').nth(1) == Some(&port.to_string())).count()
    }

    /// What the origin serves as `/huge.bin`.
    pub fn huge_file(&self) -> PathBuf {
        self.dir.join("www").join(HUGE_FILE)
    }

    fn proxies(&mut self) {
        let d = self.dir.display().to_string();
        let squid = format!(
            "http_port {SQUID_PORT}\nhttp_port {SQUID_AUTH_PORT}\n\
             auth_param basic program /usr/lib/squid/basic_fake_auth\nacl authport localport {SQUID_AUTH_PORT}\n\
             acl authed proxy_auth REQUIRED\nhttp_access deny authport !authed\nhttp_access allow all\ncache deny all\naccess_log stdio:{d}/squid-access.log\ncache_log {d}/squid-cache.log\n\
             pid_filename {d}/squid.pid\ncoredump_dir {d}\nvisible_hostname monitor-test\nshutdown_lifetime 0 seconds\n\
             dns_nameservers 127.0.0.1\ndns_timeout 2 seconds\nhosts_file /etc/hosts\nconnect_timeout 5 seconds\nlogfile_rotate 0\n"
        );
        fs::write(self.dir.join("squid.conf"), squid).expect("squid.conf");
        let tiny = format!(
            "User nobody\nGroup nogroup\nPort {TINYPROXY_PORT}\nTimeout 60\nLogFile \"{d}/tinyproxy.log\"\nLogLevel Info\nPidFile \"{d}/tinyproxy.pid\"\nMaxClients 50\n"
        );
        fs::write(self.dir.join("tinyproxy.conf"), tiny).expect("tinyproxy.conf");
        let ns = self.router_ns.clone();
        let squid_conf = format!("{d}/squid.conf");
        let tiny_conf = format!("{d}/tinyproxy.conf");
        self.serve(&ns, "squid", &["squid", "-N", "-f", &squid_conf]);
        self.serve(&ns, "tinyproxy", &["tinyproxy", "-d", "-c", &tiny_conf]);
        self.serve(&ns, "microsocks", &["microsocks", "-i", "0.0.0.0", "-p", &SOCKS_PORT.to_string()]);
        self.wait_port(&ns, ROUTER_V4, SQUID_PORT);
        self.wait_port(&ns, ROUTER_V4, SQUID_AUTH_PORT);
        self.wait_port(&ns, ROUTER_V4, TINYPROXY_PORT);
        self.wait_port(&ns, ROUTER_V4, SOCKS_PORT);
    }

    /// Wait until something listens on addr:port inside `ns`.
    pub fn wait_port(&mut self, ns: &str, addr: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let target: SocketAddr = format!("{addr}:{port}").parse().expect("socket address");
        loop {
            let ok = in_netns(ns, || TcpStream::connect_timeout(&target, Duration::from_millis(300)).is_ok());
            if ok {
                return;
            }
            for (name, child) in &mut self.servers {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = fs::read_to_string(self.dir.join(format!("{name}.out"))).unwrap_or_default();
                    panic!("{name} exited ({status}) before listening on {target}: {log}");
                }
            }
            assert!(Instant::now() < deadline, "nothing listens on {target} in {ns} after 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn squid_log(&self) -> String {
        fs::read_to_string(self.dir.join("squid-access.log")).unwrap_or_default()
    }

    pub fn tinyproxy_log(&self) -> String {
        fs::read_to_string(self.dir.join("tinyproxy.log")).unwrap_or_default()
    }

    pub fn nginx_log(&self) -> String {
        fs::read_to_string(self.dir.join("nginx-access.log")).unwrap_or_default()
    }

    fn proxy_and_origin_logs(&self) -> [String; 3] {
        [self.squid_log(), self.tinyproxy_log(), self.nginx_log()]
    }

    /// Where the proxies' and the origin's logs end now.
    pub fn log_mark(&self) -> [usize; 3] {
        self.proxy_and_origin_logs().map(|l| l.len())
    }

    /// What squid, tinyproxy and nginx logged since `mark`.
    pub fn logs_since(&self, mark: [usize; 3]) -> String {
        let logs = self.proxy_and_origin_logs();
        logs.iter().zip(mark).map(|(l, m)| l.get(m..).unwrap_or("")).collect::<Vec<_>>().join("")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("origin.crt")
    }
}

impl Default for Bed {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for (_, child) in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        // squid forks a worker that outlives `ip netns exec`'s child; kill whatever still runs in the namespaces.
        for ns in [&self.client_ns, &self.router_ns, &self.origin_ns] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in
                    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse::<i32>().ok())
                {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for ns in [&self.client_ns, &self.router_ns, &self.origin_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.router_ns));
        if std::thread::panicking() || std::env::var_os("MONITOR_TEST_KEEP").is_some() {
            eprintln!("test files kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Run `f` with this thread in network namespace `ns`, then switch back.
pub fn in_netns<T>(ns: &str, f: impl FnOnce() -> T) -> T {
    let own = fs::File::open("/proc/thread-self/ns/net").expect("open own netns");
    let target = fs::File::open(Path::new("/run/netns").join(ns)).expect("open netns");
    use std::os::fd::AsRawFd as _;
    assert_eq!(unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns into {ns}");
    let out = f();
    assert_eq!(unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns back");
    out
}

/// A finished client process.
#[derive(Debug)]
pub struct ClientRun {
    pub pid: u32,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ClientRun {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Run `argv` as a process of `cgroup` inside network namespace `ns` (the cgroup is joined before the
/// namespace switch: `ip netns exec` would hide /sys/fs/cgroup). Killed after `timeout`.
pub fn client(cgroup: &Cgroup, ns: &str, argv: &[&str], timeout: Duration) -> ClientRun {
    let procs = cgroup.path.join("cgroup.procs");
    let started = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg" && exec nsenter --net="$ns" -- "$@""#)
        .arg("sh")
        .arg(&procs)
        .arg(Bed::netns_path(ns))
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start client {argv:?}: {e}"));
    let pid = child.id();
    let deadline = started + timeout;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read as _;
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut stderr);
    }
    ClientRun { pid, code, stdout, stderr, elapsed }
}

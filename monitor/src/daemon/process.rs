//! Naming the process behind a connection from /proc, as soon as its connect() is reported.

use std::{
    collections::HashMap,
    fs,
    os::fd::AsRawFd as _,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use monitor_core::event::InitiatingProcess;

use super::netlink;

/// User names by uid, read once from /etc/passwd.
pub struct Accounts {
    names: HashMap<u32, String>,
}

impl Accounts {
    pub fn load() -> Self {
        let names = fs::read_to_string("/etc/passwd")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let uid = f.nth(1)?.parse().ok()?;
                Some((uid, name.to_string()))
            })
            .collect();
        Accounts { names }
    }

    pub fn name(&self, uid: u32) -> String {
        self.names.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
    }
}

/// The process `tgid`, from /proc; when it has already exited, what the kernel told us (`comm`).
pub fn describe(tgid: u32, uid: u32, comm: &str, accounts: &Accounts) -> InitiatingProcess {
    let mut process = describe_parts(tgid, comm);
    process.account_name = accounts.name(uid);
    process.account_uid = uid;
    process
}

/// What /proc says of `tgid`, without its account.
fn describe_parts(tgid: u32, comm: &str) -> InitiatingProcess {
    let dir = Path::new("/proc").join(tgid.to_string());
    let exe = fs::read_link(dir.join("exe")).ok();
    let (file_name, folder_path) = match &exe {
        Some(exe) => (
            exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| comm.to_string()),
            exe.parent().map(|p| p.to_string_lossy().into_owned()),
        ),
        None => (comm.to_string(), None),
    };
    let command_line = fs::read(dir.join("cmdline"))
        .ok()
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| comm.to_string());
    let parent_pid = fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PPid:").and_then(|v| v.trim().parse().ok())));
    InitiatingProcess {
        pid: tgid,
        parent_pid,
        file_name,
        folder_path,
        command_line,
        account_name: String::new(),
        account_uid: 0,
    }
}

/// A process as /proc showed it right after its exec: kept for a while so that a client that connects
/// and exits at once (a refused connect(), a blocked send) is still named in full.
#[derive(Clone, Debug)]
pub struct Exec {
    pub seen: Instant,
    /// `/proc/<pid>/comm`, to tell a reused pid apart.
    pub comm: String,
    pub uid: u32,
    pub process: InitiatingProcess,
}

/// Recent execs by tgid, filled by [`watch_execs`].
pub type ExecCache = Arc<Mutex<HashMap<u32, Exec>>>;

/// How long an exec is remembered; a process that lives longer is read from /proc when it connects.
pub const EXEC_REMEMBERED: Duration = Duration::from_secs(30);
/// A bound on the cache on hosts that exec at a high rate.
const EXEC_CACHE_MAX: usize = 65_536;

const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
/// `struct cn_msg`: id (idx, val), seq, ack, len (u16), flags (u16).
const CN_MSG: usize = 20;

/// Subscribe to the kernel's process events (the proc connector: CAP_NET_ADMIN, the initial network
/// namespace) and describe every exec'd process from /proc at once. `Err` when this host offers no proc
/// connector: processes are then read when they connect, as before.
pub fn watch_execs(cache: ExecCache) -> std::io::Result<()> {
    let fd = netlink::socket(NETLINK_CONNECTOR)?;
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_pid = 0;
    addr.nl_groups = CN_IDX_PROC;
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let mut listen = Vec::with_capacity(CN_MSG + 4);
    listen.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    listen.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    listen.extend_from_slice(&0u32.to_ne_bytes()); // seq
    listen.extend_from_slice(&0u32.to_ne_bytes()); // ack
    listen.extend_from_slice(&4u16.to_ne_bytes()); // len
    listen.extend_from_slice(&0u16.to_ne_bytes()); // flags
    listen.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    netlink::send(&fd, &netlink::message(libc::NLMSG_DONE as u16, 0, 0, std::process::id(), &listen))?;
    std::thread::Builder::new().name("exec-watch".into()).spawn(move || {
        let mut buf = vec![0u8; 8192];
        loop {
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                // ENOBUFS: events were lost under load; those processes are read when they connect.
                if err.raw_os_error() == Some(libc::ENOBUFS) || err.kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                tracing::warn!(
                    "exec events stopped ({err}): processes are read from /proc when they connect"
                );
                return;
            }
            for tgid in exec_events(&buf[..n as usize]) {
                let Some(exec) = read_exec(tgid) else { continue };
                let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= EXEC_CACHE_MAX {
                    let now = Instant::now();
                    cache.retain(|_, e| now.duration_since(e.seen) < EXEC_REMEMBERED);
                    if cache.len() >= EXEC_CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(tgid, exec);
            }
        }
    })?;
    Ok(())
}

/// The tgids of the PROC_EVENT_EXEC events in a datagram of netlink messages.
fn exec_events(data: &[u8]) -> Vec<u32> {
    // cn_msg, then proc_event: what (u32), cpu (u32), timestamp (u64), then exec's pid and tgid.
    let u32_at = |msg: &[u8], at: usize| u32::from_ne_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]]);
    netlink::messages(data)
        .filter(|(_, msg)| msg.len() >= CN_MSG + 24 && u32_at(msg, CN_MSG) == PROC_EVENT_EXEC)
        .map(|(_, msg)| u32_at(msg, CN_MSG + 20))
        .collect()
}

fn read_exec(tgid: u32) -> Option<Exec> {
    let dir = Path::new("/proc").join(tgid.to_string());
    let comm = fs::read_to_string(dir.join("comm")).ok()?.trim_end().to_string();
    let uid = fs::read_to_string(dir.join("status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:").and_then(|v| v.split_whitespace().next()?.parse().ok()))?;
    let process = describe_parts(tgid, &comm);
    Some(Exec { seen: Instant::now(), comm, uid, process })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(what: u32, tgid: u32) -> Vec<u8> {
        let mut event = vec![0; CN_MSG];
        event.extend_from_slice(&what.to_ne_bytes());
        event.extend_from_slice(&0u32.to_ne_bytes());
        event.extend_from_slice(&0u64.to_ne_bytes());
        event.extend_from_slice(&(tgid + 1).to_ne_bytes()); // pid (a thread)
        event.extend_from_slice(&tgid.to_ne_bytes());
        netlink::message(libc::NLMSG_DONE as u16, 0, 0, 0, &event)
    }

    #[test]
    fn exec_events_are_read_and_others_skipped() {
        let mut data = message(PROC_EVENT_EXEC, 4242);
        data.extend(message(1, 7)); // a fork
        data.extend(message(PROC_EVENT_EXEC, 99));
        assert_eq!(exec_events(&data), vec![4242, 99]);
        assert!(exec_events(&data[..10]).is_empty(), "a truncated datagram yields nothing");
        let mut bad = message(PROC_EVENT_EXEC, 1);
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(exec_events(&bad).is_empty(), "a length past the datagram stops the walk");
    }

    #[test]
    fn this_process_is_described() {
        let exec = read_exec(std::process::id()).expect("this process");
        assert!(!exec.comm.is_empty());
        assert!(exec.process.folder_path.is_some(), "{exec:?}");
    }
}

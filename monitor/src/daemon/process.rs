//! Naming the process behind a connection from /proc, as soon as its connect() is reported.

use std::{collections::HashMap, fs, path::Path};

use monitor_core::event::InitiatingProcess;

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
        account_name: accounts.name(uid),
        account_uid: uid,
    }
}

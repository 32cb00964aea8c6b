//! What /proc says about processes and the machine: CPU time, memory high-water mark, the BPF objects
//! a process holds open.

use std::{fs, process::Command};

use anyhow::Context as _;

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User + system CPU seconds of `pid` (0 when it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// The processes in network namespace `ns`.
pub fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Summed CPU seconds of every process in `ns`.
pub fn netns_cpu_seconds(ns: &str) -> f64 {
    netns_pids(ns).into_iter().map(cpu_seconds).sum()
}

/// Memory of a process, from /proc/PID/status.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    /// Peak resident set (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// Resident set now (VmRSS), MiB.
    pub rss_mib: f64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Memory { peak_rss_mib: kib("VmHWM:") / 1024.0, rss_mib: kib("VmRSS:") / 1024.0 })
}

/// Busy and total jiffies of the whole machine, from the `cpu` line of /proc/stat.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// Seconds every CPU spent working for this machine (user, system, interrupts; no idle, no steal).
    pub busy: f64,
    pub total: f64,
}

pub fn machine_cpu() -> CpuTimes {
    let Ok(stat) = fs::read_to_string("/proc/stat") else { return CpuTimes::default() };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return CpuTimes::default() };
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user). Steal is time
    // the hypervisor gave to someone else: part of the capacity, not work done here.
    let field = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let total: f64 = v.iter().take(8).sum();
    let not_ours = field(3) + field(4) + field(7);
    let ticks = clock_ticks();
    CpuTimes { busy: (total - not_ours) / ticks, total: total / ticks }
}

/// A BPF program or map a process holds a file descriptor to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfObject {
    Prog(u32),
    Map(u32),
}

/// The ids of the BPF programs and maps `pid` holds open (from /proc/PID/fdinfo).
pub fn bpf_objects(pid: u32) -> anyhow::Result<Vec<BpfObject>> {
    let dir = format!("/proc/{pid}/fd");
    let mut found = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let Ok(entry) = entry else { continue };
        let Ok(link) = fs::read_link(entry.path()) else { continue };
        let link = link.to_string_lossy();
        let (key, wrap): (&str, fn(u32) -> BpfObject) = match &*link {
            "anon_inode:bpf-prog" => ("prog_id:", BpfObject::Prog),
            "anon_inode:bpf-map" => ("map_id:", BpfObject::Map),
            _ => continue,
        };
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(text) = fs::read_to_string(&info) else { continue };
        if let Some(id) = text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok()) {
            let object = wrap(id);
            if !found.contains(&object) {
                found.push(object);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid) >= 0.0);
        let mem = memory(pid).expect("own status");
        assert!(mem.peak_rss_mib >= mem.rss_mib * 0.5 && mem.rss_mib > 0.0, "{mem:?}");
        let cpu = machine_cpu();
        assert!(cpu.total >= cpu.busy && cpu.total > 0.0, "{cpu:?}");
    }
}

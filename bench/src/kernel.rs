//! The kernel side of the cost: BPF run-time statistics per program and the memory of the maps, for
//! the programs and maps one daemon holds (found through its file descriptors, so other monitors
//! running on the machine are not counted).

use std::{collections::BTreeMap, fs, process::Command};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::procfs::{BpfObject, bpf_objects};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns on `kernel.bpf_stats_enabled` (per-program run time and count) and puts back the previous
/// value when dropped.
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> anyhow::Result<BpfStats> {
        let previous = fs::read_to_string(STATS_SYSCTL).with_context(|| format!("read {STATS_SYSCTL}"))?;
        fs::write(STATS_SYSCTL, "1").with_context(|| format!("write 1 to {STATS_SYSCTL}"))?;
        Ok(BpfStats { previous: previous.trim().to_string() })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(STATS_SYSCTL, &self.previous) {
            eprintln!("bench: could not restore {STATS_SYSCTL} to {}: {e}", self.previous);
        }
    }
}

/// Cumulative run statistics of one program.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProgStats {
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgStats {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time_ns as f64 / self.runs as f64)
    }
}

/// One map's size as the kernel accounts it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MapMemory {
    pub kind: String,
    pub max_entries: u64,
    pub bytes: u64,
}

fn bpftool(what: &str) -> anyhow::Result<Vec<Value>> {
    let out = Command::new("bpftool")
        .args([what, "show", "-j"])
        .output()
        .with_context(|| format!("run bpftool {what} show -j"))?;
    if !out.status.success() {
        bail!("bpftool {what} show failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("bpftool {what} show: not JSON"))
}

/// Run statistics of the programs `pid` holds, by program name (bpftool truncates names to 15
/// characters: `track_connectio`; the full name is put back for the programs we know).
pub fn programs(pid: u32) -> anyhow::Result<BTreeMap<String, ProgStats>> {
    let ids: Vec<u32> = bpf_objects(pid)?
        .into_iter()
        .filter_map(|o| match o {
            BpfObject::Prog(id) => Some(id),
            BpfObject::Map(_) => None,
        })
        .collect();
    let mut out = BTreeMap::new();
    for prog in bpftool("prog")? {
        let Some(id) = prog["id"].as_u64() else { continue };
        if !ids.contains(&(id as u32)) {
            continue;
        }
        let name = prog["name"].as_str().unwrap_or("?");
        let name = if name == "track_connectio" { "track_connection" } else { name };
        let entry: &mut ProgStats = out.entry(name.to_string()).or_default();
        // bpftool leaves both fields out while the program has not run.
        entry.runs += prog["run_cnt"].as_u64().unwrap_or(0);
        entry.run_time_ns += prog["run_time_ns"].as_u64().unwrap_or(0);
    }
    Ok(out)
}

/// The maps `pid` holds, by name, with their kernel memory (`bytes_memlock`).
pub fn maps(pid: u32) -> anyhow::Result<BTreeMap<String, MapMemory>> {
    let ids: Vec<u32> = bpf_objects(pid)?
        .into_iter()
        .filter_map(|o| match o {
            BpfObject::Map(id) => Some(id),
            BpfObject::Prog(_) => None,
        })
        .collect();
    let mut out = BTreeMap::new();
    for map in bpftool("map")? {
        let Some(id) = map["id"].as_u64() else { continue };
        if !ids.contains(&(id as u32)) {
            continue;
        }
        let name = map["name"].as_str().unwrap_or("?").to_string();
        out.insert(
            name,
            MapMemory {
                kind: map["type"].as_str().unwrap_or("?").to_string(),
                max_entries: map["max_entries"].as_u64().unwrap_or(0),
                bytes: map["bytes_memlock"].as_u64().unwrap_or(0),
            },
        );
    }
    Ok(out)
}

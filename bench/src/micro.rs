//! The parser micro-benchmarks' figures, read from criterion's output directory
//! (`GROUP/NAME/new/{benchmark,estimates}.json`, as `cargo bench -p monitor-core` leaves them).

use std::{
    fs,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicroResult {
    /// `group/function`, e.g. `tls/client_hello_pq_2k`.
    pub id: String,
    /// Criterion's median estimate, nanoseconds per iteration.
    pub median_ns: f64,
    pub mean_ns: f64,
}

/// Every benchmark under `dir` written at or after `since` (UNIX seconds), sorted by id.
pub fn read(dir: &Path, since: u64) -> anyhow::Result<Vec<MicroResult>> {
    let since = SystemTime::UNIX_EPOCH + Duration::from_secs(since);
    let mut out = Vec::new();
    for group in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let group = group.with_context(|| format!("read {}", dir.display()))?.path();
        let Ok(functions) = fs::read_dir(&group) else { continue };
        for function in functions.flatten() {
            let new = function.path().join("new");
            let (bench, estimates) = (new.join("benchmark.json"), new.join("estimates.json"));
            let fresh = fs::metadata(&estimates).and_then(|m| m.modified()).is_ok_and(|t| t >= since);
            if !fresh {
                continue;
            }
            let read_json = |p: &Path| -> anyhow::Result<Value> {
                let text = fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
            };
            let (bench, estimates) = (read_json(&bench)?, read_json(&estimates)?);
            out.push(MicroResult {
                id: bench["full_id"].as_str().unwrap_or("?").to_string(),
                median_ns: estimates["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN),
                mean_ns: estimates["mean"]["point_estimate"].as_f64().unwrap_or(f64::NAN),
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

//! `--export`: the device's heartbeat, a `DeviceInfo` row every `heartbeat_interval`, built from the same
//! typed [`Status`] that `monitor status` shows, and handed to the exporter.

use std::time::{Duration, Instant};

use monitor_core::device_info::{DEVICE_INFO, DeviceInfo};

use super::status::Status;

/// The events count at the previous heartbeat, for the rate between two.
#[derive(Debug, Default)]
pub struct Heartbeats {
    last: Option<(Instant, u64)>,
}

impl Heartbeats {
    /// The heartbeat for `status` at `now`: events per second since the previous one (since the start for
    /// the first).
    pub fn next(
        &mut self,
        status: &Status,
        device_name: &str,
        interval: Duration,
        now: Instant,
    ) -> DeviceInfo {
        let events_per_second = match self.last {
            Some((at, events)) => {
                let seconds = now.duration_since(at).as_secs_f64();
                if seconds > 0.0 {
                    (status.events.saturating_sub(events) as f64 / seconds).round() as u64
                } else {
                    0
                }
            }
            None => status.events_per_second.round() as u64,
        };
        self.last = Some((now, status.events));
        let export = status.export.as_ref();
        DeviceInfo {
            table: DEVICE_INFO.into(),
            timestamp: monitor_hunt::time::format_datetime(monitor_hunt::time::now_micros()),
            device_id: status.device_id.clone(),
            device_name: device_name.to_string(),
            client_version: env!("CARGO_PKG_VERSION").into(),
            os_platform: "Linux".into(),
            os_version: status.kernel_features.release.clone(),
            os_architecture: std::env::consts::ARCH.into(),
            protection_mode: status.mode.clone(),
            policy_revision: status.fleet_policy.as_ref().and_then(|p| p.revision),
            events_per_second,
            kernel_drops: status.kernel_drops.as_ref().map(|drops| drops.values().sum()),
            export_lag_rows: export.map_or(0, |e| e.lag_rows),
            export_lag_seconds: export.map_or(0, |e| e.lag_seconds.round() as u64),
            degraded_features: status.degraded.iter().map(|d| (*d).to_string()).collect(),
            uptime_seconds: status.uptime_seconds as u64,
            heartbeat_interval_seconds: interval.as_secs(),
        }
    }
}

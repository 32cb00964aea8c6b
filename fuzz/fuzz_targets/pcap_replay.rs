//! Capture replay: the input is written to a file and replayed as a pcap or pcapng capture, through
//! link, IP (with fragment reassembly), TCP and UDP decoding to the inspectors and the events.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use monitor_core::replay::replay;

/// One file per fuzzing process, rewritten for every input.
fn capture_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("monitor-fuzz-replay-{}.pcap", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let path = capture_path();
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let mut events = 0u64;
    if let Ok(stats) = replay(path, &mut |event| {
        events += 1;
        let _ = event.to_json_line();
    }) {
        assert_eq!(stats.flows, events, "one event per flow");
        assert!(stats.quic_flows <= stats.flows && stats.flows_named <= stats.flows);
    }
});

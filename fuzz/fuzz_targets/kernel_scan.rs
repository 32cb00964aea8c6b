//! The kernel's scanners (`monitor_common::scan`, the code `inspect_send` runs) against the user-space
//! parsers on the same client stream. Input: the client's bytes, one message per send.
//!
//! An unsound kernel reading (one that reads past the message or depends on stale scratch bytes) is always
//! a crash. A disagreement that is not one of the expected differences the differential test writes down
//! (monitor-core/tests/kernel_scan/compare.rs) is a crash too, unless `KERNEL_SCAN_FINDINGS` names a
//! directory: then the input is kept there as a finding (named by its bytes' hash) and the walk goes on.
//! The bounded run in `cargo xtask test` does that, so a walk that happens on a difference nobody has
//! classified yet reports it instead of failing on code it did not change; the differential test reads
//! the kept findings back.
#![no_main]

use std::hash::{DefaultHasher, Hash, Hasher};

use libfuzzer_sys::fuzz_target;

#[path = "../../monitor-core/tests/kernel_scan/compare.rs"]
#[expect(dead_code, reason = "the differential test reads more of the comparison than this target does")]
mod compare;

fuzz_target!(|data: &[u8]| {
    let outcomes = compare::compare(data).unwrap_or_else(|why| panic!("{why}"));
    for outcome in outcomes {
        if let Err(why) = outcome.result {
            match std::env::var_os("KERNEL_SCAN_FINDINGS") {
                Some(dir) => {
                    keep_finding(std::path::Path::new(&dir), data, &format!("{:?}: {why}", outcome.layer))
                }
                None => panic!("{:?}: {why}", outcome.layer),
            }
        }
    }
});

fn keep_finding(dir: &std::path::Path, data: &[u8], why: &str) {
    let mut hasher = DefaultHasher::new();
    data.hash(&mut hasher);
    let path = dir.join(format!("{:016x}", hasher.finish()));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, data)) {
        panic!("keep the finding {why} in {}: {e}", path.display());
    }
    eprintln!("kernel_scan finding {}: {why}", path.display());
}

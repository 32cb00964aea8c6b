//! The kernel's scanners (`monitor_common::scan`, the code `inspect_send` runs) against the user-space
//! parsers on the same client stream: a disagreement that is not one of the expected differences the
//! differential test writes down (monitor-core/tests/kernel_scan/compare.rs) is a crash. Input: the
//! client's bytes, one message per send.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../monitor-core/tests/kernel_scan/compare.rs"]
#[expect(dead_code, reason = "the differential test reads more of the comparison than this target does")]
mod compare;

fuzz_target!(|data: &[u8]| {
    let outcomes = compare::compare(data).unwrap_or_else(|why| panic!("{why}"));
    for outcome in outcomes {
        if let Err(why) = outcome.result {
            panic!("{:?}: {why}", outcome.layer);
        }
    }
});

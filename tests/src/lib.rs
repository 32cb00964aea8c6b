//! Test bed for the integration tests: network namespaces with real proxies and origins, a cgroup for
//! the clients, and the monitor daemon under test. Everything created is removed by drop guards, also
//! when a test panics.
//!
//! Topology (names carry the test process id, so runs do not collide):
//!
//! ```text
//!  client ns                 router ns (gateway)                     origin ns
//!  10.200.1.2  ---- veth ---- 10.200.1.1 | 10.200.2.1 ---- veth ---- 10.200.2.2, 10.200.2.3
//!  fd00:200:1::2              squid :3128, tinyproxy :8888,          fd00:200:2::2
//!                             microsocks :1080                       nginx :80 :443 (self-signed)
//! ```
//! The proxies resolve the test names through /etc/netns/<router>/hosts.

#![cfg_attr(test, expect(unused_crate_dependencies, reason = "the fleet crates are for the netns test"))]

pub mod bed;
pub mod lan;
pub mod monitor;
pub mod run;

pub use bed::{Bed, Cgroup, ClientRun, client};
pub use monitor::Monitor;
pub use run::{Outcome, Runner};

/// Root and the kernel are needed. Under CI=true their absence is a failure; elsewhere a skip that says why.
pub fn require_root() -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(!ci, "the integration tests need root (network namespaces, cgroups, BPF) and CI=true is set");
    eprintln!("skipping the integration tests: they need root (network namespaces, cgroups, BPF)");
    false
}

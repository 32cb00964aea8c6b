//! A LAN of network namespaces for the fleet tests: one bridge in a hub namespace, and for each member
//! a namespace of its own with one veth to the bridge and one address in 10.201.0.0/24. The hub has
//! 10.201.0.1 on the bridge, so a test thread that enters the hub reaches every member. Everything is
//! removed on drop (what still runs in the namespaces is killed first), also when a test panics.
//!
//! ```text
//!   member ns 10.201.0.x ── veth ──┐
//!   member ns 10.201.0.y ── veth ──┼── br0 10.201.0.1 (hub ns)
//!   member ns 10.201.0.z ── veth ──┘
//! ```

use std::process::Command;

use crate::bed::sh;

/// The hub's own address on the bridge.
pub const HUB_V4: &str = "10.201.0.1";

pub struct Lan {
    pub hub: String,
    /// (member name, its namespace, its address)
    members: Vec<(String, String, String)>,
}

fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

impl Lan {
    /// `members`: (name, address in 10.201.0.0/24); each gets namespace `mt<pid>l<name>`.
    pub fn new(members: &[(&str, &str)]) -> Lan {
        let id = std::process::id();
        let mut lan = Lan { hub: format!("mt{id}lhub"), members: Vec::new() };
        ip(&["netns", "add", &lan.hub]);
        let hub = lan.hub.clone();
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "addr", "add", &format!("{HUB_V4}/24"), "dev", "br0"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for (i, (name, addr)) in members.iter().enumerate() {
            let ns = format!("mt{id}l{name}");
            // Pushed first: a panic below still removes what was made.
            lan.members.push((name.to_string(), ns.clone(), addr.to_string()));
            let port = format!("p{i}");
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0", "nodad"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        lan
    }

    fn member(&self, name: &str) -> &(String, String, String) {
        self.members.iter().find(|m| m.0 == name).unwrap_or_else(|| panic!("no LAN member {name}"))
    }

    /// The namespace of member `name`.
    pub fn ns(&self, name: &str) -> &str {
        &self.member(name).1
    }

    /// The address of member `name`.
    pub fn addr(&self, name: &str) -> &str {
        &self.member(name).2
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let all: Vec<&str> =
            self.members.iter().map(|m| m.1.as_str()).chain(std::iter::once(self.hub.as_str())).collect();
        for ns in &all {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in
                    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse::<i32>().ok())
                {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        for ns in &all {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

//! Kernel programs of the monitor.
//!
//! - `connect4`/`connect6` (cgroup sock_addr): who connects where; IP and CIDR indicators stop the SYN.
//! - `sock_ops` (cgroup): the connection's outcome, and enrolment of its socket in `SOCKS` for inspection.
//! - `inspect_send` (sk_msg on `SOCKS`): the client's first bytes, handed to user space and judged against
//!   domain indicators before they leave; a denied send fails in the application.
//! - `quic_egress` (cgroup_skb egress): the first QUIC Initials of each UDP socket, for user space to
//!   decrypt and name; drops the rest of a QUIC flow user space found denied.
//! - `tcp_egress` (cgroup_skb egress): what sk_msg could not judge (Fast Open data, a ClientHello past
//!   its window), handed to user space where it leaves, and in block mode held until user space answers.
//! - `proxy_reply` (cgroup_skb ingress): the proxy's first answer to a CONNECT or SOCKS request.
//! - `wire_ingress` (TC): forwarded flows that no local socket sends (gateway mode); in block mode it
//!   judges them too, and resets a refused flow at both ends. Their QUIC Initials go to user space
//!   (`wire_quic`), and the rest of a denied QUIC flow is dropped.
//!
//! Each program is a thin entry that calls `try_*`; every early exit is visible there.
#![no_std]
#![no_main]

mod connect;
mod deferral;
mod egress;
mod maps;
mod parse;
mod policy;
mod quic;
mod records;
mod reply;
mod send;
mod sockops;
mod wire;
mod wire_quic;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

//! Aborting a TCP socket from outside its process: SOCK_DESTROY over NETLINK_SOCK_DIAG, the call
//! behind `ss -K` (needs CONFIG_INET_DIAG_DESTROY and CAP_NET_ADMIN).
//!
//! Used in block mode for a held send whose hold ran out with `--uninspectable block` (its bytes are
//! held in the kernel and a client that writes nothing more would never reach the program again), and
//! for a late verdict: user space named a denied target on a connection the kernel let through. The
//! socket is looked up by its 4-tuple in its process's network namespace and must carry the same
//! cookie, so a reused 4-tuple is never hit. The application sees ECONNABORTED and the peer a reset.

use std::{io, net::IpAddr, os::fd::AsRawFd as _};

use super::netlink;

const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then `struct inet_diag_sockid`.
const REQUEST: usize = 8 + 48;

/// Why a socket is aborted, for the daemon's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// Its held request named no target within the hold timeout, and `--uninspectable block`.
    HoldExpired,
    /// Block mode fails closed: user space named a denied target the kernel had let through.
    LateVerdict,
    /// User space refused bytes the kernel had left to it (Fast Open data, a ClientHello past its window),
    /// held at egress meanwhile.
    Deferred,
}

impl AbortReason {
    pub fn describe(self) -> &'static str {
        match self {
            AbortReason::HoldExpired => "its held request named no target within the hold timeout",
            AbortReason::LateVerdict => "user space named a denied target the kernel had let through",
            AbortReason::Deferred => "user space refused the bytes the kernel held for its verdict",
        }
    }
}

/// The socket to abort: the client side of an outgoing TCP connection.
#[derive(Debug, Clone)]
pub struct Abort {
    pub cookie: u64,
    pub why: AbortReason,
    /// The owning process, whose network namespace holds the socket (the daemon's own when unknown).
    pub pid: Option<u32>,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
}

/// The SOCK_DESTROY request for `abort`, ready to send.
fn request(abort: &Abort) -> io::Result<Vec<u8>> {
    let family = match (abort.local.0, abort.remote.0) {
        (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "mixed address families")),
    };
    let mut msg = Vec::with_capacity(REQUEST);
    msg.push(family as u8);
    msg.push(libc::IPPROTO_TCP as u8);
    msg.push(0); // no extensions
    msg.push(0);
    msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // any TCP state
    msg.extend_from_slice(&abort.local.1.to_be_bytes());
    msg.extend_from_slice(&abort.remote.1.to_be_bytes());
    for ip in [abort.local.0, abort.remote.0] {
        let mut raw = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => raw[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => raw.copy_from_slice(&v6.octets()),
        }
        msg.extend_from_slice(&raw);
    }
    msg.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    msg.extend_from_slice(&(abort.cookie as u32).to_ne_bytes());
    msg.extend_from_slice(&((abort.cookie >> 32) as u32).to_ne_bytes());
    debug_assert_eq!(msg.len(), REQUEST);
    // Port id 0: the kernel's.
    Ok(netlink::message(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 1, 0, &msg))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// Send the request from a netlink socket made in the right namespace and read the kernel's answer.
fn destroy(abort: &Abort) -> io::Result<()> {
    let msg = request(abort)?;
    if let Some(pid) = abort.pid {
        // A socket keeps the namespace it was made in; entering it affects this thread only.
        match std::fs::File::open(format!("/proc/{pid}/ns/net")) {
            Ok(ns) => {
                check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
            }
            // The process is gone: its socket may live on elsewhere; try the daemon's namespace.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let fd = netlink::socket(libc::NETLINK_SOCK_DIAG)?;
    let timeout = libc::timeval { tv_sec: 2, tv_usec: 0 };
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    netlink::send(&fd, &msg)?;
    let mut answer = [0u8; 256];
    let n = check(unsafe {
        libc::recv(fd.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len(), 0) as libc::c_int
    })? as usize;
    parse_ack(&answer[..n])
}

/// The kernel answers with NLMSG_ERROR: error 0 is the acknowledgement, a negative errno the failure.
fn parse_ack(answer: &[u8]) -> io::Result<()> {
    let Some((kind, payload)) = netlink::messages(answer).next() else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink answer"));
    };
    if kind != NLMSG_ERROR || payload.len() < 4 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("netlink answer of type {kind}")));
    }
    let errno = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
    match errno {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

/// Abort the socket. A thread of its own, since entering a namespace must not move the daemon's threads.
pub fn abort(target: Abort) -> io::Result<()> {
    std::thread::Builder::new()
        .name("abort".into())
        .spawn(move || destroy(&target))?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the abort thread panicked")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_matches_inet_diag_req_v2() {
        let abort = Abort {
            cookie: 0x1122_3344_5566_7788,
            why: AbortReason::LateVerdict,
            pid: None,
            local: ("10.0.0.1".parse().expect("ip"), 40000),
            remote: ("10.0.0.2".parse().expect("ip"), 3128),
        };
        let msg = request(&abort).expect("request");
        assert_eq!(msg.len(), 72);
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), SOCK_DESTROY);
        assert_eq!(msg[16], libc::AF_INET as u8);
        assert_eq!(msg[17], libc::IPPROTO_TCP as u8);
        assert_eq!(&msg[24..26], &40000u16.to_be_bytes());
        assert_eq!(&msg[26..28], &3128u16.to_be_bytes());
        assert_eq!(&msg[28..32], &[10, 0, 0, 1]);
        assert_eq!(&msg[44..48], &[10, 0, 0, 2]);
        assert_eq!(u32::from_ne_bytes([msg[64], msg[65], msg[66], msg[67]]), 0x5566_7788);
        assert_eq!(u32::from_ne_bytes([msg[68], msg[69], msg[70], msg[71]]), 0x1122_3344);
        let mixed = Abort { remote: ("::1".parse().expect("ip"), 1), ..abort };
        assert!(request(&mixed).is_err());
    }

    #[test]
    fn ack_and_errors_are_read() {
        let mut answer = netlink::message(NLMSG_ERROR, 0, 1, 0, &[0; 20]);
        assert!(parse_ack(&answer).is_ok());
        answer[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_ack(&answer).expect_err("ENOENT").raw_os_error(), Some(libc::ENOENT));
        assert!(parse_ack(&answer[..10]).is_err());
    }
}

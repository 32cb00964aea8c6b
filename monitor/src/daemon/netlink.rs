//! The netlink plumbing the socket abort (sock_diag) and the exec watcher (proc connector) share:
//! a socket, a message with its `struct nlmsghdr`, and the walk over the messages of a datagram.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `struct nlmsghdr`: length (u32), type (u16), flags (u16), sequence (u32), port id (u32).
pub const HEADER: usize = 16;

/// A datagram netlink socket of `protocol`.
pub fn socket(protocol: libc::c_int) -> io::Result<OwnedFd> {
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by socket() and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One message: its header, then `payload`.
pub fn message(kind: u16, flags: u16, sequence: u32, port: u32, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(HEADER + payload.len());
    msg.extend_from_slice(&((HEADER + payload.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&sequence.to_ne_bytes());
    msg.extend_from_slice(&port.to_ne_bytes());
    msg.extend_from_slice(payload);
    msg
}

/// Send one whole message.
pub fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    match sent {
        n if n < 0 => Err(io::Error::last_os_error()),
        n if n as usize != msg.len() => Err(io::Error::new(io::ErrorKind::WriteZero, "short netlink write")),
        _ => Ok(()),
    }
}

/// The messages of a datagram, as (type, payload). A length that runs past the datagram ends the walk.
pub fn messages(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < HEADER {
            return None;
        }
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < HEADER || len > data.len() {
            return None;
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let payload = &data[HEADER..len];
        data = &data[len.next_multiple_of(4).min(data.len())..];
        Some((kind, payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_lengths_stop_the_walk() {
        let mut data = message(2, 0, 1, 0, &[1, 2, 3]);
        data.extend([0]); // padding to 4 bytes
        data.extend(message(3, 0, 2, 0, &[9; 8]));
        let read: Vec<(u16, Vec<u8>)> = messages(&data).map(|(k, p)| (k, p.to_vec())).collect();
        assert_eq!(read, vec![(2, vec![1, 2, 3]), (3, vec![9; 8])]);
        assert_eq!(messages(&data[..10]).count(), 0, "a truncated datagram yields nothing");
        let mut bad = message(2, 0, 1, 0, &[0; 4]);
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(messages(&bad).count(), 0, "a length past the datagram stops the walk");
    }
}

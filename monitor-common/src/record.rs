//! Ring-buffer records, kernel to user space. Each starts with a [`RecordHeader`].

/// `connect()` of a TCP socket in a watched cgroup: the process behind the socket cookie.
pub const KIND_PROCESS: u32 = 1;
/// The three-way handshake of an outgoing connection completed.
pub const KIND_ESTABLISHED: u32 = 2;
/// An outgoing connection failed before it was established.
pub const KIND_FAILED: u32 = 3;
/// An established connection closed; user space may forget it.
pub const KIND_CLOSED: u32 = 4;
/// A chunk of the client's first bytes, seen by sk_msg.
pub const KIND_PAYLOAD: u32 = 5;
/// The kernel judged the connection's target.
pub const KIND_VERDICT: u32 = 6;
/// A chunk of a forwarded flow's first client bytes, seen by TC (no socket, no process).
pub const KIND_WIRE: u32 = 7;
/// The first bytes a proxy answered to a CONNECT or SOCKS request.
pub const KIND_REPLY: u32 = 8;

/// Block mode: the kernel began holding (corking) a send until the bytes that decide arrive.
pub const KIND_HOLD: u32 = 10;

/// The kernel left a connection's verdict to user space (see [`PHASE_EGRESS`]).
pub const KIND_DEFER: u32 = 11;

/// The first datagrams of a UDP socket that look like QUIC long-header packets (Initials).
pub const KIND_QUIC: u32 = 9;
/// Bytes of a QUIC datagram handed to user space (an Initial is padded to at least 1200).
pub const QUIC_CHUNK: usize = 1500;
/// Datagrams per socket handed to user space: a ClientHello spans at most a few Initials.
pub const QUIC_DATAGRAMS: u32 = 4;
/// A QUIC long-header datagram of a forwarded UDP flow, seen on TC: a [`QuicRecord`] with cookie 0,
/// `local` the client.
pub const KIND_WIRE_QUIC: u32 = 13;
/// The value of a forwarded QUIC flow in `WIRE_QUIC` once user space has denied it (block mode); below it,
/// the count of datagrams handed over.
pub const WIRE_QUIC_DENIED: u32 = u32::MAX;

/// Bytes of a proxy's reply handed to user space: enough for a status line or a SOCKS reply.
pub const REPLY_CHUNK: usize = 256;

/// Bytes of payload in one record.
pub const PAYLOAD_CHUNK: usize = 1024;
/// Longest DNS name, plus room for a port or a trailing dot.
pub const NAME_MAX: usize = 256;
pub const COMM_LEN: usize = 16;

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    pub kind: u32,
    pub _pad: u32,
    /// Socket cookie; 0 for wire records.
    pub cookie: u64,
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
}

/// Addresses as the kernel holds them: IPv4 in `addr[0]`, network byte order; ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    pub family: u32,
    pub local_port: u32,
    pub remote_port: u32,
    pub _pad: u32,
    pub local_addr: [u32; 4],
    pub remote_addr: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessRecord {
    pub header: RecordHeader,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; COMM_LEN],
    /// Only the remote side is known at connect(); the local one comes with [`SocketRecord`].
    pub endpoints: Endpoints,
    /// A `VERDICT_*` from an IP or CIDR indicator on the remote address.
    pub verdict: u32,
    /// SOCK_STREAM (1) or SOCK_DGRAM (2).
    pub sock_type: u32,
}

/// Established, failed or closed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketRecord {
    pub header: RecordHeader,
    pub endpoints: Endpoints,
    /// TCP state the socket left (for KIND_FAILED: SYN_SENT = 2).
    pub old_state: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PayloadRecord {
    pub header: RecordHeader,
    /// Offset of `data[0]` in the client's byte stream.
    pub offset: u32,
    pub len: u32,
    pub data: [u8; PAYLOAD_CHUNK],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct VerdictRecord {
    pub header: RecordHeader,
    pub verdict: u32,
    pub source: u32,
    /// 1 when the kernel will not look at this connection again.
    pub last: u32,
    pub name_len: u32,
    pub name: [u8; NAME_MAX],
}

/// A send held in the kernel: nothing of it has left. A verdict record ends the hold.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HoldRecord {
    pub header: RecordHeader,
    /// Bytes held so far.
    pub held: u32,
    /// Bytes the kernel waits for before it looks again.
    pub need: u32,
}

/// Why a connection's verdict was left to user space.
/// A ClientHello larger than the kernel's window (or spread over more records than it walks) that does
/// not name its server within the window.
pub const DEFER_LARGE_HELLO: u32 = 1;
/// Payload that left without passing sk_msg: TCP Fast Open data (in the SYN, or queued before the
/// handshake completed), or a send that began before the socket was established.
pub const DEFER_EARLY_DATA: u32 = 2;

/// The kernel left a connection's verdict to user space: from stream offset `from` on, the client's
/// bytes are handed over at egress (and, in block mode, none of them leaves until user space answers).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DeferRecord {
    pub header: RecordHeader,
    pub from: u32,
    /// One of `DEFER_*`.
    pub reason: u32,
}

/// A forwarded flow seen on an interface: its 4-tuple in place of a socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WireRecord {
    pub header: RecordHeader,
    /// `local` is the client (the SYN sender), `remote` the server.
    pub endpoints: Endpoints,
    /// TCP flags of the segment (SYN = 0x02, FIN = 0x01, RST = 0x04, ACK = 0x10).
    pub tcp_flags: u32,
    /// Offset of `data[0]` in the client's byte stream (sequence number minus ISN minus one).
    pub offset: u32,
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; PAYLOAD_CHUNK],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReplyRecord {
    pub header: RecordHeader,
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; REPLY_CHUNK],
}

/// A QUIC datagram a local socket sent: `local` is the sender.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct QuicRecord {
    pub header: RecordHeader,
    pub endpoints: Endpoints,
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; QUIC_CHUNK],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for QuicRecord {}
    unsafe impl aya::Pod for ReplyRecord {}
    unsafe impl aya::Pod for HoldRecord {}
    unsafe impl aya::Pod for DeferRecord {}
    unsafe impl aya::Pod for RecordHeader {}
    unsafe impl aya::Pod for ProcessRecord {}
    unsafe impl aya::Pod for SocketRecord {}
    unsafe impl aya::Pod for PayloadRecord {}
    unsafe impl aya::Pod for VerdictRecord {}
    unsafe impl aya::Pod for WireRecord {}
}

/// Per-connection state the kernel keeps while it still inspects a connection (map `FLOWS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowState {
    /// Socket cookie, set when the connection starts (sk_msg has no cookie helper).
    pub cookie: u64,
    /// Client bytes already seen (and handed to user space up to `CAPTURE_LIMIT`).
    pub seen: u32,
    /// One of `PHASE_*`.
    pub phase: u32,
    /// The last verdict.
    pub verdict: u32,
    /// 1 after a CONNECT or SOCKS request passed, until the proxy's first reply segment is captured.
    pub awaiting_reply: u32,
    /// The initial sequence number, from the SYN at egress (`isn_known` says whether it was seen).
    pub isn: u32,
    /// bpf_ktime_get_ns when the current hold began; 0 when no send is held.
    pub hold_since: u64,
    pub isn_known: u32,
    /// [`PHASE_EGRESS`]: the stream offset the deferred bytes start at, and the end of what egress has
    /// handed to user space so far.
    pub defer_from: u32,
    pub egress_seen: u32,
    /// 1 when egress hands the bytes over (they never passed sk_msg); else sk_msg does.
    pub egress_capture: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowState {}

/// Waiting for the first request or ClientHello.
pub const PHASE_FIRST: u32 = 0;
/// A CONNECT or SOCKS request passed: the next write opens the tunnel (a ClientHello, or HTTP).
pub const PHASE_TUNNEL: u32 = 1;
/// A SOCKS5 greeting passed: the next write is the request (or an auth sub-negotiation first).
pub const PHASE_SOCKS5_REQUEST: u32 = 2;
/// Nothing more to inspect: pass everything.
pub const PHASE_DONE: u32 = 3;
/// Blocked: drop everything.
pub const PHASE_BLOCKED: u32 = 4;
/// Audit mode, a request split over several sends: hand every send to user space (which reads across
/// them) without holding any, until user space has its answer or `CAPTURE_LIMIT` is reached.
pub const PHASE_CAPTURE: u32 = 5;

/// Block mode, a plain HTTP request passed: the program runs again where the next request on the
/// connection starts (keep-alive, pipelining) and judges it too.
pub const PHASE_HTTP: u32 = 6;

/// The verdict waits on user space, which reads the client's bytes at egress (`tcp_egress`) and writes
/// the connection's next phase into `DEFERRED`. In block mode no payload packet leaves meanwhile: TCP
/// keeps the bytes and sends them again, and they pass once the answer allows them. In audit mode they
/// pass. Used for what the kernel cannot read itself: a ClientHello beyond its window, and bytes that
/// never passed sk_msg (TCP Fast Open).
pub const PHASE_EGRESS: u32 = 7;
/// A forwarded flow (TC) user space refused after the kernel let it through (a late verdict): its next
/// segment becomes resets to both ends, and the flow is `PHASE_BLOCKED` from then on.
pub const PHASE_REFUSE: u32 = 18;
/// Stream bytes from `defer_from` that egress hands to user space: a 64 KiB ClientHello, its record
/// headers, and room for what precedes it in the same segments.
pub const DEFER_LIMIT: u32 = 72 * 1024;

/// Key of a forwarded flow in the TC flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WireFlowKey {
    pub family: u32,
    pub client_port: u16,
    pub server_port: u16,
    pub client_addr: [u32; 4],
    pub server_addr: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WireFlowState {
    /// Initial sequence number + 1: offset 0 of the client stream.
    pub isn_next: u32,
    /// 1 once the client acknowledged the server's SYN-ACK.
    pub established: u32,
    /// Block mode: one of `PHASE_FIRST`, `PHASE_TUNNEL`, `PHASE_SOCKS5_REQUEST`, `PHASE_DONE`,
    /// `PHASE_BLOCKED`, as for a socket.
    pub phase: u32,
    /// Block mode: the client stream offset of the bytes judged next (after a SOCKS5 greeting, or where a
    /// tunnel's first bytes start).
    pub next_offset: u32,
    /// Block mode, a ClientHello that spans segments: the stream offset of its next extension header, and
    /// of the end of its extensions.
    pub hello_next: u32,
    pub hello_end: u32,
}

/// Block mode: the kernel judged a forwarded flow on TC (see [`WireVerdictRecord`]).
pub const KIND_WIRE_VERDICT: u32 = 12;

/// The kernel's verdict on a forwarded flow, sent when it refuses the flow or cannot read it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WireVerdictRecord {
    pub header: RecordHeader,
    /// `local` is the client (the SYN sender), `remote` the server.
    pub endpoints: Endpoints,
    pub verdict: u32,
    pub source: u32,
    pub name_len: u32,
    pub _pad: u32,
    pub name: [u8; NAME_MAX],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for WireVerdictRecord {}

#[cfg(feature = "user")]
unsafe impl aya::Pod for WireFlowKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for WireFlowState {}

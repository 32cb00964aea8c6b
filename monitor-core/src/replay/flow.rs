//! One flow in a capture, and who its client was: a TCP connection, both byte streams reassembled by
//! sequence number and fed to the inspectors in order; or a QUIC flow, each end's datagrams fed to
//! its own QUIC inspector.

use std::net::SocketAddr;

use super::decode::TcpSegment;
use crate::{
    extract::{FlowInspector, Inspection, QuicInspector},
    stream::Stream,
};

/// Which end of the connection, by the first packet seen: `A` sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    A,
    B,
}

impl End {
    fn other(self) -> End {
        match self {
            End::A => End::B,
            End::B => End::A,
        }
    }
}

/// A TCP connection seen in the capture.
#[derive(Debug)]
pub(crate) struct TcpFlow {
    pub first_nanos: u128,
    /// The end that sent the first packet seen.
    pub a: SocketAddr,
    pub b: SocketAddr,
    /// The end that sent a SYN without ACK.
    syn_from: Option<End>,
    syn_seq: Option<u32>,
    syn_ack_seen: bool,
    first_payload_from: Option<End>,
    rst: bool,
    streams: [Stream; 2],
    /// A's bytes as the client's.
    a_as_client: FlowInspector,
    /// B's bytes as the client's (a reverse proxy, or a capture without the SYN).
    b_as_client: FlowInspector,
}

/// The transport of a flow, as the event's Protocol column names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "Tcp",
            Transport::Udp => "Udp",
        }
    }
}

/// How a finished flow is reported.
#[derive(Debug)]
pub(crate) struct FlowReport {
    pub transport: Transport,
    pub first_nanos: u128,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub failed: bool,
    pub inspection: Inspection,
    /// The SYN sender's peer sent the request (reverse SOCKS and the like).
    pub request_from_responder: bool,
}

impl TcpFlow {
    pub fn new(first_nanos: u128, a: SocketAddr, b: SocketAddr) -> Self {
        TcpFlow {
            first_nanos,
            a,
            b,
            syn_from: None,
            syn_seq: None,
            syn_ack_seen: false,
            first_payload_from: None,
            rst: false,
            streams: [Stream::default(), Stream::default()],
            a_as_client: FlowInspector::new(),
            b_as_client: FlowInspector::new(),
        }
    }

    /// Whether a SYN for this 4-tuple starts a new connection rather than repeating this one's.
    pub fn is_new_connection(&self, segment: &TcpSegment<'_>) -> bool {
        if !segment.syn || segment.ack {
            return false;
        }
        let closed = self.rst || (self.streams[0].fin && self.streams[1].fin);
        let other_isn = self.syn_seq.is_some_and(|isn| isn != segment.seq);
        let data_without_syn = self.syn_seq.is_none() && self.first_payload_from.is_some();
        closed || other_isn || data_without_syn
    }

    /// Both ends said goodbye (or one reset) and no held-back data can still be completed.
    pub fn is_closed(&self) -> bool {
        let ended = self.rst || (self.streams[0].fin && self.streams[1].fin);
        ended && !self.streams.iter().any(Stream::has_gap)
    }

    pub fn on_segment(&mut self, segment: &TcpSegment<'_>) {
        let from = if segment.src == self.a { End::A } else { End::B };
        let index = from as usize;
        if segment.syn {
            self.streams[index].on_syn(segment.seq);
            if segment.ack {
                self.syn_ack_seen = true;
            } else if self.syn_from.is_none() {
                self.syn_from = Some(from);
                self.syn_seq = Some(segment.seq);
            }
        }
        self.rst |= segment.rst;
        let data_seq = if segment.syn { segment.seq.wrapping_add(1) } else { segment.seq };
        if !segment.payload.is_empty() {
            self.first_payload_from.get_or_insert(from);
            let ready = self.streams[index].on_data(data_seq, &segment.payload);
            if !ready.is_empty() {
                let (client_side, server_side) = match from {
                    End::A => (&mut self.a_as_client, &mut self.b_as_client),
                    End::B => (&mut self.b_as_client, &mut self.a_as_client),
                };
                client_side.client_bytes(&ready);
                server_side.server_bytes(&ready);
            }
        }
        self.streams[index].fin |= segment.fin;
    }

    /// Decides who the client was and what its bytes named.
    pub fn report(mut self) -> FlowReport {
        self.a_as_client.finish();
        self.b_as_client.finish();
        let inspector = |end| match end {
            End::A => &self.a_as_client,
            End::B => &self.b_as_client,
        };
        let (client, request_from_responder) = match self.syn_from {
            // The SYN sender is the client; only if its bytes are no request we know and the peer's
            // are, the request came from the responder (reverse SOCKS).
            Some(syn_from) => {
                let own = inspector(syn_from).inspection();
                let peer = inspector(syn_from.other()).inspection();
                let reverse = own.protocol.is_none() && score(peer) > score(own);
                (syn_from, reverse)
            }
            // Without a SYN, the client is the end whose first payload reads as a request.
            None => {
                let first = self.first_payload_from.unwrap_or(End::A);
                let other = first.other();
                let pick = if score(inspector(other).inspection()) > score(inspector(first).inspection()) {
                    other
                } else {
                    first
                };
                (pick, false)
            }
        };
        let named_by = if request_from_responder { client.other() } else { client };
        let (client_addr, server_addr) = match client {
            End::A => (self.a, self.b),
            End::B => (self.b, self.a),
        };
        let server_end = client.other();
        let server_spoke =
            self.streams[server_end as usize].delivered() > 0 || self.streams[server_end as usize].has_gap();
        let failed = self.syn_from.is_some() && !self.syn_ack_seen && !server_spoke;
        FlowReport {
            transport: Transport::Tcp,
            first_nanos: self.first_nanos,
            client: client_addr,
            server: server_addr,
            failed,
            inspection: inspector(named_by).inspection().clone(),
            request_from_responder,
        }
    }
}

/// A UDP flow whose first datagram was QUIC. Each end's datagrams go to its own inspector as if it
/// were the client, because a capture may begin after the client's first datagram; only the client's
/// Initials open with the keys its connection ID gives, so the server's end names nothing.
#[derive(Debug)]
pub(crate) struct QuicFlow {
    first_nanos: u128,
    /// The end that sent the first datagram seen.
    a: SocketAddr,
    b: SocketAddr,
    a_as_client: QuicInspector,
    b_as_client: QuicInspector,
}

impl QuicFlow {
    pub fn new(first_nanos: u128, a: SocketAddr, b: SocketAddr) -> Self {
        QuicFlow { first_nanos, a, b, a_as_client: QuicInspector::new(), b_as_client: QuicInspector::new() }
    }

    pub fn on_datagram(&mut self, src: SocketAddr, payload: &[u8]) {
        let inspector = if src == self.a { &mut self.a_as_client } else { &mut self.b_as_client };
        inspector.client_datagram(payload);
    }

    /// Whether later datagrams cannot change the report: one end named a target, or neither can any
    /// more. UDP has no end of flow, so this is when a QUIC flow is reported.
    pub fn is_complete(&self) -> bool {
        let named = |inspector: &QuicInspector| {
            inspector.is_complete() && inspector.inspection().remote_url().is_some()
        };
        let (a, b) = (&self.a_as_client, &self.b_as_client);
        named(a) || named(b) || (a.is_complete() && b.is_complete())
    }

    /// The first sender is the client, unless only the other end's datagrams read as a client's.
    pub fn report(mut self) -> FlowReport {
        self.a_as_client.finish();
        self.b_as_client.finish();
        let b_is_client = score(self.b_as_client.inspection()) > score(self.a_as_client.inspection());
        let (client, server, inspector) = if b_is_client {
            (self.b, self.a, &self.b_as_client)
        } else {
            (self.a, self.b, &self.a_as_client)
        };
        FlowReport {
            transport: Transport::Udp,
            first_nanos: self.first_nanos,
            client,
            server,
            // UDP has no handshake that can fail; as with Defender's UDP events, a flow that was sent
            // is a connection made.
            failed: false,
            inspection: inspector.inspection().clone(),
            request_from_responder: false,
        }
    }
}

/// How much an end's bytes look like a client's request: a name beats a known protocol, which beats a
/// broken one, which beats nothing.
fn score(inspection: &Inspection) -> u8 {
    match (inspection.remote_url().is_some(), inspection.protocol.is_some(), inspection.malformed.is_none()) {
        (true, _, _) => 3,
        (false, true, true) => 2,
        (false, true, false) => 1,
        (false, false, _) => 0,
    }
}

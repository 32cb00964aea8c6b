//! Offline replay: the same extraction the live daemon runs, over a pcap or pcapng capture, printed as
//! the same events (without process fields, which a capture does not have).
//!
//! Each TCP connection becomes one `DeviceNetworkEvents` event when it closes (both FINs, or a RST) or
//! when the capture ends. The client is the SYN sender; without a SYN, the end whose first bytes read
//! as a request.
//!
//! A UDP flow (a pair of addresses and ports) whose first datagram is a QUIC long-header packet of a
//! version we read becomes one event (Protocol `Udp`) as soon as its ClientHello is read, or when the
//! capture ends; its later datagrams, and a new connection that reuses the same ports, are not looked
//! at. Other UDP flows (DNS and the like) are only counted.

mod capture;
mod decode;
mod flow;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::event::{ActionType, DeviceEvent, rfc3339_utc};
use crate::extract::quic::looks_like_quic;
use decode::{Decoded, Decoder, TcpSegment, UdpDatagram};
use flow::{FlowReport, QuicFlow, TcpFlow, Transport};

use crate::stream::Stream;

/// Why a capture could not be replayed at all. Damage after the file header only ends the replay
/// early (see [`ReplayStats::truncated_capture`]).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read capture {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not a pcap or pcapng capture", path.display())]
    NotACapture { path: PathBuf },
    #[error("cannot read the header of capture {}: {source}", path.display())]
    Header { path: PathBuf, source: pcap_file::PcapError },
}

/// What a replay went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub packets: u64,
    /// Frames whose link, IP, TCP or UDP headers did not decode (or of a link type we do not read).
    pub undecodable_packets: u64,
    /// UDP datagrams of flows whose first datagram is not QUIC we read (DNS and the like, gQUIC,
    /// unknown QUIC versions): not inspected.
    pub udp_datagrams_not_inspected: u64,
    /// IP fragments held for reassembly (each reassembled datagram is then counted as a packet's content).
    pub ip_fragments: u64,
    /// Flows reported, one event each: TCP connections and QUIC flows.
    pub flows: u64,
    /// QUIC flows among `flows`.
    pub quic_flows: u64,
    /// Flows whose event names a target (a non-empty RemoteUrl).
    pub flows_named: u64,
    /// Flows whose bytes looked like a known protocol but were broken.
    pub flows_malformed: u64,
    /// The capture ended inside a record or had a corrupt block; what came before was replayed.
    pub truncated_capture: bool,
}

/// Replays the capture at `path`, calling `on_event` once per flow.
pub fn replay(path: &Path, on_event: &mut dyn FnMut(DeviceEvent)) -> Result<ReplayStats, ReplayError> {
    replay_with_progress(path, None, on_event)
}

/// As [`replay`], adding the bytes of the file read so far to `progress` as it goes.
pub fn replay_with_progress(
    path: &Path,
    progress: Option<&std::sync::atomic::AtomicU64>,
    on_event: &mut dyn FnMut(DeviceEvent),
) -> Result<ReplayStats, ReplayError> {
    let device_name =
        path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut replay = Replay {
        device_name,
        on_event,
        stats: ReplayStats::default(),
        flows: Flows::default(),
        udp: UdpFlows::default(),
        report_id: 0,
    };
    let mut decoder = Decoder::new();
    let end = capture::read_frames(path, progress, &mut |frame| {
        replay.stats.packets += 1;
        match decoder.decode(frame.link, frame.data, frame.unix_nanos) {
            Decoded::Tcp(segment) => replay.on_segment(frame.unix_nanos, &segment),
            Decoded::Udp(datagram) => replay.on_datagram(frame.unix_nanos, &datagram),
            Decoded::Fragment => replay.stats.ip_fragments += 1,
            Decoded::Other => {}
            Decoded::Undecodable => replay.stats.undecodable_packets += 1,
        }
    })?;
    replay.stats.truncated_capture = end.truncated;
    let tcp = replay.flows.open.drain().map(|(_, (order, flow))| (order, flow.report()));
    let udp = replay.udp.open.drain().map(|(_, (order, flow))| (order, flow.report()));
    let mut remaining: Vec<(u64, FlowReport)> = tcp.chain(udp).collect();
    remaining.sort_by_key(|(order, _)| *order);
    for (_, report) in remaining {
        replay.emit(report);
    }
    Ok(replay.stats)
}

/// The client bytes of each TCP connection in the capture that starts with a SYN: the SYN sender's
/// stream in sequence order, up to the inspection budget, in the order the connections were first
/// seen. For tests that read the same bytes with other parsers (the kernel's scanners).
pub fn client_streams(path: &Path) -> Result<Vec<Vec<u8>>, ReplayError> {
    let mut open: HashMap<FlowKey, (usize, SocketAddr, Stream)> = HashMap::new();
    let mut streams: Vec<Vec<u8>> = Vec::new();
    let mut decoder = Decoder::new();
    capture::read_frames(path, None, &mut |frame| {
        let Decoded::Tcp(segment) = decoder.decode(frame.link, frame.data, frame.unix_nanos) else {
            return;
        };
        let key = flow_key(segment.src, segment.dst);
        if segment.syn && !segment.ack {
            let mut stream = Stream::default();
            stream.on_syn(segment.seq);
            streams.push(Vec::new());
            open.insert(key, (streams.len() - 1, segment.src, stream));
            return;
        }
        if let Some((index, client, stream)) = open.get_mut(&key)
            && *client == segment.src
            && !segment.payload.is_empty()
        {
            let ready = stream.on_data(segment.seq, &segment.payload);
            streams[*index].extend_from_slice(&ready);
        }
    })?;
    Ok(streams)
}

/// The two ends of a connection, in a fixed order, as a map key.
type FlowKey = (SocketAddr, SocketAddr);

fn flow_key(a: SocketAddr, b: SocketAddr) -> FlowKey {
    if a <= b { (a, b) } else { (b, a) }
}

#[derive(Default)]
struct Flows {
    /// Open flows, with the order in which they were first seen.
    open: HashMap<FlowKey, (u64, TcpFlow)>,
    /// Flows already reported: their late packets (the last ACK, retransmitted FINs) must not start
    /// new flows. A SYN does.
    closed: HashSet<FlowKey>,
    /// Flows first seen so far, TCP and UDP: the order in which those still open at the end are reported.
    seen: u64,
}

#[derive(Default)]
struct UdpFlows {
    /// QUIC flows whose ClientHello is still awaited, with the order in which they were first seen.
    open: HashMap<FlowKey, (u64, QuicFlow)>,
    /// QUIC flows already reported.
    reported: HashSet<FlowKey>,
    /// Flows whose first datagram was not QUIC we read.
    not_quic: HashSet<FlowKey>,
}

struct Replay<'a> {
    device_name: String,
    on_event: &'a mut dyn FnMut(DeviceEvent),
    stats: ReplayStats,
    flows: Flows,
    udp: UdpFlows,
    report_id: u64,
}

impl Replay<'_> {
    fn on_segment(&mut self, unix_nanos: u128, segment: &TcpSegment<'_>) {
        let key = flow_key(segment.src, segment.dst);
        let starts_connection = segment.syn && !segment.ack;
        if self.flows.closed.contains(&key) {
            if !starts_connection {
                return;
            }
            self.flows.closed.remove(&key);
        }
        if let Some((_, flow)) = self.flows.open.get(&key)
            && flow.is_new_connection(segment)
            && let Some((_, old)) = self.flows.open.remove(&key)
        {
            self.emit(old.report());
        }
        // A packet without SYN or payload (a stray ACK) does not open a flow: there is nothing to report.
        if !self.flows.open.contains_key(&key) && !segment.syn && segment.payload.is_empty() && !segment.rst {
            return;
        }
        let seen = &mut self.flows.seen;
        let (_, flow) = self.flows.open.entry(key).or_insert_with(|| {
            *seen += 1;
            (*seen, TcpFlow::new(unix_nanos, segment.src, segment.dst))
        });
        flow.on_segment(segment);
        if flow.is_closed()
            && let Some((_, flow)) = self.flows.open.remove(&key)
        {
            self.flows.closed.insert(key);
            self.emit(flow.report());
        }
    }

    fn on_datagram(&mut self, unix_nanos: u128, datagram: &UdpDatagram<'_>) {
        let key = flow_key(datagram.src, datagram.dst);
        if self.udp.reported.contains(&key) {
            return;
        }
        if self.udp.not_quic.contains(&key) {
            self.stats.udp_datagrams_not_inspected += 1;
            return;
        }
        if !self.udp.open.contains_key(&key) && !looks_like_quic(&datagram.payload) {
            self.udp.not_quic.insert(key);
            self.stats.udp_datagrams_not_inspected += 1;
            return;
        }
        let seen = &mut self.flows.seen;
        let (_, flow) = self.udp.open.entry(key).or_insert_with(|| {
            *seen += 1;
            (*seen, QuicFlow::new(unix_nanos, datagram.src, datagram.dst))
        });
        flow.on_datagram(datagram.src, &datagram.payload);
        if flow.is_complete()
            && let Some((_, flow)) = self.udp.open.remove(&key)
        {
            self.udp.reported.insert(key);
            self.emit(flow.report());
        }
    }

    fn emit(&mut self, report: FlowReport) {
        self.stats.flows += 1;
        if report.transport == Transport::Udp {
            self.stats.quic_flows += 1;
        }
        self.report_id += 1;
        let event = flow_event(&report, &self.device_name, self.report_id);
        if !event.remote_url.is_empty() {
            self.stats.flows_named += 1;
        }
        if report.inspection.malformed.is_some() {
            self.stats.flows_malformed += 1;
        }
        (self.on_event)(event);
    }
}

/// The event for one flow: the same columns the daemon fills, from the wire alone.
fn flow_event(report: &FlowReport, device_name: &str, report_id: u64) -> DeviceEvent {
    let FlowReport { transport, first_nanos, client, server, failed, inspection, request_from_responder } =
        report;
    let mut fields = inspection.additional_fields();
    if *request_from_responder {
        fields.insert("RequestFromResponder".to_string(), Value::Bool(true));
    }
    DeviceEvent::new(
        rfc3339_utc(*first_nanos),
        device_name.to_string(),
        if *failed { ActionType::ConnectionFailed } else { ActionType::ConnectionSuccess },
        (server.ip().to_string(), server.port()),
        (client.ip().to_string(), client.port()),
        transport.as_str(),
        inspection.remote_url().unwrap_or_default().to_string(),
        None,
        report_id,
        fields,
    )
}

#[cfg(test)]
mod tests;

//! A synthetic capture for the extraction benchmark: many TCP flows of the kinds the monitor names,
//! each with its ground truth. Flows are interleaved a few at a time, the way a gateway sees them.
//!
//! Kinds: CONNECT tunnels carrying a ClientHello (sometimes to another name: domain fronting), direct
//! TLS, plain HTTP with a Host header, and SOCKS5 (domain request) carrying a ClientHello. A share of
//! the ClientHellos are ~2 KB post-quantum ones (an X25519MLKEM768 key share), split over two segments.

use std::{
    fs::File,
    io::BufWriter,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapPacket, PcapWriter};
use serde::{Deserialize, Serialize};

/// Payload bytes per segment (1500-byte MTU, TCP timestamps).
const MSS: usize = 1448;
/// Flows open at the same time, their packets interleaved.
const CONCURRENT: usize = 16;
const PROXY: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const HTTP_PROXY_PORT: u16 = 3128;
const SOCKS_PORT: u16 = 1080;
const CLIENT_PORT_BASE: u16 = 20_000;
const CLIENT_PORTS: u32 = 40_000;

/// What a flow names, by layer (what a correct extractor reports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    pub connect_host: Option<String>,
    pub sni: Option<String>,
    pub http_host: Option<String>,
    pub socks_host: Option<String>,
}

/// One generated flow: its client end (the key both extractors report) and what it names.
#[derive(Debug, Clone)]
pub struct GeneratedFlow {
    pub client: SocketAddrV4,
    pub kind: &'static str,
    pub truth: Truth,
}

/// What was written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CaptureSummary {
    pub flows: usize,
    pub packets: u64,
    pub bytes: u64,
    pub pq_client_hellos: usize,
    pub split_client_hellos: usize,
}

/// xorshift64*: deterministic and dependency-free; the capture is the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A lower-case DNS label of 3..=12 letters and digits.
    fn label(&mut self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let len = 3 + self.below(10) as usize;
        let mut s: String =
            (0..len).map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize] as char).collect();
        // Labels start with a letter.
        s.replace_range(0..1, &((b'a' + self.below(26) as u8) as char).to_string());
        s
    }
}

fn u16be(v: usize) -> [u8; 2] {
    (v as u16).to_be_bytes()
}

fn extension(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&u16be(body.len()));
    out.extend_from_slice(body);
}

/// A TLS 1.3 ClientHello record naming `sni`: ~300 bytes, or ~2 KB with a post-quantum key share.
fn client_hello(sni: &str, post_quantum: bool, rng: &mut Rng) -> Vec<u8> {
    let mut ext = Vec::new();
    let mut name = vec![0u8];
    name.extend_from_slice(&u16be(sni.len()));
    name.extend_from_slice(sni.as_bytes());
    let mut list = u16be(name.len()).to_vec();
    list.extend_from_slice(&name);
    extension(&mut ext, 0x0000, &list);
    extension(&mut ext, 0x0017, &[]);
    extension(&mut ext, 0xff01, &[0]);
    extension(&mut ext, 0x000a, &[0, 8, 0x11, 0xec, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]);
    extension(&mut ext, 0x000b, &[1, 0]);
    extension(&mut ext, 0x0010, b"\x00\x0c\x02h2\x08http/1.1");
    extension(&mut ext, 0x000d, &[0, 8, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03]);
    let mut shares = Vec::new();
    if post_quantum {
        shares.extend_from_slice(&[0x11, 0xec]);
        shares.extend_from_slice(&u16be(1216));
        shares.extend(rng.bytes(1216));
    }
    shares.extend_from_slice(&[0x00, 0x1d, 0x00, 0x20]);
    shares.extend(rng.bytes(32));
    let mut key_share = u16be(shares.len()).to_vec();
    key_share.extend_from_slice(&shares);
    extension(&mut ext, 0x0033, &key_share);
    extension(&mut ext, 0x002d, &[1, 1]);
    extension(&mut ext, 0x002b, &[4, 0x03, 0x04, 0x03, 0x03]);
    if post_quantum {
        // Chrome pads and adds a GREASE ECH: about 2 KB in all.
        extension(&mut ext, 0xfe0d, &rng.bytes(250));
        extension(&mut ext, 0x0015, &[0u8; 150]);
    }
    let mut body = vec![0x03, 0x03];
    body.extend(rng.bytes(32));
    body.push(32);
    body.extend(rng.bytes(32));
    let suites: [u16; 8] = [0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9];
    body.extend_from_slice(&u16be(suites.len() * 2));
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&u16be(ext.len()));
    body.extend_from_slice(&ext);
    let mut handshake = vec![1u8];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16be(handshake.len()));
    record.extend_from_slice(&handshake);
    record
}

/// Who sends a message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// One flow's conversation, before it is cut into packets.
struct Script {
    client: SocketAddrV4,
    server: SocketAddrV4,
    messages: Vec<(Side, Vec<u8>)>,
}

/// Builds the packets of a flow: handshake, the messages (client messages cut at MSS), FIN both ways.
struct FlowPackets {
    script: Script,
    client_seq: u32,
    server_seq: u32,
    packets: Vec<Vec<u8>>,
}

impl FlowPackets {
    fn new(script: Script, rng: &mut Rng) -> Self {
        let client_seq = rng.next() as u32;
        let server_seq = rng.next() as u32;
        FlowPackets { script, client_seq, server_seq, packets: Vec::new() }
    }

    fn packet(&mut self, side: Side, flags: &str, payload: &[u8]) {
        let (src, dst, seq, ack) = match side {
            Side::Client => (self.script.client, self.script.server, self.client_seq, self.server_seq),
            Side::Server => (self.script.server, self.script.client, self.server_seq, self.client_seq),
        };
        let mac = |ip: Ipv4Addr| {
            let o = ip.octets();
            [0x02, 0x00, o[0], o[1], o[2], o[3]]
        };
        let mut builder = PacketBuilder::ethernet2(mac(*src.ip()), mac(*dst.ip()))
            .ipv4(src.ip().octets(), dst.ip().octets(), 64)
            .tcp(src.port(), dst.port(), seq, 64_240);
        if flags.contains('S') {
            builder = builder.syn();
        }
        if flags.contains('A') {
            builder = builder.ack(ack);
        }
        if flags.contains('P') {
            builder = builder.psh();
        }
        if flags.contains('F') {
            builder = builder.fin();
        }
        let mut frame = Vec::with_capacity(builder.size(payload.len()));
        // Writing into a Vec cannot fail, and the payload fits an IPv4 packet.
        if builder.write(&mut frame, payload).is_ok() {
            self.packets.push(frame);
        }
        let advance = payload.len() as u32 + u32::from(flags.contains('S') || flags.contains('F'));
        match side {
            Side::Client => self.client_seq = self.client_seq.wrapping_add(advance),
            Side::Server => self.server_seq = self.server_seq.wrapping_add(advance),
        }
    }

    fn build(mut self) -> Vec<Vec<u8>> {
        self.packet(Side::Client, "S", &[]);
        // The SYN-ACK acknowledges the client's SYN, which the packet() call above already counted.
        self.packet(Side::Server, "SA", &[]);
        self.packet(Side::Client, "A", &[]);
        let messages = std::mem::take(&mut self.script.messages);
        for (side, bytes) in messages {
            let chunk = if side == Side::Client { MSS } else { usize::MAX };
            for piece in bytes.chunks(chunk) {
                self.packet(side, "AP", piece);
            }
        }
        self.packet(Side::Client, "FA", &[]);
        self.packet(Side::Server, "FA", &[]);
        self.packet(Side::Client, "A", &[]);
        self.packets
    }
}

fn domain(rng: &mut Rng) -> String {
    const TLDS: &[&str] = &["com", "net", "org", "example", "io", "de"];
    let tld = TLDS[rng.below(TLDS.len() as u64) as usize];
    match rng.below(3) {
        0 => format!("{}.{tld}", rng.label()),
        1 => format!("{}.{}.{tld}", rng.label(), rng.label()),
        _ => format!("{}.{}.{}.{tld}", rng.label(), rng.label(), rng.label()),
    }
}

/// The script of flow `index` and its truth.
fn script(index: usize, rng: &mut Rng, summary: &mut CaptureSummary) -> (Script, GeneratedFlow) {
    let client = SocketAddrV4::new(
        Ipv4Addr::from(0x0a01_0000 + (index as u32 / CLIENT_PORTS)),
        CLIENT_PORT_BASE + (index as u32 % CLIENT_PORTS) as u16,
    );
    let origin = Ipv4Addr::from(0x0a02_0000 + rng.below(60_000) as u32);
    let name = domain(rng);
    let pq = rng.below(100) < 30;
    let hello = |sni: &str, rng: &mut Rng, summary: &mut CaptureSummary| {
        let bytes = client_hello(sni, pq, rng);
        if pq {
            summary.pq_client_hellos += 1;
        }
        if bytes.len() > MSS {
            summary.split_client_hellos += 1;
        }
        bytes
    };
    let mut truth = Truth::default();
    let (kind, server, messages) = match rng.below(100) {
        // CONNECT, then TLS inside; every 20th names another host in the SNI (fronting).
        0..=34 => {
            let sni = if index.is_multiple_of(20) { domain(rng) } else { name.clone() };
            let connect = format!(
                "CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\nProxy-Connection: keep-alive\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n\r\n"
            );
            truth.connect_host = Some(name.clone());
            truth.sni = Some(sni.clone());
            let hello = hello(&sni, rng, summary);
            (
                "connect+tls",
                SocketAddrV4::new(PROXY, HTTP_PROXY_PORT),
                vec![
                    (Side::Client, connect.into_bytes()),
                    (Side::Server, b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec()),
                    (Side::Client, hello),
                ],
            )
        }
        35..=64 => {
            truth.sni = Some(name.clone());
            ("tls", SocketAddrV4::new(origin, 443), vec![(Side::Client, hello(&name, rng, summary))])
        }
        65..=84 => {
            let get = format!(
                "GET /p/{index} HTTP/1.1\r\nHost: {name}\r\nUser-Agent: Wget/1.21\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            );
            truth.http_host = Some(name.clone());
            (
                "http",
                SocketAddrV4::new(origin, 80),
                vec![
                    (Side::Client, get.into_bytes()),
                    (
                        Side::Server,
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec(),
                    ),
                ],
            )
        }
        _ => {
            let mut request = vec![5, 1, 0, 3, name.len() as u8];
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(&443u16.to_be_bytes());
            truth.socks_host = Some(name.clone());
            truth.sni = Some(name.clone());
            let o = origin.octets();
            (
                "socks5+tls",
                SocketAddrV4::new(PROXY, SOCKS_PORT),
                vec![
                    (Side::Client, vec![5, 1, 0]),
                    (Side::Server, vec![5, 0]),
                    (Side::Client, request),
                    (Side::Server, vec![5, 0, 0, 1, o[0], o[1], o[2], o[3], 1, 187]),
                    (Side::Client, hello(&name, rng, summary)),
                ],
            )
        }
    };
    (Script { client, server, messages }, GeneratedFlow { client, kind, truth })
}

/// Writes `flows` flows to `path` (pcap, Ethernet) and returns each flow's truth.
pub fn write(path: &Path, flows: usize) -> anyhow::Result<(CaptureSummary, Vec<GeneratedFlow>)> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut writer = PcapWriter::new(BufWriter::with_capacity(1 << 20, file)).context("write pcap header")?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut summary = CaptureSummary { flows, ..CaptureSummary::default() };
    let mut truths = Vec::with_capacity(flows);
    let mut clock = Duration::from_secs(1_780_000_000);
    for batch_start in (0..flows).step_by(CONCURRENT) {
        let batch_end = (batch_start + CONCURRENT).min(flows);
        let mut batch: Vec<std::vec::IntoIter<Vec<u8>>> = Vec::new();
        for index in batch_start..batch_end {
            let (script, flow) = script(index, &mut rng, &mut summary);
            batch.push(FlowPackets::new(script, &mut rng).build().into_iter());
            truths.push(flow);
        }
        // Round-robin over the open flows until all are done.
        loop {
            let mut wrote = false;
            for packets in &mut batch {
                if let Some(frame) = packets.next() {
                    clock += Duration::from_micros(7);
                    writer
                        .write_packet(&PcapPacket::new(clock, frame.len() as u32, &frame))
                        .with_context(|| format!("write {}", path.display()))?;
                    summary.packets += 1;
                    summary.bytes += frame.len() as u64;
                    wrote = true;
                }
            }
            if !wrote {
                break;
            }
        }
    }
    let mut inner = writer.into_writer();
    std::io::Write::flush(&mut inner).with_context(|| format!("write {}", path.display()))?;
    Ok((summary, truths))
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_core::extract::{Step, tls::parse_client_hello};

    #[test]
    fn client_hellos_parse_and_have_the_planned_sizes() {
        let mut rng = Rng(1);
        let small = client_hello("a.example", false, &mut rng);
        let pq = client_hello("pq.example.org", true, &mut rng);
        assert!(small.len() < 400, "{}", small.len());
        assert!((1800..2200).contains(&pq.len()), "{}", pq.len());
        for (bytes, name) in [(&small, "a.example"), (&pq, "pq.example.org")] {
            match parse_client_hello(bytes) {
                Step::Done(hello, n) => {
                    assert_eq!(hello.sni.as_deref(), Some(name));
                    assert_eq!(hello.malformed, None);
                    assert_eq!(n, bytes.len());
                }
                other => panic!("ClientHello does not parse: {other:?}"),
            }
        }
    }
}

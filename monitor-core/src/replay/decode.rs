//! From a captured frame to a TCP segment or UDP datagram: link layer, IPv4/IPv6 (with fragment
//! reassembly), TCP and UDP, by `etherparse`; GTP-U tunnels (mobile core captures) are opened by hand, one level deep.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use etherparse::defrag::IpDefragPool;
use etherparse::{
    EtherType, IpNumber, LaxNetSlice, LaxSlicedPacket, NetSlice, SlicedPacket, TcpSlice, TransportSlice,
    UdpSlice,
};
use pcap_file::DataLink;

/// GTP-U user-plane port (3GPP TS 29.281).
const GTPU_PORT: u16 = 2152;
/// Fragments older than this (capture time) are dropped, which bounds the reassembly pool.
const FRAGMENT_TIMEOUT_NANOS: u128 = 60 * 1_000_000_000;
/// How often (in packets) stale fragments are swept.
const FRAGMENT_SWEEP_EVERY: u64 = 4096;

/// A decoded TCP segment.
pub(crate) struct TcpSegment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: Cow<'a, [u8]>,
}

/// A decoded UDP datagram.
pub(crate) struct UdpDatagram<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Cow<'a, [u8]>,
}

/// What one frame turned out to be.
pub(crate) enum Decoded<'a> {
    Tcp(TcpSegment<'a>),
    Udp(UdpDatagram<'a>),
    /// A fragment held until the rest of its datagram arrives.
    Fragment,
    /// Something else that decodes fine (ARP, ICMP, another IP protocol).
    Other,
    /// The bytes do not decode as the link type says.
    Undecodable,
}

/// Decodes frames, keeping the IP fragments that wait for the rest of their datagram.
pub(crate) struct Decoder {
    fragments: IpDefragPool<u128, ()>,
    frames: u64,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder { fragments: IpDefragPool::new(), frames: 0 }
    }

    pub fn decode<'a>(&mut self, link: DataLink, data: &'a [u8], unix_nanos: u128) -> Decoded<'a> {
        self.frames += 1;
        if self.frames.is_multiple_of(FRAGMENT_SWEEP_EVERY) {
            self.fragments.retain(|&seen| unix_nanos.saturating_sub(seen) < FRAGMENT_TIMEOUT_NANOS);
        }
        let sliced = match link {
            DataLink::ETHERNET => SlicedPacket::from_ethernet(data).ok(),
            // etherparse refuses some device types (the loopback's, for one); the protocol field is an
            // EtherType for all of them.
            DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data).ok().or_else(|| {
                linux_sll_payload(data)
                    .and_then(|(ether_type, payload)| SlicedPacket::from_ether_type(ether_type, payload).ok())
            }),
            DataLink::LINUX_SLL2 => linux_sll2_payload(data)
                .and_then(|(ether_type, payload)| SlicedPacket::from_ether_type(ether_type, payload).ok()),
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data).ok(),
            // BSD loopback: a 4-byte address family in host order, then the IP packet.
            DataLink::NULL | DataLink::LOOP => data.get(4..).and_then(|ip| SlicedPacket::from_ip(ip).ok()),
            _ => return Decoded::Undecodable,
        };
        match sliced {
            Some(sliced) => self.decode_sliced(&sliced, unix_nanos, true),
            None => decode_lax(link, data),
        }
    }

    fn decode_sliced<'a>(
        &mut self,
        sliced: &SlicedPacket<'a>,
        unix_nanos: u128,
        open_tunnels: bool,
    ) -> Decoded<'a> {
        let Some((src_ip, dst_ip)) = sliced.net.as_ref().and_then(addresses) else {
            return Decoded::Other;
        };
        match &sliced.transport {
            Some(TransportSlice::Tcp(tcp)) => {
                Decoded::Tcp(segment(src_ip, dst_ip, tcp, Cow::Borrowed(tcp.payload())))
            }
            Some(TransportSlice::Udp(udp)) => {
                let gtp = udp.source_port() == GTPU_PORT || udp.destination_port() == GTPU_PORT;
                if open_tunnels
                    && gtp
                    && let Some(inner) = gtpu_payload(udp.payload())
                    && let Ok(inner) = SlicedPacket::from_ip(inner)
                {
                    return self.decode_sliced(&inner, unix_nanos, false);
                }
                Decoded::Udp(datagram(src_ip, dst_ip, udp, Cow::Borrowed(udp.payload())))
            }
            Some(_) => Decoded::Other,
            None if sliced.is_ip_payload_fragmented() => self.defragment(sliced, src_ip, dst_ip, unix_nanos),
            None => Decoded::Other,
        }
    }

    fn defragment<'a>(
        &mut self,
        sliced: &SlicedPacket<'a>,
        src: IpAddr,
        dst: IpAddr,
        unix_nanos: u128,
    ) -> Decoded<'a> {
        match self.fragments.process_sliced_packet(sliced, unix_nanos, ()) {
            Ok(None) => Decoded::Fragment,
            Err(_) => Decoded::Undecodable,
            Ok(Some(datagram)) => {
                let decoded = match datagram.ip_number {
                    IpNumber::TCP => match TcpSlice::from_slice(&datagram.payload) {
                        Ok(tcp) => Decoded::Tcp(segment(src, dst, &tcp, Cow::Owned(tcp.payload().to_vec()))),
                        Err(_) => Decoded::Undecodable,
                    },
                    IpNumber::UDP => match UdpSlice::from_slice(&datagram.payload) {
                        Ok(udp) => {
                            Decoded::Udp(self::datagram(src, dst, &udp, Cow::Owned(udp.payload().to_vec())))
                        }
                        Err(_) => Decoded::Undecodable,
                    },
                    _ => Decoded::Other,
                };
                self.fragments.return_buf(datagram);
                decoded
            }
        }
    }
}

/// The lenient parse, for frames the strict one refused: an IP total length of 0 (captured before
/// segmentation offload) or a frame cut by the snap length. The payload is what was captured.
fn decode_lax(link: DataLink, data: &[u8]) -> Decoded<'_> {
    let lax = match link {
        DataLink::ETHERNET => LaxSlicedPacket::from_ethernet(data).ok(),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => LaxSlicedPacket::from_ip(data).ok(),
        DataLink::NULL | DataLink::LOOP => data.get(4..).and_then(|ip| LaxSlicedPacket::from_ip(ip).ok()),
        _ => None,
    };
    let Some(lax) = lax else {
        return Decoded::Undecodable;
    };
    let addresses = match &lax.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            Some((ip.header().source_addr().into(), ip.header().destination_addr().into()))
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            Some((ip.header().source_addr().into(), ip.header().destination_addr().into()))
        }
        _ => None,
    };
    match (addresses, &lax.transport) {
        (Some((src, dst)), Some(TransportSlice::Tcp(tcp))) => {
            Decoded::Tcp(segment(src, dst, tcp, Cow::Borrowed(tcp.payload())))
        }
        (Some((src, dst)), Some(TransportSlice::Udp(udp))) => {
            Decoded::Udp(datagram(src, dst, udp, Cow::Borrowed(udp.payload())))
        }
        _ => Decoded::Undecodable,
    }
}

fn addresses(net: &NetSlice<'_>) -> Option<(IpAddr, IpAddr)> {
    match net {
        NetSlice::Ipv4(ip) => Some((ip.header().source_addr().into(), ip.header().destination_addr().into())),
        NetSlice::Ipv6(ip) => Some((ip.header().source_addr().into(), ip.header().destination_addr().into())),
        NetSlice::Arp(_) => None,
    }
}

fn segment<'a>(src: IpAddr, dst: IpAddr, tcp: &TcpSlice<'_>, payload: Cow<'a, [u8]>) -> TcpSegment<'a> {
    TcpSegment {
        src: SocketAddr::new(src, tcp.source_port()),
        dst: SocketAddr::new(dst, tcp.destination_port()),
        seq: tcp.sequence_number(),
        syn: tcp.syn(),
        ack: tcp.ack(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        payload,
    }
}

fn datagram<'a>(src: IpAddr, dst: IpAddr, udp: &UdpSlice<'_>, payload: Cow<'a, [u8]>) -> UdpDatagram<'a> {
    UdpDatagram {
        src: SocketAddr::new(src, udp.source_port()),
        dst: SocketAddr::new(dst, udp.destination_port()),
        payload,
    }
}

/// Linux "cooked" v1 header: packet type (2), ARPHRD (2), address length (2), address (8), protocol
/// type (2) = 16 bytes.
fn linux_sll_payload(data: &[u8]) -> Option<(EtherType, &[u8])> {
    let protocol = u16::from_be_bytes([*data.get(14)?, *data.get(15)?]);
    Some((EtherType(protocol), data.get(16..)?))
}

/// Linux "cooked" v2 header: protocol type (2), reserved (2), interface index (4), ARPHRD (2),
/// packet type (1), address length (1), address (8) = 20 bytes.
fn linux_sll2_payload(data: &[u8]) -> Option<(EtherType, &[u8])> {
    let protocol = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
    Some((EtherType(protocol), data.get(20..)?))
}

/// The IP packet inside a GTP-U G-PDU (TS 29.281 5.1): version 1, protocol type GTP, message 0xff;
/// the optional sequence/N-PDU/extension fields and any extension headers are skipped.
fn gtpu_payload(udp_payload: &[u8]) -> Option<&[u8]> {
    const G_PDU: u8 = 0xff;
    let flags = *udp_payload.first()?;
    if flags >> 5 != 1 || flags & 0x10 == 0 || *udp_payload.get(1)? != G_PDU {
        return None;
    }
    let mut at = 8;
    if flags & 0x07 != 0 {
        let mut next_extension = *udp_payload.get(11)?;
        at = 12;
        while flags & 0x04 != 0 && next_extension != 0 {
            // Extension length is in units of 4 bytes and includes the length and next-type bytes.
            let len = usize::from(*udp_payload.get(at)?) * 4;
            if len == 0 {
                return None;
            }
            next_extension = *udp_payload.get(at + len - 1)?;
            at += len;
        }
    }
    let inner = udp_payload.get(at..)?;
    matches!(inner.first()? >> 4, 4 | 6).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtpu_headers_are_skipped() {
        let ip = [0x45, 0, 0, 20];
        let plain = [&[0x30, 0xff, 0, 4, 0, 0, 0, 1][..], &ip].concat();
        assert_eq!(gtpu_payload(&plain), Some(&ip[..]));
        // Sequence flag set: 4 more bytes, next-extension 0.
        let with_seq = [&[0x32, 0xff, 0, 8, 0, 0, 0, 1, 0, 7, 0, 0][..], &ip].concat();
        assert_eq!(gtpu_payload(&with_seq), Some(&ip[..]));
        // One PDU-session extension header of 4 bytes, then none.
        let with_ext = [&[0x34, 0xff, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0x85, 1, 0x10, 0x05, 0][..], &ip].concat();
        assert_eq!(gtpu_payload(&with_ext), Some(&ip[..]));
        assert_eq!(gtpu_payload(&[0x30, 0x01, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(gtpu_payload(&[0x34, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x85, 0]), None);
    }
}

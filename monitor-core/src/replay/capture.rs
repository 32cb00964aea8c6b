//! Reading frames out of pcap and pcapng files with `pcap-file`, with their link type and UNIX time.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};

use super::ReplayError;

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
/// Microsecond and nanosecond pcap magics, both byte orders.
const PCAP_MAGICS: [[u8; 4]; 4] =
    [[0xd4, 0xc3, 0xb2, 0xa1], [0xa1, 0xb2, 0xc3, 0xd4], [0x4d, 0x3c, 0xb2, 0xa1], [0xa1, 0xb2, 0x3c, 0x4d]];
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// One captured frame.
pub(crate) struct Frame<'a> {
    pub unix_nanos: u128,
    pub link: DataLink,
    pub data: &'a [u8],
}

/// How reading ended.
pub(crate) struct CaptureEnd {
    /// The file ended inside a record, or a record was corrupt; frames before it were delivered.
    pub truncated: bool,
}

/// A pcapng interface: its link type and how to turn its timestamps into nanoseconds.
struct Interface {
    link: DataLink,
    /// Timestamp units per second (if_tsresol; 10^6 when absent).
    units_per_sec: u128,
    /// if_tsoffset, in seconds.
    offset_secs: u128,
}

impl Interface {
    fn unix_nanos(&self, raw: u128) -> u128 {
        // The multiplication cannot overflow: raw < 2^64 and NANOS_PER_SEC < 2^30.
        (raw * NANOS_PER_SEC) / self.units_per_sec + self.offset_secs * NANOS_PER_SEC
    }
}

/// The capture file, counting the bytes read into `progress` (for a progress bar).
pub(crate) struct Counting<'a> {
    inner: File,
    progress: Option<&'a AtomicU64>,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(progress) = self.progress {
            progress.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// Calls `on_frame` for every packet in the capture at `path`, pcap or pcapng (told by the file's
/// magic, not its name: corpora hold pcapng files named `.pcap`).
pub(crate) fn read_frames(
    path: &Path,
    progress: Option<&AtomicU64>,
    on_frame: &mut dyn FnMut(Frame<'_>),
) -> Result<CaptureEnd, ReplayError> {
    let io_error = |source| ReplayError::Io { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(io_error)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(|_| ReplayError::NotACapture { path: path.to_path_buf() })?;
    file.seek(SeekFrom::Start(0)).map_err(io_error)?;
    let reader = BufReader::new(Counting { inner: file, progress });
    if magic == PCAPNG_MAGIC {
        read_pcapng(path, reader, on_frame)
    } else if PCAP_MAGICS.contains(&magic) {
        read_pcap(path, reader, on_frame)
    } else {
        Err(ReplayError::NotACapture { path: path.to_path_buf() })
    }
}

fn read_pcap(
    path: &Path,
    reader: BufReader<Counting<'_>>,
    on_frame: &mut dyn FnMut(Frame<'_>),
) -> Result<CaptureEnd, ReplayError> {
    let mut pcap =
        PcapReader::new(reader).map_err(|source| ReplayError::Header { path: path.to_path_buf(), source })?;
    let header = pcap.header();
    let frac_to_nanos = match header.ts_resolution {
        pcap_file::TsResolution::MicroSecond => 1_000,
        pcap_file::TsResolution::NanoSecond => 1,
    };
    // Raw packets: the checked conversion in pcap-file rejects records longer than the snap length,
    // which real captures (offloaded segments) do contain.
    while let Some(packet) = pcap.next_raw_packet() {
        let Ok(packet) = packet else {
            return Ok(CaptureEnd { truncated: true });
        };
        let unix_nanos =
            u128::from(packet.ts_sec) * NANOS_PER_SEC + u128::from(packet.ts_frac) * frac_to_nanos;
        on_frame(Frame { unix_nanos, link: header.datalink, data: &packet.data });
    }
    Ok(CaptureEnd { truncated: false })
}

fn read_pcapng(
    path: &Path,
    reader: BufReader<Counting<'_>>,
    on_frame: &mut dyn FnMut(Frame<'_>),
) -> Result<CaptureEnd, ReplayError> {
    let mut pcapng = PcapNgReader::new(reader)
        .map_err(|source| ReplayError::Header { path: path.to_path_buf(), source })?;
    let mut interfaces: Vec<Interface> = Vec::new();
    // Simple packet blocks carry no time; they get the last time seen.
    let mut last_nanos = 0;
    while let Some(block) = pcapng.next_block() {
        let Ok(block) = block else {
            return Ok(CaptureEnd { truncated: true });
        };
        match block {
            Block::SectionHeader(_) => interfaces.clear(),
            Block::InterfaceDescription(idb) => {
                let mut interface =
                    Interface { link: idb.linktype, units_per_sec: 1_000_000, offset_secs: 0 };
                for option in &idb.options {
                    match option {
                        InterfaceDescriptionOption::IfTsResol(resol) => {
                            interface.units_per_sec = units_per_sec(*resol);
                        }
                        InterfaceDescriptionOption::IfTsOffset(secs) => {
                            interface.offset_secs = u128::from(*secs)
                        }
                        _ => {}
                    }
                }
                interfaces.push(interface);
            }
            Block::EnhancedPacket(epb) => {
                let Some(interface) = usize::try_from(epb.interface_id).ok().and_then(|i| interfaces.get(i))
                else {
                    return Ok(CaptureEnd { truncated: true });
                };
                // pcap-file stores the raw timestamp units as if they were nanoseconds.
                last_nanos = interface.unix_nanos(epb.timestamp.as_nanos());
                on_frame(Frame { unix_nanos: last_nanos, link: interface.link, data: &epb.data });
            }
            Block::Packet(pb) => {
                let Some(interface) = interfaces.get(usize::from(pb.interface_id)) else {
                    return Ok(CaptureEnd { truncated: true });
                };
                last_nanos = interface.unix_nanos(u128::from(pb.timestamp));
                on_frame(Frame { unix_nanos: last_nanos, link: interface.link, data: &pb.data });
            }
            Block::SimplePacket(spb) => {
                let Some(interface) = interfaces.first() else {
                    return Ok(CaptureEnd { truncated: true });
                };
                on_frame(Frame { unix_nanos: last_nanos, link: interface.link, data: &spb.data });
            }
            Block::NameResolution(_)
            | Block::InterfaceStatistics(_)
            | Block::SystemdJournalExport(_)
            | Block::Unknown(_) => {}
        }
    }
    Ok(CaptureEnd { truncated: false })
}

/// if_tsresol: the high bit says base 2, else base 10; the rest is the negative exponent. Exponents
/// that do not fit in u128 are capped (no real capture uses them).
fn units_per_sec(resol: u8) -> u128 {
    let exponent = u32::from(resol & 0x7f);
    if resol & 0x80 != 0 { 2u128.pow(exponent.min(120)) } else { 10u128.pow(exponent.min(36)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_time_resolution() {
        assert_eq!(units_per_sec(6), 1_000_000);
        assert_eq!(units_per_sec(9), 1_000_000_000);
        assert_eq!(units_per_sec(0x80 | 10), 1024);
        let micro = Interface { link: DataLink::ETHERNET, units_per_sec: 1_000_000, offset_secs: 0 };
        assert_eq!(micro.unix_nanos(1_500_000), 1_500_000_000);
        let shifted = Interface { link: DataLink::ETHERNET, units_per_sec: 1_000_000_000, offset_secs: 10 };
        assert_eq!(shifted.unix_nanos(5), 10_000_000_005);
    }
}

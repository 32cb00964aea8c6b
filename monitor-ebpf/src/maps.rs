//! Maps shared by the programs. User space sizes `EVENTS`, `SOCKS` and the indicator maps at load time.

use crate::parse::Scratch;
use core::{ffi::c_void, ptr::addr_of};

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    btf_maps::SkStorage,
    helpers::generated::bpf_sk_storage_get,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use monitor_common::{
    config::Config,
    name_hash::NameKey,
    record::{FlowState, WireFlowKey, WireFlowState},
    verdict::{DROP_REASONS, IndicatorSlots},
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Records the kernel could not hand over, by `DROP_*` reason.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS, 0);

/// Sockets whose sends `inspect_send` sees, by cookie. User space removes a socket once judged.
#[map]
pub static SOCKS: SockHash<u64> = SockHash::with_max_entries(65_536, 0);

/// Per-connection inspection state; freed by the kernel with the socket.
#[btf_map]
pub static FLOWS: SkStorage<FlowState> = SkStorage::new();

#[map]
pub static DOMAINS: HashMap<NameKey, IndicatorSlots> = HashMap::with_max_entries(1024, 0);

#[map]
pub static NETS_V4: LpmTrie<[u8; 4], IndicatorSlots> = LpmTrie::with_max_entries(1024, 0);

#[map]
pub static NETS_V6: LpmTrie<[u8; 16], IndicatorSlots> = LpmTrie::with_max_entries(1024, 0);

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Forwarded flows seen on TC, from the SYN until FIN/RST or until user space reclaims them. A plain hash
/// map: an LRU would let a flood of SYNs evict a flow that is still to be judged. User space sizes it
/// (`--wire-flows`); when it is full, block mode refuses new flows.
#[map]
pub static WIRE_FLOWS: HashMap<WireFlowKey, WireFlowState> = HashMap::with_max_entries(65_536, 0);

/// Forwarded QUIC flows seen on TC (UDP to port 443): the long-header datagrams handed to user space so
/// far, or `WIRE_QUIC_DENIED` once user space found the flow going to a denied name (block mode). User space
/// removes an entry when it forgets the flow (no datagram for two minutes).
#[map]
pub static WIRE_QUIC: LruHashMap<WireFlowKey, u32> = LruHashMap::with_max_entries(16_384, 0);

/// QUIC sockets user space found going to a denied name (block mode): their later datagrams are dropped,
/// so the handshake cannot complete and the client falls back to TCP, where it is judged again.
#[map]
pub static QUIC_DENY: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16_384, 0);

/// User space's answer for a connection in `PHASE_EGRESS`, by cookie: the phase it goes on in
/// (`PHASE_DONE`, `PHASE_TUNNEL`, `PHASE_HTTP`, or `PHASE_BLOCKED`). Taken out when applied.
#[map]
pub static DEFERRED: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16_384, 0);

/// Apply user space's answer to a connection in `PHASE_EGRESS`, if it has come.
#[inline(always)]
pub fn resolve_deferred(state: &mut FlowState) {
    let cookie = state.cookie;
    if let Some(next) = unsafe { DEFERRED.get(&cookie) } {
        state.phase = *next;
        let _ = DEFERRED.remove(&cookie);
    }
}

/// Unread bytes in `EVENTS` above which a record wakes the reader at once. Below it the reader is not
/// woken: it drains the ring on its own every 100 ms, and a wakeup per record (an IPI, a VM exit on a
/// virtual machine) would cost as much as the programs themselves.
const WAKE_ABOVE: u64 = 256 * 1024;

/// Flags for `submit`: wake the reader only when the ring is filling up.
#[inline(always)]
pub fn wakeup() -> u64 {
    use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) > WAKE_ABOVE {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// The connection's inspection state in `FLOWS`. With `create`, a missing one is made from it (an
/// existing one is returned as it is). Null sockets and a full storage give `None`.
#[inline(always)]
pub fn flow_state(sk: *mut bpf_sock, create: Option<&mut FlowState>) -> Option<&'static mut FlowState> {
    if sk.is_null() {
        return None;
    }
    let (initial, flags) = match create {
        Some(initial) => ((initial as *mut FlowState).cast(), BPF_SK_STORAGE_GET_F_CREATE as u64),
        None => (core::ptr::null_mut(), 0),
    };
    let state = unsafe { bpf_sk_storage_get(addr_of!(FLOWS) as *mut c_void, sk.cast(), initial, flags) }
        as *mut FlowState;
    // The kernel keeps the storage as long as the socket, which outlives this program run.
    unsafe { state.as_mut() }
}

#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(counter) = DROPS.get_ptr_mut(reason) {
        // Per-CPU: no other writer.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

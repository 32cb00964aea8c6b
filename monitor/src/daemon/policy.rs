//! The indicator sets in the kernel maps, replaced atomically.
//!
//! Each map value holds one byte per generation. A new set is written into the idle generation's
//! byte of every entry it touches, then `Config::generation` is flipped in one word write: programs see
//! the old set or the new one, never a mix and never an empty one. Afterwards both bytes are made equal
//! and entries of neither generation are deleted, so the next reload writes only what changed.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    time::Instant,
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, lpm_trie::Key};
use monitor_common::{
    config::Config,
    name_hash::{NameKey, name_key},
    verdict::{IND_ALLOW, IND_BLOCK, IndicatorSlots},
};
use monitor_core::policy::{IndicatorSet, ListBits};

use super::kernel::Kernel;

trait SlotMap<K> {
    fn put(&mut self, key: &K, slots: IndicatorSlots) -> anyhow::Result<()>;
    /// Many writes at once (the order does not matter: each key appears once).
    fn put_many(&mut self, entries: &[(K, IndicatorSlots)]) -> anyhow::Result<()> {
        for (key, slots) in entries {
            self.put(key, *slots)?;
        }
        Ok(())
    }
    fn delete(&mut self, key: &K) -> anyhow::Result<()>;
    /// What the map holds now (a map adopted from a previous daemon is not empty).
    fn entries(&self) -> anyhow::Result<HashMap<K, IndicatorSlots>>;
}

/// The domain map, written in batches (BPF_MAP_UPDATE_BATCH): a million indicators are a few system
/// calls, not a million.
struct DomainMap {
    map: BpfHashMap<MapData, NameKey, IndicatorSlots>,
    fd: OwnedFd,
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BATCH: usize = 65_536;
/// The kernel's internal "not supported" (524), which reaches user space from some batch paths.
const ENOTSUPP: i32 = 524;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

impl SlotMap<NameKey> for DomainMap {
    fn put(&mut self, key: &NameKey, slots: IndicatorSlots) -> anyhow::Result<()> {
        self.map.insert(key, slots, 0).context("write DOMAINS (is the map full? raise the capacity)")
    }
    fn put_many(&mut self, entries: &[(NameKey, IndicatorSlots)]) -> anyhow::Result<()> {
        for chunk in entries.chunks(BATCH) {
            let keys: Vec<NameKey> = chunk.iter().map(|(k, _)| *k).collect();
            let values: Vec<IndicatorSlots> = chunk.iter().map(|(_, v)| *v).collect();
            let mut attr = BatchAttr {
                keys: keys.as_ptr() as u64,
                values: values.as_ptr() as u64,
                count: chunk.len() as u32,
                map_fd: self.fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            // SAFETY: `attr` points at `keys` and `values`, which live across the call and hold `count`
            // entries of the map's key and value sizes.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_UPDATE_BATCH,
                    &mut attr as *mut BatchAttr,
                    size_of::<BatchAttr>(),
                )
            };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                // Kernels without batch support for hash maps: one write at a time.
                if err.raw_os_error() == Some(libc::EINVAL) || err.raw_os_error() == Some(ENOTSUPP) {
                    for (key, slots) in chunk {
                        self.put(key, *slots)?;
                    }
                    continue;
                }
                return Err(err).context("write DOMAINS in a batch (is the map full? raise the capacity)");
            }
        }
        Ok(())
    }
    fn delete(&mut self, key: &NameKey) -> anyhow::Result<()> {
        self.map.remove(key).context("delete from DOMAINS")
    }
    fn entries(&self) -> anyhow::Result<HashMap<NameKey, IndicatorSlots>> {
        self.map.iter().map(|e| e.context("read DOMAINS")).collect()
    }
}

impl<const N: usize> SlotMap<([u8; N], u32)> for LpmTrie<MapData, [u8; N], IndicatorSlots> {
    fn put(&mut self, key: &([u8; N], u32), slots: IndicatorSlots) -> anyhow::Result<()> {
        self.insert(&Key::new(key.1, key.0), slots, 0).context("write an address-range map")
    }
    fn delete(&mut self, key: &([u8; N], u32)) -> anyhow::Result<()> {
        self.remove(&Key::new(key.1, key.0)).context("delete from an address-range map")
    }
    fn entries(&self) -> anyhow::Result<HashMap<([u8; N], u32), IndicatorSlots>> {
        self.iter()
            .map(|e| e.map(|(k, v)| ((k.data(), k.prefix_len()), v)).context("read an address-range map"))
            .collect()
    }
}

/// One kernel map and what user space knows it holds.
struct Table<K, M> {
    map: M,
    held: HashMap<K, IndicatorSlots>,
}

impl<K: Hash + Eq + Clone, M: SlotMap<K>> Table<K, M> {
    fn adopt(map: M) -> anyhow::Result<Self> {
        let held = map.entries()?;
        Ok(Table { map, held })
    }

    /// Write `wanted` into generation `next` (other generation untouched).
    fn stage(&mut self, wanted: &HashMap<K, u8>, next: usize) -> anyhow::Result<usize> {
        if self.held.is_empty() {
            return self.fill(wanted);
        }
        let mut writes = Vec::new();
        for (key, &bits) in wanted {
            let slots = self.held.entry(key.clone()).or_insert([0, 0]);
            if slots[next] != bits {
                slots[next] = bits;
                writes.push((key.clone(), *slots));
            }
        }
        for (key, slots) in self.held.iter_mut() {
            if slots[next] != 0 && !wanted.contains_key(key) {
                slots[next] = 0;
                writes.push((key.clone(), *slots));
            }
        }
        self.map.put_many(&writes)?;
        Ok(writes.len())
    }

    /// The first set into an empty map: nothing was enforced before, so there is no old set to keep
    /// consistent, and both generations get the bits at once (one write per entry instead of two).
    /// Written a batch at a time, so that a million entries are not also held as one list of writes.
    fn fill(&mut self, wanted: &HashMap<K, u8>) -> anyhow::Result<usize> {
        let mut batch = Vec::with_capacity(BATCH.min(wanted.len()));
        self.held.reserve(wanted.len());
        for (key, &b) in wanted {
            batch.push((key.clone(), [b, b]));
            self.held.insert(key.clone(), [b, b]);
            if batch.len() == BATCH {
                self.map.put_many(&batch)?;
                batch.clear();
            }
        }
        self.map.put_many(&batch)?;
        Ok(wanted.len())
    }

    /// After the flip to `live`: make the idle byte equal to the live one, drop dead entries.
    fn settle(&mut self, live: usize) -> anyhow::Result<()> {
        let idle = 1 - live;
        let mut dead = Vec::new();
        let mut writes = Vec::new();
        for (key, slots) in self.held.iter_mut() {
            if slots[live] == 0 {
                dead.push(key.clone());
            } else if slots[idle] != slots[live] {
                slots[idle] = slots[live];
                writes.push((key.clone(), *slots));
            }
        }
        self.map.put_many(&writes)?;
        for key in dead {
            self.map.delete(&key)?;
            self.held.remove(&key);
        }
        Ok(())
    }
}

/// An address-range map: (address bytes, prefix length) to slots.
type NetTable<const N: usize> = Table<([u8; N], u32), LpmTrie<MapData, [u8; N], IndicatorSlots>>;

pub struct KernelPolicy {
    config_map: Array<MapData, Config>,
    pub config: Config,
    domains: Table<NameKey, DomainMap>,
    nets_v4: NetTable<4>,
    nets_v6: NetTable<16>,
}

fn bits(b: ListBits) -> u8 {
    (if b.allow { IND_ALLOW } else { 0 }) | (if b.block { IND_BLOCK } else { 0 })
}

/// What one reload cost.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub writes: usize,
    pub millis: u128,
}

impl KernelPolicy {
    pub fn take(kernel: &mut Kernel, config: Config) -> anyhow::Result<KernelPolicy> {
        let mut take = |name: &str| kernel.ebpf.take_map(name).with_context(|| format!("map {name}"));
        Ok(KernelPolicy {
            config_map: Array::try_from(take("CONFIG")?).context("map CONFIG")?,
            config,
            domains: {
                let map = take("DOMAINS")?;
                let fd = match &map {
                    aya::maps::Map::HashMap(data) => {
                        data.fd().as_fd().try_clone_to_owned().context("dup DOMAINS fd")?
                    }
                    _ => anyhow::bail!("map DOMAINS is not a hash map"),
                };
                Table::adopt(DomainMap { map: BpfHashMap::try_from(map).context("map DOMAINS")?, fd })?
            },
            nets_v4: Table::adopt(LpmTrie::try_from(take("NETS_V4")?).context("map NETS_V4")?)?,
            nets_v6: Table::adopt(LpmTrie::try_from(take("NETS_V6")?).context("map NETS_V6")?)?,
        })
    }

    /// Write `config` (mode, uninspectable policy) to the kernel.
    pub fn write_config(&mut self) -> anyhow::Result<()> {
        self.config_map.set(0, self.config, 0).context("write CONFIG")
    }

    /// Replace the kernel's indicators with `set`, atomically for the programs.
    pub fn apply(&mut self, set: &IndicatorSet) -> anyhow::Result<Applied> {
        let started = Instant::now();
        let staged = self.stage(set)?;
        self.flip()?;
        self.settle()?;
        Ok(Applied { writes: staged.writes, millis: started.elapsed().as_millis() })
    }

    /// Write `set` into the idle generation (or, into empty maps, both): what the programs enforce does
    /// not change until [`KernelPolicy::flip`].
    pub fn stage(&mut self, set: &IndicatorSet) -> anyhow::Result<Applied> {
        let started = Instant::now();
        let seed = self.config.seed;
        let domains: HashMap<NameKey, u8> =
            set.domains().map(|(d, b)| (name_key(d.as_bytes(), seed), bits(b))).collect();
        let mut v4 = HashMap::new();
        let mut v6 = HashMap::new();
        for (addr, prefix, b) in set.kernel_nets() {
            match addr {
                IpAddr::V4(a) => {
                    v4.insert((a.octets(), prefix as u32), bits(b));
                }
                IpAddr::V6(a) => {
                    v6.insert((a.octets(), prefix as u32), bits(b));
                }
            }
        }
        let next = self.next_generation();
        let mut writes = self.domains.stage(&domains, next)?;
        writes += self.nets_v4.stage(&v4, next)?;
        writes += self.nets_v6.stage(&v6, next)?;
        Ok(Applied { writes, millis: started.elapsed().as_millis() })
    }

    fn next_generation(&self) -> usize {
        (1 - (self.config.generation & 1)) as usize
    }

    /// Switch the programs to the staged generation, in one write of CONFIG (which also carries this
    /// daemon's mode and settings).
    pub fn flip(&mut self) -> anyhow::Result<()> {
        let next = self.next_generation();
        let mut config = self.config;
        config.generation = next as u32;
        self.config_map.set(0, config, 0).context("flip the indicator generation in CONFIG")?;
        self.config = config;
        Ok(())
    }

    /// After the flip: the idle generation made equal to the live one, dead entries deleted.
    pub fn settle(&mut self) -> anyhow::Result<()> {
        let live = (self.config.generation & 1) as usize;
        self.domains.settle(live)?;
        self.nets_v4.settle(live)?;
        self.nets_v6.settle(live)?;
        Ok(())
    }
}

//! Records shared by the kernel programs (`monitor-ebpf`) and user space (`monitor`).
//!
//! Every record is `#[repr(C)]`, `Copy`, with explicit padding so that both sides agree on the layout
//! whatever the target. The kernel writes them into the `EVENTS` ring buffer; user space reads them
//! back with [`record::RecordHeader::kind`] to tell them apart.
#![no_std]

pub mod config;
pub mod name_hash;
pub mod record;
pub mod scan;
pub mod verdict;

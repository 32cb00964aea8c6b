//! ELF files as the builds check them: byte order and machine.

use std::{fs, path::Path};

use anyhow::{Context as _, bail};

pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;
pub const EM_BPF: u16 = 247;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Endian {
    Little,
    Big,
}

impl Endian {
    pub fn bpf_target(self) -> &'static str {
        match self {
            Endian::Little => "bpfel-unknown-none",
            Endian::Big => "bpfeb-unknown-none",
        }
    }

    /// The `bpf_target_arch` aya-build passes: the daemon's architecture. A bpfeb object is what a
    /// big-endian daemon (s390x) embeds.
    pub fn daemon_arch(self) -> &'static str {
        match self {
            Endian::Little => "x86_64",
            Endian::Big => "s390x",
        }
    }
}

/// The ELF header's byte order and e_machine.
fn elf_machine(path: &Path) -> anyhow::Result<(Endian, u16)> {
    let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let header = bytes.get(..20).filter(|h| h.starts_with(b"\x7fELF"));
    let header = header.with_context(|| format!("{} is not an ELF file", path.display()))?;
    let machine = [header[18], header[19]];
    match header[5] {
        1 => Ok((Endian::Little, u16::from_le_bytes(machine))),
        2 => Ok((Endian::Big, u16::from_be_bytes(machine))),
        other => bail!("{}: unknown ELF byte order {other}", path.display()),
    }
}

pub fn expect_elf(path: &Path, endian: Endian, machine: u16) -> anyhow::Result<()> {
    let found = elf_machine(path)?;
    if found != (endian, machine) {
        bail!(
            "{} is a {:?}-endian ELF for machine {}, expected {endian:?}-endian for machine {machine}",
            path.display(),
            found.0,
            found.1
        );
    }
    Ok(())
}

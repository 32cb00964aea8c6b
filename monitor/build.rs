//! Builds the kernel programs (`monitor-ebpf`) for bpfel/bpfeb with the nightly toolchain and
//! bpf-linker, through aya-build; the object lands in OUT_DIR and is embedded in the daemon.
//! Only a Linux daemon embeds them: on other systems the binary has replay, hunt and timeline.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    if std::env::var("CARGO_CFG_TARGET_OS").context("CARGO_CFG_TARGET_OS (set by cargo)")? != "linux" {
        return Ok(());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitor-ebpf");
    let root = root.to_str().context("monitor-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "monitor-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("build the kernel programs (monitor-ebpf); `cargo xtask build` installs what they need")
}

use which::which;

/// Rebuild when bpf-linker changes: the object it links is what the loader embeds.
fn main() {
    if let Ok(path) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

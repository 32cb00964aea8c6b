//! Where the third-party capture corpus is, for the tests that read it (`corpus.rs`, `kernel_scan.rs`).

use std::path::{Path, PathBuf};

/// `shared/corpus` in a directory above the crate, or `MONITOR_CORPUS`.
pub fn corpus_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MONITOR_CORPUS") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|dir| dir.join("shared").join("corpus"))
        .find(|dir| dir.join("expected.tsv").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no shared/corpus/expected.tsv in any directory above {}; set MONITOR_CORPUS to the corpus directory",
                manifest.display()
            )
        })
}

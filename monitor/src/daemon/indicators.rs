//! The daemon's indicator lists: the files (watched, reloaded on change), the fleet policy's lists
//! (`--policy`), plus changes made at run time with `monitor indicators add|remove`.

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use monitor_core::policy::{Indicator, IndicatorError, IndicatorSet, ListKind, read_list};

#[derive(Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(path).ok()?;
    Some(FileStamp { modified: meta.modified().ok(), len: meta.len(), inode: meta.ino() })
}

struct ListFile {
    kind: ListKind,
    path: PathBuf,
    stamp: Option<FileStamp>,
    entries: Vec<Indicator>,
}

pub struct Indicators {
    files: Vec<ListFile>,
    /// The fleet policy's lists, as last applied.
    fleet: Vec<(ListKind, Indicator)>,
    added: Vec<(ListKind, Indicator)>,
    removed: Vec<(ListKind, Indicator)>,
}

impl Indicators {
    /// Read the files; any bad line is an error (the daemon does not start).
    pub fn load(allow: Option<&Path>, block: Option<&Path>) -> Result<Indicators, IndicatorError> {
        let mut files = Vec::new();
        for (kind, path) in [(ListKind::Allow, allow), (ListKind::Block, block)] {
            if let Some(path) = path {
                let stamp = stamp(path);
                let entries = read_list(path)?;
                files.push(ListFile { kind, path: path.to_path_buf(), stamp, entries });
            }
        }
        Ok(Indicators { files, fleet: Vec::new(), added: Vec::new(), removed: Vec::new() })
    }

    pub fn effective(&self) -> IndicatorSet {
        let mut set = IndicatorSet::default();
        for file in &self.files {
            for i in &file.entries {
                set.insert(file.kind, i.clone());
            }
        }
        for (kind, i) in self.fleet.iter().chain(&self.added) {
            set.insert(*kind, i.clone());
        }
        for (kind, i) in &self.removed {
            set.remove(*kind, i);
        }
        set
    }

    /// Files that changed since last read. `Ok(true)`: reloaded; `Err`: a bad file, the old set stays.
    pub fn reload_changed(&mut self) -> Result<bool, IndicatorError> {
        let mut fresh = Vec::new();
        for (index, file) in self.files.iter().enumerate() {
            let now = stamp(&file.path);
            if now != file.stamp {
                // Read all changed files first: a bad one leaves every list as it was.
                fresh.push((index, now, read_list(&file.path)));
            }
        }
        if fresh.is_empty() {
            return Ok(false);
        }
        let mut parsed = Vec::new();
        for (index, now, result) in fresh {
            match result {
                Ok(entries) => parsed.push((index, now, entries)),
                Err(err) => {
                    // Remember the stamp so the same bad file is reported once, not every poll.
                    self.files[index].stamp = now;
                    return Err(err);
                }
            }
        }
        for (index, now, entries) in parsed {
            self.files[index].stamp = now;
            self.files[index].entries = entries;
        }
        Ok(true)
    }

    /// The fleet policy's lists now (they replace the previous ones; the files and run-time changes stay).
    pub fn set_fleet(&mut self, block: Vec<Indicator>, allow: Vec<Indicator>) {
        self.fleet = block
            .into_iter()
            .map(|i| (ListKind::Block, i))
            .chain(allow.into_iter().map(|i| (ListKind::Allow, i)))
            .collect();
    }

    /// Takes the fleet policy's lists of `old` (new files replace the files, not the fleet's lists).
    pub fn keep_fleet_of(&mut self, old: &mut Indicators) {
        self.fleet = std::mem::take(&mut old.fleet);
    }

    pub fn add(&mut self, kind: ListKind, indicator: Indicator) {
        self.removed.retain(|(k, i)| !(*k == kind && *i == indicator));
        self.added.push((kind, indicator));
    }

    pub fn remove(&mut self, kind: ListKind, indicator: Indicator) {
        self.added.retain(|(k, i)| !(*k == kind && *i == indicator));
        self.removed.push((kind, indicator));
    }

    pub fn paths(&self) -> Vec<String> {
        self.files.iter().map(|f| format!("{} {}", f.kind, f.path.display())).collect()
    }
}

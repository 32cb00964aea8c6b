//! Logs for a terminal and for journald alike: one line per message on stderr, `monitor: ` and the
//! level, no timestamps (journald adds its own). The level comes from `RUST_LOG` (error, warn, info,
//! debug, trace; default info).

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr {
    level: LevelFilter,
}

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let prefix = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug => "debug: ",
            Level::Trace => "trace: ",
        };
        eprintln!("monitor: {prefix}{}", record.args());
    }

    fn flush(&self) {}
}

pub fn init() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.rsplit(',').next().map(|l| l.rsplit('=').next().unwrap_or(l).trim().to_string()))
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    // Only fails if a logger is already set, which cannot happen at the start of main.
    let _ = log::set_logger(Box::leak(Box::new(Stderr { level })));
    log::set_max_level(level);
}

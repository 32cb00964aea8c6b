//! Logs through `tracing`, for a terminal and for journald alike: one line per message on stderr,
//! `monitor: ` and the level, no timestamps (journald adds its own). When stderr is the journal
//! (systemd's `JOURNAL_STREAM` names it), each line starts with its sd-daemon priority (`<4>` for a
//! warning...), so `journalctl -p warning` finds them. `RUST_LOG` takes the usual directives
//! (`debug`, `monitor=debug,aya=warn`...); the default is `info`. Records of crates that log through
//! `log` (aya) arrive here too.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

struct Line {
    journald: bool,
}

/// sd-daemon(3) priorities.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

fn prefix(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error: ",
        Level::WARN => "warning: ",
        Level::INFO => "",
        Level::DEBUG => "debug: ",
        Level::TRACE => "trace: ",
    }
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        if self.journald {
            write!(writer, "<{}>", priority(level))?;
        }
        write!(writer, "monitor: {}", prefix(level))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Whether stderr is the journal: `JOURNAL_STREAM` is `<device>:<inode>` of the stream systemd connected.
#[cfg(not(target_os = "linux"))]
fn stderr_is_journal() -> bool {
    false
}

/// Whether stderr is the journal: `JOURNAL_STREAM` is `<device>:<inode>` of the stream systemd connected.
#[cfg(target_os = "linux")]
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

pub fn init() {
    let (filter, bad) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(e) => (
            EnvFilter::new("info"),
            std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()).map(|v| (v, e)),
        ),
    };
    // Only fails if a subscriber is already set, which cannot happen at the start of main.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Line { journald: stderr_is_journal() })
        .try_init();
    if let Some((value, e)) = bad {
        tracing::warn!("RUST_LOG={value:?} is not a valid filter ({e}); logging at info");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_journal_priorities_and_prefixes() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
        assert_eq!(prefix(Level::WARN), "warning: ");
        assert_eq!(prefix(Level::INFO), "");
    }
}

//! `monitor replay FILE`: the extraction of the live path over a capture, events as JSON lines.

use std::{
    fs::File,
    io::{BufWriter, IsTerminal as _, Write},
    process::ExitCode,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use anyhow::Context as _;

use crate::cli::ReplayArgs;

/// Captures smaller than this replay in well under a second: no bar.
const PROGRESS_MIN_BYTES: u64 = 16 << 20;

fn progress_bar(total: u64, read: &AtomicU64, done: &AtomicBool) {
    const WIDTH: u64 = 40;
    while !done.load(Ordering::Relaxed) {
        let now = read.load(Ordering::Relaxed).min(total);
        let filled = now * WIDTH / total.max(1);
        eprint!(
            "\r[{}{}] {:>3}% {} / {} MiB",
            "#".repeat(filled as usize),
            ".".repeat((WIDTH - filled) as usize),
            now * 100 / total.max(1),
            now >> 20,
            total >> 20
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprint!("\r{}\r", " ".repeat(WIDTH as usize + 30));
}

pub fn run(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let mut out: Box<dyn Write> = if args.events == "-" {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(BufWriter::new(
            File::create(&args.events).with_context(|| format!("create {}", args.events))?,
        ))
    };
    let mut write_error = None;
    let total = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
    let read = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let stats = std::thread::scope(|scope| {
        // A bar on stderr for large captures read at a terminal; nothing for scripts and small files.
        if total >= PROGRESS_MIN_BYTES && std::io::stderr().is_terminal() {
            scope.spawn(|| progress_bar(total, &read, &done));
        }
        let stats = monitor_core::replay::replay_with_progress(&args.file, Some(&read), &mut |event| {
            if write_error.is_none()
                && let Err(e) = writeln!(out, "{}", event.to_json_line())
            {
                write_error = Some(e);
            }
        });
        done.store(true, Ordering::Relaxed);
        stats
    })
    .with_context(|| format!("replay {}", args.file.display()))?;
    if let Some(e) = write_error {
        return Err(e).context("write events");
    }
    out.flush().context("write events")?;
    eprintln!(
        "monitor replay: {} packets, {} flows ({} QUIC), {} named, {} malformed, {} undecodable packets, {} UDP datagrams not inspected{}",
        stats.packets,
        stats.flows,
        stats.quic_flows,
        stats.flows_named,
        stats.flows_malformed,
        stats.undecodable_packets,
        stats.udp_datagrams_not_inspected,
        if stats.truncated_capture { " (the capture ends mid-packet)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

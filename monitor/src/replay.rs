//! `monitor replay FILE`: the extraction of the live path over a capture, events as JSON lines.

use std::{
    fs::File,
    io::{BufWriter, Write},
    process::ExitCode,
};

use anyhow::Context as _;

use crate::cli::ReplayArgs;

pub fn run(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let mut out: Box<dyn Write> = if args.events == "-" {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(BufWriter::new(
            File::create(&args.events).with_context(|| format!("create {}", args.events))?,
        ))
    };
    let mut write_error = None;
    let stats = monitor_core::replay::replay(&args.file, &mut |event| {
        if write_error.is_none()
            && let Err(e) = writeln!(out, "{}", event.to_json_line())
        {
            write_error = Some(e);
        }
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

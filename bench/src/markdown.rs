//! What every part of the results renders with: a goal and whether it is met, and a Markdown table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One goal of an issue, what was measured for it, and whether that meets it (`None`: no verdict).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

pub fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", headers.join(" | "));
    let _ = writeln!(out, "|{}|", headers.iter().map(|_| "---").collect::<Vec<_>>().join("|"));
    for row in rows {
        // A `|` in a cell (a KQL pipe) would end it.
        let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

//! Query results as an aligned table, JSON lines or CSV.

use std::borrow::Cow;
use std::io::{self, Write};

use crate::kql::{QueryResult, Value};

/// Text safe for a terminal: event fields come from the network (Host headers, SNI), so control
/// characters (an ESC starting a terminal sequence) are shown escaped instead of being sent as they are.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
            .collect(),
    )
}

/// Columns padded to their widest cell, a header and a rule.
pub fn write_table(result: &QueryResult, out: &mut dyn Write) -> io::Result<()> {
    let cells: Vec<Vec<String>> = result
        .rows
        .iter()
        .map(|row| row.iter().map(|v| terminal_safe(&v.to_text()).into_owned()).collect())
        .collect();
    let headers: Vec<String> = result.columns.iter().map(|c| terminal_safe(c).into_owned()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |fields: &[String]| -> String {
        let padded: Vec<String> = fields
            .iter()
            .zip(&widths)
            .map(|(f, w)| format!("{f}{}", " ".repeat(w - f.chars().count())))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    writeln!(out, "{}", line(&headers))?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "{}", rule.join("  "))?;
    for row in &cells {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}

/// One JSON object per row, keys in column order.
pub fn write_json_lines(result: &QueryResult, out: &mut dyn Write) -> io::Result<()> {
    for row in &result.rows {
        let fields: Vec<String> = result
            .columns
            .iter()
            .zip(row)
            .map(|(name, value)| format!("{}:{}", serde_json::Value::from(name.as_str()), value.to_json()))
            .collect();
        writeln!(out, "{{{}}}", fields.join(","))?;
    }
    Ok(())
}

/// RFC 4180 CSV with a header line.
pub fn write_csv(result: &QueryResult, out: &mut dyn Write) -> io::Result<()> {
    let headers: Vec<String> = result.columns.iter().map(|c| csv_field(c)).collect();
    write!(out, "{}\r\n", headers.join(","))?;
    for row in &result.rows {
        let fields: Vec<String> = row.iter().map(|v: &Value| csv_field(&v.to_text())).collect();
        write!(out, "{}\r\n", fields.join(","))?;
    }
    Ok(())
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> QueryResult {
        QueryResult {
            columns: vec!["Name".into(), "N".into()],
            rows: vec![
                vec![Value::String("a,\"b\"".into()), Value::Long(1)],
                vec![Value::String("\u{1b}[2J".into()), Value::Null],
            ],
        }
    }

    #[test]
    fn table_is_aligned_and_terminal_safe() {
        let mut out = Vec::new();
        write_table(&result(), &mut out).expect("write to a vector");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text, "Name       N\n---------  -\na,\"b\"      1\n\\u{1b}[2J\n");
    }

    #[test]
    fn json_lines_keep_column_order() {
        let mut out = Vec::new();
        write_json_lines(&result(), &mut out).expect("write to a vector");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.lines().next(), Some(r#"{"Name":"a,\"b\"","N":1}"#));
        assert_eq!(text.lines().nth(1), Some(r#"{"Name":"\u001b[2J","N":null}"#));
    }

    #[test]
    fn csv_quotes() {
        let mut out = Vec::new();
        write_csv(&result(), &mut out).expect("write to a vector");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("Name,N\r\n\"a,\"\"b\"\"\",1\r\n"), "{text:?}");
    }
}

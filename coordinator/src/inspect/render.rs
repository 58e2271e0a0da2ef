//! Output helpers shared by the subcommands: timestamps, ages, tables (a
//! comfy-table on a terminal, plain aligned columns otherwise, so that
//! `grep` and `awk` see one row per line), and JSON lines.

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfy_table::{presets, ColumnConstraint, ContentArrangement, Table, Width};
use serde::Serialize;

/// `2026-01-05T10:11:12.345Z`: RFC 3339, milliseconds, UTC.
pub fn timestamp(unix_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A compact age: `850ms`, `42s`, `5m03s`, `2h14m`, `3d04h`.
pub fn age(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0 => format!("{ms}ms"),
        1..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..=86_399 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

/// Narrower terminals get unwrapped rows rather than unreadable columns.
const TERMINAL_COLUMNS_MIN: u16 = 60;
/// Columns no wider than this (states, ages, shard lists) never wrap.
const UNWRAPPED_COLUMN_CHARS_MAX: usize = 16;

/// Rows under a header, written as a bordered table when `terminal`, as
/// columns separated by two spaces otherwise.
pub fn table(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
    terminal: bool,
) -> io::Result<()> {
    if terminal {
        let mut table = Table::new();
        table
            .load_preset(presets::UTF8_FULL_CONDENSED)
            .set_header(header.to_vec());
        // Wrap cells to the terminal's width only when it is known and
        // sensible; a pseudo-terminal may report 0 columns.
        if table
            .width()
            .is_some_and(|width| width >= TERMINAL_COLUMNS_MIN)
        {
            table.set_content_arrangement(ContentArrangement::Dynamic);
            // Only long columns wrap; the first is what operators copy (a
            // txid, a time) and never does; a wrapped one keeps a readable
            // width even if the table then overflows a narrow terminal.
            for (index, width) in column_widths(header, rows).into_iter().enumerate() {
                let constraint = if index == 0 || width <= UNWRAPPED_COLUMN_CHARS_MAX {
                    ColumnConstraint::ContentWidth
                } else {
                    ColumnConstraint::LowerBoundary(Width::Fixed(UNWRAPPED_COLUMN_CHARS_MAX as u16))
                };
                if let Some(column) = table.column_mut(index) {
                    column.set_constraint(constraint);
                }
            }
        }
        for row in rows {
            table.add_row(row.clone());
        }
        return writeln!(out, "{table}");
    }
    plain_table(out, header, rows)
}

/// The widest cell of each column, header included, in characters.
fn column_widths(header: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    widths
}

fn plain_table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let widths = column_widths(header, rows);
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// One JSON object on one line.
pub fn json_line(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::other)?;
    writeln!(out)
}

/// `-` for an empty text, the text otherwise.
pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_compact() {
        assert_eq!(age(850), "850ms");
        assert_eq!(age(42_100), "42s");
        assert_eq!(age(303_000), "5m03s");
        assert_eq!(age(8_040_000), "2h14m");
        assert_eq!(age(273_600_000), "3d04h");
    }

    #[test]
    fn timestamps_are_rfc3339_millis_utc() {
        assert_eq!(timestamp(1_760_000_000_123), "2025-10-09T08:53:20.123Z");
    }

    #[test]
    fn plain_tables_align_columns() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["a".to_string(), "long cell".to_string(), "x".to_string()],
            vec!["bbb".to_string(), "c".to_string(), String::new()],
        ];
        table(&mut out, &["H1", "H2", "H3"], &rows, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "H1   H2         H3\na    long cell  x\nbbb  c\n"
        );
    }
}

//! `inspect verify`: checks every frame (length, CRC32C, decode, version)
//! of every segment with `log::check_segment`, never stopping at the first
//! damaged segment, and says what a coordinator start would do with it.
//! Never modifies a file. JSON: one `VerifyReport` object.
//!
//! | verdict     | exit | meaning                                                        |
//! |-------------|------|----------------------------------------------------------------|
//! | `clean`     | 0    | every frame is whole and checks out                            |
//! | `torn_tail` | 2    | the last segment ends in a frame never acknowledged; a start cuts it |
//! | `corrupt`   | 3    | damage before the tail, or a newer format: the coordinator refuses to start |

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use super::{log_error, render, InspectError, Output};
use crate::log::{check_segment, segment_file_name, segments, FrameDamage, LogError};

pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_TORN_TAIL: u8 = 2;
pub const EXIT_CORRUPT: u8 = 3;

#[derive(Serialize)]
struct VerifyReport {
    log_dir: String,
    /// `clean`, `torn_tail`, `corrupt`.
    verdict: &'static str,
    exit_code: u8,
    segments: Vec<SegmentVerdict>,
    /// What the verdict means and what to do.
    message: String,
}

#[derive(Serialize)]
struct SegmentVerdict {
    segment: u64,
    segment_file: String,
    bytes: u64,
    /// Whole records before the damage (all of them when `ok`).
    records: u64,
    /// `ok`, `torn_tail`, `corrupt`.
    status: &'static str,
    damage: Option<DamageView>,
}

#[derive(Serialize)]
struct DamageView {
    /// Byte offset of the bad frame (0: the segment header).
    offset: u64,
    reason: String,
    /// Bytes from `offset` to the end of the segment (what a start cuts, for a torn tail).
    bytes_from_offset: u64,
}

pub(crate) fn run(
    dir: &Path,
    output: Output,
    out: &mut dyn Write,
) -> Result<ExitCode, InspectError> {
    let report = report(dir)?;
    if output.json {
        render::json_line(out, &report)?;
    } else {
        write_text(out, dir, &report)?;
    }
    Ok(ExitCode::from(report.exit_code))
}

fn report(dir: &Path) -> Result<VerifyReport, InspectError> {
    let listed = segments(dir).map_err(|source| log_error(dir, source))?;
    let mut verdicts = Vec::new();
    for (index, (seq, path)) in listed.iter().enumerate() {
        let name = segment_file_name(*seq);
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            // Removed by retention since it was listed: all its transactions ended.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(log_error(
                    dir,
                    LogError::Io {
                        context: format!("read segment {name}"),
                        source,
                    },
                ))
            }
        };
        let check = check_segment(&bytes, index + 1 == listed.len());
        verdicts.push(SegmentVerdict {
            segment: *seq,
            segment_file: name,
            bytes: bytes.len() as u64,
            records: check.records,
            status: match &check.damage {
                None => "ok",
                Some(damage) if damage.torn => "torn_tail",
                Some(_) => "corrupt",
            },
            damage: check.damage.map(damage_view),
        });
    }
    let (verdict, exit_code) = if verdicts.iter().any(|s| s.status == "corrupt") {
        ("corrupt", EXIT_CORRUPT)
    } else if verdicts.iter().any(|s| s.status == "torn_tail") {
        ("torn_tail", EXIT_TORN_TAIL)
    } else {
        ("clean", EXIT_CLEAN)
    };
    Ok(VerifyReport {
        log_dir: dir.display().to_string(),
        message: message(verdict, &verdicts),
        verdict,
        exit_code,
        segments: verdicts,
    })
}

fn damage_view(damage: FrameDamage) -> DamageView {
    DamageView {
        offset: damage.offset,
        reason: damage.reason,
        bytes_from_offset: damage.bytes_from_offset,
    }
}

fn message(verdict: &str, segments: &[SegmentVerdict]) -> String {
    let records: u64 = segments.iter().map(|s| s.records).sum();
    let first = segments.iter().find(|s| s.status == verdict);
    let at = first.map_or_else(String::new, |s| {
        let offset = s.damage.as_ref().map_or(0, |d| d.offset);
        format!("{} at byte offset {offset}", s.segment_file)
    });
    match verdict {
        "clean" => format!(
            "every frame checks out: {records} records in {} segment(s)",
            segments.len()
        ),
        "torn_tail" => format!(
            "torn tail at {at}: the last record was never acknowledged as durable; the next coordinator start cuts it (if the coordinator is running, it may be a record being written: run verify again)"
        ),
        _ => format!(
            "corruption at {at}: the coordinator refuses to start on this log. Do not cut it by hand: records after the damage may hold COMMIT decisions; restore the segment from a copy, or keep it for analysis"
        ),
    }
}

fn write_text(out: &mut dyn Write, dir: &Path, report: &VerifyReport) -> std::io::Result<()> {
    writeln!(out, "decision log {}", dir.display())?;
    for segment in &report.segments {
        let status = match &segment.damage {
            None => "ok".to_string(),
            Some(damage) => format!(
                "{} at offset {}: {} ({} bytes from there to the end)",
                segment.status.replace('_', " ").to_uppercase(),
                damage.offset,
                damage.reason,
                damage.bytes_from_offset
            ),
        };
        writeln!(
            out,
            "  {}  {} bytes  {} records  {status}",
            segment.segment_file, segment.bytes, segment.records
        )?;
    }
    writeln!(
        out,
        "verdict: {} (exit {}): {}",
        report.verdict, report.exit_code, report.message
    )
}

//! `inspect stats`: segments and their sizes, records by kind, transactions
//! by state, the oldest undecided and the oldest in-doubt transaction, and
//! the state of the tail. JSON: one `StatsReport` object.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use uuid::Uuid;

use super::model::{self, TxnState, TxnSummary};
use super::render::{self, or_dash};
use super::{log_error, InspectError, LoadedLog, Output};
use crate::log::{segment_file_name, segments};

/// Record kinds in the order a transaction writes them.
const KINDS: [&str; 5] = ["begin", "saga_begin", "commit", "abort", "end"];

#[derive(Serialize)]
struct StatsReport {
    log_dir: String,
    segments: Vec<SegmentStat>,
    segments_count: usize,
    segments_bytes_total: u64,
    records_total: usize,
    /// Every kind, zero or not: begin, saga_begin, commit, abort, end.
    records_by_kind: BTreeMap<String, usize>,
    transactions_total: usize,
    /// Every state, zero or not.
    transactions_by_state: BTreeMap<&'static str, usize>,
    oldest_in_progress: Option<OldestTxn>,
    oldest_in_doubt: Option<OldestTxn>,
    tail: TailStatus,
}

#[derive(Serialize)]
struct SegmentStat {
    segment: u64,
    segment_file: String,
    bytes: u64,
}

#[derive(Serialize)]
struct OldestTxn {
    txid: Uuid,
    idempotency_key: String,
    begun_at_unix_ms: u64,
    age_ms: u64,
}

#[derive(Serialize)]
struct TailStatus {
    /// `clean` or `torn`.
    status: &'static str,
    segment_file: Option<String>,
    offset: Option<u64>,
    bytes: Option<u64>,
}

pub(crate) fn run(
    dir: &Path,
    log: &LoadedLog,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), InspectError> {
    let report = report(dir, log)?;
    if output.json {
        render::json_line(out, &report)?;
        return Ok(());
    }
    write_text(out, &report)?;
    Ok(())
}

fn report(dir: &Path, log: &LoadedLog) -> Result<StatsReport, InspectError> {
    let segments = segment_stats(dir)?;
    let mut records_by_kind: BTreeMap<String, usize> =
        KINDS.iter().map(|kind| (kind.to_string(), 0)).collect();
    for (_, record) in &log.replayed.records {
        *records_by_kind
            .entry(model::kind_name(record.kind))
            .or_default() += 1;
    }
    let tail = match &log.replayed.tail_cut {
        None => TailStatus {
            status: "clean",
            segment_file: None,
            offset: None,
            bytes: None,
        },
        Some(cut) => TailStatus {
            status: "torn",
            segment_file: cut
                .segment
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
            offset: Some(cut.offset),
            bytes: Some(cut.bytes_cut),
        },
    };
    Ok(StatsReport {
        log_dir: dir.display().to_string(),
        segments_count: segments.len(),
        segments_bytes_total: segments.iter().map(|s| s.bytes).sum(),
        segments,
        records_total: log.replayed.records.len(),
        records_by_kind,
        transactions_total: log.txns.len(),
        transactions_by_state: model::count_by_state(&log.txns)
            .into_iter()
            .map(|(state, count)| (state.name(), count))
            .collect(),
        oldest_in_progress: model::oldest(&log.txns, TxnState::InProgress).map(oldest),
        oldest_in_doubt: model::oldest(&log.txns, TxnState::InDoubt).map(oldest),
        tail,
    })
}

/// Each segment's size now; one removed since it was listed is skipped.
fn segment_stats(dir: &Path) -> Result<Vec<SegmentStat>, InspectError> {
    let mut stats = Vec::new();
    for (seq, path) in segments(dir).map_err(|source| log_error(dir, source))? {
        match std::fs::metadata(&path) {
            Ok(metadata) => stats.push(SegmentStat {
                segment: seq,
                segment_file: segment_file_name(seq),
                bytes: metadata.len(),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(InspectError::Output(error)),
        }
    }
    Ok(stats)
}

fn oldest(txn: &TxnSummary) -> OldestTxn {
    OldestTxn {
        txid: txn.txid,
        idempotency_key: txn.idempotency_key.clone(),
        begun_at_unix_ms: txn.begun_at_unix_ms,
        age_ms: txn.age_ms,
    }
}

fn write_text(out: &mut dyn Write, report: &StatsReport) -> std::io::Result<()> {
    writeln!(out, "decision log {}", report.log_dir)?;
    writeln!(
        out,
        "segments:      {} ({} bytes)",
        report.segments_count, report.segments_bytes_total
    )?;
    for segment in &report.segments {
        writeln!(out, "  {}  {} bytes", segment.segment_file, segment.bytes)?;
    }
    let kinds: Vec<String> = KINDS
        .iter()
        .map(|kind| format!("{kind} {}", report.records_by_kind[*kind]))
        .collect();
    writeln!(
        out,
        "records:       {} ({})",
        report.records_total,
        kinds.join(", ")
    )?;
    let states: Vec<String> = TxnState::ALL
        .iter()
        .map(|state| {
            format!(
                "{} {}",
                state.name(),
                report.transactions_by_state[state.name()]
            )
        })
        .collect();
    writeln!(
        out,
        "transactions:  {} ({})",
        report.transactions_total,
        states.join(", ")
    )?;
    for (label, oldest) in [
        ("oldest in_progress:", &report.oldest_in_progress),
        ("oldest in_doubt:   ", &report.oldest_in_doubt),
    ] {
        match oldest {
            None => writeln!(out, "{label} none")?,
            Some(txn) => writeln!(
                out,
                "{label} {} key={} begun {} ({} ago)",
                txn.txid,
                or_dash(&txn.idempotency_key),
                render::timestamp(txn.begun_at_unix_ms),
                render::age(txn.age_ms)
            )?,
        }
    }
    match (&report.tail.segment_file, report.tail.offset, report.tail.bytes) {
        (Some(file), Some(offset), Some(bytes)) => writeln!(
            out,
            "tail:          torn tail of {bytes} bytes at {file} offset {offset} (a restart cuts it; on a running coordinator it may be a record being written)"
        ),
        _ => writeln!(out, "tail:          clean"),
    }
}

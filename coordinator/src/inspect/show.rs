//! `inspect show TXID_OR_KEY [--live]`: one transaction's timeline (every
//! record with its time and position), its derived state, what recovery
//! would do with it, and with `--live` what the running processes say.
//! JSON: one object, a `TxnSummary` plus `records` and `live`.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::list::mode_label;
use super::live::{self, LiveView};
use super::model::{self, RecordView, TxnState, TxnSummary};
use super::render::{self, or_dash};
use super::{load, note_torn_tail, InspectError, Output, ShowArgs};
use crate::config::Config;

/// The JSON object of `show`.
#[derive(Serialize)]
struct ShowJson<'a> {
    #[serde(flatten)]
    txn: &'a TxnSummary,
    records: &'a [RecordView],
    live: Option<&'a LiveView>,
}

pub(crate) async fn run(
    dir: &Path,
    args: &ShowArgs,
    config: Option<&Config>,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), InspectError> {
    let query = args.txid_or_key.trim();
    if model::is_malformed_txid(query) {
        return Err(InspectError::MalformedTxid(query.to_string()));
    }
    if args.live && config.is_none() {
        return Err(InspectError::LiveNeedsConfig);
    }
    let log = load(dir)?;
    note_torn_tail(&log);
    let txn = model::find(&log.txns, query).ok_or_else(|| InspectError::NotFound {
        query: query.to_string(),
        dir: dir.to_path_buf(),
        scanned: log.txns.len(),
    })?;
    let live = match config.filter(|_| args.live) {
        Some(config) => Some(live::query(config, txn).await),
        None => None,
    };
    if output.json {
        let json = ShowJson {
            txn,
            records: &txn.records,
            live: live.as_ref(),
        };
        render::json_line(out, &json)?;
        return Ok(());
    }
    write_summary(out, txn)?;
    write_timeline(out, txn, output)?;
    writeln!(out, "recovery:  {}", txn.recovery_action)?;
    if let Some(live) = &live {
        write_live(out, live)?;
    }
    Ok(())
}

fn write_summary(out: &mut dyn Write, txn: &TxnSummary) -> std::io::Result<()> {
    writeln!(out, "transaction {}", txn.txid)?;
    writeln!(out, "  key:      {}", or_dash(&txn.idempotency_key))?;
    writeln!(out, "  state:    {}", state_sentence(txn))?;
    let outcome = txn.outcome.map_or("none yet", |o| o.name());
    writeln!(out, "  outcome:  {outcome}")?;
    if let Some(abort) = &txn.abort {
        writeln!(out, "  abort:    {}", abort.sentence())?;
    }
    writeln!(out, "  mode:     {}", mode_label(txn))?;
    writeln!(out, "  shards:   {}", or_dash(&txn.shards.join(", ")))?;
    writeln!(
        out,
        "  begun:    {} ({} ago)",
        render::timestamp(txn.begun_at_unix_ms),
        render::age(txn.age_ms)
    )?;
    for leg in &txn.legs {
        let seats = if leg.seats_assigned.is_empty() {
            String::new()
        } else {
            format!(", seats {}", leg.seats_assigned.join(","))
        };
        writeln!(
            out,
            "  leg {}:    {} on {}, {} seat(s){seats}",
            leg.leg_index, leg.flight_id, leg.shard, leg.seat_count
        )?;
    }
    if let Some(note) = &txn.note {
        writeln!(out, "  note:     {note}")?;
    }
    Ok(())
}

/// The derived state, with what it means.
fn state_sentence(txn: &TxnSummary) -> String {
    let meaning = match txn.state {
        TxnState::InProgress => "no decision logged: undecided",
        TxnState::InDoubt => "decided, END not logged: some shard has not acknowledged yet",
        TxnState::Committed => "COMMIT and END logged: every shard acknowledged",
        TxnState::Aborted => "ABORT and END logged: every shard acknowledged",
        TxnState::Ended => {
            "END logged; the outcome is unknown, its record was removed by retention"
        }
    };
    format!("{} ({meaning})", txn.state.name())
}

fn write_timeline(out: &mut dyn Write, txn: &TxnSummary, output: Output) -> std::io::Result<()> {
    writeln!(out, "timeline:")?;
    let rows: Vec<Vec<String>> = txn
        .records
        .iter()
        .map(|record| {
            vec![
                render::timestamp(record.at_unix_ms),
                format!("{}@{}", record.segment_file, record.offset),
                record.kind.to_ascii_uppercase(),
                record.summary.clone(),
            ]
        })
        .collect();
    render::table(
        out,
        &["AT (UTC)", "SEGMENT@OFFSET", "KIND", "SAYS"],
        &rows,
        output.terminal,
    )
}

fn write_live(out: &mut dyn Write, live: &LiveView) -> std::io::Result<()> {
    writeln!(out, "live:")?;
    for line in &live.diagnosis {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

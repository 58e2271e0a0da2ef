//! `inspect list`: one row per transaction, filtered and sorted by
//! `model::Filter`. JSON: one `TxnSummary` object per line, nothing else.

use std::io::Write;

use super::model::{Filter, TxnSummary};
use super::render::{self, or_dash};
use super::{note_torn_tail, InspectError, ListArgs, LoadedLog, Output};

const HEADER: [&str; 8] = [
    "TXID", "STATE", "OUTCOME", "MODE", "AGE", "SHARDS", "LEGS", "KEY",
];

pub(crate) fn run(
    log: &LoadedLog,
    args: &ListArgs,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), InspectError> {
    note_torn_tail(log);
    let filter = Filter {
        states: args.state.clone(),
        older_than: args.older_than,
        flight: args.flight.clone(),
        shard: args.shard.clone(),
        limit: None,
        newest_first: args.newest_first,
    };
    let mut matched = filter.apply(&log.txns);
    let matching = matched.len();
    matched.truncate(args.limit.unwrap_or(usize::MAX));
    if output.json {
        for txn in &matched {
            render::json_line(out, txn)?;
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = matched.iter().map(|txn| row(txn)).collect();
    render::table(out, &HEADER, &rows, output.terminal)?;
    let shown = if matched.len() < matching {
        format!(", {} shown (--limit)", matched.len())
    } else {
        String::new()
    };
    writeln!(
        out,
        "{matching} of {} transactions matched{shown} (log {})",
        log.txns.len(),
        log.dir.display()
    )?;
    Ok(())
}

fn row(txn: &TxnSummary) -> Vec<String> {
    let legs: Vec<&str> = txn.legs.iter().map(|l| l.flight_id.as_str()).collect();
    vec![
        txn.txid.to_string(),
        txn.state.name().to_string(),
        txn.outcome.map_or("-", |o| o.name()).to_string(),
        mode_label(txn),
        render::age(txn.age_ms),
        or_dash(&txn.shards.join(",")),
        match &txn.note {
            Some(note) if legs.is_empty() => format!("({note})"),
            _ => or_dash(&legs.join(",")),
        },
        or_dash(&txn.idempotency_key),
    ]
}

/// `two_phase`, `one_phase` (a two-phase request on one shard), `saga`,
/// `saga one_phase`.
pub(crate) fn mode_label(txn: &TxnSummary) -> String {
    match (txn.mode, txn.one_phase) {
        ("two_phase", true) => "one_phase".into(),
        (mode, true) => format!("{mode} one_phase"),
        (mode, false) => mode.into(),
    }
}

//! Recovery at start: replays the decision log into the registry, then
//! finishes every transaction the log leaves open, in the background, while
//! new bookings are already accepted.
//!
//! The table of cases, with the action and the reason for each, is
//! `protocol::recovery_case`. Replay itself (what the registry must know
//! before the first request is served) runs before the server starts, so a
//! participant asking `GetDecision` never hears ABORT for a txid whose
//! COMMIT record is in the log.

use std::collections::HashMap;
use std::sync::Arc;

use booking_proto::log_v1::LogRecord;
use booking_proto::v1::{AbortDetail, AbortReason, Mode};
use tracing::{error, info};
use uuid::Uuid;

use crate::core::{reply_of, restored_txn, Core};
use crate::log::{Durability, Position, Replayed};
use crate::protocol::{recovery_case, Decided, RecoveryCase, TxnHistory};
use crate::records::TxnHeader;
use crate::registry::NewTxn;
use crate::shards::Decision;

/// A log record whose txid is not 16 bytes passed its checksum: a bug in
/// whoever wrote it.
#[derive(Debug, thiserror::Error)]
#[error("log record at segment {segment} offset {offset} has a {length}-byte txid; expected 16")]
pub struct BadTxid {
    segment: u64,
    offset: u64,
    length: usize,
}

/// How many transactions recovery found in each case.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub records: usize,
    pub ended: usize,
    pub redrive_commit: usize,
    pub redrive_abort: usize,
    pub abort_undecided: usize,
    pub resolve_one_phase: usize,
    pub finish_saga: usize,
    /// END alone: retention removed the transaction's other records; it is
    /// not restored (nothing is left to finish or to answer).
    pub forgotten: usize,
}

/// Groups records by txid, in order of first appearance.
pub fn histories(replayed: &Replayed) -> Result<Vec<(Uuid, TxnHistory)>, BadTxid> {
    group_by_txid(replayed.records.iter().cloned())
}

/// `histories`, taking the records instead of copying them (recovery at
/// start, where the log may hold millions).
fn group_by_txid(
    records: impl Iterator<Item = (Position, LogRecord)>,
) -> Result<Vec<(Uuid, TxnHistory)>, BadTxid> {
    let mut histories: Vec<(Uuid, TxnHistory)> = Vec::new();
    let mut index_of: HashMap<Uuid, usize> = HashMap::new();
    for (position, record) in records {
        let txid = Uuid::from_slice(&record.txid).map_err(|_| BadTxid {
            segment: position.segment,
            offset: position.offset,
            length: record.txid.len(),
        })?;
        let index = *index_of.entry(txid).or_insert_with(|| {
            histories.push((
                txid,
                TxnHistory {
                    first_segment: position.segment,
                    ..TxnHistory::default()
                },
            ));
            histories.len() - 1
        });
        histories[index].1.add(record);
    }
    Ok(histories)
}

/// Restores the registry from the log and starts finishing open
/// transactions. Returns what it found.
pub fn recover(core: &Arc<Core>, replayed: Replayed) -> Result<RecoveryReport, BadTxid> {
    let mut report = RecoveryReport {
        records: replayed.records.len(),
        ..Default::default()
    };
    for (txid, history) in group_by_txid(replayed.records.into_iter())? {
        let case = recovery_case(&history);
        let first = any_record(&history);
        let header = TxnHeader::from_record(txid, richest(&history));
        let begun_at = history
            .begin
            .as_ref()
            .map_or(first.at_unix_ms, |b| b.at_unix_ms);
        let reply = history.decision.as_ref().and_then(|d| d.reply.clone());
        let decided_at = history.decision.as_ref().map_or(0, |d| d.at_unix_ms);
        let txn = restored_txn(&header, begun_at, history.first_segment);
        match case {
            RecoveryCase::Ended if history.decision.is_none() => report.forgotten += 1,
            RecoveryCase::Ended => {
                report.ended += 1;
                let ended_at = history.end.as_ref().map(|e| e.at_unix_ms);
                core.registry.restore(txn, reply, decided_at, ended_at);
            }
            RecoveryCase::RedriveCommit | RecoveryCase::RedriveAbort => {
                let commit = case == RecoveryCase::RedriveCommit;
                if commit {
                    report.redrive_commit += 1
                } else {
                    report.redrive_abort += 1
                }
                core.registry.restore(txn, reply, decided_at, None);
                let shards = shard_indexes(core, &header);
                match (header.mode, commit) {
                    // One-phase: the shard's own local commit (or refusal)
                    // decided, and was final before the outcome was logged;
                    // a COMMIT sent now would be refused as a protocol
                    // violation. A saga's legs are local commits too.
                    _ if header.one_phase => {
                        let core = Arc::clone(core);
                        tokio::spawn(async move { core.log_end(header).await });
                    }
                    (Mode::Saga, true) => {
                        let core = Arc::clone(core);
                        tokio::spawn(async move { core.log_end(header).await });
                    }
                    (Mode::Saga, false) => {
                        core.spawn_phase_two(header, Decision::Compensate, shards)
                    }
                    (_, true) => core.spawn_phase_two(header, Decision::Commit, shards),
                    (_, false) => core.spawn_phase_two(header, Decision::Abort, shards),
                }
            }
            RecoveryCase::AbortUndecided => {
                report.abort_undecided += 1;
                abort_undecided(core, header, txn);
            }
            RecoveryCase::FinishSaga => {
                report.finish_saga += 1;
                core.registry.restore(txn, None, 0, None);
                let shards = shard_indexes(core, &header);
                core.recover_saga(header, shards);
            }
            RecoveryCase::ResolveOnePhase => {
                report.resolve_one_phase += 1;
                core.registry.restore(txn, None, 0, None);
                match shard_indexes(core, &header).first() {
                    Some(shard) => {
                        core.spawn_resolve(header, *shard, "the coordinator restarted".into())
                    }
                    None => {
                        error!(%txid, shards = ?header.shards, "one-phase txid names no configured shard")
                    }
                }
            }
        }
    }
    info!(?report, "recovery: log replayed");
    Ok(report)
}

/// Presumed abort: a 2PC transaction with no decision record was never
/// committed. Decide ABORT now, log it, and release the shards' holds.
fn abort_undecided(core: &Arc<Core>, header: TxnHeader, txn: NewTxn) {
    let first = header.legs.first();
    let detail = AbortDetail {
        reason: AbortReason::CoordinatorRestarted as i32,
        leg_index: first.map_or(0, |l| l.leg_index),
        flight_id: first.map(|l| l.flight_id.clone()).unwrap_or_default(),
        message: "the coordinator restarted before deciding; nothing was booked".into(),
    };
    let reply = reply_of(&header, Decided::Abort(detail));
    core.registry
        .restore(txn, Some(reply.clone()), crate::registry::now_ms(), None);
    let shards = shard_indexes(core, &header);
    let core = Arc::clone(core);
    tokio::spawn(async move {
        if let Err(error) = core
            .log()
            .append(header.decision(&reply), Durability::Written)
            .await
        {
            error!(%error, "decision log failed during recovery");
            core.fatal().cancel();
            return;
        }
        core.spawn_phase_two(header, Decision::Abort, shards);
    });
}

fn shard_indexes(core: &Core, header: &TxnHeader) -> Vec<usize> {
    header
        .shards
        .iter()
        .filter_map(|name| {
            let index = core.shard_index(name);
            if index.is_none() {
                error!(txid = %header.txid, shard = %name, "log names a shard missing from the configuration");
            }
            index
        })
        .collect()
}

fn any_record(history: &TxnHistory) -> &LogRecord {
    history
        .begin
        .as_ref()
        .or(history.decision.as_ref())
        .or(history.end.as_ref())
        .expect("a history holds at least one record")
}

/// The record with the most to say about the transaction (legs and key):
/// the decision, else the BEGIN, else END.
fn richest(history: &TxnHistory) -> &LogRecord {
    history
        .decision
        .as_ref()
        .or(history.begin.as_ref())
        .or(history.end.as_ref())
        .expect("non-empty history")
}

//! Records → one summary per transaction, free of I/O: what `list`, `show`
//! and `stats` print. The grouping by txid and what recovery would do are
//! `recovery::histories` and `protocol::recovery_case`; this module only
//! names the result for operators (a state, an outcome, a sentence) and
//! keeps each transaction's records with their positions for its timeline.
//!
//! | recovery case                  | state         | outcome                      |
//! |--------------------------------|---------------|------------------------------|
//! | Ended, with COMMIT / ABORT     | `committed` / `aborted` | from the decision  |
//! | Ended, END only (retention)    | `ended`       | `unknown`                    |
//! | RedriveCommit / RedriveAbort   | `in_doubt`    | `committed` / `aborted`      |
//! | AbortUndecided, ResolveOnePhase, FinishSaga | `in_progress` | none            |

use std::collections::HashMap;
use std::time::Duration;

use booking_proto::log_v1::{LegSummary, LogRecord, RecordKind};
use booking_proto::v1::{AbortDetail, AbortReason, BookReply, Mode, Outcome};
use serde::Serialize;
use uuid::Uuid;

use crate::log::{segment_file_name, Position, Replayed};
use crate::protocol::{recovery_case, RecoveryCase, TxnHistory};
use crate::recovery::{histories, BadTxid};

/// Records that decode but that recovery's grouping would refuse (it treats
/// them as bugs and panics); the inspector reports them instead.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    BadTxid(#[from] BadTxid),
    #[error("log record at segment {segment} offset {offset} has unknown kind {kind}")]
    UnknownKind {
        segment: u64,
        offset: u64,
        kind: i32,
    },
    #[error(
        "transaction {txid} has both a COMMIT and an ABORT record (the second at segment {segment} offset {offset}): the log breaks the one-decision rule"
    )]
    TwoDecisions {
        txid: String,
        segment: u64,
        offset: u64,
    },
}

/// Where a transaction stands, as the log tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnState {
    /// No decision record: undecided.
    InProgress,
    /// A decision and no END: some shard has not acknowledged it yet.
    InDoubt,
    /// COMMIT and END.
    Committed,
    /// ABORT and END.
    Aborted,
    /// END only: the earlier records were removed by retention.
    Ended,
}

impl TxnState {
    pub const ALL: [TxnState; 5] = [
        TxnState::InProgress,
        TxnState::InDoubt,
        TxnState::Committed,
        TxnState::Aborted,
        TxnState::Ended,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TxnState::InProgress => "in_progress",
            TxnState::InDoubt => "in_doubt",
            TxnState::Committed => "committed",
            TxnState::Aborted => "aborted",
            TxnState::Ended => "ended",
        }
    }

    /// True for states with an END record.
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            TxnState::Committed | TxnState::Aborted | TxnState::Ended
        )
    }
}

/// The decision as the client heard it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOutcome {
    Committed,
    Aborted,
    /// Ended, but the decision record was removed by retention.
    Unknown,
}

impl TxnOutcome {
    pub fn name(self) -> &'static str {
        match self {
            TxnOutcome::Committed => "committed",
            TxnOutcome::Aborted => "aborted",
            TxnOutcome::Unknown => "unknown",
        }
    }
}

/// One leg as the log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LegView {
    pub leg_index: u32,
    pub flight_id: String,
    pub shard: String,
    pub seat_count: u32,
    /// Seats the request named (empty for "any seats").
    pub seats: Vec<String>,
    /// Seats the decision's reply assigned (empty until committed).
    pub seats_assigned: Vec<String>,
    pub passengers: Vec<String>,
}

/// Why a transaction aborted, naming the leg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AbortView {
    /// `sold_out`, `seat_taken`, `unknown_flight`, `shard_unavailable`,
    /// `deadline`, `coordinator_restarted`, `fenced`.
    pub reason: String,
    pub leg_index: u32,
    pub flight_id: String,
    pub message: String,
}

impl AbortView {
    fn of(detail: &AbortDetail) -> AbortView {
        let reason = AbortReason::try_from(detail.reason)
            .map_or_else(|_| format!("reason_{}", detail.reason), reason_name);
        AbortView {
            reason,
            leg_index: detail.leg_index,
            flight_id: detail.flight_id.clone(),
            message: detail.message.clone(),
        }
    }

    /// `sold_out on leg 1 (flight LH400): full`.
    pub fn sentence(&self) -> String {
        format!(
            "{} on leg {} (flight {}): {}",
            self.reason, self.leg_index, self.flight_id, self.message
        )
    }
}

fn reason_name(reason: AbortReason) -> String {
    reason.as_str_name().to_ascii_lowercase()
}

/// One record of a transaction's timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordView {
    /// Segment sequence number, and its file name.
    pub segment: u64,
    pub segment_file: String,
    /// Byte offset of the record's frame in the segment.
    pub offset: u64,
    /// `begin`, `saga_begin`, `commit`, `abort`, `end`.
    pub kind: String,
    pub at_unix_ms: u64,
    /// COMMIT / ABORT: the outcome of the reply the client was given.
    pub outcome: Option<TxnOutcome>,
    /// ABORT: why, naming the leg.
    pub abort: Option<AbortView>,
    /// What the record says, in words.
    pub summary: String,
}

/// Everything the log says about one transaction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TxnSummary {
    pub txid: Uuid,
    pub state: TxnState,
    pub outcome: Option<TxnOutcome>,
    /// `two_phase` or `saga`.
    pub mode: &'static str,
    /// A single-shard transaction, booked by one local commit.
    pub one_phase: bool,
    /// `at_unix_ms` of the BEGIN (of the earliest record left, without it).
    pub begun_at_unix_ms: u64,
    pub decided_at_unix_ms: Option<u64>,
    pub ended_at_unix_ms: Option<u64>,
    /// Milliseconds from `begun_at_unix_ms` to when the log was read.
    pub age_ms: u64,
    pub shards: Vec<String>,
    pub legs: Vec<LegView>,
    /// Empty when the records carrying it were removed.
    pub idempotency_key: String,
    pub abort: Option<AbortView>,
    /// `protocol::RecoveryCase` in snake_case: what a restart does.
    pub recovery_case: &'static str,
    /// The same, in words naming the shards.
    pub recovery_action: String,
    /// Set when the earlier records were removed by retention.
    pub note: Option<String>,
    /// Position of the transaction's first record left in the log.
    #[serde(skip)]
    pub first_position: Position,
    /// Every record of the transaction, in log order.
    #[serde(skip)]
    pub records: Vec<RecordView>,
}

/// What retention leaves: a transaction without its BEGIN.
pub const RETENTION_NOTE: &str = "earlier records removed by retention";

/// Summarises every transaction of `replayed`, in order of first record.
/// `now_unix_ms` is when the log was read (for ages).
pub fn summarize(replayed: &Replayed, now_unix_ms: u64) -> Result<Vec<TxnSummary>, ModelError> {
    check_records(replayed)?;
    let mut timelines: HashMap<Uuid, Vec<RecordView>> = HashMap::new();
    let mut first_positions: HashMap<Uuid, Position> = HashMap::new();
    for (position, record) in &replayed.records {
        let txid = Uuid::from_slice(&record.txid).expect("check_records checked every txid");
        first_positions.entry(txid).or_insert(*position);
        timelines
            .entry(txid)
            .or_default()
            .push(record_view(*position, record));
    }
    let summaries = histories(replayed)?
        .into_iter()
        .map(|(txid, history)| {
            let mut summary = summary_of(txid, &history, now_unix_ms);
            summary.first_position = first_positions[&txid];
            summary.records = timelines.remove(&txid).unwrap_or_default();
            summary
        })
        .collect();
    Ok(summaries)
}

/// Refuses what `TxnHistory::add` would panic on: an unknown kind, two
/// different decisions for one txid. Also checks every txid's length.
fn check_records(replayed: &Replayed) -> Result<(), ModelError> {
    let mut decisions: HashMap<&[u8], i32> = HashMap::new();
    for (position, record) in &replayed.records {
        if record.txid.len() != 16 {
            // `histories` names the record; let it.
            return histories(replayed).map(|_| ()).map_err(ModelError::from);
        }
        let kind = RecordKind::try_from(record.kind);
        match kind {
            Ok(RecordKind::Commit | RecordKind::Abort) => {
                let first = *decisions.entry(&record.txid).or_insert(record.kind);
                if first != record.kind {
                    return Err(ModelError::TwoDecisions {
                        txid: Uuid::from_slice(&record.txid)
                            .expect("16 bytes")
                            .to_string(),
                        segment: position.segment,
                        offset: position.offset,
                    });
                }
            }
            Ok(RecordKind::Begin | RecordKind::SagaBegin | RecordKind::End) => {}
            Ok(RecordKind::Unspecified) | Err(_) => {
                return Err(ModelError::UnknownKind {
                    segment: position.segment,
                    offset: position.offset,
                    kind: record.kind,
                })
            }
        }
    }
    Ok(())
}

fn summary_of(txid: Uuid, history: &TxnHistory, now_unix_ms: u64) -> TxnSummary {
    let case = recovery_case(history);
    let richest = history
        .decision
        .as_ref()
        .or(history.begin.as_ref())
        .or(history.end.as_ref())
        .expect("a history holds at least one record");
    let reply = history.decision.as_ref().and_then(|d| d.reply.as_ref());
    let begun_at = history
        .begin
        .as_ref()
        .or(history.decision.as_ref())
        .or(history.end.as_ref())
        .map_or(0, |r| r.at_unix_ms);
    let (state, outcome) = state_of(case, history);
    let mode = mode_of(richest);
    let shards = richest.shards.clone();
    TxnSummary {
        txid,
        state,
        outcome,
        mode: mode_name(mode),
        one_phase: richest.one_phase,
        begun_at_unix_ms: begun_at,
        decided_at_unix_ms: history.decision.as_ref().map(|d| d.at_unix_ms),
        ended_at_unix_ms: history.end.as_ref().map(|e| e.at_unix_ms),
        age_ms: now_unix_ms.saturating_sub(begun_at),
        legs: legs_of(&richest.legs, reply),
        idempotency_key: richest.idempotency_key.clone(),
        abort: reply.and_then(|r| r.abort.as_ref()).map(AbortView::of),
        recovery_case: case_name(case),
        recovery_action: recovery_action(case, mode, richest.one_phase, &shards),
        note: history.begin.is_none().then(|| RETENTION_NOTE.to_string()),
        shards,
        first_position: Position {
            segment: 0,
            offset: 0,
        },
        records: Vec::new(),
    }
}

/// The table in the module docs.
fn state_of(case: RecoveryCase, history: &TxnHistory) -> (TxnState, Option<TxnOutcome>) {
    let decided = history.decision.as_ref().map(|d| {
        if d.kind == RecordKind::Commit as i32 {
            TxnOutcome::Committed
        } else {
            TxnOutcome::Aborted
        }
    });
    match (case, decided) {
        (RecoveryCase::Ended, Some(TxnOutcome::Committed)) => {
            (TxnState::Committed, Some(TxnOutcome::Committed))
        }
        (RecoveryCase::Ended, Some(_)) => (TxnState::Aborted, Some(TxnOutcome::Aborted)),
        (RecoveryCase::Ended, None) => (TxnState::Ended, Some(TxnOutcome::Unknown)),
        (RecoveryCase::RedriveCommit | RecoveryCase::RedriveAbort, outcome) => {
            (TxnState::InDoubt, outcome)
        }
        (
            RecoveryCase::AbortUndecided | RecoveryCase::ResolveOnePhase | RecoveryCase::FinishSaga,
            _,
        ) => (TxnState::InProgress, None),
    }
}

fn mode_of(record: &LogRecord) -> Mode {
    Mode::try_from(record.mode).unwrap_or(Mode::TwoPhase)
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::TwoPhase => "two_phase",
        Mode::Saga => "saga",
    }
}

pub fn case_name(case: RecoveryCase) -> &'static str {
    match case {
        RecoveryCase::Ended => "ended",
        RecoveryCase::RedriveCommit => "redrive_commit",
        RecoveryCase::RedriveAbort => "redrive_abort",
        RecoveryCase::AbortUndecided => "abort_undecided",
        RecoveryCase::ResolveOnePhase => "resolve_one_phase",
        RecoveryCase::FinishSaga => "finish_saga",
    }
}

/// What a restart of the coordinator does with the transaction, in words
/// (the table of `protocol::recovery_case`, and `recovery::recover`).
pub fn recovery_action(
    case: RecoveryCase,
    mode: Mode,
    one_phase: bool,
    shards: &[String],
) -> String {
    let names = if shards.is_empty() {
        "its shards".to_string()
    } else {
        shards.join(", ")
    };
    let saga = mode == Mode::Saga;
    match case {
        RecoveryCase::Ended => "nothing: every shard acknowledged the decision (END is logged)".into(),
        RecoveryCase::RedriveCommit | RecoveryCase::RedriveAbort if one_phase => {
            "a restart logs END (the shard's own local commit decided; nothing to deliver)".into()
        }
        RecoveryCase::RedriveCommit if saga => {
            "a restart logs END (every leg of a committed saga is already a local commit)".into()
        }
        RecoveryCase::RedriveCommit => format!("a restart re-sends COMMIT to {names}, then logs END"),
        RecoveryCase::RedriveAbort if saga => {
            format!("a restart compensates {names} again (idempotent), then logs END")
        }
        RecoveryCase::RedriveAbort => format!("a restart re-sends ABORT to {names}, then logs END"),
        RecoveryCase::AbortUndecided => format!(
            "a restart decides ABORT (presumed abort: no COMMIT record, so no client was told COMMITTED), logs it and sends ABORT to {names}"
        ),
        RecoveryCase::ResolveOnePhase => format!(
            "a restart asks {names} (Resolve) what its local commit did, fencing the txid if it never arrived, and logs that outcome"
        ),
        RecoveryCase::FinishSaga => format!(
            "a restart asks {names} (Resolve) about each leg: all booked, it logs COMMIT; otherwise it logs ABORT and compensates every shard"
        ),
    }
}

fn legs_of(legs: &[LegSummary], reply: Option<&BookReply>) -> Vec<LegView> {
    legs.iter()
        .map(|leg| LegView {
            leg_index: leg.leg_index,
            flight_id: leg.flight_id.clone(),
            shard: leg.shard.clone(),
            seat_count: leg.seat_count,
            seats: leg.seats.clone(),
            seats_assigned: reply
                .and_then(|r| r.legs.iter().find(|l| l.leg_index == leg.leg_index))
                .map(|l| l.seats.clone())
                .unwrap_or_default(),
            passengers: leg.passengers.clone(),
        })
        .collect()
}

pub fn kind_name(kind: i32) -> String {
    match RecordKind::try_from(kind) {
        Ok(RecordKind::Begin) => "begin".into(),
        Ok(RecordKind::SagaBegin) => "saga_begin".into(),
        Ok(RecordKind::Commit) => "commit".into(),
        Ok(RecordKind::Abort) => "abort".into(),
        Ok(RecordKind::End) => "end".into(),
        Ok(RecordKind::Unspecified) | Err(_) => format!("kind_{kind}"),
    }
}

/// The timeline entry of one record.
pub fn record_view(position: Position, record: &LogRecord) -> RecordView {
    let reply = record.reply.as_ref();
    let outcome = reply.map(|r| {
        if r.outcome == Outcome::Committed as i32 {
            TxnOutcome::Committed
        } else {
            TxnOutcome::Aborted
        }
    });
    let abort = reply.and_then(|r| r.abort.as_ref()).map(AbortView::of);
    RecordView {
        segment: position.segment,
        segment_file: segment_file_name(position.segment),
        offset: position.offset,
        kind: kind_name(record.kind),
        at_unix_ms: record.at_unix_ms,
        outcome,
        summary: record_summary(record, abort.as_ref()),
        abort,
    }
}

/// What one record says, in words.
fn record_summary(record: &LogRecord, abort: Option<&AbortView>) -> String {
    let mode = mode_name(mode_of(record));
    let one_phase = if record.one_phase { ", one-phase" } else { "" };
    match RecordKind::try_from(record.kind) {
        Ok(RecordKind::Begin | RecordKind::SagaBegin) => format!(
            "started ({mode}{one_phase}) on {}; legs {}",
            record.shards.join(", "),
            legs_text(&record.legs, None)
        ),
        Ok(RecordKind::Commit) => {
            let seats = legs_text(&record.legs, record.reply.as_ref());
            format!("decided COMMIT; reply COMMITTED, seats {seats}")
        }
        Ok(RecordKind::Abort) => match abort {
            Some(abort) => format!("decided ABORT; reply ABORTED: {}", abort.sentence()),
            None => "decided ABORT; reply ABORTED".into(),
        },
        Ok(RecordKind::End) => format!("every shard acknowledged ({})", record.shards.join(", ")),
        Ok(RecordKind::Unspecified) | Err(_) => format!("record of unknown kind {}", record.kind),
    }
}

/// `0 BA117@s0 x2, 1 LH400@s1 [12A,12B]`; with a reply, the assigned seats.
pub fn legs_text(legs: &[LegSummary], reply: Option<&BookReply>) -> String {
    if legs.is_empty() {
        return "-".into();
    }
    let views = legs_of(legs, reply);
    views
        .iter()
        .map(|leg| {
            let seats = if !leg.seats_assigned.is_empty() {
                format!("[{}]", leg.seats_assigned.join(","))
            } else if !leg.seats.is_empty() {
                format!("[{}]", leg.seats.join(","))
            } else {
                format!("x{}", leg.seat_count)
            };
            format!("{} {}@{} {seats}", leg.leg_index, leg.flight_id, leg.shard)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `--state` value: one state, or a group of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum StateFilter {
    InProgress,
    InDoubt,
    Committed,
    Aborted,
    /// committed, aborted, or ended with the outcome unknown.
    Ended,
    /// in_progress or in_doubt.
    Open,
}

impl StateFilter {
    pub fn matches(self, state: TxnState) -> bool {
        match self {
            StateFilter::InProgress => state == TxnState::InProgress,
            StateFilter::InDoubt => state == TxnState::InDoubt,
            StateFilter::Committed => state == TxnState::Committed,
            StateFilter::Aborted => state == TxnState::Aborted,
            StateFilter::Ended => state.is_ended(),
            StateFilter::Open => !state.is_ended(),
        }
    }
}

/// Which transactions `list` prints, and in which order.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Any of these; all states when empty.
    pub states: Vec<StateFilter>,
    pub older_than: Option<Duration>,
    pub flight: Option<String>,
    pub shard: Option<String>,
    pub limit: Option<usize>,
    pub newest_first: bool,
}

impl Filter {
    fn keeps(&self, txn: &TxnSummary) -> bool {
        let state = self.states.is_empty() || self.states.iter().any(|s| s.matches(txn.state));
        let old = self
            .older_than
            .is_none_or(|age| u128::from(txn.age_ms) > age.as_millis());
        let flight = self.flight.as_ref().is_none_or(|flight| {
            txn.legs
                .iter()
                .any(|l| l.flight_id.eq_ignore_ascii_case(flight))
        });
        let shard = self
            .shard
            .as_ref()
            .is_none_or(|shard| txn.shards.iter().any(|s| s == shard));
        state && old && flight && shard
    }

    /// The matching transactions, oldest first (or newest first), at most
    /// `limit`; ties keep log order.
    pub fn apply<'a>(&self, txns: &'a [TxnSummary]) -> Vec<&'a TxnSummary> {
        let mut kept: Vec<&TxnSummary> = txns.iter().filter(|t| self.keeps(t)).collect();
        kept.sort_by_key(|t| (t.begun_at_unix_ms, t.first_position));
        if self.newest_first {
            kept.reverse();
        }
        kept.truncate(self.limit.unwrap_or(usize::MAX));
        kept
    }
}

/// Finds the transaction `query` names: a txid, else an idempotency key.
pub fn find<'a>(txns: &'a [TxnSummary], query: &str) -> Option<&'a TxnSummary> {
    if query.is_empty() {
        return None; // END-only transactions have an empty key.
    }
    let by_txid = Uuid::parse_str(query)
        .ok()
        .and_then(|txid| txns.iter().find(|t| t.txid == txid));
    by_txid.or_else(|| txns.iter().find(|t| t.idempotency_key == query))
}

/// True for text shaped like a hyphenated UUID (36 characters, hyphens at
/// 8, 13, 18, 23) that is not a valid one: a mistyped txid, not a key.
pub fn is_malformed_txid(query: &str) -> bool {
    let shaped = query.len() == 36
        && query
            .char_indices()
            .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-'));
    shaped && Uuid::parse_str(query).is_err()
}

/// Counts of transactions by state, every state present (zero or not).
pub fn count_by_state(txns: &[TxnSummary]) -> Vec<(TxnState, usize)> {
    TxnState::ALL
        .iter()
        .map(|state| (*state, txns.iter().filter(|t| t.state == *state).count()))
        .collect()
}

/// The oldest transaction in `state`, if any.
pub fn oldest(txns: &[TxnSummary], state: TxnState) -> Option<&TxnSummary> {
    txns.iter()
        .filter(|t| t.state == state)
        .min_by_key(|t| (t.begun_at_unix_ms, t.first_position))
}

#[cfg(test)]
#[path = "model_test.rs"]
mod tests;

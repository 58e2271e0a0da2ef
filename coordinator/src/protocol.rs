//! The two-phase-commit decision, free of I/O.
//!
//! `VoteTally` takes events (a vote, a failed call, the deadline) and says
//! when the transaction is decided and how. `recovery_case` maps what the
//! decision log holds about one transaction to what recovery must do. The
//! runtime in `booking.rs` and `recovery.rs` performs the actions; the hard
//! cases are plain unit tests here.

use booking_proto::log_v1::{LogRecord, RecordKind};
use booking_proto::v1::{AbortDetail, AbortReason, LegResult, ShardLeg, Vote};

/// The decision of a transaction, with what the client is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    /// Every shard voted YES; the seats of every leg, in leg order.
    Commit(Vec<LegResult>),
    /// Some shard voted NO, failed, or the deadline passed.
    Abort(AbortDetail),
}

/// What happened to one PREPARE.
#[derive(Debug, Clone)]
pub enum VoteEvent {
    Vote(Vote),
    /// The call failed (unreachable, refused, timed out): counts as NO.
    Failed(String),
}

/// Collects the votes of every shard of one transaction.
#[derive(Debug)]
pub struct VoteTally {
    /// The legs sent to each shard, by position in the transaction's shard list.
    legs: Vec<Vec<ShardLeg>>,
    /// `voted[i]` is true once shard i's vote is in.
    voted: Vec<bool>,
    held: Vec<LegResult>,
    decided: bool,
}

impl VoteTally {
    pub fn new(legs: Vec<Vec<ShardLeg>>) -> VoteTally {
        assert!(
            !legs.is_empty() && legs.iter().all(|l| !l.is_empty()),
            "every shard of a transaction has legs"
        );
        let voted = vec![false; legs.len()];
        VoteTally {
            legs,
            voted,
            held: Vec::new(),
            decided: false,
        }
    }

    /// Records shard `shard`'s vote; returns the decision once it is known.
    pub fn on_vote(&mut self, shard: usize, event: VoteEvent) -> Option<Decided> {
        assert!(!self.decided, "no vote is counted after the decision");
        assert!(!self.voted[shard], "shard {shard} voted twice");
        self.voted[shard] = true;
        match event {
            VoteEvent::Vote(vote) if vote.yes => self.on_yes(shard, vote.legs),
            VoteEvent::Vote(vote) => self.decide_abort(vote.refusal.unwrap_or_else(|| {
                self.detail(
                    shard,
                    AbortReason::ShardUnavailable,
                    "the shard voted NO without a reason".into(),
                )
            })),
            VoteEvent::Failed(message) => {
                let detail = self.detail(shard, AbortReason::ShardUnavailable, message);
                self.decide_abort(detail)
            }
        }
    }

    /// The deadline passed before every vote was in.
    pub fn on_deadline(&mut self, timeout_ms: u32) -> Decided {
        assert!(!self.decided, "the deadline fires only while undecided");
        let waiting = self
            .voted
            .iter()
            .position(|v| !v)
            .expect("undecided means some vote is missing");
        let message = format!("no vote within the {timeout_ms} ms deadline");
        let detail = self.detail(waiting, AbortReason::Deadline, message);
        self.decide_abort(detail).expect("an abort decides")
    }

    fn on_yes(&mut self, shard: usize, legs: Vec<LegResult>) -> Option<Decided> {
        let expected: Vec<u32> = self.legs[shard].iter().map(|l| l.leg_index).collect();
        let mut got: Vec<u32> = legs.iter().map(|l| l.leg_index).collect();
        got.sort_unstable();
        if got != expected {
            let message = format!("YES vote covers legs {got:?}, expected {expected:?}");
            let detail = self.detail(shard, AbortReason::ShardUnavailable, message);
            return self.decide_abort(detail);
        }
        self.held.extend(legs);
        if self.voted.iter().all(|v| *v) {
            self.decided = true;
            let mut held = std::mem::take(&mut self.held);
            held.sort_by_key(|l| l.leg_index);
            return Some(Decided::Commit(held));
        }
        None
    }

    fn decide_abort(&mut self, detail: AbortDetail) -> Option<Decided> {
        self.decided = true;
        Some(Decided::Abort(detail))
    }

    fn detail(&self, shard: usize, reason: AbortReason, message: String) -> AbortDetail {
        let leg = &self.legs[shard][0];
        AbortDetail {
            reason: reason as i32,
            leg_index: leg.leg_index,
            flight_id: leg.flight_id.clone(),
            message,
        }
    }
}

/// What the log says about one transaction, gathered by txid.
#[derive(Debug, Default, Clone)]
pub struct TxnHistory {
    /// The log segment of the transaction's first record (retention).
    pub first_segment: u64,
    pub begin: Option<LogRecord>,
    pub decision: Option<LogRecord>,
    pub end: Option<LogRecord>,
}

impl TxnHistory {
    pub fn add(&mut self, record: LogRecord) {
        match RecordKind::try_from(record.kind) {
            Ok(RecordKind::Begin | RecordKind::SagaBegin) => self.begin = Some(record),
            Ok(RecordKind::Commit | RecordKind::Abort) => {
                if let Some(previous) = &self.decision {
                    assert_eq!(
                        previous.kind, record.kind,
                        "a transaction has one decision, never two different ones"
                    );
                }
                self.decision = Some(record);
            }
            Ok(RecordKind::End) => self.end = Some(record),
            Ok(RecordKind::Unspecified) | Err(_) => {
                panic!(
                    "log record of unknown kind {} passed the version check",
                    record.kind
                )
            }
        }
    }
}

/// What recovery does with one transaction found in the log.
///
/// | log holds                          | case             | action, and why                                        |
/// |------------------------------------|------------------|--------------------------------------------------------|
/// | END                                | Ended            | nothing: every shard acknowledged (END alone: retention|
/// |                                    |                  | removed the rest; the transaction is forgotten)        |
/// | COMMIT, no END                     | RedriveCommit    | COMMIT every shard, then END: the decision is durable  |
/// | ABORT, no END                      | RedriveAbort     | ABORT every shard, then END                            |
/// | 2PC BEGIN only                     | AbortUndecided   | log ABORT, ABORT every shard: presumed abort; no client|
/// |                                    |                  | was told COMMITTED, no COMMIT record exists            |
/// | one-phase BEGIN only               | ResolveOnePhase  | ask the shard (Resolve fences an unknown txid), log the|
/// |                                    |                  | outcome it reports: the shard's local commit decided   |
/// | multi-shard SAGA_BEGIN only        | FinishSaga       | ask every shard (Resolve fences); all booked: log      |
/// |                                    |                  | COMMIT; else log ABORT and compensate every shard      |
///
/// For a saga, RedriveCommit only writes END (every leg is already a local
/// commit) and RedriveAbort compensates every shard again (idempotent). For
/// a one-phase booking both only write END: the shard's local commit (or
/// refusal) decided before the outcome was logged, and a COMMIT sent to it
/// would be refused as a protocol violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryCase {
    Ended,
    RedriveCommit,
    RedriveAbort,
    AbortUndecided,
    ResolveOnePhase,
    FinishSaga,
}

pub fn recovery_case(history: &TxnHistory) -> RecoveryCase {
    if history.end.is_some() {
        return RecoveryCase::Ended;
    }
    if let Some(decision) = &history.decision {
        return if decision.kind == RecordKind::Commit as i32 {
            RecoveryCase::RedriveCommit
        } else {
            RecoveryCase::RedriveAbort
        };
    }
    let begin = history
        .begin
        .as_ref()
        .expect("a history holds at least one record");
    if begin.one_phase {
        RecoveryCase::ResolveOnePhase
    } else if begin.kind == RecordKind::SagaBegin as i32 {
        RecoveryCase::FinishSaga
    } else {
        RecoveryCase::AbortUndecided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(index: u32, flight: &str) -> ShardLeg {
        ShardLeg {
            leg_index: index,
            flight_id: flight.into(),
            seat_count: 1,
            ..Default::default()
        }
    }

    fn yes(legs: &[(u32, &str)]) -> VoteEvent {
        VoteEvent::Vote(Vote {
            yes: true,
            legs: legs
                .iter()
                .map(|(i, seat)| LegResult {
                    leg_index: *i,
                    seats: vec![seat.to_string()],
                    ..Default::default()
                })
                .collect(),
            refusal: None,
        })
    }

    fn tally() -> VoteTally {
        VoteTally::new(vec![vec![leg(0, "A"), leg(2, "C")], vec![leg(1, "B")]])
    }

    #[test]
    fn all_yes_commits_with_legs_in_request_order() {
        let mut tally = tally();
        assert_eq!(tally.on_vote(1, yes(&[(1, "2B")])), None);
        let Some(Decided::Commit(legs)) = tally.on_vote(0, yes(&[(2, "3C"), (0, "1A")])) else {
            panic!("all YES must commit")
        };
        let order: Vec<u32> = legs.iter().map(|l| l.leg_index).collect();
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[test]
    fn one_no_aborts_at_once_naming_the_leg() {
        let mut tally = tally();
        let refusal = AbortDetail {
            reason: AbortReason::SoldOut as i32,
            leg_index: 1,
            flight_id: "B".into(),
            message: "full".into(),
        };
        let vote = VoteEvent::Vote(Vote {
            yes: false,
            legs: vec![],
            refusal: Some(refusal.clone()),
        });
        assert_eq!(tally.on_vote(1, vote), Some(Decided::Abort(refusal)));
    }

    #[test]
    fn a_failed_call_aborts_as_shard_unavailable() {
        let mut tally = tally();
        let Some(Decided::Abort(detail)) =
            tally.on_vote(0, VoteEvent::Failed("connection refused".into()))
        else {
            panic!("a failure must abort")
        };
        assert_eq!(detail.reason, AbortReason::ShardUnavailable as i32);
        assert_eq!((detail.leg_index, detail.flight_id.as_str()), (0, "A"));
    }

    #[test]
    fn the_deadline_names_a_shard_that_has_not_voted() {
        let mut tally = tally();
        assert_eq!(tally.on_vote(0, yes(&[(0, "1A"), (2, "1C")])), None);
        let Decided::Abort(detail) = tally.on_deadline(50) else {
            panic!("deadline aborts")
        };
        assert_eq!(detail.reason, AbortReason::Deadline as i32);
        assert_eq!(detail.flight_id, "B");
    }

    #[test]
    fn a_yes_vote_missing_a_leg_aborts() {
        let mut tally = tally();
        let Some(Decided::Abort(detail)) = tally.on_vote(0, yes(&[(0, "1A")])) else {
            panic!("must abort")
        };
        assert!(detail.message.contains("expected"), "{}", detail.message);
    }

    fn record(kind: RecordKind, one_phase: bool) -> LogRecord {
        LogRecord {
            kind: kind as i32,
            one_phase,
            ..Default::default()
        }
    }

    #[test]
    fn recovery_cases_follow_the_table() {
        let history = |records: Vec<LogRecord>| {
            let mut h = TxnHistory::default();
            records.into_iter().for_each(|r| h.add(r));
            h
        };
        use RecordKind::*;
        let cases = [
            (vec![record(Begin, false)], RecoveryCase::AbortUndecided),
            (vec![record(Begin, true)], RecoveryCase::ResolveOnePhase),
            (vec![record(SagaBegin, false)], RecoveryCase::FinishSaga),
            (vec![record(SagaBegin, true)], RecoveryCase::ResolveOnePhase),
            (
                vec![record(SagaBegin, false), record(Abort, false)],
                RecoveryCase::RedriveAbort,
            ),
            (
                vec![record(Begin, false), record(Commit, false)],
                RecoveryCase::RedriveCommit,
            ),
            (vec![record(Commit, false)], RecoveryCase::RedriveCommit),
            (
                vec![record(Begin, false), record(Abort, false)],
                RecoveryCase::RedriveAbort,
            ),
            (
                vec![record(Begin, true), record(Commit, true), record(End, true)],
                RecoveryCase::Ended,
            ),
            (
                vec![
                    record(Begin, false),
                    record(Abort, false),
                    record(End, false),
                ],
                RecoveryCase::Ended,
            ),
        ];
        for (records, expected) in cases {
            assert_eq!(
                recovery_case(&history(records.clone())),
                expected,
                "{records:?}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "one decision")]
    fn two_different_decisions_are_a_bug() {
        let mut h = TxnHistory::default();
        h.add(record(RecordKind::Commit, false));
        h.add(record(RecordKind::Abort, false));
    }
}

//! Unit tests of `model.rs`: states, outcomes, timelines, filters and
//! lookups derived from hand-made records.

use booking_proto::v1::LegResult;

use super::*;

const T0: u64 = 1_760_000_000_000;

fn txid(n: u8) -> Vec<u8> {
    vec![n; 16]
}

fn leg(index: u32, flight: &str, shard: &str) -> LegSummary {
    LegSummary {
        leg_index: index,
        flight_id: flight.into(),
        shard: shard.into(),
        seat_count: 2,
        ..Default::default()
    }
}

fn record(n: u8, kind: RecordKind, at: u64) -> LogRecord {
    LogRecord {
        format_version: 1,
        kind: kind as i32,
        txid: txid(n),
        at_unix_ms: T0 + at,
        shards: vec!["s0".into(), "s1".into()],
        idempotency_key: format!("key-{n}"),
        legs: vec![leg(0, "BA117", "s0"), leg(1, "LH400", "s1")],
        ..Default::default()
    }
}

fn decision(n: u8, commit: bool, at: u64) -> LogRecord {
    let reply = if commit {
        BookReply {
            outcome: Outcome::Committed as i32,
            legs: vec![
                LegResult {
                    leg_index: 0,
                    seats: vec!["1A".into(), "1B".into()],
                    ..Default::default()
                },
                LegResult {
                    leg_index: 1,
                    seats: vec!["2A".into(), "2B".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    } else {
        BookReply {
            outcome: Outcome::Aborted as i32,
            abort: Some(AbortDetail {
                reason: AbortReason::SoldOut as i32,
                leg_index: 1,
                flight_id: "LH400".into(),
                message: "2 seats wanted, 0 free".into(),
            }),
            ..Default::default()
        }
    };
    let kind = if commit {
        RecordKind::Commit
    } else {
        RecordKind::Abort
    };
    LogRecord {
        reply: Some(reply),
        ..record(n, kind, at)
    }
}

fn end(n: u8, at: u64) -> LogRecord {
    LogRecord {
        legs: Vec::new(),
        idempotency_key: String::new(),
        ..record(n, RecordKind::End, at)
    }
}

fn replayed(records: Vec<LogRecord>) -> Replayed {
    Replayed {
        records: records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let position = Position {
                    segment: 1,
                    offset: 8 + 100 * i as u64,
                };
                (position, r)
            })
            .collect(),
        tail_cut: None,
    }
}

fn summaries(records: Vec<LogRecord>) -> Vec<TxnSummary> {
    summarize(&replayed(records), T0 + 60_000).expect("summarize")
}

/// One transaction in each state, begun in the order 1..=5.
fn every_state() -> Vec<TxnSummary> {
    summaries(vec![
        record(1, RecordKind::Begin, 0),
        decision(1, true, 5),
        record(2, RecordKind::Begin, 10),
        record(3, RecordKind::Begin, 20),
        decision(3, true, 25),
        end(1, 30),
        record(4, RecordKind::Begin, 40),
        decision(4, false, 41),
        end(4, 42),
        end(5, 50),
    ])
}

fn state_of_key(txns: &[TxnSummary], n: u8) -> TxnState {
    let txid = Uuid::from_slice(&txid(n)).unwrap();
    txns.iter().find(|t| t.txid == txid).unwrap().state
}

#[test]
fn states_follow_the_recovery_case() {
    let txns = every_state();
    assert_eq!(txns.len(), 5);
    assert_eq!(state_of_key(&txns, 1), TxnState::Committed);
    assert_eq!(state_of_key(&txns, 2), TxnState::InProgress);
    assert_eq!(state_of_key(&txns, 3), TxnState::InDoubt);
    assert_eq!(state_of_key(&txns, 4), TxnState::Aborted);
    assert_eq!(state_of_key(&txns, 5), TxnState::Ended);
    let in_doubt = &txns[2];
    assert_eq!(in_doubt.outcome, Some(TxnOutcome::Committed));
    assert_eq!(in_doubt.recovery_case, "redrive_commit");
    assert_eq!(
        in_doubt.recovery_action,
        "a restart re-sends COMMIT to s0, s1, then logs END"
    );
    assert_eq!(txns[1].recovery_case, "abort_undecided");
    assert!(txns[1].recovery_action.contains("presumed abort"));
    assert_eq!(txns[1].outcome, None);
}

#[test]
fn a_committed_transaction_carries_its_legs_seats_and_timeline() {
    let txns = every_state();
    let committed = &txns[0];
    assert_eq!(committed.idempotency_key, "key-1");
    assert_eq!(committed.mode, "two_phase");
    assert_eq!((committed.begun_at_unix_ms, committed.age_ms), (T0, 60_000));
    assert_eq!(committed.decided_at_unix_ms, Some(T0 + 5));
    assert_eq!(committed.ended_at_unix_ms, Some(T0 + 30));
    assert_eq!(committed.legs[1].flight_id, "LH400");
    assert_eq!(committed.legs[1].seats_assigned, ["2A", "2B"]);
    let kinds: Vec<&str> = committed.records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["begin", "commit", "end"]);
    assert_eq!(committed.records[2].offset, 8 + 500);
    assert!(
        committed.records[1].summary.contains("0 BA117@s0 [1A,1B]"),
        "{}",
        committed.records[1].summary
    );
    assert_eq!(committed.note, None);
}

#[test]
fn an_abort_names_its_reason_and_leg() {
    let aborted = &every_state()[3];
    let abort = aborted.abort.as_ref().expect("abort detail");
    assert_eq!(abort.reason, "sold_out");
    assert_eq!(
        abort.sentence(),
        "sold_out on leg 1 (flight LH400): 2 seats wanted, 0 free"
    );
    assert!(aborted.records[1].summary.contains("sold_out on leg 1"));
}

#[test]
fn an_end_without_earlier_records_is_ended_with_the_outcome_unknown() {
    let ended = &every_state()[4];
    assert_eq!(ended.outcome, Some(TxnOutcome::Unknown));
    assert_eq!(ended.note.as_deref(), Some(RETENTION_NOTE));
    assert_eq!(ended.shards, ["s0", "s1"]);
    assert!(ended.legs.is_empty() && ended.idempotency_key.is_empty());
}

#[test]
fn filters_pick_states_ages_flights_shards_and_order() {
    let txns = every_state();
    let keys = |filter: &Filter| -> Vec<u8> {
        filter
            .apply(&txns)
            .iter()
            .map(|t| t.txid.as_bytes()[0])
            .collect()
    };
    let states = |states: Vec<StateFilter>| Filter {
        states,
        ..Default::default()
    };
    assert_eq!(keys(&Filter::default()), [1, 2, 3, 4, 5]);
    assert_eq!(keys(&states(vec![StateFilter::Open])), [2, 3]);
    assert_eq!(keys(&states(vec![StateFilter::Ended])), [1, 4, 5]);
    assert_eq!(
        keys(&states(vec![StateFilter::InDoubt, StateFilter::Aborted])),
        [3, 4]
    );
    let newest = Filter {
        newest_first: true,
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(keys(&newest), [5, 4]);
    let old = Filter {
        older_than: Some(Duration::from_millis(60_000 - 20)),
        ..Default::default()
    };
    assert_eq!(keys(&old), [1, 2], "age over 59.98 s: begun before T0+20");
    let flight = Filter {
        flight: Some("lh400".into()),
        ..Default::default()
    };
    assert_eq!(keys(&flight), [1, 2, 3, 4], "the END-only one has no legs");
    let shard = Filter {
        shard: Some("s9".into()),
        ..Default::default()
    };
    assert!(keys(&shard).is_empty());
}

#[test]
fn find_takes_a_txid_or_a_key() {
    let txns = every_state();
    let txid = Uuid::from_slice(&txid(3)).unwrap();
    assert_eq!(find(&txns, &txid.to_string()).map(|t| t.txid), Some(txid));
    assert_eq!(
        find(&txns, "key-4").map(|t| t.state),
        Some(TxnState::Aborted)
    );
    assert!(find(&txns, "key-9").is_none());
    assert!(find(&txns, "").is_none(), "not the END-only one");
    assert!(is_malformed_txid("0303030g-0303-0303-0303-030303030303"));
    assert!(!is_malformed_txid(&txid.to_string()));
    assert!(!is_malformed_txid("flip-0"));
}

#[test]
fn records_recovery_would_refuse_are_errors_not_panics() {
    let mut unknown = record(1, RecordKind::Begin, 0);
    unknown.kind = 42;
    let error = summarize(&replayed(vec![unknown]), T0).unwrap_err();
    assert!(
        matches!(error, ModelError::UnknownKind { kind: 42, .. }),
        "{error}"
    );

    let two = vec![decision(1, true, 0), decision(1, false, 1)];
    let error = summarize(&replayed(two), T0).unwrap_err();
    assert!(
        error.to_string().contains("both a COMMIT and an ABORT"),
        "{error}"
    );

    let mut short = record(1, RecordKind::Begin, 0);
    short.txid = vec![1; 3];
    let error = summarize(&replayed(vec![short]), T0).unwrap_err();
    assert!(error.to_string().contains("3-byte txid"), "{error}");
}

#[test]
fn saga_and_one_phase_recovery_is_worded_for_their_case() {
    let shards = ["s0".to_string(), "s2".to_string()];
    let saga = recovery_action(RecoveryCase::RedriveAbort, Mode::Saga, false, &shards);
    assert_eq!(
        saga,
        "a restart compensates s0, s2 again (idempotent), then logs END"
    );
    let one = recovery_action(
        RecoveryCase::ResolveOnePhase,
        Mode::TwoPhase,
        true,
        &shards[..1],
    );
    assert!(one.starts_with("a restart asks s0 (Resolve)"), "{one}");
}

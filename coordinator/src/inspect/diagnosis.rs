//! What `show --live` found, in words: each process's part in the
//! transaction and where it is stuck. Pure, so every case is a unit test;
//! `live.rs` gathers the answers.

use super::live::{CoordinatorLive, LiveView, ShardLive};
use super::model::{TxnOutcome, TxnState, TxnSummary};
use super::render;

/// The decision as known now: the coordinator's, when it answered (it may
/// have moved on since the log was read), else the log's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Undecided,
    Commit,
    Abort,
    /// Ended, the decision removed by retention.
    EndedUnknown,
}

impl Known {
    fn of(txn: &TxnSummary, coordinator: &CoordinatorLive) -> Known {
        match coordinator.state {
            Some("committed") => return Known::Commit,
            Some("aborted") => return Known::Abort,
            _ => {}
        }
        match txn.outcome {
            Some(TxnOutcome::Committed) => Known::Commit,
            Some(TxnOutcome::Aborted) => Known::Abort,
            Some(TxnOutcome::Unknown) => Known::EndedUnknown,
            None => Known::Undecided,
        }
    }
}

/// Fills in each shard's diagnosis and the overall one.
pub fn diagnose(
    txn: &TxnSummary,
    coordinator: CoordinatorLive,
    shards: Vec<ShardLive>,
) -> LiveView {
    let known = Known::of(txn, &coordinator);
    let up = coordinator.status == "ok";
    let saga = txn.mode == "saga";
    let shards: Vec<ShardLive> = shards
        .into_iter()
        .map(|mut shard| {
            shard.diagnosis = shard_diagnosis(&shard, known, up, saga);
            shard
        })
        .collect();
    let mut diagnosis = vec![coordinator_diagnosis(txn, &coordinator)];
    diagnosis.extend(shards.iter().map(|s| s.diagnosis.clone()));
    diagnosis.push(verdict(txn, &coordinator, &shards, known, saga));
    LiveView {
        coordinator,
        shards,
        diagnosis,
    }
}

fn coordinator_diagnosis(txn: &TxnSummary, coordinator: &CoordinatorLive) -> String {
    let address = &coordinator.address;
    let error = coordinator.error.as_deref().unwrap_or("");
    match coordinator.status {
        "ok" => {
            let state = coordinator.state.unwrap_or("in_progress");
            let ended = if coordinator.ended == Some(true) {
                "ended (every shard acknowledged)".to_string()
            } else if state == "in_progress" {
                "not decided yet".to_string()
            } else {
                "not ended: phase 2 is still running; it retries each shard until it acknowledges".to_string()
            };
            format!("coordinator at {address}: {state}, {ended}")
        }
        "not_found" => format!(
            "coordinator at {address} does not know this txid ({error}): it runs on another log, or has not replayed it"
        ),
        "unreachable" => format!(
            "coordinator at {address} unreachable: {error}; nothing drives this transaction until it restarts, then {}",
            txn.recovery_action.trim_start_matches("a restart ")
        ),
        _ => format!("coordinator at {address} answered with an error: {error}"),
    }
}

fn shard_diagnosis(shard: &ShardLive, known: Known, up: bool, saga: bool) -> String {
    let name = &shard.shard;
    let address = shard.address.as_deref().unwrap_or("-");
    let error = shard.error.as_deref().unwrap_or("");
    let decision = decision_word(known, saga);
    match shard.status {
        "not_configured" => return format!("{name}: not in the configuration file, so not asked"),
        "unreachable" if matches!(known, Known::Commit | Known::Abort) => {
            return format!(
                "{name} unreachable at {address}: {error}; {decision} is re-sent once it is back"
            )
        }
        "unreachable" => return format!("{name} unreachable at {address}: {error}"),
        "error" => return format!("{name} answered ListTxns with an error: {error}"),
        _ => {}
    }
    let since = shard
        .updated_at_unix_ms
        .map(|ms| format!(" since {}", render::timestamp(ms)))
        .unwrap_or_default();
    let retry = if up {
        "the coordinator retries it until the shard acknowledges"
    } else {
        "the coordinator is down: a restart re-sends it (and the shard asks GetDecision meanwhile)"
    };
    match (shard.state.unwrap_or("unknown"), known) {
        ("prepared", Known::Undecided) if up => format!(
            "{name} PREPARED{since} (voted YES, seats held): waiting for the coordinator's decision"
        ),
        ("prepared", Known::Undecided) => format!(
            "{name} PREPARED{since} (voted YES, seats held): the coordinator is down before deciding; a restart aborts it (presumed abort)"
        ),
        ("prepared", Known::Commit | Known::Abort) => {
            format!("{name} still PREPARED{since}: waiting for {decision}; {retry}")
        }
        ("committed", Known::Abort) if saga => {
            format!("{name} still booked (COMMITTED){since}: waiting for COMPENSATE; {retry}")
        }
        ("committed", Known::Commit | Known::EndedUnknown) => format!("{name} COMMITTED{since}: done"),
        ("committed", Known::Undecided) if saga => {
            format!("{name} booked its leg (COMMITTED){since}; the saga is not decided yet")
        }
        ("committed", Known::Undecided) => format!(
            "{name} COMMITTED{since} by its local commit (one-phase); the coordinator logs the outcome next"
        ),
        ("aborted", Known::Abort | Known::EndedUnknown) => format!("{name} ABORTED{since}: done"),
        ("aborted", Known::Undecided) => format!(
            "{name} ABORTED{since} (voted NO, or fenced): the decision can only be ABORT"
        ),
        ("absent", Known::Undecided) => format!(
            "{name} has no row for this txid: it has not prepared (the PREPARE is in flight, or was refused and kept nothing)"
        ),
        ("absent", known) => {
            let rows = shard.rows_returned.unwrap_or(0);
            let hint = if rows > 0 {
                format!(" (it returned {rows} rows for other txids: it may not apply the txid filter yet, and the row may be older than those)")
            } else {
                String::new()
            };
            let waiting = if known == Known::Abort {
                format!("; waiting for {decision}, which fences it; {retry}")
            } else {
                String::new()
            };
            format!("{name} has no row for this txid{hint}{waiting}")
        }
        (state, known) => format!(
            "{name} is {}{since} although the decision is {}: a protocol violation, report it",
            state.to_ascii_uppercase(),
            decision_word(known, saga)
        ),
    }
}

/// What shards are told for this decision.
fn decision_word(known: Known, saga: bool) -> &'static str {
    match known {
        Known::Commit => "COMMIT",
        Known::Abort if saga => "COMPENSATE",
        Known::Abort => "ABORT",
        Known::Undecided => "no decision",
        Known::EndedUnknown => "END (outcome removed by retention)",
    }
}

/// The shard state that means "has applied the decision".
fn applied_state(known: Known) -> Option<&'static str> {
    match known {
        Known::Commit => Some("committed"),
        Known::Abort => Some("aborted"),
        Known::Undecided | Known::EndedUnknown => None,
    }
}

/// One sentence: stuck or not, and on what.
fn verdict(
    txn: &TxnSummary,
    coordinator: &CoordinatorLive,
    shards: &[ShardLive],
    known: Known,
    saga: bool,
) -> String {
    if txn.state.is_ended() || coordinator.ended == Some(true) {
        return "not stuck: the transaction has ended".into();
    }
    let up = coordinator.status == "ok";
    let Some(applied) = applied_state(known) else {
        return if up {
            "undecided: the coordinator is still collecting votes".into()
        } else {
            "stuck undecided: the coordinator is down; a restart aborts it (presumed abort)".into()
        };
    };
    let pending: Vec<&str> = shards
        .iter()
        .filter(|s| s.state != Some(applied))
        .map(|s| s.shard.as_str())
        .collect();
    let decision = decision_word(known, saga);
    if pending.is_empty() {
        return format!("every shard has applied {decision}; END is logged once the coordinator sees the last acknowledgement");
    }
    let cause = if !up {
        "the coordinator is down; a restart re-sends it"
    } else if shards
        .iter()
        .any(|s| pending.contains(&s.shard.as_str()) && s.status != "ok")
    {
        "a shard does not answer; the coordinator keeps retrying"
    } else {
        "the coordinator is retrying"
    };
    let state = if txn.state == TxnState::InDoubt {
        "in doubt"
    } else {
        "open"
    };
    format!(
        "stuck {state}: waiting for {} to acknowledge {decision}; {cause}",
        pending.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use booking_proto::log_v1::{LogRecord, RecordKind};

    use super::*;
    use crate::inspect::model::summarize;
    use crate::log::{Position, Replayed};

    fn txn(kinds: &[RecordKind]) -> TxnSummary {
        let records = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let record = LogRecord {
                    format_version: 1,
                    kind: *kind as i32,
                    txid: vec![7; 16],
                    shards: vec!["s1".into(), "s2".into()],
                    reply: Some(booking_proto::v1::BookReply {
                        outcome: booking_proto::v1::Outcome::Committed as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let position = Position {
                    segment: 1,
                    offset: 8 + i as u64 * 50,
                };
                (position, record)
            })
            .collect();
        let replayed = Replayed {
            records,
            tail_cut: None,
        };
        summarize(&replayed, 0).unwrap().remove(0)
    }

    fn coordinator(status: &'static str, state: Option<&'static str>) -> CoordinatorLive {
        CoordinatorLive {
            address: "http://127.0.0.1:7000".into(),
            status,
            state,
            ended: state.map(|_| false),
            error: (status != "ok").then(|| "transport error: connection refused".into()),
        }
    }

    fn shard(name: &str, status: &'static str, state: Option<&'static str>) -> ShardLive {
        ShardLive {
            shard: name.into(),
            address: Some(format!("http://{name}")),
            status,
            state,
            updated_at_unix_ms: state.map(|_| 1_760_000_000_000),
            rows_returned: state.map(|_| 1),
            error: (status != "ok").then(|| "connection refused".into()),
            diagnosis: String::new(),
        }
    }

    #[test]
    fn a_commit_without_end_and_a_dead_coordinator_waits_for_a_restart() {
        use RecordKind::*;
        let view = diagnose(
            &txn(&[Begin, Commit]),
            coordinator("unreachable", None),
            vec![
                shard("s1", "ok", Some("prepared")),
                shard("s2", "ok", Some("prepared")),
            ],
        );
        assert!(
            view.diagnosis[0].contains("unreachable")
                && view.diagnosis[0].contains("then re-sends COMMIT to s1, s2"),
            "{:?}",
            view.diagnosis
        );
        assert!(
            view.shards[0]
                .diagnosis
                .starts_with("s1 still PREPARED since 2025-10-09T08:53:20.000Z: waiting for COMMIT; the coordinator is down"),
            "{}",
            view.shards[0].diagnosis
        );
        assert_eq!(
            view.diagnosis.last().unwrap(),
            "stuck in doubt: waiting for s1, s2 to acknowledge COMMIT; the coordinator is down; a restart re-sends it"
        );
    }

    #[test]
    fn one_unreachable_shard_is_named_and_the_coordinator_retries() {
        use RecordKind::*;
        let view = diagnose(
            &txn(&[Begin, Commit]),
            coordinator("ok", Some("committed")),
            vec![
                shard("s1", "ok", Some("committed")),
                shard("s2", "unreachable", None),
            ],
        );
        assert!(
            view.diagnosis[0].contains("committed, not ended"),
            "{:?}",
            view.diagnosis
        );
        assert_eq!(
            view.shards[0].diagnosis,
            "s1 COMMITTED since 2025-10-09T08:53:20.000Z: done"
        );
        assert_eq!(
            view.shards[1].diagnosis,
            "s2 unreachable at http://s2: connection refused; COMMIT is re-sent once it is back"
        );
        assert_eq!(
            view.diagnosis.last().unwrap(),
            "stuck in doubt: waiting for s2 to acknowledge COMMIT; a shard does not answer; the coordinator keeps retrying"
        );
    }

    #[test]
    fn an_undecided_transaction_with_a_dead_coordinator_is_presumed_aborted() {
        let view = diagnose(
            &txn(&[RecordKind::Begin]),
            coordinator("unreachable", None),
            vec![
                shard("s1", "ok", Some("prepared")),
                shard("s2", "ok", Some("absent")),
            ],
        );
        assert!(view.shards[0]
            .diagnosis
            .contains("a restart aborts it (presumed abort)"));
        assert!(view.shards[1].diagnosis.contains("has not prepared"));
        assert!(view
            .diagnosis
            .last()
            .unwrap()
            .starts_with("stuck undecided"));
    }

    #[test]
    fn a_shard_contradicting_the_decision_is_flagged() {
        use RecordKind::*;
        let view = diagnose(
            &txn(&[Begin, Commit]),
            coordinator("ok", Some("committed")),
            vec![
                shard("s1", "ok", Some("aborted")),
                shard("s2", "ok", Some("committed")),
            ],
        );
        assert!(view.shards[0].diagnosis.contains("protocol violation"));
    }
}

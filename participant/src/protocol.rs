//! The participant's side of two-phase commit and sagas, as a table free of
//! I/O: given a message and what the shard has recorded for its txid, what
//! to do. The store reads the record, asks here, and performs the action in
//! the batch's local transaction.
//!
//! | message    | unknown        | prepared        | committed 2pc | committed local | aborted        |
//! |------------|----------------|-----------------|---------------|-----------------|----------------|
//! | PREPARE    | reserve (hold) | same YES        | same YES      | violation       | same NO        |
//! | BOOK_LOCAL | reserve (book) | violation       | violation     | same YES        | same NO        |
//! | COMMIT     | violation      | held → booked   | ack committed | violation       | violation      |
//! | ABORT      | fence 2pc      | held → free     | violation     | violation       | ack aborted    |
//! | RESOLVE    | fence local    | report          | report        | report          | report         |
//! | COMPENSATE | fence local    | violation       | violation     | booked → free   | ack aborted    |
//!
//! "same NO" is the stored refusal of the txid's own NO vote, or FENCED when
//! the txid was aborted by a decision or a fence. A participant that voted
//! YES never releases seats on its own: only ABORT (or COMPENSATE) does.

use std::fmt;

use booking_proto::v1::AbortReason;

use crate::model::{Refusal, TxnId, TxnKind, TxnRecord, TxnState};
use crate::op::{Reply, Resolution, Vote};
use crate::request::Booking;

/// A seat row's `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeatState {
    Free,
    Held,
    Booked,
}

impl SeatState {
    pub fn as_str(self) -> &'static str {
        match self {
            SeatState::Free => "free",
            SeatState::Held => "held",
            SeatState::Booked => "booked",
        }
    }
}

/// Moves every seat of a txid, and its `txns` row, from one state to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub seats_from: SeatState,
    pub seats_to: SeatState,
    pub txn_from: TxnState,
    pub txn_to: TxnState,
}

/// COMMIT: held seats become booked.
pub const BOOK_HELD: Transition = Transition {
    seats_from: SeatState::Held,
    seats_to: SeatState::Booked,
    txn_from: TxnState::Prepared,
    txn_to: TxnState::Committed,
};
/// ABORT: held seats are released.
pub const RELEASE_HELD: Transition = Transition {
    seats_from: SeatState::Held,
    seats_to: SeatState::Free,
    txn_from: TxnState::Prepared,
    txn_to: TxnState::Aborted,
};
/// COMPENSATE: booked seats of a one-phase txid are released.
pub const RELEASE_BOOKED: Transition = Transition {
    seats_from: SeatState::Booked,
    seats_to: SeatState::Free,
    txn_from: TxnState::Committed,
    txn_to: TxnState::Aborted,
};

/// A message that contradicts what the shard recorded: a coordinator bug or
/// a corrupted message. Refused loudly; nothing is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub verb: &'static str,
    pub txid: TxnId,
    /// What the shard has for the txid: "unknown", "aborted", ...
    pub found: &'static str,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "protocol violation: {} for {} txid {}",
            self.verb, self.found, self.txid
        )
    }
}

/// What to do with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Unknown txid: pick the seats and hold them (2pc) or book them (local);
    /// or vote NO and fence the txid with the reason.
    Reserve(TxnKind),
    /// Answer from the record; write nothing.
    Answer(Reply),
    /// Move the txid's seats and row, then answer `Ack(transition.txn_to)`.
    Transition(Transition),
    /// Record the unknown txid as aborted (a fence of this kind), then answer.
    Fence(TxnKind, Reply),
    /// Refuse; write nothing.
    Violation(Violation),
}

/// PREPARE (kind 2pc) or BOOK_LOCAL (kind local).
pub fn on_reserve(
    kind: TxnKind,
    booking: &Booking,
    record: Option<&TxnRecord>,
    shard: &str,
) -> Action {
    let verb = match kind {
        TxnKind::TwoPhase => "PREPARE",
        TxnKind::Local => "BOOK_LOCAL",
    };
    let Some(record) = record else {
        return Action::Reserve(kind);
    };
    match (record.state, record.kind == kind) {
        (TxnState::Aborted, _) => Action::Answer(Reply::Vote(Vote::No(refusal_of(
            record, booking, verb, shard,
        )))),
        (TxnState::Prepared | TxnState::Committed, true) => {
            Action::Answer(Reply::Vote(Vote::Yes(record.legs.clone())))
        }
        (TxnState::Prepared | TxnState::Committed, false) => {
            violation(verb, &booking.txid, Some(record))
        }
    }
}

pub fn on_commit(txid: &TxnId, record: Option<&TxnRecord>) -> Action {
    match record.map(|r| (r.state, r.kind)) {
        Some((TxnState::Prepared, TxnKind::TwoPhase)) => Action::Transition(BOOK_HELD),
        Some((TxnState::Committed, TxnKind::TwoPhase)) => {
            Action::Answer(Reply::Ack(TxnState::Committed))
        }
        _ => violation("COMMIT", txid, record),
    }
}

pub fn on_abort(txid: &TxnId, record: Option<&TxnRecord>) -> Action {
    match record.map(|r| (r.state, r.kind)) {
        None => Action::Fence(TxnKind::TwoPhase, Reply::Ack(TxnState::Aborted)),
        Some((TxnState::Prepared, TxnKind::TwoPhase)) => Action::Transition(RELEASE_HELD),
        Some((TxnState::Aborted, _)) => Action::Answer(Reply::Ack(TxnState::Aborted)),
        _ => violation("ABORT", txid, record),
    }
}

pub fn on_resolve(record: Option<&TxnRecord>) -> Action {
    let Some(record) = record else {
        let unknown = Resolution {
            state: TxnState::Aborted,
            legs: Vec::new(),
            refusal: None,
        };
        return Action::Fence(TxnKind::Local, Reply::Resolution(unknown));
    };
    let legs = match record.state {
        TxnState::Aborted => Vec::new(),
        TxnState::Prepared | TxnState::Committed => record.legs.clone(),
    };
    Action::Answer(Reply::Resolution(Resolution {
        state: record.state,
        legs,
        refusal: record.refusal.clone(),
    }))
}

pub fn on_compensate(txid: &TxnId, record: Option<&TxnRecord>) -> Action {
    match record.map(|r| (r.state, r.kind)) {
        None => Action::Fence(TxnKind::Local, Reply::Ack(TxnState::Aborted)),
        Some((TxnState::Committed, TxnKind::Local)) => Action::Transition(RELEASE_BOOKED),
        Some((TxnState::Aborted, _)) => Action::Answer(Reply::Ack(TxnState::Aborted)),
        _ => violation("COMPENSATE", txid, record),
    }
}

fn violation(verb: &'static str, txid: &TxnId, record: Option<&TxnRecord>) -> Action {
    let found = match record.map(|r| (r.state, r.kind)) {
        None => "unknown",
        Some((TxnState::Prepared, _)) => "prepared",
        Some((TxnState::Committed, TxnKind::TwoPhase)) => "committed two-phase",
        Some((TxnState::Committed, TxnKind::Local)) => "committed one-phase",
        Some((TxnState::Aborted, _)) => "aborted",
    };
    Action::Violation(Violation {
        verb,
        txid: txid.clone(),
        found,
    })
}

/// The NO a repeated PREPARE/BOOK_LOCAL of an aborted txid gets: its own
/// NO vote's reason, or FENCED.
fn refusal_of(record: &TxnRecord, booking: &Booking, verb: &str, shard: &str) -> Refusal {
    if let Some(refusal) = &record.refusal {
        return refusal.clone();
    }
    let first = booking.legs.first();
    Refusal {
        reason: AbortReason::Fenced,
        leg_index: first.map_or(0, |leg| leg.leg_index),
        flight_id: first.map(|leg| leg.flight_id.clone()).unwrap_or_default(),
        message: format!(
            "txid {} is already aborted on shard {shard}; this {verb} is refused",
            booking.txid
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LegSeats;
    use crate::request::{LegRequest, SeatChoice};

    fn txid() -> TxnId {
        TxnId::parse("t", "0190b2c4-7d1e-7c3a-9f00-000000000001").expect("valid")
    }

    fn record(state: TxnState, kind: TxnKind) -> TxnRecord {
        let legs = vec![LegSeats {
            leg_index: 0,
            flight_id: "AB1".into(),
            seats: vec!["1A".into()],
        }];
        let legs = if state == TxnState::Aborted {
            Vec::new()
        } else {
            legs
        };
        TxnRecord {
            state,
            kind,
            itinerary_legs: 1,
            legs,
            ..TxnRecord::fence(txid(), kind, None, 0)
        }
    }

    fn booking() -> Booking {
        let leg = LegRequest {
            leg_index: 0,
            flight_id: "AB1".into(),
            seats: SeatChoice::Count(1),
            passengers: vec![],
        };
        Booking {
            txid: txid(),
            legs: vec![leg],
            itinerary_legs: 1,
        }
    }

    fn is_violation(action: &Action) -> bool {
        matches!(action, Action::Violation(_))
    }

    #[test]
    fn prepare_row_of_the_table() {
        let prepare = |r: Option<&TxnRecord>| on_reserve(TxnKind::TwoPhase, &booking(), r, "s0");
        assert_eq!(prepare(None), Action::Reserve(TxnKind::TwoPhase));
        let yes = Action::Answer(Reply::Vote(Vote::Yes(
            record(TxnState::Prepared, TxnKind::TwoPhase).legs,
        )));
        assert_eq!(
            prepare(Some(&record(TxnState::Prepared, TxnKind::TwoPhase))),
            yes
        );
        assert_eq!(
            prepare(Some(&record(TxnState::Committed, TxnKind::TwoPhase))),
            yes
        );
        assert!(is_violation(&prepare(Some(&record(
            TxnState::Committed,
            TxnKind::Local
        )))));
        let Action::Answer(Reply::Vote(Vote::No(no))) =
            prepare(Some(&record(TxnState::Aborted, TxnKind::TwoPhase)))
        else {
            panic!("an aborted txid gets NO")
        };
        assert_eq!(no.reason, AbortReason::Fenced);
        assert_eq!(no.flight_id, "AB1");
    }

    #[test]
    fn a_repeated_no_vote_keeps_its_reason() {
        let refusal = Refusal {
            reason: AbortReason::SoldOut,
            leg_index: 0,
            flight_id: "AB1".into(),
            message: "m".into(),
        };
        let no = TxnRecord::fence(txid(), TxnKind::Local, Some(refusal.clone()), 0);
        let action = on_reserve(TxnKind::Local, &booking(), Some(&no), "s0");
        assert_eq!(action, Action::Answer(Reply::Vote(Vote::No(refusal))));
    }

    #[test]
    fn book_local_row_of_the_table() {
        let book = |r: Option<&TxnRecord>| on_reserve(TxnKind::Local, &booking(), r, "s0");
        assert_eq!(book(None), Action::Reserve(TxnKind::Local));
        assert!(is_violation(&book(Some(&record(
            TxnState::Prepared,
            TxnKind::TwoPhase
        )))));
        assert!(is_violation(&book(Some(&record(
            TxnState::Committed,
            TxnKind::TwoPhase
        )))));
        assert!(matches!(
            book(Some(&record(TxnState::Committed, TxnKind::Local))),
            Action::Answer(_)
        ));
    }

    #[test]
    fn commit_row_of_the_table() {
        let id = txid();
        assert_eq!(
            on_commit(&id, Some(&record(TxnState::Prepared, TxnKind::TwoPhase))),
            Action::Transition(BOOK_HELD)
        );
        assert_eq!(
            on_commit(&id, Some(&record(TxnState::Committed, TxnKind::TwoPhase))),
            Action::Answer(Reply::Ack(TxnState::Committed))
        );
        let Action::Violation(v) =
            on_commit(&id, Some(&record(TxnState::Aborted, TxnKind::TwoPhase)))
        else {
            panic!("COMMIT of an aborted txid is a violation")
        };
        assert_eq!(
            v.to_string(),
            format!("protocol violation: COMMIT for aborted txid {id}")
        );
        assert!(on_commit(&id, None)
            .clone()
            .eq(&violation("COMMIT", &id, None)));
        assert!(is_violation(&on_commit(
            &id,
            Some(&record(TxnState::Committed, TxnKind::Local))
        )));
    }

    #[test]
    fn abort_row_of_the_table() {
        let id = txid();
        assert_eq!(
            on_abort(&id, None),
            Action::Fence(TxnKind::TwoPhase, Reply::Ack(TxnState::Aborted))
        );
        assert_eq!(
            on_abort(&id, Some(&record(TxnState::Prepared, TxnKind::TwoPhase))),
            Action::Transition(RELEASE_HELD)
        );
        assert_eq!(
            on_abort(&id, Some(&record(TxnState::Aborted, TxnKind::Local))),
            Action::Answer(Reply::Ack(TxnState::Aborted))
        );
        assert!(is_violation(&on_abort(
            &id,
            Some(&record(TxnState::Committed, TxnKind::TwoPhase))
        )));
        assert!(is_violation(&on_abort(
            &id,
            Some(&record(TxnState::Committed, TxnKind::Local))
        )));
    }

    #[test]
    fn resolve_row_of_the_table() {
        assert!(matches!(on_resolve(None), Action::Fence(TxnKind::Local, _)));
        let committed = record(TxnState::Committed, TxnKind::Local);
        let Action::Answer(Reply::Resolution(r)) = on_resolve(Some(&committed)) else {
            panic!("a report")
        };
        assert_eq!((r.state, r.legs.len()), (TxnState::Committed, 1));
    }

    #[test]
    fn compensate_row_of_the_table() {
        let id = txid();
        assert_eq!(
            on_compensate(&id, None),
            Action::Fence(TxnKind::Local, Reply::Ack(TxnState::Aborted))
        );
        assert_eq!(
            on_compensate(&id, Some(&record(TxnState::Committed, TxnKind::Local))),
            Action::Transition(RELEASE_BOOKED)
        );
        assert!(matches!(
            on_compensate(&id, Some(&record(TxnState::Aborted, TxnKind::TwoPhase))),
            Action::Answer(_)
        ));
        assert!(is_violation(&on_compensate(
            &id,
            Some(&record(TxnState::Prepared, TxnKind::TwoPhase))
        )));
        assert!(is_violation(&on_compensate(
            &id,
            Some(&record(TxnState::Committed, TxnKind::TwoPhase))
        )));
    }
}

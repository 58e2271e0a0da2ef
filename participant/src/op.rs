//! The operations the writers apply, and what each one answers. An `Op` is
//! checked (request.rs) and admitted (shard.rs) before it is queued; its
//! `Reply` is sent only after the local transaction that applied it has
//! committed.

use crate::model::{FlightMap, LegSeats, Refusal, TxnId, TxnState};
use crate::request::Booking;

/// One write to the shard database.
#[derive(Debug, Clone)]
pub enum Op {
    Prepare(Booking),
    Commit(TxnId),
    Abort(TxnId),
    BookLocal(Booking),
    Resolve(TxnId),
    Compensate(TxnId),
    CreateFlight(FlightMap),
}

impl Op {
    /// The protocol verb, for messages and logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Op::Prepare(_) => "PREPARE",
            Op::Commit(_) => "COMMIT",
            Op::Abort(_) => "ABORT",
            Op::BookLocal(_) => "BOOK_LOCAL",
            Op::Resolve(_) => "RESOLVE",
            Op::Compensate(_) => "COMPENSATE",
            Op::CreateFlight(_) => "CREATE_FLIGHT",
        }
    }

    /// The txid the op is about; None for CREATE_FLIGHT.
    pub fn txid(&self) -> Option<&TxnId> {
        match self {
            Op::Prepare(booking) | Op::BookLocal(booking) => Some(&booking.txid),
            Op::Commit(txid) | Op::Abort(txid) | Op::Resolve(txid) | Op::Compensate(txid) => {
                Some(txid)
            }
            Op::CreateFlight(_) => None,
        }
    }

    /// The key that picks a writer lane: every op of one txid (or flight)
    /// goes to the same lane, so no two local transactions race on it.
    pub fn lane_key(&self) -> &str {
        match self {
            Op::CreateFlight(map) => &map.flight_id,
            Op::Prepare(booking) | Op::BookLocal(booking) => booking.txid.as_str(),
            Op::Commit(txid) | Op::Abort(txid) | Op::Resolve(txid) | Op::Compensate(txid) => {
                txid.as_str()
            }
        }
    }
}

/// A vote (Prepare) or local outcome (BookLocal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// The seats per leg are held (Prepare) or booked (BookLocal), durably.
    Yes(Vec<LegSeats>),
    /// Nothing is held; the txid is recorded aborted with this reason.
    No(Refusal),
}

/// What Resolve reports about a txid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub state: TxnState,
    /// The seats per leg, for prepared and committed txids.
    pub legs: Vec<LegSeats>,
    /// The NO vote's reason, for a txid aborted by its own vote.
    pub refusal: Option<Refusal>,
}

/// A flight's seat counts, and its seats when asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub map: FlightMap,
    pub free: u32,
    pub held: u32,
    pub booked: u32,
    pub seats: Vec<SeatView>,
}

/// One row of `seats`, as GetFlight shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatView {
    pub seat_no: String,
    pub state: String,
    pub txid: Option<String>,
    pub passenger: Option<String>,
}

/// The answer to one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Vote(Vote),
    /// The state after Commit, Abort or Compensate.
    Ack(TxnState),
    Resolution(Resolution),
    Flight(Inventory),
}

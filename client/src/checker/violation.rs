//! [`Violation`]: one broken invariant, found in the shard databases, with
//! the rows that show it. Each variant belongs to one invariant of DESIGN.md
//! ([`Invariant`]); shards are named by their index in the URL list.

use std::fmt;

/// The four invariants of DESIGN.md, "Invariants every test suite checks".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// 1. No seat is booked or held by two transactions; no flight oversold.
    NoDoubleBooking,
    /// 2. An itinerary's legs are all booked or none is.
    Atomicity,
    /// 3. Every booking a client was told was COMMITTED is booked.
    Durability,
    /// 4. No seat stays held, no transaction stays in doubt.
    Liveness,
}

impl Invariant {
    pub const ALL: [Invariant; 4] = [
        Invariant::NoDoubleBooking,
        Invariant::Atomicity,
        Invariant::Durability,
        Invariant::Liveness,
    ];

    /// The invariant's number in DESIGN.md.
    pub fn number(self) -> u8 {
        self as u8 + 1
    }

    pub fn title(self) -> &'static str {
        match self {
            Invariant::NoDoubleBooking => "no seat double-booked, no flight oversold",
            Invariant::Atomicity => "atomicity: all legs booked or none",
            Invariant::Durability => "durability: every COMMITTED reply is booked",
            Invariant::Liveness => "liveness: nothing held or in doubt",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}. {}", self.number(), self.title())
    }
}

/// A broken invariant and the evidence for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    // --- 1. No double booking, no oversell.
    /// A seat whose state is not free|held|booked.
    BadSeatState {
        shard: usize,
        flight_id: String,
        seat_no: String,
        state: String,
    },
    /// A free seat that still names a transaction.
    FreeSeatHasTxid {
        shard: usize,
        flight_id: String,
        seat_no: String,
        txid: String,
    },
    /// A held or booked seat that names no transaction.
    TakenSeatWithoutTxid {
        shard: usize,
        flight_id: String,
        seat_no: String,
        state: String,
    },
    /// A flight whose seat rows do not number its capacity.
    SeatCountMismatch {
        shard: usize,
        flight_id: String,
        capacity: i64,
        seat_rows: i64,
    },
    /// A flight with more seats held or booked than it has.
    Oversold {
        shard: usize,
        flight_id: String,
        capacity: i64,
        taken: i64,
    },
    /// Seats of a flight the shard has no `flights` row for.
    SeatsWithoutFlight {
        shard: usize,
        flight_id: String,
        seats: i64,
    },
    /// A flight present on more than one shard: each could sell its seats.
    FlightOnManyShards {
        flight_id: String,
        shards: Vec<usize>,
    },
    /// One seat claimed by several live (prepared or committed) transactions.
    SeatClaimedTwice {
        shard: usize,
        flight_id: String,
        seat_no: String,
        txids: Vec<String>,
    },
    /// The seats a live transaction records in `txns.legs` are not the seats
    /// that name it in `seats` (as `FLIGHT/SEAT`).
    LegsMismatch {
        shard: usize,
        txid: String,
        state: String,
        recorded: Vec<String>,
        actual: Vec<String>,
    },
    /// `txns.legs` is not the expected JSON.
    BadLegsJson {
        shard: usize,
        txid: String,
        error: String,
    },

    // --- 2. Atomicity.
    /// A seat booked by a transaction that is not committed on its shard.
    BookedByUncommitted {
        shard: usize,
        flight_id: String,
        seat_no: String,
        txid: String,
        txn_state: Option<String>,
    },
    /// A seat held by a transaction that is not prepared on its shard.
    HeldByUnprepared {
        shard: usize,
        flight_id: String,
        seat_no: String,
        txid: String,
        txn_state: Option<String>,
    },
    /// A transaction committed on some shards and aborted on others.
    MixedOutcome {
        txid: String,
        committed_on: Vec<usize>,
        aborted_on: Vec<usize>,
    },
    /// Shards disagree on how many legs a transaction's itinerary has.
    ItineraryLegsDisagree {
        txid: String,
        itinerary_legs: Vec<(usize, i64)>,
    },
    /// A committed transaction with fewer (or more) legs booked than its itinerary has.
    PartialItinerary {
        txid: String,
        itinerary_legs: i64,
        legs_booked: Vec<String>,
    },

    // --- 3. Durability.
    /// The same idempotency key got two different definitive replies.
    ReplyChanged {
        idempotency_key: String,
        first: String,
        then: String,
    },
    /// A COMMITTED reply that does not name a seat list for every requested leg.
    CommittedReplyIncomplete {
        txid: String,
        legs_requested: usize,
        legs_replied: usize,
    },
    /// A COMMITTED leg on a flight no shard has.
    CommittedFlightMissing { txid: String, flight_id: String },
    /// A seat of a COMMITTED reply that is not booked by its txid.
    CommittedSeatNotBooked {
        txid: String,
        flight_id: String,
        seat_no: String,
        found: String,
    },
    /// Seats booked by a COMMITTED txid beyond those in its reply.
    CommittedExtraSeats {
        txid: String,
        flight_id: String,
        replied: Vec<String>,
        booked: Vec<String>,
    },
    /// A COMMITTED txid whose shard record is missing or not committed.
    CommittedTxnNotCommitted {
        txid: String,
        shard: usize,
        txn_state: Option<String>,
    },
    /// A seat booked or held by a txid whose reply was ABORTED.
    AbortedReplyHasSeat {
        txid: String,
        shard: usize,
        flight_id: String,
        seat_no: String,
        state: String,
    },

    // --- 4. Liveness.
    /// A seat still held at quiescence.
    SeatStillHeld {
        shard: usize,
        flight_id: String,
        seat_no: String,
        txid: String,
    },
    /// A transaction still prepared (in doubt) at quiescence.
    TxnStillPrepared {
        shard: usize,
        txid: String,
        updated_at_unix_ms: i64,
    },
}

impl Violation {
    /// The invariant this violation breaks.
    pub fn invariant(&self) -> Invariant {
        use Violation::*;
        match self {
            BadSeatState { .. }
            | FreeSeatHasTxid { .. }
            | TakenSeatWithoutTxid { .. }
            | SeatCountMismatch { .. }
            | Oversold { .. }
            | SeatsWithoutFlight { .. }
            | FlightOnManyShards { .. }
            | SeatClaimedTwice { .. }
            | LegsMismatch { .. }
            | BadLegsJson { .. } => Invariant::NoDoubleBooking,
            BookedByUncommitted { .. }
            | HeldByUnprepared { .. }
            | MixedOutcome { .. }
            | ItineraryLegsDisagree { .. }
            | PartialItinerary { .. } => Invariant::Atomicity,
            ReplyChanged { .. }
            | CommittedReplyIncomplete { .. }
            | CommittedFlightMissing { .. }
            | CommittedSeatNotBooked { .. }
            | CommittedExtraSeats { .. }
            | CommittedTxnNotCommitted { .. }
            | AbortedReplyHasSeat { .. } => Invariant::Durability,
            SeatStillHeld { .. } | TxnStillPrepared { .. } => Invariant::Liveness,
        }
    }
}

fn state_text(state: &Option<String>) -> &str {
    state.as_deref().unwrap_or("no record")
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Violation::*;
        match self {
            BadSeatState { shard, flight_id, seat_no, state } => {
                write!(f, "shard {shard}: seat {flight_id}/{seat_no} has unknown state {state:?}")
            }
            FreeSeatHasTxid { shard, flight_id, seat_no, txid } => {
                write!(f, "shard {shard}: seat {flight_id}/{seat_no} is free but names txid {txid}")
            }
            TakenSeatWithoutTxid { shard, flight_id, seat_no, state } => {
                write!(f, "shard {shard}: seat {flight_id}/{seat_no} is {state} but names no txid")
            }
            SeatCountMismatch { shard, flight_id, capacity, seat_rows } => {
                write!(f, "shard {shard}: flight {flight_id} has capacity {capacity} but {seat_rows} seat rows")
            }
            Oversold { shard, flight_id, capacity, taken } => {
                write!(f, "shard {shard}: flight {flight_id} OVERSOLD: {taken} seats held or booked, capacity {capacity}")
            }
            SeatsWithoutFlight { shard, flight_id, seats } => {
                write!(f, "shard {shard}: {seats} seats of flight {flight_id}, which has no flights row")
            }
            FlightOnManyShards { flight_id, shards } => write!(f, "flight {flight_id} exists on shards {shards:?}"),
            SeatClaimedTwice { shard, flight_id, seat_no, txids } => {
                write!(f, "shard {shard}: seat {flight_id}/{seat_no} DOUBLE-BOOKED: claimed by txids {txids:?}")
            }
            LegsMismatch { shard, txid, state, recorded, actual } => write!(
                f,
                "shard {shard}: {state} txid {txid} records seats {recorded:?} in txns.legs but holds/books {actual:?}"
            ),
            BadLegsJson { shard, txid, error } => write!(f, "shard {shard}: txid {txid} has unreadable legs: {error}"),
            BookedByUncommitted { shard, flight_id, seat_no, txid, txn_state } => write!(
                f,
                "shard {shard}: seat {flight_id}/{seat_no} booked by txid {txid}, which is {} there",
                state_text(txn_state)
            ),
            HeldByUnprepared { shard, flight_id, seat_no, txid, txn_state } => write!(
                f,
                "shard {shard}: seat {flight_id}/{seat_no} held by txid {txid}, which is {} there",
                state_text(txn_state)
            ),
            MixedOutcome { txid, committed_on, aborted_on } => write!(
                f,
                "txid {txid} is committed on shards {committed_on:?} but aborted on shards {aborted_on:?}"
            ),
            ItineraryLegsDisagree { txid, itinerary_legs } => {
                write!(f, "txid {txid}: shards disagree on its itinerary length (shard, legs): {itinerary_legs:?}")
            }
            PartialItinerary { txid, itinerary_legs, legs_booked } => write!(
                f,
                "txid {txid} PARTIAL: itinerary has {itinerary_legs} legs but {} are booked: {legs_booked:?}",
                legs_booked.len()
            ),
            ReplyChanged { idempotency_key, first, then } => {
                write!(f, "idempotency key {idempotency_key:?} was answered {first}, then {then}")
            }
            CommittedReplyIncomplete { txid, legs_requested, legs_replied } => write!(
                f,
                "COMMITTED txid {txid} requested {legs_requested} legs but the reply names {legs_replied}"
            ),
            CommittedFlightMissing { txid, flight_id } => {
                write!(f, "COMMITTED txid {txid} booked flight {flight_id}, which no shard has")
            }
            CommittedSeatNotBooked { txid, flight_id, seat_no, found } => write!(
                f,
                "COMMITTED txid {txid} LOST seat {flight_id}/{seat_no}: the shard has it {found}"
            ),
            CommittedExtraSeats { txid, flight_id, replied, booked } => write!(
                f,
                "COMMITTED txid {txid} on {flight_id}: reply names {replied:?} but the shard has {booked:?}"
            ),
            CommittedTxnNotCommitted { txid, shard, txn_state } => write!(
                f,
                "COMMITTED txid {txid} is {} on shard {shard}",
                state_text(txn_state)
            ),
            AbortedReplyHasSeat { txid, shard, flight_id, seat_no, state } => {
                write!(f, "ABORTED txid {txid} still has seat {flight_id}/{seat_no} {state} on shard {shard}")
            }
            SeatStillHeld { shard, flight_id, seat_no, txid } => {
                write!(f, "shard {shard}: seat {flight_id}/{seat_no} still held by txid {txid}")
            }
            TxnStillPrepared { shard, txid, updated_at_unix_ms } => {
                write!(f, "shard {shard}: txid {txid} still prepared (in doubt) since {updated_at_unix_ms} ms")
            }
        }
    }
}

//! The four invariants as pure functions of a [`Snapshot`] (and the
//! [`Oracle`](super::Oracle)'s entries): one function per invariant, each
//! returning the violations it finds. No I/O here, so every broken state is
//! a plain unit test.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use booking_proto::v1::{BookReply, Mode};

use super::oracle::{OracleEntry, OracleOutcome};
use super::snapshot::{SeatRow, ShardSnapshot, Snapshot, TxnRow};
use super::violation::Violation;
use super::CheckMode;

/// Lookups over a snapshot, built once per check.
pub(crate) struct Index<'a> {
    pub shards: Vec<ShardIndex<'a>>,
    /// Flight id → the shards that have a `flights` row for it.
    pub flight_shards: BTreeMap<&'a str, Vec<usize>>,
}

/// Lookups over one shard.
pub(crate) struct ShardIndex<'a> {
    pub shard: &'a ShardSnapshot,
    pub txns: HashMap<&'a str, &'a TxnRow>,
    pub seats_by_txid: HashMap<&'a str, Vec<&'a SeatRow>>,
    /// (flight id, seat no) → the seat.
    pub seats: HashMap<(&'a str, &'a str), &'a SeatRow>,
}

impl<'a> Index<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Self {
        let shards: Vec<ShardIndex<'a>> = snapshot.shards.iter().map(ShardIndex::new).collect();
        let mut flight_shards: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, shard) in snapshot.shards.iter().enumerate() {
            for flight in &shard.flights {
                flight_shards
                    .entry(flight.flight_id.as_str())
                    .or_default()
                    .push(i);
            }
        }
        Index {
            shards,
            flight_shards,
        }
    }

    /// Every shard's record of `txid`, by shard index.
    fn txn_records(&self, txid: &str) -> Vec<(usize, &'a TxnRow)> {
        let found = self.shards.iter().enumerate();
        found
            .filter_map(|(i, shard)| shard.txns.get(txid).map(|row| (i, *row)))
            .collect()
    }
}

impl<'a> ShardIndex<'a> {
    fn new(shard: &'a ShardSnapshot) -> Self {
        let txns = shard.txns.iter().map(|t| (t.txid.as_str(), t)).collect();
        let seats = shard
            .seats
            .iter()
            .map(|s| ((s.flight_id.as_str(), s.seat_no.as_str()), s))
            .collect();
        let mut seats_by_txid: HashMap<&str, Vec<&SeatRow>> = HashMap::new();
        for seat in &shard.seats {
            if let Some(txid) = seat.txid.as_deref() {
                seats_by_txid.entry(txid).or_default().push(seat);
            }
        }
        ShardIndex {
            shard,
            txns,
            seats_by_txid,
            seats,
        }
    }

    fn txn_state(&self, txid: &str) -> Option<String> {
        self.txns.get(txid).map(|t| t.state.clone())
    }
}

fn seat_key(flight_id: &str, seat_no: &str) -> String {
    format!("{flight_id}/{seat_no}")
}

fn is_live(txn: &TxnRow) -> bool {
    txn.state == "prepared" || txn.state == "committed"
}

// ---------------------------------------------------------------------------
// 1. No seat is booked or held by two transactions; no flight oversold.

/// Invariant 1: seat rows are well-formed, no flight has more seats taken
/// than it has, every seat is claimed by at most one live transaction, and a
/// live transaction's recorded seats are the seats that name it.
pub(crate) fn no_double_booking(index: &Index<'_>) -> Vec<Violation> {
    let mut found = Vec::new();
    for (i, shard) in index.shards.iter().enumerate() {
        found.extend(seat_rows_well_formed(i, shard.shard));
        found.extend(flights_not_oversold(i, shard.shard));
        found.extend(seats_claimed_once(i, shard.shard));
        found.extend(recorded_legs_match_seats(i, shard));
    }
    for (flight_id, shards) in &index.flight_shards {
        if shards.len() > 1 {
            found.push(Violation::FlightOnManyShards {
                flight_id: flight_id.to_string(),
                shards: shards.clone(),
            });
        }
    }
    found
}

fn seat_rows_well_formed(shard: usize, snapshot: &ShardSnapshot) -> Vec<Violation> {
    let mut found = Vec::new();
    for seat in &snapshot.seats {
        let (flight_id, seat_no) = (seat.flight_id.clone(), seat.seat_no.clone());
        match (seat.state.as_str(), &seat.txid) {
            ("free", None) | ("held" | "booked", Some(_)) => {}
            ("free", Some(txid)) => found.push(Violation::FreeSeatHasTxid {
                shard,
                flight_id,
                seat_no,
                txid: txid.clone(),
            }),
            ("held" | "booked", None) => found.push(Violation::TakenSeatWithoutTxid {
                shard,
                flight_id,
                seat_no,
                state: seat.state.clone(),
            }),
            (other, _) => found.push(Violation::BadSeatState {
                shard,
                flight_id,
                seat_no,
                state: other.to_owned(),
            }),
        }
    }
    found
}

fn flights_not_oversold(shard: usize, snapshot: &ShardSnapshot) -> Vec<Violation> {
    // flight id → (seat rows, seats taken)
    let mut counts: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for seat in &snapshot.seats {
        let entry = counts.entry(seat.flight_id.as_str()).or_default();
        entry.0 += 1;
        entry.1 += i64::from(seat.state != "free");
    }
    let mut found = Vec::new();
    for flight in &snapshot.flights {
        let (seat_rows, taken) = counts.remove(flight.flight_id.as_str()).unwrap_or_default();
        let (flight_id, capacity) = (flight.flight_id.clone(), flight.capacity);
        if seat_rows != capacity {
            found.push(Violation::SeatCountMismatch {
                shard,
                flight_id: flight_id.clone(),
                capacity,
                seat_rows,
            });
        }
        if taken > capacity {
            found.push(Violation::Oversold {
                shard,
                flight_id,
                capacity,
                taken,
            });
        }
    }
    for (flight_id, (seats, _)) in counts {
        found.push(Violation::SeatsWithoutFlight {
            shard,
            flight_id: flight_id.to_owned(),
            seats,
        });
    }
    found
}

fn seats_claimed_once(shard: usize, snapshot: &ShardSnapshot) -> Vec<Violation> {
    let mut claims: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for txn in snapshot.txns.iter().filter(|t| is_live(t)) {
        for leg in txn.legs.iter().flatten() {
            for seat in &leg.seats {
                claims
                    .entry((leg.flight_id.as_str(), seat.as_str()))
                    .or_default()
                    .insert(txn.txid.as_str());
            }
        }
    }
    claims
        .into_iter()
        .filter(|(_, txids)| txids.len() > 1)
        .map(
            |((flight_id, seat_no), txids)| Violation::SeatClaimedTwice {
                shard,
                flight_id: flight_id.to_owned(),
                seat_no: seat_no.to_owned(),
                txids: txids.into_iter().map(str::to_owned).collect(),
            },
        )
        .collect()
}

fn recorded_legs_match_seats(shard: usize, index: &ShardIndex<'_>) -> Vec<Violation> {
    let mut found = Vec::new();
    for txn in &index.shard.txns {
        let legs = match &txn.legs {
            Ok(legs) => legs,
            Err(error) => {
                found.push(Violation::BadLegsJson {
                    shard,
                    txid: txn.txid.clone(),
                    error: error.clone(),
                });
                continue;
            }
        };
        if !is_live(txn) {
            continue;
        }
        let recorded: BTreeSet<String> = legs
            .iter()
            .flat_map(|leg| leg.seats.iter().map(|seat| seat_key(&leg.flight_id, seat)))
            .collect();
        let seats = index
            .seats_by_txid
            .get(txn.txid.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let actual: BTreeSet<String> = seats
            .iter()
            .map(|s| seat_key(&s.flight_id, &s.seat_no))
            .collect();
        if recorded != actual {
            found.push(Violation::LegsMismatch {
                shard,
                txid: txn.txid.clone(),
                state: txn.state.clone(),
                recorded: recorded.into_iter().collect(),
                actual: actual.into_iter().collect(),
            });
        }
    }
    found
}

// ---------------------------------------------------------------------------
// 2. Atomicity.

/// Invariant 2: seats agree with their transaction's state on their shard;
/// no transaction is committed on one shard and aborted on another; and, at
/// quiescence, a committed transaction has every leg of its itinerary booked.
pub(crate) fn atomicity(index: &Index<'_>, mode: CheckMode) -> Vec<Violation> {
    let mut found = Vec::new();
    for (i, shard) in index.shards.iter().enumerate() {
        found.extend(seats_agree_with_txn_state(i, shard));
    }
    let txids: BTreeSet<&str> = index
        .shards
        .iter()
        .flat_map(|s| s.shard.txns.iter().map(|t| t.txid.as_str()))
        .collect();
    for txid in txids {
        let records = index.txn_records(txid);
        found.extend(one_outcome_everywhere(txid, &records, mode));
        if mode == CheckMode::Quiescent {
            found.extend(whole_itinerary_booked(index, txid, &records));
        }
    }
    found
}

fn seats_agree_with_txn_state(shard: usize, index: &ShardIndex<'_>) -> Vec<Violation> {
    let mut found = Vec::new();
    for seat in &index.shard.seats {
        let Some(txid) = seat.txid.clone() else {
            continue;
        };
        let txn_state = index.txn_state(&txid);
        let (flight_id, seat_no) = (seat.flight_id.clone(), seat.seat_no.clone());
        match (seat.state.as_str(), txn_state.as_deref()) {
            ("booked", Some("committed")) | ("held", Some("prepared")) => {}
            ("booked", _) => found.push(Violation::BookedByUncommitted {
                shard,
                flight_id,
                seat_no,
                txid,
                txn_state,
            }),
            ("held", _) => found.push(Violation::HeldByUnprepared {
                shard,
                flight_id,
                seat_no,
                txid,
                txn_state,
            }),
            _ => {} // a free seat naming a txid is reported by invariant 1
        }
    }
    found
}

fn one_outcome_everywhere(
    txid: &str,
    records: &[(usize, &TxnRow)],
    mode: CheckMode,
) -> Option<Violation> {
    let shards_in = |state: &str| -> Vec<usize> {
        records
            .iter()
            .filter(|(_, t)| t.state == state)
            .map(|(i, _)| *i)
            .collect()
    };
    let (committed_on, aborted_on) = (shards_in("committed"), shards_in("aborted"));
    if committed_on.is_empty() || aborted_on.is_empty() {
        return None;
    }
    // A saga's legs are local commits that are compensated one by one: while
    // it runs, committed-here-aborted-there is expected. Never for 2PC.
    let saga = records.iter().all(|(_, t)| t.kind == "local");
    if saga && mode == CheckMode::Live {
        return None;
    }
    Some(Violation::MixedOutcome {
        txid: txid.to_owned(),
        committed_on,
        aborted_on,
    })
}

fn whole_itinerary_booked(
    index: &Index<'_>,
    txid: &str,
    records: &[(usize, &TxnRow)],
) -> Vec<Violation> {
    let committed: Vec<(usize, &TxnRow)> = records
        .iter()
        .copied()
        .filter(|(_, t)| t.state == "committed")
        .collect();
    if committed.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let lengths: BTreeSet<i64> = committed.iter().map(|(_, t)| t.itinerary_legs).collect();
    if lengths.len() > 1 {
        let itinerary_legs = committed
            .iter()
            .map(|(i, t)| (*i, t.itinerary_legs))
            .collect();
        found.push(Violation::ItineraryLegsDisagree {
            txid: txid.to_owned(),
            itinerary_legs,
        });
    }
    let itinerary_legs = lengths.iter().copied().max().unwrap_or_default();
    let legs_booked = flights_booked_by(index, txid);
    if legs_booked.len() as i64 != itinerary_legs {
        found.push(Violation::PartialItinerary {
            txid: txid.to_owned(),
            itinerary_legs,
            legs_booked,
        });
    }
    found
}

/// Sagas (local-commit txids) booked on some shards but not all of their
/// legs: a compensation or a recovery is still running. Not quiescent yet;
/// at quiescence each would be a partial itinerary.
pub(crate) fn sagas_in_flight(index: &Index<'_>) -> Vec<String> {
    let txids: BTreeSet<&str> = index
        .shards
        .iter()
        .flat_map(|s| s.shard.txns.iter())
        .filter(|t| t.kind == "local" && t.state == "committed" && t.itinerary_legs > 1)
        .map(|t| t.txid.as_str())
        .collect();
    txids
        .into_iter()
        .filter(|txid| {
            let records = index.txn_records(txid);
            let itinerary_legs = records.iter().map(|(_, t)| t.itinerary_legs).max();
            let booked = flights_booked_by(index, txid).len() as i64;
            records.iter().any(|(_, t)| t.state != "committed") || Some(booked) != itinerary_legs
        })
        .map(str::to_owned)
        .collect()
}

/// The flights (as `shard N: FLIGHT`) on which `txid` has booked seats.
fn flights_booked_by(index: &Index<'_>, txid: &str) -> Vec<String> {
    let mut flights = BTreeSet::new();
    for (i, shard) in index.shards.iter().enumerate() {
        for seat in shard
            .seats_by_txid
            .get(txid)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if seat.state == "booked" {
                flights.insert(format!("shard {i}: {}", seat.flight_id));
            }
        }
    }
    flights.into_iter().collect()
}

// ---------------------------------------------------------------------------
// 3. Durability.

/// Invariant 3: a retried key got the same answer; every COMMITTED reply is
/// booked in full with exactly its seats; an ABORTED reply left no seat.
/// Unknown outcomes are never assumed absent, so they are not checked.
pub(crate) fn durability(
    index: &Index<'_>,
    entries: &[OracleEntry],
    mode: CheckMode,
) -> Vec<Violation> {
    let mut found = replies_never_change(entries);
    let mut seen = BTreeSet::new();
    for entry in entries {
        match &entry.outcome {
            OracleOutcome::Committed(reply) if seen.insert(reply.txid.clone()) => {
                found.extend(committed_reply_booked(
                    index,
                    entry.request.legs.len(),
                    reply,
                    mode,
                ));
            }
            OracleOutcome::Aborted(reply) if seen.insert(reply.txid.clone()) => {
                found.extend(aborted_reply_left_nothing(index, reply, mode));
            }
            _ => {}
        }
    }
    found
}

fn reply_summary(outcome: &OracleOutcome) -> Option<String> {
    match outcome {
        OracleOutcome::Committed(reply) => Some(format!(
            "COMMITTED txid {} seats {:?}",
            reply.txid, reply.legs
        )),
        OracleOutcome::Aborted(reply) => Some(format!("ABORTED txid {}", reply.txid)),
        OracleOutcome::Unknown { .. } => None,
    }
}

fn replies_never_change(entries: &[OracleEntry]) -> Vec<Violation> {
    let mut first_by_key: HashMap<&str, String> = HashMap::new();
    let mut found = Vec::new();
    for entry in entries {
        let Some(summary) = reply_summary(&entry.outcome) else {
            continue;
        };
        let key = entry.request.idempotency_key.as_str();
        match first_by_key.get(key) {
            None => {
                first_by_key.insert(key, summary);
            }
            Some(first) if *first != summary => found.push(Violation::ReplyChanged {
                idempotency_key: key.to_owned(),
                first: first.clone(),
                then: summary,
            }),
            Some(_) => {}
        }
    }
    found
}

fn committed_reply_booked(
    index: &Index<'_>,
    legs_requested: usize,
    reply: &BookReply,
    mode: CheckMode,
) -> Vec<Violation> {
    let txid = reply.txid.clone();
    let mut found = Vec::new();
    if reply.legs.len() != legs_requested {
        let legs_replied = reply.legs.len();
        found.push(Violation::CommittedReplyIncomplete {
            txid: txid.clone(),
            legs_requested,
            legs_replied,
        });
    }
    let mut shards_checked = BTreeSet::new();
    for leg in &reply.legs {
        let Some(shard) = index
            .flight_shards
            .get(leg.flight_id.as_str())
            .and_then(|s| s.first().copied())
        else {
            found.push(Violation::CommittedFlightMissing {
                txid: txid.clone(),
                flight_id: leg.flight_id.clone(),
            });
            continue;
        };
        found.extend(committed_leg_booked(
            &index.shards[shard],
            &txid,
            &leg.flight_id,
            &leg.seats,
            mode,
        ));
        if shards_checked.insert(shard) {
            found.extend(committed_txn_recorded(
                &index.shards[shard],
                shard,
                &txid,
                mode,
            ));
        }
    }
    found
}

fn committed_leg_booked(
    shard: &ShardIndex<'_>,
    txid: &str,
    flight_id: &str,
    replied: &[String],
    mode: CheckMode,
) -> Vec<Violation> {
    let mut found = Vec::new();
    for seat_no in replied {
        let seat = shard.seats.get(&(flight_id, seat_no.as_str())).copied();
        let ours = seat.is_some_and(|s| s.txid.as_deref() == Some(txid));
        let state_ok = seat
            .is_some_and(|s| s.state == "booked" || (mode == CheckMode::Live && s.state == "held"));
        if !(ours && state_ok) {
            let found_text = match seat {
                None => "missing".to_owned(),
                Some(s) => format!("{} by {}", s.state, s.txid.as_deref().unwrap_or("nobody")),
            };
            found.push(Violation::CommittedSeatNotBooked {
                txid: txid.to_owned(),
                flight_id: flight_id.to_owned(),
                seat_no: seat_no.clone(),
                found: found_text,
            });
        }
    }
    let taken = shard
        .seats_by_txid
        .get(txid)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let booked: BTreeSet<&str> = taken
        .iter()
        .filter(|s| s.flight_id == flight_id)
        .map(|s| s.seat_no.as_str())
        .collect();
    let replied_set: BTreeSet<&str> = replied.iter().map(String::as_str).collect();
    if booked.difference(&replied_set).next().is_some() {
        found.push(Violation::CommittedExtraSeats {
            txid: txid.to_owned(),
            flight_id: flight_id.to_owned(),
            replied: replied.to_vec(),
            booked: booked.into_iter().map(str::to_owned).collect(),
        });
    }
    found
}

fn committed_txn_recorded(
    shard: &ShardIndex<'_>,
    index: usize,
    txid: &str,
    mode: CheckMode,
) -> Option<Violation> {
    let txn_state = shard.txn_state(txid);
    let ok = match txn_state.as_deref() {
        Some("committed") => true,
        Some("prepared") => mode == CheckMode::Live,
        _ => false,
    };
    (!ok).then(|| Violation::CommittedTxnNotCommitted {
        txid: txid.to_owned(),
        shard: index,
        txn_state,
    })
}

fn aborted_reply_left_nothing(
    index: &Index<'_>,
    reply: &BookReply,
    mode: CheckMode,
) -> Vec<Violation> {
    if reply.txid.is_empty() {
        return Vec::new();
    }
    // Until quiescence, phase 2 (or a saga's compensation) may still be
    // releasing seats: only a 2PC seat *booked* is wrong at once.
    let saga = reply.mode == Mode::Saga as i32;
    let mut found = Vec::new();
    for (i, shard) in index.shards.iter().enumerate() {
        for seat in shard
            .seats_by_txid
            .get(reply.txid.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let wrong_now = seat.state == "booked" && !saga;
            if mode == CheckMode::Quiescent || wrong_now {
                found.push(Violation::AbortedReplyHasSeat {
                    txid: reply.txid.clone(),
                    shard: i,
                    flight_id: seat.flight_id.clone(),
                    seat_no: seat.seat_no.clone(),
                    state: seat.state.clone(),
                });
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------
// 4. Liveness.

/// Invariant 4 (quiescence only): no seat held, no transaction prepared.
pub(crate) fn liveness(index: &Index<'_>) -> Vec<Violation> {
    let mut found = Vec::new();
    for (shard, index) in index.shards.iter().enumerate() {
        for seat in index.shard.seats.iter().filter(|s| s.state == "held") {
            found.push(Violation::SeatStillHeld {
                shard,
                flight_id: seat.flight_id.clone(),
                seat_no: seat.seat_no.clone(),
                txid: seat.txid.clone().unwrap_or_default(),
            });
        }
        for txn in index.shard.txns.iter().filter(|t| t.state == "prepared") {
            found.push(Violation::TxnStillPrepared {
                shard,
                txid: txn.txid.clone(),
                updated_at_unix_ms: txn.updated_at,
            });
        }
    }
    found
}

//! Applying one operation inside the batch's local transaction: read the
//! txid's record, ask the protocol table (protocol.rs) what to do, do it.
//! Reads and writes go through the batch's view of the shard (`Batch`),
//! which sends them to the database a batch at a time.
//!
//! A fresh PREPARE/BOOK_LOCAL checks every leg before it changes anything:
//! it either claims all its seats and records the txid, or claims none and
//! records the txid aborted with the refusal (so a repeat gets the same NO).

use booking_proto::v1::AbortReason;

use super::batch::Batch;
use super::{flights, seats, OpResult};
use crate::error::{Refused, StoreError};
use crate::model::{FlightMap, LegSeats, Refusal, SeatLabel, TxnId, TxnKind, TxnRecord, TxnState};
use crate::op::{Inventory, Op, Reply, Vote};
use crate::protocol::{self, Action, SeatState, Transition};
use crate::request::{Booking, LegRequest, SeatChoice};

/// What every operation of one batch shares.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub shard: &'a str,
    /// The batch's clock: `updated_at` of every row it writes.
    pub now_ms: i64,
}

/// Applies one operation: its result, and how it moved the count of
/// prepared txids (-1, 0 or +1). `Err` fails the whole batch.
pub async fn apply_op(
    conn: &mut Batch<'_>,
    ctx: &Ctx<'_>,
    op: &Op,
) -> Result<(OpResult, i64), StoreError> {
    let shard = ctx.shard;
    match op {
        Op::CreateFlight(map) => Ok((create_flight(conn, map).await?, 0)),
        Op::Prepare(booking) => {
            let decide =
                |r: Option<&TxnRecord>| protocol::on_reserve(TxnKind::TwoPhase, booking, r, shard);
            txn_op(conn, ctx, &booking.txid, Some(booking), decide).await
        }
        Op::BookLocal(booking) => {
            let decide =
                |r: Option<&TxnRecord>| protocol::on_reserve(TxnKind::Local, booking, r, shard);
            txn_op(conn, ctx, &booking.txid, Some(booking), decide).await
        }
        Op::Commit(txid) => txn_op(conn, ctx, txid, None, |r| protocol::on_commit(txid, r)).await,
        Op::Abort(txid) => txn_op(conn, ctx, txid, None, |r| protocol::on_abort(txid, r)).await,
        Op::Resolve(txid) => txn_op(conn, ctx, txid, None, protocol::on_resolve).await,
        Op::Compensate(txid) => {
            txn_op(conn, ctx, txid, None, |r| protocol::on_compensate(txid, r)).await
        }
    }
}

async fn txn_op(
    conn: &mut Batch<'_>,
    ctx: &Ctx<'_>,
    txid: &TxnId,
    booking: Option<&Booking>,
    decide: impl FnOnce(Option<&TxnRecord>) -> Action,
) -> Result<(OpResult, i64), StoreError> {
    let record = conn.txn(txid).await?;
    match decide(record.as_ref()) {
        Action::Reserve(kind) => {
            let booking =
                booking.expect("only PREPARE and BOOK_LOCAL reserve, and both carry a booking");
            let result = reserve(conn, ctx, kind, booking).await?;
            let held = kind == TxnKind::TwoPhase && matches!(result, Ok(Reply::Vote(Vote::Yes(_))));
            Ok((result, i64::from(held)))
        }
        Action::Answer(reply) => Ok((Ok(reply), 0)),
        Action::Transition(transition) => {
            let record = record.expect("the protocol table moves only a txid it has a record of");
            let result = apply_transition(conn, &record, transition).await?;
            let decided = transition.txn_from == TxnState::Prepared;
            Ok((result, -i64::from(decided)))
        }
        Action::Fence(kind, reply) => {
            conn.insert_txn(TxnRecord::fence(txid.clone(), kind, None, ctx.now_ms))?;
            Ok((Ok(reply), 0))
        }
        Action::Violation(violation) => Ok((Err(Refused::Protocol(violation)), 0)),
    }
}

/// A fresh PREPARE (hold) or BOOK_LOCAL (book): all seats or none.
async fn reserve(
    conn: &mut Batch<'_>,
    ctx: &Ctx<'_>,
    kind: TxnKind,
    booking: &Booking,
) -> Result<OpResult, StoreError> {
    let legs = match plan(conn, ctx, booking).await? {
        Ok(legs) => legs,
        Err(refusal) => {
            let fence = TxnRecord::fence(
                booking.txid.clone(),
                kind,
                Some(refusal.clone()),
                ctx.now_ms,
            );
            conn.insert_txn(fence)?;
            return Ok(Ok(Reply::Vote(Vote::No(refusal))));
        }
    };
    let (seat_state, txn_state) = match kind {
        TxnKind::TwoPhase => (SeatState::Held, TxnState::Prepared),
        TxnKind::Local => (SeatState::Booked, TxnState::Committed),
    };
    for (request, planned) in booking.legs.iter().zip(&legs) {
        claim_leg(conn, &booking.txid, request, planned, seat_state);
    }
    let record = TxnRecord {
        txid: booking.txid.clone(),
        state: txn_state,
        kind,
        itinerary_legs: booking.itinerary_legs,
        legs,
        refusal: None,
        updated_at_ms: ctx.now_ms,
    };
    let legs = record.legs.clone();
    conn.insert_txn(record)?;
    Ok(Ok(Reply::Vote(Vote::Yes(legs))))
}

fn claim_leg(
    conn: &mut Batch<'_>,
    txid: &TxnId,
    request: &LegRequest,
    planned: &LegSeats,
    to: SeatState,
) {
    for (i, seat_no) in planned.seats.iter().enumerate() {
        let passenger = request.passengers.get(i).map(String::as_str);
        conn.claim(&planned.flight_id, seat_no, to, txid, passenger);
    }
}

/// The seats of every leg, or the first leg's refusal. Writes nothing.
async fn plan(
    conn: &mut Batch<'_>,
    ctx: &Ctx<'_>,
    booking: &Booking,
) -> Result<Result<Vec<LegSeats>, Refusal>, StoreError> {
    let mut legs = Vec::with_capacity(booking.legs.len());
    for leg in &booking.legs {
        match plan_leg(conn, ctx, leg).await? {
            Ok(seats) => legs.push(LegSeats {
                leg_index: leg.leg_index,
                flight_id: leg.flight_id.clone(),
                seats,
            }),
            Err(refusal) => return Ok(Err(refusal)),
        }
    }
    Ok(Ok(legs))
}

async fn plan_leg(
    conn: &mut Batch<'_>,
    ctx: &Ctx<'_>,
    leg: &LegRequest,
) -> Result<Result<Vec<String>, Refusal>, StoreError> {
    let refuse = |reason, message| Refusal {
        reason,
        leg_index: leg.leg_index,
        flight_id: leg.flight_id.clone(),
        message,
    };
    let Some(map) = conn.flight(&leg.flight_id).await? else {
        let message = format!(
            "flight {} does not exist on shard {}",
            leg.flight_id, ctx.shard
        );
        return Ok(Err(refuse(AbortReason::UnknownFlight, message)));
    };
    match &leg.seats {
        SeatChoice::Count(count) => {
            let free = conn.lowest_free(&map.flight_id, *count).await?;
            if free.len() < *count {
                let message = format!(
                    "flight {} has {} free seats, leg asks for {count}",
                    map.flight_id,
                    free.len()
                );
                return Ok(Err(refuse(AbortReason::SoldOut, message)));
            }
            Ok(Ok(free))
        }
        SeatChoice::Named(labels) => pick_named(conn, &map, labels)
            .await
            .map(|r| r.map_err(|m| refuse(AbortReason::SeatTaken, m))),
    }
}

/// The named seats if every one exists and is free, else why not.
async fn pick_named(
    conn: &mut Batch<'_>,
    map: &FlightMap,
    labels: &[SeatLabel],
) -> Result<Result<Vec<String>, String>, StoreError> {
    if let Some(missing) = labels
        .iter()
        .find(|label| map.seat_index(**label).is_none())
    {
        return Ok(Err(format!(
            "seat {missing} does not exist on flight {} ({})",
            map.flight_id,
            map.describe()
        )));
    }
    let wanted: Vec<String> = labels.iter().map(SeatLabel::to_string).collect();
    let states = conn.seat_states(&map.flight_id, &wanted).await?;
    for seat_no in &wanted {
        match states.get(seat_no).map(String::as_str) {
            Some("free") => {}
            Some(state) => {
                return Ok(Err(format!(
                    "seat {seat_no} on flight {} is already {state}",
                    map.flight_id
                )))
            }
            None => {
                return Err(StoreError::CorruptRow {
                    table: "seats",
                    key: format!("{}/{seat_no}", map.flight_id),
                    problem: "missing, although the flight's seat map lists it".into(),
                })
            }
        }
    }
    Ok(Ok(wanted))
}

/// COMMIT, ABORT or COMPENSATE of a known txid: its seats, then its row.
async fn apply_transition(
    conn: &mut Batch<'_>,
    record: &TxnRecord,
    transition: Transition,
) -> Result<OpResult, StoreError> {
    conn.move_seats(record, transition).await?;
    conn.set_txn_state(&record.txid, transition.txn_from, transition.txn_to)?;
    Ok(Ok(Reply::Ack(transition.txn_to)))
}

/// CREATE_FLIGHT: the flight and all its seats, free; idempotent for the
/// same seat map.
async fn create_flight(conn: &mut Batch<'_>, map: &FlightMap) -> Result<OpResult, StoreError> {
    match conn.flight(&map.flight_id).await? {
        Some(existing) if existing == *map => Ok(Ok(Reply::Flight(
            flights::inventory(conn.conn().await?, &existing, false).await?,
        ))),
        Some(existing) => Ok(Err(Refused::FlightExists {
            flight_id: map.flight_id.clone(),
            existing: existing.describe(),
            asked: map.describe(),
        })),
        None => {
            let db = conn.conn().await?;
            flights::insert(db, map).await?;
            seats::insert_map(db, map).await?;
            conn.created_flight(map);
            let inventory = Inventory {
                map: map.clone(),
                free: map.capacity(),
                held: 0,
                booked: 0,
                seats: Vec::new(),
            };
            Ok(Ok(Reply::Flight(inventory)))
        }
    }
}

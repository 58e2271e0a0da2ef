//! Domain replies to prost messages, and domain errors to gRPC statuses:
//! the one place where either mapping is decided.

use booking_proto::v1::{
    self, Ack, FlightInventory, LegResult, ResolveReply, SeatRow, ShardTxnState,
    TxnRow as ProtoTxnRow,
};
use booking_proto::validate::InvalidField;
use tonic::Status;

use crate::error::{OpError, Refused};
use crate::model::{LegSeats, TxnState};
use crate::op::{Inventory, Resolution, Vote};
use crate::store::TxnRow;

pub fn shard_state(state: TxnState) -> ShardTxnState {
    match state {
        TxnState::Prepared => ShardTxnState::Prepared,
        TxnState::Committed => ShardTxnState::ShardCommitted,
        TxnState::Aborted => ShardTxnState::ShardAborted,
    }
}

pub fn leg_results(legs: &[LegSeats], shard: &str) -> Vec<LegResult> {
    legs.iter()
        .map(|leg| LegResult {
            leg_index: leg.leg_index,
            flight_id: leg.flight_id.clone(),
            shard: shard.to_string(),
            seats: leg.seats.clone(),
        })
        .collect()
}

pub fn vote(vote: &Vote, shard: &str) -> v1::Vote {
    match vote {
        Vote::Yes(legs) => v1::Vote {
            yes: true,
            legs: leg_results(legs, shard),
            refusal: None,
        },
        Vote::No(refusal) => v1::Vote {
            yes: false,
            legs: Vec::new(),
            refusal: Some(refusal.to_proto()),
        },
    }
}

pub fn ack(state: TxnState) -> Ack {
    Ack {
        state: shard_state(state) as i32,
    }
}

pub fn resolution(resolution: &Resolution, shard: &str) -> ResolveReply {
    ResolveReply {
        state: shard_state(resolution.state) as i32,
        legs: leg_results(&resolution.legs, shard),
        refusal: resolution.refusal.as_ref().map(|r| r.to_proto()),
    }
}

pub fn inventory(inventory: &Inventory) -> FlightInventory {
    FlightInventory {
        flight_id: inventory.map.flight_id.clone(),
        capacity: inventory.map.capacity(),
        free: inventory.free,
        held: inventory.held,
        booked: inventory.booked,
        seats: inventory
            .seats
            .iter()
            .map(|seat| SeatRow {
                seat_no: seat.seat_no.clone(),
                state: seat.state.clone(),
                txid: seat.txid.clone().unwrap_or_default(),
                passenger: seat.passenger.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

pub fn txn_row(row: &TxnRow) -> ProtoTxnRow {
    ProtoTxnRow {
        txid: row.txid.clone(),
        state: shard_state(row.state) as i32,
        updated_at_unix_ms: u64::try_from(row.updated_at_ms).unwrap_or(0),
    }
}

pub fn invalid(error: InvalidField) -> Status {
    Status::invalid_argument(error.to_string())
}

/// The status of an operation that ended without a reply.
pub fn op_error(error: &OpError) -> Status {
    let message = error.to_string();
    match error {
        OpError::Refused(Refused::NotOwned { .. } | Refused::Protocol(_)) => {
            Status::failed_precondition(message)
        }
        OpError::Refused(Refused::FlightExists { .. }) => Status::already_exists(message),
        OpError::Overloaded { .. } => Status::resource_exhausted(message),
        OpError::Stopped => Status::unavailable(message),
        OpError::BatchFailed { bug: false, .. } => Status::unavailable(message),
        OpError::BatchFailed { bug: true, .. } => Status::internal(message),
    }
}

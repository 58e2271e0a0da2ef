//! The `booking.v1.Coordinator` gRPC service: validates at the edge, calls
//! the core, and maps every error to a status with a message saying what to
//! fix. Business outcomes (sold out) are replies, not errors.

use std::sync::{Arc, OnceLock};

use booking_proto::limits::MESSAGE_BYTES_MAX;
use booking_proto::routing::partition_of;
use booking_proto::v1::coordinator_server::Coordinator;
use booking_proto::v1::get_transaction_request::Key;
use booking_proto::v1::{
    AbortReason, BookReply, BookRequest, Decision, GetDecisionReply, GetDecisionRequest,
    GetRouteReply, GetRouteRequest, GetTransactionRequest, Outcome, RetryTransactionRequest,
    TransactionStatus,
};
use booking_proto::validate;
use prost::Message;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::core::{BookError, Core, RETRY_AFTER_MS};
use crate::registry::RetryOutcome;

/// Why a txid or key may be unknown though it was booked.
const FORGOTTEN: &str =
    " (an ended transaction is forgotten once the log retention window, log_retention_secs, has passed)";

pub struct CoordinatorService {
    /// Set once the decision log is replayed; until then every call is
    /// UNAVAILABLE (`server.rs`).
    ready: Arc<OnceLock<Arc<Core>>>,
}

impl CoordinatorService {
    pub fn new(ready: Arc<OnceLock<Arc<Core>>>) -> CoordinatorService {
        CoordinatorService { ready }
    }

    fn core(&self) -> Result<&Arc<Core>, Status> {
        self.ready.get().ok_or_else(|| {
            Status::unavailable(
                "the coordinator is replaying its decision log; retry shortly (health reports NOT_SERVING until it is done)",
            )
        })
    }
}

fn book_status(error: BookError) -> Status {
    let message = error.to_string();
    match error {
        BookError::Invalid(_) => Status::invalid_argument(message),
        BookError::KeyReused { .. } => Status::failed_precondition(message),
        BookError::Overloaded { .. } => {
            let mut status = Status::resource_exhausted(message);
            let hint = RETRY_AFTER_MS
                .to_string()
                .parse()
                .expect("digits are valid metadata");
            status
                .metadata_mut()
                .insert(booking_proto::limits::RETRY_AFTER_KEY, hint);
            status
        }
        BookError::StillInProgress { .. } | BookError::Log(_) => Status::unavailable(message),
    }
}

/// A flight that does not exist is a bad request (NOT_FOUND), even though it
/// is the shard that finds out: the reply is still logged, so a retry of the
/// same key gets the same status.
fn reply_or_not_found(reply: BookReply) -> Result<Response<BookReply>, Status> {
    match &reply.abort {
        Some(abort)
            if reply.outcome == Outcome::Aborted as i32
                && abort.reason == AbortReason::UnknownFlight as i32 =>
        {
            Err(Status::not_found(format!(
                "legs[{}].flight_id: flight {} does not exist ({}); create it first or fix the id",
                abort.leg_index, abort.flight_id, abort.message
            )))
        }
        _ => Ok(Response::new(reply)),
    }
}

fn check_size(message: &impl Message) -> Result<(), Status> {
    let size = message.encoded_len();
    if size > MESSAGE_BYTES_MAX {
        return Err(Status::resource_exhausted(format!(
            "request is {size} bytes; at most {MESSAGE_BYTES_MAX}: split the itinerary or shorten names"
        )));
    }
    Ok(())
}

fn parse_txid(field: &str, text: &str) -> Result<Uuid, Status> {
    validate::txid(field, text)
        .map(Uuid::from_bytes)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn book(&self, request: Request<BookRequest>) -> Result<Response<BookReply>, Status> {
        let request = request.into_inner();
        check_size(&request)?;
        let reply = self.core()?.book(request).await.map_err(book_status)?;
        reply_or_not_found(reply)
    }

    async fn get_transaction(
        &self,
        request: Request<GetTransactionRequest>,
    ) -> Result<Response<TransactionStatus>, Status> {
        let request = request.into_inner();
        let core = self.core()?;
        let status = match request.key {
            Some(Key::Txid(text)) => {
                let txid = parse_txid("txid", &text)?;
                core.registry
                    .status(txid)
                    .ok_or_else(|| Status::not_found(format!("no transaction {txid}{FORGOTTEN}")))?
            }
            Some(Key::IdempotencyKey(key)) if !key.is_empty() => {
                core.registry.status_by_key(&key).ok_or_else(|| {
                    Status::not_found(format!(
                        "no transaction with idempotency key {key:?}{FORGOTTEN}"
                    ))
                })?
            }
            _ => {
                return Err(Status::invalid_argument(
                    "key: give a txid or a non-empty idempotency_key",
                ))
            }
        };
        Ok(Response::new(status))
    }

    async fn get_decision(
        &self,
        request: Request<GetDecisionRequest>,
    ) -> Result<Response<GetDecisionReply>, Status> {
        let txid = parse_txid("txid", &request.into_inner().txid)?;
        let decision = self.core()?.registry.decision(txid);
        crate::metrics::get_decision(match decision {
            Decision::Commit => "commit",
            Decision::Abort => "abort",
            _ => "in_progress",
        });
        tracing::debug!(%txid, ?decision, "GetDecision");
        Ok(Response::new(GetDecisionReply {
            decision: decision as i32,
        }))
    }

    async fn get_route(
        &self,
        request: Request<GetRouteRequest>,
    ) -> Result<Response<GetRouteReply>, Status> {
        let flight_id = request.into_inner().flight_id;
        validate::flight_id("flight_id", &flight_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let map = self.core()?.map();
        let shard = &map.shards()[map.shard_of(&flight_id)];
        Ok(Response::new(GetRouteReply {
            partition: partition_of(&flight_id, map.partitions()),
            partitions: map.partitions(),
            shard: shard.name.clone(),
            address: shard.address.clone(),
            flight_id,
        }))
    }

    async fn retry_transaction(
        &self,
        request: Request<RetryTransactionRequest>,
    ) -> Result<Response<TransactionStatus>, Status> {
        let txid = parse_txid("txid", &request.into_inner().txid)?;
        match self.core()?.registry.retry(txid) {
            RetryOutcome::Woken(status) => {
                tracing::info!(%txid, "operator asked to re-drive the transaction now");
                Ok(Response::new(status))
            }
            RetryOutcome::Ended(_) => Err(Status::failed_precondition(format!(
                "transaction {txid} has ended: every shard acknowledged its decision; nothing to retry"
            ))),
            RetryOutcome::Unknown => Err(Status::not_found(format!(
                "no transaction {txid}{FORGOTTEN}"
            ))),
        }
    }
}

//! The `booking.v1.Participant` gRPC service. Each handler checks the
//! request's size and fields (INVALID_ARGUMENT), the shard's ownership of
//! its flights (FAILED_PRECONDITION), hands the operation to the writers and
//! maps the answer; it writes nothing itself. Reads (GetFlight, ListTxns)
//! go to the store directly.

use crate::failpoints::crash_point;
use booking_proto::limits::MESSAGE_BYTES_MAX;
use booking_proto::v1::participant_server::Participant;
use booking_proto::v1::{
    self, Ack, CreateFlightRequest, DecisionRequest, FlightInventory, GetFlightRequest,
    ListTxnsReply, ListTxnsRequest, PrepareRequest, ResolveReply, ResolveRequest,
};
use booking_proto::validate;
use tonic::{Request, Response, Status};
use tracing::{debug, error, info, info_span, Instrument};

use crate::error::{OpError, Refused, StoreError};
use crate::model::{FlightMap, TxnId};
use crate::op::{Op, Reply};
use crate::request::Booking;
use crate::shard::Shard;
use crate::store::Store;
use crate::wire;
use crate::writer::Writers;

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct ParticipantService {
    shard: Shard,
    writers: Writers,
    store: Store,
}

impl ParticipantService {
    pub fn new(shard: Shard, writers: Writers, store: Store) -> ParticipantService {
        ParticipantService {
            shard,
            writers,
            store,
        }
    }

    /// Admits the op and waits for the local commit of its batch.
    async fn submit(&self, op: Op) -> Result<Reply, Status> {
        let verb = op.verb();
        let outcome = match self.shard.admit(&op) {
            Ok(()) => self.writers.submit(op).await,
            Err(refused) => Err(OpError::Refused(refused)),
        };
        outcome.map_err(|err| {
            match &err {
                OpError::Refused(Refused::Protocol(_)) => error!(verb, error = %err, "refused"),
                OpError::Refused(_) => info!(verb, error = %err, "refused"),
                _ => debug!(verb, error = %err, "not applied"),
            }
            wire::op_error(&err)
        })
    }

    /// PREPARE or BOOK_LOCAL.
    async fn book(
        &self,
        request: PrepareRequest,
        op: fn(Booking) -> Op,
    ) -> Result<Response<v1::Vote>, Status> {
        check_size(&request)?;
        let booking = Booking::try_from(request).map_err(wire::invalid)?;
        let Reply::Vote(vote) = self.submit(op(booking)).await? else {
            return Err(mismatch("a vote"));
        };
        debug!(vote = ?vote, "voted");
        Ok(Response::new(wire::vote(&vote, &self.shard.name)))
    }

    /// COMMIT, ABORT or COMPENSATE.
    async fn decide(
        &self,
        request: DecisionRequest,
        op: fn(TxnId) -> Op,
    ) -> Result<Response<Ack>, Status> {
        check_size(&request)?;
        let txid = TxnId::parse("txid", &request.txid).map_err(wire::invalid)?;
        let Reply::Ack(state) = self.submit(op(txid)).await? else {
            return Err(mismatch("an ack"));
        };
        debug!(state = state.as_str(), "acknowledged");
        Ok(Response::new(wire::ack(state)))
    }

    async fn do_resolve(&self, request: ResolveRequest) -> Result<Response<ResolveReply>, Status> {
        check_size(&request)?;
        let txid = TxnId::parse("txid", &request.txid).map_err(wire::invalid)?;
        let Reply::Resolution(resolution) = self.submit(Op::Resolve(txid)).await? else {
            return Err(mismatch("a resolution"));
        };
        Ok(Response::new(wire::resolution(
            &resolution,
            &self.shard.name,
        )))
    }

    async fn do_create_flight(
        &self,
        request: CreateFlightRequest,
    ) -> Result<Response<FlightInventory>, Status> {
        check_size(&request)?;
        let map = FlightMap::try_from(request).map_err(wire::invalid)?;
        let Reply::Flight(inventory) = self.submit(Op::CreateFlight(map)).await? else {
            return Err(mismatch("an inventory"));
        };
        Ok(Response::new(wire::inventory(&inventory)))
    }

    async fn do_get_flight(
        &self,
        request: GetFlightRequest,
    ) -> Result<Response<FlightInventory>, Status> {
        check_size(&request)?;
        validate::flight_id("flight_id", &request.flight_id).map_err(wire::invalid)?;
        let found = self
            .store
            .get_flight(&request.flight_id, request.include_seats)
            .await
            .map_err(read_failed)?;
        let inventory = found.ok_or_else(|| {
            Status::not_found(format!(
                "flight {} does not exist on shard {}",
                request.flight_id, self.shard.name
            ))
        })?;
        Ok(Response::new(wire::inventory(&inventory)))
    }

    async fn do_list_txns(
        &self,
        request: ListTxnsRequest,
    ) -> Result<Response<ListTxnsReply>, Status> {
        check_size(&request)?;
        let rows = self
            .store
            .list_txns(request.prepared_only, request.limit)
            .await
            .map_err(read_failed)?;
        Ok(Response::new(ListTxnsReply {
            txns: rows.iter().map(wire::txn_row).collect(),
        }))
    }
}

#[tonic::async_trait]
impl Participant for ParticipantService {
    async fn prepare(
        &self,
        request: Request<PrepareRequest>,
    ) -> Result<Response<v1::Vote>, Status> {
        let request = request.into_inner();
        let span = info_span!("prepare", txid = %request.txid);
        let vote = self.book(request, Op::Prepare).instrument(span).await;
        if matches!(&vote, Ok(vote) if vote.get_ref().yes) {
            crash_point("participant::after_prepare_commit");
        }
        vote
    }

    async fn commit(&self, request: Request<DecisionRequest>) -> Result<Response<Ack>, Status> {
        let request = request.into_inner();
        let span = info_span!("commit", txid = %request.txid);
        let ack = self.decide(request, Op::Commit).instrument(span).await;
        if ack.is_ok() {
            crash_point("participant::after_commit_applied");
        }
        ack
    }

    async fn abort(&self, request: Request<DecisionRequest>) -> Result<Response<Ack>, Status> {
        let request = request.into_inner();
        let span = info_span!("abort", txid = %request.txid);
        self.decide(request, Op::Abort).instrument(span).await
    }

    async fn book_local(
        &self,
        request: Request<PrepareRequest>,
    ) -> Result<Response<v1::Vote>, Status> {
        let request = request.into_inner();
        let span = info_span!("book_local", txid = %request.txid);
        self.book(request, Op::BookLocal).instrument(span).await
    }

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<ResolveReply>, Status> {
        let request = request.into_inner();
        let span = info_span!("resolve", txid = %request.txid);
        self.do_resolve(request).instrument(span).await
    }

    async fn compensate(&self, request: Request<DecisionRequest>) -> Result<Response<Ack>, Status> {
        let request = request.into_inner();
        let span = info_span!("compensate", txid = %request.txid);
        self.decide(request, Op::Compensate).instrument(span).await
    }

    async fn create_flight(
        &self,
        request: Request<CreateFlightRequest>,
    ) -> Result<Response<FlightInventory>, Status> {
        let request = request.into_inner();
        let span = info_span!("create_flight", flight_id = %request.flight_id);
        self.do_create_flight(request).instrument(span).await
    }

    async fn get_flight(
        &self,
        request: Request<GetFlightRequest>,
    ) -> Result<Response<FlightInventory>, Status> {
        let request = request.into_inner();
        let span = info_span!("get_flight", flight_id = %request.flight_id);
        self.do_get_flight(request).instrument(span).await
    }

    async fn list_txns(
        &self,
        request: Request<ListTxnsRequest>,
    ) -> Result<Response<ListTxnsReply>, Status> {
        self.do_list_txns(request.into_inner())
            .instrument(info_span!("list_txns"))
            .await
    }
}

/// Refuses a request larger than the contract allows.
fn check_size<M: prost::Message>(message: &M) -> Result<(), Status> {
    let bytes = message.encoded_len();
    if bytes > MESSAGE_BYTES_MAX {
        return Err(Status::resource_exhausted(format!(
            "request is {bytes} bytes; at most {MESSAGE_BYTES_MAX} bytes are accepted"
        )));
    }
    Ok(())
}

fn read_failed(err: StoreError) -> Status {
    error!(error = %err, "read failed");
    wire::op_error(&OpError::from(&err))
}

/// The writers answered an op with a reply of another op's kind: a bug.
fn mismatch(expected: &str) -> Status {
    error!(
        expected,
        "the writer answered with a reply of the wrong kind"
    );
    Status::internal(format!("bug: expected {expected} from the writer"))
}

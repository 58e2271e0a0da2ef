//! The `booking.v1.Participant` gRPC service. Each handler checks the
//! request's size and fields (INVALID_ARGUMENT), the shard's ownership of
//! its flights (FAILED_PRECONDITION), hands the operation to the writers and
//! maps the answer; it writes nothing itself. Reads (GetFlight, ListTxns)
//! go to the store directly.
//!
//! Every request runs inside one span named after its rpc; the txid
//! messages (Prepare, BookLocal, Commit, Abort, Compensate, Resolve) carry
//! the request's `txid` in it, so every log line about that txid, from
//! validation to the reply, names it. Every request is counted and timed
//! (`metrics`) by outcome once its answer is known.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::failpoints::crash_point;
use booking_proto::limits::MESSAGE_BYTES_MAX;
use booking_proto::limits::{DECISIONS_PER_CALL_MAX, RESERVATIONS_PER_CALL_MAX};
use booking_proto::v1::participant_server::Participant;
use booking_proto::v1::{
    self, Ack, CreateFlightRequest, DecideManyReply, DecideManyRequest, DecisionRequest,
    DecisionResult, FlightInventory, GetFlightRequest, ListTxnsReply, ListTxnsRequest,
    PrepareRequest, ReserveManyReply, ReserveManyRequest, ReserveResult, ResolveReply,
    ResolveRequest, ShardDecision,
};
use booking_proto::validate;
use tonic::{Request, Response, Status};
use tracing::{debug, error, info, info_span, Instrument, Span};

use crate::error::{OpError, Refused, StoreError};
use crate::metrics::{Metrics, Outcome, Rpc};
use crate::model::{FlightMap, TxnId, TxnState};
use crate::op::{Op, Reply};
use crate::request::Booking;
use crate::shard::Shard;
use crate::store::{Store, TxnRow};
use crate::wire;
use crate::writer::Writers;

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct ParticipantService {
    shard: Shard,
    writers: Writers,
    store: Store,
    metrics: Arc<Metrics>,
}

impl ParticipantService {
    pub fn new(
        shard: Shard,
        writers: Writers,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> ParticipantService {
        ParticipantService {
            shard,
            writers,
            store,
            metrics,
        }
    }

    /// Runs one request's `work` inside `span`, then counts and times it.
    async fn observe<T>(
        &self,
        rpc: Rpc,
        span: Span,
        work: impl Future<Output = Result<Response<T>, Status>>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let answer = work.instrument(span).await;
        self.count(
            rpc,
            answer.as_ref().map(Response::get_ref),
            outcome,
            started,
        );
        answer
    }

    /// Counts and times one answered request of `rpc` (or one entry of a
    /// ReserveMany or DecideMany, as its own call) started at `started`.
    fn count<T>(
        &self,
        rpc: Rpc,
        answer: Result<&T, &Status>,
        outcome: impl FnOnce(&T) -> Outcome,
        started: Instant,
    ) {
        let ended = match answer {
            Ok(reply) => outcome(reply),
            Err(status) => {
                self.metrics.request_failed(rpc, status.code());
                Outcome::Error
            }
        };
        self.metrics.request(rpc, ended, started.elapsed());
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

    /// ReserveMany: each entry checked, submitted (all at once, so that
    /// they share the writer lanes' batches) and answered as its own
    /// Prepare or BookLocal would be; each also counted as its own call,
    /// timed as the whole ReserveMany.
    async fn do_reserve_many(
        &self,
        request: ReserveManyRequest,
    ) -> Result<Response<ReserveManyReply>, Status> {
        let count = request.entries.len();
        if count == 0 || count > RESERVATIONS_PER_CALL_MAX {
            return Err(Status::invalid_argument(format!(
                "entries: {count} given; send 1..={RESERVATIONS_PER_CALL_MAX} per call"
            )));
        }
        let started = Instant::now();
        let rpcs: Vec<Rpc> = request
            .entries
            .iter()
            .map(|e| {
                if e.book_local {
                    Rpc::BookLocal
                } else {
                    Rpc::Prepare
                }
            })
            .collect();
        let votes = request
            .entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| async move {
                let Some(request) = entry.request else {
                    return Err(Status::invalid_argument(format!(
                        "entries[{i}].request is missing"
                    )));
                };
                let (op, span): (fn(Booking) -> Op, _) = if entry.book_local {
                    (
                        Op::BookLocal,
                        info_span!("book_local", txid = span_id(&request.txid)),
                    )
                } else {
                    (
                        Op::Prepare,
                        info_span!("prepare", txid = span_id(&request.txid)),
                    )
                };
                self.book(request, op)
                    .instrument(span)
                    .await
                    .map(Response::into_inner)
            });
        let votes = futures::future::join_all(votes).await;
        if votes
            .iter()
            .zip(&rpcs)
            .any(|(vote, rpc)| *rpc == Rpc::Prepare && matches!(vote, Ok(v) if v.yes))
        {
            crash_point("participant::after_prepare_commit");
        }
        let results = votes
            .into_iter()
            .zip(&rpcs)
            .map(|(vote, rpc)| {
                self.count(*rpc, vote.as_ref(), vote_outcome, started);
                match vote {
                    Ok(vote) => ReserveResult {
                        code: tonic::Code::Ok as i32,
                        message: String::new(),
                        vote: Some(vote),
                    },
                    Err(status) => ReserveResult {
                        code: status.code() as i32,
                        message: status.message().to_string(),
                        vote: None,
                    },
                }
            })
            .collect();
        debug!(entries = count, "reservations answered");
        Ok(Response::new(ReserveManyReply { results }))
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

    /// DecideMany: every entry checked first (a malformed one refuses the
    /// whole call), then all submitted at once, so that they share the
    /// writer lanes' batches; each answered as its own call would be.
    async fn do_decide_many(
        &self,
        request: DecideManyRequest,
    ) -> Result<Response<DecideManyReply>, Status> {
        check_size(&request)?;
        let count = request.entries.len();
        if count == 0 || count > DECISIONS_PER_CALL_MAX {
            return Err(Status::invalid_argument(format!(
                "entries: {count} given; send 1..={DECISIONS_PER_CALL_MAX} per call"
            )));
        }
        let ops = request
            .entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let txid = TxnId::parse(&format!("entries[{i}].txid"), &entry.txid)
                    .map_err(wire::invalid)?;
                match ShardDecision::try_from(entry.decision) {
                    Ok(ShardDecision::ShardCommit) => Ok(Op::Commit(txid)),
                    Ok(ShardDecision::ShardAbort) => Ok(Op::Abort(txid)),
                    Ok(ShardDecision::ShardCompensate) => Ok(Op::Compensate(txid)),
                    _ => Err(Status::invalid_argument(format!(
                        "entries[{i}].decision: {} is not SHARD_COMMIT, SHARD_ABORT or SHARD_COMPENSATE",
                        entry.decision
                    ))),
                }
            })
            .collect::<Result<Vec<Op>, Status>>()?;
        let started = Instant::now();
        let rpcs: Vec<Rpc> = ops
            .iter()
            .map(|op| match op {
                Op::Commit(_) => Rpc::Commit,
                Op::Abort(_) => Rpc::Abort,
                _ => Rpc::Compensate,
            })
            .collect();
        let answers = futures::future::join_all(ops.into_iter().map(|op| {
            let span = info_span!(
                "decide",
                txid = span_id(op.txid().map_or("", |t| t.as_str()))
            );
            self.submit(op).instrument(span)
        }))
        .await;
        if answers
            .iter()
            .zip(&rpcs)
            .any(|(answer, rpc)| *rpc == Rpc::Commit && answer.is_ok())
        {
            crash_point("participant::after_commit_applied");
        }
        // Each entry also counts as its own call (rpc commit, abort or
        // compensate), timed as the whole DecideMany.
        for (answer, rpc) in answers.iter().zip(&rpcs) {
            self.count(*rpc, answer.as_ref(), ok, started);
        }
        let results = answers
            .into_iter()
            .map(|answer| match answer {
                Ok(Reply::Ack(state)) => Ok(DecisionResult {
                    code: tonic::Code::Ok as i32,
                    message: String::new(),
                    ack: Some(wire::ack(state)),
                }),
                Ok(_) => Err(mismatch("an ack")),
                Err(status) => Ok(DecisionResult {
                    code: status.code() as i32,
                    message: status.message().to_string(),
                    ack: None,
                }),
            })
            .collect::<Result<Vec<_>, Status>>()?;
        debug!(entries = count, "decisions acknowledged");
        Ok(Response::new(DecideManyReply { results }))
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
        let rows = if request.txid.is_empty() {
            self.store
                .list_txns(request.prepared_only, request.limit)
                .await
                .map_err(read_failed)?
        } else {
            self.list_one_txn(&request).await?
        };
        Ok(Response::new(ListTxnsReply {
            txns: rows.iter().map(wire::txn_row).collect(),
        }))
    }

    /// ListTxns for one txid: its row, or none when the shard never saw it
    /// (or `prepared_only` and it is not prepared). The filters combine.
    async fn list_one_txn(&self, request: &ListTxnsRequest) -> Result<Vec<TxnRow>, Status> {
        let txid = TxnId::parse("txid", &request.txid).map_err(wire::invalid)?;
        let row = self.store.txn_row(&txid).await.map_err(read_failed)?;
        Ok(row
            .filter(|row| !request.prepared_only || row.state == TxnState::Prepared)
            .into_iter()
            .collect())
    }
}

#[tonic::async_trait]
impl Participant for ParticipantService {
    async fn prepare(
        &self,
        request: Request<PrepareRequest>,
    ) -> Result<Response<v1::Vote>, Status> {
        let request = request.into_inner();
        let span = info_span!("prepare", txid = span_id(&request.txid));
        let work = async {
            let vote = self.book(request, Op::Prepare).await;
            if matches!(&vote, Ok(vote) if vote.get_ref().yes) {
                crash_point("participant::after_prepare_commit");
            }
            vote
        };
        self.observe(Rpc::Prepare, span, work, vote_outcome).await
    }

    async fn commit(&self, request: Request<DecisionRequest>) -> Result<Response<Ack>, Status> {
        let request = request.into_inner();
        let span = info_span!("commit", txid = span_id(&request.txid));
        let work = async {
            let ack = self.decide(request, Op::Commit).await;
            if ack.is_ok() {
                crash_point("participant::after_commit_applied");
            }
            ack
        };
        self.observe(Rpc::Commit, span, work, ok).await
    }

    async fn abort(&self, request: Request<DecisionRequest>) -> Result<Response<Ack>, Status> {
        let request = request.into_inner();
        let span = info_span!("abort", txid = span_id(&request.txid));
        let work = self.decide(request, Op::Abort);
        self.observe(Rpc::Abort, span, work, ok).await
    }

    async fn book_local(
        &self,
        request: Request<PrepareRequest>,
    ) -> Result<Response<v1::Vote>, Status> {
        let request = request.into_inner();
        let span = info_span!("book_local", txid = span_id(&request.txid));
        let work = self.book(request, Op::BookLocal);
        self.observe(Rpc::BookLocal, span, work, vote_outcome).await
    }

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<ResolveReply>, Status> {
        let request = request.into_inner();
        let span = info_span!("resolve", txid = span_id(&request.txid));
        let work = self.do_resolve(request);
        self.observe(Rpc::Resolve, span, work, ok).await
    }

    async fn compensate(&self, request: Request<DecisionRequest>) -> Result<Response<Ack>, Status> {
        let request = request.into_inner();
        let span = info_span!("compensate", txid = span_id(&request.txid));
        let work = self.decide(request, Op::Compensate);
        self.observe(Rpc::Compensate, span, work, ok).await
    }

    async fn decide_many(
        &self,
        request: Request<DecideManyRequest>,
    ) -> Result<Response<DecideManyReply>, Status> {
        let request = request.into_inner();
        let span = info_span!("decide_many", entries = request.entries.len());
        let work = self.do_decide_many(request);
        self.observe(Rpc::DecideMany, span, work, ok).await
    }

    async fn reserve_many(
        &self,
        request: Request<ReserveManyRequest>,
    ) -> Result<Response<ReserveManyReply>, Status> {
        let request = request.into_inner();
        let span = info_span!("reserve_many", entries = request.entries.len());
        let work = self.do_reserve_many(request);
        self.observe(Rpc::ReserveMany, span, work, ok).await
    }

    async fn create_flight(
        &self,
        request: Request<CreateFlightRequest>,
    ) -> Result<Response<FlightInventory>, Status> {
        let request = request.into_inner();
        let span = info_span!("create_flight", flight_id = span_id(&request.flight_id));
        let work = self.do_create_flight(request);
        self.observe(Rpc::CreateFlight, span, work, ok).await
    }

    async fn get_flight(
        &self,
        request: Request<GetFlightRequest>,
    ) -> Result<Response<FlightInventory>, Status> {
        let request = request.into_inner();
        let span = info_span!("get_flight", flight_id = span_id(&request.flight_id));
        let work = self.do_get_flight(request);
        self.observe(Rpc::GetFlight, span, work, ok).await
    }

    async fn list_txns(
        &self,
        request: Request<ListTxnsRequest>,
    ) -> Result<Response<ListTxnsReply>, Status> {
        let request = request.into_inner();
        let span = info_span!("list_txns", txid = span_id(&request.txid));
        let work = self.do_list_txns(request);
        self.observe(Rpc::ListTxns, span, work, ok).await
    }
}

fn vote_outcome(vote: &v1::Vote) -> Outcome {
    if vote.yes {
        Outcome::Yes
    } else {
        Outcome::No
    }
}

fn ok<T>(_: &T) -> Outcome {
    Outcome::Ok
}

/// Longest id a span carries as sent; a longer one is not a valid id.
const SPAN_ID_BYTES_MAX: usize = 64;

/// An id from a request, for a span field: as sent when it is short, so
/// that an operator greps for the coordinator's txid, but never a whole
/// oversized field in every log line of the request.
fn span_id(text: &str) -> &str {
    if text.len() <= SPAN_ID_BYTES_MAX {
        text
    } else {
        "<oversized>"
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

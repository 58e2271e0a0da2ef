//! gRPC clients of the participants, one lazily connected channel each.
//!
//! Calls here carry no protocol logic: they send one message with a time
//! limit and report what came back. Retrying is the caller's decision.
//!
//! Unless `batch_calls = false`, the protocol messages are batched per
//! shard (`crate::batcher`): PREPARE and BOOK_LOCAL go in `ReserveMany`
//! calls, COMMIT, ABORT and COMPENSATE in `DecideMany` calls. Each caller
//! still gets its own message's answer, exactly as from its own call, and
//! retries on its own. This is what lets a restarted coordinator release
//! 100,000 undecided transactions without 200,000 concurrent calls, and
//! what keeps a booking to a fraction of a call per shard at load.

use std::time::Duration;

use booking_proto::limits::{
    BATCHED_CALL_BYTES_MAX, DECISIONS_PER_CALL_MAX, RESERVATIONS_PER_CALL_MAX,
};
use booking_proto::v1::participant_client::ParticipantClient;
use booking_proto::v1::{
    Ack, DecideManyRequest, DecisionEntry, DecisionRequest, PrepareRequest, ReserveEntry,
    ReserveManyRequest, ResolveReply, ResolveRequest, ShardDecision, Vote,
};
use prost::Message;
use tonic::transport::{Channel, Endpoint};

use crate::batcher::{BatchCall, Batcher, EntryResult, Limits, Wait};

use crate::config::ShardMap;

/// Why a call to a participant failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardCallError {
    #[error("shard {shard} did not answer within {timeout_ms} ms")]
    Timeout { shard: String, timeout_ms: u64 },
    #[error("shard {shard} answered {code:?}: {message}")]
    Status {
        shard: String,
        code: tonic::Code,
        message: String,
    },
}

impl ShardCallError {
    /// A refusal that retrying cannot cure (the participant says the message
    /// breaks the protocol, or is malformed).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ShardCallError::Status {
                code: tonic::Code::FailedPrecondition
                    | tonic::Code::InvalidArgument
                    | tonic::Code::NotFound,
                ..
            }
        )
    }
}

/// What the coordinator tells a shard after the outcome is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 2PC: held seats become booked.
    Commit,
    /// 2PC: held seats are released (an unknown txid is fenced).
    Abort,
    /// Saga: booked seats are released (an unknown txid is fenced).
    Compensate,
}

impl Decision {
    fn to_proto(self) -> ShardDecision {
        match self {
            Decision::Commit => ShardDecision::ShardCommit,
            Decision::Abort => ShardDecision::ShardAbort,
            Decision::Compensate => ShardDecision::ShardCompensate,
        }
    }
}

/// One shard's batchers.
#[derive(Clone)]
struct ShardBatchers {
    reserve: Batcher<ReserveEntry, Vote>,
    decide: Batcher<DecisionEntry, Ack>,
}

/// `ReserveMany` through one shard's client.
struct ReserveMany {
    shard: String,
    client: ParticipantClient<Channel>,
}

impl BatchCall<ReserveEntry, Vote> for ReserveMany {
    async fn call(
        &self,
        entries: Vec<ReserveEntry>,
        timeout: Duration,
    ) -> Result<Vec<EntryResult<Vote>>, ShardCallError> {
        let mut client = self.client.clone();
        let call = client.reserve_many(ReserveManyRequest { entries });
        let reply = timed_call(&self.shard, timeout, call).await?;
        Ok(reply
            .results
            .into_iter()
            .map(|r| EntryResult {
                code: r.code,
                message: r.message,
                value: r.vote,
            })
            .collect())
    }
}

/// `DecideMany` through one shard's client.
struct DecideMany {
    shard: String,
    client: ParticipantClient<Channel>,
}

impl BatchCall<DecisionEntry, Ack> for DecideMany {
    async fn call(
        &self,
        entries: Vec<DecisionEntry>,
        timeout: Duration,
    ) -> Result<Vec<EntryResult<Ack>>, ShardCallError> {
        let mut client = self.client.clone();
        let call = client.decide_many(DecideManyRequest { entries });
        let reply = timed_call(&self.shard, timeout, call).await?;
        Ok(reply
            .results
            .into_iter()
            .map(|r| EntryResult {
                code: r.code,
                message: r.message,
                value: r.ack,
            })
            .collect())
    }
}

/// Clients of every participant, indexed like `ShardMap::shards()`.
#[derive(Clone)]
pub struct ShardClients {
    names: Vec<String>,
    clients: Vec<ParticipantClient<Channel>>,
    /// Per shard, its batchers; None: one call per message
    /// (`batch_calls = false`).
    batchers: Option<Vec<ShardBatchers>>,
}

impl ShardClients {
    /// The clients, and with `batch_calls` the batchers' sender tasks (so
    /// this must run inside a tokio runtime); the senders stop once every
    /// clone of the clients is dropped.
    pub fn new(
        map: &ShardMap,
        batch_calls: bool,
        decision_linger: Duration,
    ) -> Result<ShardClients, tonic::transport::Error> {
        let mut names = Vec::new();
        let mut clients = Vec::new();
        for shard in map.shards() {
            let channel = Endpoint::from_shared(shard.address.clone())?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .connect_lazy();
            names.push(shard.name.clone());
            clients.push(ParticipantClient::new(channel));
        }
        let batchers = batch_calls.then(|| {
            names
                .iter()
                .zip(&clients)
                .map(|(name, client)| ShardBatchers {
                    reserve: Batcher::start(
                        name.clone(),
                        Limits {
                            entries_max: RESERVATIONS_PER_CALL_MAX,
                            bytes_max: BATCHED_CALL_BYTES_MAX,
                            linger: Duration::ZERO,
                        },
                        // A client waits for the booking: its deadline
                        // covers the queue too.
                        Wait::UpToTimeout,
                        |entry: &ReserveEntry| entry.encoded_len(),
                        ReserveMany {
                            shard: name.clone(),
                            client: client.clone(),
                        },
                    ),
                    decide: Batcher::start(
                        name.clone(),
                        Limits {
                            entries_max: DECISIONS_PER_CALL_MAX,
                            bytes_max: BATCHED_CALL_BYTES_MAX,
                            linger: decision_linger,
                        },
                        // Phase 2 is retried until acknowledged: a decision
                        // timed out in the queue would only be queued again.
                        Wait::ForTheCall,
                        |entry: &DecisionEntry| entry.encoded_len(),
                        DecideMany {
                            shard: name.clone(),
                            client: client.clone(),
                        },
                    ),
                })
                .collect()
        });
        Ok(ShardClients {
            names,
            clients,
            batchers,
        })
    }

    pub fn name(&self, shard: usize) -> &str {
        &self.names[shard]
    }

    pub async fn prepare(
        &self,
        shard: usize,
        request: PrepareRequest,
        timeout: Duration,
    ) -> Result<Vote, ShardCallError> {
        if let Some(batchers) = &self.batchers {
            let entry = ReserveEntry {
                request: Some(request),
                book_local: false,
            };
            return batchers[shard].reserve.submit(entry, timeout).await;
        }
        let mut client = self.clients[shard].clone();
        self.call(shard, timeout, client.prepare(request)).await
    }

    pub async fn book_local(
        &self,
        shard: usize,
        request: PrepareRequest,
        timeout: Duration,
    ) -> Result<Vote, ShardCallError> {
        if let Some(batchers) = &self.batchers {
            let entry = ReserveEntry {
                request: Some(request),
                book_local: true,
            };
            return batchers[shard].reserve.submit(entry, timeout).await;
        }
        let mut client = self.clients[shard].clone();
        self.call(shard, timeout, client.book_local(request)).await
    }

    /// Sends a decision (phase 2 or a saga's compensation) for `txid`.
    pub async fn decide(
        &self,
        shard: usize,
        decision: Decision,
        txid: String,
        timeout: Duration,
    ) -> Result<Ack, ShardCallError> {
        if let Some(batchers) = &self.batchers {
            let entry = DecisionEntry {
                txid,
                decision: decision.to_proto() as i32,
            };
            return batchers[shard].decide.submit(entry, timeout).await;
        }
        let mut client = self.clients[shard].clone();
        let request = DecisionRequest { txid };
        match decision {
            Decision::Commit => self.call(shard, timeout, client.commit(request)).await,
            Decision::Abort => self.call(shard, timeout, client.abort(request)).await,
            Decision::Compensate => self.call(shard, timeout, client.compensate(request)).await,
        }
    }

    pub async fn resolve(
        &self,
        shard: usize,
        txid: String,
        timeout: Duration,
    ) -> Result<ResolveReply, ShardCallError> {
        let mut client = self.clients[shard].clone();
        self.call(shard, timeout, client.resolve(ResolveRequest { txid }))
            .await
    }

    async fn call<T>(
        &self,
        shard: usize,
        timeout: Duration,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ShardCallError> {
        timed_call(&self.names[shard], timeout, call).await
    }
}

/// One call with a time limit; its reply, or why there is none.
async fn timed_call<T>(
    shard: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ShardCallError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(ShardCallError::Status {
            shard: shard.to_string(),
            code: status.code(),
            message: status.message().to_string(),
        }),
        Err(_) => Err(ShardCallError::Timeout {
            shard: shard.to_string(),
            timeout_ms: timeout.as_millis() as u64,
        }),
    }
}

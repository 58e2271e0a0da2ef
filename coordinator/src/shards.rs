//! gRPC clients of the participants, one lazily connected channel each.
//!
//! Calls here carry no protocol logic: they send one message with a time
//! limit and report what came back. Retrying is the caller's decision.
//!
//! Decisions (phase 2 and saga compensations) are batched per shard unless
//! `batch_decisions = false`: each shard has a sender task that takes every
//! decision waiting for it (up to `DECISIONS_PER_CALL_MAX`) into one
//! `DecideMany` call, with at most `DECIDE_CALLS_INFLIGHT_MAX` such calls
//! in flight per shard; while they are, the next decisions gather. Each
//! caller still gets its own entry's answer, exactly as from its own call,
//! and a failed call fails every entry in it (each caller retries its own).
//! This is what lets a restarted coordinator release 100,000 undecided
//! transactions without 200,000 concurrent calls, and what keeps phase 2
//! to a few calls per shard at load.

use std::sync::Arc;
use std::time::Duration;

use booking_proto::limits::DECISIONS_PER_CALL_MAX;
use booking_proto::v1::participant_client::ParticipantClient;
use booking_proto::v1::{
    Ack, DecideManyRequest, DecisionEntry, DecisionRequest, PrepareRequest, ResolveReply,
    ResolveRequest, ShardDecision, Vote,
};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

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

/// `DecideMany` calls in flight at once to one shard.
const DECIDE_CALLS_INFLIGHT_MAX: usize = 4;

/// A decision waiting for its shard's next `DecideMany` call.
struct Pending {
    entry: DecisionEntry,
    timeout: Duration,
    answer: oneshot::Sender<Result<Ack, ShardCallError>>,
}

/// Clients of every participant, indexed like `ShardMap::shards()`.
#[derive(Clone)]
pub struct ShardClients {
    names: Vec<String>,
    clients: Vec<ParticipantClient<Channel>>,
    /// Per shard, the queue of its decision sender; None: one call per
    /// decision (`batch_decisions = false`).
    batchers: Option<Arc<Vec<mpsc::UnboundedSender<Pending>>>>,
}

impl ShardClients {
    /// The clients, and with `batch_decisions` one decision sender task per
    /// shard (so this must run inside a tokio runtime); the senders stop
    /// once every clone of the clients is dropped.
    pub fn new(
        map: &ShardMap,
        batch_decisions: bool,
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
        let batchers = batch_decisions.then(|| {
            let queues = names
                .iter()
                .zip(&clients)
                .map(|(name, client)| {
                    let (queue, pending) = mpsc::unbounded_channel();
                    tokio::spawn(send_decisions(name.clone(), client.clone(), pending));
                    queue
                })
                .collect();
            Arc::new(queues)
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
        let mut client = self.clients[shard].clone();
        self.call(shard, timeout, client.prepare(request)).await
    }

    pub async fn book_local(
        &self,
        shard: usize,
        request: PrepareRequest,
        timeout: Duration,
    ) -> Result<Vote, ShardCallError> {
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
            let (answer, answered) = oneshot::channel();
            let pending = Pending {
                entry: DecisionEntry {
                    txid,
                    decision: decision.to_proto() as i32,
                },
                timeout,
                answer,
            };
            let stopped = || ShardCallError::Status {
                shard: self.names[shard].clone(),
                code: tonic::Code::Unavailable,
                message: "the decision sender stopped".into(),
            };
            batchers[shard].send(pending).map_err(|_| stopped())?;
            return answered.await.map_err(|_| stopped())?;
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
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(ShardCallError::Status {
                shard: self.names[shard].clone(),
                code: status.code(),
                message: status.message().to_string(),
            }),
            Err(_) => Err(ShardCallError::Timeout {
                shard: self.names[shard].clone(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }
}

/// One shard's decision sender: batch after batch until the queue closes.
async fn send_decisions(
    shard: String,
    client: ParticipantClient<Channel>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
) {
    let calls = Arc::new(Semaphore::new(DECIDE_CALLS_INFLIGHT_MAX));
    loop {
        let permit = Arc::clone(&calls)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut batch = Vec::new();
        if queue.recv_many(&mut batch, DECISIONS_PER_CALL_MAX).await == 0 {
            return;
        }
        let (shard, client) = (shard.clone(), client.clone());
        tokio::spawn(async move {
            decide_many(&shard, client, batch).await;
            drop(permit);
        });
    }
}

/// One `DecideMany` call; answers every entry of `batch`.
async fn decide_many(shard: &str, mut client: ParticipantClient<Channel>, batch: Vec<Pending>) {
    let timeout = batch
        .iter()
        .map(|p| p.timeout)
        .max()
        .expect("a batch has at least one decision");
    let (entries, waiting): (Vec<DecisionEntry>, Vec<_>) =
        batch.into_iter().map(|p| (p.entry, p.answer)).unzip();
    let count = entries.len();
    let call = client.decide_many(DecideManyRequest { entries });
    let failed = |code, message: String| ShardCallError::Status {
        shard: shard.to_string(),
        code,
        message,
    };
    let results = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(reply)) => reply.into_inner().results,
        Ok(Err(status)) => {
            let error = failed(status.code(), status.message().to_string());
            for answer in waiting {
                let _ = answer.send(Err(error.clone()));
            }
            return;
        }
        Err(_) => {
            let error = ShardCallError::Timeout {
                shard: shard.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            };
            for answer in waiting {
                let _ = answer.send(Err(error.clone()));
            }
            return;
        }
    };
    if results.len() != count {
        warn!(
            shard,
            entries = count,
            results = results.len(),
            "DecideMany answered the wrong number of results"
        );
        let error = failed(
            tonic::Code::Internal,
            format!(
                "DecideMany answered {} results for {count} entries",
                results.len()
            ),
        );
        for answer in waiting {
            let _ = answer.send(Err(error.clone()));
        }
        return;
    }
    for (answer, result) in waiting.into_iter().zip(results) {
        let outcome = match (tonic::Code::from_i32(result.code), result.ack) {
            (tonic::Code::Ok, Some(ack)) => Ok(ack),
            (tonic::Code::Ok, None) => Err(failed(
                tonic::Code::Internal,
                "DecideMany answered OK without an ack".into(),
            )),
            (code, _) => Err(failed(code, result.message)),
        };
        // A caller that gave up (its booking's task ended) needs no answer.
        let _ = answer.send(outcome);
    }
}

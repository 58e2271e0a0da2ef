//! gRPC clients of the participants, one lazily connected channel each.
//!
//! Calls here carry no protocol logic: they send one message with a time
//! limit and report what came back. Retrying is the caller's decision.

use std::time::Duration;

use booking_proto::v1::participant_client::ParticipantClient;
use booking_proto::v1::{Ack, DecisionRequest, PrepareRequest, ResolveReply, ResolveRequest, Vote};
use tonic::transport::{Channel, Endpoint};

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

/// Clients of every participant, indexed like `ShardMap::shards()`.
#[derive(Clone)]
pub struct ShardClients {
    names: Vec<String>,
    clients: Vec<ParticipantClient<Channel>>,
}

impl ShardClients {
    pub fn new(map: &ShardMap) -> Result<ShardClients, tonic::transport::Error> {
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
        Ok(ShardClients { names, clients })
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

//! `inspect show --live`: asks the running coordinator (`GetTransaction`)
//! and every shard of the transaction (`ListTxns` filtered by txid) for
//! their own state of it, and says where it is stuck and why.
//!
//! Only reading RPCs are sent: never `Resolve`, which fences an unknown
//! txid on the shard. A service that does not answer is a finding, not an
//! error. Rows are also filtered here by txid, for participants that do not
//! apply the request's `txid` filter yet. This module only gathers; what
//! the answers mean is `diagnosis.rs`, pure and unit-tested.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use booking_proto::v1::coordinator_client::CoordinatorClient;
use booking_proto::v1::get_transaction_request::Key;
use booking_proto::v1::participant_client::ParticipantClient;
use booking_proto::v1::{
    GetTransactionRequest, ListTxnsRequest, ShardTxnState, TransactionState, TransactionStatus,
};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::diagnosis::diagnose;
use super::model::TxnSummary;
use crate::config::Config;

/// How long to wait for a connection, and for one answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Rows asked of a participant: its cap (`participant::store::LIST_TXNS_MAX`),
/// so that one ignoring the txid filter still returns as many as it can.
const ROWS_MAX: u32 = 1000;

/// What the coordinator and the shards say, and what it means.
#[derive(Clone, Debug, Serialize)]
pub struct LiveView {
    pub coordinator: CoordinatorLive,
    pub shards: Vec<ShardLive>,
    /// Where the transaction stands across processes, one sentence each.
    pub diagnosis: Vec<String>,
}

/// The running coordinator's view of the txid.
#[derive(Clone, Debug, Serialize)]
pub struct CoordinatorLive {
    pub address: String,
    /// `ok`, `not_found`, `unreachable`, `error`.
    pub status: &'static str,
    /// With `ok`: `in_progress`, `committed`, `aborted`.
    pub state: Option<&'static str>,
    /// With `ok`: whether every shard acknowledged (END logged).
    pub ended: Option<bool>,
    pub error: Option<String>,
}

/// One shard's view of the txid.
#[derive(Clone, Debug, Serialize)]
pub struct ShardLive {
    pub shard: String,
    pub address: Option<String>,
    /// `ok`, `unreachable`, `error`, `not_configured`.
    pub status: &'static str,
    /// With `ok`: `prepared`, `committed`, `aborted`, `unknown`, or
    /// `absent` (no row for the txid).
    pub state: Option<&'static str>,
    pub updated_at_unix_ms: Option<u64>,
    /// With `ok`: rows the participant returned before filtering by txid.
    pub rows_returned: Option<usize>,
    pub error: Option<String>,
    /// This shard's part in the transaction, in words.
    pub diagnosis: String,
}

/// Asks the coordinator and every shard of `txn`, all at once.
pub async fn query(config: &Config, txn: &TxnSummary) -> LiveView {
    let txid = txn.txid.to_string();
    let shard_calls = txn.shards.iter().map(|name| ask_shard(config, name, &txid));
    let (coordinator, shards) = tokio::join!(
        ask_coordinator(config.listen, &txid),
        futures::future::join_all(shard_calls)
    );
    diagnose(txn, coordinator, shards)
}

async fn ask_coordinator(listen: SocketAddr, txid: &str) -> CoordinatorLive {
    let address = coordinator_url(listen);
    let mut live = CoordinatorLive {
        address: address.clone(),
        status: "unreachable",
        state: None,
        ended: None,
        error: None,
    };
    let channel = match connect(&address).await {
        Ok(channel) => channel,
        Err(error) => {
            live.error = Some(error);
            return live;
        }
    };
    let request = GetTransactionRequest {
        key: Some(Key::Txid(txid.to_string())),
    };
    match CoordinatorClient::new(channel)
        .get_transaction(request)
        .await
    {
        Ok(reply) => {
            let status: TransactionStatus = reply.into_inner();
            live.status = "ok";
            live.state = Some(coordinator_state(status.state()));
            live.ended = Some(status.ended);
        }
        Err(status) => {
            live.status = match status.code() {
                tonic::Code::NotFound => "not_found",
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => "unreachable",
                _ => "error",
            };
            live.error = Some(format!("{:?}: {}", status.code(), status.message()));
        }
    }
    live
}

async fn ask_shard(config: &Config, name: &str, txid: &str) -> ShardLive {
    let mut live = ShardLive {
        shard: name.to_string(),
        address: None,
        status: "not_configured",
        state: None,
        updated_at_unix_ms: None,
        rows_returned: None,
        error: None,
        diagnosis: String::new(),
    };
    let Some(shard) = config.shards.iter().find(|s| s.name == name) else {
        return live;
    };
    live.address = Some(shard.address.clone());
    live.status = "unreachable";
    let channel = match connect(&shard.address).await {
        Ok(channel) => channel,
        Err(error) => {
            live.error = Some(error);
            return live;
        }
    };
    let request = ListTxnsRequest {
        prepared_only: false,
        limit: ROWS_MAX,
        txid: txid.to_string(),
    };
    match ParticipantClient::new(channel).list_txns(request).await {
        Ok(reply) => {
            let rows = reply.into_inner().txns;
            live.status = "ok";
            live.rows_returned = Some(rows.len());
            let row = rows.iter().find(|r| r.txid.eq_ignore_ascii_case(txid));
            live.state = Some(row.map_or("absent", |r| shard_state(r.state())));
            live.updated_at_unix_ms = row.map(|r| r.updated_at_unix_ms);
        }
        Err(status) => {
            if !matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) {
                live.status = "error";
            }
            live.error = Some(format!("{:?}: {}", status.code(), status.message()));
        }
    }
    live
}

/// `http://<listen>`, with a wildcard listen address asked on loopback.
fn coordinator_url(listen: SocketAddr) -> String {
    let mut address = listen;
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{address}")
}

async fn connect(address: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|error| format!("bad address {address:?}: {}", chain(&error)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    endpoint.connect().await.map_err(|error| chain(&error))
}

/// An error and its sources, `outer: inner: innermost`; a source that
/// only repeats the one before it (tonic's layers do) is left out.
fn chain(error: &dyn Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = inner.source();
    }
    parts.join(": ")
}

fn coordinator_state(state: TransactionState) -> &'static str {
    match state {
        TransactionState::TxnCommitted => "committed",
        TransactionState::TxnAborted => "aborted",
        TransactionState::TxnInProgress | TransactionState::Unspecified => "in_progress",
    }
}

fn shard_state(state: ShardTxnState) -> &'static str {
    match state {
        ShardTxnState::Prepared => "prepared",
        ShardTxnState::ShardCommitted => "committed",
        ShardTxnState::ShardAborted => "aborted",
        ShardTxnState::Unknown | ShardTxnState::Unspecified => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_asked_on_loopback() {
        assert_eq!(
            coordinator_url("0.0.0.0:7000".parse().unwrap()),
            "http://127.0.0.1:7000"
        );
        assert_eq!(
            coordinator_url("10.0.0.5:7000".parse().unwrap()),
            "http://10.0.0.5:7000"
        );
    }
}

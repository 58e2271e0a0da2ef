//! The in-doubt sweep. Every `in_doubt_after / 2` it lists the txids that
//! have stayed prepared longer than `in_doubt_after`, asks the coordinator
//! `GetDecision` for each, and applies COMMIT or ABORT through the writers
//! like any other message. IN_PROGRESS, or a coordinator that does not
//! answer, leaves the txid prepared: a participant that voted YES never
//! releases its seats on its own.
//!
//! `ASKS_AT_ONCE` txids are asked about at once, so that the
//! decisions reach the writer lanes together and are applied in a few
//! batches. One after another, each was a local transaction (an fsync) of
//! its own: after a coordinator restart over 100,000 undecided
//! transactions, the sweeps' single-txid batches took turns on the SQLite
//! writer lane with the coordinator's own batched ABORTs.
//!
//! Each txid is asked about inside an `in_doubt` span carrying its txid;
//! every GetDecision answer is counted by result, every applied decision
//! by decision (`metrics`).

use std::sync::Arc;
use std::time::Duration;

use booking_proto::v1::coordinator_client::CoordinatorClient;
use booking_proto::v1::{Decision, GetDecisionRequest};
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::error::OpError;
use crate::metrics::{DecisionResult, Metrics};
use crate::model::TxnId;
use crate::op::Op;
use crate::store::{now_ms, Store};
use crate::writer::Writers;

/// Most in-doubt txids asked about per sweep.
const SWEEP_TXIDS_MAX: u32 = 1000;
/// In-doubt txids asked about (and their decisions applied) at once.
const ASKS_AT_ONCE: usize = 64;
/// How long one GetDecision call may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Asks the coordinator about txids prepared for too long.
#[derive(Debug)]
pub struct InDoubtResolver {
    store: Store,
    writers: Writers,
    coordinator: CoordinatorClient<Channel>,
    in_doubt_after: Duration,
    metrics: Arc<Metrics>,
}

impl InDoubtResolver {
    /// A resolver that connects to `coordinator_url` lazily, on first use.
    pub fn new(
        store: Store,
        writers: Writers,
        coordinator_url: &str,
        in_doubt_after: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<InDoubtResolver, tonic::transport::Error> {
        let channel = Endpoint::from_shared(coordinator_url.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(ASK_TIMEOUT)
            .connect_lazy();
        Ok(InDoubtResolver {
            store,
            writers,
            coordinator: CoordinatorClient::new(channel),
            in_doubt_after,
            metrics,
        })
    }

    /// Sweeps until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.in_doubt_after / 2);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => self.sweep().await,
            }
        }
    }

    /// One pass over the in-doubt txids, `ASKS_AT_ONCE` at a time: the
    /// chunk's questions together, then its decisions together, so that
    /// they reach the writer lanes at once. Once the coordinator fails to
    /// answer, or the writer queue is full, the txids not yet asked about
    /// wait for the next sweep.
    pub async fn sweep(&self) {
        let before_ms = now_ms() - self.in_doubt_after.as_millis() as i64;
        let txids = match self.store.in_doubt(before_ms, SWEEP_TXIDS_MAX).await {
            Ok(txids) => txids,
            Err(err) => {
                return warn!(error = %err, "in-doubt sweep could not read the prepared txids")
            }
        };
        let listed = txids.len();
        let mut asked = 0;
        for chunk in txids.chunks(ASKS_AT_ONCE) {
            asked += chunk.len();
            let answers = join_all(
                chunk
                    .iter()
                    .map(|txid| self.ask(txid).instrument(in_doubt_span(txid))),
            )
            .await;
            let (mut unanswered, mut failed) = (None, 0);
            let mut decided = Vec::new();
            for (txid, answer) in chunk.iter().zip(answers) {
                match answer {
                    Ok(Some(op)) => decided.push((txid, op)),
                    Ok(None) => {}
                    Err(status) => {
                        failed += 1;
                        unanswered.get_or_insert(status);
                    }
                }
            }
            let applied = join_all(
                decided
                    .into_iter()
                    .map(|(txid, op)| self.apply(op).instrument(in_doubt_span(txid))),
            )
            .await;
            if let Some(status) = unanswered {
                return warn!(
                    code = ?status.code(),
                    message = status.message(),
                    listed,
                    failed,
                    not_asked = listed - asked,
                    "coordinator did not answer GetDecision; the txids stay prepared until a later sweep"
                );
            }
            if applied.iter().any(|full| *full) {
                return warn!(
                    listed,
                    not_asked = listed - asked,
                    "the write queue is full; the txids not applied stay prepared until a later sweep"
                );
            }
        }
    }

    /// Asks about one txid: the operation that applies the coordinator's
    /// decision, None while it is undecided, or the status when the
    /// coordinator did not answer.
    async fn ask(&self, txid: &TxnId) -> Result<Option<(Op, Decision)>, Status> {
        let request = GetDecisionRequest {
            txid: txid.to_string(),
        };
        let decision = match self.coordinator.clone().get_decision(request).await {
            Ok(reply) => reply.into_inner().decision(),
            Err(status) => {
                self.metrics.get_decision(DecisionResult::Error);
                debug!(code = ?status.code(), message = status.message(), "coordinator did not answer GetDecision; txid stays prepared");
                return Err(status);
            }
        };
        match decision {
            Decision::Commit => {
                self.metrics.get_decision(DecisionResult::Commit);
                Ok(Some((Op::Commit(txid.clone()), decision)))
            }
            Decision::Abort => {
                self.metrics.get_decision(DecisionResult::Abort);
                Ok(Some((Op::Abort(txid.clone()), decision)))
            }
            Decision::InProgress | Decision::Unspecified => {
                self.metrics.get_decision(DecisionResult::InProgress);
                info!(
                    decision = decision.as_str_name(),
                    "coordinator has not decided; txid stays prepared"
                );
                Ok(None)
            }
        }
    }

    /// Applies a decision through the writers; true when the write queue
    /// was full (the sweep stops there).
    async fn apply(&self, (op, decision): (Op, Decision)) -> bool {
        match self.writers.submit(op).await {
            Ok(reply) => {
                self.metrics.in_doubt_resolved(decision);
                info!(decision = decision.as_str_name(), reply = ?reply, "in-doubt txid resolved");
                false
            }
            Err(err) => {
                warn!(decision = decision.as_str_name(), error = %err, "applying the coordinator's decision failed; txid stays prepared");
                matches!(err, OpError::Overloaded { .. })
            }
        }
    }
}

/// The span of everything the sweep does about one txid.
fn in_doubt_span(txid: &TxnId) -> tracing::Span {
    info_span!("in_doubt", txid = %txid)
}

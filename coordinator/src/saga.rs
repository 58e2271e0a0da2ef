//! Saga mode (DESIGN.md "Saga mode"): every shard books its legs at once
//! with a local commit (no hold); if any shard refuses or does not answer,
//! every shard is compensated (its booking released, or a fence left so a
//! late booking is refused) and the saga ends ABORTED.
//!
//! Durability gates, in order:
//! 1. SAGA_BEGIN (the intent: txid, legs, shards) is fsynced before the
//!    first BOOK_LOCAL, so a restart knows which shards to ask.
//! 2. The outcome (COMMIT or ABORT, with the reply) is fsynced before the
//!    client hears of it, so a retried key gets the same reply.
//! 3. Compensation runs after the ABORT record, retried with backoff until
//!    every shard acknowledges; then END (written, not forced).
//!
//! Recovery (`recover_saga`): a saga with no outcome in the log asks every
//! shard `Resolve` (which fences a txid the shard never saw). If every shard
//! reports its legs booked, the saga is completed (COMMIT); otherwise it is
//! compensated (ABORT, reason COORDINATOR_RESTARTED). A saga whose ABORT is
//! logged without END is compensated again (idempotent); one whose COMMIT
//! is logged without END only needs its END.
//!
//! A saga touching one shard is a one-phase booking (`core::one_phase`): a
//! single local commit is already all-or-nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use booking_proto::v1::{
    AbortDetail, AbortReason, BookReply, LegResult, PrepareRequest, ShardLeg, ShardTxnState,
};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tracing::{error, info, warn, Instrument};

use crate::core::{reply_of, Backoff, BookError, Core, PHASE_TWO_CALL_TIMEOUT};
use crate::failpoints::crash_point;
use crate::log::Durability;
use crate::protocol::Decided;
use crate::records::TxnHeader;
use crate::shards::{Decision, ShardCallError};
use uuid::Uuid;

impl Core {
    /// Runs a saga over two or more shards and returns the client's reply.
    pub(crate) async fn saga(
        self: &Arc<Self>,
        header: TxnHeader,
        by_shard: BTreeMap<usize, Vec<ShardLeg>>,
        itinerary_legs: u32,
        timeout: Duration,
    ) -> Result<BookReply, BookError> {
        self.log()
            .append(header.begin(), Durability::Forced)
            .await?;
        crash_point("coordinator::saga_after_intent");
        let deadline = Instant::now() + timeout;
        let txid = header.txid.to_string();
        let shards: Vec<usize> = by_shard.keys().copied().collect();
        let mut calls: FuturesUnordered<_> = by_shard
            .into_iter()
            .map(|(shard, legs)| {
                let request = PrepareRequest {
                    txid: txid.clone(),
                    legs,
                    itinerary_legs,
                };
                async move {
                    (
                        shard,
                        self.shards().book_local(shard, request, timeout).await,
                    )
                }
            })
            .collect();
        let mut booked: Vec<LegResult> = Vec::new();
        let mut failure: Option<AbortDetail> = None;
        let legs_started = std::time::Instant::now();
        // Stop at the first failure: compensation fences the shards still
        // booking, so their late local commits are refused or undone.
        while let Some((shard, result)) = calls.next().await {
            match result {
                Ok(vote) if vote.yes => {
                    booked.extend(vote.legs);
                    crash_point("coordinator::saga_after_leg");
                }
                Ok(vote) => {
                    failure = Some(vote.refusal.unwrap_or_else(|| {
                        unavailable(
                            &header,
                            self.shards().name(shard),
                            "the shard refused without a reason",
                        )
                    }));
                    break;
                }
                Err(error) => {
                    let mut detail =
                        unavailable(&header, self.shards().name(shard), &error.to_string());
                    if matches!(error, ShardCallError::Timeout { .. }) && Instant::now() >= deadline
                    {
                        detail.reason = AbortReason::Deadline as i32;
                    }
                    failure = Some(detail);
                    break;
                }
            }
        }
        drop(calls);
        crate::metrics::phase("saga_legs", legs_started.elapsed());
        let decided = match failure {
            None => {
                booked.sort_by_key(|l| l.leg_index);
                Decided::Commit(booked)
            }
            Some(detail) => Decided::Abort(detail),
        };
        let reply = reply_of(&header, decided);
        self.log()
            .append(header.decision(&reply), Durability::Forced)
            .await?;
        self.registry.decide(header.txid, reply.clone());
        let committed = reply.outcome == booking_proto::v1::Outcome::Committed as i32;
        tracing::debug!(
            outcome = if committed { "COMMIT" } else { "ABORT" },
            "saga decided"
        );
        if committed {
            self.log().append(header.end(), Durability::Written).await?;
            self.registry.end(header.txid);
        } else {
            self.spawn_phase_two(header, Decision::Compensate, shards);
        }
        Ok(reply)
    }

    /// Recovery of a saga whose outcome is not in the log: ask every shard
    /// what it did (fencing those that did nothing), then complete or
    /// compensate.
    pub(crate) fn recover_saga(self: &Arc<Self>, header: TxnHeader, shards: Vec<usize>) {
        let core = Arc::clone(self);
        let span = tracing::info_span!("recover_saga", txid = %header.txid);
        tokio::spawn(
            async move {
                let txid = header.txid.to_string();
                let answers = futures::future::join_all(
                    shards
                        .iter()
                        .map(|shard| core.resolve_until_answered(&txid, *shard)),
                )
                .await;
                let all_booked = answers
                    .iter()
                    .all(|a| a.state == ShardTxnState::ShardCommitted as i32);
                let decided = if all_booked {
                    let mut legs: Vec<LegResult> =
                        answers.into_iter().flat_map(|a| a.legs).collect();
                    legs.sort_by_key(|l| l.leg_index);
                    Decided::Commit(legs)
                } else {
                    let first = header.legs.first();
                    Decided::Abort(AbortDetail {
                        reason: AbortReason::CoordinatorRestarted as i32,
                        leg_index: first.map_or(0, |l| l.leg_index),
                        flight_id: first.map(|l| l.flight_id.clone()).unwrap_or_default(),
                        message: "the coordinator restarted mid-saga; every leg was released"
                            .into(),
                    })
                };
                let reply = reply_of(&header, decided);
                let commit = reply.outcome == booking_proto::v1::Outcome::Committed as i32;
                info!(commit, "saga recovered");
                if let Err(error) = core
                    .log()
                    .append(header.decision(&reply), Durability::Forced)
                    .await
                {
                    error!(%error, "decision log failed recovering a saga");
                    core.fatal().cancel();
                    return;
                }
                core.registry.decide(header.txid, reply);
                if commit {
                    core.log_end(header).await;
                } else {
                    core.spawn_phase_two(header, Decision::Compensate, shards);
                }
            }
            .instrument(span),
        );
    }

    /// A transaction with nothing left to deliver only lacks its END: a
    /// saga whose COMMIT is logged (every leg is a local commit), or a
    /// one-phase booking whose outcome is logged (the shard's local commit
    /// decided it).
    pub(crate) async fn log_end(&self, header: TxnHeader) {
        if let Err(error) = self.log().append(header.end(), Durability::Written).await {
            error!(%error, "decision log failed writing a saga's END");
            self.fatal().cancel();
            return;
        }
        self.registry.end(header.txid);
    }

    async fn resolve_until_answered(
        &self,
        txid: &str,
        shard: usize,
    ) -> booking_proto::v1::ResolveReply {
        let id = Uuid::parse_str(txid).expect("a saga's txid is a UUID");
        let mut backoff = Backoff::new(self.registry.retry_signal(id), "saga_resolve");
        loop {
            match self
                .shards()
                .resolve(shard, txid.to_string(), PHASE_TWO_CALL_TIMEOUT)
                .await
            {
                Ok(answer) => return answer,
                Err(error) => {
                    warn!(%error, shard = self.shards().name(shard), "RESOLVE of a saga leg failed; retrying")
                }
            }
            backoff.wait().await;
        }
    }
}

/// An abort detail naming the first leg on shard `shard_name`.
fn unavailable(header: &TxnHeader, shard_name: &str, message: &str) -> AbortDetail {
    let first = header
        .legs
        .iter()
        .find(|l| l.shard == shard_name)
        .or(header.legs.first());
    AbortDetail {
        reason: AbortReason::ShardUnavailable as i32,
        leg_index: first.map_or(0, |l| l.leg_index),
        flight_id: first.map(|l| l.flight_id.clone()).unwrap_or_default(),
        message: message.to_string(),
    }
}

//! The coordinator's runtime: takes a validated booking, runs one-phase or
//! two-phase commit against the participants, writes the decision log, and
//! completes phase 2 after the reply.
//!
//! Durability gates, in order (DESIGN.md "Two-phase commit"):
//! 1. 2PC: BEGIN is written (not forced) before the first PREPARE.
//! 2. 2PC COMMIT: the COMMIT record (with the reply) is fsynced before any
//!    participant or the client hears of it.
//! 3. 2PC ABORT: the ABORT record (with the reply) is fsynced before the
//!    client hears of it, so a retried key gets the same reply after a
//!    restart; participants may hear of it earlier (presumed abort).
//! 4. One-phase: BEGIN is fsynced before BOOK_LOCAL (so a restart can ask
//!    the shard what happened), and the outcome is fsynced before the reply.
//! 5. END is written, never forced, once every shard acknowledged.
//!
//! The I/O-free decision logic lives in `protocol.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use booking_proto::log_v1::LegSummary;
use booking_proto::v1::{
    AbortDetail, AbortReason, BookReply, BookRequest, LegResult, Mode, Outcome, PrepareRequest,
    ResolveReply, ShardLeg, ShardTxnState, Vote,
};
use booking_proto::validate::{self, InvalidField};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};
use uuid::Uuid;

use crate::config::{Config, ShardMap};
use crate::failpoints::crash_point;
use crate::log::{DecisionLog, Durability, LogError};
use crate::metrics;
use crate::protocol::{Decided, VoteEvent, VoteTally};
use crate::records::{fingerprint, TxnHeader};
use crate::registry::{now_ms, NewTxn, Registered, Registry};
use crate::shards::{Decision, ShardCallError, ShardClients};

/// Time a single phase-2 message may take before it is retried.
pub(crate) const PHASE_TWO_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Retry backoff bounds for phase 2 and one-phase resolution.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Retry hint given with RESOURCE_EXHAUSTED.
pub const RETRY_AFTER_MS: u64 = 25;

/// Why a booking got no business answer.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("idempotency key {key:?} was already used for a different request (txid {txid}); use a new key for a new itinerary")]
    KeyReused { key: String, txid: Uuid },
    #[error("coordinator overloaded: {inflight_max} bookings in flight; retry after {RETRY_AFTER_MS} ms")]
    Overloaded { inflight_max: usize },
    #[error("booking {txid} is still being resolved (a shard did not answer); retry with the same idempotency key")]
    StillInProgress { txid: Uuid },
    #[error("the decision log failed; the coordinator is stopping: {0}")]
    Log(#[from] LogError),
}

/// The legs of one request, grouped by the shard that owns them.
struct Plan {
    header: TxnHeader,
    /// Shard index → the legs it books. BTreeMap: shards in a stable order.
    by_shard: BTreeMap<usize, Vec<ShardLeg>>,
    itinerary_legs: u32,
}

pub struct Core {
    map: ShardMap,
    shards: ShardClients,
    log: DecisionLog,
    pub(crate) registry: Registry,
    admission: Semaphore,
    inflight_max: usize,
    default_timeout_ms: u32,
    /// Cancelled when the process must stop (the decision log failed).
    fatal: CancellationToken,
}

impl Core {
    pub fn new(
        config: &Config,
        log: DecisionLog,
        fatal: CancellationToken,
    ) -> anyhow::Result<Core> {
        let map = config.shard_map()?;
        let shards = ShardClients::new(
            &map,
            config.batch_calls,
            Duration::from_millis(config.decision_linger_ms),
        )?;
        Ok(Core {
            map,
            shards,
            log,
            registry: Registry::default(),
            admission: Semaphore::new(config.inflight_max),
            inflight_max: config.inflight_max,
            default_timeout_ms: config.default_timeout_ms,
            fatal,
        })
    }

    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// Books an itinerary: the entry point of `Coordinator.Book`.
    pub async fn book(self: &Arc<Self>, request: BookRequest) -> Result<BookReply, BookError> {
        validate::book_request(&request)?;
        let timeout_ms = if request.timeout_ms == 0 {
            self.default_timeout_ms
        } else {
            request.timeout_ms
        };
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let started = std::time::Instant::now();
        let _permit = self.admission.try_acquire().map_err(|_| {
            metrics::rejected_overloaded();
            BookError::Overloaded {
                inflight_max: self.inflight_max,
            }
        })?;
        let plan = self.plan(&request);
        let txid = plan.header.txid;
        match self.registry.register(restored_txn(
            &plan.header,
            now_ms(),
            self.log.current_segment(),
        )) {
            Registered::New => {}
            Registered::Retry { txid, reply } => return await_reply(txid, reply, timeout).await,
            Registered::KeyReused { txid } => {
                return Err(BookError::KeyReused {
                    key: request.idempotency_key,
                    txid,
                })
            }
        }
        let span = tracing::info_span!("book", %txid, key = %request.idempotency_key);
        let mode = metrics::mode_label(plan.by_shard.len() == 1, plan.header.mode == Mode::Saga);
        let result = if plan.by_shard.len() == 1 {
            self.one_phase(plan, timeout).instrument(span).await
        } else if plan.header.mode == Mode::Saga {
            let Plan {
                header,
                by_shard,
                itinerary_legs,
            } = plan;
            self.saga(header, by_shard, itinerary_legs, timeout)
                .instrument(span)
                .await
        } else {
            self.two_phase(plan, timeout_ms).instrument(span).await
        };
        match &result {
            Ok(reply) => metrics::booking(
                mode,
                reply.outcome == Outcome::Committed as i32,
                started.elapsed(),
            ),
            Err(BookError::Log(error)) => {
                error!(%txid, %error, "decision log failed; stopping so that recovery can repair");
                self.fatal.cancel();
            }
            Err(_) => {}
        }
        result
    }

    /// Bookings being worked on now (admission permits taken).
    pub fn inflight(&self) -> usize {
        self.inflight_max - self.admission.available_permits()
    }

    fn plan(&self, request: &BookRequest) -> Plan {
        let mode = Mode::try_from(request.mode).expect("validated: mode is a known value");
        let mut by_shard: BTreeMap<usize, Vec<ShardLeg>> = BTreeMap::new();
        let mut legs = Vec::with_capacity(request.legs.len());
        for (index, leg) in request.legs.iter().enumerate() {
            let shard = self.map.shard_of(&leg.flight_id);
            by_shard.entry(shard).or_default().push(ShardLeg {
                leg_index: index as u32,
                flight_id: leg.flight_id.clone(),
                seat_count: leg.seat_count,
                seats: leg.seats.clone(),
                passengers: leg.passengers.clone(),
            });
            legs.push(LegSummary {
                leg_index: index as u32,
                flight_id: leg.flight_id.clone(),
                shard: self.shards.name(shard).to_string(),
                seat_count: leg.seat_count.max(leg.seats.len() as u32),
                seats: leg.seats.clone(),
                passengers: leg.passengers.clone(),
            });
        }
        let mut shards: Vec<String> = by_shard
            .keys()
            .map(|s| self.shards.name(*s).to_string())
            .collect();
        shards.sort();
        let header = TxnHeader {
            txid: Uuid::now_v7(),
            key: request.idempotency_key.clone(),
            fingerprint: fingerprint(request),
            mode,
            one_phase: by_shard.len() == 1,
            shards,
            legs,
        };
        Plan {
            header,
            by_shard,
            itinerary_legs: request.legs.len() as u32,
        }
    }

    async fn two_phase(
        self: &Arc<Self>,
        plan: Plan,
        timeout_ms: u32,
    ) -> Result<BookReply, BookError> {
        let header = &plan.header;
        self.log.append(header.begin(), Durability::Written).await?;
        crash_point("coordinator::after_begin");
        let shards: Vec<usize> = plan.by_shard.keys().copied().collect();
        let voting = std::time::Instant::now();
        let decided = self.collect_votes(&plan, timeout_ms).await;
        metrics::phase("prepare", voting.elapsed());
        let reply = reply_of(header, decided);
        let deciding = std::time::Instant::now();
        self.log
            .append(header.decision(&reply), Durability::Forced)
            .await?;
        metrics::phase("decide", deciding.elapsed());
        let commit = reply.outcome == Outcome::Committed as i32;
        if commit {
            crash_point("coordinator::after_commit_logged");
        }
        self.registry.decide(header.txid, reply.clone());
        tracing::debug!(outcome = if commit { "COMMIT" } else { "ABORT" }, "decided");
        let decision = if commit {
            Decision::Commit
        } else {
            Decision::Abort
        };
        self.spawn_phase_two(header.clone(), decision, shards);
        Ok(reply)
    }

    /// Sends PREPARE to every shard at once and tallies the votes until the
    /// decision is known or the deadline passes.
    async fn collect_votes(&self, plan: &Plan, timeout_ms: u32) -> Decided {
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        let txid = plan.header.txid.to_string();
        let mut tally = VoteTally::new(plan.by_shard.values().cloned().collect());
        let mut calls: FuturesUnordered<_> = plan
            .by_shard
            .iter()
            .enumerate()
            .map(|(position, (shard, legs))| {
                let request = PrepareRequest {
                    txid: txid.clone(),
                    legs: legs.clone(),
                    itinerary_legs: plan.itinerary_legs,
                };
                let timeout = deadline.saturating_duration_since(Instant::now());
                async move {
                    (
                        position,
                        self.shards.prepare(*shard, request, timeout).await,
                    )
                }
            })
            .collect();
        let mut first_reply = true;
        loop {
            tokio::select! {
                next = calls.next() => {
                    let (position, result) = next.expect("the tally decides before the calls run out");
                    if first_reply {
                        // Every PREPARE is on its way and at least one shard
                        // holds seats; no vote is counted yet.
                        crash_point("coordinator::after_prepares_sent");
                        first_reply = false;
                    }
                    let event = match result {
                        Ok(vote) => VoteEvent::Vote(vote),
                        // Each call's time limit is what is left of the
                        // deadline: its timeout is the deadline, whichever
                        // of the two timers fires first.
                        Err(ShardCallError::Timeout { .. }) => return tally.on_deadline(timeout_ms),
                        Err(error) => VoteEvent::Failed(error.to_string()),
                    };
                    if let Some(decided) = tally.on_vote(position, event) {
                        return decided;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return tally.on_deadline(timeout_ms),
            }
        }
    }

    async fn one_phase(
        self: &Arc<Self>,
        plan: Plan,
        timeout: Duration,
    ) -> Result<BookReply, BookError> {
        let deadline = Instant::now() + timeout;
        let header = plan.header.clone();
        let (shard, legs) = plan
            .by_shard
            .into_iter()
            .next()
            .expect("one-phase means exactly one shard");
        self.log.append(header.begin(), Durability::Forced).await?;
        let request = PrepareRequest {
            txid: header.txid.to_string(),
            legs,
            itinerary_legs: plan.itinerary_legs,
        };
        let booking = std::time::Instant::now();
        let booked = self.shards.book_local(shard, request, timeout).await;
        metrics::phase("book_local", booking.elapsed());
        match booked {
            Ok(vote) => {
                let reply = reply_of(&header, decided_of_vote(vote, &header));
                self.finish_one_phase(&header, reply.clone()).await?;
                Ok(reply)
            }
            Err(error) => {
                warn!(%error, "BOOK_LOCAL got no answer; resolving the outcome with the shard");
                let reply = self.registry_watch(header.txid);
                self.spawn_resolve(header.clone(), shard, error.to_string());
                // Whatever is left of the caller's deadline, not a second one.
                let left = deadline.saturating_duration_since(Instant::now());
                await_reply(header.txid, reply, left).await
            }
        }
    }

    fn registry_watch(&self, txid: Uuid) -> watch::Receiver<Option<BookReply>> {
        self.registry
            .subscribe(txid)
            .expect("a transaction being booked is registered")
    }

    /// Logs a one-phase outcome (forced: the reply is final), then END.
    async fn finish_one_phase(
        &self,
        header: &TxnHeader,
        reply: BookReply,
    ) -> Result<(), BookError> {
        self.log
            .append(header.decision(&reply), Durability::Forced)
            .await?;
        self.registry.decide(header.txid, reply);
        self.log.append(header.end(), Durability::Written).await?;
        self.registry.end(header.txid);
        Ok(())
    }

    /// Asks the shard for a one-phase txid's outcome until it answers.
    /// `Resolve` fences an unknown txid, so a late BOOK_LOCAL cannot land.
    pub(crate) fn spawn_resolve(self: &Arc<Self>, header: TxnHeader, shard: usize, cause: String) {
        let core = Arc::clone(self);
        let span = tracing::info_span!("resolve", txid = %header.txid);
        tokio::spawn(
            async move {
                let mut backoff = Backoff::new(core.registry.retry_signal(header.txid), "resolve");
                loop {
                    match core
                        .shards
                        .resolve(shard, header.txid.to_string(), PHASE_TWO_CALL_TIMEOUT)
                        .await
                    {
                        Ok(answer) => match resolved_reply(&header, answer, &cause) {
                            Some(reply) => {
                                if let Err(error) = core.finish_one_phase(&header, reply).await {
                                    error!(%error, "decision log failed while resolving");
                                    core.fatal.cancel();
                                }
                                return;
                            }
                            None => error!(
                                "shard reports a one-phase txid as prepared: protocol violation"
                            ),
                        },
                        Err(error) => warn!(%error, "RESOLVE failed; retrying"),
                    }
                    backoff.wait().await;
                }
            }
            .instrument(span),
        );
    }

    /// Phase 2 (or a saga's compensation): delivers `decision` to every
    /// shard until each acknowledges, then writes END.
    pub(crate) fn spawn_phase_two(
        self: &Arc<Self>,
        header: TxnHeader,
        decision: Decision,
        shards: Vec<usize>,
    ) {
        let core = Arc::clone(self);
        let span = tracing::info_span!("phase_two", txid = %header.txid, ?decision);
        tokio::spawn(
            async move {
                let txid = header.txid.to_string();
                let delivering = std::time::Instant::now();
                let delivered = futures::future::join_all(
                    shards
                        .iter()
                        .map(|shard| core.deliver(header.txid, &txid, decision, *shard)),
                )
                .await;
                if delivered.iter().all(|ok| *ok) {
                    metrics::phase("deliver", delivering.elapsed());
                    crash_point("coordinator::before_end");
                    if let Err(error) = core.log.append(header.end(), Durability::Written).await {
                        error!(%error, "decision log failed writing END");
                        core.fatal.cancel();
                        return;
                    }
                    core.registry.end(header.txid);
                }
            }
            .instrument(span),
        );
    }

    async fn deliver(&self, id: Uuid, txid: &str, decision: Decision, shard: usize) -> bool {
        let mut backoff = Backoff::new(self.registry.retry_signal(id), "deliver");
        loop {
            let result = self
                .shards
                .decide(shard, decision, txid.to_string(), PHASE_TWO_CALL_TIMEOUT)
                .await;
            match result {
                Ok(_) => {
                    // One shard has applied it; the others may not have
                    // heard it yet.
                    match decision {
                        Decision::Commit => crash_point("coordinator::after_first_commit"),
                        Decision::Compensate => crash_point("coordinator::saga_mid_compensation"),
                        Decision::Abort => {}
                    }
                    return true;
                }
                Err(error) if error.is_refusal() => {
                    // A shard refusing the decision breaks an invariant;
                    // leave the transaction un-ended so operators see it.
                    error!(%error, shard = self.shards.name(shard), ?decision, "PROTOCOL VIOLATION: shard refused the decision");
                    return false;
                }
                Err(error) => {
                    tracing::debug!(%error, "decision not acknowledged; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    pub(crate) fn shard_index(&self, name: &str) -> Option<usize> {
        self.map.index_of(name)
    }

    pub(crate) fn shards(&self) -> &ShardClients {
        &self.shards
    }

    pub(crate) fn log(&self) -> &DecisionLog {
        &self.log
    }

    pub(crate) fn fatal(&self) -> &CancellationToken {
        &self.fatal
    }
}

pub(crate) fn restored_txn(header: &TxnHeader, begun_at_ms: u64, first_segment: u64) -> NewTxn {
    NewTxn {
        header: header.clone(),
        begun_at_ms,
        first_segment,
    }
}

/// Waits for the reply of a transaction registered under a key.
async fn await_reply(
    txid: Uuid,
    mut reply: watch::Receiver<Option<BookReply>>,
    timeout: Duration,
) -> Result<BookReply, BookError> {
    let waited = tokio::time::timeout(timeout, reply.wait_for(Option::is_some)).await;
    match waited {
        Ok(Ok(done)) => Ok(done.clone().expect("wait_for returned a decided reply")),
        _ => Err(BookError::StillInProgress { txid }),
    }
}

fn decided_of_vote(vote: Vote, header: &TxnHeader) -> Decided {
    if vote.yes {
        let mut legs = vote.legs;
        legs.sort_by_key(|l| l.leg_index);
        return Decided::Commit(legs);
    }
    Decided::Abort(vote.refusal.unwrap_or_else(|| {
        AbortDetail {
            reason: AbortReason::ShardUnavailable as i32,
            leg_index: 0,
            flight_id: header
                .legs
                .first()
                .map(|l| l.flight_id.clone())
                .unwrap_or_default(),
            message: "the shard voted NO without a reason".into(),
        }
    }))
}

pub(crate) fn reply_of(header: &TxnHeader, decided: Decided) -> BookReply {
    let (outcome, legs, abort) = match decided {
        Decided::Commit(legs) => (Outcome::Committed, legs, None),
        Decided::Abort(detail) => (Outcome::Aborted, Vec::new(), Some(detail)),
    };
    BookReply {
        txid: header.txid.to_string(),
        outcome: outcome as i32,
        legs,
        abort,
        mode: header.mode as i32,
    }
}

/// The reply for a one-phase txid whose outcome the shard reports, or None
/// when the report is impossible (prepared).
fn resolved_reply(header: &TxnHeader, answer: ResolveReply, cause: &str) -> Option<BookReply> {
    let decided = match ShardTxnState::try_from(answer.state) {
        Ok(ShardTxnState::ShardCommitted) => {
            let mut legs: Vec<LegResult> = answer.legs;
            legs.sort_by_key(|l| l.leg_index);
            Decided::Commit(legs)
        }
        Ok(ShardTxnState::ShardAborted) => Decided::Abort(answer.refusal.unwrap_or_else(|| {
            let first = header.legs.first();
            AbortDetail {
                reason: AbortReason::ShardUnavailable as i32,
                leg_index: first.map(|l| l.leg_index).unwrap_or(0),
                flight_id: first.map(|l| l.flight_id.clone()).unwrap_or_default(),
                message: format!(
                    "the shard did not answer ({cause}); the booking was fenced and aborted"
                ),
            }
        })),
        _ => return None,
    };
    Some(reply_of(header, decided))
}

/// Exponential backoff with jitter, bounded, cut short by the operator's
/// `RetryTransaction` (the transaction's retry signal), which also starts
/// the backoff over.
pub(crate) struct Backoff {
    next: Duration,
    retry: Arc<Notify>,
    /// The `kind` label of `coordinator_retries_total`.
    kind: &'static str,
}

impl Backoff {
    pub(crate) fn new(retry: Arc<Notify>, kind: &'static str) -> Backoff {
        Backoff {
            next: BACKOFF_MIN,
            retry,
            kind,
        }
    }

    pub(crate) async fn wait(&mut self) {
        metrics::retry(self.kind);
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        tokio::select! {
            _ = tokio::time::sleep(self.next.mul_f64(jitter)) => {
                self.next = (self.next * 2).min(BACKOFF_MAX);
            }
            _ = self.retry.notified() => {
                info!("re-driven now at the operator's request");
                self.next = BACKOFF_MIN;
            }
        }
    }
}

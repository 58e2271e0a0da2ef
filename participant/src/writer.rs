//! The batching writers (group commit for the shard database). Each RPC
//! enqueues its operation; W writer lanes (1 for SQLite, more for
//! PostgreSQL) each take ALL operations waiting at that moment (up to
//! `BATCH_OPS_MAX`), apply them in one local transaction (one fsync), and
//! only after the local commit answer every caller.
//!
//! Every operation of one txid (or one flight, for CREATE_FLIGHT) goes to the
//! same lane, so two local transactions never race on one txid. A database
//! error fails the whole batch: every caller of it gets the error and nothing
//! of the batch is applied. Deadlocks and busy errors are retried whole a few
//! times first. The queues are bounded: when full, the caller is told to
//! retry (RESOURCE_EXHAUSTED) instead of waiting.
//!
//! Each lane numbers its batches and logs, at debug level, which txids a
//! batch holds before it runs and how it ended, so a txid's request log
//! (span `txid`) can be matched with the local commit that applied it. After
//! each batch the lane records the local-commit series (`metrics`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use booking_proto::routing::flight_hash;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

use crate::error::{OpError, StoreError};
use crate::metrics::Metrics;
use crate::op::{Op, Reply};
use crate::store::{Applied, OpResult, Store};

/// Most operations applied in one local transaction.
pub const BATCH_OPS_MAX: usize = 256;
/// Most operations waiting, over all lanes.
pub const QUEUED_OPS_MAX: usize = 4096;
/// Times a batch is retried after a transient database error.
const BATCH_RETRIES_MAX: u32 = 3;
/// Pause before the first retry; doubled for each next one.
const BATCH_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// An operation waiting for its lane, and where to send its answer.
struct Job {
    op: Op,
    reply: oneshot::Sender<Result<OpResult, OpError>>,
}

/// The queues of the writer lanes. Cloning shares them; the lanes stop
/// once every clone is dropped and the queues are drained.
#[derive(Clone)]
pub struct Writers {
    lanes: Arc<Vec<mpsc::Sender<Job>>>,
    /// Capacity of each lane's queue.
    lane_capacity: usize,
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writers")
            .field("lanes", &self.lanes.len())
            .finish()
    }
}

impl Writers {
    /// Starts `lanes` writer tasks on `tasks`.
    pub fn start(
        store: Store,
        lanes: usize,
        metrics: Arc<Metrics>,
        tasks: &mut JoinSet<Result<(), String>>,
    ) -> Writers {
        assert!(lanes > 0, "config checks writers >= 1");
        let lane_capacity = (QUEUED_OPS_MAX / lanes).max(1);
        let senders = (0..lanes)
            .map(|lane| {
                let (sender, receiver) = mpsc::channel(lane_capacity);
                let lane = Lane {
                    store: store.clone(),
                    metrics: Arc::clone(&metrics),
                    index: lane,
                };
                tasks.spawn(async move {
                    lane.run(receiver).await;
                    Ok(())
                });
                sender
            })
            .collect();
        Writers {
            lanes: Arc::new(senders),
            lane_capacity,
        }
    }

    /// Queues `op` and waits until its batch has committed locally.
    pub async fn submit(&self, op: Op) -> Result<Reply, OpError> {
        let lane = (flight_hash(op.lane_key()) % self.lanes.len() as u64) as usize;
        let (reply, answer) = oneshot::channel();
        self.lanes[lane]
            .try_send(Job { op, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => OpError::Overloaded {
                    queued_max: self.lane_capacity,
                },
                mpsc::error::TrySendError::Closed(_) => OpError::Stopped,
            })?;
        let result = answer.await.map_err(|_| OpError::Stopped)??;
        Ok(result?)
    }
}

/// One writer task and what it shares with the others.
struct Lane {
    store: Store,
    metrics: Arc<Metrics>,
    index: usize,
}

impl Lane {
    /// Batch after batch until the queue is closed and empty.
    async fn run(self, mut queue: mpsc::Receiver<Job>) {
        let lane = self.index;
        let mut jobs = Vec::with_capacity(BATCH_OPS_MAX);
        let mut batch: u64 = 0;
        while queue.recv_many(&mut jobs, BATCH_OPS_MAX).await > 0 {
            batch += 1;
            let (ops, replies): (Vec<Op>, Vec<_>) =
                jobs.drain(..).map(|job| (job.op, job.reply)).unzip();
            debug!(lane, batch, ops = ops.len(), txids = %Txids(&ops), "batch: one local transaction");
            match self.apply(&ops).await {
                Ok(applied) => {
                    debug!(
                        lane,
                        batch,
                        prepared_change = applied.prepared_change,
                        "batch committed locally"
                    );
                    for (reply, result) in replies.into_iter().zip(applied.results) {
                        // A caller that went away still had its op applied; idempotency covers its retry.
                        let _ = reply.send(Ok(result));
                    }
                }
                Err(err) => {
                    error!(lane, batch, ops = ops.len(), txids = %Txids(&ops), error = %err, "batch failed, nothing applied");
                    for reply in replies {
                        let _ = reply.send(Err(OpError::from(&err)));
                    }
                }
            }
        }
        debug!(lane, "writer lane stopped");
    }

    /// The batch, timed and counted; see `metrics`.
    async fn apply(&self, ops: &[Op]) -> Result<Applied, StoreError> {
        let started = Instant::now();
        let applied = apply_with_retries(&self.store, ops).await;
        match &applied {
            Ok(applied) => {
                let txids = ops.iter().filter(|op| op.txid().is_some()).count();
                self.metrics
                    .local_commit(txids, started.elapsed(), applied.prepared_change);
            }
            Err(_) => self.metrics.local_commit_failed(),
        }
        applied
    }
}

/// The txids of a batch, for its log line: formatted only when the line
/// is enabled.
struct Txids<'a>(&'a [Op]);

impl fmt::Display for Txids<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut txids = self.0.iter().filter_map(Op::txid);
        if let Some(first) = txids.next() {
            write!(f, "{first}")?;
        }
        txids.try_for_each(|txid| write!(f, ",{txid}"))
    }
}

/// The batch, retried whole after deadlocks and busy errors.
async fn apply_with_retries(store: &Store, ops: &[Op]) -> Result<Applied, StoreError> {
    let mut pause = BATCH_RETRY_PAUSE;
    let mut attempt = 1;
    loop {
        match store.apply_batch(ops).await {
            Err(err) if err.is_transient() && attempt <= BATCH_RETRIES_MAX => {
                warn!(attempt, error = %err, "batch hit a transient database error; retrying it whole");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

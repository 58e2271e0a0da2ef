//! The batching writers (group commit for the shard database). Each RPC
//! enqueues its operation; W writer lanes (`--writers`, default 1) each
//! take ALL operations waiting at that moment (up to `BATCH_OPS_MAX`), apply
//! them in one local transaction (one fsync), and
//! only after the local commit answer every caller.
//!
//! Every operation of one txid (or one flight, for CREATE_FLIGHT) goes to the
//! same lane, so two local transactions never race on one txid. A database
//! error fails the whole batch: every caller of it gets the error and nothing
//! of the batch is applied. Deadlocks and busy errors are retried whole a few
//! times first. The queues are bounded: when full, the caller is told to
//! retry (RESOURCE_EXHAUSTED) instead of waiting.
//!
//! `batch_max` (`--batch-max`, default `BATCH_OPS_MAX`) caps a batch; 1
//! turns batching off, one local commit per message: the naive baseline of
//! `bookctl bench`, never a production setting. Correctness never depends
//! on batching, so any limit is safe.
//!
//! Each lane numbers its batches and logs, at debug level, which txids a
//! batch holds before it runs and how it ended, so a txid's request log
//! (span `txid`) can be matched with the local commit that applied it. After
//! each batch the lane records the local-commit series (`metrics`).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// The batch limit of the lanes that [`Writers::start`] starts in this
/// process: `BATCH_OPS_MAX` unless the binary lowered it from the checked
/// `Config::batch_max` with [`set_batch_ops_limit`]. Process-wide because
/// the server wires the lanes from `Config::writers` alone.
static BATCH_OPS_LIMIT: AtomicUsize = AtomicUsize::new(BATCH_OPS_MAX);

/// Sets the batch limit of every writer lane started from now on in this
/// process (the participant binary's `--batch-max`).
pub fn set_batch_ops_limit(limit: usize) {
    assert!(
        (1..=BATCH_OPS_MAX).contains(&limit),
        "config checks 1 <= batch_max <= BATCH_OPS_MAX"
    );
    BATCH_OPS_LIMIT.store(limit, Ordering::Relaxed);
}

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
    /// Starts `lanes` writer tasks on `tasks`, with the process's batch
    /// limit (see [`set_batch_ops_limit`]).
    pub fn start(
        store: Store,
        lanes: usize,
        metrics: Arc<Metrics>,
        tasks: &mut JoinSet<Result<(), String>>,
    ) -> Writers {
        let batch_max = BATCH_OPS_LIMIT.load(Ordering::Relaxed);
        Writers::start_with_batch_max(store, lanes, batch_max, metrics, tasks)
    }

    /// Starts `lanes` writer tasks on `tasks`, each applying at most
    /// `batch_max` operations per local transaction.
    pub fn start_with_batch_max(
        store: Store,
        lanes: usize,
        batch_max: usize,
        metrics: Arc<Metrics>,
        tasks: &mut JoinSet<Result<(), String>>,
    ) -> Writers {
        assert!(lanes > 0, "config checks writers >= 1");
        assert!(
            (1..=BATCH_OPS_MAX).contains(&batch_max),
            "config checks 1 <= batch_max <= BATCH_OPS_MAX"
        );
        let lane_capacity = (QUEUED_OPS_MAX / lanes).max(1);
        let senders = (0..lanes)
            .map(|lane| {
                let (sender, receiver) = mpsc::channel(lane_capacity);
                let lane = Lane {
                    store: store.clone(),
                    metrics: Arc::clone(&metrics),
                    index: lane,
                    batch_max,
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
    /// Most operations per local transaction; 1..=BATCH_OPS_MAX.
    batch_max: usize,
}

impl Lane {
    /// Batch after batch until the queue is closed and empty.
    async fn run(self, mut queue: mpsc::Receiver<Job>) {
        let lane = self.index;
        let mut jobs = Vec::with_capacity(self.batch_max);
        let mut batch: u64 = 0;
        while queue.recv_many(&mut jobs, self.batch_max).await > 0 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::model::TxnId;

    /// Submits `count` ABORTs (fences) at once through one lane capped at
    /// `batch_max`; returns the local commits made.
    async fn fences_through(batch_max: usize, count: usize) -> f64 {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/s0.db", dir.path().display());
        let config = Config::new("s0", &url, 1).expect("valid config");
        let store = Store::open(&config).await.expect("open store");
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = ::metrics::with_local_recorder(&recorder, Metrics::register);
        let mut tasks = JoinSet::new();
        let writers = Writers::start_with_batch_max(store, 1, batch_max, metrics, &mut tasks);
        let submits = (0..count).map(|i| {
            let txid = TxnId::parse("txid", &uuid::Uuid::from_u128(i as u128 + 1).to_string())
                .expect("a uuid is a valid txid");
            writers.submit(Op::Abort(txid))
        });
        for result in futures::future::join_all(submits).await {
            result.expect("a fence is always recorded");
        }
        let text = recorder.handle().render();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(crate::metrics::LOCAL_COMMITS_TOTAL)?
                    .strip_prefix(' ')
            })
            .map_or(0.0, |v| v.parse::<f64>().expect("a number"))
    }

    #[tokio::test]
    async fn batch_max_one_gives_every_message_its_own_local_commit() {
        assert_eq!(fences_through(1, 24).await, 24.0);
    }

    #[tokio::test]
    async fn a_batch_never_exceeds_batch_max() {
        let commits = fences_through(4, 24).await;
        assert!(commits >= 6.0, "24 ops in batches of at most 4: {commits}");
        let batched = fences_through(BATCH_OPS_MAX, 24).await;
        assert!(
            batched >= 1.0 && batched <= commits,
            "{batched} vs {commits}"
        );
    }
}

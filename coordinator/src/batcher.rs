//! Per-shard batching of the calls to a participant. A `Batcher` owns one
//! sender task: it takes every entry waiting for the shard (up to
//! `entries_max`, and split so that no call carries more than `bytes_max`
//! of entries) into one call, with at most `CALLS_INFLIGHT_MAX` calls in
//! flight; while they are, the next entries gather. So the number of calls
//! follows the load only as far as the participant keeps up, like group
//! commit.
//!
//! A batcher may also linger (`Limits::linger`): once its first entry is
//! there, it waits that long for more before it calls, unless a call's
//! worth is already waiting. Only the decisions' batchers linger: phase 2
//! runs after the client's reply, and at low load a COMMIT batch per
//! booking on each shard ran its local commit (and fsync) just as the next
//! booking's PREPARE arrived there.
//!
//! Each submitter gets its own entry's result, as from its own call. With
//! `Wait::UpToTimeout` (reservations: a client waits for the booking) the
//! submitter's timeout also covers the wait in the queue; with
//! `Wait::ForTheCall` (decisions: nobody waits, and a timed-out decision
//! would only be queued again) the timeout limits the call alone. An entry
//! whose submitter has given up is not sent. A call that fails as a whole
//! (transport error, timeout, a status for the whole call) fails every
//! entry in it with that error; the submitters retry (or not) on their
//! own, as before batching.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::warn;

use crate::shards::ShardCallError;

/// Calls in flight at once to one shard, per batcher.
const CALLS_INFLIGHT_MAX: usize = 4;

/// What one entry of a batched call ended with: a gRPC status code, its
/// message, and on OK the entry's answer.
#[derive(Debug)]
pub struct EntryResult<R> {
    pub code: i32,
    pub message: String,
    pub value: Option<R>,
}

/// An entry waiting for its shard's next call.
struct Queued<E, R> {
    entry: E,
    timeout: Duration,
    answer: oneshot::Sender<Result<R, ShardCallError>>,
}

/// What a submitter's timeout covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The wait in the queue and the call.
    UpToTimeout,
    /// The call only: the entry waits in the queue as long as it takes.
    ForTheCall,
}

/// The queue of one shard's sender task. Clones share it; the task stops
/// once every clone is dropped.
pub struct Batcher<E, R> {
    shard: String,
    wait: Wait,
    queue: mpsc::UnboundedSender<Queued<E, R>>,
}

impl<E, R> Clone for Batcher<E, R> {
    fn clone(&self) -> Self {
        Batcher {
            shard: self.shard.clone(),
            wait: self.wait,
            queue: self.queue.clone(),
        }
    }
}

/// How a batcher calls its shard: the entries, and the time limit of the
/// whole call; the results, one per entry in order.
pub trait BatchCall<E, R>: Send + Sync + 'static {
    fn call(
        &self,
        entries: Vec<E>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<EntryResult<R>>, ShardCallError>> + Send;
}

/// The limits of one batcher's calls.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub entries_max: usize,
    pub bytes_max: usize,
    /// How long the first entry of a call waits for others (zero: not at
    /// all); see the module docs.
    pub linger: Duration,
}

impl<E: Send + 'static, R: Send + 'static> Batcher<E, R> {
    /// Starts the sender task (so this must run inside a tokio runtime).
    /// `size` is an entry's encoded size, for `Limits::bytes_max`.
    pub fn start(
        shard: String,
        limits: Limits,
        wait: Wait,
        size: fn(&E) -> usize,
        call: impl BatchCall<E, R>,
    ) -> Batcher<E, R> {
        assert!(limits.entries_max > 0 && limits.bytes_max > 0);
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(run(shard.clone(), queued, limits, size, Arc::new(call)));
        Batcher { shard, wait, queue }
    }

    /// Queues `entry` for the next call; its result, or a timeout (see
    /// `Wait`).
    pub async fn submit(&self, entry: E, timeout: Duration) -> Result<R, ShardCallError> {
        let (answer, answered) = oneshot::channel();
        let stopped = || ShardCallError::Status {
            shard: self.shard.clone(),
            code: tonic::Code::Unavailable,
            message: "the shard's call sender stopped".into(),
        };
        self.queue
            .send(Queued {
                entry,
                timeout,
                answer,
            })
            .map_err(|_| stopped())?;
        if self.wait == Wait::ForTheCall {
            return answered.await.map_err(|_| stopped())?;
        }
        match tokio::time::timeout(timeout, answered).await {
            Ok(answer) => answer.map_err(|_| stopped())?,
            Err(_) => Err(ShardCallError::Timeout {
                shard: self.shard.clone(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }
}

/// The sender task: batch after batch until the queue closes.
async fn run<E: Send + 'static, R: Send + 'static, C: BatchCall<E, R>>(
    shard: String,
    mut queue: mpsc::UnboundedReceiver<Queued<E, R>>,
    limits: Limits,
    size: fn(&E) -> usize,
    call: Arc<C>,
) {
    let calls = Arc::new(Semaphore::new(CALLS_INFLIGHT_MAX));
    loop {
        let permit = Arc::clone(&calls)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut taken = Vec::new();
        if queue.recv_many(&mut taken, limits.entries_max).await == 0 {
            return;
        }
        if !limits.linger.is_zero() && taken.len() < limits.entries_max {
            tokio::time::sleep(limits.linger).await;
            while taken.len() < limits.entries_max {
                match queue.try_recv() {
                    Ok(queued) => taken.push(queued),
                    Err(_) => break,
                }
            }
        }
        let (shard, call) = (shard.clone(), Arc::clone(&call));
        tokio::spawn(async move {
            for batch in split(taken, limits.bytes_max, size) {
                send(&shard, call.as_ref(), batch).await;
            }
            drop(permit);
        });
    }
}

/// `queued` in order, in runs of at most `bytes_max` (an entry larger than
/// that goes alone: the participant answers for it).
fn split<E, R>(
    queued: Vec<Queued<E, R>>,
    bytes_max: usize,
    size: fn(&E) -> usize,
) -> Vec<Vec<Queued<E, R>>> {
    let mut batches: Vec<Vec<Queued<E, R>>> = Vec::new();
    let mut bytes = 0;
    for item in queued {
        let item_bytes = size(&item.entry);
        match batches.last_mut() {
            Some(batch) if bytes + item_bytes <= bytes_max => {
                bytes += item_bytes;
                batch.push(item);
            }
            _ => {
                bytes = item_bytes;
                batches.push(vec![item]);
            }
        }
    }
    batches
}

/// One call; answers every entry of `batch` whose submitter still waits.
async fn send<E, R, C: BatchCall<E, R>>(shard: &str, call: &C, mut batch: Vec<Queued<E, R>>) {
    batch.retain(|q| !q.answer.is_closed());
    if batch.is_empty() {
        return;
    }
    let timeout = batch
        .iter()
        .map(|q| q.timeout)
        .max()
        .expect("a batch has at least one entry");
    let (entries, answers): (Vec<E>, Vec<_>) =
        batch.into_iter().map(|q| (q.entry, q.answer)).unzip();
    let count = entries.len();
    let results = match call.call(entries, timeout).await {
        Ok(results) if results.len() == count => results,
        Ok(results) => {
            warn!(
                shard,
                entries = count,
                results = results.len(),
                "a batched call answered the wrong number of results"
            );
            let error = ShardCallError::Status {
                shard: shard.to_string(),
                code: tonic::Code::Internal,
                message: format!("{} results for {count} entries", results.len()),
            };
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
            return;
        }
        Err(error) => {
            for answer in answers {
                let _ = answer.send(Err(error.clone()));
            }
            return;
        }
    };
    for (answer, result) in answers.into_iter().zip(results) {
        let outcome = match (tonic::Code::from_i32(result.code), result.value) {
            (tonic::Code::Ok, Some(value)) => Ok(value),
            (tonic::Code::Ok, None) => Err(ShardCallError::Status {
                shard: shard.to_string(),
                code: tonic::Code::Internal,
                message: "an OK result without its answer".into(),
            }),
            (code, _) => Err(ShardCallError::Status {
                shard: shard.to_string(),
                code,
                message: result.message,
            }),
        };
        // A submitter that gave up (its booking ended) needs no answer.
        let _ = answer.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers each entry n with n * 10, or the code n names when n < 0;
    /// counts calls and the largest batch.
    #[derive(Default)]
    struct Echo {
        calls: AtomicUsize,
        largest: AtomicUsize,
    }

    impl BatchCall<i64, i64> for Arc<Echo> {
        async fn call(
            &self,
            entries: Vec<i64>,
            _timeout: Duration,
        ) -> Result<Vec<EntryResult<i64>>, ShardCallError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.largest.fetch_max(entries.len(), Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(entries
                .into_iter()
                .map(|n| EntryResult {
                    code: if n < 0 { -n as i32 } else { 0 },
                    message: format!("entry {n}"),
                    value: (n >= 0).then_some(n * 10),
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn each_submitter_gets_its_own_result_and_calls_are_shared() {
        let echo = Arc::new(Echo::default());
        let limits = Limits {
            entries_max: 64,
            bytes_max: 1 << 20,
            linger: Duration::ZERO,
        };
        let batcher = Batcher::start(
            "s0".into(),
            limits,
            Wait::UpToTimeout,
            |_| 8,
            Arc::clone(&echo),
        );
        let submits = (0..500).map(|n| {
            let batcher = batcher.clone();
            async move { batcher.submit(n, Duration::from_secs(5)).await }
        });
        let results = futures::future::join_all(submits).await;
        for (n, result) in results.into_iter().enumerate() {
            assert_eq!(result.expect("answered"), n as i64 * 10);
        }
        let calls = echo.calls.load(Ordering::SeqCst);
        assert!(
            (500 / 64..500).contains(&calls),
            "{calls} calls for 500 entries"
        );
        assert!(echo.largest.load(Ordering::SeqCst) <= 64);
        let refused = batcher.submit(-9, Duration::from_secs(5)).await;
        match refused {
            Err(ShardCallError::Status { code, message, .. }) => {
                assert_eq!(code, tonic::Code::FailedPrecondition);
                assert_eq!(message, "entry -9");
            }
            other => panic!("expected the entry's own status, got {other:?}"),
        }
    }

    /// Submits 0..count at once, each with `timeout`; the results in order.
    async fn submit_each(
        batcher: &Batcher<i64, i64>,
        count: i64,
        timeout: Duration,
    ) -> Vec<Result<i64, ShardCallError>> {
        let submits = (0..count).map(|n| {
            let batcher = batcher.clone();
            async move { batcher.submit(n, timeout).await }
        });
        futures::future::join_all(submits).await
    }

    /// An entry whose submitter gave up is not sent; a `ForTheCall`
    /// submitter waits in the queue past its timeout.
    #[tokio::test]
    async fn abandoned_entries_are_dropped_and_decisions_wait_their_turn() {
        let echo = Arc::new(Echo::default());
        let limits = Limits {
            entries_max: 1,
            bytes_max: 1 << 20,
            linger: Duration::ZERO,
        };
        let patient = Batcher::start(
            "s0".into(),
            limits,
            Wait::ForTheCall,
            |_| 8,
            Arc::clone(&echo),
        );
        // 40 entries, one per call, 4 calls in flight, 5 ms each: the last
        // waits about 50 ms, far past its 1 ms timeout, and still gets its answer.
        for (n, result) in submit_each(&patient, 40, Duration::from_millis(1))
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(
                result.expect("answered, however long the queue"),
                n as i64 * 10
            );
        }
        assert_eq!(echo.calls.load(Ordering::SeqCst), 40);
        // Entries abandoned by their submitters before their turn are never sent.
        let impatient = Batcher::start(
            "s0".into(),
            limits,
            Wait::UpToTimeout,
            |_| 8,
            Arc::clone(&echo),
        );
        let results = submit_each(&impatient, 40, Duration::from_millis(1)).await;
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(ShardCallError::Timeout { .. }))));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = echo.calls.load(Ordering::SeqCst) - 40;
        assert!(sent < 40, "{sent} of 40 abandoned entries were sent anyway");
    }

    /// Entries that arrive one after another, 2 ms apart, go in several
    /// calls without a linger, and in one call with a linger longer than
    /// their spread; a full call does not wait for it.
    #[tokio::test]
    async fn a_lingering_batcher_gathers_what_comes_within_its_linger() {
        async fn calls_for_trickle(linger: Duration, entries_max: usize) -> usize {
            let echo = Arc::new(Echo::default());
            let limits = Limits {
                entries_max,
                bytes_max: 1 << 20,
                linger,
            };
            let batcher = Batcher::start(
                "s0".into(),
                limits,
                Wait::ForTheCall,
                |_| 8,
                Arc::clone(&echo),
            );
            let submits = (0..5).map(|n| {
                let batcher = batcher.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(2 * n as u64)).await;
                    batcher.submit(n, Duration::from_secs(5)).await
                }
            });
            for (n, result) in futures::future::join_all(submits)
                .await
                .into_iter()
                .enumerate()
            {
                assert_eq!(result.expect("answered"), n as i64 * 10);
            }
            echo.calls.load(Ordering::SeqCst)
        }
        // The echo call takes 5 ms, so without a linger the 2 ms trickle
        // also gathers a little while calls are in flight: at least 2 calls.
        let unlingered = calls_for_trickle(Duration::ZERO, 64).await;
        assert!(unlingered >= 2, "{unlingered} calls without a linger");
        assert_eq!(calls_for_trickle(Duration::from_millis(100), 64).await, 1);
        // Each call is full at its first entry: no linger, one call each.
        let started = std::time::Instant::now();
        assert_eq!(calls_for_trickle(Duration::from_secs(60), 1).await, 5);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn batches_are_split_by_bytes_in_order() {
        let queued: Vec<Queued<usize, ()>> = [3, 3, 3, 10, 1, 1]
            .into_iter()
            .map(|entry| Queued {
                entry,
                timeout: Duration::from_secs(1),
                answer: oneshot::channel().0,
            })
            .collect();
        let sizes: Vec<Vec<usize>> = split(queued, 6, |e| *e)
            .into_iter()
            .map(|b| b.into_iter().map(|q| q.entry).collect())
            .collect();
        assert_eq!(sizes, vec![vec![3, 3], vec![3], vec![10], vec![1, 1]]);
    }
}

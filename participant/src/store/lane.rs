//! SQLite writer lanes: each runs its batches on a thread of its own, over
//! a connection only that thread uses. A batch is handed over once and its
//! result handed back once, whatever its statements.
//!
//! Through sqlx every statement was a round trip to the connection's worker
//! thread: a batch took three (BEGIN with its read-ahead, the writes,
//! COMMIT), each 100–170 µs there and back at one client, with the thread
//! switches that went with them (8% of all CPU at 64 clients, `perf`). The
//! statements, their order and the durability order are the same as
//! before (`super` module docs): the reply leaves the lane only after the
//! COMMIT returned.
//!
//! A lane that failed a batch is not reused: its thread rolls back what was
//! open and closes its connection, and the next batch gets a new lane.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{mpsc, Mutex};
use std::thread;

use tokio::sync::oneshot;

use super::conn::Conn;
use super::connect::{self, SqliteFile};
use super::{apply_ops, wal_checkpoint, Applied};
use crate::config::Backend;
use crate::error::StoreError;
use crate::op::Op;

/// The writer lanes of one SQLite shard.
#[derive(Debug)]
pub struct Lanes {
    file: SqliteFile,
    shard: String,
    idle: Mutex<Vec<Lane>>,
}

/// One lane: the sender of its thread's batches.
#[derive(Debug)]
struct Lane {
    jobs: mpsc::Sender<Job>,
    thread: thread::JoinHandle<()>,
}

/// A batch for a lane's thread.
struct Job {
    ops: Vec<Op>,
    /// Copy the WAL into the database file first (`Store::checkpoint`).
    checkpoint: bool,
    reply: oneshot::Sender<Result<Applied, StoreError>>,
}

impl Lanes {
    pub fn new(file: SqliteFile, shard: String) -> Lanes {
        Lanes {
            file,
            shard,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Applies `ops` as one local transaction on an idle lane (a new one if
    /// none is idle), and commits it.
    pub async fn apply(&self, ops: &[Op], checkpoint: bool) -> Result<Applied, StoreError> {
        let held = self
            .idle
            .lock()
            .expect("no code panics while holding this lock")
            .pop();
        let lane = match held {
            Some(lane) => lane,
            None => self.spawn()?,
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            ops: ops.to_vec(),
            checkpoint,
            reply,
        };
        lane.jobs.send(job).map_err(|_| lane_gone())?;
        // A lane thread always answers, unless it panicked: a bug, which
        // stops this writer as loudly as when batches ran on it.
        let applied = answer.await.unwrap_or_else(|_| {
            panic!(
                "the SQLite writer lane of shard {} panicked (its message is above)",
                self.shard
            )
        });
        if applied.is_ok() {
            self.idle
                .lock()
                .expect("no code panics while holding this lock")
                .push(lane);
        }
        applied
    }

    fn spawn(&self) -> Result<Lane, StoreError> {
        let (jobs, queue) = mpsc::channel();
        let (file, shard) = (self.file.clone(), self.shard.clone());
        let thread = thread::Builder::new()
            .name(format!("{}-sqlite-lane", self.shard))
            .spawn(move || run(&file, &shard, queue))
            .map_err(|e| {
                StoreError::Database(sqlx::Error::Protocol(format!(
                    "starting a SQLite writer lane: {e}"
                )))
            })?;
        Ok(Lane { jobs, thread })
    }

    /// Stops every idle lane and waits for its connection to close. A lane
    /// still running a batch (its caller gone) closes when that ends.
    pub async fn close(&self) {
        let idle = std::mem::take(
            &mut *self
                .idle
                .lock()
                .expect("no code panics while holding this lock"),
        );
        for Lane { jobs, thread } in idle {
            drop(jobs);
            // The thread ends as soon as it sees no sender left.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn lane_gone() -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(
        "the SQLite writer lane stopped".into(),
    ))
}

/// A lane's thread: one batch after another until the store drops it, or
/// until a batch fails.
fn run(file: &SqliteFile, shard: &str, queue: mpsc::Receiver<Job>) {
    let mut conn = match open(file) {
        Ok(conn) => conn,
        Err(err) => {
            if let Ok(job) = queue.recv() {
                let _ = job.reply.send(Err(err));
            }
            return;
        }
    };
    while let Ok(job) = queue.recv() {
        if job.checkpoint {
            // Between batches: no frame is being added now. A failed
            // checkpoint only leaves the WAL long.
            match futures::executor::block_on(wal_checkpoint(&mut Conn::Lite(&mut conn))) {
                Ok((frames, copied)) => {
                    tracing::debug!(frames, copied, "WAL checkpoint by the writer lane")
                }
                Err(err) => {
                    tracing::warn!(error = %err, "WAL checkpoint by the writer lane failed")
                }
            }
        }
        let applied = panic::catch_unwind(AssertUnwindSafe(|| {
            futures::executor::block_on(apply_and_commit(&mut conn, shard, &job.ops))
        }));
        let applied = match applied {
            Ok(applied) => applied,
            Err(panicked) => {
                // Roll back before the caller learns of it (by the reply
                // sender's drop), then end the thread with the panic.
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                drop(job);
                panic::resume_unwind(panicked)
            }
        };
        let failed = applied.is_err();
        if failed && !conn.is_autocommit() {
            // Closing the connection below would roll back too; this
            // makes it so before the lane answers.
            let _ = conn.execute_batch("ROLLBACK");
        }
        let _ = job.reply.send(applied);
        if failed {
            return;
        }
    }
}

/// The batch (BEGIN IMMEDIATE goes with its read-ahead), then COMMIT.
pub(super) async fn apply_and_commit(
    conn: &mut rusqlite::Connection,
    shard: &str,
    ops: &[Op],
) -> Result<Applied, StoreError> {
    let mut conn = Conn::Lite(conn);
    let applied = apply_ops(&mut conn, Backend::Sqlite, shard, ops).await?;
    conn.execute("COMMIT", &[]).await?;
    Ok(applied)
}

/// The lane's connection, with the writer settings of `connect.rs`.
pub fn open(file: &SqliteFile) -> Result<rusqlite::Connection, StoreError> {
    let access = if file.read_only {
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let conn = rusqlite::Connection::open_with_flags(
        &file.path,
        access | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Every statement a batch sends, with room to spare: a statement
    // prepared again costs more than the small ones run.
    conn.set_prepared_statement_cache_capacity(128);
    for pragma in connect::sqlite_pragmas() {
        // Some PRAGMAs answer with a row (busy_timeout): read and drop it.
        let mut statement = conn.prepare(&pragma)?;
        let mut rows = statement.query([])?;
        while rows.next()?.is_some() {}
    }
    Ok(conn)
}

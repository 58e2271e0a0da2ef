//! The shard database: one code path over SQLite and PostgreSQL. This module
//! owns the connection pools, the migrations and the batch: `apply_batch`
//! applies a list of operations in ONE local transaction and returns their
//! replies only after the local commit, so a reply never runs ahead of
//! durability. A PostgreSQL batch runs on a sqlx connection; a SQLite batch
//! on its writer lane's thread (`lane.rs`), the same statements over a
//! connection of the lane's own (`conn.rs`). Reads for the admin calls and
//! the in-doubt sweep use sqlx's pool directly.
//!
//! Durability order of a batch:
//! 1. BEGIN (IMMEDIATE on SQLite: take the write lock up front, just
//!    before the batch's first read);
//! 2. apply each operation in order: check every leg, then write (seats,
//!    then txns) — into the batch's view (`batch.rs`), which reads ahead
//!    and sends the writes as multi-row statements, all before the commit;
//! 3. local COMMIT (SQLite WAL with synchronous=FULL, or PostgreSQL with
//!    synchronous_commit=on: on disk when it returns);
//! 4. only then the caller (writer.rs) answers each operation.
//!
//! Any database error aborts the whole batch; nothing of it is applied.
//!
//! A batch also reports how it moved the count of prepared txids (the
//! `participant_prepared` gauge); the writer applies that change only after
//! the local commit, so the gauge never counts a rolled-back hold.

mod apply;
mod batch;
mod conn;
mod connect;
mod flights;
mod lane;
mod readahead;
mod script;
mod seats;
mod txns;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::{AnyPool, Connection};

use conn::Conn;

use crate::config::{Backend, Config};
use crate::error::{Refused, StoreError};
use crate::model::{TxnId, TxnState};
use crate::op::{Inventory, Op, Reply};

pub use apply::Ctx;

/// What one operation of a batch ended with.
pub type OpResult = Result<Reply, Refused>;

/// Most rows ListTxns returns.
pub const LIST_TXNS_MAX: u32 = 1000;
/// Rows ListTxns returns when the request says 0.
pub const LIST_TXNS_DEFAULT: u32 = 100;

/// SQLite: WAL frames (4 KiB pages, about 16 MiB here) past which the
/// writer lane finishes a checkpoint itself between two batches, so that
/// the WAL starts over (see `Store::checkpoint`).
const WAL_RESTART_FRAMES: i64 = 4096;

/// What a committed batch did: one result per operation, in order, and
/// the change in prepared txids (+1 per fresh YES vote, -1 per prepared txid
/// committed or aborted).
#[derive(Debug)]
pub struct Applied {
    pub results: Vec<OpResult>,
    pub prepared_change: i64,
}

/// One row of ListTxns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRow {
    pub txid: String,
    pub state: TxnState,
    pub updated_at_ms: i64,
}

/// The shard database of one participant.
#[derive(Debug, Clone)]
pub struct Store {
    /// PostgreSQL: the writer lanes' connections (`apply_batch`). SQLite:
    /// the migrations' only.
    write: AnyPool,
    /// SQLite: the writer lanes (`lane.rs`).
    lanes: Option<Arc<lane::Lanes>>,
    /// The reads' connections.
    pool: AnyPool,
    backend: Backend,
    /// The shard's name, reported in messages.
    shard: String,
    /// SQLite: the WAL's restart, asked of the writer lane (see `checkpoint`).
    wal: Arc<WalRestart>,
}

/// SQLite: what the checkpointer asks of the writer lane.
#[derive(Debug)]
struct WalRestart {
    /// The last checkpoint saw at least `frames` frames in the WAL.
    wanted: AtomicBool,
    frames: AtomicI64,
}

impl Store {
    /// Connects (creating a SQLite file if missing), sets the durability
    /// settings of every connection and runs the migrations.
    pub async fn open(config: &Config) -> Result<Store, StoreError> {
        let pools = connect::pools(config).await?;
        connect::migrate(&pools.write).await?;
        let lanes = match config.backend {
            Backend::Sqlite => {
                let url = connect::sqlite_url(&config.database_url)?;
                let file = connect::sqlite_file(&url)?;
                Some(Arc::new(lane::Lanes::new(file, config.name.clone())))
            }
            Backend::Postgres => None,
        };
        Ok(Store {
            write: pools.write,
            lanes,
            pool: pools.read,
            backend: config.backend,
            shard: config.name.clone(),
            wal: Arc::new(WalRestart {
                wanted: AtomicBool::new(false),
                frames: AtomicI64::new(WAL_RESTART_FRAMES),
            }),
        })
    }

    /// Tests: the WAL size past which the writer lane restarts the WAL.
    #[cfg(test)]
    fn set_wal_restart_frames(&self, frames: i64) {
        self.wal.frames.store(frames, Ordering::Relaxed);
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The readers' pool, for tests that read the tables directly.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies `ops` in order inside one local transaction; see the module
    /// docs for the durability order. A refused op writes nothing and does
    /// not disturb the others; a database error fails the whole batch.
    pub async fn apply_batch(&self, ops: &[Op]) -> Result<Applied, StoreError> {
        match &self.lanes {
            Some(lanes) => {
                let checkpoint = self.wal.wanted.swap(false, Ordering::Relaxed);
                lanes.apply(ops, checkpoint).await
            }
            None => {
                let mut conn = self.write.acquire().await?;
                let mut tx = conn.begin().await?;
                let applied =
                    apply_ops(&mut Conn::Sqlx(&mut tx), self.backend, &self.shard, ops).await?;
                tx.commit().await?;
                Ok(applied)
            }
        }
    }

    /// A flight's inventory, or None if the flight does not exist.
    pub async fn get_flight(
        &self,
        flight_id: &str,
        include_seats: bool,
    ) -> Result<Option<Inventory>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut conn = Conn::Sqlx(&mut conn);
        let Some(map) = flights::find(&mut conn, flight_id).await? else {
            return Ok(None);
        };
        Ok(Some(
            flights::inventory(&mut conn, &map, include_seats).await?,
        ))
    }

    /// Transactions, newest first; or only prepared ones, oldest first.
    pub async fn list_txns(
        &self,
        prepared_only: bool,
        limit: u32,
    ) -> Result<Vec<TxnRow>, StoreError> {
        let limit = match limit {
            0 => LIST_TXNS_DEFAULT,
            n => n.min(LIST_TXNS_MAX),
        };
        let mut conn = self.pool.acquire().await?;
        txns::list(&mut conn, prepared_only, limit).await
    }

    /// The ListTxns row of one txid, if the shard has seen it.
    pub async fn txn_row(&self, txid: &TxnId) -> Result<Option<TxnRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        txns::find_row(&mut conn, txid).await
    }

    /// How many txids are prepared now (the in-doubt holds).
    pub async fn count_prepared(&self) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        txns::count_prepared(&mut conn).await
    }

    /// Prepared txids last changed before `before_ms`, oldest first.
    pub async fn in_doubt(&self, before_ms: i64, limit: u32) -> Result<Vec<TxnId>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        txns::in_doubt(&mut conn, before_ms, limit).await
    }

    /// SQLite: copies the committed WAL frames into the database file
    /// (`PRAGMA wal_checkpoint(PASSIVE)`: it never waits for, or blocks, the
    /// writer lane). The writer connections do not checkpoint by themselves
    /// (`connect.rs`): they would pay for the copying inside a batch.
    /// Returns the frames in the WAL and how many of them are now in the
    /// database file. PostgreSQL: nothing to do, `(0, 0)`.
    ///
    /// The WAL starts over from its beginning only when a write begins with
    /// every frame copied. Under sustained load the lane commits batch after
    /// batch while this runs, so that never happened: the WAL grew by about
    /// 40 MB/s at 64 clients (570 MB within a 20 s bench cell), and every
    /// page read searched a growing WAL index. So when this finds the WAL
    /// longer than `WAL_RESTART_FRAMES`, it asks the writer lane to copy
    /// the frames added since, itself, before its next batch (`apply_batch`):
    /// a short copy, since this one did the rest, after which that batch
    /// starts the WAL over.
    pub async fn checkpoint(&self) -> Result<(i64, i64), StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok((0, 0));
        }
        let mut conn = self.pool.acquire().await?;
        let (frames, copied) = wal_checkpoint(&mut Conn::Sqlx(&mut conn)).await?;
        if frames >= self.wal.frames.load(Ordering::Relaxed) {
            self.wal.wanted.store(true, Ordering::Relaxed);
        }
        Ok((frames, copied))
    }

    /// Waits for every connection to close.
    pub async fn close(&self) {
        if let Some(lanes) = &self.lanes {
            lanes.close().await;
        }
        self.write.close().await;
        self.pool.close().await;
    }
}

/// Every op of the batch, up to (not including) the local commit; on
/// SQLite, BEGIN IMMEDIATE goes with the batch's first statement
/// (`Batch::open`), on PostgreSQL the caller has begun.
async fn apply_ops(
    conn: &mut Conn<'_>,
    backend: Backend,
    shard: &str,
    ops: &[Op],
) -> Result<Applied, StoreError> {
    let ctx = Ctx {
        shard,
        now_ms: now_ms(),
    };
    let mut batch = batch::Batch::open(conn.reborrow(), backend, ctx.now_ms, ops).await?;
    let mut results = Vec::with_capacity(ops.len());
    let mut prepared_change = 0;
    for op in ops {
        let (result, change) = apply::apply_op(&mut batch, &ctx, op).await?;
        results.push(result);
        prepared_change += change;
    }
    batch.finish().await?;
    crate::failpoints::batch_panic_point(ops);
    if ops.iter().any(|op| matches!(op, Op::Compensate(_))) {
        crate::failpoints::crash_point("participant::before_compensation_commit");
    }
    Ok(Applied {
        results,
        prepared_change,
    })
}

/// SQLite's passive checkpoint on `conn` (a read connection's, or the
/// writer lane's own): the frames in the WAL and how many of them are in the
/// database file now.
async fn wal_checkpoint(conn: &mut Conn<'_>) -> Result<(i64, i64), StoreError> {
    let rows = conn
        .fetch(
            "PRAGMA wal_checkpoint(PASSIVE)",
            &[],
            &[conn::Col::Int, conn::Col::Int, conn::Col::Int],
        )
        .await?;
    // Columns: busy (1 if another checkpoint was running), WAL frames,
    // frames checkpointed.
    let [row] = <[Vec<conn::Val>; 1]>::try_from(rows).map_err(|rows| {
        StoreError::Database(sqlx::Error::Protocol(format!(
            "wal_checkpoint returned {} rows, not 1",
            rows.len()
        )))
    })?;
    Ok((row[1].int()?, row[2].int()?))
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// SQL for "`column` is one of the strings of the JSON array bound as
/// `$param`": the batch statements take a list as one JSON text, so each
/// has one SQL text (one cached prepared statement) whatever the batch's
/// size. On PostgreSQL the list is turned into an array first (`= ANY`
/// over an InitPlan): as `IN (SELECT ...)` the planner, without statistics
/// on a fresh table, chose a sequential scan of `seats` for every batch.
fn json_in(backend: Backend, column: &str, param: u32) -> String {
    match backend {
        Backend::Sqlite => format!("{column} IN (SELECT value FROM json_each(${param}))"),
        Backend::Postgres => {
            format!("{column} = ANY(ARRAY(SELECT json_array_elements_text(${param}::json)))")
        }
    }
}

/// `column` in a condition that must not pick an index: statements that
/// find their rows by key and only check the state. The partial indexes
/// (`seats_free`, `txns_prepared`) hold the rows of one state, and a
/// condition naming that state lets the planner scan the whole index
/// instead of looking up keys. PostgreSQL did so for the seat claims
/// (stale statistics priced `seats_free` at 241 rows, not 180,000): a
/// PREPARE batch took 30 ms. Unary `+` (SQLite) and `|| ''` (PostgreSQL)
/// hide the column from the planner; its value is unchanged.
fn key_only(backend: Backend, column: &str) -> String {
    match backend {
        Backend::Sqlite => format!("+{column}"),
        Backend::Postgres => format!("({column} || '')"),
    }
}

/// The JSON text of a list, to bind for `json_in` or a multi-row write.
fn json_text<T: Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("lists of strings, numbers and options always serialise")
}

/// Fails unless a statement changed exactly `expected` rows.
fn expect_count(
    actual: u64,
    expected: u64,
    statement: &'static str,
    key: &str,
) -> Result<(), StoreError> {
    if actual != expected {
        return Err(StoreError::RowCount {
            statement,
            key: key.to_string(),
            expected,
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;

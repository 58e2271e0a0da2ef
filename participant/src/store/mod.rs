//! The shard database: one code path over SQLite and PostgreSQL through the
//! sqlx `Any` driver. This module owns the connection pool, the migrations
//! and the batch: `apply_batch` applies a list of operations in ONE local
//! transaction and returns their replies only after the local commit, so a
//! reply never runs ahead of durability. Reads for the admin calls and the
//! in-doubt sweep use the pool directly.
//!
//! Durability order of a batch:
//! 1. BEGIN (IMMEDIATE on SQLite: take the write lock up front);
//! 2. apply each operation: check every leg, then write (seats, then txns);
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
mod connect;
mod flights;
mod seats;
mod txns;

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::AnyQueryResult;
use sqlx::{AnyPool, Connection};

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
    pool: AnyPool,
    backend: Backend,
    /// The shard's name, reported in messages.
    shard: String,
}

impl Store {
    /// Connects (creating a SQLite file if missing), sets the durability
    /// settings of every connection and runs the migrations.
    pub async fn open(config: &Config) -> Result<Store, StoreError> {
        let pool = connect::pool(config).await?;
        connect::migrate(&pool).await?;
        Ok(Store {
            pool,
            backend: config.backend,
            shard: config.name.clone(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for tests that read the tables directly.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies `ops` in order inside one local transaction; see the module
    /// docs for the durability order. A refused op writes nothing and does
    /// not disturb the others; a database error fails the whole batch.
    pub async fn apply_batch(&self, ops: &[Op]) -> Result<Applied, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = match self.backend {
            Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => conn.begin().await?,
        };
        let ctx = Ctx {
            backend: self.backend,
            shard: &self.shard,
            now_ms: now_ms(),
        };
        let mut results = Vec::with_capacity(ops.len());
        let mut prepared_change = 0;
        for op in ops {
            let (result, change) = apply::apply_op(&mut tx, &ctx, op).await?;
            results.push(result);
            prepared_change += change;
        }
        if ops.iter().any(|op| matches!(op, Op::Compensate(_))) {
            crate::failpoints::crash_point("participant::before_compensation_commit");
        }
        tx.commit().await?;
        Ok(Applied {
            results,
            prepared_change,
        })
    }

    /// A flight's inventory, or None if the flight does not exist.
    pub async fn get_flight(
        &self,
        flight_id: &str,
        include_seats: bool,
    ) -> Result<Option<Inventory>, StoreError> {
        let mut conn = self.pool.acquire().await?;
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

    /// Waits for every connection to close.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Fails unless a statement changed exactly `expected` rows.
fn expect_rows(
    result: AnyQueryResult,
    expected: u64,
    statement: &'static str,
    key: &str,
) -> Result<(), StoreError> {
    let actual = result.rows_affected();
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

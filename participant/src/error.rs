//! The participant library's errors, one enum per boundary:
//! - `StoreError`: the database failed or broke an invariant; the whole
//!   batch (local transaction) fails with it.
//! - `Refused`: one operation is refused before it writes anything.
//! - `OpError`: everything a submitted operation can end with besides a
//!   reply (refused, overloaded, batch failed); the service maps it to a
//!   gRPC status in one place.
//! - `RunError`: the process cannot start or must stop.

use crate::config::ConfigError;
use crate::protocol::Violation;

/// A failure of the local transaction: nothing of the batch was applied.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The inner errors are part of the message, not a `source`: the message
    // goes into gRPC statuses whole, and a chain would repeat it.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// SQLite, on a writer lane (`store/lane.rs`).
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    #[error("running migrations: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("{url}: {problem}")]
    Url { url: String, problem: String },
    /// A row read back breaks its invariants (`check a record after reading`).
    #[error("{table} row {key} is corrupt: {problem}")]
    CorruptRow {
        table: &'static str,
        key: String,
        problem: String,
    },
    /// An update changed an unexpected number of rows: a bug or a concurrent
    /// writer. Never continue past it.
    #[error("{statement} for {key} changed {actual} rows, expected {expected}")]
    RowCount {
        statement: &'static str,
        key: String,
        expected: u64,
        actual: u64,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        StoreError::Database(error)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(error)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> StoreError {
        StoreError::Migrate(error)
    }
}

impl StoreError {
    /// True for errors a retry of the whole batch may cure: deadlocks and
    /// serialization failures (PostgreSQL), a busy database (SQLite).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => matches!(
                db.code().as_deref(),
                Some("40P01" | "40001" | "55P03" | "5" | "6" | "261" | "517")
            ),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => matches!(
                failure.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }

    /// True when the error means this process has a bug or the data is
    /// damaged, rather than the database being unavailable.
    pub fn is_bug(&self) -> bool {
        matches!(
            self,
            StoreError::CorruptRow { .. } | StoreError::RowCount { .. }
        )
    }
}

/// One operation refused on its own; nothing was written for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("flight {flight_id} is in partition {partition}, which shard {shard} does not own")]
    NotOwned {
        flight_id: String,
        partition: u32,
        shard: String,
    },
    #[error("{0}")]
    Protocol(Violation),
    #[error(
        "flight {flight_id} already exists with {existing}; it cannot be re-created with {asked}"
    )]
    FlightExists {
        flight_id: String,
        existing: String,
        asked: String,
    },
}

/// How a submitted operation ended, other than with a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("the shard's write queue is full ({queued_max} operations waiting); retry after a short pause")]
    Overloaded { queued_max: usize },
    #[error("the participant is shutting down; retry on its restart")]
    Stopped,
    /// The local transaction failed; nothing of it was applied.
    #[error("the local transaction failed, nothing was applied: {message}")]
    BatchFailed { message: String, bug: bool },
}

impl From<&StoreError> for OpError {
    fn from(error: &StoreError) -> OpError {
        OpError::BatchFailed {
            message: error.to_string(),
            bug: error.is_bug(),
        }
    }
}

/// Why the participant could not start, or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("open the shard database")]
    Store(#[from] StoreError),
    #[error("build gRPC reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serve gRPC")]
    Transport(#[from] tonic::transport::Error),
    #[error("read the listener's local address")]
    LocalAddr(#[source] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::ExporterError),
    #[error("critical task {task} stopped: {reason}")]
    TaskDied { task: String, reason: String },
}

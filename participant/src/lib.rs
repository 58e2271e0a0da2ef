//! One shard's participant: a gRPC service (`booking.v1.Participant`) in
//! front of the shard's database (SQLite or PostgreSQL, one code path).
//!
//! It owns the shard's seats and the record of every txid it has seen, makes
//! a vote durable before answering YES, and applies the coordinator's
//! decisions idempotently. It never decides: a YES vote is undone only by
//! the coordinator's ABORT (or a saga's COMPENSATE).
//!
//! Map of the crate, by what each module owns:
//! - `config`: settings, defaults, their checks.
//! - `request`: prost requests → checked domain requests (INVALID_ARGUMENT).
//! - `shard`: which flights this shard owns.
//! - `protocol`: the participant's protocol table, free of I/O.
//! - `store`: the database: schema, batches (local transactions), reads.
//! - `writer`: batching writer lanes (group commit) in front of the store.
//! - `service`: the gRPC handlers; `wire`: domain ↔ prost and statuses.
//! - `resolver`: asks the coordinator about txids in doubt.
//! - `metrics`: the Prometheus series and the `/metrics` exporter.
//! - `server`: `run`, wiring it all to a listener and a shutdown signal.

pub mod config;
pub mod error;
pub mod failpoints;
pub mod metrics;
pub mod model;
pub mod op;
pub mod protocol;
pub mod request;
pub mod resolver;
pub mod server;
pub mod service;
pub mod shard;
pub mod store;
pub mod wire;
pub mod writer;

pub use config::{Backend, Config, ConfigError, ServeConfig, Settings};
pub use error::{OpError, Refused, RunError, StoreError};
pub use server::{run, run_with_ready};

#[cfg(test)]
mod conformance_test;

//! The two-phase-commit coordinator for cross-shard seat bookings.
//!
//! It takes an itinerary, splits it by shard (`config::ShardMap`), runs
//! one-phase or two-phase commit (or a saga, `saga`) against the
//! participants (`core`), forces
//! its decisions to the decision log (`log`), answers participants'
//! `GetDecision`, and after a restart finishes every transaction the log
//! leaves open (`recovery`). It holds no inventory.

mod batcher;
pub mod config;
pub mod core;
pub mod failpoints;
pub mod inspect;
pub mod log;
pub mod metrics;
pub mod protocol;
pub mod records;
pub mod recovery;
pub mod registry;
pub mod retention;
mod saga;
pub mod server;
pub mod service;
pub mod shards;

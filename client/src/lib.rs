//! The client side of the seat-booking system, in one library:
//!
//! - [`client`]: [`BookingClient`], the gRPC client of the coordinator that
//!   itinerary services and operators use, plus the participant admin calls
//!   (create a flight, read its inventory) and [`LegSpec`] for `"BA117:2"`.
//! - [`cluster`]: [`Cluster`], a launcher of real coordinator and participant
//!   processes on this machine, for the demo and the integration tests.
//! - [`pg`]: [`PgCluster`], a throwaway PostgreSQL server for shard databases.
//! - [`checker`]: the invariant checker of DESIGN.md ("Invariants every test
//!   suite checks"). It reads the shard databases directly, never the
//!   services' answers, and compares them with an [`Oracle`] of the replies
//!   clients were given.
//! - [`load`]: a load generator of concurrent customers that records every
//!   outcome in an [`Oracle`].
//! - [`demo`]: `bookctl demo`, which strings all of the above together.
//! - [`bench`]: `bookctl bench`, throughput and latency of 2PC against its
//!   baselines on real processes.
//! - [`render`]: human and JSON renderings of replies for `bookctl`.
//! - [`throttle`]: adaptive client-side throttling, which [`BookingClient`]
//!   uses so that an overloaded coordinator is not flooded with bookings it
//!   would only refuse.
//!
//! The library writes nothing on the wire that the `.proto` contract does not
//! define; it writes to disk only under the data directories it is given
//! (cluster configuration, process logs, PostgreSQL data).

pub mod bench;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod demo;
pub mod load;
pub mod pg;
pub mod render;
pub mod throttle;

/// An error and its causes as one line, `a: b: c`, skipping a cause whose
/// text repeats the previous one (transport errors often wrap themselves).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cause = next.source();
    }
    parts.join(": ")
}

pub use checker::{check, flight_summary, wait_quiescent, CheckMode, Oracle, Report};
pub use client::{BookingClient, ClientError, LegSpec};
pub use cluster::{find_binaries, Backend, Cluster, ClusterError, ClusterSpec, ProcessId};
pub use load::{LoadReport, LoadSpec};
pub use pg::{PgCluster, PgError};

//! A system under test: whatever one variant books against (a cluster, one
//! database, three databases), with its flights and its accounting. The
//! runner asks it for a cell's flights, runs the clients against it, and
//! reads its counters before and after.
//!
//! Seats: the uniform set is replaced by a fresh one (new flight ids) once
//! a quarter of its seats is taken, so no cell books nearly-full flights;
//! every hot cell gets a fresh hot set.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use booking_proto::routing::partition_of;
use booking_proto::v1::Mode;

use super::args::{Variant, Workload};
use super::cpu::CpuScope;
use super::driver::{closed_loop, Booker, Load, Tally};
use super::grpc::ClusterSystem;
use super::scrape::ClusterSamples;
use super::sql::{PgNative, SingleDb};
use super::workload::{CellFlights, FlightSet, HOT_FLIGHTS, LEGS, UNIFORM_FLIGHTS};
use super::BenchError;
use crate::cluster::partition_ranges;

/// Partitions and shards of every system, as a default `ClusterSpec` has them.
pub const PARTITIONS: u32 = 64;
pub const SHARDS: usize = 3;
/// Share of the uniform set's seats taken before a fresh set replaces it.
const FRESH_AFTER_TAKEN: f64 = 0.25;

/// The shard owning `flight_id` under the clusters' routing (64
/// partitions in 3 contiguous ranges), for the systems without a cluster.
pub fn shard_of(flight_id: &str) -> usize {
    let partition = partition_of(flight_id, PARTITIONS);
    partition_ranges(PARTITIONS, SHARDS)
        .iter()
        .position(|(low, high)| (*low..=*high).contains(&partition))
        .expect("the ranges cover every partition")
}

/// What a system is.
pub enum Engine {
    Cluster(Box<ClusterSystem>),
    Single(Arc<SingleDb>),
    Native(Arc<PgNative>),
}

/// The flights of a system and how many of the uniform set's seats are gone.
struct Stock {
    generation: u32,
    uniform: Arc<FlightSet>,
    /// Seats committed from `uniform` (an upper bound: hot cells book some
    /// of their uniform share here too).
    seats_taken: u64,
    hot_sets: u32,
}

pub struct System {
    pub engine: Engine,
    stock: Stock,
    /// The PostgreSQL postmaster whose tree counts as this system's CPU.
    pg_root: Option<u32>,
}

impl System {
    /// Wraps `engine` and creates its first uniform set.
    pub async fn new(engine: Engine, pg_root: Option<u32>) -> Result<System, BenchError> {
        if let Engine::Cluster(cluster) = &engine {
            assert_eq!(
                cluster.shard_of("BA117"),
                shard_of("BA117"),
                "bench clusters route like a default ClusterSpec"
            );
        }
        let uniform = uniform_set(1);
        let system = System {
            engine,
            stock: Stock {
                generation: 1,
                uniform: Arc::new(uniform),
                seats_taken: 0,
                hot_sets: 0,
            },
            pg_root,
        };
        system.create(&system.stock.uniform).await?;
        Ok(system)
    }

    async fn create(&self, set: &FlightSet) -> Result<(), BenchError> {
        let sql_error = |source| BenchError::Sql {
            action: format!("create {} flights", set.len()),
            source,
        };
        match &self.engine {
            Engine::Cluster(cluster) => cluster.create_flights(set).await,
            Engine::Single(single) => single.create_flights(set).await.map_err(sql_error),
            Engine::Native(native) => native.create_flights(set).await.map_err(sql_error),
        }
    }

    async fn fresh_uniform(&mut self) -> Result<(), BenchError> {
        self.stock.generation += 1;
        let set = uniform_set(self.stock.generation);
        self.create(&set).await?;
        self.stock.uniform = Arc::new(set);
        self.stock.seats_taken = 0;
        Ok(())
    }

    /// The flights of the next cell: the uniform set (fresh when a quarter
    /// is gone) and, for the hot workload, a fresh hot set.
    pub async fn flights_for(&mut self, workload: Workload) -> Result<CellFlights, BenchError> {
        let uniform_seats = self.stock.uniform.seats() as f64;
        if self.stock.seats_taken as f64 > FRESH_AFTER_TAKEN * uniform_seats {
            self.fresh_uniform().await?;
        }
        let hot = match workload {
            Workload::Uniform => None,
            Workload::Hot => {
                self.stock.hot_sets += 1;
                let prefix = format!("H{}-", self.stock.hot_sets);
                let set = FlightSet::spread(&prefix, HOT_FLIGHTS, SHARDS, shard_of);
                self.create(&set).await?;
                Some(Arc::new(set))
            }
        };
        Ok(CellFlights {
            workload,
            uniform: Arc::clone(&self.stock.uniform),
            hot,
        })
    }

    /// The current uniform set, creating nothing: for warm-ups.
    pub fn warmup_flights(&self) -> CellFlights {
        CellFlights {
            workload: Workload::Uniform,
            uniform: Arc::clone(&self.stock.uniform),
            hot: None,
        }
    }

    /// Stops the cluster's processes, or closes the pools.
    pub async fn stop(self) {
        match self.engine {
            Engine::Cluster(mut cluster) => {
                // Stopping is best effort: dropping the cluster kills what is left.
                let _ = cluster.cluster.stop_all().await;
            }
            Engine::Single(single) => single.pool.close().await,
            Engine::Native(native) => {
                for pool in &native.pools {
                    pool.close().await;
                }
            }
        }
    }

    /// Counts seats a cell committed against the uniform set.
    pub fn note_committed(&mut self, bookings: u64) {
        self.stock.seats_taken += bookings * LEGS as u64;
    }

    /// What the CPU of this system is: its processes and the bench.
    pub fn cpu_scope(&self) -> CpuScope {
        CpuScope {
            pids: match &self.engine {
                Engine::Cluster(cluster) => cluster.pids(),
                _ => Vec::new(),
            },
            process_trees: self.pg_root.into_iter().collect(),
        }
    }

    /// The cluster's metrics, when the system is a cluster.
    pub async fn samples(&self) -> Result<Option<ClusterSamples>, BenchError> {
        match &self.engine {
            Engine::Cluster(cluster) => cluster.samples().await.map(Some),
            _ => Ok(None),
        }
    }

    /// Durable local commits the bench itself made (systems without participants).
    pub fn own_local_commits(&self) -> Option<u64> {
        match &self.engine {
            Engine::Cluster(_) => None,
            Engine::Single(single) => Some(single.local_commits.load(Ordering::Relaxed)),
            Engine::Native(native) => Some(native.local_commits.load(Ordering::Relaxed)),
        }
    }

    /// Runs `clients` closed-loop clients of `variant` for `duration`.
    pub async fn run(
        &self,
        variant: Variant,
        flights: CellFlights,
        clients: usize,
        duration: Duration,
        key_prefix: String,
        seed: u64,
    ) -> (Tally, Duration) {
        match &self.engine {
            Engine::Cluster(cluster) => {
                let mode = if variant == Variant::Saga {
                    Mode::Saga
                } else {
                    Mode::TwoPhase
                };
                let booker = Arc::new(cluster.booker(mode, clients));
                drive(booker, flights, clients, duration, key_prefix, seed).await
            }
            Engine::Single(single) => {
                drive(
                    Arc::clone(single),
                    flights,
                    clients,
                    duration,
                    key_prefix,
                    seed,
                )
                .await
            }
            Engine::Native(native) => {
                drive(
                    Arc::clone(native),
                    flights,
                    clients,
                    duration,
                    key_prefix,
                    seed,
                )
                .await
            }
        }
    }
}

/// Uniform set number `generation`: flights `U{generation}-0000`...
fn uniform_set(generation: u32) -> FlightSet {
    FlightSet::numbered(
        &format!("U{generation}-"),
        UNIFORM_FLIGHTS,
        SHARDS,
        shard_of,
    )
}

async fn drive<B: Booker>(
    booker: Arc<B>,
    flights: CellFlights,
    clients: usize,
    duration: Duration,
    key_prefix: String,
    seed: u64,
) -> (Tally, Duration) {
    let load = Load {
        booker,
        flights,
        key_prefix,
        seed,
    };
    closed_loop(&load, clients, duration).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_matches_a_default_cluster() {
        assert_eq!(
            partition_ranges(PARTITIONS, SHARDS),
            [(0, 21), (22, 42), (43, 63)]
        );
        for id in ["BA117", "U1-0001", "H3-7"] {
            let expected = match partition_of(id, 64) {
                0..=21 => 0,
                22..=42 => 1,
                _ => 2,
            };
            assert_eq!(shard_of(id), expected);
        }
    }
}

//! Shared pieces of the integration suite: start a cluster of real
//! processes on SQLite or PostgreSQL shards, and the contested-race
//! workload whose outcome can be predicted exactly.
//!
//! The invariant checker itself is `booking_client::checker` (reusable by
//! the demo and by operators); this crate only drives scenarios.

use std::sync::Arc;
use std::time::Duration;

use booking_client::checker::{self, CheckMode, FlightSummary, Oracle, OracleOutcome};
use booking_client::pg::PgCluster;
use booking_client::{find_binaries, Backend, BookingClient, Cluster, ClusterSpec};
use booking_proto::v1::{AbortReason, BookRequest, LegRequest, Outcome};
use tokio::task::JoinSet;

/// Which database the shards run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A running cluster, with the PostgreSQL server behind it when there is one
/// (kept alive as long as the cluster).
pub struct TestCluster {
    pub cluster: Cluster,
    pub pg: Option<PgCluster>,
    pub dir: tempfile::TempDir,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Tracing for the harness's own binaries (the soak): to stderr, `warn`
/// unless `RUST_LOG` says otherwise.
pub fn init_tracing_from_env() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

/// Starts one coordinator and three participants as separate processes.
/// PostgreSQL shards need the server binaries: without them this fails with
/// a message naming the package to install, never skips.
pub async fn start(db: Db) -> TestCluster {
    start_with(db, |_| {}).await
}

/// [`start`], with the spec adjusted by `configure` first (e.g. coordinator
/// settings such as small log segments).
pub async fn start_with(db: Db, configure: impl FnOnce(&mut ClusterSpec)) -> TestCluster {
    let bin_dir = find_binaries()
        .await
        .expect("find or build the coordinator and participant binaries");
    let dir = tempfile::tempdir().expect("create a temp dir");
    let mut spec = ClusterSpec::new(bin_dir, dir.path());
    let pg = match db {
        Db::Sqlite => None,
        Db::Postgres => {
            let pg = PgCluster::start(3)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL shards: {e}"));
            spec.backend = Backend::Postgres(pg.database_urls());
            Some(pg)
        }
    };
    spec.in_doubt_after_ms = 500;
    configure(&mut spec);
    let cluster = Cluster::start(spec).await.expect("start the cluster");
    TestCluster { cluster, pg, dir }
}

/// Flights of the contested race: a few small flights that everyone wants
/// (demand far above capacity) and large flights with room for everyone.
pub struct RaceFlights {
    pub contested: Vec<String>,
    pub roomy: Vec<String>,
}

pub const CONTESTED_ROWS: u32 = 4;
pub const LETTERS: &str = "ABCDEF";
pub const ROOMY_ROWS: u32 = 60;

pub async fn create_race_flights(cluster: &Cluster, contested: usize, roomy: usize) -> RaceFlights {
    let mut flights = RaceFlights {
        contested: Vec::new(),
        roomy: Vec::new(),
    };
    for i in 0..contested {
        let id = format!("HOT{i}");
        cluster
            .create_flight(&id, CONTESTED_ROWS, LETTERS)
            .await
            .expect("create contested flight");
        flights.contested.push(id);
    }
    for i in 0..roomy {
        let id = format!("ROOMY{i}");
        cluster
            .create_flight(&id, ROOMY_ROWS, LETTERS)
            .await
            .expect("create roomy flight");
        flights.roomy.push(id);
    }
    flights
}

/// One itinerary of the race: exactly one contested leg plus one or two
/// roomy legs on other shards, one passenger. Every abort is then caused by
/// the contested flight being full, so each contested flight must end sold
/// out exactly (booked == capacity, nothing held).
pub fn race_itinerary(
    cluster: &Cluster,
    flights: &RaceFlights,
    n: usize,
    key_prefix: &str,
) -> BookRequest {
    let hot = &flights.contested[n % flights.contested.len()];
    let mut used_shards = vec![cluster.shard_of(hot)];
    let mut legs = vec![leg(hot)];
    let wanted_roomy = 1 + n % 2;
    for offset in 0..flights.roomy.len() {
        let roomy = &flights.roomy[(n + offset) % flights.roomy.len()];
        let shard = cluster.shard_of(roomy);
        if legs.len() <= wanted_roomy && !used_shards.contains(&shard) {
            used_shards.push(shard);
            legs.push(leg(roomy));
        }
    }
    assert!(
        legs.len() >= 2,
        "the roomy flights must cover at least two shards"
    );
    BookRequest {
        idempotency_key: format!("{key_prefix}-{n}"),
        timeout_ms: 20_000,
        legs,
        ..Default::default()
    }
}

fn leg(flight: &str) -> LegRequest {
    LegRequest {
        flight_id: flight.into(),
        seat_count: 1,
        passengers: vec!["Pax".into()],
        ..Default::default()
    }
}

/// Sends every request at once (one task each) and records every reply.
pub async fn book_all_at_once(
    client: &BookingClient,
    requests: Vec<BookRequest>,
    oracle: &Arc<Oracle>,
) {
    let mut tasks = JoinSet::new();
    for request in requests {
        let client = client.clone();
        let oracle = Arc::clone(oracle);
        tasks.spawn(async move {
            let result = client.book(request.clone()).await;
            oracle.record(&request, &result);
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a booking task panicked");
    }
}

/// Waits for quiescence and runs every invariant check against the shard
/// databases, panicking with the report when anything is violated.
pub async fn assert_invariants(cluster: &Cluster, oracle: &Oracle) {
    let urls = cluster.shard_database_urls();
    checker::wait_quiescent(&urls, Duration::from_secs(30))
        .await
        .expect("quiescence: no seat held, no txn prepared");
    let report = checker::check(&urls, oracle, CheckMode::Quiescent)
        .await
        .expect("read the shard databases");
    assert!(report.is_ok(), "invariants violated:\n{report}");
}

pub async fn flight_summaries(cluster: &Cluster) -> Vec<FlightSummary> {
    checker::flight_summary(&cluster.shard_database_urls())
        .await
        .expect("read flight summaries")
}

/// Seats booked over every flight of every shard, read from the databases.
pub async fn seats_booked(cluster: &Cluster) -> i64 {
    flight_summaries(cluster)
        .await
        .iter()
        .map(|s| s.booked)
        .sum()
}

/// Committed, aborted-sold-out, and anything else, from the oracle.
pub fn tally(oracle: &Oracle) -> (usize, usize, Vec<String>) {
    let (mut committed, mut sold_out, mut other) = (0, 0, Vec::new());
    for entry in oracle.entries() {
        match &entry.outcome {
            OracleOutcome::Committed(reply) => {
                assert_eq!(reply.outcome, Outcome::Committed as i32);
                committed += 1;
            }
            OracleOutcome::Aborted(reply)
                if reply
                    .abort
                    .as_ref()
                    .is_some_and(|a| a.reason == AbortReason::SoldOut as i32) =>
            {
                sold_out += 1
            }
            outcome => other.push(format!("{}: {outcome:?}", entry.request.idempotency_key)),
        }
    }
    (committed, sold_out, other)
}

/// A two-leg itinerary of 2 seats per leg on flights of two different shards
/// (creating small flights named `{prefix}0..` until two shards are covered).
pub async fn two_shard_request(cluster: &Cluster, prefix: &str, key: &str) -> BookRequest {
    let mut flights: Vec<String> = Vec::new();
    for i in 0..8 {
        let id = format!("{prefix}{i}");
        cluster
            .create_flight(&id, 3, "AB")
            .await
            .expect("create flight");
        if flights
            .iter()
            .all(|f| cluster.shard_of(f) != cluster.shard_of(&id))
        {
            flights.push(id);
        }
    }
    assert!(flights.len() >= 2, "flights on at least two shards");
    BookRequest {
        idempotency_key: key.into(),
        legs: flights[..2]
            .iter()
            .map(|f| LegRequest {
                flight_id: f.clone(),
                seat_count: 2,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

pub mod harness;
pub mod proxy;
mod scrape;

pub use scrape::{metrics_scrape, metrics_text, parse_samples};

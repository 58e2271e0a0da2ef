//! DESIGN.md "Two-phase commit" and "Invariants": a race of 600 concurrent
//! itineraries of 2–3 legs across three shards, for flights with far fewer
//! seats than demanded, on SQLite shards and on PostgreSQL shards.
//! Afterwards the checker reads the shard databases directly, and every
//! contested flight must be sold out exactly. The race runs in both modes.

use std::sync::Arc;

use booking_client::checker::Oracle;
use booking_proto::v1::{BookRequest, Mode};
use booking_tests::*;

const ITINERARIES: usize = 600;
/// Every itinerary of the race is admitted at once: the race is about
/// contention for seats, not admission (the shipped `inflight_max`, 256,
/// would refuse the rest; tests/overload.rs covers that).
const INFLIGHT_MAX: usize = 1024;
const CONTESTED: usize = 5;
const ROOMY: usize = 6;

async fn contested_race_sells_every_hot_flight_out_exactly(db: Db, mode: Mode) {
    init_tracing();
    let test = start_with(db, |spec| {
        spec.coordinator_settings
            .push(("inflight_max".into(), INFLIGHT_MAX.to_string()));
    })
    .await;
    let cluster = &test.cluster;
    let flights = create_race_flights(cluster, CONTESTED, ROOMY).await;
    {
        tracing::info!("phase 1: {ITINERARIES} itineraries at once");
        let client = cluster.client().await.expect("connect to the coordinator");
        let requests = (0..ITINERARIES)
            .map(|n| BookRequest {
                mode: mode as i32,
                ..race_itinerary(cluster, &flights, n, "race")
            })
            .collect();
        let oracle = Arc::new(Oracle::new());
        book_all_at_once(&client, requests, &oracle).await;

        tracing::info!("phase 2: every reply is final, invariants hold");
        let (committed, sold_out, other) = tally(&oracle);
        assert!(
            other.is_empty(),
            "only COMMITTED or SOLD_OUT replies expected, got {other:#?}"
        );
        let capacity = (CONTESTED_ROWS as usize) * LETTERS.len();
        assert_eq!(
            committed,
            CONTESTED * capacity,
            "one itinerary per contested seat commits"
        );
        assert_eq!(committed + sold_out, ITINERARIES);
        assert_invariants(cluster, &oracle).await;

        tracing::info!("phase 3: contested flights sold out exactly, roomy ones match the replies");
        let summaries = flight_summaries(cluster).await;
        for summary in &summaries {
            assert_eq!(summary.held, 0, "{summary:?}");
            if summary.flight_id.starts_with("HOT") {
                assert!(
                    summary.sold_out(),
                    "contested flight not sold out exactly: {summary:?}"
                );
            }
        }
        let roomy_booked: i64 = summaries
            .iter()
            .filter(|s| s.flight_id.starts_with("ROOMY"))
            .map(|s| s.booked)
            .sum();
        let roomy_legs: usize = oracle
            .entries()
            .iter()
            .filter_map(|e| match &e.outcome {
                booking_client::checker::OracleOutcome::Committed(reply) => {
                    Some(reply.legs.len() - 1)
                }
                _ => None,
            })
            .sum();
        assert_eq!(
            roomy_booked as usize, roomy_legs,
            "roomy seats booked == committed roomy legs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_on_sqlite_shards() {
    contested_race_sells_every_hot_flight_out_exactly(Db::Sqlite, Mode::TwoPhase).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_on_postgres_shards() {
    contested_race_sells_every_hot_flight_out_exactly(Db::Postgres, Mode::TwoPhase).await;
}

/// The same race in saga mode: legs are booked by local commits and a
/// saga whose contested leg is sold out compensates its roomy legs, so the
/// same exact totals must hold once everything is quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_race_on_sqlite_shards() {
    contested_race_sells_every_hot_flight_out_exactly(Db::Sqlite, Mode::Saga).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_race_on_postgres_shards() {
    contested_race_sells_every_hot_flight_out_exactly(Db::Postgres, Mode::Saga).await;
}

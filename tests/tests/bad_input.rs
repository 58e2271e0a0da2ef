//! DESIGN.md "Bad input and overload": every validation rule answers with
//! the right gRPC code and a message naming what to fix, and nothing is
//! written: after all the bad requests the shard databases hold no
//! transaction and every seat is still free.

use booking_client::checker;
use booking_proto::v1::get_transaction_request::Key;
use booking_proto::v1::{
    BookRequest, CreateFlightRequest, Decision, GetDecisionRequest, GetTransactionRequest,
    LegRequest, PrepareRequest, ShardLeg,
};
use booking_tests::*;
use tonic::Code;

fn leg(flight: &str, count: u32) -> LegRequest {
    LegRequest {
        flight_id: flight.into(),
        seat_count: count,
        ..Default::default()
    }
}

fn request(legs: Vec<LegRequest>) -> BookRequest {
    BookRequest {
        idempotency_key: "bad-input".into(),
        legs,
        ..Default::default()
    }
}

/// (name, request, expected code, text the message must contain)
fn bad_bookings() -> Vec<(&'static str, BookRequest, Code, &'static str)> {
    let named = |seats: &[&str]| LegRequest {
        flight_id: "GOOD1".into(),
        seats: seats.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut wrong_passengers = leg("GOOD1", 2);
    wrong_passengers.passengers = vec!["Only One".into()];
    vec![
        (
            "empty idempotency key",
            BookRequest {
                idempotency_key: "".into(),
                ..request(vec![leg("GOOD1", 1)])
            },
            Code::InvalidArgument,
            "idempotency_key",
        ),
        (
            "oversized idempotency key",
            BookRequest {
                idempotency_key: "k".repeat(200),
                ..request(vec![leg("GOOD1", 1)])
            },
            Code::InvalidArgument,
            "idempotency_key",
        ),
        ("no legs", request(vec![]), Code::InvalidArgument, "legs"),
        (
            "too many legs",
            request((0..9).map(|i| leg(&format!("F{i}"), 1)).collect()),
            Code::InvalidArgument,
            "at most 8",
        ),
        (
            "zero seats",
            request(vec![leg("GOOD1", 0)]),
            Code::InvalidArgument,
            "legs[0]",
        ),
        (
            "absurd seat count",
            request(vec![leg("GOOD1", 4_000_000_000)]),
            Code::InvalidArgument,
            "legs[0].seat_count",
        ),
        (
            "ten seats",
            request(vec![leg("GOOD1", 10)]),
            Code::InvalidArgument,
            "at most 9",
        ),
        (
            "duplicate legs",
            request(vec![leg("GOOD1", 1), leg("GOOD2", 1), leg("GOOD1", 1)]),
            Code::InvalidArgument,
            "legs[2].flight_id",
        ),
        (
            "empty flight id",
            request(vec![leg("", 1)]),
            Code::InvalidArgument,
            "legs[0].flight_id",
        ),
        (
            "bad flight id",
            request(vec![leg("ba 117", 1)]),
            Code::InvalidArgument,
            "A-Z",
        ),
        (
            "bad seat label",
            request(vec![named(&["A12"])]),
            Code::InvalidArgument,
            "legs[0].seats[0]",
        ),
        (
            "duplicate seat",
            request(vec![named(&["1A", "1A"])]),
            Code::InvalidArgument,
            "listed twice",
        ),
        (
            "passengers mismatch",
            request(vec![wrong_passengers]),
            Code::InvalidArgument,
            "legs[0].passengers",
        ),
        (
            "deadline too long",
            BookRequest {
                timeout_ms: 600_000,
                ..request(vec![leg("GOOD1", 1)])
            },
            Code::InvalidArgument,
            "timeout_ms",
        ),
        (
            "unknown mode",
            BookRequest {
                mode: 9,
                ..request(vec![leg("GOOD1", 1)])
            },
            Code::InvalidArgument,
            "mode",
        ),
        (
            "oversized message",
            BookRequest {
                idempotency_key: "k".repeat(100_000),
                ..request(vec![leg("GOOD1", 1)])
            },
            Code::ResourceExhausted,
            "at most 65536",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_refused_clearly_and_writes_nothing() {
    init_tracing();
    let test = start(Db::Sqlite).await;
    let cluster = &test.cluster;
    for flight in ["GOOD1", "GOOD2"] {
        cluster
            .create_flight(flight, 2, "AB")
            .await
            .expect("create flight");
    }
    let mut coordinator = cluster.client().await.expect("connect").raw();

    tracing::info!("phase 1: malformed bookings");
    for (name, bad, code, text) in bad_bookings() {
        let status = coordinator.book(bad).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(text),
            "{name}: message {:?} should mention {text:?}",
            status.message()
        );
    }

    tracing::info!("phase 2: other entry points");
    let status = coordinator
        .get_transaction(GetTransactionRequest {
            key: Some(Key::Txid("nope".into())),
        })
        .await
        .expect_err("bad txid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("UUID"), "{status:?}");
    let status = coordinator
        .get_transaction(GetTransactionRequest { key: None })
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = coordinator
        .get_transaction(GetTransactionRequest {
            key: Some(Key::IdempotencyKey("never-used".into())),
        })
        .await
        .expect_err("unknown key");
    assert_eq!(status.code(), Code::NotFound);
    let unknown = uuid::Uuid::now_v7().to_string();
    let decision = coordinator
        .get_decision(GetDecisionRequest { txid: unknown })
        .await
        .expect("get decision");
    assert_eq!(
        decision.into_inner().decision(),
        Decision::Abort,
        "presumed abort for an unknown txid"
    );
    let status = coordinator
        .get_route(booking_proto::v1::GetRouteRequest {
            flight_id: "lower".into(),
        })
        .await
        .expect_err("bad flight id");
    assert_eq!(status.code(), Code::InvalidArgument);

    let mut participant = booking_proto::v1::participant_client::ParticipantClient::connect(
        cluster.participant_url(0),
    )
    .await
    .expect("connect to s0");
    let status = participant
        .prepare(PrepareRequest {
            txid: "not-a-uuid".into(),
            legs: vec![ShardLeg {
                flight_id: "GOOD1".into(),
                seat_count: 1,
                ..Default::default()
            }],
            itinerary_legs: 1,
        })
        .await
        .expect_err("bad txid");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = participant
        .create_flight(CreateFlightRequest {
            flight_id: "ZERO".into(),
            rows: 0,
            letters: "AB".into(),
        })
        .await
        .expect_err("zero rows");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    tracing::info!("phase 3: nothing was written");
    assert_nothing_booked(cluster).await;

    tracing::info!("phase 4: an unknown flight is NOT_FOUND and books nothing");
    let status = coordinator
        .book(BookRequest {
            idempotency_key: "ghost".into(),
            ..request(vec![leg("GOOD1", 1), leg("GHOST9", 1)])
        })
        .await
        .expect_err("unknown flight");
    // GOOD1 and GHOST9 may share a shard (one-phase) or not (2PC): both end NOT_FOUND.
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("GHOST9"), "{status:?}");
    checker::wait_quiescent(
        &cluster.shard_database_urls(),
        std::time::Duration::from_secs(10),
    )
    .await
    .expect("nothing left held");
    let summaries = flight_summaries(cluster).await;
    assert!(
        summaries.iter().all(|s| s.booked == 0 && s.held == 0),
        "{summaries:?}"
    );

    tracing::info!("phase 5: a key reused for a different request is refused");
    let first = coordinator
        .book(request(vec![leg("GOOD1", 1)]))
        .await
        .expect("book")
        .into_inner();
    let again = coordinator
        .book(request(vec![leg("GOOD1", 1)]))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, again, "same key, same request, same reply");
    let status = coordinator
        .book(request(vec![leg("GOOD1", 2)]))
        .await
        .expect_err("key reuse");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("different request"), "{status:?}");
}

/// No transaction recorded on any shard, and every seat free.
async fn assert_nothing_booked(cluster: &booking_client::Cluster) {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    for url in cluster.shard_database_urls() {
        let pool = sqlx::AnyPool::connect(&url)
            .await
            .expect("open shard database");
        let txns: i64 = sqlx::query("SELECT COUNT(*) AS n FROM txns")
            .fetch_one(&pool)
            .await
            .expect("count")
            .get("n");
        let taken: i64 = sqlx::query("SELECT COUNT(*) AS n FROM seats WHERE state <> 'free'")
            .fetch_one(&pool)
            .await
            .expect("count")
            .get("n");
        assert_eq!(
            (txns, taken),
            (0, 0),
            "shard {url} was written to by a bad request"
        );
        pool.close().await;
    }
}

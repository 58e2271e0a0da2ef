//! Saga mode under crashes (DESIGN.md "Saga mode"): the coordinator or a
//! participant crashes at each saga step, is restarted, and the saga ends
//! the way the log and the shards dictate: every leg booked, or every leg
//! released, with the same answer for the retried key.
//!
//! | failpoint                          | the saga                    | retried key gets          |
//! |------------------------------------|-----------------------------|---------------------------|
//! | saga_after_intent                  | intent logged, no leg sent  | ABORTED (restarted)       |
//! | saga_after_leg, after the 1st leg  | maybe the other leg too     | whatever the shards hold  |
//! | saga_after_leg, after the last leg | every leg booked            | COMMITTED (completed)     |
//! | saga_mid_compensation              | a leg sold out, compensating| ABORTED SOLD_OUT          |
//! | participant before_compensation_commit | compensation rolled back| ABORTED SOLD_OUT          |

use std::sync::Arc;
use std::time::Duration;

use booking_client::checker::Oracle;
use booking_client::ProcessId;
use booking_proto::v1::{AbortReason, BookReply, BookRequest, LegRequest, Mode, Outcome};
use booking_tests::*;

/// A two-shard saga of 2 seats per leg; with `sold_out`, the first leg's
/// flight is booked full beforehand so that leg is refused.
async fn saga_request(
    cluster: &booking_client::Cluster,
    flight_prefix: &str,
    key: &str,
    sold_out: bool,
) -> BookRequest {
    let mut request = two_shard_request(cluster, flight_prefix, key).await;
    request.mode = Mode::Saga as i32;
    request.timeout_ms = 5_000;
    if sold_out {
        let filler = BookRequest {
            idempotency_key: format!("{key}-filler"),
            legs: vec![LegRequest {
                flight_id: request.legs[0].flight_id.clone(),
                seat_count: 6,
                ..Default::default()
            }],
            ..Default::default()
        };
        let client = cluster.client().await.expect("connect");
        let reply = client.book(filler).await.expect("book the filler");
        assert_eq!(reply.outcome, Outcome::Committed as i32, "{reply:?}");
    }
    request
}

/// Seats booked on the saga's flights by the saga itself (not the filler).
async fn booked_by(cluster: &booking_client::Cluster, reply: &BookReply) -> usize {
    let urls = cluster.shard_database_urls();
    let snapshot = booking_client::checker::Snapshot::read(&urls)
        .await
        .expect("read the shards");
    snapshot
        .shards
        .iter()
        .flat_map(|s| s.seats.iter())
        .filter(|seat| seat.state == "booked" && seat.txid.as_deref() == Some(reply.txid.as_str()))
        .count()
}

struct Case {
    victim: Victim,
    failpoints: &'static str,
    sold_out: bool,
    /// None: either outcome is right, as long as the shards agree with it.
    outcome_after: Option<(Outcome, Option<AbortReason>)>,
}

#[derive(Clone, Copy)]
enum Victim {
    Coordinator,
    /// The participant of the saga's second leg (the one not sold out).
    SecondLegShard,
}

async fn crash_saga(case: &Case) {
    tracing::info!(failpoints = case.failpoints, "case");
    let mut test = start(Db::Sqlite).await;
    let cluster = &mut test.cluster;
    let key = format!(
        "saga-{}",
        case.failpoints.replace([':', '*', '>', '(', ')', '='], "_")
    );
    let request = saga_request(cluster, "SG", &key, case.sold_out).await;
    let victim = match case.victim {
        Victim::Coordinator => ProcessId::Coordinator,
        Victim::SecondLegShard => {
            ProcessId::Participant(cluster.shard_of(&request.legs[1].flight_id))
        }
    };
    cluster.set_env(victim, "FAILPOINTS", case.failpoints);
    cluster.restart(victim).await.expect("restart armed");

    let oracle = Arc::new(Oracle::new());
    let client = cluster.client().await.expect("connect");
    let first = client.book(request.clone()).await;
    oracle.record(&request, &first);
    let status = cluster
        .wait_exit(victim, Duration::from_secs(10))
        .await
        .expect("wait for exit");
    assert!(
        status.is_some(),
        "{}: {victim} must have crashed",
        case.failpoints
    );

    cluster.remove_env(victim, "FAILPOINTS");
    cluster.restart(victim).await.expect("restart");
    let client = cluster.client().await.expect("reconnect");
    let again = client
        .book(request.clone())
        .await
        .expect("a final answer after the restart");
    oracle.record(&request, &Ok(again.clone()));
    if let Ok(first) = &first {
        assert_eq!(
            first, &again,
            "{}: the same key gets the same reply",
            case.failpoints
        );
    }
    assert_eq!(again.mode, Mode::Saga as i32);
    if let Some((outcome, reason)) = case.outcome_after {
        assert_eq!(
            again.outcome, outcome as i32,
            "{}: {again:?}",
            case.failpoints
        );
        assert_eq!(
            again.abort.as_ref().map(|a| a.reason),
            reason.map(|r| r as i32),
            "{again:?}"
        );
    }

    // Every leg booked or every leg released, nothing held.
    assert_invariants(cluster, &oracle).await;
    let expected = if again.outcome == Outcome::Committed as i32 {
        4
    } else {
        0
    };
    assert_eq!(
        booked_by(cluster, &again).await,
        expected,
        "{}: {again:?}",
        case.failpoints
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_crash_at_each_step_completes_or_compensates() {
    init_tracing();
    let cases = [
        Case {
            victim: Victim::Coordinator,
            failpoints: "coordinator::saga_after_intent=return",
            sold_out: false,
            outcome_after: Some((Outcome::Aborted, Some(AbortReason::CoordinatorRestarted))),
        },
        Case {
            victim: Victim::Coordinator,
            failpoints: "coordinator::saga_after_leg=return",
            sold_out: false,
            outcome_after: None,
        },
        Case {
            victim: Victim::Coordinator,
            failpoints: "coordinator::saga_after_leg=1*off->return",
            sold_out: false,
            outcome_after: Some((Outcome::Committed, None)),
        },
        Case {
            victim: Victim::Coordinator,
            failpoints: "coordinator::saga_mid_compensation=return",
            sold_out: true,
            outcome_after: Some((Outcome::Aborted, Some(AbortReason::SoldOut))),
        },
        Case {
            victim: Victim::SecondLegShard,
            failpoints: "participant::before_compensation_commit=return",
            sold_out: true,
            outcome_after: Some((Outcome::Aborted, Some(AbortReason::SoldOut))),
        },
    ];
    for case in &cases {
        crash_saga(case).await;
    }
}

/// Without crashes: a saga books every leg by local commits; one with a
/// sold-out leg is answered ABORTED SOLD_OUT and its other leg released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_commits_or_compensates_on_sqlite_and_postgres() {
    init_tracing();
    for db in [Db::Sqlite, Db::Postgres] {
        let test = start(db).await;
        let cluster = &test.cluster;
        let client = cluster.client().await.expect("connect");
        let oracle = Arc::new(Oracle::new());

        let request = saga_request(cluster, "OK", "ok", false).await;
        let reply = client.book(request.clone()).await.expect("book");
        oracle.record(&request, &Ok(reply.clone()));
        assert_eq!(
            reply.outcome,
            Outcome::Committed as i32,
            "{db:?}: {reply:?}"
        );
        assert_eq!(reply.mode, Mode::Saga as i32);
        assert_eq!(reply.legs.len(), 2);

        let request = saga_request(cluster, "FULL", "full", true).await;
        let refused = client.book(request.clone()).await.expect("book");
        oracle.record(&request, &Ok(refused.clone()));
        assert_eq!(
            refused.outcome,
            Outcome::Aborted as i32,
            "{db:?}: {refused:?}"
        );
        assert_eq!(
            refused.abort.as_ref().map(|a| a.reason),
            Some(AbortReason::SoldOut as i32)
        );

        assert_invariants(cluster, &oracle).await;
        assert_eq!(booked_by(cluster, &reply).await, 4, "{db:?}");
        assert_eq!(booked_by(cluster, &refused).await, 0, "{db:?}");
        // The shards record the saga's legs as local commits.
        let snapshot = booking_client::checker::Snapshot::read(&cluster.shard_database_urls())
            .await
            .expect("read");
        let kinds: Vec<&str> = snapshot
            .shards
            .iter()
            .flat_map(|s| s.txns.iter())
            .filter(|t| t.txid == reply.txid)
            .map(|t| t.kind.as_str())
            .collect();
        assert_eq!(kinds, ["local", "local"], "{db:?}");
    }
}

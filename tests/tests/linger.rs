//! DESIGN.md "Batching": phase 2 lingers, reservations never do. With
//! `decision_linger_ms` at its maximum, a booking is still answered at
//! once (its PREPAREs went out without waiting, and the reply does not
//! wait for phase 2), while its seats stay `held` until the decisions'
//! linger has passed, then become `booked`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use booking_client::checker::Oracle;
use booking_proto::v1::Outcome;
use booking_tests::*;

/// `DECISION_LINGER_MS_MAX` in coordinator/src/config.rs.
const LINGER: Duration = Duration::from_millis(1000);

async fn seats_held(cluster: &booking_client::Cluster) -> i64 {
    flight_summaries(cluster).await.iter().map(|s| s.held).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_never_waits_for_the_decisions_linger() {
    init_tracing();
    let mut test = start_with(Db::Sqlite, |spec| {
        // Far past the linger: the participants' in-doubt sweep (500 ms in
        // the harness) would otherwise ask for the decision first.
        spec.in_doubt_after_ms = 10 * LINGER.as_millis() as u64;
        spec.coordinator_settings
            .push(("decision_linger_ms".into(), LINGER.as_millis().to_string()));
    })
    .await;
    let cluster = &mut test.cluster;
    let client = cluster.client().await.expect("connect");
    let oracle = Arc::new(Oracle::new());

    for round in 0..3 {
        let request =
            two_shard_request(cluster, &format!("L{round}X"), &format!("linger-{round}")).await;
        let seats: i64 = request.legs.iter().map(|l| i64::from(l.seat_count)).sum();
        let before = seats_booked(cluster).await;
        let asked = Instant::now();
        let reply = client.book(request.clone()).await.expect("booked");
        let answered = asked.elapsed();
        assert_eq!(reply.outcome, Outcome::Committed as i32, "{reply:?}");
        oracle.record_reply(&request, reply);
        // A reservation that lingered like the decisions would take the
        // whole linger; an idle cluster answers in milliseconds.
        assert!(
            answered < LINGER / 2,
            "round {round}: answered after {answered:?}, the decisions' linger is {LINGER:?}"
        );
        // Phase 2 is still lingering: the seats are taken, not yet booked.
        assert_eq!(
            (seats_held(cluster).await, seats_booked(cluster).await),
            (seats, before),
            "round {round}: right after the reply"
        );
        let mut booked = 0;
        while booked < seats && asked.elapsed() < LINGER * 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            booked = seats_booked(cluster).await - before;
        }
        let applied = asked.elapsed();
        assert_eq!(booked, seats, "round {round}: booked after {applied:?}");
        assert!(
            applied >= LINGER,
            "round {round}: phase 2 applied after {applied:?}, before its linger of {LINGER:?}"
        );
        assert_eq!(seats_held(cluster).await, 0, "round {round}");
    }
    assert_invariants(cluster, &oracle).await;
}

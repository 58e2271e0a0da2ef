//! DESIGN.md "Recovery after a coordinator crash": the coordinator is
//! SIGKILLed while 2PC bookings are in flight, then restarted. Afterwards
//! the invariants hold (read from the shard databases), every retried
//! idempotency key gets the same reply as before the crash, bookings whose
//! outcome the client never learned get a final answer, and new bookings
//! go on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use booking_client::checker::{Oracle, OracleOutcome};
use booking_client::ProcessId;
use booking_proto::v1::Outcome;
use booking_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_sigkill_under_load_recovers_and_keeps_replies() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let flights = create_race_flights(&test.cluster, 5, 6).await;
    let client = test.cluster.client().await.expect("connect");
    let oracle = Arc::new(Oracle::new());

    tracing::info!("phase 1: load, and SIGKILL the coordinator in the middle of it");
    // Chunk after chunk until the kill has happened, so that a chunk is
    // always in flight when it lands, however fast the cluster is.
    let killed = Arc::new(AtomicBool::new(false));
    let load = {
        let client = client.clone();
        let oracle = Arc::clone(&oracle);
        let killed = Arc::clone(&killed);
        let requests: Vec<_> = (0..4000)
            .map(|n| race_itinerary(&test.cluster, &flights, n, "crash"))
            .collect();
        tokio::spawn(async move {
            for chunk in requests.chunks(40) {
                if killed.load(Ordering::SeqCst) {
                    break;
                }
                book_all_at_once(&client, chunk.to_vec(), &oracle).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    test.cluster
        .kill(ProcessId::Coordinator)
        .await
        .expect("SIGKILL the coordinator");
    killed.store(true, Ordering::SeqCst);
    load.await.expect("load task");
    let before_crash = oracle.entries();
    let unknown = before_crash
        .iter()
        .filter(|e| matches!(e.outcome, OracleOutcome::Unknown { .. }))
        .count();
    let decided = before_crash.len() - unknown;
    tracing::info!(decided, unknown, "replies before the restart");
    assert!(decided > 0, "some bookings completed before the kill");
    assert!(unknown > 0, "the kill interrupted some bookings");

    tracing::info!("phase 2: restart; invariants hold at quiescence");
    test.cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart the coordinator");
    let client = test.cluster.client().await.expect("reconnect");
    assert_invariants(&test.cluster, &oracle).await;

    tracing::info!("phase 3: retried keys get the same reply; unknown ones get a final one");
    let retried = Arc::new(Oracle::new());
    for entry in &before_crash {
        let again = client.book(entry.request.clone()).await;
        match (&entry.outcome, &again) {
            (OracleOutcome::Committed(first) | OracleOutcome::Aborted(first), Ok(second)) => {
                assert_eq!(
                    first, second,
                    "key {} got a different reply after the restart",
                    entry.request.idempotency_key
                )
            }
            (OracleOutcome::Committed(_) | OracleOutcome::Aborted(_), Err(error)) => {
                panic!(
                    "key {} had a reply, the retry failed: {error}",
                    entry.request.idempotency_key
                )
            }
            (OracleOutcome::Unknown { .. }, result) => {
                let reply = result
                    .as_ref()
                    .unwrap_or_else(|e| panic!("retry of an unknown booking failed: {e}"));
                assert!(
                    reply.outcome == Outcome::Committed as i32
                        || reply.outcome == Outcome::Aborted as i32
                );
            }
        }
        retried.record(&entry.request, &again);
    }
    assert_invariants(&test.cluster, &retried).await;

    tracing::info!("phase 4: new bookings go on");
    let fresh = create_race_flights_named(&test.cluster).await;
    let after = Arc::new(Oracle::new());
    let requests: Vec<_> = (0..60)
        .map(|n| race_itinerary(&test.cluster, &fresh, n, "after"))
        .collect();
    book_all_at_once(&client, requests, &after).await;
    let (committed, _, other) = tally(&after);
    assert!(other.is_empty(), "after the restart: {other:#?}");
    assert!(committed > 0, "new bookings commit after the restart");
    assert_invariants(&test.cluster, &after).await;
}

/// A second set of flights, so phase 4 does not race the sold-out ones.
async fn create_race_flights_named(cluster: &booking_client::Cluster) -> RaceFlights {
    let mut flights = RaceFlights {
        contested: Vec::new(),
        roomy: Vec::new(),
    };
    for i in 0..3 {
        let id = format!("NEWHOT{i}");
        cluster
            .create_flight(&id, CONTESTED_ROWS, LETTERS)
            .await
            .expect("create flight");
        flights.contested.push(id);
    }
    for i in 0..6 {
        let id = format!("NEWROOMY{i}");
        cluster
            .create_flight(&id, ROOMY_ROWS, LETTERS)
            .await
            .expect("create flight");
        flights.roomy.push(id);
    }
    flights
}

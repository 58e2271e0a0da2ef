//! DESIGN.md "Failures we test by causing them": a participant crashes (exits
//! at once, as if SIGKILLed) at a named point, is restarted, and the
//! transaction still ends the way the coordinator decided, with nothing held:
//!
//! | failpoint             | client is told | after restart                      |
//! |-----------------------|----------------|------------------------------------|
//! | after_prepare_commit  | ABORTED        | the durable hold is released (ABORT redelivered) |
//! | after_commit_applied  | COMMITTED      | COMMIT redelivered is a no-op; seats booked |
//!
//! A bug is the other way a participant stops: `batch_panics` panics in the
//! PREPARE batch after its writes, before its local commit.

use std::sync::Arc;
use std::time::Duration;

use booking_client::checker::Oracle;
use booking_client::ProcessId;
use booking_proto::v1::{AbortReason, Outcome};
use booking_tests::*;

async fn crash_participant_at(failpoint: &str, told: Outcome) {
    tracing::info!(failpoint, "case");
    let mut test = start(Db::Sqlite).await;
    let cluster = &mut test.cluster;
    let request = two_shard_request(cluster, "PF", &format!("pf-{failpoint}")).await;
    let victim = ProcessId::Participant(cluster.shard_of(&request.legs[0].flight_id));

    // Phase 1: arm the failpoint on the first leg's shard, book, it dies.
    cluster.set_env(victim, "FAILPOINTS", &format!("{failpoint}=return"));
    cluster.restart(victim).await.expect("restart armed");
    let oracle = Arc::new(Oracle::new());
    let client = cluster.client().await.expect("connect");
    let reply = client.book(request.clone()).await.expect("a final reply");
    oracle.record(&request, &Ok(reply.clone()));
    assert_eq!(reply.outcome, told as i32, "{failpoint}: {reply:?}");
    if told == Outcome::Aborted {
        let reason = reply.abort.as_ref().map(|a| a.reason);
        assert_eq!(
            reason,
            Some(AbortReason::ShardUnavailable as i32),
            "{reply:?}"
        );
    }
    let status = cluster
        .wait_exit(victim, Duration::from_secs(10))
        .await
        .expect("wait for exit");
    assert!(
        status.is_some(),
        "{failpoint}: the participant must have crashed"
    );

    // Phase 2: restart unarmed; the decision is redelivered until acknowledged.
    cluster.remove_env(victim, "FAILPOINTS");
    cluster.restart(victim).await.expect("restart");
    assert_invariants(cluster, &oracle).await;
    let booked = seats_booked(cluster).await;
    let expected = if told == Outcome::Committed { 4 } else { 0 };
    assert_eq!(booked, expected, "{failpoint}: seats booked after recovery");
    let again = client.book(request.clone()).await.expect("retry");
    assert_eq!(
        again, reply,
        "{failpoint}: the same key gets the same reply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_after_its_durable_prepare_ends_aborted_and_released() {
    init_tracing();
    crash_participant_at("participant::after_prepare_commit", Outcome::Aborted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_after_applying_commit_ends_committed() {
    init_tracing();
    crash_participant_at("participant::after_commit_applied", Outcome::Committed).await;
}

/// A failpoint can pause instead of exit (`sleep(ms)`, the fail crate's own
/// action): a participant stalls after its durable YES, past the booking
/// deadline. The coordinator must decide ABORT (DEADLINE) without that
/// vote, and the late YES must not hold anything: the paused shard learns
/// the ABORT and releases its seats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_paused_after_prepare_votes_too_late_and_is_released() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let cluster = &mut test.cluster;
    let mut request = two_shard_request(cluster, "PZ", "pz-paused").await;
    request.timeout_ms = 500;
    let victim = ProcessId::Participant(cluster.shard_of(&request.legs[0].flight_id));
    cluster.set_env(
        victim,
        "FAILPOINTS",
        "participant::after_prepare_commit=sleep(2000)",
    );
    cluster.restart(victim).await.expect("restart armed");

    let oracle = Arc::new(Oracle::new());
    let client = cluster.client().await.expect("connect");
    let started = std::time::Instant::now();
    let reply = client.book(request.clone()).await.expect("a final reply");
    oracle.record(&request, &Ok(reply.clone()));
    assert_eq!(reply.outcome, Outcome::Aborted as i32, "{reply:?}");
    assert_eq!(
        reply.abort.as_ref().map(|a| a.reason),
        Some(AbortReason::Deadline as i32),
        "{reply:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1_900),
        "the coordinator answered at its deadline, not after the pause: {:?}",
        started.elapsed()
    );
    assert!(
        cluster.is_running(victim),
        "a paused participant is still running"
    );

    // The paused shard wakes up, sends its late YES, and is told ABORT.
    assert_invariants(cluster, &oracle).await;
    let booked = seats_booked(cluster).await;
    assert_eq!(booked, 0, "nothing of an aborted booking is booked");
}

/// A panic inside a PREPARE batch (a bug, injected after the batch's writes
/// and before its local commit) stops the participant loudly, with a
/// failure status, and writes nothing: the client is told ABORTED, and after
/// a restart no seat is held or booked and every invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_batch_panics_stops_and_keeps_nothing_of_it() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let cluster = &mut test.cluster;
    let request = two_shard_request(cluster, "PP", "pp-panics").await;
    let victim = ProcessId::Participant(cluster.shard_of(&request.legs[0].flight_id));
    cluster.set_env(victim, "FAILPOINTS", "participant::batch_panics=return");
    cluster.restart(victim).await.expect("restart armed");

    let oracle = Arc::new(Oracle::new());
    let client = cluster.client().await.expect("connect");
    let reply = client.book(request.clone()).await.expect("a final reply");
    oracle.record(&request, &Ok(reply.clone()));
    assert_eq!(reply.outcome, Outcome::Aborted as i32, "{reply:?}");
    let status = cluster
        .wait_exit(victim, Duration::from_secs(10))
        .await
        .expect("wait for exit")
        .expect("the participant whose batch panicked must stop");
    assert!(
        !status.success(),
        "a participant stopped by a bug must exit with a failure status: {status:?}"
    );

    cluster.remove_env(victim, "FAILPOINTS");
    cluster.restart(victim).await.expect("restart");
    assert_invariants(cluster, &oracle).await;
    let summaries = flight_summaries(cluster).await;
    let (held, booked): (i64, i64) = summaries
        .iter()
        .fold((0, 0), |(h, b), s| (h + s.held, b + s.booked));
    assert_eq!((held, booked), (0, 0), "{summaries:?}");
}

//! DESIGN.md "Failures we test by causing them": the coordinator crashes
//! (exits at once, as if SIGKILLed) at named points of 2PC, is restarted,
//! and recovery must leave the invariants intact and give the retried key
//! the answer the log dictates:
//!
//! | failpoint            | log holds            | retried key gets       |
//! |----------------------|----------------------|------------------------|
//! | after_begin          | BEGIN only           | ABORTED (presumed)     |
//! | after_commit_logged  | COMMIT, no reply sent| COMMITTED, seats booked|
//! | before_end           | COMMIT, all acked    | the reply already given|

use std::sync::Arc;
use std::time::Duration;

use booking_client::checker::Oracle;
use booking_client::ProcessId;
use booking_proto::v1::{AbortReason, Outcome};
use booking_tests::*;

struct Case {
    failpoint: &'static str,
    reply_before_crash: bool,
    outcome_after: Outcome,
}

const CASES: [Case; 3] = [
    Case {
        failpoint: "coordinator::after_begin",
        reply_before_crash: false,
        outcome_after: Outcome::Aborted,
    },
    Case {
        failpoint: "coordinator::after_commit_logged",
        reply_before_crash: false,
        outcome_after: Outcome::Committed,
    },
    Case {
        failpoint: "coordinator::before_end",
        reply_before_crash: true,
        outcome_after: Outcome::Committed,
    },
];

async fn crash_at(case: &Case) {
    tracing::info!(failpoint = case.failpoint, "case");
    let mut test = start(Db::Sqlite).await;
    let cluster = &mut test.cluster;
    let request = two_shard_request(cluster, "FP", &format!("fp-{}", case.failpoint)).await;

    // Phase 1: arm the failpoint, book, the coordinator dies.
    cluster.set_env(
        ProcessId::Coordinator,
        "FAILPOINTS",
        &format!("{}=return", case.failpoint),
    );
    cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart armed");
    let oracle = Arc::new(Oracle::new());
    let client = cluster.client().await.expect("connect");
    let first = client.book(request.clone()).await;
    oracle.record(&request, &first);
    assert_eq!(
        first.is_ok(),
        case.reply_before_crash,
        "{}: first reply {first:?}",
        case.failpoint
    );
    let status = cluster
        .wait_exit(ProcessId::Coordinator, Duration::from_secs(10))
        .await
        .expect("wait for exit");
    assert!(
        status.is_some(),
        "{}: the coordinator must have crashed",
        case.failpoint
    );

    // Phase 2: restart unarmed; recovery finishes the transaction.
    cluster.remove_env(ProcessId::Coordinator, "FAILPOINTS");
    cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart");
    let client = cluster.client().await.expect("reconnect");
    let again = client
        .book(request.clone())
        .await
        .expect("retry after restart");
    assert_eq!(
        again.outcome, case.outcome_after as i32,
        "{}: {again:?}",
        case.failpoint
    );
    if case.outcome_after == Outcome::Aborted {
        let reason = again.abort.as_ref().map(|a| a.reason);
        assert_eq!(reason, Some(AbortReason::CoordinatorRestarted as i32));
    }
    if let Ok(first) = &first {
        assert_eq!(
            first, &again,
            "{}: the same key must get the same reply",
            case.failpoint
        );
    }
    oracle.record(&request, &Ok(again.clone()));
    assert_invariants(cluster, &oracle).await;
    let booked = seats_booked(cluster).await;
    let expected = if case.outcome_after == Outcome::Committed {
        4
    } else {
        0
    };
    assert_eq!(
        booked, expected,
        "{}: seats booked after recovery",
        case.failpoint
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_at_each_2pc_failpoint_recovers() {
    init_tracing();
    for case in &CASES {
        crash_at(case).await;
    }
}

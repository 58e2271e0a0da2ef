//! What operators rely on, against real processes: health says NOT_SERVING
//! while the coordinator replays its log (and the Coordinator service
//! answers UNAVAILABLE, never a presumed ABORT); retention keeps the log
//! bounded and recovery short while the invariants hold; `bookctl admin
//! retry` re-drives a stuck transaction and refuses what it must; the
//! servers run without transparent huge pages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use booking_client::checker::{Oracle, OracleOutcome};
use booking_client::ProcessId;
use booking_proto::v1::{coordinator_client::CoordinatorClient, GetDecisionRequest, Outcome};
use booking_tests::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const COORDINATOR_SERVICE: &str = "booking.v1.Coordinator";

/// What the poller saw while the coordinator restarted.
#[derive(Debug, Default)]
struct Seen {
    not_serving: usize,
    unavailable_while_replaying: usize,
    serving: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_the_log_replays() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let request = two_shard_request(&test.cluster, "HR", "health-key").await;
    let client = test.cluster.client().await.expect("connect");
    let reply = client.book(request).await.expect("book");
    assert_eq!(reply.outcome, Outcome::Committed as i32);
    let address = test
        .cluster
        .listening_address(ProcessId::Coordinator)
        .expect("the coordinator listens");

    test.cluster
        .kill(ProcessId::Coordinator)
        .await
        .expect("kill");
    test.cluster.set_env(
        ProcessId::Coordinator,
        "FAILPOINTS",
        "coordinator::during_replay=sleep(2500)",
    );
    let url = format!("http://{address}");
    let poll = async {
        let mut seen = Seen::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !seen.serving {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Ok(channel) = tonic::transport::Endpoint::from_shared(url.clone())
                .expect("url")
                .connect()
                .await
            else {
                continue; // not listening yet
            };
            let check = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: COORDINATOR_SERVICE.into(),
                })
                .await;
            let Ok(check) = check else { continue };
            match check.into_inner().status() {
                ServingStatus::Serving => seen.serving = true,
                ServingStatus::NotServing => {
                    seen.not_serving += 1;
                    // The txid was COMMITTED: during replay the answer must
                    // be UNAVAILABLE, never ABORT.
                    let asked = CoordinatorClient::new(channel)
                        .get_decision(GetDecisionRequest {
                            txid: reply.txid.clone(),
                        })
                        .await;
                    match asked {
                        Err(status) if status.code() == tonic::Code::Unavailable => {
                            assert!(
                                status.message().contains("replaying"),
                                "{}",
                                status.message()
                            );
                            seen.unavailable_while_replaying += 1;
                        }
                        other => panic!("GetDecision during replay answered {other:?}"),
                    }
                }
                other => panic!("unexpected health status {other:?}"),
            }
        }
        seen
    };
    let (restarted, seen) = tokio::join!(test.cluster.restart(ProcessId::Coordinator), poll);
    restarted.expect("restart the coordinator");
    tracing::info!(?seen, "health during the restart");
    assert!(
        seen.not_serving >= 3,
        "health must say NOT_SERVING during replay: {seen:?}"
    );
    assert!(seen.unavailable_while_replaying >= 3, "{seen:?}");
    assert!(seen.serving, "health must turn SERVING: {seen:?}");

    // Once serving, the replayed registry answers.
    let client = test.cluster.client().await.expect("reconnect");
    let status = client.status_by_key("health-key").await.expect("status");
    assert_eq!(
        status.reply.expect("decided").outcome,
        Outcome::Committed as i32
    );
}

/// Small segments and a 1 s window: the log is cut as the load runs.
fn bounded_log(spec: &mut booking_client::ClusterSpec) {
    spec.coordinator_settings
        .push(("segment_bytes_max".into(), "16384".into()));
    spec.coordinator_settings
        .push(("log_retention_secs".into(), "1".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_log_bounded_and_recovery_short() {
    init_tracing();
    let mut test = start_with(Db::Sqlite, bounded_log).await;
    let flights = create_race_flights(&test.cluster, 2, 8).await;
    let client = test.cluster.client().await.expect("connect");
    let oracle = Arc::new(Oracle::new());
    let requests: Vec<_> = (0..1500)
        .map(|n| race_itinerary(&test.cluster, &flights, n, "ret"))
        .collect();
    let first_key = requests[0].idempotency_key.clone();
    for chunk in requests.chunks(50) {
        book_all_at_once(&client, chunk.to_vec(), &oracle).await;
    }
    let answered = oracle
        .entries()
        .iter()
        .filter(|e| !matches!(e.outcome, OracleOutcome::Unknown { .. }))
        .count();
    assert_eq!(answered, 1500, "every booking got an answer");
    let log_dir = test.cluster.data_dir().join("coordinator-log");
    // Everything written so far (1500 bookings, 3 records each, ~100
    // segments of 16 KiB) is ended: after the window, at most the current
    // segment and the one or two before it remain.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (segments, bytes) = loop {
        let size = coordinator::metrics::log_size(&log_dir);
        if size.0 <= 3 || Instant::now() > deadline {
            break size;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tracing::info!(segments, bytes, "log after the load");
    assert!(segments <= 3, "{segments} segments ({bytes} bytes) left");
    assert!(bytes <= 3 * 16384, "{bytes} bytes left");
    let written = std::fs::read_to_string(test.cluster.log_path(ProcessId::Coordinator))
        .expect("coordinator log");
    assert!(written.contains("retention: removed ended segments"));

    // The first booking is forgotten, with a message saying why.
    let forgotten = client
        .status_by_key(&first_key)
        .await
        .expect_err("forgotten");
    assert_eq!(forgotten.code(), Some(tonic::Code::NotFound));
    assert!(
        forgotten.to_string().contains("log_retention_secs"),
        "{forgotten}"
    );

    // A restart replays only what is left, and the invariants hold.
    let replayed = coordinator::log::scan(&log_dir).expect("scan the log");
    assert!(
        replayed.records.len() < 300,
        "{} records replayed",
        replayed.records.len()
    );
    test.cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart");
    assert_invariants(&test.cluster, &oracle).await;
    let client = test.cluster.client().await.expect("reconnect");
    let probe = two_shard_request(&test.cluster, "RP", "after-retention").await;
    let reply = client.book(probe).await.expect("book after restart");
    assert_eq!(reply.outcome, Outcome::Committed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_retry_redrives_a_stuck_transaction_and_refuses_the_rest() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let request = two_shard_request(&test.cluster, "AR", "stuck-key").await;
    let stuck_shard = test.cluster.shard_of(&request.legs[1].flight_id);
    let participant = ProcessId::Participant(stuck_shard);
    let client = test.cluster.client().await.expect("connect");

    // The participant dies right after its local prepare commit, before its
    // vote: the coordinator decides ABORT, and phase 2 to that shard retries
    // while it is down.
    test.cluster.set_env(
        participant,
        "FAILPOINTS",
        "participant::after_prepare_commit=return",
    );
    test.cluster
        .restart(participant)
        .await
        .expect("arm the participant");
    let reply = client.book(request).await.expect("book");
    assert_eq!(reply.outcome, Outcome::Aborted as i32);
    test.cluster
        .wait_exit(participant, Duration::from_secs(10))
        .await
        .expect("the participant died at its failpoint");
    // Long enough for the phase-2 backoff to reach its 2 s ceiling.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = client.status_by_txid(&reply.txid).await.expect("status");
    assert!(!status.ended, "phase 2 cannot end while the shard is down");

    // The operator re-drives it while it is stuck: with the shard still
    // down (once the shard is back, the coordinator's own retry, at most
    // 2 s away, may end it before the command runs).
    let redriven = bookctl(&test.cluster, &["admin", "retry", &reply.txid]);
    assert!(
        redriven.status.success(),
        "bookctl admin retry: {redriven:?}"
    );
    let printed = String::from_utf8_lossy(&redriven.stdout);
    assert!(printed.contains(&reply.txid), "{printed}");
    test.cluster.remove_env(participant, "FAILPOINTS");
    test.cluster
        .restart(participant)
        .await
        .expect("restart the participant");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client.status_by_txid(&reply.txid).await.expect("status");
        if status.ended {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the re-driven transaction never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let written = std::fs::read_to_string(test.cluster.log_path(ProcessId::Coordinator))
        .expect("coordinator log");
    assert!(
        written.contains("operator asked to re-drive the transaction now"),
        "the coordinator log must say the operator re-drove it"
    );

    // Ended: nothing to retry. Unknown: NOT_FOUND. Malformed: INVALID_ARGUMENT.
    let ended = client
        .retry_transaction(&reply.txid)
        .await
        .expect_err("ended");
    assert_eq!(
        ended.code(),
        Some(tonic::Code::FailedPrecondition),
        "{ended}"
    );
    assert!(ended.to_string().contains("nothing to retry"), "{ended}");
    let unknown = client
        .retry_transaction(&uuid::Uuid::now_v7().to_string())
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Some(tonic::Code::NotFound), "{unknown}");
    let bad = bookctl(&test.cluster, &["admin", "retry", "not-a-txid"]);
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("txid"), "{said}");
    assert_invariants(&test.cluster, &Oracle::new()).await;
}

/// Runs `bookctl --coordinator <url> args...` and waits for it.
fn bookctl(cluster: &booking_client::Cluster, args: &[&str]) -> std::process::Output {
    let program = cluster.spec().bin_dir.join("bookctl");
    assert!(
        program.is_file(),
        "{} is missing: build it with `cargo build --bin bookctl` (BOOKING_BIN_DIR must hold it too)",
        program.display()
    );
    std::process::Command::new(program)
        .arg("--coordinator")
        .arg(cluster.coordinator_url())
        .args(args)
        .output()
        .expect("run bookctl")
}

/// The coordinator and every participant turn transparent huge pages off
/// for themselves at start (`booking_proto::process`): with them, a
/// restarted coordinator spent most of its replay zeroing 2 MiB pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_run_without_transparent_huge_pages() {
    init_tracing();
    let test = start(Db::Sqlite).await;
    let cluster = &test.cluster;
    let processes = std::iter::once(ProcessId::Coordinator)
        .chain((0..cluster.shards()).map(ProcessId::Participant));
    for process in processes {
        let pid = cluster.pid(process).expect("the process runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
        let thp = status
            .lines()
            .find_map(|line| line.strip_prefix("THP_enabled:"))
            .unwrap_or_else(|| {
                panic!("no THP_enabled line for {process}: the kernel is older than 5.0")
            });
        assert_eq!(thp.trim(), "0", "{process} (pid {pid})");
    }
}

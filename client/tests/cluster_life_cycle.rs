//! The cluster launcher, the load generator and the checker together, on
//! real coordinator and participant processes (DESIGN.md, "Processes" and
//! "Invariants every test suite checks"): book under load, SIGKILL and
//! restart the coordinator and a participant, book again, and check every
//! invariant at quiescence.

use std::sync::Arc;
use std::time::Duration;

use booking_client::checker::{self, CheckMode, Oracle};
use booking_client::load::{self, FlightPlan, LoadSpec, StopAfter};
use booking_client::{find_binaries, BookingClient, Cluster, ClusterSpec, ProcessId};

async fn book_some(
    client: &BookingClient,
    plans: &[FlightPlan],
    oracle: &Arc<Oracle>,
    count: u64,
) -> load::LoadReport {
    let mut spec = LoadSpec::new(plans.to_vec());
    spec.customers = 8;
    spec.stop = StopAfter::Itineraries(count);
    load::run(client, &spec, oracle).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_survives_kills_and_restarts_with_every_invariant_intact() {
    let bin_dir = find_binaries()
        .await
        .expect("find or build the coordinator and participant");
    let data = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(ClusterSpec::new(bin_dir, data.path()))
        .await
        .expect("start the cluster");
    for id in [
        ProcessId::Coordinator,
        ProcessId::Participant(0),
        ProcessId::Participant(2),
    ] {
        assert!(
            cluster.is_running(id) && cluster.pid(id).is_some(),
            "{id} runs"
        );
    }

    // Phase 1: flights on their owners, then load.
    let mut plans = Vec::new();
    for i in 0..6 {
        let flight_id = format!("LC{i}");
        let inventory = cluster
            .create_flight(&flight_id, 4, "ABCD")
            .await
            .expect("create flight");
        assert_eq!(inventory.capacity, 16);
        let shard = cluster.shard_of(&flight_id);
        plans.push(FlightPlan {
            flight_id,
            shard,
            rows: 4,
            letters: "ABCD".into(),
        });
    }
    let client = BookingClient::connect_lazy(&cluster.coordinator_url())
        .expect("valid url")
        .with_request_timeout(Duration::from_secs(10));
    let oracle = Arc::new(Oracle::new());
    let first = book_some(&client, &plans, &oracle, 60).await;
    assert_eq!(first.attempted, 60);
    assert!(first.committed > 0, "{first}");
    let live = checker::check(&cluster.shard_database_urls(), &oracle, CheckMode::Live)
        .await
        .expect("read shards");
    assert!(live.is_ok(), "{live}");

    // Phase 2: SIGKILL and restart, on the same ports.
    cluster
        .kill(ProcessId::Coordinator)
        .await
        .expect("kill coordinator");
    assert!(!cluster.is_running(ProcessId::Coordinator));
    cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart coordinator");
    cluster
        .kill(ProcessId::Participant(1))
        .await
        .expect("kill s1");
    cluster
        .restart(ProcessId::Participant(1))
        .await
        .expect("restart s1");

    // Phase 3: the same client books again, then everything settles.
    let second = book_some(&client, &plans, &oracle, 60).await;
    assert!(second.committed + second.aborted_total() > 0, "{second}");
    let urls = cluster.shard_database_urls();
    checker::wait_quiescent(&urls, Duration::from_secs(30))
        .await
        .expect("quiescence");
    let report = checker::check(&urls, &oracle, CheckMode::Quiescent)
        .await
        .expect("read shards");
    assert!(report.is_ok(), "{report}");
    let booked: i64 = checker::flight_summary(&urls)
        .await
        .expect("read shards")
        .iter()
        .map(|f| f.booked)
        .sum();
    assert!(booked <= 6 * 16);

    cluster.stop_all().await.expect("stop");
    assert!(!cluster.is_running(ProcessId::Coordinator));
    assert!(
        std::fs::read_to_string(cluster.log_path(ProcessId::Participant(1)))
            .expect("log")
            .contains("==== bookctl cluster: starting")
    );
}

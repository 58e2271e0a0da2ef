//! What operators see (issue 6): every process of a real cluster serves
//! Prometheus `/metrics` on the port the cluster gave it, and the series
//! move with the bookings. Scraped over plain HTTP and parsed from the text
//! exposition format, as Prometheus would.
//!
//! Scraping and parsing is `booking_tests::metrics_scrape`: one sample per
//! series, keyed by the series as rendered with its labels, e.g.
//! `participant_requests_total{rpc="prepare",outcome="yes"}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use booking_client::checker;
use booking_client::{Cluster, ProcessId};
use booking_proto::v1::{AbortReason, BookRequest, Outcome};
use booking_tests::*;

/// The body of `GET /metrics` (`booking_tests::metrics_text`), or a panic
/// saying why not.
async fn scrape_text(address: SocketAddr) -> String {
    metrics_text(address)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The samples of `GET /metrics`: series → value.
async fn scrape(address: SocketAddr) -> HashMap<String, f64> {
    metrics_scrape(address)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The value of `series`, failing with the whole scrape when it is absent.
fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| {
        let mut names: Vec<&String> = samples.keys().collect();
        names.sort();
        panic!("{series} is not exported; got {names:#?}")
    })
}

fn participant_metrics(cluster: &Cluster, shard: usize) -> SocketAddr {
    cluster
        .metrics_address(ProcessId::Participant(shard))
        .expect("every participant has a metrics port")
}

/// Scrapes shard `shard` until `participant_prepared` is 0, or 10 s pass.
async fn prepared_drains_to_zero(cluster: &Cluster, shard: usize) -> HashMap<String, f64> {
    let address = participant_metrics(cluster, shard);
    for _ in 0..100 {
        let samples = scrape(address).await;
        if value(&samples, "participant_prepared") == 0.0 {
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("s{shard}: participant_prepared stayed above 0 after quiescence");
}

/// DESIGN "Two-phase commit" seen from the participants: each shard of a
/// committed 2-shard booking counts a YES vote and a COMMIT; a sold-out leg
/// counts a NO vote; local commits and their batch sizes are recorded; and
/// once the cluster is quiet no txid is counted as prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_metrics_are_scraped() {
    init_tracing();
    let test = start(Db::Sqlite).await;
    let cluster = &test.cluster;
    let client = cluster.client().await.expect("connect to the coordinator");
    // Two flights of 6 seats on two shards; each booking takes 2 on each.
    let request = two_shard_request(cluster, "MET", "metrics-0").await;
    let shards: Vec<usize> = request
        .legs
        .iter()
        .map(|leg| cluster.shard_of(&leg.flight_id))
        .collect();
    const COMMITTED: usize = 3;
    {
        tracing::info!("phase 1: {COMMITTED} two-shard bookings commit, one more is sold out");
        for n in 0..COMMITTED {
            let reply = client
                .book(BookRequest {
                    idempotency_key: format!("metrics-{n}"),
                    ..request.clone()
                })
                .await
                .expect("book");
            assert_eq!(reply.outcome(), Outcome::Committed, "{reply:?}");
        }
        let sold_out = client
            .book(BookRequest {
                idempotency_key: "metrics-sold-out".into(),
                ..request.clone()
            })
            .await
            .expect("book");
        assert_eq!(sold_out.outcome(), Outcome::Aborted, "{sold_out:?}");
        let reason = sold_out.abort.as_ref().map(|a| a.reason());
        assert_eq!(reason, Some(AbortReason::SoldOut), "{sold_out:?}");
        checker::wait_quiescent(&cluster.shard_database_urls(), Duration::from_secs(30))
            .await
            .expect("quiescence: no seat held, no txn prepared");
    }
    {
        tracing::info!("phase 2: every participant serves /metrics with histograms");
        for shard in 0..cluster.shards() {
            let text = scrape_text(participant_metrics(cluster, shard)).await;
            for histogram in [
                "participant_request_seconds",
                "participant_local_commit_seconds",
                "participant_batch_txids",
            ] {
                assert!(
                    text.contains(&format!("# TYPE {histogram} histogram")),
                    "s{shard}: {histogram} is not a histogram:\n{text}"
                );
            }
            let samples = prepared_drains_to_zero(cluster, shard).await;
            // Registered at start: present (at 0) before anything happened.
            for series in [
                r#"participant_requests_total{rpc="prepare",outcome="no"}"#,
                r#"participant_requests_total{rpc="book_local",outcome="yes"}"#,
                r#"participant_in_doubt_resolved_total{decision="commit"}"#,
                r#"participant_get_decision_total{result="error"}"#,
                "participant_local_commit_failures_total",
            ] {
                value(&samples, series);
            }
        }
    }
    {
        tracing::info!("phase 3: the shards of the bookings counted their votes and commits");
        let mut no_votes = 0.0;
        for &shard in &shards {
            let samples = scrape(participant_metrics(cluster, shard)).await;
            let prepare = |outcome: &str| {
                value(
                    &samples,
                    &format!(r#"participant_requests_total{{rpc="prepare",outcome="{outcome}"}}"#),
                )
            };
            assert!(prepare("yes") >= COMMITTED as f64, "s{shard}: {samples:?}");
            no_votes += prepare("no");
            let commits = value(
                &samples,
                r#"participant_requests_total{rpc="commit",outcome="ok"}"#,
            );
            assert!(commits >= COMMITTED as f64, "s{shard}: {samples:?}");
            let local_commits = value(&samples, "participant_local_commits_total");
            assert!(local_commits >= 1.0, "s{shard}: {samples:?}");
            let batches = value(&samples, "participant_batch_txids_count");
            assert!(
                batches > 0.0 && batches <= local_commits,
                "s{shard}: {samples:?}"
            );
            assert!(
                value(&samples, "participant_batch_txids_sum") >= 2.0 * COMMITTED as f64,
                "every YES and every COMMIT went through a batch: {samples:?}"
            );
            // The sold-out booking's PREPARE may never reach the second
            // shard: once the first NO decides ABORT, the coordinator drops
            // the call still in flight.
            assert!(
                value(
                    &samples,
                    r#"participant_request_seconds_count{rpc="prepare"}"#
                ) >= COMMITTED as f64,
                "s{shard}: {samples:?}"
            );
            assert!(value(&samples, "participant_local_commit_seconds_sum") > 0.0);
        }
        assert!(no_votes >= 1.0, "the sold-out booking got a NO vote");
    }
}

/// The coordinator's side: bookings by mode and outcome, per-phase latency
/// histograms, group commit (records per fsync), fsync latency, the census
/// gauges and the recovery figures, after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_metrics_are_scraped() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let client = test.cluster.client().await.expect("connect");
    let request = two_shard_request(&test.cluster, "CM", "cm-0").await;
    const COMMITTED: usize = 3;
    for n in 0..COMMITTED {
        let reply = client
            .book(BookRequest {
                idempotency_key: format!("cm-{n}"),
                ..request.clone()
            })
            .await
            .expect("book");
        assert_eq!(reply.outcome(), Outcome::Committed, "{reply:?}");
    }
    let saga = client
        .book(BookRequest {
            idempotency_key: "cm-saga".into(),
            mode: booking_proto::v1::Mode::Saga as i32,
            ..request.clone()
        })
        .await
        .expect("book a saga");
    assert_eq!(saga.outcome(), Outcome::Aborted, "sold out: {saga:?}");
    checker::wait_quiescent(&test.cluster.shard_database_urls(), Duration::from_secs(30))
        .await
        .expect("quiescence");
    let address = test
        .cluster
        .metrics_address(ProcessId::Coordinator)
        .expect("the coordinator has a metrics port");

    // The census gauges refresh every second: wait for them to settle.
    let mut samples = scrape(address).await;
    for _ in 0..50 {
        if samples.get("coordinator_in_doubt") == Some(&0.0)
            && samples.get("coordinator_known_transactions") == Some(&(COMMITTED as f64 + 1.0))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples = scrape(address).await;
    }
    let text = scrape_text(address).await;
    for histogram in [
        "coordinator_booking_seconds",
        "coordinator_phase_seconds",
        "coordinator_log_records_per_fsync",
        "coordinator_log_fsync_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram} is not a histogram:\n{text}"
        );
    }
    let committed = value(
        &samples,
        r#"coordinator_bookings_total{mode="two_phase",outcome="committed"}"#,
    );
    assert_eq!(committed, COMMITTED as f64, "{samples:?}");
    let saga_aborted = value(
        &samples,
        r#"coordinator_bookings_total{mode="saga",outcome="aborted"}"#,
    );
    assert_eq!(saga_aborted, 1.0);
    assert_eq!(
        value(&samples, r#"coordinator_phase_seconds_count{phase="prepare"}"#),
        COMMITTED as f64
    );
    assert_eq!(
        value(&samples, r#"coordinator_phase_seconds_count{phase="decide"}"#),
        COMMITTED as f64
    );
    assert!(value(&samples, r#"coordinator_phase_seconds_count{phase="deliver"}"#) >= COMMITTED as f64);
    assert!(value(&samples, r#"coordinator_phase_seconds_count{phase="saga_legs"}"#) >= 1.0);
    // Every COMMIT and ABORT is forced: at least one fsync per decision, and
    // each fsync covers at least one record.
    let fsyncs = value(&samples, "coordinator_log_records_per_fsync_count");
    let records = value(&samples, "coordinator_log_records_per_fsync_sum");
    assert!(fsyncs >= COMMITTED as f64 + 1.0, "{samples:?}");
    assert!(records >= fsyncs, "{samples:?}");
    assert!(value(&samples, "coordinator_log_fsync_seconds_sum") > 0.0);
    assert_eq!(value(&samples, "coordinator_in_doubt"), 0.0);
    assert_eq!(value(&samples, "coordinator_undecided"), 0.0);
    assert_eq!(value(&samples, "coordinator_inflight"), 0.0);
    assert_eq!(value(&samples, "coordinator_known_transactions"), COMMITTED as f64 + 1.0);
    assert_eq!(value(&samples, "coordinator_ready"), 1.0);
    assert!(value(&samples, "coordinator_log_bytes") > 0.0);

    // After a restart, the recovery figures describe the replay.
    test.cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart");
    let samples = scrape(address).await;
    let replayed = value(&samples, "coordinator_recovery_records");
    assert!(replayed >= 3.0 * COMMITTED as f64, "{samples:?}");
    assert_eq!(
        value(&samples, r#"coordinator_recovery_transactions{case="ended"}"#),
        COMMITTED as f64 + 1.0
    );
    assert!(value(&samples, "coordinator_recovery_seconds") > 0.0);
}

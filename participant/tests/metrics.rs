//! `/metrics` of a participant run in-process with `metrics_listen` (its
//! own test binary: the Prometheus recorder is process-wide, installed once):
//! request outcomes, error codes, and the in-doubt sweep's GetDecision
//! answers and resolutions against a fake coordinator.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use booking_proto::v1::participant_client::ParticipantClient;
use booking_proto::v1::{CreateFlightRequest, Decision, ListTxnsRequest, PrepareRequest, ShardLeg};
use common::{free_port, scrape, start_coordinator, FakeCoordinator};
use participant::Config;
use tokio::sync::oneshot;
use tonic::Code;

fn prepare(txid: &str, flight: &str) -> PrepareRequest {
    let leg = ShardLeg {
        leg_index: 0,
        flight_id: flight.into(),
        seat_count: 1,
        ..Default::default()
    };
    PrepareRequest {
        txid: txid.into(),
        legs: vec![leg],
        itinerary_legs: 1,
    }
}

/// Scrapes until `done` holds for the series, or 10 s pass.
async fn scrape_until(
    address: SocketAddr,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    for _ in 0..200 {
        let series = tokio::task::spawn_blocking(move || scrape(address))
            .await
            .expect("scrape task");
        if done(&series) {
            return series;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the series never got there: {:?}", scrape(address));
}

fn value(series: &HashMap<String, f64>, key: &str) -> f64 {
    *series
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing from {series:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_and_the_requests_are_counted() {
    let fake = FakeCoordinator::default();
    let coordinator = start_coordinator(fake.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/s0.db", dir.path().display());
    let metrics_address: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("an address");
    let mut config = Config::new("s0", &url, 1).expect("valid config");
    config.coordinator_url = Some(format!("http://{coordinator}"));
    config.in_doubt_after = Duration::from_millis(100);
    config.metrics_listen = Some(metrics_address);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(participant::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let mut client = ParticipantClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    client
        .create_flight(CreateFlightRequest {
            flight_id: "AB1".into(),
            rows: 2,
            letters: "AB".into(),
        })
        .await
        .expect("create flight");
    let txids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for txid in &txids {
        client.prepare(prepare(txid, "AB1")).await.expect("prepare");
    }
    let bad = ListTxnsRequest {
        txid: "nope".into(),
        ..Default::default()
    };
    let err = client.list_txns(bad).await.expect_err("not a UUID");
    assert_eq!(err.code(), Code::InvalidArgument);
    {
        let mut decisions = fake.decisions.lock().expect("not poisoned");
        decisions.insert(txids[0].clone(), Decision::Commit);
        decisions.insert(txids[1].clone(), Decision::Abort);
    }

    let series = scrape_until(metrics_address, |s| {
        s.get(r#"participant_in_doubt_resolved_total{decision="abort"}"#) == Some(&1.0)
            && s.get(r#"participant_in_doubt_resolved_total{decision="commit"}"#) == Some(&1.0)
            && s.get(r#"participant_get_decision_total{result="in_progress"}"#) >= Some(&1.0)
    })
    .await;
    assert_eq!(
        value(&series, "participant_prepared"),
        1.0,
        "the undecided one"
    );
    assert_eq!(
        value(
            &series,
            r#"participant_requests_total{rpc="prepare",outcome="yes"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &series,
            r#"participant_requests_total{rpc="list_txns",outcome="error"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &series,
            r#"participant_request_errors_total{rpc="list_txns",code="INVALID_ARGUMENT"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &series,
            r#"participant_get_decision_total{result="commit"}"#
        ),
        1.0
    );
    assert_eq!(
        value(&series, r#"participant_get_decision_total{result="error"}"#),
        0.0
    );
    // CREATE_FLIGHT, three PREPAREs, then the sweep's COMMIT and ABORT:
    // those two are applied together (one chunk of the sweep), so they may
    // share a local commit.
    assert!(
        value(&series, "participant_local_commits_total") >= 5.0,
        "{series:?}"
    );

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops within 10 s")
        .expect("task joins")
        .expect("run returns Ok");
    assert!(
        std::net::TcpStream::connect(metrics_address).is_err(),
        "/metrics stops with the participant"
    );
}

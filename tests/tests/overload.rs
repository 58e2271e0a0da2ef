//! DESIGN.md "Bad input and overload": the coordinator bounds the bookings
//! in flight and answers the excess at once with RESOURCE_EXHAUSTED and a
//! retry hint, writing nothing for it; the client library's throttle then
//! refuses most bookings itself instead of sending them, and lets go once
//! the coordinator admits again.
//!
//! Bookings are held in flight by slowing the link to one of their shards
//! (the harness's TCP proxy), with `inflight_max = 4`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use booking_client::checker::Oracle;
use booking_client::client::RETRY_AFTER_KEY;
use booking_client::{ClientError, ProcessId};
use booking_proto::v1::get_transaction_request::Key;
use booking_proto::v1::{BookRequest, GetTransactionRequest, Outcome};
use booking_tests::proxy::Proxy;
use booking_tests::*;
use tonic::Code;

const INFLIGHT_MAX: usize = 4;
/// Delay added to each chunk either way on the slowed link: a PREPARE and
/// its vote take twice this.
const SLOW: Duration = Duration::from_millis(2000);

fn with_key(template: &BookRequest, key: String) -> BookRequest {
    let mut request = template.clone();
    request.idempotency_key = key;
    request.timeout_ms = 20_000;
    for leg in &mut request.legs {
        leg.seat_count = 1;
    }
    request
}

async fn coordinator_samples(cluster: &booking_client::Cluster) -> HashMap<String, f64> {
    let address = cluster
        .metrics_address(ProcessId::Coordinator)
        .expect("the coordinator has a metrics port");
    metrics_scrape(address)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn series(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

const REFUSED: &str = r#"coordinator_rejected_total{reason="overloaded"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_excess_is_refused_at_once_with_a_hint_and_the_client_stops_sending_it() {
    init_tracing();
    let mut test = start_with(Db::Sqlite, |spec| {
        spec.coordinator_settings
            .push(("inflight_max".into(), INFLIGHT_MAX.to_string()));
    })
    .await;
    let cluster = &mut test.cluster;
    let template = two_shard_request(cluster, "OV", "unused").await;
    let slowed = cluster.shard_of(&template.legs[0].flight_id);
    let upstream = cluster
        .listening_address(ProcessId::Participant(slowed))
        .expect("the participant runs");
    let proxy = Proxy::start(upstream).await;
    cluster
        .set_shard_address(slowed, Some(&proxy.url()))
        .expect("route the shard through the proxy");
    cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart the coordinator on the proxied route");
    proxy.slow(SLOW);
    let client = cluster.client().await.expect("connect");
    let oracle = Arc::new(Oracle::new());

    tracing::info!("phase 1: fill the admission limit");
    let mut held = Vec::new();
    for n in 0..INFLIGHT_MAX {
        let request = with_key(&template, format!("held-{n}"));
        let mut raw = client.raw();
        held.push(tokio::spawn(async move {
            let reply = raw.book(request.clone()).await;
            (request, reply)
        }));
    }
    let mut inflight = 0.0;
    for _ in 0..100 {
        inflight = series(&coordinator_samples(cluster).await, "coordinator_inflight");
        if inflight == INFLIGHT_MAX as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(inflight, INFLIGHT_MAX as f64, "every held booking admitted");
    let refused_before = series(&coordinator_samples(cluster).await, REFUSED);

    tracing::info!("phase 2: bare stubs get RESOURCE_EXHAUSTED with a hint, at once");
    let mut raw = client.raw();
    let bare = 20;
    for n in 0..bare {
        let request = with_key(&template, format!("bare-{n}"));
        let status = raw.book(request).await.expect_err("over the limit");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("overloaded") && status.message().contains("retry after"),
            "{status:?}"
        );
        let hint = status
            .metadata()
            .get(RETRY_AFTER_KEY)
            .expect("a retry hint");
        assert!(
            hint.to_str().expect("ascii").parse::<u64>().is_ok(),
            "{hint:?}"
        );
    }
    assert!(
        held.iter().all(|task| !task.is_finished()),
        "the refusals came while every admitted booking was still held"
    );

    tracing::info!("phase 3: the client library's throttle refuses most bookings itself");
    let (mut sent_refused, mut throttled) = (0, 0);
    for n in 0..40 {
        let request = with_key(&template, format!("client-{n}"));
        match client.book(request).await {
            Err(error @ ClientError::Status { .. }) => {
                assert!(error.is_overload(), "{error}");
                assert!(error.retry_after().is_some(), "{error}");
                sent_refused += 1;
            }
            Err(error @ ClientError::Throttled { .. }) => {
                assert!(error.is_overload() && error.is_retryable(), "{error}");
                assert!(error.to_string().contains("not sent"), "{error}");
                throttled += 1;
            }
            other => panic!("booking {n} over the limit: {other:?}"),
        }
    }
    assert!(
        sent_refused >= 1 && throttled > 3 * sent_refused,
        "sent and refused {sent_refused}, refused by the client {throttled}"
    );
    let refused_after = series(&coordinator_samples(cluster).await, REFUSED);
    assert_eq!(
        refused_after - refused_before,
        f64::from(bare + sent_refused),
        "the coordinator saw every bare refusal and only the client's sent ones"
    );

    tracing::info!("phase 4: the held bookings commit; nothing was written for the refused");
    proxy.heal();
    for task in held {
        let (request, reply) = task.await.expect("held booking task");
        let reply = reply.expect("a held booking is answered").into_inner();
        assert_eq!(reply.outcome, Outcome::Committed as i32, "{reply:?}");
        oracle.record_reply(&request, reply);
    }
    for key in ["bare-0", "bare-19", "client-0", "client-39"] {
        let status = client
            .raw()
            .get_transaction(GetTransactionRequest {
                key: Some(Key::IdempotencyKey(key.into())),
            })
            .await
            .expect_err("a refused booking leaves no transaction");
        assert_eq!(status.code(), Code::NotFound, "{key}: {status:?}");
    }
    assert_invariants(cluster, &oracle).await;
    let booked = seats_booked(cluster).await;
    assert_eq!(
        booked,
        2 * INFLIGHT_MAX as i64,
        "one seat per leg per held booking"
    );

    tracing::info!("phase 5: once the window has passed, the client sends again");
    let window = client.throttle().expect("on by default").options().window;
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    let request = with_key(&template, "after".into());
    let reply = client.book(request.clone()).await.expect("admitted again");
    assert_eq!(reply.outcome, Outcome::Committed as i32, "{reply:?}");
    oracle.record_reply(&request, reply);
    assert_invariants(cluster, &oracle).await;
}

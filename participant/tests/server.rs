//! The participant served over real gRPC by `participant::run` on port 0:
//! the contract over the wire, health and reflection, the message size
//! limit, and the in-doubt sweep against a fake coordinator (DESIGN "Who may
//! decide what": a participant that voted YES waits and asks GetDecision).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use booking_proto::v1::participant_client::ParticipantClient;
use booking_proto::v1::{
    CreateFlightRequest, Decision, DecisionRequest, GetFlightRequest, PrepareRequest, ShardLeg,
};
use common::{start_coordinator, FakeCoordinator};
use participant::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

struct Running {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), participant::RunError>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn client(&self) -> ParticipantClient<Channel> {
        ParticipantClient::connect(format!("http://{}", self.address))
            .await
            .expect("connect")
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let ended = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        ended
            .expect("stops within 10 s")
            .expect("task joins")
            .expect("run returns Ok");
    }
}

async fn start(coordinator: Option<SocketAddr>, in_doubt_after_ms: u64) -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/s0.db", dir.path().display());
    let mut config = Config::new("s0", &url, 1).expect("valid config");
    config.coordinator_url = coordinator.map(|a| format!("http://{a}"));
    config.in_doubt_after = Duration::from_millis(in_doubt_after_ms);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready, is_ready) = oneshot::channel();
    let task = tokio::spawn(participant::run_with_ready(
        config,
        listener,
        async move {
            let _ = stopped.await;
        },
        move |address| {
            let _ = ready.send(address);
        },
    ));
    let address = is_ready.await.expect("the participant becomes ready");
    Running {
        address,
        stop,
        task,
        _dir: dir,
    }
}

fn prepare(txid: &str, flight: &str, seats: u32) -> PrepareRequest {
    let leg = ShardLeg {
        leg_index: 0,
        flight_id: flight.into(),
        seat_count: seats,
        ..Default::default()
    };
    PrepareRequest {
        txid: txid.into(),
        legs: vec![leg],
        itinerary_legs: 1,
    }
}

async fn create(client: &mut ParticipantClient<Channel>, flight: &str) {
    let request = CreateFlightRequest {
        flight_id: flight.into(),
        rows: 2,
        letters: "AB".into(),
    };
    client.create_flight(request).await.expect("create flight");
}

async fn seat_states(client: &mut ParticipantClient<Channel>, flight: &str) -> Vec<String> {
    let request = GetFlightRequest {
        flight_id: flight.into(),
        include_seats: true,
    };
    let inventory = client
        .get_flight(request)
        .await
        .expect("get flight")
        .into_inner();
    inventory.seats.into_iter().map(|s| s.state).collect()
}

#[tokio::test]
async fn serves_the_contract_health_and_reflection() {
    let running = start(None, 2000).await;
    let mut client = running.client().await;
    create(&mut client, "AB1").await;
    let txid = uuid::Uuid::new_v4().to_string();
    let vote = client
        .prepare(prepare(&txid, "AB1", 2))
        .await
        .expect("prepare")
        .into_inner();
    assert!(vote.yes);
    assert_eq!(vote.legs[0].seats, vec!["1A", "1B"]);
    client
        .commit(DecisionRequest { txid })
        .await
        .expect("commit");
    assert_eq!(
        seat_states(&mut client, "AB1").await,
        vec!["booked", "booked", "free", "free"]
    );

    let channel = Channel::from_shared(format!("http://{}", running.address))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let service = "booking.v1.Participant".to_string();
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        status.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let mut big = prepare(&uuid::Uuid::new_v4().to_string(), "AB1", 1);
    big.legs[0].passengers = vec!["x".repeat(70 * 1024)];
    let err = client.prepare(big).await.expect_err("oversized");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    running.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_participant_service() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let running = start(None, 2000).await;
    let channel = Channel::from_shared(format!("http://{}", running.address))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = replies.next().await.expect("one reply").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"booking.v1.Participant".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    running.stop().await;
}

/// Polls until the flight's seat states are `want`, or 5 s pass.
async fn eventually(client: &mut ParticipantClient<Channel>, flight: &str, want: &[&str]) {
    for _ in 0..100 {
        if seat_states(client, flight).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "seats of {flight} are {:?}, expected {want:?}",
        seat_states(client, flight).await
    );
}

#[tokio::test]
async fn in_doubt_txids_follow_the_coordinators_decision() {
    let fake = FakeCoordinator::default();
    let coordinator = start_coordinator(fake.clone()).await;
    let running = start(Some(coordinator), 100).await;
    let mut client = running.client().await;
    let (commit, abort, undecided) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    for (txid, flight) in [(&commit, "CM1"), (&abort, "AB1"), (&undecided, "UD1")] {
        create(&mut client, flight).await;
        client
            .prepare(prepare(txid, flight, 1))
            .await
            .expect("prepare");
    }
    {
        let mut decisions = fake.decisions.lock().expect("not poisoned");
        decisions.insert(commit.clone(), Decision::Commit);
        decisions.insert(abort.clone(), Decision::Abort);
    }
    eventually(&mut client, "CM1", &["booked", "free", "free", "free"]).await;
    eventually(&mut client, "AB1", &["free", "free", "free", "free"]).await;
    assert!(
        fake.asked
            .lock()
            .expect("not poisoned")
            .contains(&undecided),
        "the undecided txid was asked about"
    );
    assert_eq!(
        seat_states(&mut client, "UD1").await,
        vec!["held", "free", "free", "free"],
        "IN_PROGRESS keeps the hold"
    );
    running.stop().await;
}

#[tokio::test]
async fn an_unreachable_coordinator_leaves_the_hold_in_place() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let running = start(Some(closed), 100).await;
    let mut client = running.client().await;
    create(&mut client, "AB1").await;
    client
        .prepare(prepare(&uuid::Uuid::new_v4().to_string(), "AB1", 1))
        .await
        .expect("prepare");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        seat_states(&mut client, "AB1").await,
        vec!["held", "free", "free", "free"]
    );
    running.stop().await;
}

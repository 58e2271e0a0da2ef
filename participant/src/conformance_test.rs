//! The participant's conformance suite: every row of the RPC semantics,
//! driven through the gRPC handlers (validation, ownership, writer batching,
//! store), with the tables then read directly as the invariant checker does.
//!
//! Each case is a function of a `Harness`; the macro at the end runs the
//! suite on a temp SQLite file (one test per case), and on PostgreSQL (one
//! test running every case on a throwaway cluster, or on the database
//! `PARTICIPANT_TEST_POSTGRES_URL` names). Cases use fresh txids and flight
//! ids, so they can share one PostgreSQL database.

use booking_proto::limits::{DECISIONS_PER_CALL_MAX, RESERVATIONS_PER_CALL_MAX};
use booking_proto::routing::partition_of;
use booking_proto::v1::participant_server::Participant;
use booking_proto::v1::{
    AbortReason, CreateFlightRequest, DecideManyRequest, DecisionEntry, DecisionRequest,
    GetFlightRequest, ListTxnsRequest, PrepareRequest, ReserveEntry, ReserveManyRequest,
    ResolveRequest, ShardDecision, ShardLeg, ShardTxnState, Vote,
};
use rand::Rng;
use sqlx::Row;
use tokio::task::JoinSet;
use tonic::{Code, Request, Status};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::op::{Op, Reply};
use crate::service::ParticipantService;
use crate::shard::Shard;
use crate::store::Store;
use crate::writer::Writers;

/// P of the suite; the shard owns partition 0 only.
const PARTITIONS: u32 = 2;

pub(crate) struct Harness {
    service: ParticipantService,
    store: Store,
    /// The service's metrics, recorded here only (not process-wide).
    recorder: metrics_exporter_prometheus::PrometheusRecorder,
    _tasks: JoinSet<Result<(), String>>,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/s0.db", dir.path().display());
        Harness::open(&url, Some(dir)).await
    }

    async fn open(url: &str, dir: Option<tempfile::TempDir>) -> Harness {
        let mut config = Config::new("s0", url, PARTITIONS).expect("valid config");
        config.owned_partitions = [0].into();
        if config.backend == crate::config::Backend::Postgres {
            // Several lanes, as `--writers 4` runs them: concurrent local
            // transactions pick seats past each other's locks (SKIP LOCKED).
            config.writers = 4;
        }
        let store = Store::open(&config).await.expect("open store");
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = metrics::with_local_recorder(&recorder, Metrics::register);
        metrics.set_prepared(store.count_prepared().await.expect("count prepared"));
        let mut tasks = JoinSet::new();
        let writers = Writers::start(store.clone(), config.writers, metrics.clone(), &mut tasks);
        let shard = Shard {
            name: config.name.clone(),
            partitions: PARTITIONS,
            owned: config.owned_partitions.clone(),
        };
        let service = ParticipantService::new(shard, writers, store.clone(), metrics);
        Harness {
            service,
            store,
            recorder,
            _tasks: tasks,
            _dir: dir,
        }
    }

    /// The value of one rendered series, e.g.
    /// `participant_requests_total{rpc="prepare",outcome="yes"}`; 0 if absent.
    fn metric(&self, series: &str) -> f64 {
        let text = self.recorder.handle().render();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |value| value.parse().expect("a number"))
    }

    /// Creates a fresh flight this shard owns.
    async fn flight(&self, rows: u32, letters: &str) -> String {
        let id = flight_id_in(0);
        let request = CreateFlightRequest {
            flight_id: id.clone(),
            rows,
            letters: letters.into(),
        };
        self.service
            .create_flight(Request::new(request))
            .await
            .expect("flight created");
        id
    }

    async fn prepare(&self, txid: &str, legs: Vec<ShardLeg>) -> Result<Vote, Status> {
        let itinerary_legs = legs.iter().map(|l| l.leg_index + 1).max().unwrap_or(0);
        let request = PrepareRequest {
            txid: txid.into(),
            legs,
            itinerary_legs,
        };
        self.service
            .prepare(Request::new(request))
            .await
            .map(|r| r.into_inner())
    }

    async fn book_local(&self, txid: &str, legs: Vec<ShardLeg>) -> Result<Vote, Status> {
        let itinerary_legs = legs.iter().map(|l| l.leg_index + 1).max().unwrap_or(0);
        let request = PrepareRequest {
            txid: txid.into(),
            legs,
            itinerary_legs,
        };
        self.service
            .book_local(Request::new(request))
            .await
            .map(|r| r.into_inner())
    }

    async fn commit(&self, txid: &str) -> Result<ShardTxnState, Status> {
        let reply = self
            .service
            .commit(Request::new(DecisionRequest { txid: txid.into() }))
            .await?;
        Ok(reply.into_inner().state())
    }

    async fn abort(&self, txid: &str) -> Result<ShardTxnState, Status> {
        let reply = self
            .service
            .abort(Request::new(DecisionRequest { txid: txid.into() }))
            .await?;
        Ok(reply.into_inner().state())
    }

    async fn compensate(&self, txid: &str) -> Result<ShardTxnState, Status> {
        let reply = self
            .service
            .compensate(Request::new(DecisionRequest { txid: txid.into() }))
            .await?;
        Ok(reply.into_inner().state())
    }

    /// DecideMany of `entries`; per entry, the ack's state or the error's
    /// code and message.
    async fn decide_many(
        &self,
        entries: &[(&str, ShardDecision)],
    ) -> Result<Vec<Result<ShardTxnState, (Code, String)>>, Status> {
        let request = DecideManyRequest {
            entries: entries
                .iter()
                .map(|(txid, decision)| DecisionEntry {
                    txid: (*txid).into(),
                    decision: *decision as i32,
                })
                .collect(),
        };
        let reply = self.service.decide_many(Request::new(request)).await?;
        Ok(reply
            .into_inner()
            .results
            .into_iter()
            .map(|r| match Code::from_i32(r.code) {
                Code::Ok => Ok(r.ack.expect("an OK result carries its ack").state()),
                code => Err((code, r.message)),
            })
            .collect())
    }

    /// (seat_no, state, txid, passenger) of every seat, in seat_index order.
    async fn seats(
        &self,
        flight_id: &str,
    ) -> Vec<(String, String, Option<String>, Option<String>)> {
        let rows = sqlx::query(
            "SELECT seat_no, state, txid, passenger FROM seats WHERE flight_id = $1 ORDER BY seat_index",
        )
        .bind(flight_id)
        .fetch_all(self.store.pool())
        .await
        .expect("read seats");
        rows.iter()
            .map(|r| {
                (
                    r.get("seat_no"),
                    r.get("state"),
                    r.get("txid"),
                    r.get("passenger"),
                )
            })
            .collect()
    }

    /// Seat numbers of the flight in `state`.
    async fn seats_in(&self, flight_id: &str, state: &str) -> Vec<String> {
        self.seats(flight_id)
            .await
            .into_iter()
            .filter(|s| s.1 == state)
            .map(|s| s.0)
            .collect()
    }

    /// (state, kind, itinerary_legs, legs, refusal) of the txid's row.
    async fn txn(&self, txid: &str) -> Option<(String, String, i64, String, Option<String>)> {
        let row = sqlx::query(
            "SELECT state, kind, itinerary_legs, legs, refusal FROM txns WHERE txid = $1",
        )
        .bind(txid)
        .fetch_optional(self.store.pool())
        .await
        .expect("read txns");
        row.map(|r| {
            (
                r.get("state"),
                r.get("kind"),
                r.get("itinerary_legs"),
                r.get("legs"),
                r.get("refusal"),
            )
        })
    }
}

/// A fresh flight id in `partition`.
fn flight_id_in(partition: u32) -> String {
    let mut rng = rand::thread_rng();
    loop {
        let id = format!("T{:08X}", rng.gen::<u32>());
        if partition_of(&id, PARTITIONS) == partition {
            return id;
        }
    }
}

fn new_txid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn count_leg(leg_index: u32, flight_id: &str, seat_count: u32) -> ShardLeg {
    ShardLeg {
        leg_index,
        flight_id: flight_id.into(),
        seat_count,
        ..Default::default()
    }
}

fn named_leg(leg_index: u32, flight_id: &str, seats: &[&str]) -> ShardLeg {
    ShardLeg {
        leg_index,
        flight_id: flight_id.into(),
        seats: seats.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn yes_seats(vote: &Vote) -> Vec<Vec<String>> {
    assert!(vote.yes, "expected YES, got {vote:?}");
    vote.legs.iter().map(|leg| leg.seats.clone()).collect()
}

fn refusal(vote: &Vote) -> (AbortReason, u32, String, String) {
    assert!(
        !vote.yes && vote.legs.is_empty(),
        "expected NO, got {vote:?}"
    );
    let detail = vote.refusal.clone().expect("a NO carries its reason");
    (
        detail.reason(),
        detail.leg_index,
        detail.flight_id,
        detail.message,
    )
}

// DESIGN "Two-phase commit" 1 and 5: prepare holds durably, commit books.
async fn prepare_then_commit_books_the_held_seats(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let txid = new_txid();
    let mut leg = count_leg(1, &flight, 2);
    leg.passengers = vec!["Ada".into(), "Bob".into()];
    let vote = h.prepare(&txid, vec![leg]).await.expect("prepare");
    assert_eq!(yes_seats(&vote), vec![vec!["1A", "1B"]]);
    assert_eq!(
        (vote.legs[0].leg_index, vote.legs[0].shard.as_str()),
        (1, "s0")
    );
    let seats = h.seats(&flight).await;
    assert_eq!(
        seats[0],
        (
            "1A".into(),
            "held".into(),
            Some(txid.clone()),
            Some("Ada".into())
        )
    );
    assert_eq!(
        seats[1],
        (
            "1B".into(),
            "held".into(),
            Some(txid.clone()),
            Some("Bob".into())
        )
    );
    let legs_json = format!(r#"[{{"leg_index":1,"flight_id":"{flight}","seats":["1A","1B"]}}]"#);
    assert_eq!(
        h.txn(&txid).await,
        Some(("prepared".into(), "2pc".into(), 2, legs_json.clone(), None))
    );

    assert_eq!(
        h.commit(&txid).await.expect("commit"),
        ShardTxnState::ShardCommitted
    );
    assert_eq!(h.seats_in(&flight, "booked").await, vec!["1A", "1B"]);
    assert_eq!(
        h.txn(&txid).await,
        Some(("committed".into(), "2pc".into(), 2, legs_json, None))
    );
    assert_eq!(
        h.commit(&txid).await.expect("repeated commit"),
        ShardTxnState::ShardCommitted
    );
    let again = h
        .prepare(&txid, vec![count_leg(1, &flight, 2)])
        .await
        .expect("late prepare");
    assert_eq!(
        yes_seats(&again),
        vec![vec!["1A", "1B"]],
        "a late PREPARE of a committed txid gets the same YES"
    );
}

// DESIGN "Who may decide what": an ABORT releases the holds; a late PREPARE is fenced.
async fn prepare_then_abort_releases_the_seats(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let txid = new_txid();
    h.prepare(&txid, vec![count_leg(0, &flight, 3)])
        .await
        .expect("prepare");
    assert_eq!(
        h.abort(&txid).await.expect("abort"),
        ShardTxnState::ShardAborted
    );
    assert!(h
        .seats(&flight)
        .await
        .iter()
        .all(|s| s.1 == "free" && s.2.is_none() && s.3.is_none()));
    assert_eq!(h.txn(&txid).await.expect("row").0, "aborted");
    assert_eq!(
        h.abort(&txid).await.expect("repeated abort"),
        ShardTxnState::ShardAborted
    );
    let late = h
        .prepare(&txid, vec![count_leg(0, &flight, 3)])
        .await
        .expect("late prepare");
    assert_eq!(refusal(&late).0, AbortReason::Fenced);
    assert_eq!(h.seats_in(&flight, "free").await.len(), 4);
}

// DESIGN "Fences": an ABORT before the PREPARE is recorded; the PREPARE is refused.
async fn abort_before_prepare_fences_the_txid(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let txid = new_txid();
    assert_eq!(
        h.abort(&txid).await.expect("abort"),
        ShardTxnState::ShardAborted
    );
    assert_eq!(
        h.txn(&txid).await,
        Some(("aborted".into(), "2pc".into(), 0, "[]".into(), None))
    );
    let late = h
        .prepare(&txid, vec![count_leg(0, &flight, 1)])
        .await
        .expect("late prepare");
    let (reason, leg_index, flight_id, message) = refusal(&late);
    assert_eq!(
        (reason, leg_index, flight_id),
        (AbortReason::Fenced, 0, flight.clone())
    );
    assert!(message.contains(&txid), "{message}");
    assert_eq!(
        h.seats_in(&flight, "free").await.len(),
        4,
        "a fenced PREPARE holds nothing"
    );
}

// DESIGN "Every message is idempotent": a repeated PREPARE returns the same vote.
async fn repeated_prepare_returns_the_same_vote(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let (yes, no) = (new_txid(), new_txid());
    let first = h
        .prepare(&yes, vec![count_leg(0, &flight, 2)])
        .await
        .expect("prepare");
    let again = h
        .prepare(&yes, vec![count_leg(0, &flight, 2)])
        .await
        .expect("repeat");
    assert_eq!(first, again);
    assert_eq!(
        h.seats_in(&flight, "held").await.len(),
        2,
        "the repeat held nothing more"
    );
    let first_no = h
        .prepare(&no, vec![count_leg(0, &flight, 3)])
        .await
        .expect("prepare");
    h.abort(&yes).await.expect("abort frees seats");
    let again_no = h
        .prepare(&no, vec![count_leg(0, &flight, 3)])
        .await
        .expect("repeat");
    assert_eq!(
        first_no, again_no,
        "a NO stays NO, with its reason, even once seats are free"
    );
    assert_eq!(refusal(&again_no).0, AbortReason::SoldOut);
}

// DESIGN "Fences": a COMMIT for an aborted txid is a loud error, never applied.
async fn commit_after_abort_is_a_protocol_violation(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let txid = new_txid();
    h.prepare(&txid, vec![count_leg(0, &flight, 1)])
        .await
        .expect("prepare");
    h.abort(&txid).await.expect("abort");
    let err = h.commit(&txid).await.expect_err("commit after abort");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!("protocol violation: COMMIT for aborted txid {txid}")
    );
    assert_eq!(h.seats_in(&flight, "free").await.len(), 4);
    let unknown = new_txid();
    let err = h.commit(&unknown).await.expect_err("commit of unknown");
    assert_eq!(
        err.message(),
        format!("protocol violation: COMMIT for unknown txid {unknown}")
    );
    assert_eq!(
        h.txn(&unknown).await,
        None,
        "a refused COMMIT writes nothing"
    );
    let committed = new_txid();
    h.prepare(&committed, vec![count_leg(0, &flight, 1)])
        .await
        .expect("prepare");
    h.commit(&committed).await.expect("commit");
    let err = h.abort(&committed).await.expect_err("abort after commit");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(h.seats_in(&flight, "booked").await, vec!["1A"]);
}

// DESIGN "Two-phase commit" 1: if it cannot, it votes NO and keeps nothing.
async fn sold_out_leaves_nothing_held(h: &Harness) {
    let (roomy, full) = (h.flight(3, "AB").await, h.flight(1, "AB").await);
    let txid = new_txid();
    let vote = h
        .prepare(&txid, vec![count_leg(0, &roomy, 2), count_leg(1, &full, 3)])
        .await
        .expect("prepare");
    let (reason, leg_index, flight_id, message) = refusal(&vote);
    assert_eq!(
        (reason, leg_index, flight_id.as_str()),
        (AbortReason::SoldOut, 1, full.as_str())
    );
    assert_eq!(
        message,
        format!("flight {full} has 2 free seats, leg asks for 3")
    );
    assert!(
        h.seats_in(&roomy, "held").await.is_empty(),
        "the first leg's seats were not held"
    );
    let (state, kind, itinerary_legs, legs, stored) = h.txn(&txid).await.expect("a NO is recorded");
    assert_eq!(
        (state.as_str(), kind.as_str(), itinerary_legs, legs.as_str()),
        ("aborted", "2pc", 0, "[]")
    );
    assert!(stored
        .expect("refusal JSON")
        .contains(r#""reason":"SOLD_OUT""#));
}

// Explicit seats: exactly those, in the order asked.
async fn explicit_seats_are_held_as_named(h: &Harness) {
    let flight = h.flight(3, "ABC").await;
    let txid = new_txid();
    let vote = h
        .prepare(&txid, vec![named_leg(0, &flight, &["3C", "1B"])])
        .await
        .expect("prepare");
    assert_eq!(yes_seats(&vote), vec![vec!["3C", "1B"]]);
    assert_eq!(h.seats_in(&flight, "held").await, vec!["1B", "3C"]);
}

async fn a_taken_or_missing_seat_is_refused(h: &Harness) {
    let flight = h.flight(30, "ABCDEF").await;
    let first = new_txid();
    h.prepare(&first, vec![named_leg(0, &flight, &["1A"])])
        .await
        .expect("prepare");
    let vote = h
        .prepare(&new_txid(), vec![named_leg(0, &flight, &["2A", "1A"])])
        .await
        .expect("prepare");
    let (reason, _, _, message) = refusal(&vote);
    assert_eq!(reason, AbortReason::SeatTaken);
    assert!(message.contains("seat 1A"), "{message}");
    let vote = h
        .prepare(&new_txid(), vec![named_leg(0, &flight, &["40K"])])
        .await
        .expect("prepare");
    let (reason, _, _, message) = refusal(&vote);
    assert_eq!(reason, AbortReason::SeatTaken);
    assert_eq!(
        message,
        format!("seat 40K does not exist on flight {flight} (rows 1-30, letters ABCDEF)")
    );
    assert_eq!(
        h.seats_in(&flight, "held").await,
        vec!["1A"],
        "2A was not held by the refused vote"
    );
}

async fn an_unknown_flight_is_a_no_vote(h: &Harness) {
    let missing = flight_id_in(0);
    let vote = h
        .prepare(&new_txid(), vec![count_leg(0, &missing, 1)])
        .await
        .expect("prepare");
    let (reason, _, flight_id, _) = refusal(&vote);
    assert_eq!((reason, flight_id), (AbortReason::UnknownFlight, missing));
}

// DESIGN "Single-shard itineraries skip the protocol": one local commit, idempotent by txid.
async fn book_local_is_idempotent(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let txid = new_txid();
    let vote = h
        .book_local(&txid, vec![count_leg(0, &flight, 2)])
        .await
        .expect("book");
    assert_eq!(yes_seats(&vote), vec![vec!["1A", "1B"]]);
    assert_eq!(h.seats_in(&flight, "booked").await, vec!["1A", "1B"]);
    assert_eq!(h.txn(&txid).await.expect("row").0, "committed");
    assert_eq!(h.txn(&txid).await.expect("row").1, "local");
    assert_eq!(
        h.book_local(&txid, vec![count_leg(0, &flight, 2)])
            .await
            .expect("repeat"),
        vote
    );
    assert_eq!(h.seats_in(&flight, "booked").await.len(), 2);
    assert_eq!(
        h.commit(&txid)
            .await
            .expect_err("commit of a local txid")
            .code(),
        Code::FailedPrecondition
    );
    let prepared = new_txid();
    h.prepare(&prepared, vec![count_leg(0, &flight, 1)])
        .await
        .expect("prepare");
    let err = h
        .book_local(&prepared, vec![count_leg(0, &flight, 1)])
        .await
        .expect_err("book_local of prepared");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let no = new_txid();
    let first = h
        .book_local(&no, vec![count_leg(0, &flight, 5)])
        .await
        .expect("book");
    assert_eq!(refusal(&first).0, AbortReason::SoldOut);
    assert_eq!(
        h.book_local(&no, vec![count_leg(0, &flight, 5)])
            .await
            .expect("repeat"),
        first
    );
}

// DESIGN "Recovery after a coordinator crash": Resolve fences an unknown txid first.
async fn resolve_fences_an_unknown_txid(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let unknown = new_txid();
    let reply = h
        .service
        .resolve(Request::new(ResolveRequest {
            txid: unknown.clone(),
        }))
        .await
        .expect("resolve");
    assert_eq!(reply.get_ref().state(), ShardTxnState::ShardAborted);
    assert_eq!(
        h.txn(&unknown).await,
        Some(("aborted".into(), "local".into(), 0, "[]".into(), None))
    );
    let late = h
        .book_local(&unknown, vec![count_leg(0, &flight, 1)])
        .await
        .expect("late book");
    assert_eq!(refusal(&late).0, AbortReason::Fenced);
    let booked = new_txid();
    h.book_local(&booked, vec![count_leg(0, &flight, 1)])
        .await
        .expect("book");
    let reply = h
        .service
        .resolve(Request::new(ResolveRequest { txid: booked }))
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(
        (reply.state(), reply.legs[0].seats.clone()),
        (ShardTxnState::ShardCommitted, vec!["1A".to_string()])
    );
    let refused = new_txid();
    h.book_local(&refused, vec![count_leg(0, &flight, 9)])
        .await
        .expect("book");
    let reply = h
        .service
        .resolve(Request::new(ResolveRequest { txid: refused }))
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(
        reply.refusal.expect("the NO vote's reason").reason(),
        AbortReason::SoldOut
    );
}

// DESIGN "Saga mode": compensation is idempotent and fences a booking that never arrived.
async fn compensate_releases_and_fences_a_late_booking(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let booked = new_txid();
    h.book_local(&booked, vec![count_leg(0, &flight, 2)])
        .await
        .expect("book");
    assert_eq!(
        h.compensate(&booked).await.expect("compensate"),
        ShardTxnState::ShardAborted
    );
    assert_eq!(h.seats_in(&flight, "free").await.len(), 4);
    assert_eq!(
        h.compensate(&booked).await.expect("repeat"),
        ShardTxnState::ShardAborted
    );
    let early = new_txid();
    assert_eq!(
        h.compensate(&early).await.expect("compensate first"),
        ShardTxnState::ShardAborted
    );
    let late = h
        .book_local(&early, vec![count_leg(0, &flight, 1)])
        .await
        .expect("late book");
    assert_eq!(refusal(&late).0, AbortReason::Fenced);
    assert_eq!(h.seats_in(&flight, "free").await.len(), 4);
    let prepared = new_txid();
    h.prepare(&prepared, vec![count_leg(0, &flight, 1)])
        .await
        .expect("prepare");
    assert_eq!(
        h.compensate(&prepared)
            .await
            .expect_err("compensate prepared")
            .code(),
        Code::FailedPrecondition
    );
    assert_eq!(h.seats_in(&flight, "held").await.len(), 1);
}

// DESIGN "Routing": a participant refuses a leg for a flight it does not own.
async fn a_flight_of_another_shard_is_refused(h: &Harness) {
    let (mine, theirs) = (h.flight(2, "AB").await, flight_id_in(1));
    let txid = new_txid();
    let err = h
        .prepare(
            &txid,
            vec![count_leg(0, &mine, 1), count_leg(1, &theirs, 1)],
        )
        .await
        .expect_err("not owned");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        format!("flight {theirs} is in partition 1, which shard s0 does not own")
    );
    assert_eq!(h.txn(&txid).await, None, "nothing written");
    assert!(h.seats_in(&mine, "held").await.is_empty());
    let create = CreateFlightRequest {
        flight_id: theirs,
        rows: 1,
        letters: "A".into(),
    };
    let err = h
        .service
        .create_flight(Request::new(create))
        .await
        .expect_err("not owned");
    assert_eq!(err.code(), Code::FailedPrecondition);
}

async fn flights_are_created_once_and_read_back(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let same = CreateFlightRequest {
        flight_id: flight.clone(),
        rows: 2,
        letters: "AB".into(),
    };
    h.prepare(&new_txid(), vec![count_leg(0, &flight, 1)])
        .await
        .expect("prepare");
    let again = h
        .service
        .create_flight(Request::new(same))
        .await
        .expect("idempotent")
        .into_inner();
    assert_eq!(
        (again.capacity, again.free, again.held, again.booked),
        (4, 3, 1, 0)
    );
    let other = CreateFlightRequest {
        flight_id: flight.clone(),
        rows: 3,
        letters: "AB".into(),
    };
    let err = h
        .service
        .create_flight(Request::new(other))
        .await
        .expect_err("different map");
    assert_eq!(err.code(), Code::AlreadyExists);
    let read = GetFlightRequest {
        flight_id: flight.clone(),
        include_seats: true,
    };
    let inventory = h
        .service
        .get_flight(Request::new(read))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(inventory.seats.len(), 4);
    assert_eq!(
        (
            inventory.seats[0].seat_no.as_str(),
            inventory.seats[0].state.as_str()
        ),
        ("1A", "held")
    );
    let missing = GetFlightRequest {
        flight_id: flight_id_in(0),
        include_seats: false,
    };
    assert_eq!(
        h.service
            .get_flight(Request::new(missing))
            .await
            .expect_err("unknown")
            .code(),
        Code::NotFound
    );
    let seat_index: Vec<i64> =
        sqlx::query_scalar("SELECT seat_index FROM seats WHERE flight_id = $1 ORDER BY seat_no")
            .bind(&flight)
            .fetch_all(h.store.pool())
            .await
            .expect("read");
    assert_eq!(seat_index, vec![0, 1, 2, 3], "1A 1B 2A 2B are row-major");
}

async fn list_txns_shows_prepared_ones(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let (prepared, committed) = (new_txid(), new_txid());
    h.prepare(&prepared, vec![count_leg(0, &flight, 1)])
        .await
        .expect("prepare");
    h.book_local(&committed, vec![count_leg(0, &flight, 1)])
        .await
        .expect("book");
    let only = ListTxnsRequest {
        prepared_only: true,
        limit: 1000,
        txid: String::new(),
    };
    let rows = h
        .service
        .list_txns(Request::new(only))
        .await
        .expect("list")
        .into_inner()
        .txns;
    assert!(rows
        .iter()
        .any(|r| r.txid == prepared && r.state() == ShardTxnState::Prepared));
    assert!(rows.iter().all(|r| r.state() == ShardTxnState::Prepared));
    let all = ListTxnsRequest {
        prepared_only: false,
        limit: 2,
        txid: String::new(),
    };
    let rows = h
        .service
        .list_txns(Request::new(all))
        .await
        .expect("list")
        .into_inner()
        .txns;
    assert_eq!(rows.len(), 2);
}

/// The operator's one-txid view (`inspect show --live`): only that row,
/// nothing for a txid never seen, INVALID_ARGUMENT for a malformed one.
async fn list_txns_filters_by_txid(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let (prepared, booked, unknown) = (new_txid(), new_txid(), new_txid());
    h.prepare(&prepared, vec![count_leg(0, &flight, 1)])
        .await
        .expect("prepare");
    h.book_local(&booked, vec![count_leg(0, &flight, 1)])
        .await
        .expect("book");
    let list = |txid: &str, prepared_only: bool| {
        let request = ListTxnsRequest {
            prepared_only,
            limit: 0,
            txid: txid.into(),
        };
        h.service.list_txns(Request::new(request))
    };
    let rows = list(&booked, false).await.expect("list").into_inner().txns;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].txid.as_str(), rows[0].state()),
        (booked.as_str(), ShardTxnState::ShardCommitted)
    );
    assert!(rows[0].updated_at_unix_ms > 0);
    let upper = list(&prepared.to_uppercase(), false)
        .await
        .expect("list")
        .into_inner()
        .txns;
    assert_eq!(
        upper.iter().map(|r| r.txid.as_str()).collect::<Vec<_>>(),
        [prepared.as_str()],
        "a txid is found in any case"
    );
    let filters_combine = list(&booked, true).await.expect("list").into_inner().txns;
    assert!(filters_combine.is_empty(), "{filters_combine:?}");
    let none = list(&unknown, false).await.expect("list").into_inner().txns;
    assert!(none.is_empty(), "{none:?}");
    assert!(h.txn(&unknown).await.is_none(), "listing fences nothing");
    let err = list("not-a-uuid", false).await.expect_err("bad txid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("txid:") && err.message().contains("not a UUID"),
        "{}",
        err.message()
    );
}

/// The service's series move with its answers: votes by outcome, local
/// commits, and the prepared gauge up on a fresh YES and down on decisions.
async fn metrics_follow_votes_and_holds(h: &Harness) {
    let flight = h.flight(1, "AB").await;
    let yes = r#"participant_requests_total{rpc="prepare",outcome="yes"}"#;
    let no = r#"participant_requests_total{rpc="prepare",outcome="no"}"#;
    let before = h.metric("participant_prepared");
    let commits = h.metric("participant_local_commits_total");
    let (first, second, third) = (new_txid(), new_txid(), new_txid());
    for txid in [&first, &second] {
        h.prepare(txid, vec![count_leg(0, &flight, 1)])
            .await
            .expect("prepare");
    }
    h.prepare(&first, vec![count_leg(0, &flight, 1)])
        .await
        .expect("a repeat");
    let sold_out = h
        .prepare(&third, vec![count_leg(0, &flight, 1)])
        .await
        .expect("a NO");
    assert!(!sold_out.yes);
    assert_eq!((h.metric(yes), h.metric(no)), (3.0, 1.0));
    assert_eq!(
        h.metric("participant_prepared"),
        before + 2.0,
        "a repeat holds nothing new"
    );
    h.commit(&first).await.expect("commit");
    h.abort(&second).await.expect("abort");
    h.commit(&third).await.expect_err("a violation");
    assert_eq!(h.metric("participant_prepared"), before);
    assert_eq!(
        h.metric(r#"participant_requests_total{rpc="commit",outcome="error"}"#),
        1.0
    );
    assert!(h.metric("participant_local_commits_total") >= commits + 6.0);
    assert!(h.metric("participant_batch_txids_count") >= 6.0);
    assert!(h.metric(r#"participant_request_seconds_count{rpc="prepare"}"#) >= 4.0);
}

// DESIGN "Bad input and overload": clear statuses, nothing half-written.
async fn bad_requests_are_refused_whole(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let err = h
        .prepare("not-a-uuid", vec![count_leg(0, &flight, 1)])
        .await
        .expect_err("bad txid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("txid:"), "{}", err.message());
    let err = h
        .prepare(&new_txid(), vec![count_leg(0, &flight, 0)])
        .await
        .expect_err("no seats");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = h.commit("").await.expect_err("empty txid");
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut huge = count_leg(0, &flight, 1);
    huge.passengers = vec!["x".repeat(1000); 100];
    let err = h
        .prepare(&new_txid(), vec![huge])
        .await
        .expect_err("oversized");
    assert_eq!(err.code(), Code::ResourceExhausted);
    let bad_map = CreateFlightRequest {
        flight_id: flight_id_in(0),
        rows: 0,
        letters: "AB".into(),
    };
    assert_eq!(
        h.service
            .create_flight(Request::new(bad_map))
            .await
            .expect_err("rows 0")
            .code(),
        Code::InvalidArgument
    );
    assert!(h.seats(&flight).await.iter().all(|s| s.1 == "free"));
}

// DESIGN invariant 1 under concurrency: through the batching writers, no seat
// is held twice and the flight is not oversold.
async fn concurrent_prepares_never_oversell(h: &Harness) {
    let flight = h.flight(10, "ABCDE").await;
    let calls = (0..120).map(|i| {
        let leg = if i % 3 == 0 {
            named_leg(0, &flight, &["1A"])
        } else {
            count_leg(0, &flight, 1)
        };
        h.prepare_owned(new_txid(), vec![leg])
    });
    let votes = futures::future::join_all(calls).await;
    let yes: Vec<String> = votes
        .iter()
        .map(|v| v.as_ref().expect("every call answered"))
        .filter(|v| v.yes)
        .flat_map(|v| v.legs[0].seats.clone())
        .collect();
    let mut distinct = yes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), yes.len(), "a seat was granted twice");
    assert_eq!(yes.len(), 50, "every seat sold, none oversold");
    let held = h.seats_in(&flight, "held").await;
    assert_eq!(held.len(), 50);
}

impl Harness {
    async fn prepare_owned(&self, txid: String, legs: Vec<ShardLeg>) -> Result<Vote, Status> {
        self.prepare(&txid, legs).await
    }
}

/// The batch API directly: a NO op between two YES ops.
async fn a_batch_with_a_no_in_the_middle_keeps_the_others(h: &Harness) {
    let flight = h.flight(1, "AB").await;
    let leg = |count| count_leg(0, &flight, count);
    let booking = |count| {
        let request = PrepareRequest {
            txid: new_txid(),
            legs: vec![leg(count)],
            itinerary_legs: 1,
        };
        crate::request::Booking::try_from(request).expect("valid")
    };
    let (first, middle, last) = (booking(1), booking(5), booking(1));
    let ops = [
        Op::Prepare(first.clone()),
        Op::Prepare(middle.clone()),
        Op::BookLocal(last.clone()),
    ];
    let results = h.store.apply_batch(&ops).await.expect("batch").results;
    assert!(
        matches!(&results[0], Ok(Reply::Vote(crate::op::Vote::Yes(_)))),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Ok(Reply::Vote(crate::op::Vote::No(_)))),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[2], Ok(Reply::Vote(crate::op::Vote::Yes(_)))),
        "{:?}",
        results[2]
    );
    let seats = h.seats(&flight).await;
    assert_eq!(seats[0].2.as_deref(), Some(first.txid.as_str()));
    assert_eq!(
        (seats[1].1.as_str(), seats[1].2.as_deref()),
        ("booked", Some(last.txid.as_str()))
    );
    assert_eq!(
        h.txn(middle.txid.as_str()).await.expect("fenced").0,
        "aborted"
    );
}

// DESIGN "Inventory on a shard": an acknowledged local commit is on disk.
async fn every_connection_commits_durably(h: &Harness) {
    let mut conn = h.store.pool().acquire().await.expect("connection");
    match h.store.backend() {
        crate::config::Backend::Sqlite => {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await
                .expect("pragma");
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .expect("pragma");
            assert_eq!(
                (mode.as_str(), sync),
                ("wal", 2),
                "WAL with synchronous=FULL"
            );
        }
        crate::config::Backend::Postgres => {
            let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(&mut *conn)
                .await
                .expect("show");
            assert_eq!(sync, "on");
        }
    }
}

// DecideMany: each entry is applied and answered as its own Commit, Abort
// or Compensate would be, in order; one refused entry leaves the others.
async fn decide_many_answers_each_entry_as_its_own_call(h: &Harness) {
    let flight = h.flight(2, "AB").await;
    let (commit, abort, fence, violation, saga) =
        (new_txid(), new_txid(), new_txid(), new_txid(), new_txid());
    h.prepare(&commit, vec![count_leg(0, &flight, 1)])
        .await
        .expect("prepare");
    h.prepare(&abort, vec![count_leg(0, &flight, 1)])
        .await
        .expect("prepare");
    h.abort(&violation).await.expect("fence");
    let booked = h
        .book_local(&saga, vec![count_leg(0, &flight, 1)])
        .await
        .expect("book");
    assert!(booked.yes);
    let results = h
        .decide_many(&[
            (&commit, ShardDecision::ShardCommit),
            (&abort, ShardDecision::ShardAbort),
            (&fence, ShardDecision::ShardAbort),
            (&violation, ShardDecision::ShardCommit),
            (&saga, ShardDecision::ShardCompensate),
            (&commit, ShardDecision::ShardCommit),
        ])
        .await
        .expect("a well-formed call");
    assert_eq!(results.len(), 6, "{results:?}");
    assert_eq!(results[0], Ok(ShardTxnState::ShardCommitted));
    assert_eq!(results[1], Ok(ShardTxnState::ShardAborted));
    assert_eq!(results[2], Ok(ShardTxnState::ShardAborted));
    let (code, message) = results[3].clone().expect_err("COMMIT of an aborted txid");
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert_eq!(results[4], Ok(ShardTxnState::ShardAborted));
    assert_eq!(
        results[5],
        Ok(ShardTxnState::ShardCommitted),
        "a repeat answers the same"
    );
    // The tables say what the answers said.
    assert_eq!(h.txn(&commit).await.expect("row").0, "committed");
    assert_eq!(h.txn(&abort).await.expect("row").0, "aborted");
    assert_eq!(h.txn(&fence).await.expect("fenced row").0, "aborted");
    assert_eq!(h.txn(&violation).await.expect("row").0, "aborted");
    assert_eq!(h.txn(&saga).await.expect("row").0, "aborted");
    let seats = h.seats(&flight).await;
    let booked: Vec<_> = seats.iter().filter(|s| s.1 == "booked").collect();
    assert_eq!(booked.len(), 1, "{seats:?}");
    assert_eq!(booked[0].2.as_deref(), Some(commit.as_str()));
    assert_eq!(h.seats_in(&flight, "free").await.len(), 3);
    // One call, counted once; each entry also counted as its own call.
    let requests = |rpc: &str, outcome: &str| {
        h.metric(&format!(
            r#"participant_requests_total{{rpc="{rpc}",outcome="{outcome}"}}"#
        ))
    };
    assert_eq!(requests("decide_many", "ok"), 1.0);
    assert_eq!(requests("commit", "ok"), 2.0);
    assert_eq!(requests("commit", "error"), 1.0);
    assert_eq!(
        requests("abort", "ok"),
        3.0,
        "the fence call, then two entries"
    );
    assert_eq!(requests("compensate", "ok"), 1.0);
}

// ReserveMany: each entry is checked, applied and answered as its own
// Prepare or BookLocal would be, in order; a bad entry gets its own error.
async fn reserve_many_answers_each_entry_as_its_own_call(h: &Harness) {
    // One flight per entry: on PostgreSQL the entries run on several writer
    // lanes at once, so entries sharing a flight could take its seats in
    // any order.
    let (hold_on, book_on, full, theirs) = (
        h.flight(1, "A").await,
        h.flight(1, "A").await,
        h.flight(1, "A").await,
        flight_id_in(1),
    );
    h.prepare(&new_txid(), vec![count_leg(0, &full, 1)])
        .await
        .expect("fill the flight");
    let (held, booked, sold_out, not_mine, malformed) = (
        new_txid(),
        new_txid(),
        new_txid(),
        new_txid(),
        "not-a-uuid".to_string(),
    );
    let entry = |txid: &str, leg: ShardLeg, book_local: bool| ReserveEntry {
        request: Some(PrepareRequest {
            txid: txid.into(),
            legs: vec![leg],
            itinerary_legs: 2,
        }),
        book_local,
    };
    let entries = vec![
        entry(&held, count_leg(0, &hold_on, 1), false),
        entry(&booked, count_leg(1, &book_on, 1), true),
        entry(&sold_out, count_leg(0, &full, 1), false),
        entry(&not_mine, count_leg(0, &theirs, 1), false),
        entry(&malformed, count_leg(0, &hold_on, 1), false),
        ReserveEntry {
            request: None,
            book_local: false,
        },
        entry(&held, count_leg(0, &hold_on, 1), false),
    ];
    let results = h
        .service
        .reserve_many(Request::new(ReserveManyRequest { entries }))
        .await
        .expect("a well-formed call")
        .into_inner()
        .results;
    assert_eq!(results.len(), 7, "{results:?}");
    let vote = |i: usize| {
        assert_eq!(results[i].code, 0, "entry {i}: {:?}", results[i]);
        results[i]
            .vote
            .clone()
            .expect("an OK result carries its vote")
    };
    let error = |i: usize| (Code::from_i32(results[i].code), results[i].message.clone());
    assert_eq!(yes_seats(&vote(0)), vec![vec!["1A"]]);
    assert_eq!(yes_seats(&vote(1)), vec![vec!["1A"]]);
    assert_eq!(refusal(&vote(2)).0, AbortReason::SoldOut);
    let (code, message) = error(3);
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(message.contains("does not own"), "{message}");
    let (code, message) = error(4);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("txid"), "{message}");
    assert_eq!(
        error(5),
        (
            Code::InvalidArgument,
            "entries[5].request is missing".into()
        )
    );
    assert_eq!(
        yes_seats(&vote(6)),
        vec![vec!["1A"]],
        "a repeat gets the same vote"
    );
    // The tables say what the answers said.
    assert_eq!(h.txn(&held).await.expect("row").0, "prepared");
    assert_eq!(h.txn(&booked).await.expect("row").1, "local");
    assert_eq!(h.txn(&sold_out).await.expect("row").0, "aborted");
    assert_eq!(h.txn(&not_mine).await, None, "nothing written");
    assert_eq!(h.seats_in(&hold_on, "held").await, vec!["1A"]);
    assert_eq!(h.seats_in(&book_on, "booked").await, vec!["1A"]);
    assert_eq!(
        h.seats_in(&full, "held").await.len(),
        1,
        "the filler's hold only"
    );
    // One call, counted once; each entry also counted as its own call.
    let requests = |rpc: &str, outcome: &str| {
        h.metric(&format!(
            r#"participant_requests_total{{rpc="{rpc}",outcome="{outcome}"}}"#
        ))
    };
    assert_eq!(requests("reserve_many", "ok"), 1.0);
    assert_eq!(
        requests("prepare", "yes"),
        3.0,
        "the filler, then two entries"
    );
    assert_eq!(requests("prepare", "no"), 1.0);
    assert_eq!(requests("prepare", "error"), 3.0);
    assert_eq!(requests("book_local", "yes"), 1.0);
    let empty = h
        .service
        .reserve_many(Request::new(ReserveManyRequest { entries: vec![] }))
        .await
        .expect_err("no entries");
    assert_eq!(empty.code(), Code::InvalidArgument);
    let too_many = ReserveManyRequest {
        entries: vec![
            entry(&held, count_leg(0, &hold_on, 1), false);
            RESERVATIONS_PER_CALL_MAX + 1
        ],
    };
    let refused = h
        .service
        .reserve_many(Request::new(too_many))
        .await
        .expect_err("too many entries");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("send 1..=256"), "{refused:?}");
}

// A malformed DecideMany is refused whole, naming the entry; nothing applied.
async fn decide_many_refuses_a_malformed_call_whole(h: &Harness) {
    let flight = h.flight(1, "A").await;
    let held = new_txid();
    h.prepare(&held, vec![count_leg(0, &flight, 1)])
        .await
        .expect("prepare");
    let refused = |result: Result<_, Status>, code: Code, needle: &str| {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{needle:?} not in {status:?}"
        );
    };
    refused(
        h.decide_many(&[]).await,
        Code::InvalidArgument,
        "entries: 0 given",
    );
    let too_many: Vec<(&str, ShardDecision)> =
        vec![(held.as_str(), ShardDecision::ShardAbort); DECISIONS_PER_CALL_MAX + 1];
    refused(
        h.decide_many(&too_many).await,
        Code::InvalidArgument,
        &format!("send 1..={DECISIONS_PER_CALL_MAX}"),
    );
    refused(
        h.decide_many(&[
            (&held, ShardDecision::ShardAbort),
            ("not-a-uuid", ShardDecision::ShardAbort),
        ])
        .await,
        Code::InvalidArgument,
        "entries[1].txid",
    );
    refused(
        h.decide_many(&[
            (&held, ShardDecision::ShardAbort),
            (&held, ShardDecision::Unspecified),
        ])
        .await,
        Code::InvalidArgument,
        "entries[1].decision",
    );
    assert_eq!(
        h.txn(&held).await.expect("row").0,
        "prepared",
        "nothing applied"
    );
    assert_eq!(h.seats_in(&flight, "held").await, vec!["1A"]);
}

macro_rules! conformance_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::Harness::sqlite().await).await;
                }
            )*
        }
        /// The whole suite on one throwaway PostgreSQL cluster (or the
        /// database `PARTICIPANT_TEST_POSTGRES_URL` names). Without the
        /// PostgreSQL server binaries this FAILS, saying what to install.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn postgres_conformance_suite() {
            let (_cluster, url) = match std::env::var("PARTICIPANT_TEST_POSTGRES_URL") {
                Ok(url) => (None, url),
                Err(_) => {
                    let cluster = booking_client::pg::PgCluster::start(1)
                        .await
                        .unwrap_or_else(|e| panic!("PostgreSQL conformance needs a server: {e}"));
                    let url = cluster.database_url(0);
                    (Some(cluster), url)
                }
            };
            $(
                eprintln!("postgres case: {}", stringify!($case));
                $case(&Harness::open(&url, None).await).await;
            )*
        }
    };
}

conformance_suite!(
    prepare_then_commit_books_the_held_seats,
    prepare_then_abort_releases_the_seats,
    abort_before_prepare_fences_the_txid,
    repeated_prepare_returns_the_same_vote,
    commit_after_abort_is_a_protocol_violation,
    sold_out_leaves_nothing_held,
    explicit_seats_are_held_as_named,
    a_taken_or_missing_seat_is_refused,
    an_unknown_flight_is_a_no_vote,
    book_local_is_idempotent,
    resolve_fences_an_unknown_txid,
    compensate_releases_and_fences_a_late_booking,
    a_flight_of_another_shard_is_refused,
    flights_are_created_once_and_read_back,
    list_txns_shows_prepared_ones,
    list_txns_filters_by_txid,
    metrics_follow_votes_and_holds,
    bad_requests_are_refused_whole,
    concurrent_prepares_never_oversell,
    a_batch_with_a_no_in_the_middle_keeps_the_others,
    every_connection_commits_durably,
    decide_many_answers_each_entry_as_its_own_call,
    decide_many_refuses_a_malformed_call_whole,
    reserve_many_answers_each_entry_as_its_own_call,
);

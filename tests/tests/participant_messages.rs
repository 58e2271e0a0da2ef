//! DESIGN.md "Who may decide what" and "Failures we test by causing them":
//! duplicate, late and reordered protocol messages, sent over gRPC straight
//! to a real participant process (as a confused or restarted coordinator, or
//! a slow network, would deliver them), with the shard database then read
//! directly. `participant/src/conformance_test.rs` covers the same table in
//! process; this is the same contract at the process boundary.
//!
//! - a late PREPARE after ABORT is refused (FENCED) and holds nothing;
//! - a repeated COMMIT is a no-op: the seats are booked once;
//! - COMMIT after ABORT is a loud protocol error (FAILED_PRECONDITION) and
//!   the shard database is unchanged;
//! - a repeated (or concurrently duplicated) PREPARE returns the same vote
//!   and holds nothing twice;
//! - an ABORT before any PREPARE (reordered) leaves a fence: the PREPARE
//!   that arrives after it is refused.
//! - a YES vote the coordinator never decided is not kept for ever: the
//!   participant asks GetDecision after the in-doubt timeout and, the
//!   coordinator having no record of it, aborts it (presumed abort).
//!
//! The cases run on SQLite and on PostgreSQL shards (one shard, owning
//! every partition, so any flight id is its own). The coordinator of these
//! clusters is never asked to book anything.

use std::time::{Duration, Instant};

use booking_client::checker::{self, CheckMode, Oracle};
use booking_client::pg::PgCluster;
use booking_client::{find_binaries, Backend, Cluster, ClusterSpec};
use booking_proto::v1::participant_client::ParticipantClient;
use booking_proto::v1::{
    AbortReason, DecisionRequest, PrepareRequest, ShardLeg, ShardTxnState, Vote,
};
use booking_tests::*;
use sqlx::{AnyConnection, Connection, Row};
use tonic::transport::Channel;
use tonic::Code;

/// One shard: the participant under test.
struct Shard {
    cluster: Cluster,
    client: ParticipantClient<Channel>,
    db: String,
    _pg: Option<PgCluster>,
    _dir: tempfile::TempDir,
}

/// A one-shard cluster on `db`; the participant asks the coordinator about
/// a prepared txid after `in_doubt_after_ms`.
async fn shard(db: Db, in_doubt_after_ms: u64) -> Shard {
    let bin_dir = find_binaries()
        .await
        .expect("find or build the coordinator and participant binaries");
    let dir = tempfile::tempdir().expect("create a temp dir");
    let mut spec = ClusterSpec::new(bin_dir, dir.path());
    spec.shards = 1;
    spec.in_doubt_after_ms = in_doubt_after_ms;
    let pg = match db {
        Db::Sqlite => None,
        Db::Postgres => {
            let pg = PgCluster::start(1)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL shards: {e}"));
            spec.backend = Backend::Postgres(pg.database_urls());
            Some(pg)
        }
    };
    let cluster = Cluster::start(spec).await.expect("start the cluster");
    let client = ParticipantClient::connect(cluster.participant_url(0))
        .await
        .expect("connect to the participant");
    let db = cluster.shard_database_url(0);
    Shard {
        cluster,
        client,
        db,
        _pg: pg,
        _dir: dir,
    }
}

/// A seat row: (seat_no, state, txid).
type Seat = (String, String, Option<String>);
/// A txns row: (state, kind, itinerary_legs, legs JSON).
type Txn = (String, String, i64, String);

impl Shard {
    /// A fresh flight of 2 rows × AB: seats 1A 1B 2A 2B.
    async fn flight(&self, name: &str) -> String {
        let id = format!("{name}{:04X}", rand::random::<u16>());
        self.cluster
            .create_flight(&id, 2, "AB")
            .await
            .expect("create flight");
        id
    }

    async fn prepare(&self, txid: &str, flight: &str, seats: u32) -> Result<Vote, tonic::Status> {
        self.client
            .clone()
            .prepare(prepare_request(txid, flight, seats))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn commit(&self, txid: &str) -> Result<ShardTxnState, tonic::Status> {
        let request = DecisionRequest { txid: txid.into() };
        let ack = self.client.clone().commit(request).await?;
        Ok(ack.into_inner().state())
    }

    async fn abort(&self, txid: &str) -> Result<ShardTxnState, tonic::Status> {
        let request = DecisionRequest { txid: txid.into() };
        let ack = self.client.clone().abort(request).await?;
        Ok(ack.into_inner().state())
    }

    async fn connection(&self) -> AnyConnection {
        sqlx::any::install_default_drivers();
        AnyConnection::connect(&self.db)
            .await
            .expect("open the shard database")
    }

    /// Every seat of `flight`, in seat order, read from the shard database.
    async fn seats(&self, flight: &str) -> Vec<Seat> {
        let rows = sqlx::query(
            "SELECT seat_no, state, txid FROM seats WHERE flight_id = $1 ORDER BY seat_index",
        )
        .bind(flight)
        .fetch_all(&mut self.connection().await)
        .await
        .expect("read seats");
        rows.iter()
            .map(|r| (r.get("seat_no"), r.get("state"), r.get("txid")))
            .collect()
    }

    /// Seat numbers of `flight` in `state` held or booked by `txid`.
    async fn seats_of(&self, flight: &str, state: &str, txid: &str) -> Vec<String> {
        self.seats(flight)
            .await
            .into_iter()
            .filter(|(_, s, t)| s == state && t.as_deref() == Some(txid))
            .map(|(seat, _, _)| seat)
            .collect()
    }

    async fn all_free(&self, flight: &str) -> bool {
        self.seats(flight)
            .await
            .iter()
            .all(|(_, state, txid)| state == "free" && txid.is_none())
    }

    /// The txid's row in `txns`, read from the shard database.
    async fn txn(&self, txid: &str) -> Option<Txn> {
        let row = sqlx::query("SELECT state, kind, itinerary_legs, legs FROM txns WHERE txid = $1")
            .bind(txid)
            .fetch_optional(&mut self.connection().await)
            .await
            .expect("read txns");
        row.map(|r| {
            (
                r.get("state"),
                r.get("kind"),
                r.get("itinerary_legs"),
                r.get("legs"),
            )
        })
    }

    async fn txn_state(&self, txid: &str) -> Option<String> {
        self.txn(txid).await.map(|t| t.0)
    }
}

/// A one-leg itinerary on this shard: `seats` seats of `flight`.
fn prepare_request(txid: &str, flight: &str, seats: u32) -> PrepareRequest {
    PrepareRequest {
        txid: txid.into(),
        legs: vec![ShardLeg {
            leg_index: 0,
            flight_id: flight.into(),
            seat_count: seats,
            ..Default::default()
        }],
        itinerary_legs: 1,
    }
}

fn new_txid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The seats of a YES vote; panics on NO.
fn yes(vote: &Vote) -> Vec<String> {
    assert!(vote.yes, "expected YES, got {vote:?}");
    vote.legs.iter().flat_map(|l| l.seats.clone()).collect()
}

/// The reason of a NO vote; panics on YES.
fn refusal(vote: &Vote) -> (AbortReason, String) {
    assert!(
        !vote.yes && vote.legs.is_empty(),
        "expected NO, got {vote:?}"
    );
    let detail = vote.refusal.clone().expect("a NO carries its reason");
    (detail.reason(), detail.message)
}

async fn late_prepare_after_abort_is_refused_and_holds_nothing(s: &Shard) {
    let flight = s.flight("LATE").await;
    let txid = new_txid();
    let vote = s.prepare(&txid, &flight, 2).await.expect("prepare");
    assert_eq!(yes(&vote), ["1A", "1B"]);
    assert_eq!(s.seats_of(&flight, "held", &txid).await, ["1A", "1B"]);
    assert_eq!(s.txn_state(&txid).await.as_deref(), Some("prepared"));

    assert_eq!(
        s.abort(&txid).await.expect("abort"),
        ShardTxnState::ShardAborted
    );
    assert!(s.all_free(&flight).await, "ABORT releases the holds");
    assert_eq!(s.txn_state(&txid).await.as_deref(), Some("aborted"));

    let late = s.prepare(&txid, &flight, 2).await.expect("late prepare");
    let (reason, message) = refusal(&late);
    assert_eq!(reason, AbortReason::Fenced, "{message}");
    assert!(
        s.all_free(&flight).await,
        "a late PREPARE after ABORT holds nothing: {:?}",
        s.seats(&flight).await
    );
    assert_eq!(s.txn_state(&txid).await.as_deref(), Some("aborted"));
}

async fn repeated_commit_books_the_seats_once(s: &Shard) {
    let flight = s.flight("TWICE").await;
    let txid = new_txid();
    yes(&s.prepare(&txid, &flight, 2).await.expect("prepare"));
    for attempt in ["commit", "repeated commit", "third commit"] {
        assert_eq!(
            s.commit(&txid).await.expect(attempt),
            ShardTxnState::ShardCommitted,
            "{attempt}"
        );
        assert_eq!(
            s.seats_of(&flight, "booked", &txid).await,
            ["1A", "1B"],
            "after the {attempt}"
        );
        let free = s
            .seats(&flight)
            .await
            .iter()
            .filter(|(_, state, _)| state == "free")
            .count();
        assert_eq!(free, 2, "nothing else booked or held after the {attempt}");
        assert_eq!(s.txn_state(&txid).await.as_deref(), Some("committed"));
    }
    let again = s
        .prepare(&txid, &flight, 2)
        .await
        .expect("late prepare of a committed txid");
    assert_eq!(yes(&again), ["1A", "1B"], "the same YES, nothing new held");
    assert!(s.seats_of(&flight, "held", &txid).await.is_empty());
}

async fn commit_after_abort_is_a_loud_error_and_changes_nothing(s: &Shard) {
    let flight = s.flight("VIOL").await;
    let txid = new_txid();
    yes(&s.prepare(&txid, &flight, 1).await.expect("prepare"));
    s.abort(&txid).await.expect("abort");
    let (seats_before, txn_before) = (s.seats(&flight).await, s.txn(&txid).await);

    let error = s.commit(&txid).await.expect_err("COMMIT after ABORT");
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert_eq!(
        error.message(),
        format!("protocol violation: COMMIT for aborted txid {txid}")
    );
    assert_eq!(s.seats(&flight).await, seats_before, "no seat changed");
    assert_eq!(s.txn(&txid).await, txn_before, "the txn row is unchanged");
    assert!(s.all_free(&flight).await);

    let unknown = new_txid();
    let error = s
        .commit(&unknown)
        .await
        .expect_err("COMMIT of an unknown txid");
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert_eq!(
        error.message(),
        format!("protocol violation: COMMIT for unknown txid {unknown}")
    );
    assert_eq!(
        s.txn(&unknown).await,
        None,
        "a refused COMMIT writes nothing"
    );
}

async fn repeated_prepare_returns_the_same_vote_and_holds_once(s: &Shard) {
    let flight = s.flight("DUP").await;
    let txid = new_txid();
    let first = s.prepare(&txid, &flight, 2).await.expect("prepare");
    let held = yes(&first);
    let again = s
        .prepare(&txid, &flight, 2)
        .await
        .expect("repeated prepare");
    assert_eq!(again, first, "a repeated PREPARE gets the same vote");
    // Duplicates arriving together (a retrying coordinator, a duplicating network).
    let duplicates = futures::future::join_all((0..8).map(|_| s.prepare(&txid, &flight, 2))).await;
    for duplicate in duplicates {
        assert_eq!(duplicate.expect("duplicate prepare"), first);
    }
    assert_eq!(
        s.seats_of(&flight, "held", &txid).await,
        held,
        "held once, whatever the number of PREPAREs"
    );
    let held_by_anyone = s
        .seats(&flight)
        .await
        .iter()
        .filter(|(_, state, _)| state != "free")
        .count();
    assert_eq!(held_by_anyone, 2);

    let no = new_txid();
    let first_no = s.prepare(&no, &flight, 3).await.expect("prepare");
    assert_eq!(refusal(&first_no).0, AbortReason::SoldOut);
    assert_eq!(s.txn_state(&no).await.as_deref(), Some("aborted"));
    s.abort(&txid).await.expect("abort, freeing every seat");
    let again_no = s.prepare(&no, &flight, 3).await.expect("repeated prepare");
    assert_eq!(
        again_no, first_no,
        "a NO stays the same NO, even once seats are free"
    );
    assert!(s.all_free(&flight).await, "the repeated NO held nothing");
}

async fn abort_before_prepare_fences_the_late_prepare(s: &Shard) {
    let flight = s.flight("FENCE").await;
    let txid = new_txid();
    assert_eq!(
        s.abort(&txid)
            .await
            .expect("abort of a txid never prepared"),
        ShardTxnState::ShardAborted
    );
    assert_eq!(
        s.txn(&txid).await,
        Some(("aborted".into(), "2pc".into(), 0, "[]".into())),
        "the ABORT is recorded as a fence"
    );
    assert_eq!(
        s.abort(&txid).await.expect("repeated abort"),
        ShardTxnState::ShardAborted
    );
    let late = s.prepare(&txid, &flight, 1).await.expect("late prepare");
    let (reason, message) = refusal(&late);
    assert_eq!(reason, AbortReason::Fenced, "{message}");
    assert!(message.contains(&txid), "{message}");
    assert!(s.all_free(&flight).await, "a fenced PREPARE holds nothing");
    assert_eq!(s.txn_state(&txid).await.as_deref(), Some("aborted"));
    let error = s.commit(&txid).await.expect_err("COMMIT of a fenced txid");
    assert_eq!(error.code(), Code::FailedPrecondition);
}

/// Every case on one participant, then the invariant checker on its
/// database (nothing held, nothing prepared, nothing double booked).
async fn every_case(db: Db) {
    init_tracing();
    // Far beyond the test: no prepared txid is resolved behind its back.
    let s = shard(db, 600_000).await;
    late_prepare_after_abort_is_refused_and_holds_nothing(&s).await;
    repeated_commit_books_the_seats_once(&s).await;
    commit_after_abort_is_a_loud_error_and_changes_nothing(&s).await;
    repeated_prepare_returns_the_same_vote_and_holds_once(&s).await;
    abort_before_prepare_fences_the_late_prepare(&s).await;
    let report = checker::check(
        &s.cluster.shard_database_urls(),
        &Oracle::new(),
        CheckMode::Quiescent,
    )
    .await
    .expect("read the shard database");
    assert!(report.is_ok(), "invariants violated:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_late_and_reordered_messages_on_sqlite() {
    every_case(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_late_and_reordered_messages_on_postgres() {
    every_case(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_yes_vote_is_presumed_aborted_via_get_decision() {
    init_tracing();
    let s = shard(Db::Sqlite, 500).await;
    let flight = s.flight("DOUBT").await;
    let txid = new_txid();
    yes(&s.prepare(&txid, &flight, 2).await.expect("prepare"));
    let prepared_at = Instant::now();
    assert_eq!(s.seats_of(&flight, "held", &txid).await.len(), 2);
    // The coordinator never heard of the txid: GetDecision says ABORT.
    let within = Duration::from_secs(5);
    while s.txn_state(&txid).await.as_deref() == Some("prepared") {
        assert!(
            prepared_at.elapsed() < within,
            "a YES vote nobody decided is still prepared after {within:?} (in-doubt timeout 500 ms)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = prepared_at.elapsed();
    assert_eq!(s.txn_state(&txid).await.as_deref(), Some("aborted"));
    assert!(
        s.all_free(&flight).await,
        "the presumed ABORT released the seats"
    );
    assert!(
        waited >= Duration::from_millis(450),
        "resolved after {waited:?}: before the in-doubt timeout, the participant must wait"
    );
    let late = s.prepare(&txid, &flight, 2).await.expect("late prepare");
    assert_eq!(refusal(&late).0, AbortReason::Fenced);
}

/// Undecided YES votes by the hundred (what a coordinator restart over a
/// full log leaves): one sweep asks about them together, so their presumed
/// ABORTs reach the writer lane together and are applied in a few local
/// transactions, not one fsync each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_undecided_yes_votes_are_aborted_in_a_few_local_commits() {
    const TXIDS: usize = 200;
    init_tracing();
    let s = shard(Db::Sqlite, 1500).await;
    let flight = format!("MANY{:04X}", rand::random::<u16>());
    s.cluster
        .create_flight(&flight, 25, "ABCDEFGH")
        .await
        .expect("create flight");
    let txids: Vec<String> = (0..TXIDS).map(|_| new_txid()).collect();
    let votes =
        futures::future::join_all(txids.iter().map(|txid| s.prepare(txid, &flight, 1))).await;
    for vote in &votes {
        yes(vote.as_ref().expect("prepare"));
    }
    let address = s
        .cluster
        .metrics_address(booking_client::ProcessId::Participant(0))
        .expect("the participant serves metrics");
    let commits = |samples: &std::collections::HashMap<String, f64>| {
        samples
            .get("participant_local_commits_total")
            .copied()
            .expect("participant_local_commits_total is exported")
    };
    let before = commits(&metrics_scrape(address).await.expect("scrape"));
    let within = Duration::from_secs(10);
    let started = Instant::now();
    loop {
        // The shard is this test's alone: every prepared txid is one of ours.
        let prepared: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM txns WHERE state = 'prepared'")
                .fetch_one(&mut s.connection().await)
                .await
                .expect("count prepared txns");
        if prepared == 0 {
            break;
        }
        assert!(
            started.elapsed() < within,
            "{prepared} of {TXIDS} undecided YES votes still prepared after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        s.all_free(&flight).await,
        "every presumed ABORT released its seat"
    );
    let spent = commits(&metrics_scrape(address).await.expect("scrape")) - before;
    tracing::info!(spent, "local commits for {TXIDS} presumed ABORTs");
    assert!(
        spent <= (TXIDS / 8) as f64,
        "{TXIDS} in-doubt txids were aborted in {spent} local commits; asked one after \
         another, each would be its own"
    );
}

//! The checker against hand-built SQLite shard databases: a clean state
//! passes, and each deliberately broken state is reported under the right
//! invariant.

use std::time::Duration;

use booking_proto::v1::{
    AbortDetail, BookReply, BookRequest, LegRequest, LegResult, Mode, Outcome,
};
use sqlx::{Connection, SqliteConnection};
use tempfile::TempDir;

use super::*;

const SCHEMA: &str = "
CREATE TABLE flights(flight_id TEXT PRIMARY KEY, seat_rows INTEGER NOT NULL, letters TEXT NOT NULL,
                     capacity INTEGER NOT NULL);
CREATE TABLE seats(flight_id TEXT NOT NULL, seat_no TEXT NOT NULL, seat_index INTEGER NOT NULL,
                   state TEXT NOT NULL, txid TEXT, passenger TEXT, PRIMARY KEY(flight_id, seat_no));
CREATE TABLE txns(txid TEXT PRIMARY KEY, state TEXT NOT NULL, kind TEXT NOT NULL,
                  itinerary_legs INTEGER NOT NULL, legs TEXT NOT NULL, refusal TEXT,
                  updated_at BIGINT NOT NULL);
";

/// Two shard databases in a temporary directory: shard 0 owns flight AB1,
/// shard 1 owns CD2, each with seats 1A 1B 2A 2B.
struct Shards {
    _dir: TempDir,
    urls: Vec<String>,
}

impl Shards {
    async fn new() -> Shards {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut urls = Vec::new();
        for (i, flight) in ["AB1", "CD2"].into_iter().enumerate() {
            let path = dir.path().join(format!("s{i}.db"));
            let url = format!("sqlite://{}?mode=rwc", path.display());
            let mut connection = SqliteConnection::connect(&url)
                .await
                .expect("create shard db");
            sqlx::raw_sql(SCHEMA)
                .execute(&mut connection)
                .await
                .expect("create schema");
            add_flight(&mut connection, flight).await;
            urls.push(format!("sqlite://{}", path.display()));
        }
        Shards { _dir: dir, urls }
    }

    async fn sql(&self, shard: usize, statements: &str) {
        let mut connection = SqliteConnection::connect(&self.urls[shard])
            .await
            .expect("open shard db");
        sqlx::raw_sql(statements)
            .execute(&mut connection)
            .await
            .expect("run fixture sql");
    }

    /// Marks seats of `flight` as `state` by `txid`.
    async fn take(&self, shard: usize, flight: &str, seats: &[&str], state: &str, txid: &str) {
        for seat in seats {
            let sql = format!(
                "UPDATE seats SET state = '{state}', txid = '{txid}' WHERE flight_id = '{flight}' AND seat_no = '{seat}'"
            );
            self.sql(shard, &sql).await;
        }
    }

    /// Records `txid` on `shard` with this shard's legs.
    async fn txn(
        &self,
        shard: usize,
        txid: &str,
        state: &str,
        kind: &str,
        itinerary_legs: i64,
        legs: &[(&str, &[&str])],
    ) {
        let legs: Vec<serde_json::Value> = legs
            .iter()
            .enumerate()
            .map(|(i, (flight, seats))| serde_json::json!({"leg_index": i, "flight_id": flight, "seats": seats}))
            .collect();
        let legs = serde_json::Value::Array(legs).to_string();
        let sql = format!(
            "INSERT INTO txns VALUES ('{txid}', '{state}', '{kind}', {itinerary_legs}, '{legs}', NULL, 1700000000000)"
        );
        self.sql(shard, &sql).await;
    }

    /// A committed two-shard itinerary (t1), a local booking (t3) and a fence (t2).
    async fn clean() -> Shards {
        let shards = Shards::new().await;
        shards.take(0, "AB1", &["1A"], "booked", "t1").await;
        shards
            .txn(0, "t1", "committed", "2pc", 2, &[("AB1", &["1A"])])
            .await;
        shards.take(1, "CD2", &["1A", "1B"], "booked", "t1").await;
        shards
            .txn(1, "t1", "committed", "2pc", 2, &[("CD2", &["1A", "1B"])])
            .await;
        shards.txn(0, "t2", "aborted", "2pc", 0, &[]).await;
        shards.take(1, "CD2", &["2A"], "booked", "t3").await;
        shards
            .txn(1, "t3", "committed", "local", 1, &[("CD2", &["2A"])])
            .await;
        shards
    }

    async fn check(&self, oracle: &Oracle, mode: CheckMode) -> Report {
        check(&self.urls, oracle, mode)
            .await
            .expect("shard databases are readable")
    }
}

async fn add_flight(connection: &mut SqliteConnection, flight: &str) {
    let mut sql = format!("INSERT INTO flights VALUES ('{flight}', 2, 'AB', 4);");
    for (index, seat) in ["1A", "1B", "2A", "2B"].iter().enumerate() {
        sql += &format!(
            "INSERT INTO seats VALUES ('{flight}', '{seat}', {index}, 'free', NULL, NULL);"
        );
    }
    sqlx::raw_sql(&sql)
        .execute(connection)
        .await
        .expect("insert flight");
}

fn request(key: &str, legs: &[(&str, u32)]) -> BookRequest {
    let legs = legs
        .iter()
        .map(|(flight, count)| LegRequest {
            flight_id: flight.to_string(),
            seat_count: *count,
            ..Default::default()
        })
        .collect();
    BookRequest {
        idempotency_key: key.into(),
        legs,
        ..Default::default()
    }
}

fn committed(txid: &str, legs: &[(&str, &[&str])]) -> BookReply {
    let legs = legs
        .iter()
        .enumerate()
        .map(|(i, (flight, seats))| LegResult {
            leg_index: i as u32,
            flight_id: flight.to_string(),
            shard: String::new(),
            seats: seats.iter().map(|s| s.to_string()).collect(),
        })
        .collect();
    BookReply {
        txid: txid.into(),
        outcome: Outcome::Committed as i32,
        legs,
        abort: None,
        mode: Mode::TwoPhase as i32,
    }
}

fn aborted(txid: &str) -> BookReply {
    let abort = AbortDetail {
        reason: 1,
        leg_index: 0,
        flight_id: "AB1".into(),
        message: "sold out".into(),
    };
    BookReply {
        txid: txid.into(),
        outcome: Outcome::Aborted as i32,
        legs: vec![],
        abort: Some(abort),
        mode: 0,
    }
}

/// The oracle matching `Shards::clean`.
fn clean_oracle() -> Oracle {
    let oracle = Oracle::new();
    oracle.record_reply(
        &request("k1", &[("AB1", 1), ("CD2", 2)]),
        committed("t1", &[("AB1", &["1A"]), ("CD2", &["1A", "1B"])]),
    );
    oracle.record_reply(
        &request("k1", &[("AB1", 1), ("CD2", 2)]),
        committed("t1", &[("AB1", &["1A"]), ("CD2", &["1A", "1B"])]),
    );
    oracle.record_reply(&request("k2", &[("AB1", 4)]), aborted("t2"));
    oracle.record_reply(
        &request("k3", &[("CD2", 1)]),
        committed("t3", &[("CD2", &["2A"])]),
    );
    oracle.record_unknown(
        &request("k4", &[("AB1", 1)]),
        Some(tonic::Code::DeadlineExceeded),
        "timed out".into(),
    );
    oracle
}

fn kinds(report: &Report) -> Vec<String> {
    report
        .violations
        .iter()
        .map(|v| {
            format!("{v:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_clean_state_passes_every_invariant() {
    let shards = Shards::clean().await;
    let report = shards.check(&clean_oracle(), CheckMode::Quiescent).await;
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.stats.seats_booked, 4);
    assert_eq!(
        report.stats.oracle,
        OracleCounts {
            committed: 3,
            aborted: 1,
            unknown: 1
        }
    );
    wait_quiescent(&shards.urls, Duration::from_secs(1))
        .await
        .expect("nothing is held");
}

#[tokio::test]
async fn a_seat_claimed_by_two_holds_is_a_double_booking() {
    let shards = Shards::clean().await;
    shards.take(0, "AB1", &["2A"], "held", "t4").await;
    shards
        .txn(0, "t4", "prepared", "2pc", 2, &[("AB1", &["2A"])])
        .await;
    shards
        .txn(0, "t5", "prepared", "2pc", 2, &[("AB1", &["2A"])])
        .await;
    let report = shards.check(&clean_oracle(), CheckMode::Live).await;
    assert_eq!(
        kinds(&report),
        ["SeatClaimedTwice", "LegsMismatch"],
        "{report}"
    );
    assert!(report
        .violations
        .iter()
        .all(|v| v.invariant() == Invariant::NoDoubleBooking));
}

#[tokio::test]
async fn a_partial_itinerary_is_reported_at_quiescence() {
    let shards = Shards::clean().await;
    shards.take(0, "AB1", &["2B"], "booked", "t6").await;
    shards
        .txn(0, "t6", "committed", "2pc", 2, &[("AB1", &["2B"])])
        .await;
    let live = shards.check(&clean_oracle(), CheckMode::Live).await;
    assert!(
        live.is_ok(),
        "the other shard may not have been read yet: {live}"
    );
    let report = shards.check(&clean_oracle(), CheckMode::Quiescent).await;
    assert_eq!(kinds(&report), ["PartialItinerary"], "{report}");
    assert_eq!(report.violations[0].invariant(), Invariant::Atomicity);
}

#[tokio::test]
async fn a_committed_reply_missing_from_the_shards_is_a_durability_violation() {
    let shards = Shards::clean().await;
    let oracle = clean_oracle();
    oracle.record_reply(
        &request("k7", &[("AB1", 1)]),
        committed("t7", &[("AB1", &["2A"])]),
    );
    let report = shards.check(&oracle, CheckMode::Live).await;
    assert_eq!(
        kinds(&report),
        ["CommittedSeatNotBooked", "CommittedTxnNotCommitted"],
        "{report}"
    );
    assert!(report
        .violations
        .iter()
        .all(|v| v.invariant() == Invariant::Durability));
    assert!(report.to_string().contains("LOST seat AB1/2A"), "{report}");
}

#[tokio::test]
async fn a_held_seat_breaks_liveness_only_at_quiescence() {
    let shards = Shards::clean().await;
    shards.take(1, "CD2", &["2B"], "held", "t8").await;
    shards
        .txn(1, "t8", "prepared", "2pc", 2, &[("CD2", &["2B"])])
        .await;
    let live = shards.check(&clean_oracle(), CheckMode::Live).await;
    assert!(live.is_ok(), "{live}");
    let report = shards.check(&clean_oracle(), CheckMode::Quiescent).await;
    assert_eq!(
        kinds(&report),
        ["SeatStillHeld", "TxnStillPrepared"],
        "{report}"
    );
    let error = wait_quiescent(&shards.urls, Duration::from_millis(300))
        .await
        .expect_err("a seat is held");
    assert!(error.to_string().contains("CD2/2B held by t8"), "{error}");
}

#[tokio::test]
async fn committed_here_and_aborted_there_is_mixed() {
    let shards = Shards::clean().await;
    shards.take(0, "AB1", &["2A"], "booked", "t9").await;
    shards
        .txn(0, "t9", "committed", "2pc", 2, &[("AB1", &["2A"])])
        .await;
    shards
        .txn(1, "t9", "aborted", "2pc", 2, &[("CD2", &[])])
        .await;
    let report = shards.check(&clean_oracle(), CheckMode::Live).await;
    assert_eq!(kinds(&report), ["MixedOutcome"], "{report}");
}

#[tokio::test]
async fn seats_must_agree_with_their_transaction() {
    let shards = Shards::clean().await;
    shards.take(0, "AB1", &["2A"], "booked", "t10").await;
    shards.take(0, "AB1", &["2B"], "held", "t2").await;
    shards
        .sql(1, "UPDATE seats SET txid = 'ghost' WHERE seat_no = '2B'")
        .await;
    let report = shards.check(&clean_oracle(), CheckMode::Live).await;
    assert_eq!(
        kinds(&report),
        ["FreeSeatHasTxid", "BookedByUncommitted", "HeldByUnprepared"],
        "{report}"
    );
}

#[tokio::test]
async fn more_seats_taken_than_capacity_is_oversold() {
    let shards = Shards::clean().await;
    shards
        .sql(
            0,
            "INSERT INTO seats VALUES ('AB1', '3A', 4, 'free', NULL, NULL)",
        )
        .await;
    let all: &[&str] = &["1B", "2A", "2B", "3A"];
    shards.take(0, "AB1", all, "booked", "t11").await;
    shards
        .txn(0, "t11", "committed", "local", 1, &[("AB1", all)])
        .await;
    let report = shards.check(&clean_oracle(), CheckMode::Quiescent).await;
    assert_eq!(
        kinds(&report),
        ["SeatCountMismatch", "Oversold"],
        "{report}"
    );
}

#[tokio::test]
async fn an_aborted_reply_must_leave_no_seat() {
    let shards = Shards::clean().await;
    shards.take(0, "AB1", &["2A"], "booked", "t12").await;
    shards
        .txn(0, "t12", "committed", "local", 1, &[("AB1", &["2A"])])
        .await;
    let oracle = clean_oracle();
    oracle.record_reply(&request("k12", &[("AB1", 1)]), aborted("t12"));
    let report = shards.check(&oracle, CheckMode::Live).await;
    assert_eq!(kinds(&report), ["AbortedReplyHasSeat"], "{report}");
}

#[tokio::test]
async fn a_retried_key_must_get_the_same_reply() {
    let shards = Shards::clean().await;
    let oracle = clean_oracle();
    oracle.record_reply(&request("k3", &[("CD2", 1)]), aborted("t3-other"));
    let report = shards.check(&oracle, CheckMode::Live).await;
    assert_eq!(kinds(&report), ["ReplyChanged"], "{report}");
}

#[tokio::test]
async fn unreadable_legs_are_reported() {
    let shards = Shards::clean().await;
    shards
        .sql(
            0,
            "INSERT INTO txns VALUES ('t13', 'aborted', '2pc', 1, 'not json', NULL, 0)",
        )
        .await;
    let report = shards.check(&clean_oracle(), CheckMode::Live).await;
    assert_eq!(kinds(&report), ["BadLegsJson"], "{report}");
}

#[tokio::test]
async fn flight_summary_counts_seats_by_state() {
    let shards = Shards::clean().await;
    shards
        .take(0, "AB1", &["1B", "2A", "2B"], "booked", "t1")
        .await;
    let summary = flight_summary(&shards.urls).await.expect("readable");
    let ab1 = &summary[0];
    assert_eq!(
        (
            ab1.flight_id.as_str(),
            ab1.shard,
            ab1.capacity,
            ab1.booked,
            ab1.free
        ),
        ("AB1", 0, 4, 4, 0)
    );
    assert!(ab1.sold_out());
    let cd2 = &summary[1];
    assert_eq!((cd2.booked, cd2.held, cd2.free), (3, 0, 1));
    assert!(!cd2.sold_out());
}

#[tokio::test]
async fn a_missing_database_is_an_error_not_an_empty_shard() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("absent.db").display());
    let error = check(&[url], &Oracle::new(), CheckMode::Live)
        .await
        .expect_err("no such file");
    assert!(matches!(error, CheckError::Connect { .. }), "{error}");
    assert!(
        !dir.path().join("absent.db").exists(),
        "the checker must not create databases"
    );
}

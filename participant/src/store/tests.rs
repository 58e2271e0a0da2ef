//! Store-level tests on a temp SQLite file: connection settings, `$N`
//! placeholders, reopening, and batches (DESIGN "Messages to one participant
//! may be batched ... correctness never depends on batching").

use booking_proto::v1::AbortReason;
use sqlx::Row;

use super::*;
use crate::model::{SeatLabel, TxnKind};
use crate::op::Vote;
use crate::request::{Booking, LegRequest, SeatChoice};

async fn open(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}/s0.db", dir.path().display());
    Store::open(&Config::new("s0", &url, 4).expect("valid config"))
        .await
        .expect("open store")
}

fn txid(n: u32) -> TxnId {
    TxnId::parse("txid", &format!("0190b2c4-7d1e-7c3a-9f00-{n:012}")).expect("valid uuid")
}

fn booking(n: u32, flight: &str, seats: SeatChoice) -> Booking {
    let leg = LegRequest {
        leg_index: 0,
        flight_id: flight.into(),
        seats,
        passengers: vec![],
    };
    Booking {
        txid: txid(n),
        legs: vec![leg],
        itinerary_legs: 1,
    }
}

fn flight(id: &str, rows: u32, letters: &str) -> Op {
    Op::CreateFlight(crate::model::FlightMap {
        flight_id: id.into(),
        rows,
        letters: letters.into(),
    })
}

async fn one(store: &Store, op: Op) -> OpResult {
    store
        .apply_batch(&[op])
        .await
        .expect("batch commits")
        .results
        .remove(0)
}

#[tokio::test]
async fn sqlite_runs_in_wal_with_full_sync() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir).await;
    let mut conn = store.pool().acquire().await.expect("connection");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .expect("pragma");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "synchronous=FULL is 2");
}

#[tokio::test]
async fn numbered_placeholders_bind_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir).await;
    let row = sqlx::query("SELECT $1 AS a, $2 AS b, $3 AS c")
        .bind("first")
        .bind(2_i64)
        .bind("third")
        .fetch_one(store.pool())
        .await
        .expect("query");
    let (a, b, c): (String, i64, String) = (row.get("a"), row.get("b"), row.get("c"));
    assert_eq!((a.as_str(), b, c.as_str()), ("first", 2, "third"));
}

#[tokio::test]
async fn reopening_keeps_prepared_txids_and_reruns_no_migration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir).await;
    one(&store, flight("AB1", 2, "AB")).await.expect("created");
    one(&store, Op::Prepare(booking(1, "AB1", SeatChoice::Count(2))))
        .await
        .expect("voted");
    store.close().await;
    let store = open(&dir).await;
    let prepared = store.in_doubt(now_ms() + 1, 10).await.expect("read");
    assert_eq!(prepared, vec![txid(1)]);
    let inventory = store
        .get_flight("AB1", false)
        .await
        .expect("read")
        .expect("flight exists");
    assert_eq!(
        (inventory.free, inventory.held, inventory.booked),
        (2, 2, 0)
    );
}

#[tokio::test]
async fn a_no_vote_in_the_middle_of_a_batch_disturbs_no_other_op() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir).await;
    one(&store, flight("AB1", 2, "AB")).await.expect("created");
    let named = SeatChoice::Named(vec![SeatLabel {
        row: 2,
        letter: 'B',
    }]);
    let ops = [
        Op::Prepare(booking(1, "AB1", SeatChoice::Count(2))),
        Op::Prepare(booking(2, "AB1", SeatChoice::Count(3))),
        Op::BookLocal(booking(3, "AB1", named)),
        Op::Prepare(booking(1, "AB1", SeatChoice::Count(2))),
    ];
    let applied = store.apply_batch(&ops).await.expect("batch commits");
    assert_eq!(
        applied.prepared_change, 1,
        "one fresh YES; a NO, a local booking and a repeat hold nothing new"
    );
    let results = applied.results;
    let seats = |r: &OpResult| match r {
        Ok(Reply::Vote(Vote::Yes(legs))) => legs[0].seats.clone(),
        other => panic!("expected YES, got {other:?}"),
    };
    assert_eq!(seats(&results[0]), vec!["1A", "1B"]);
    let Ok(Reply::Vote(Vote::No(refusal))) = &results[1] else {
        panic!("expected NO, got {:?}", results[1])
    };
    assert_eq!(refusal.reason, AbortReason::SoldOut);
    assert_eq!(seats(&results[2]), vec!["2B"]);
    assert_eq!(
        seats(&results[3]),
        vec!["1A", "1B"],
        "a repeat inside the batch sees the first"
    );
    let rows = sqlx::query(
        "SELECT seat_no, state, txid FROM seats WHERE flight_id = 'AB1' ORDER BY seat_index",
    )
    .fetch_all(store.pool())
    .await
    .expect("read");
    let states: Vec<(String, String, Option<String>)> = rows
        .iter()
        .map(|r| (r.get("seat_no"), r.get("state"), r.get("txid")))
        .collect();
    let t = |n| Some(txid(n).to_string());
    assert_eq!(
        states,
        vec![
            ("1A".into(), "held".into(), t(1)),
            ("1B".into(), "held".into(), t(1)),
            ("2A".into(), "free".into(), None),
            ("2B".into(), "booked".into(), t(3)),
        ]
    );
}

#[tokio::test]
async fn a_row_count_mismatch_fails_the_whole_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir).await;
    one(&store, flight("AB1", 2, "AB")).await.expect("created");
    one(&store, Op::Prepare(booking(1, "AB1", SeatChoice::Count(2))))
        .await
        .expect("voted");
    // Damage the shard behind the participant's back: one held seat vanishes.
    sqlx::query("UPDATE seats SET state = 'free', txid = NULL WHERE seat_no = '1B'")
        .execute(store.pool())
        .await
        .expect("update");
    let ops = [
        Op::Prepare(booking(2, "AB1", SeatChoice::Count(1))),
        Op::Commit(txid(1)),
    ];
    let err = store
        .apply_batch(&ops)
        .await
        .expect_err("the commit must notice the missing seat");
    assert!(
        matches!(
            err,
            StoreError::RowCount {
                expected: 2,
                actual: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_bug());
    let known = sqlx::query("SELECT COUNT(*) AS n FROM txns")
        .fetch_one(store.pool())
        .await
        .expect("read");
    assert_eq!(
        known.get::<i64, _>("n"),
        1,
        "the first op of the failed batch was rolled back too"
    );
    let kind: String = sqlx::query_scalar("SELECT kind FROM txns")
        .fetch_one(store.pool())
        .await
        .expect("read");
    assert_eq!(kind, TxnKind::TwoPhase.as_str());
}

// The `participant_prepared` gauge follows the batches' prepared_change, and
// restarts from count_prepared: both must agree with the txns table.
#[tokio::test]
async fn prepared_change_counts_fresh_holds_and_decisions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir).await;
    one(&store, flight("AB1", 3, "AB")).await.expect("created");
    let prepare = |n| Op::Prepare(booking(n, "AB1", SeatChoice::Count(1)));
    let ops = [prepare(1), prepare(2), prepare(3)];
    let applied = store.apply_batch(&ops).await.expect("batch commits");
    assert_eq!(applied.prepared_change, 3);
    assert_eq!(store.count_prepared().await.expect("count"), 3);
    let ops = [
        Op::Commit(txid(1)),
        Op::Abort(txid(2)),
        Op::Commit(txid(1)),
        Op::Abort(txid(9)),
    ];
    let applied = store.apply_batch(&ops).await.expect("batch commits");
    assert_eq!(
        applied.prepared_change, -2,
        "a repeated COMMIT and a fence decide no prepared txid"
    );
    assert_eq!(store.count_prepared().await.expect("count"), 1);
    let row = store.txn_row(&txid(3)).await.expect("read").expect("known");
    assert_eq!(row.state, TxnState::Prepared);
    assert!(store.txn_row(&txid(4)).await.expect("read").is_none());
}

//! Store-level tests on a temp SQLite file: connection settings, `$N`
//! placeholders, reopening, and batches (DESIGN "Messages to one participant
//! may be batched ... correctness never depends on batching"). The batch
//! cases also run on a throwaway PostgreSQL cluster (`batches_on_postgres`),
//! whose batches read ahead and write in fused statements of their own.

use std::time::Duration;

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

/// Every seat of `flight` as (seat_no, state, txid), in seat_index order.
async fn seat_rows(store: &Store, flight: &str) -> Vec<(String, String, Option<String>)> {
    sqlx::query("SELECT seat_no, state, txid FROM seats WHERE flight_id = $1 ORDER BY seat_index")
        .bind(flight)
        .fetch_all(store.pool())
        .await
        .expect("read")
        .iter()
        .map(|r| (r.get("seat_no"), r.get("state"), r.get("txid")))
        .collect()
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

/// A writer lane's own connection (`lane.rs`), the one every SQLite batch
/// commits on: WAL, synchronous=FULL, no checkpoint of its own, and the
/// busy timeout.
#[tokio::test]
async fn a_lane_connection_syncs_fully_and_never_checkpoints() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _store = open(&dir).await;
    let mut lane = lane::open(&lane_file(&dir)).expect("lane connection");
    let mut conn = conn::Conn::Lite(&mut lane);
    for (name, col, expected) in [
        (
            "journal_mode",
            conn::Col::Text,
            conn::Val::Text("wal".into()),
        ),
        ("synchronous", conn::Col::Int, conn::Val::Int(2)),
        ("wal_autocheckpoint", conn::Col::Int, conn::Val::Int(0)),
        ("busy_timeout", conn::Col::Int, conn::Val::Int(5000)),
    ] {
        let rows = conn
            .fetch(&format!("PRAGMA {name}"), &[], &[col])
            .await
            .expect("pragma");
        assert_eq!(rows, [vec![expected]], "PRAGMA {name}");
    }
}

/// The lane binds `$N` by number, whatever order the placeholders appear in
/// (SQLite numbers named parameters by first appearance).
#[tokio::test]
async fn a_lane_binds_placeholders_by_number() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _store = open(&dir).await;
    let mut lane = lane::open(&lane_file(&dir)).expect("lane connection");
    let mut conn = conn::Conn::Lite(&mut lane);
    let args = [script::Arg::Text("first".into()), script::Arg::Int(2)];
    let rows = conn
        .fetch(
            "SELECT $2, $1, $2",
            &args,
            &[conn::Col::Int, conn::Col::Text, conn::Col::Int],
        )
        .await
        .expect("query");
    assert_eq!(
        rows,
        [vec![
            conn::Val::Int(2),
            conn::Val::Text("first".into()),
            conn::Val::Int(2)
        ]]
    );
    let missing = conn.fetch("SELECT $3", &args, &[conn::Col::Int]).await;
    assert!(missing.is_err(), "a placeholder without its argument");
}

/// A lane that finds the database locked by another writer past its busy
/// timeout fails with an error the writer retries (`is_transient`).
#[tokio::test]
async fn a_busy_database_is_transient_on_a_lane() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _store = open(&dir).await;
    let other = lane::open(&lane_file(&dir)).expect("connection");
    other.execute_batch("BEGIN IMMEDIATE").expect("write lock");
    let mut lane = lane::open(&lane_file(&dir)).expect("lane connection");
    lane.execute_batch("PRAGMA busy_timeout = 0")
        .expect("pragma");
    let err = conn::Conn::Lite(&mut lane)
        .execute("BEGIN IMMEDIATE", &[])
        .await
        .expect_err("the database is locked");
    assert!(err.is_transient(), "{err}");
}

/// No statement of any kind of batch is prepared again when it runs again
/// on a lane. SQLite re-prepares a statement on every run when its plan
/// depends on a bound value: a parameter compared with the column of a
/// partial index's condition (`state = $2` against `seats_free`'s
/// `state = 'free'`) did so, re-parsing an UPDATE in every COMMIT batch.
#[tokio::test]
async fn no_batch_statement_is_prepared_again_on_a_lane() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _store = open(&dir).await;
    let mut lane = lane::open(&lane_file(&dir)).expect("lane connection");
    let mut batches = vec![vec![flight("AB1", 20, "AB")]];
    for round in 0..3 {
        let n = 10 * round;
        let two = |n| Op::Prepare(booking(n, "AB1", SeatChoice::Count(2)));
        batches.push(vec![two(n), two(n + 1)]);
        batches.push(vec![Op::Commit(txid(n)), Op::Abort(txid(n + 1))]);
        batches.push(vec![Op::BookLocal(booking(
            n + 2,
            "AB1",
            SeatChoice::Count(1),
        ))]);
        batches.push(vec![Op::Compensate(txid(n + 2)), Op::Resolve(txid(n))]);
    }
    for ops in &batches {
        let applied = lane::apply_and_commit(&mut lane, "s0", ops)
            .await
            .expect("the batch commits");
        for result in &applied.results {
            assert!(
                !matches!(result, Ok(Reply::Vote(Vote::No(_)))),
                "{ops:?}: {result:?}"
            );
        }
    }
    // Every statement the lane's cache holds, with its runs and re-prepares.
    let mut statements = Vec::new();
    // SAFETY: the connection is open and only this thread uses it; the
    // statement pointers are read while the connection holds them.
    unsafe {
        let db = lane.handle();
        let mut statement = rusqlite::ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
        while !statement.is_null() {
            let status = |op| rusqlite::ffi::sqlite3_stmt_status(statement, op, 0);
            let sql = std::ffi::CStr::from_ptr(rusqlite::ffi::sqlite3_sql(statement));
            statements.push((
                sql.to_string_lossy().into_owned(),
                status(rusqlite::ffi::SQLITE_STMTSTATUS_RUN),
                status(rusqlite::ffi::SQLITE_STMTSTATUS_REPREPARE),
            ));
            statement = rusqlite::ffi::sqlite3_next_stmt(db, statement);
        }
    }
    let ran_again = statements.iter().filter(|(_, runs, _)| *runs >= 3).count();
    assert!(
        ran_again >= 6,
        "the batches ran too few statements again to tell: {statements:#?}"
    );
    let reprepared: Vec<_> = statements.iter().filter(|(_, _, n)| *n > 0).collect();
    assert!(
        reprepared.is_empty(),
        "prepared again (sql, runs, re-prepares): {reprepared:#?}"
    );
}

fn lane_file(dir: &tempfile::TempDir) -> connect::SqliteFile {
    let url = connect::sqlite_url(&format!("sqlite://{}/s0.db", dir.path().display()))
        .expect("valid url");
    connect::sqlite_file(&url).expect("a file")
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

/// A shard made before migration 0002 (whole-table indexes) keeps its
/// holds and bookings when the participant that opens it swaps the
/// indexes for the partial ones, and books and decides on them as before.
#[tokio::test]
async fn a_shard_made_before_the_partial_indexes_upgrades_in_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir).await;
    one(&store, flight("AB1", 2, "AB")).await.expect("created");
    for n in [1, 2] {
        one(&store, Op::Prepare(booking(n, "AB1", SeatChoice::Count(1))))
            .await
            .expect("voted");
    }
    one(&store, Op::Commit(txid(2))).await.expect("committed");
    // Back to the schema of migration 0001, as an older participant left it.
    let mut conn = store.pool().acquire().await.expect("connection");
    for statement in [
        "DROP INDEX seats_free",
        "DROP INDEX seats_by_txid",
        "DROP INDEX txns_prepared",
        "CREATE INDEX seats_by_flight_state ON seats (flight_id, state, seat_index)",
        "CREATE INDEX seats_by_txid ON seats (txid)",
        "CREATE INDEX txns_by_state_age ON txns (state, updated_at)",
        "DELETE FROM _sqlx_migrations WHERE version = 2",
    ] {
        sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    drop(conn);
    store.close().await;

    let store = open(&dir).await;
    let indexes: Vec<String> = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
    )
    .fetch_all(store.pool())
    .await
    .expect("read schema")
    .iter()
    .map(|row| row.get::<String, _>(0))
    .collect();
    assert_eq!(indexes, ["seats_by_txid", "seats_free", "txns_prepared"]);
    let txid_index: String =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'seats_by_txid'")
            .fetch_one(store.pool())
            .await
            .expect("read schema");
    assert!(
        txid_index.ends_with("WHERE txid IS NOT NULL"),
        "{txid_index}"
    );
    assert_eq!(
        store.in_doubt(now_ms() + 1, 10).await.expect("read"),
        vec![txid(1)]
    );
    // Two free seats, found through the new index; the held one is decided.
    one(&store, Op::Prepare(booking(3, "AB1", SeatChoice::Count(2))))
        .await
        .expect("voted");
    one(&store, Op::Commit(txid(1))).await.expect("committed");
    one(&store, Op::Abort(txid(3))).await.expect("aborted");
    let seats = seat_rows(&store, "AB1").await;
    let states: Vec<(&str, Option<String>)> = seats
        .iter()
        .map(|(_, state, txid)| (state.as_str(), txid.clone()))
        .collect();
    assert_eq!(
        states,
        [
            ("booked", Some(txid(1).to_string())),
            ("booked", Some(txid(2).to_string())),
            ("free", None),
            ("free", None),
        ]
    );
    assert_eq!(store.count_prepared().await.expect("count"), 0);
}

/// Inside one local transaction, a seat released by a COMPENSATE (or an
/// ABORT) can be taken by a later booking of the same batch, and only by
/// one: the batch view re-reads free seats after a release.
async fn a_seat_released_in_a_batch_is_taken_once_by_a_later_op(store: &Store) {
    one(store, flight("ONE", 1, "A")).await.expect("created");
    let booked = one(
        store,
        Op::BookLocal(booking(1, "ONE", SeatChoice::Count(1))),
    )
    .await;
    assert!(
        matches!(booked, Ok(Reply::Vote(Vote::Yes(_)))),
        "{booked:?}"
    );
    let ops = [
        Op::BookLocal(booking(2, "ONE", SeatChoice::Count(1))),
        Op::Compensate(txid(1)),
        Op::BookLocal(booking(3, "ONE", SeatChoice::Count(1))),
        Op::Prepare(booking(4, "ONE", SeatChoice::Count(1))),
    ];
    let results = store
        .apply_batch(&ops)
        .await
        .expect("batch commits")
        .results;
    let sold_out = |r: &OpResult| matches!(r, Ok(Reply::Vote(Vote::No(refusal))) if refusal.reason == AbortReason::SoldOut);
    assert!(
        sold_out(&results[0]),
        "before the release: {:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Ok(Reply::Ack(TxnState::Aborted))),
        "{:?}",
        results[1]
    );
    match &results[2] {
        Ok(Reply::Vote(Vote::Yes(legs))) => assert_eq!(legs[0].seats, vec!["1A"]),
        other => panic!("the released seat goes to the next booking: {other:?}"),
    }
    assert!(sold_out(&results[3]), "taken once only: {:?}", results[3]);
    let row = sqlx::query("SELECT state, txid FROM seats WHERE flight_id = 'ONE'")
        .fetch_one(store.pool())
        .await
        .expect("read");
    let (state, owner): (String, Option<String>) = (row.get("state"), row.get("txid"));
    assert_eq!(
        (state.as_str(), owner),
        ("booked", Some(txid(3).to_string()))
    );
}

async fn a_no_vote_in_the_middle_of_a_batch_disturbs_no_other_op(store: &Store) {
    one(store, flight("AB1", 2, "AB")).await.expect("created");
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
    let states = seat_rows(store, "AB1").await;
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

async fn a_row_count_mismatch_fails_the_whole_batch(store: &Store) {
    one(store, flight("AB1", 2, "AB")).await.expect("created");
    one(store, Op::Prepare(booking(1, "AB1", SeatChoice::Count(2))))
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
    // The failed batch left no transaction or write lock behind: the next
    // batch on the same store commits.
    next_batch_votes_yes(store, 3).await;
    assert_eq!(
        store
            .txn_row(&txid(3))
            .await
            .expect("read")
            .map(|r| r.state),
        Some(TxnState::Prepared)
    );
}

/// A PREPARE of one seat on AB1 for txid `n`, alone in its batch, commits
/// and votes YES.
async fn next_batch_votes_yes(store: &Store, n: u32) {
    let applied = store
        .apply_batch(&[Op::Prepare(booking(n, "AB1", SeatChoice::Count(1)))])
        .await
        .expect("the next batch commits");
    assert!(
        matches!(&applied.results[0], Ok(Reply::Vote(Vote::Yes(_)))),
        "{:?}",
        applied.results[0]
    );
}

/// A batch whose caller gave up waiting (its future dropped) commits whole
/// or not at all, and leaves nothing that keeps the next batch from
/// committing. On SQLite the lane's thread finishes the batch on its own
/// (as after a crash between COMMIT and the reply, the protocol's retries
/// find the vote); on PostgreSQL the dropped connection rolls it back.
async fn a_batch_given_up_on_commits_whole_or_not_at_all(store: &Store) {
    one(store, flight("AB1", 3, "AB")).await.expect("created");
    let given_up = [
        Op::Prepare(booking(1, "AB1", SeatChoice::Count(2))),
        Op::Prepare(booking(2, "AB1", SeatChoice::Count(1))),
    ];
    // Polled once, then dropped: it cannot have committed by then.
    let waited = futures::FutureExt::now_or_never(store.apply_batch(&given_up));
    assert!(
        waited.is_none(),
        "the batch was given up on before its commit"
    );
    next_batch_votes_yes(store, 3).await;
    // Let a batch still running in the background finish, then look.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = |n: u32| {
        let txid = txid(n).to_string();
        async move {
            let seats = seat_rows(store, "AB1").await;
            seats
                .iter()
                .filter(|(_, state, holder)| state == "held" && holder.as_deref() == Some(&txid))
                .count()
        }
    };
    let first = (held(1).await, held(2).await);
    let recorded = store.count_prepared().await.expect("count");
    assert!(
        (first == (2, 1) && recorded == 3) || (first == (0, 0) && recorded == 1),
        "the given-up batch is half there: seats held {first:?}, prepared records {recorded}"
    );
    assert_eq!(held(3).await, 1);
}

/// A batch that panics (a bug) after sending its writes leaves nothing of
/// itself: its local transaction is rolled back before the panic goes on,
/// and the next batch commits. (The writer that met the panic stops the
/// process, `writer.rs`; this checks what the shard database is left with.)
async fn a_batch_that_panics_writes_nothing(store: &Store) {
    // Serialises the tests that arm failpoints; no other test arms this one.
    let _scenario = fail::FailScenario::setup();
    // The failpoint registry is global and the other tests run meanwhile
    // without the scenario's lock: the armed txid must be one no other test
    // uses (armed with txid 7, it panicked a checkpoint test's batch in CI).
    const PANICKING: u32 = 424_242;
    one(store, flight("AB1", 3, "AB")).await.expect("created");
    let batch = vec![
        Op::Prepare(booking(6, "AB1", SeatChoice::Count(1))),
        Op::Prepare(booking(PANICKING, "AB1", SeatChoice::Count(2))),
    ];
    fail::cfg(
        "participant::batch_panics",
        &format!("return({})", txid(PANICKING)),
    )
    .expect("failpoint");
    let running = store.clone();
    let ran = tokio::spawn(async move { running.apply_batch(&batch).await }).await;
    fail::remove("participant::batch_panics");
    match ran {
        Err(err) => assert!(err.is_panic(), "{err}"),
        Ok(result) => panic!("the batch should have panicked, it returned {result:?}"),
    }
    let seats = seat_rows(store, "AB1").await;
    assert!(
        seats
            .iter()
            .all(|(_, state, txid)| state == "free" && txid.is_none()),
        "the panicked batch left seats taken: {seats:?}"
    );
    let records: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM txns")
        .fetch_one(store.pool())
        .await
        .expect("read");
    assert_eq!(records, 0, "the panicked batch left txns records");
    next_batch_votes_yes(store, 8).await;
}

// The `participant_prepared` gauge follows the batches' prepared_change, and
// restarts from count_prepared: both must agree with the txns table.
async fn prepared_change_counts_fresh_holds_and_decisions(store: &Store) {
    one(store, flight("AB1", 3, "AB")).await.expect("created");
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

/// A PREPARE and an ABORT of the same txid in one batch: the ABORT moves
/// the seats the PREPARE claimed in the same batch (on PostgreSQL, the
/// flush that must not be fused into one statement).
async fn a_txid_prepared_and_aborted_in_one_batch_holds_nothing(store: &Store) {
    one(store, flight("AB2", 1, "AB")).await.expect("created");
    let ops = [
        Op::Prepare(booking(1, "AB2", SeatChoice::Count(1))),
        Op::Prepare(booking(2, "AB2", SeatChoice::Count(1))),
        Op::Abort(txid(1)),
        Op::Commit(txid(2)),
    ];
    let applied = store.apply_batch(&ops).await.expect("batch commits");
    assert_eq!(applied.prepared_change, 0, "two holds, both decided");
    let results = applied.results;
    assert!(
        matches!(&results[0], Ok(Reply::Vote(Vote::Yes(legs))) if legs[0].seats == ["1A"]),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Ok(Reply::Vote(Vote::Yes(legs))) if legs[0].seats == ["1B"]),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Ok(Reply::Ack(TxnState::Aborted))),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Ok(Reply::Ack(TxnState::Committed))),
        "{:?}",
        results[3]
    );
    let states = seat_rows(store, "AB2").await;
    assert_eq!(
        states,
        vec![
            ("1A".into(), "free".into(), None),
            ("1B".into(), "booked".into(), Some(txid(2).to_string())),
        ]
    );
    let states: Vec<(String, String)> = sqlx::query("SELECT txid, state FROM txns ORDER BY txid")
        .fetch_all(store.pool())
        .await
        .expect("read")
        .iter()
        .map(|r| (r.get("txid"), r.get("state")))
        .collect();
    assert_eq!(
        states,
        vec![
            (txid(1).to_string(), "aborted".to_string()),
            (txid(2).to_string(), "committed".to_string()),
        ]
    );
}

/// Every batch case, each on a fresh store of `open`.
macro_rules! batch_cases {
    ($($case:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    super::$case(&super::open(&dir).await).await;
                }
            )*
        }

        /// The batch cases on one throwaway PostgreSQL cluster, a database
        /// each. Without the PostgreSQL server binaries this FAILS, saying
        /// what to install.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn batches_on_postgres() {
            let cases = [$(stringify!($case)),*];
            let cluster = booking_client::pg::PgCluster::start(cases.len())
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL batch tests need a server: {e}"));
            let mut i = 0;
            $(
                eprintln!("postgres case: {}", cases[i]);
                let config = Config::new("s0", &cluster.database_url(i), 4).expect("valid config");
                let store = Store::open(&config).await.expect("open store");
                $case(&store).await;
                store.close().await;
                i += 1;
            )*
            assert_eq!(i, cases.len());
        }
    };
}

batch_cases!(
    a_seat_released_in_a_batch_is_taken_once_by_a_later_op,
    a_no_vote_in_the_middle_of_a_batch_disturbs_no_other_op,
    a_row_count_mismatch_fails_the_whole_batch,
    prepared_change_counts_fresh_holds_and_decisions,
    a_txid_prepared_and_aborted_in_one_batch_holds_nothing,
    a_batch_given_up_on_commits_whole_or_not_at_all,
    a_batch_that_panics_writes_nothing,
);

/// PostgreSQL: the batch statements that find their rows by key (seat
/// claims, record state changes) look the keys up, however stale the
/// statistics. With their state condition open to the planner, it scanned
/// the partial index of every free seat (`seats_free`, priced at a few
/// hundred rows by statistics taken on an empty table) for each claim, and
/// every prepared record (`txns_prepared`) for each decision: a PREPARE
/// batch took 30 ms in the bench.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lookups_use_the_keys_on_postgres() {
    let cluster = booking_client::pg::PgCluster::start(1)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL plan test needs a server: {e}"));
    let config = Config::new("s0", &cluster.database_url(0), 1).expect("valid config");
    let store = Store::open(&config).await.expect("open store");
    // A writer lane's connection: its planner settings are the batches'.
    let mut conn = store.write.acquire().await.expect("writer connection");
    for statement in [
        "ANALYZE",
        "INSERT INTO flights SELECT 'F' || f, 30, 'ABCDEF', 180 FROM generate_series(1, 1000) f",
        "INSERT INTO seats SELECT 'F' || f, s::text, s, 'free', NULL, NULL \
         FROM generate_series(1, 1000) f, generate_series(1, 180) s",
        "INSERT INTO txns SELECT 'T' || t, CASE WHEN t % 100 = 0 THEN 'prepared' ELSE 'committed' END, \
         '2pc', 2, '[]', NULL, t FROM generate_series(1, 2000) t",
    ] {
        sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let mut script = script::Script::default();
    let claim = seats::Claim {
        flight_id: "F7".into(),
        seat_no: "12".into(),
        state: "held",
        txid: txid(1).to_string(),
        passenger: None,
    };
    seats::push_claims(&mut script, Backend::Postgres, &[claim]);
    let decided = [&txid(1)];
    txns::push_set_states(
        &mut script,
        Backend::Postgres,
        &decided,
        TxnState::Prepared,
        TxnState::Committed,
        now_ms(),
    );
    let plans = script.explain(&mut conn).await.expect("explain");
    assert_eq!(plans.len(), 2);
    for plan in plans {
        assert!(
            !plan.contains("seats_free") && !plan.contains("txns_prepared"),
            "a key lookup scans a partial index:\n{plan}"
        );
        assert!(
            plan.contains("_pkey"),
            "a key lookup without its key:\n{plan}"
        );
    }
    drop(conn);
    store.close().await;
}

/// The writer connections never checkpoint; `Store::checkpoint` does, and
/// with it the WAL is reused from its start instead of growing with every
/// batch (the participant's checkpointer task calls it every 200 ms).
#[tokio::test]
async fn checkpoints_keep_the_wal_from_growing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir).await;
    let wal = dir.path().join("s0.db-wal");
    let flights: Vec<Op> = (0..20)
        .map(|f| flight(&format!("W-{f:02}"), 30, "ABCDEF"))
        .collect();
    store.apply_batch(&flights).await.expect("flights");
    let mut n = 0;
    // Without checkpoints the WAL only grows.
    prepare_rounds(&store, &mut n, 40).await;
    let grown = std::fs::metadata(&wal).expect("WAL file").len();
    prepare_rounds(&store, &mut n, 40).await;
    let grown_more = std::fs::metadata(&wal).expect("WAL file").len();
    assert!(
        grown_more > grown,
        "no checkpoint: {grown} then {grown_more} bytes"
    );
    // A checkpoint copies every frame; the next batches reuse the WAL's start.
    let (frames, copied) = store.checkpoint().await.expect("checkpoint");
    assert!(
        frames > 0 && copied == frames,
        "{copied} of {frames} frames copied"
    );
    for _ in 0..4 {
        prepare_rounds(&store, &mut n, 20).await;
        let (frames, copied) = store.checkpoint().await.expect("checkpoint");
        assert_eq!(
            copied, frames,
            "a passive checkpoint with no reader copies all"
        );
    }
    let after = std::fs::metadata(&wal).expect("WAL file").len();
    assert!(
        after <= grown_more,
        "the WAL is reused, not extended: {grown_more} then {after} bytes"
    );
}

/// `rounds` batches of 8 fresh PREPAREs over flights W-00..W-19.
/// Under sustained load the checkpointer runs while the lane writes, and
/// cannot copy the frames the lane adds meanwhile, so no batch could start
/// the WAL over and it grew without bound. Past the restart size the lane
/// copies the rest itself before its next batch, which then starts the WAL
/// over. A reader's open snapshot stands in here for the racing batches: a
/// checkpoint copies no frame past it.
#[tokio::test]
async fn a_long_wal_starts_over_although_the_lane_never_pauses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir).await;
    store.set_wal_restart_frames(16);
    let flights: Vec<Op> = (0..20)
        .map(|f| flight(&format!("W-{f:02}"), 30, "ABCDEF"))
        .collect();
    store.apply_batch(&flights).await.expect("flights");
    let mut n = 0;
    prepare_rounds(&store, &mut n, 10).await;
    let mut reader = store.pool().acquire().await.expect("connection");
    sqlx::query("BEGIN")
        .execute(&mut *reader)
        .await
        .expect("begin");
    sqlx::query("SELECT COUNT(*) FROM txns")
        .fetch_one(&mut *reader)
        .await
        .expect("read");
    prepare_rounds(&store, &mut n, 10).await;
    let (frames, copied) = store.checkpoint().await.expect("checkpoint");
    assert!(
        frames >= 16 && copied < frames,
        "the frames after the reader's snapshot stay: {copied} of {frames} copied"
    );
    sqlx::query("COMMIT")
        .execute(&mut *reader)
        .await
        .expect("commit");
    drop(reader);
    prepare_rounds(&store, &mut n, 1).await;
    let (after, copied) = store.checkpoint().await.expect("checkpoint");
    assert!(
        after < frames / 4 && copied == after,
        "the next batch starts the WAL over: {frames} frames, then {after} ({copied} copied)"
    );
}

async fn prepare_rounds(store: &Store, n: &mut u32, rounds: u32) {
    for _ in 0..rounds {
        let ops: Vec<Op> = (0..8)
            .map(|i| {
                *n += 1;
                Op::Prepare(booking(
                    *n,
                    &format!("W-{:02}", i % 20),
                    SeatChoice::Count(1),
                ))
            })
            .collect();
        let applied = store.apply_batch(&ops).await.expect("prepares");
        assert_eq!(applied.prepared_change, 8, "every PREPARE holds a seat");
    }
}

/// The writer lane's cost per operation, for tuning the store: rounds of
/// one batch of 16 PREPAREs (1 leg, 1 seat, 1 passenger: the shape of
/// `bookctl bench`) then one batch of their 16 COMMITs, through
/// `apply_batch` as a lane runs it, on a temp SQLite file of 300 flights.
/// `cargo test --release -p participant --lib store::tests::batch_throughput -- --ignored --nocapture`
#[tokio::test]
#[ignore = "a measurement, not a test"]
async fn batch_throughput() {
    use std::time::{Duration, Instant};
    const FLIGHTS: u32 = 300;
    const BATCH: u32 = 16;
    const ROUNDS: u32 = 600;
    // BENCH_DIR=/dev/shm leaves fsync out: the SQL alone.
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let store = open(&dir).await;
    let flights: Vec<Op> = (0..FLIGHTS)
        .map(|f| flight(&format!("U-{f:04}"), 30, "ABCDEF"))
        .collect();
    for chunk in flights.chunks(16) {
        store.apply_batch(chunk).await.expect("flights");
    }
    let prepare = |n: u32| {
        let flight_id = format!("U-{:04}", (n * 7919) % FLIGHTS);
        let mut booking = booking(n, &flight_id, SeatChoice::Count(1));
        booking.legs[0].passengers = vec![format!("P{n}")];
        booking.itinerary_legs = 2;
        Op::Prepare(booking)
    };
    let (mut prepare_time, mut commit_time) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        let first = round * BATCH + 1;
        let ops: Vec<Op> = (first..first + BATCH).map(prepare).collect();
        let started = Instant::now();
        let applied = store.apply_batch(&ops).await.expect("prepares");
        prepare_time += started.elapsed();
        assert_eq!(applied.prepared_change, i64::from(BATCH));
        let ops: Vec<Op> = (first..first + BATCH)
            .map(|n| Op::Commit(txid(n)))
            .collect();
        let started = Instant::now();
        let applied = store.apply_batch(&ops).await.expect("commits");
        commit_time += started.elapsed();
        assert_eq!(applied.prepared_change, -i64::from(BATCH));
    }
    let ops = f64::from(ROUNDS * BATCH);
    let per_op = |t: Duration| t.as_secs_f64() / ops * 1e6;
    println!(
        "batches of {BATCH}: PREPARE {:.0} us/op, COMMIT {:.0} us/op, overall {:.0} ops/s",
        per_op(prepare_time),
        per_op(commit_time),
        2.0 * ops / (prepare_time + commit_time).as_secs_f64()
    );
}

//! The `seats` table: picking free seats, checking named ones, and moving a
//! txid's seats between states. Every update names the state it expects in
//! its WHERE clause and asserts the number of rows it changed.
//!
//! The one backend difference: on PostgreSQL the picks lock the rows they
//! return (`FOR UPDATE SKIP LOCKED` for any-seat picks, so concurrent
//! writers take different seats; `FOR UPDATE` for named seats). SQLite has a
//! single writer (`BEGIN IMMEDIATE`) and no row locks.

use std::collections::HashMap;

use sqlx::AnyConnection;
use sqlx::Row;

use super::expect_rows;
use crate::config::Backend;
use crate::error::StoreError;
use crate::model::{FlightMap, TxnId};
use crate::op::SeatView;
use crate::protocol::{SeatState, Transition};

/// Seat rows inserted per INSERT statement when a flight is created.
const INSERT_ROWS_PER_STATEMENT: usize = 200;

/// Up to `count` free seats of the flight, lowest seat_index first.
pub async fn lowest_free(
    conn: &mut AnyConnection,
    backend: Backend,
    flight_id: &str,
    count: usize,
) -> Result<Vec<String>, StoreError> {
    let lock = match backend {
        Backend::Sqlite => "",
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
    };
    let sql = format!(
        "SELECT seat_no FROM seats WHERE flight_id = $1 AND state = 'free' ORDER BY seat_index LIMIT $2{lock}"
    );
    let rows = sqlx::query(&sql)
        .bind(flight_id)
        .bind(count as i64)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get("seat_no"))
        .collect::<Result<_, _>>()?)
}

/// The state of each named seat that exists: seat_no → state.
pub async fn states(
    conn: &mut AnyConnection,
    backend: Backend,
    flight_id: &str,
    seat_nos: &[String],
) -> Result<HashMap<String, String>, StoreError> {
    let lock = match backend {
        Backend::Sqlite => "",
        Backend::Postgres => " FOR UPDATE",
    };
    let placeholders: Vec<String> = (0..seat_nos.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "SELECT seat_no, state FROM seats WHERE flight_id = $1 AND seat_no IN ({}) ORDER BY seat_index{lock}",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql).bind(flight_id);
    for seat_no in seat_nos {
        query = query.bind(seat_no.as_str());
    }
    let rows = query.fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("seat_no")?, row.try_get("state")?)))
        .collect()
}

/// Takes one free seat for `txid`: held or booked, with the passenger.
pub async fn claim(
    conn: &mut AnyConnection,
    flight_id: &str,
    seat_no: &str,
    to: SeatState,
    txid: &TxnId,
    passenger: Option<&str>,
) -> Result<(), StoreError> {
    debug_assert!(
        to != SeatState::Free,
        "claiming a seat leaves it held or booked"
    );
    let result = sqlx::query(
        "UPDATE seats SET state = $1, txid = $2, passenger = $3 \
         WHERE flight_id = $4 AND seat_no = $5 AND state = 'free'",
    )
    .bind(to.as_str())
    .bind(txid.as_str())
    .bind(passenger.map(str::to_string))
    .bind(flight_id)
    .bind(seat_no)
    .execute(&mut *conn)
    .await?;
    expect_rows(
        result,
        1,
        "UPDATE seats claim",
        &format!("{flight_id}/{seat_no}"),
    )
}

/// Moves all `expected` seats of `txid` from `seats_from` to `seats_to`.
pub async fn move_all(
    conn: &mut AnyConnection,
    txid: &TxnId,
    transition: Transition,
    expected: usize,
) -> Result<(), StoreError> {
    let query = if transition.seats_to == SeatState::Free {
        sqlx::query("UPDATE seats SET state = 'free', txid = NULL, passenger = NULL WHERE txid = $1 AND state = $2")
            .bind(txid.as_str())
            .bind(transition.seats_from.as_str())
    } else {
        sqlx::query("UPDATE seats SET state = $2 WHERE txid = $1 AND state = $3")
            .bind(txid.as_str())
            .bind(transition.seats_to.as_str())
            .bind(transition.seats_from.as_str())
    };
    let result = query.execute(&mut *conn).await?;
    expect_rows(
        result,
        expected as u64,
        "UPDATE seats of txid",
        txid.as_str(),
    )
}

/// Inserts every seat of a new flight, free.
pub async fn insert_map(conn: &mut AnyConnection, map: &FlightMap) -> Result<(), StoreError> {
    let seats: Vec<(u32, String)> = map.seats().collect();
    for chunk in seats.chunks(INSERT_ROWS_PER_STATEMENT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("($1, ${}, ${}, 'free')", 2 * i + 2, 2 * i + 3))
            .collect();
        let sql = format!(
            "INSERT INTO seats (flight_id, seat_no, seat_index, state) VALUES {}",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(map.flight_id.as_str());
        for (index, seat_no) in chunk {
            query = query.bind(seat_no.as_str()).bind(i64::from(*index));
        }
        let result = query.execute(&mut *conn).await?;
        expect_rows(result, chunk.len() as u64, "INSERT seats", &map.flight_id)?;
    }
    Ok(())
}

/// How many seats of the flight are in each state.
pub async fn counts(
    conn: &mut AnyConnection,
    flight_id: &str,
) -> Result<HashMap<String, i64>, StoreError> {
    let rows =
        sqlx::query("SELECT state, COUNT(*) AS n FROM seats WHERE flight_id = $1 GROUP BY state")
            .bind(flight_id)
            .fetch_all(&mut *conn)
            .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("state")?, row.try_get("n")?)))
        .collect()
}

/// Every seat of the flight in seat_index order.
pub async fn rows(conn: &mut AnyConnection, flight_id: &str) -> Result<Vec<SeatView>, StoreError> {
    let rows = sqlx::query("SELECT seat_no, state, txid, passenger FROM seats WHERE flight_id = $1 ORDER BY seat_index")
        .bind(flight_id)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(SeatView {
                seat_no: row.try_get("seat_no")?,
                state: row.try_get("state")?,
                txid: row.try_get("txid")?,
                passenger: row.try_get("passenger")?,
            })
        })
        .collect()
}

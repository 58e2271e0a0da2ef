//! The read-ahead: everything a batch will look at, in ONE statement and
//! one row. The `txns` records of its txids, the rows of the flights its
//! bookings name, and the lowest free seats of those flights come back as
//! three JSON arrays, so the batch pays one round trip and one row, not one
//! per record or per flight.
//!
//! - SQLite (`begin_and_read`, which also begins the transaction): one
//!   writer holds the database (`BEGIN IMMEDIATE`), so the free seats are
//!   read for every booking of the batch.
//! - PostgreSQL (`read_postgres`): the free seats are picked and locked
//!   (`FOR UPDATE SKIP LOCKED`, so concurrent writer lanes take different
//!   seats) only for the bookings of txids without a `txns` row, found in
//!   the same statement: a repeated PREPARE, which takes no seat, locks
//!   none that another lane's booking could take. It used to be one
//!   statement per flight after one per table, each a round trip. With
//!   several lanes (`--writers` > 1), the seats of every leg of a new
//!   booking are locked up front, also those of a leg after one that is
//!   refused; until the batch commits another lane skips them, and may
//!   answer sold out for a nearly full flight. One lane (the default)
//!   has no other lane to skip them.

use std::collections::HashMap;

use super::conn::{Col, Conn, Val};
use super::flights::{self, FlightRow};
use super::json_text;
use super::script::Arg;
use super::txns::{self, Columns};
use crate::error::StoreError;
use crate::model::{TxnId, TxnRecord};
use serde::Serialize;
use serde_json::Value;

/// What the read-ahead found.
#[derive(Debug, Default)]
pub struct Found {
    /// By txid, the txids that have a row; a row that fails its checks is
    /// its error, raised when (and if) an operation uses it.
    pub txns: HashMap<String, Result<TxnRecord, StoreError>>,
    /// By flight_id, the flights that exist; unchecked (`flights::decode`).
    pub flights: HashMap<String, FlightRow>,
    /// By flight_id, up to the asked number of free seats, lowest
    /// seat_index first; a flight without free seats is absent.
    pub free: HashMap<String, Vec<String>>,
}

/// Reads the records of `txids`, the rows of `flight_ids`, and up to
/// `seats` free seats of each of `free_of`, after BEGIN IMMEDIATE (the
/// write lock up front). SQLite, on the writer lane's thread.
pub async fn begin_and_read(
    conn: &mut Conn<'_>,
    txids: &[&TxnId],
    flight_ids: &[&str],
    free_of: &[&str],
    seats: usize,
) -> Result<Found, StoreError> {
    conn.execute("BEGIN IMMEDIATE", &[]).await?;
    let texts: Vec<&str> = txids.iter().map(|txid| txid.as_str()).collect();
    let args = [
        Arg::Text(json_text(&texts)),
        Arg::Text(json_text(flight_ids)),
        Arg::Text(json_text(free_of)),
        Arg::Int(seats as i64),
    ];
    let row = conn
        .fetch_optional(
            "SELECT \
             (SELECT json_group_array(json_array(txid, state, kind, itinerary_legs, legs, refusal, \
              updated_at)) FROM txns WHERE txid IN (SELECT value FROM json_each($1))) AS txns, \
             (SELECT json_group_array(json_array(flight_id, seat_rows, letters, capacity)) \
              FROM flights WHERE flight_id IN (SELECT value FROM json_each($2))) AS flights, \
             (SELECT json_group_array(json_array(s.flight_id, s.seat_index, s.seat_no)) \
              FROM json_each($3) AS j JOIN seats AS s ON s.rowid IN (SELECT rowid FROM seats \
              WHERE flight_id = j.value AND state = 'free' ORDER BY seat_index LIMIT $4)) AS free",
            &args,
            &[Col::Text, Col::Text, Col::Text],
        )
        .await?;
    decode(row, txids)
}

/// One booking leg's any-seat demand, for `read_postgres`.
#[derive(Debug, Serialize)]
pub struct Demand<'a> {
    pub txid: &'a str,
    pub flight_id: &'a str,
    pub n: usize,
}

/// Reads the records of `txids` and the rows of `flight_ids`, and picks
/// and locks, per flight, the lowest free seats that the legs of `demand`
/// whose txid has no record ask for.
pub async fn read_postgres(
    conn: &mut Conn<'_>,
    txids: &[&TxnId],
    flight_ids: &[&str],
    demand: &[Demand<'_>],
) -> Result<Found, StoreError> {
    let texts: Vec<&str> = txids.iter().map(|txid| txid.as_str()).collect();
    let args = [
        Arg::Text(json_text(&texts)),
        Arg::Text(json_text(flight_ids)),
        Arg::Text(json_text(demand)),
    ];
    let row = conn
        .fetch_optional(
            "WITH known AS (SELECT txid, state, kind, itinerary_legs, legs, refusal, updated_at \
          FROM txns WHERE txid = ANY(ARRAY(SELECT json_array_elements_text($1::json)))), \
         demand AS (SELECT d.flight_id, SUM(d.n)::bigint AS n \
          FROM json_to_recordset($3::json) AS d(txid text, flight_id text, n bigint) \
          WHERE NOT EXISTS (SELECT 1 FROM known WHERE known.txid = d.txid) \
          GROUP BY d.flight_id), \
         free AS (SELECT s.flight_id, s.seat_index, s.seat_no FROM demand AS d \
          CROSS JOIN LATERAL (SELECT flight_id, seat_index, seat_no FROM seats \
           WHERE flight_id = d.flight_id AND state = 'free' ORDER BY seat_index \
           LIMIT d.n FOR UPDATE SKIP LOCKED) AS s) \
         SELECT \
         (SELECT COALESCE(json_agg(json_build_array(txid, state, kind, itinerary_legs, legs, \
          refusal, updated_at)), '[]')::text FROM known) AS txns, \
         (SELECT COALESCE(json_agg(json_build_array(flight_id, seat_rows, letters, capacity)), \
          '[]')::text FROM flights \
          WHERE flight_id = ANY(ARRAY(SELECT json_array_elements_text($2::json)))) AS flights, \
         (SELECT COALESCE(json_agg(json_build_array(flight_id, seat_index, seat_no)), '[]')::text \
          FROM free) AS free",
            &args,
            &[Col::Text, Col::Text, Col::Text],
        )
        .await?;
    decode(row, txids)
}

/// The three JSON arrays of a read-ahead row.
fn decode(row: Option<Vec<Val>>, txids: &[&TxnId]) -> Result<Found, StoreError> {
    let Some([txns_text, flights_text, free_text]) =
        row.and_then(|row| <[Val; 3]>::try_from(row).ok())
    else {
        return Err(corrupt("read-ahead", "its one row"));
    };
    let by_text: HashMap<&str, &TxnId> = txids.iter().map(|txid| (txid.as_str(), *txid)).collect();
    let mut found = Found::default();
    for mut columns in arrays(&txns_text.text()?, "txns")? {
        let text = take_text(&mut columns, 0).ok_or_else(|| corrupt("txns", "a txid"))?;
        let Some(txid) = by_text.get(text.as_str()) else {
            return Err(corrupt("txns", "a row for a txid that was not asked for"));
        };
        let record = txn_columns(&mut columns)
            .ok_or_else(|| txns::corrupt(txid, "a column of an unexpected type".into()))
            .and_then(|columns| txns::check(txid, columns));
        found.txns.insert(text, record);
    }
    for mut columns in arrays(&flights_text.text()?, "flights")? {
        let flight_id =
            take_text(&mut columns, 0).ok_or_else(|| corrupt("flights", "a flight_id"))?;
        let flight = (|| {
            Some(FlightRow {
                seat_rows: columns.get(1)?.as_i64()?,
                letters: take_text(&mut columns, 2)?,
                capacity: columns.get(3)?.as_i64()?,
            })
        })()
        .ok_or_else(|| flights::corrupt(&flight_id, "a column of an unexpected type".into()))?;
        found.flights.insert(flight_id, flight);
    }
    let mut free: Vec<(String, i64, String)> = Vec::new();
    for mut columns in arrays(&free_text.text()?, "seats")? {
        let seat = (|| {
            Some((
                take_text(&mut columns, 0)?,
                columns.get(1)?.as_i64()?,
                take_text(&mut columns, 2)?,
            ))
        })()
        .ok_or_else(|| corrupt("seats", "a free seat"))?;
        free.push(seat);
    }
    free.sort_unstable();
    for (flight_id, _, seat_no) in free {
        found.free.entry(flight_id).or_default().push(seat_no);
    }
    Ok(found)
}

/// The rows of a `json_group_array` of `json_array`s.
fn arrays(text: &str, table: &'static str) -> Result<Vec<Vec<Value>>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::CorruptRow {
        table,
        key: "read-ahead".into(),
        problem: format!("unreadable rows: {e}"),
    })
}

fn txn_columns(columns: &mut [Value]) -> Option<Columns> {
    Some(Columns {
        state: take_text(columns, 1)?,
        kind: take_text(columns, 2)?,
        itinerary_legs: columns.get(3)?.as_i64()?,
        legs: take_text(columns, 4)?,
        refusal: match columns.get_mut(5)? {
            Value::Null => None,
            value => Some(take_string(value)?),
        },
        updated_at: columns.get(6)?.as_i64()?,
    })
}

fn take_text(columns: &mut [Value], index: usize) -> Option<String> {
    take_string(columns.get_mut(index)?)
}

fn take_string(value: &mut Value) -> Option<String> {
    match value.take() {
        Value::String(text) => Some(text),
        _ => None,
    }
}

fn corrupt(table: &'static str, what: &str) -> StoreError {
    StoreError::CorruptRow {
        table,
        key: "read-ahead".into(),
        problem: format!("{what} is missing or of an unexpected type"),
    }
}

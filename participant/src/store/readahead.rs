//! SQLite's read-ahead: everything a batch will look at, in ONE statement
//! and one row. The `txns` records of its txids, the rows of the flights
//! its bookings name, and the lowest free seats of those flights come back
//! as three JSON arrays (`json_group_array`), so the batch pays one round
//! trip to the sqlx worker thread and one row, not one per record.
//!
//! PostgreSQL reads the same with one statement per table (`txns::find_each`,
//! `flights::find_rows`) and picks seats only when a booking needs them, so
//! that the rows it locks (`FOR UPDATE SKIP LOCKED`) are those it takes.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::{AnyConnection, Row};

use super::flights::{self, FlightRow};
use super::json_text;
use super::txns::{self, Columns};
use crate::error::StoreError;
use crate::model::{TxnId, TxnRecord};

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
/// `seats` free seats of each of `free_of`.
pub async fn read(
    conn: &mut AnyConnection,
    txids: &[&TxnId],
    flight_ids: &[&str],
    free_of: &[&str],
    seats: usize,
) -> Result<Found, StoreError> {
    let texts: Vec<&str> = txids.iter().map(|txid| txid.as_str()).collect();
    let row = sqlx::query(
        "SELECT \
         (SELECT json_group_array(json_array(txid, state, kind, itinerary_legs, legs, refusal, \
          updated_at)) FROM txns WHERE txid IN (SELECT value FROM json_each($1))) AS txns, \
         (SELECT json_group_array(json_array(flight_id, seat_rows, letters, capacity)) \
          FROM flights WHERE flight_id IN (SELECT value FROM json_each($2))) AS flights, \
         (SELECT json_group_array(json_array(s.flight_id, s.seat_index, s.seat_no)) \
          FROM json_each($3) AS j JOIN seats AS s ON s.rowid IN (SELECT rowid FROM seats \
          WHERE flight_id = j.value AND state = 'free' ORDER BY seat_index LIMIT $4)) AS free",
    )
    .bind(json_text(&texts))
    .bind(json_text(flight_ids))
    .bind(json_text(free_of))
    .bind(seats as i64)
    .fetch_one(&mut *conn)
    .await?;
    let by_text: HashMap<&str, &TxnId> = txids.iter().map(|txid| (txid.as_str(), *txid)).collect();
    let mut found = Found::default();
    for mut columns in arrays(&row.try_get::<String, _>("txns")?, "txns")? {
        let text = take_text(&mut columns, 0).ok_or_else(|| corrupt("txns", "a txid"))?;
        let Some(txid) = by_text.get(text.as_str()) else {
            return Err(corrupt("txns", "a row for a txid that was not asked for"));
        };
        let record = txn_columns(&mut columns)
            .ok_or_else(|| txns::corrupt(txid, "a column of an unexpected type".into()))
            .and_then(|columns| txns::check(txid, columns));
        found.txns.insert(text, record);
    }
    for mut columns in arrays(&row.try_get::<String, _>("flights")?, "flights")? {
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
    for mut columns in arrays(&row.try_get::<String, _>("free")?, "seats")? {
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

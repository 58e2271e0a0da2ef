//! The `flights` table: seat maps, and a flight's inventory (seat counts per
//! state, checked against its capacity after reading).

use super::conn::{Col, Conn};
use super::script::Arg;
use super::{expect_count, seats};
use crate::error::StoreError;
use crate::model::FlightMap;
use crate::op::Inventory;

/// A `flights` row as read, before its checks (`decode`).
#[derive(Debug, Clone)]
pub struct FlightRow {
    pub seat_rows: i64,
    pub letters: String,
    pub capacity: i64,
}

impl FlightRow {
    /// The row `insert` writes for `map`.
    pub fn of(map: &FlightMap) -> FlightRow {
        FlightRow {
            seat_rows: i64::from(map.rows),
            letters: map.letters.clone(),
            capacity: i64::from(map.capacity()),
        }
    }
}

/// The seat map of `flight_id`, if the flight exists.
pub async fn find(conn: &mut Conn<'_>, flight_id: &str) -> Result<Option<FlightMap>, StoreError> {
    find_row(conn, flight_id)
        .await?
        .map(|row| decode(flight_id, &row))
        .transpose()
}

/// The row of `flight_id`, if the flight exists; unchecked.
pub async fn find_row(
    conn: &mut Conn<'_>,
    flight_id: &str,
) -> Result<Option<FlightRow>, StoreError> {
    let row = conn
        .fetch_optional(
            "SELECT seat_rows, letters, capacity FROM flights WHERE flight_id = $1",
            &[Arg::Text(flight_id.to_string())],
            &[Col::Int, Col::Text, Col::Int],
        )
        .await?;
    row.map(|row| {
        let [seat_rows, letters, capacity] =
            <[_; 3]>::try_from(row).expect("three columns asked for");
        Ok(FlightRow {
            seat_rows: seat_rows.int()?,
            letters: letters.text()?,
            capacity: capacity.int()?,
        })
    })
    .transpose()
}

/// The seat map a row holds, checked.
pub fn decode(flight_id: &str, row: &FlightRow) -> Result<FlightMap, StoreError> {
    let FlightRow {
        seat_rows: rows,
        capacity,
        ..
    } = *row;
    let map = FlightMap {
        flight_id: flight_id.to_string(),
        rows: u32::try_from(rows).map_err(|_| corrupt(flight_id, format!("seat_rows {rows}")))?,
        letters: row.letters.clone(),
    };
    if map.letters.is_empty() || i64::from(map.capacity()) != capacity {
        return Err(corrupt(
            flight_id,
            format!("capacity {capacity} does not match {}", map.describe()),
        ));
    }
    Ok(map)
}

/// Inserts the flight row (its seats are inserted by `seats::insert_map`).
pub async fn insert(conn: &mut Conn<'_>, map: &FlightMap) -> Result<(), StoreError> {
    let changed = conn
        .execute(
            "INSERT INTO flights (flight_id, seat_rows, letters, capacity) VALUES ($1, $2, $3, $4)",
            &[
                Arg::Text(map.flight_id.clone()),
                Arg::Int(i64::from(map.rows)),
                Arg::Text(map.letters.clone()),
                Arg::Int(i64::from(map.capacity())),
            ],
        )
        .await?;
    expect_count(changed, 1, "INSERT flights", &map.flight_id)
}

/// Seat counts of the flight (and its seats if asked for).
pub async fn inventory(
    conn: &mut Conn<'_>,
    map: &FlightMap,
    include_seats: bool,
) -> Result<Inventory, StoreError> {
    let counts = seats::counts(conn, &map.flight_id).await?;
    let count = |state: &str| counts.get(state).copied().unwrap_or(0);
    let (free, held, booked) = (count("free"), count("held"), count("booked"));
    if free + held + booked != i64::from(map.capacity()) || counts.len() > 3 {
        return Err(corrupt(
            &map.flight_id,
            format!("seat counts {counts:?} do not add up to {}", map.capacity()),
        ));
    }
    let seats = if include_seats {
        seats::rows(conn, &map.flight_id).await?
    } else {
        Vec::new()
    };
    Ok(Inventory {
        map: map.clone(),
        free: free as u32,
        held: held as u32,
        booked: booked as u32,
        seats,
    })
}

pub fn corrupt(flight_id: &str, problem: String) -> StoreError {
    StoreError::CorruptRow {
        table: "flights",
        key: flight_id.to_string(),
        problem,
    }
}

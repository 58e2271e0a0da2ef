//! The `seats` table: picking free seats, checking named ones, and moving a
//! txid's seats between states. Every update names the state it expects in
//! its WHERE clause and asserts the number of rows it changed.
//!
//! A batch's claims and moves go as multi-row statements in its write
//! script (`script.rs`); each function here that adds one has a `check_`
//! twin that reads its outcome and fails with the error one statement per
//! seat or per txid would have given.
//!
//! The one backend difference: on PostgreSQL the picks lock the rows they
//! return (`FOR UPDATE SKIP LOCKED` for any-seat picks, so concurrent
//! writers take different seats; `FOR UPDATE` for named seats). SQLite has a
//! single writer (`BEGIN IMMEDIATE`) and no row locks.

use std::collections::HashMap;

use super::conn::{Col, Conn};
use super::script::{Arg, Outcome, Script};
use super::{expect_count, json_in, json_text, key_only};
use crate::config::Backend;
use crate::error::StoreError;
use crate::model::{FlightMap, TxnId};
use crate::op::SeatView;
use crate::protocol::{SeatState, Transition};
use serde::Serialize;

/// Seat rows inserted per INSERT statement when a flight is created.
const INSERT_ROWS_PER_STATEMENT: usize = 200;

/// Up to `count` free seats of the flight, lowest seat_index first.
pub async fn lowest_free(
    conn: &mut Conn<'_>,
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
    let args = [Arg::Text(flight_id.to_string()), Arg::Int(count as i64)];
    conn.fetch(&sql, &args, &[Col::Text])
        .await?
        .into_iter()
        .map(|row| first(row).text())
        .collect()
}

/// The state of each named seat that exists: seat_no → state.
pub async fn states(
    conn: &mut Conn<'_>,
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
    let mut args = vec![Arg::Text(flight_id.to_string())];
    args.extend(seat_nos.iter().map(|seat_no| Arg::Text(seat_no.clone())));
    conn.fetch(&sql, &args, &[Col::Text, Col::Text])
        .await?
        .into_iter()
        .map(|row| {
            let [seat_no, state] = <[_; 2]>::try_from(row).expect("two columns asked for");
            Ok((seat_no.text()?, state.text()?))
        })
        .collect()
}

/// The one column of a row.
fn first(row: Vec<super::conn::Val>) -> super::conn::Val {
    row.into_iter().next().expect("one column asked for")
}

/// One seat a batch takes for a txid: held or booked, with the passenger.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    pub flight_id: String,
    pub seat_no: String,
    pub state: &'static str,
    pub txid: String,
    pub passenger: Option<String>,
}

/// Adds the statement that takes every seat of `claims` (all free, none
/// twice); `check_claims` checks its outcome.
pub fn push_claims(script: &mut Script, backend: Backend, claims: &[Claim]) -> usize {
    let claimed = match backend {
        Backend::Sqlite => {
            "(SELECT value ->> 'flight_id' AS flight_id, value ->> 'seat_no' AS seat_no, \
             value ->> 'state' AS state, value ->> 'txid' AS txid, \
             value ->> 'passenger' AS passenger FROM json_each($1)) AS c"
        }
        Backend::Postgres => {
            "json_to_recordset($1::json) \
             AS c(flight_id text, seat_no text, state text, txid text, passenger text)"
        }
    };
    let state = key_only(backend, "seats.state");
    let sql = format!(
        "UPDATE seats SET state = c.state, txid = c.txid, passenger = c.passenger \
         FROM {claimed} \
         WHERE seats.flight_id = c.flight_id AND seats.seat_no = c.seat_no AND {state} = 'free'"
    );
    script.push(sql, vec![Arg::Text(json_text(claims))])
}

/// Fails unless every seat of `claims` was taken, naming the first one
/// that was not free (as one UPDATE per seat would have).
pub async fn check_claims(
    conn: &mut Conn<'_>,
    claims: &[Claim],
    outcome: &Outcome,
) -> Result<(), StoreError> {
    if outcome.rows_affected == claims.len() as u64 {
        return Ok(());
    }
    for claim in claims {
        let row = conn
            .fetch_optional(
                "SELECT state, txid FROM seats WHERE flight_id = $1 AND seat_no = $2",
                &[
                    Arg::Text(claim.flight_id.clone()),
                    Arg::Text(claim.seat_no.clone()),
                ],
                &[Col::Text, Col::Text],
            )
            .await?;
        let taken = match row {
            Some(row) => {
                let [state, txid] = <[_; 2]>::try_from(row).expect("two columns asked for");
                let (state, txid) = (state.text()?, txid.opt_text()?);
                state == claim.state && txid.as_deref() == Some(claim.txid.as_str())
            }
            None => false,
        };
        if !taken {
            return Err(StoreError::RowCount {
                statement: "UPDATE seats claim",
                key: format!("{}/{}", claim.flight_id, claim.seat_no),
                expected: 1,
                actual: 0,
            });
        }
    }
    Err(StoreError::RowCount {
        statement: "UPDATE seats claim",
        key: format!("{}/{}", claims[0].flight_id, claims[0].seat_no),
        expected: claims.len() as u64,
        actual: outcome.rows_affected,
    })
}

/// One txid's seats to move: all `expected` of them, from
/// `transition.seats_from` to `transition.seats_to`.
#[derive(Debug, Clone)]
pub struct Move {
    pub txid: TxnId,
    pub transition: Transition,
    pub expected: usize,
}

/// Where the outcomes of `push_moves`' statements are.
#[derive(Debug)]
pub struct MoveStatements {
    /// The seat count per txid and state before the moves.
    counts: usize,
    /// One UPDATE per kind of transition.
    updates: Vec<(Transition, usize)>,
}

/// Adds the statements that move the seats of every txid of `moves` (each
/// txid once): a count of their seats per state, then one UPDATE per kind
/// of transition; `check_moves` checks their outcomes. The count reads no
/// row the UPDATEs write but those it counts before they move, so the
/// statements may go fused (`Script`).
pub fn push_moves(script: &mut Script, backend: Backend, moves: &[Move]) -> MoveStatements {
    let txids = |filter: &dyn Fn(&Move) -> bool| {
        let txids: Vec<&str> = moves
            .iter()
            .filter(|m| filter(m))
            .map(|m| m.txid.as_str())
            .collect();
        Arg::Text(json_text(&txids))
    };
    let in_list = json_in(backend, "txid", 1);
    // Released rows lose their txid, so they are counted before they move.
    let counted = format!(
        "SELECT txid, state, COUNT(*) AS n FROM seats WHERE {in_list} GROUP BY txid, state"
    );
    let sql = match backend {
        Backend::Sqlite => {
            format!(
                "SELECT json_group_array(json_array(txid, state, n)) AS counts FROM ({counted})"
            )
        }
        Backend::Postgres => format!(
            "SELECT COALESCE(json_agg(json_build_array(txid, state, n)), '[]')::text AS counts \
             FROM ({counted}) AS c"
        ),
    };
    let counts = script.push_query(sql, vec![txids(&|_| true)]);
    let mut transitions: Vec<Transition> = Vec::new();
    for m in moves {
        if !transitions.contains(&m.transition) {
            transitions.push(m.transition);
        }
    }
    let updates = transitions
        .into_iter()
        .map(|transition| {
            let set = match transition.seats_to {
                SeatState::Free => "state = 'free', txid = NULL, passenger = NULL".to_string(),
                to => format!("state = '{}'", to.as_str()),
            };
            // The state moved from is in the text, not bound: SQLite
            // plans for a bound value compared with `state` (the column
            // of `seats_free`'s condition) and so prepares the statement
            // again at every run.
            let from = transition.seats_from.as_str();
            let sql = format!("UPDATE seats SET {set} WHERE {in_list} AND state = '{from}'");
            let args = vec![txids(&|m| m.transition == transition)];
            (transition, script.push(sql, args))
        })
        .collect();
    MoveStatements { counts, updates }
}

/// Fails unless every txid of `moves` had exactly its expected seats in
/// the state it moved them from (naming the first that did not, in the
/// order of `moves`, as one UPDATE per txid would have), and every UPDATE
/// moved them all.
pub fn check_moves(
    moves: &[Move],
    statements: &MoveStatements,
    outcomes: &[Outcome],
) -> Result<(), StoreError> {
    let counts = &outcomes[statements.counts];
    let text = counts.text.as_deref().unwrap_or("[]");
    let counted: Vec<(String, String, i64)> =
        serde_json::from_str(text).map_err(|e| StoreError::CorruptRow {
            table: "seats",
            key: "seat counts per txid".into(),
            problem: format!("{e} in {text}"),
        })?;
    let count = |txid: &str, state: SeatState| {
        counted
            .iter()
            .find(|(t, s, _)| t == txid && s == state.as_str())
            .map_or(0, |(_, _, n)| *n as u64)
    };
    for m in moves {
        let actual = count(m.txid.as_str(), m.transition.seats_from);
        if actual != m.expected as u64 {
            return Err(StoreError::RowCount {
                statement: "UPDATE seats of txid",
                key: m.txid.to_string(),
                expected: m.expected as u64,
                actual,
            });
        }
    }
    for (transition, index) in &statements.updates {
        let group = moves.iter().filter(|m| m.transition == *transition);
        let expected: usize = group.clone().map(|m| m.expected).sum();
        let first = group.map(|m| m.txid.as_str()).next().unwrap_or_default();
        let result = &outcomes[*index];
        if result.rows_affected != expected as u64 {
            return Err(StoreError::RowCount {
                statement: "UPDATE seats of txid",
                key: first.to_string(),
                expected: expected as u64,
                actual: result.rows_affected,
            });
        }
    }
    Ok(())
}

/// Inserts every seat of a new flight, free.
pub async fn insert_map(conn: &mut Conn<'_>, map: &FlightMap) -> Result<(), StoreError> {
    let seats: Vec<(u32, String)> = map.seats().collect();
    for chunk in seats.chunks(INSERT_ROWS_PER_STATEMENT) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("($1, ${}, ${}, 'free')", 2 * i + 2, 2 * i + 3))
            .collect();
        let sql = format!(
            "INSERT INTO seats (flight_id, seat_no, seat_index, state) VALUES {}",
            values.join(", ")
        );
        let mut args = vec![Arg::Text(map.flight_id.clone())];
        for (index, seat_no) in chunk {
            args.push(Arg::Text(seat_no.clone()));
            args.push(Arg::Int(i64::from(*index)));
        }
        let changed = conn.execute(&sql, &args).await?;
        expect_count(changed, chunk.len() as u64, "INSERT seats", &map.flight_id)?;
    }
    Ok(())
}

/// How many seats of the flight are in each state.
pub async fn counts(
    conn: &mut Conn<'_>,
    flight_id: &str,
) -> Result<HashMap<String, i64>, StoreError> {
    conn.fetch(
        "SELECT state, COUNT(*) AS n FROM seats WHERE flight_id = $1 GROUP BY state",
        &[Arg::Text(flight_id.to_string())],
        &[Col::Text, Col::Int],
    )
    .await?
    .into_iter()
    .map(|row| {
        let [state, n] = <[_; 2]>::try_from(row).expect("two columns asked for");
        Ok((state.text()?, n.int()?))
    })
    .collect()
}

/// Every seat of the flight in seat_index order.
pub async fn rows(conn: &mut Conn<'_>, flight_id: &str) -> Result<Vec<SeatView>, StoreError> {
    conn.fetch(
        "SELECT seat_no, state, txid, passenger FROM seats WHERE flight_id = $1 ORDER BY seat_index",
        &[Arg::Text(flight_id.to_string())],
        &[Col::Text, Col::Text, Col::Text, Col::Text],
    )
    .await?
    .into_iter()
    .map(|row| {
        let [seat_no, state, txid, passenger] =
            <[_; 4]>::try_from(row).expect("four columns asked for");
        Ok(SeatView {
            seat_no: seat_no.text()?,
            state: state.text()?,
            txid: txid.opt_text()?,
            passenger: passenger.opt_text()?,
        })
    })
    .collect()
}

//! The `txns` table: one row per txid this shard has seen. Rows are checked
//! before they are written and after they are read (`TxnRecord::validate`).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::Row;

use super::conn::{Col, Conn};
use super::script::{Arg, Outcome, Script};
use super::{json_in, json_text, key_only, TxnRow};
use crate::config::Backend;
use crate::error::StoreError;
use crate::model::{Refusal, TxnId, TxnKind, TxnRecord, TxnState};

/// The record of `txid`, if any.
pub async fn find(conn: &mut Conn<'_>, txid: &TxnId) -> Result<Option<TxnRecord>, StoreError> {
    let row = conn
        .fetch_optional(
            "SELECT state, kind, itinerary_legs, legs, refusal, updated_at FROM txns WHERE txid = $1",
            &[Arg::Text(txid.to_string())],
            &[Col::Text, Col::Text, Col::Int, Col::Text, Col::Text, Col::Int],
        )
        .await?;
    row.map(|row| {
        let [state, kind, itinerary_legs, legs, refusal, updated_at] =
            <[_; 6]>::try_from(row).expect("six columns asked for");
        let columns = Columns {
            state: state.text()?,
            kind: kind.text()?,
            itinerary_legs: itinerary_legs.int()?,
            legs: legs.text()?,
            refusal: refusal.opt_text()?,
            updated_at: updated_at.int()?,
        };
        check(txid, columns)
    })
    .transpose()
}

/// A `txns` row to insert, as the JSON the multi-row INSERT reads.
#[derive(Serialize)]
struct NewRow<'a> {
    txid: &'a str,
    state: &'static str,
    kind: &'static str,
    itinerary_legs: i64,
    legs: String,
    refusal: Option<String>,
    updated_at: i64,
}

/// Adds the statement that inserts new records (txids unknown to the
/// shard), each checked first; `check_insert` checks its outcome.
pub fn push_insert(
    script: &mut Script,
    backend: Backend,
    records: &[&TxnRecord],
) -> Result<usize, StoreError> {
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        record
            .validate()
            .map_err(|problem| corrupt(&record.txid, format!("refusing to write it: {problem}")))?;
        rows.push(NewRow {
            txid: record.txid.as_str(),
            state: record.state.as_str(),
            kind: record.kind.as_str(),
            itinerary_legs: i64::from(record.itinerary_legs),
            legs: record.legs_json(),
            refusal: record.refusal.as_ref().map(Refusal::to_json),
            updated_at: record.updated_at_ms,
        });
    }
    let sql = match backend {
        Backend::Sqlite => {
            "INSERT INTO txns (txid, state, kind, itinerary_legs, legs, refusal, updated_at) \
             SELECT value ->> 'txid', value ->> 'state', value ->> 'kind', \
             value ->> 'itinerary_legs', value ->> 'legs', value ->> 'refusal', \
             value ->> 'updated_at' FROM json_each($1)"
        }
        Backend::Postgres => {
            "INSERT INTO txns (txid, state, kind, itinerary_legs, legs, refusal, updated_at) \
             SELECT txid, state, kind, itinerary_legs, legs, refusal, updated_at \
             FROM json_to_recordset($1::json) AS r(txid text, state text, kind text, \
             itinerary_legs bigint, legs text, refusal text, updated_at bigint)"
        }
    };
    Ok(script.push(sql, vec![Arg::Text(json_text(&rows))]))
}

/// Fails unless every record of `push_insert` was inserted.
pub fn check_insert(records: &[&TxnRecord], outcome: &Outcome) -> Result<(), StoreError> {
    if outcome.rows_affected == records.len() as u64 {
        return Ok(());
    }
    Err(StoreError::RowCount {
        statement: "INSERT txns",
        key: records[0].txid.to_string(),
        expected: records.len() as u64,
        actual: outcome.rows_affected,
    })
}

/// Adds the statement that moves every record of `txids` from state
/// `from` to `to`; `check_set_states` checks its outcome.
pub fn push_set_states(
    script: &mut Script,
    backend: Backend,
    txids: &[&TxnId],
    from: TxnState,
    to: TxnState,
    now_ms: i64,
) -> usize {
    let sql = format!(
        "UPDATE txns SET state = $1, updated_at = $2 WHERE {} AND {} = $4",
        json_in(backend, "txid", 3),
        key_only(backend, "state")
    );
    let texts: Vec<&str> = txids.iter().map(|txid| txid.as_str()).collect();
    let args = vec![
        Arg::Text(to.as_str().to_string()),
        Arg::Int(now_ms),
        Arg::Text(json_text(&texts)),
        Arg::Text(from.as_str().to_string()),
    ];
    script.push(sql, args)
}

/// Fails unless every record of `push_set_states` moved, naming the first
/// that did not (as one UPDATE per txid would have).
pub async fn check_set_states(
    conn: &mut Conn<'_>,
    txids: &[&TxnId],
    to: TxnState,
    outcome: &Outcome,
) -> Result<(), StoreError> {
    if outcome.rows_affected == txids.len() as u64 {
        return Ok(());
    }
    for txid in txids {
        let state = match conn
            .fetch_optional(
                "SELECT state FROM txns WHERE txid = $1",
                &[Arg::Text(txid.to_string())],
                &[Col::Text],
            )
            .await?
        {
            Some(row) => row.into_iter().next().expect("one column").opt_text()?,
            None => None,
        };
        if state.as_deref() != Some(to.as_str()) {
            return Err(StoreError::RowCount {
                statement: "UPDATE txns state",
                key: txid.to_string(),
                expected: 1,
                actual: 0,
            });
        }
    }
    Err(StoreError::RowCount {
        statement: "UPDATE txns state",
        key: txids[0].to_string(),
        expected: txids.len() as u64,
        actual: outcome.rows_affected,
    })
}

/// Prepared txids last changed before `before_ms`, oldest first.
pub async fn in_doubt(
    conn: &mut AnyConnection,
    before_ms: i64,
    limit: u32,
) -> Result<Vec<TxnId>, StoreError> {
    let rows = sqlx::query(
        "SELECT txid FROM txns WHERE state = 'prepared' AND updated_at < $1 ORDER BY updated_at, txid LIMIT $2",
    )
    .bind(before_ms)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let text: String = row.try_get("txid")?;
            TxnId::parse("txid", &text).map_err(|e| StoreError::CorruptRow {
                table: "txns",
                key: text.clone(),
                problem: e.to_string(),
            })
        })
        .collect()
}

/// Up to `limit` rows: prepared ones oldest first, or all newest first.
pub async fn list(
    conn: &mut AnyConnection,
    prepared_only: bool,
    limit: u32,
) -> Result<Vec<TxnRow>, StoreError> {
    let sql = if prepared_only {
        "SELECT txid, state, updated_at FROM txns WHERE state = 'prepared' ORDER BY updated_at, txid LIMIT $1"
    } else {
        "SELECT txid, state, updated_at FROM txns ORDER BY updated_at DESC, txid LIMIT $1"
    };
    let rows = sqlx::query(sql)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(decode_row).collect()
}

/// The ListTxns row of `txid`, if any.
pub async fn find_row(
    conn: &mut AnyConnection,
    txid: &TxnId,
) -> Result<Option<TxnRow>, StoreError> {
    let row = sqlx::query("SELECT txid, state, updated_at FROM txns WHERE txid = $1")
        .bind(txid.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(decode_row).transpose()
}

/// Rows in state prepared.
pub async fn count_prepared(conn: &mut AnyConnection) -> Result<u64, StoreError> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM txns WHERE state = 'prepared'")
        .fetch_one(&mut *conn)
        .await?;
    u64::try_from(count).map_err(|_| StoreError::CorruptRow {
        table: "txns",
        key: "COUNT(*)".into(),
        problem: format!("a negative count {count}"),
    })
}

fn decode_row(row: &AnyRow) -> Result<TxnRow, StoreError> {
    let txid: String = row.try_get("txid")?;
    let state: String = row.try_get("state")?;
    let state = TxnState::parse(&state).ok_or_else(|| StoreError::CorruptRow {
        table: "txns",
        key: txid.clone(),
        problem: format!("unknown state {state:?}"),
    })?;
    Ok(TxnRow {
        txid,
        state,
        updated_at_ms: row.try_get("updated_at")?,
    })
}

/// A `txns` row's columns as read, before their checks.
pub struct Columns {
    pub state: String,
    pub kind: String,
    pub itinerary_legs: i64,
    pub legs: String,
    pub refusal: Option<String>,
    pub updated_at: i64,
}

/// The record the columns hold, checked (`TxnRecord::validate`).
pub fn check(txid: &TxnId, columns: Columns) -> Result<TxnRecord, StoreError> {
    let Columns {
        state,
        kind,
        itinerary_legs,
        legs,
        refusal,
        updated_at,
    } = columns;
    let record = TxnRecord {
        txid: txid.clone(),
        state: TxnState::parse(&state)
            .ok_or_else(|| corrupt(txid, format!("unknown state {state:?}")))?,
        kind: TxnKind::parse(&kind)
            .ok_or_else(|| corrupt(txid, format!("unknown kind {kind:?}")))?,
        itinerary_legs: u32::try_from(itinerary_legs)
            .map_err(|_| corrupt(txid, format!("itinerary_legs {itinerary_legs}")))?,
        legs: serde_json::from_str(&legs).map_err(|e| corrupt(txid, format!("legs JSON: {e}")))?,
        refusal: refusal
            .map(|text| Refusal::from_json(&text))
            .transpose()
            .map_err(|e| corrupt(txid, e))?,
        updated_at_ms: updated_at,
    };
    record
        .validate()
        .map_err(|problem| corrupt(txid, problem))?;
    Ok(record)
}

pub fn corrupt(txid: &TxnId, problem: String) -> StoreError {
    StoreError::CorruptRow {
        table: "txns",
        key: txid.to_string(),
        problem,
    }
}

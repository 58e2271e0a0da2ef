//! The `txns` table: one row per txid this shard has seen. Rows are checked
//! before they are written and after they are read (`TxnRecord::validate`).

use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::Row;

use super::{expect_rows, TxnRow};
use crate::error::StoreError;
use crate::model::{Refusal, TxnId, TxnKind, TxnRecord, TxnState};

/// The record of `txid`, if any.
pub async fn find(conn: &mut AnyConnection, txid: &TxnId) -> Result<Option<TxnRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT state, kind, itinerary_legs, legs, refusal, updated_at FROM txns WHERE txid = $1",
    )
    .bind(txid.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| decode(txid, &row)).transpose()
}

/// Inserts a new record; the txid must be unknown.
pub async fn insert(conn: &mut AnyConnection, record: &TxnRecord) -> Result<(), StoreError> {
    record
        .validate()
        .map_err(|problem| corrupt(&record.txid, format!("refusing to write it: {problem}")))?;
    let result = sqlx::query(
        "INSERT INTO txns (txid, state, kind, itinerary_legs, legs, refusal, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(record.txid.as_str())
    .bind(record.state.as_str())
    .bind(record.kind.as_str())
    .bind(i64::from(record.itinerary_legs))
    .bind(record.legs_json())
    .bind(record.refusal.as_ref().map(Refusal::to_json))
    .bind(record.updated_at_ms)
    .execute(&mut *conn)
    .await?;
    expect_rows(result, 1, "INSERT txns", record.txid.as_str())
}

/// Moves the record from state `from` to `to`.
pub async fn set_state(
    conn: &mut AnyConnection,
    txid: &TxnId,
    from: TxnState,
    to: TxnState,
    now_ms: i64,
) -> Result<(), StoreError> {
    let result =
        sqlx::query("UPDATE txns SET state = $1, updated_at = $2 WHERE txid = $3 AND state = $4")
            .bind(to.as_str())
            .bind(now_ms)
            .bind(txid.as_str())
            .bind(from.as_str())
            .execute(&mut *conn)
            .await?;
    expect_rows(result, 1, "UPDATE txns state", txid.as_str())
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

fn decode(txid: &TxnId, row: &AnyRow) -> Result<TxnRecord, StoreError> {
    let state: String = row.try_get("state")?;
    let kind: String = row.try_get("kind")?;
    let itinerary_legs: i64 = row.try_get("itinerary_legs")?;
    let legs: String = row.try_get("legs")?;
    let refusal: Option<String> = row.try_get("refusal")?;
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
        updated_at_ms: row.try_get("updated_at")?,
    };
    record
        .validate()
        .map_err(|problem| corrupt(txid, problem))?;
    Ok(record)
}

fn corrupt(txid: &TxnId, problem: String) -> StoreError {
    StoreError::CorruptRow {
        table: "txns",
        key: txid.to_string(),
        problem,
    }
}

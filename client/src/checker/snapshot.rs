//! Reading the shard databases into memory, one consistent snapshot per
//! shard (a read transaction; REPEATABLE READ on PostgreSQL, a WAL read
//! snapshot on SQLite). Snapshots of different shards are taken one after
//! the other, so cross-shard comparisons are exact only at quiescence.
//!
//! Reads only: nothing here writes to a shard database, and a SQLite file
//! that does not exist is an error rather than created.

use sqlx::{AnyConnection, Connection, Row};

use super::CheckError;

/// One row of `flights`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlightRow {
    pub flight_id: String,
    pub seat_rows: i64,
    pub letters: String,
    pub capacity: i64,
}

/// One row of `seats`. `state` is kept as text so that an unexpected value
/// is reported rather than refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeatRow {
    pub flight_id: String,
    pub seat_no: String,
    pub seat_index: i64,
    pub state: String,
    pub txid: Option<String>,
    pub passenger: Option<String>,
}

/// One leg of `txns.legs`: this shard's part of an itinerary.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct TxnLeg {
    #[serde(default)]
    pub leg_index: u32,
    pub flight_id: String,
    #[serde(default)]
    pub seats: Vec<String>,
}

/// One row of `txns`, with its `legs` JSON parsed (or the parse error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRow {
    pub txid: String,
    pub state: String,
    pub kind: String,
    pub itinerary_legs: i64,
    pub legs: Result<Vec<TxnLeg>, String>,
    pub refusal: Option<String>,
    pub updated_at: i64,
}

/// Everything one shard database holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    pub url: String,
    pub flights: Vec<FlightRow>,
    pub seats: Vec<SeatRow>,
    pub txns: Vec<TxnRow>,
}

/// Every shard, in the order of the URLs given (shard i is `shards[i]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub shards: Vec<ShardSnapshot>,
}

impl Snapshot {
    /// Reads every shard database in `shard_urls`.
    pub async fn read(shard_urls: &[String]) -> Result<Snapshot, CheckError> {
        let mut shards = Vec::with_capacity(shard_urls.len());
        for url in shard_urls {
            shards.push(ShardSnapshot::read(url).await?);
        }
        Ok(Snapshot { shards })
    }
}

/// Connects to a shard database with the `Any` driver.
pub(crate) async fn connect(url: &str) -> Result<AnyConnection, CheckError> {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(url)
        .await
        .map_err(|source| CheckError::Connect {
            url: url.to_owned(),
            source,
        })
}

fn query_error<'a>(
    url: &'a str,
    what: &'static str,
) -> impl FnOnce(sqlx::Error) -> CheckError + 'a {
    move |source| CheckError::Query {
        url: url.to_owned(),
        what,
        source,
    }
}

impl ShardSnapshot {
    /// Reads one shard database inside one read transaction.
    pub async fn read(url: &str) -> Result<ShardSnapshot, CheckError> {
        let mut connection = connect(url).await?;
        let mut transaction = connection
            .begin()
            .await
            .map_err(query_error(url, "begin a read transaction"))?;
        if url.starts_with("postgres") {
            sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *transaction)
                .await
                .map_err(query_error(url, "set REPEATABLE READ"))?;
        }
        let flights = read_flights(&mut transaction, url).await?;
        let seats = read_seats(&mut transaction, url).await?;
        let txns = read_txns(&mut transaction, url).await?;
        transaction
            .rollback()
            .await
            .map_err(query_error(url, "end the read transaction"))?;
        Ok(ShardSnapshot {
            url: url.to_owned(),
            flights,
            seats,
            txns,
        })
    }
}

async fn read_flights(
    connection: &mut AnyConnection,
    url: &str,
) -> Result<Vec<FlightRow>, CheckError> {
    let rows = sqlx::query(
        "SELECT flight_id, seat_rows, letters, capacity FROM flights ORDER BY flight_id",
    )
    .fetch_all(&mut *connection)
    .await
    .map_err(query_error(url, "read flights"))?;
    rows.iter()
        .map(|row| {
            Ok(FlightRow {
                flight_id: row.try_get(0)?,
                seat_rows: row.try_get(1)?,
                letters: row.try_get(2)?,
                capacity: row.try_get(3)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(query_error(url, "decode flights"))
}

async fn read_seats(connection: &mut AnyConnection, url: &str) -> Result<Vec<SeatRow>, CheckError> {
    let rows = sqlx::query(
        "SELECT flight_id, seat_no, seat_index, state, txid, passenger FROM seats ORDER BY flight_id, seat_index",
    )
    .fetch_all(&mut *connection)
    .await
    .map_err(query_error(url, "read seats"))?;
    rows.iter()
        .map(|row| {
            Ok(SeatRow {
                flight_id: row.try_get(0)?,
                seat_no: row.try_get(1)?,
                seat_index: row.try_get(2)?,
                state: row.try_get(3)?,
                txid: row.try_get(4)?,
                passenger: row.try_get(5)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(query_error(url, "decode seats"))
}

async fn read_txns(connection: &mut AnyConnection, url: &str) -> Result<Vec<TxnRow>, CheckError> {
    let rows = sqlx::query(
        "SELECT txid, state, kind, itinerary_legs, legs, refusal, updated_at FROM txns ORDER BY txid",
    )
    .fetch_all(&mut *connection)
    .await
    .map_err(query_error(url, "read txns"))?;
    rows.iter()
        .map(|row| {
            let legs: Option<String> = row.try_get(4)?;
            Ok(TxnRow {
                txid: row.try_get(0)?,
                state: row.try_get(1)?,
                kind: row.try_get(2)?,
                itinerary_legs: row.try_get(3)?,
                legs: parse_legs(legs.as_deref()),
                refusal: row.try_get(5)?,
                updated_at: row.try_get(6)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(query_error(url, "decode txns"))
}

/// Parses `txns.legs`; a missing value is no legs (a fence).
pub(crate) fn parse_legs(json: Option<&str>) -> Result<Vec<TxnLeg>, String> {
    match json {
        None => Ok(Vec::new()),
        Some(text) if text.trim().is_empty() => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| format!("{e} in {text:?}")),
    }
}

/// Counts of what keeps a shard from being quiescent, with a few examples.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Unsettled {
    pub held_seats: i64,
    pub prepared_txns: i64,
    pub examples: Vec<String>,
}

/// Reads how many seats are held and transactions prepared on one shard.
pub(crate) async fn read_unsettled(url: &str) -> Result<Unsettled, CheckError> {
    let mut connection = connect(url).await?;
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    let held_seats = count("SELECT COUNT(*) FROM seats WHERE state = 'held'")
        .fetch_one(&mut connection)
        .await
        .map_err(query_error(url, "count held seats"))?;
    let prepared_txns = count("SELECT COUNT(*) FROM txns WHERE state = 'prepared'")
        .fetch_one(&mut connection)
        .await
        .map_err(query_error(url, "count prepared txns"))?;
    let examples = sqlx::query_scalar::<_, String>(
        "SELECT flight_id || '/' || seat_no || ' held by ' || COALESCE(txid, '?') FROM seats WHERE state = 'held' LIMIT 3",
    )
    .fetch_all(&mut connection)
    .await
    .map_err(query_error(url, "list held seats"))?;
    let _ = connection.close().await;
    Ok(Unsettled {
        held_seats,
        prepared_txns,
        examples,
    })
}

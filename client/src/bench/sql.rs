//! The two baselines the bench drives itself with sqlx, in-process, no
//! network between client and transaction logic:
//!
//! - (c) [`SingleDb`]: every itinerary is ONE local transaction on ONE
//!   database holding all flights: per leg the lowest free seat is taken
//!   (`FOR UPDATE SKIP LOCKED` on PostgreSQL) and booked, then the txid is
//!   recorded in `txns`, then COMMIT. SQLite allows one writer at a time, so
//!   its pool has one connection (more would only add SQLITE_BUSY
//!   back-off); PostgreSQL gets a pool of up to `PG_POOL_MAX`.
//! - (e) [`PgNative`]: PostgreSQL's own two-phase commit over 3 databases:
//!   each leg is booked on its shard's database inside a transaction that
//!   is then `PREPARE TRANSACTION`ed (both legs at once), then `COMMIT
//!   PREPARED` on both (or `ROLLBACK PREPARED` when a leg is sold out); the
//!   client is answered after both COMMIT PREPARED return. The bench keeps
//!   no decision log of its own: a real transaction manager would have to
//!   force one before COMMIT PREPARED, so (e) is measured without that cost.
//!
//! Both use the participant's schema (its migrations, embedded from
//! `participant/migrations`) and its durability settings: SQLite in WAL
//! mode with `synchronous=FULL`, PostgreSQL with `synchronous_commit=on`.
//! Flights are inserted directly, in transactions of `FLIGHTS_PER_INSERT`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::OptionalExtension;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Connection, Executor};
use tokio::sync::oneshot;

use super::args::Db;
use super::driver::{Answer, Booker};
use super::workload::{Flight, FlightSet, SEAT_LETTERS, SEAT_ROWS};

/// The participant's schema: the same DDL as every shard.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../participant/migrations");

/// Most connections of one PostgreSQL pool the bench drives: enough to keep
/// a 2-core server busy; beyond it more clients wait for a connection.
pub const PG_POOL_MAX: u32 = 64;
/// Flights inserted per local transaction when a set is created.
const FLIGHTS_PER_INSERT: usize = 50;
/// How long a client waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long SQLite waits on a locked database before SQLITE_BUSY.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5000;

/// Opens a pool on `url` with the participant's durability settings and
/// runs the migrations. SQLite: WAL, `synchronous=FULL`, one connection.
pub async fn open_pool(url: &str, db: Db) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    if db == Db::Sqlite {
        let mut first = AnyConnection::connect(url).await?;
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
            .fetch_one(&mut first)
            .await?;
        assert!(
            mode.eq_ignore_ascii_case("wal"),
            "SQLite keeps WAL mode on a local file"
        );
        first.close().await?;
    }
    let options: AnyConnectOptions = url.parse()?;
    let pool = AnyPoolOptions::new()
        .max_connections(match db {
            Db::Sqlite => 1,
            Db::Postgres => PG_POOL_MAX,
        })
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                let settings: &[&str] = match db {
                    Db::Sqlite => &["PRAGMA synchronous = FULL"],
                    Db::Postgres => &["SET synchronous_commit = on"],
                };
                for setting in settings {
                    conn.execute(*setting).await?;
                }
                if db == Db::Sqlite {
                    let busy = format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}");
                    conn.execute(busy.as_str()).await?;
                }
                Ok(())
            })
        })
        .connect_with(options.disable_statement_logging())
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Inserts `flights` with all their seats free.
pub async fn insert_flights(pool: &AnyPool, flights: &[&Flight]) -> Result<(), sqlx::Error> {
    for chunk in flights.chunks(FLIGHTS_PER_INSERT) {
        let mut tx = pool.begin().await?;
        tx.execute(flights_insert(chunk).as_str()).await?;
        for flight in chunk {
            tx.execute(seats_insert(flight).as_str()).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// One INSERT of the `flights` rows. Ids are checked flight ids (A-Z, 0-9,
/// '-'), so they are safe as literals.
fn flights_insert(flights: &[&Flight]) -> String {
    let capacity = SEAT_ROWS as usize * SEAT_LETTERS.len();
    let rows: Vec<String> = flights
        .iter()
        .map(|f| {
            assert_safe(&f.id);
            format!("('{}', {SEAT_ROWS}, '{SEAT_LETTERS}', {capacity})", f.id)
        })
        .collect();
    format!(
        "INSERT INTO flights (flight_id, seat_rows, letters, capacity) VALUES {}",
        rows.join(", ")
    )
}

/// One INSERT of every seat of `flight`, free, in the participant's
/// row-major `seat_index` order.
fn seats_insert(flight: &Flight) -> String {
    assert_safe(&flight.id);
    let rows: Vec<String> = (1..=SEAT_ROWS)
        .flat_map(|row| {
            SEAT_LETTERS
                .chars()
                .map(move |letter| format!("{row}{letter}"))
        })
        .enumerate()
        .map(|(index, seat)| format!("('{}', '{seat}', {index}, 'free')", flight.id))
        .collect();
    format!(
        "INSERT INTO seats (flight_id, seat_no, seat_index, state) VALUES {}",
        rows.join(", ")
    )
}

fn assert_safe(id: &str) {
    assert!(
        booking_proto::validate::flight_id("flight_id", id).is_ok(),
        "bench flight ids are valid flight ids: {id:?}"
    );
}

/// The lowest free seat of flight `$1` (SQLite; PostgreSQL adds its lock).
const PICK_SEAT: &str =
    "SELECT seat_no FROM seats WHERE flight_id = $1 AND state = 'free' ORDER BY seat_index LIMIT 1";
/// Books seat `$4` of flight `$3` for txid `$1`, passenger `$2`.
const BOOK_SEAT: &str = "UPDATE seats SET state = 'booked', txid = $1, passenger = $2 \
     WHERE flight_id = $3 AND seat_no = $4 AND state = 'free'";
/// Records txid `$1` committed: kind `$2`, `$3` legs in all, legs `$4`, at `$5`.
const RECORD_TXN: &str =
    "INSERT INTO txns (txid, state, kind, itinerary_legs, legs, refusal, updated_at) \
     VALUES ($1, 'committed', $2, $3, $4, NULL, $5)";

/// Books the lowest free seat of `flight` for `txid`; false when sold out.
async fn book_seat(
    conn: &mut AnyConnection,
    db: Db,
    flight: &Flight,
    txid: &str,
    passenger: &str,
) -> Result<Option<String>, sqlx::Error> {
    let pick = match db {
        Db::Sqlite => PICK_SEAT.to_string(),
        Db::Postgres => format!("{PICK_SEAT} FOR UPDATE SKIP LOCKED"),
    };
    let seat: Option<String> = sqlx::query_scalar(&pick)
        .bind(&*flight.id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(seat) = seat else {
        return Ok(None);
    };
    let updated = sqlx::query(BOOK_SEAT)
        .bind(txid)
        .bind(passenger)
        .bind(&*flight.id)
        .bind(&seat)
        .execute(&mut *conn)
        .await?;
    assert_eq!(
        updated.rows_affected(),
        1,
        "the seat was free and, on PostgreSQL, locked by this transaction"
    );
    Ok(Some(seat))
}

/// Records `txid` committed with its legs, as a participant does.
async fn record_txn(
    conn: &mut AnyConnection,
    txid: &str,
    kind: &str,
    legs: &[(&Flight, String)],
) -> Result<(), sqlx::Error> {
    sqlx::query(RECORD_TXN)
        .bind(txid)
        .bind(kind)
        .bind(2i64)
        .bind(legs_json(legs))
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The `legs` column of a booking's record, as a participant writes it.
fn legs_json(legs: &[(&Flight, String)]) -> String {
    let legs: Vec<String> = legs
        .iter()
        .enumerate()
        .map(|(i, (flight, seat))| {
            format!(
                r#"{{"leg_index":{i},"flight_id":"{}","seats":["{seat}"]}}"#,
                flight.id
            )
        })
        .collect();
    format!("[{}]", legs.join(","))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The kind of a database error, for the tally.
fn error_kind(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => format!("DB_{}", db.code().unwrap_or_default()),
        sqlx::Error::PoolTimedOut => "POOL_TIMEOUT".into(),
        _ => "DB_ERROR".into(),
    }
}

/// Variant (c): one database, one local transaction per itinerary.
///
/// On SQLite the bookings run on one thread of their own over a rusqlite
/// connection (`SqliteBooker`), as the participants' writer lanes do: one
/// hand-over per booking, not a round trip to sqlx's worker thread per
/// statement. The pool creates the schema and the flights, and reads.
#[derive(Debug)]
pub struct SingleDb {
    pub pool: AnyPool,
    pub db: Db,
    /// Local COMMITs of bookings so far.
    pub local_commits: AtomicU64,
    sqlite: Option<SqliteBooker>,
}

impl SingleDb {
    /// `sqlite_file`: the SQLite database file of `pool`'s URL.
    pub fn new(pool: AnyPool, db: Db, sqlite_file: Option<PathBuf>) -> SingleDb {
        SingleDb {
            pool,
            db,
            local_commits: AtomicU64::new(0),
            sqlite: sqlite_file.map(SqliteBooker::start),
        }
    }

    pub async fn create_flights(&self, set: &FlightSet) -> Result<(), sqlx::Error> {
        let flights: Vec<&Flight> = set.flights().iter().collect();
        insert_flights(&self.pool, &flights).await
    }

    async fn try_book(&self, passenger: &str, legs: &[Flight; 2]) -> Result<bool, sqlx::Error> {
        let txid = uuid::Uuid::new_v4().to_string();
        if let Some(sqlite) = &self.sqlite {
            let booked = sqlite.book(txid, passenger, legs).await?;
            if booked {
                self.local_commits.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(booked);
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = match self.db {
            Db::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
            Db::Postgres => conn.begin().await?,
        };
        let mut booked = Vec::with_capacity(2);
        for flight in legs {
            match book_seat(&mut tx, self.db, flight, &txid, passenger).await? {
                Some(seat) => booked.push((flight, seat)),
                None => {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
        }
        record_txn(&mut tx, &txid, "local", &booked).await?;
        tx.commit().await?;
        self.local_commits.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}

/// (c) on SQLite: a thread that books one itinerary per local transaction
/// over its own connection, in the order asked.
#[derive(Debug)]
struct SqliteBooker {
    jobs: mpsc::Sender<SqliteJob>,
}

struct SqliteJob {
    txid: String,
    passenger: String,
    legs: [Flight; 2],
    reply: oneshot::Sender<Result<bool, String>>,
}

impl SqliteBooker {
    fn start(path: PathBuf) -> SqliteBooker {
        let (jobs, queue) = mpsc::channel::<SqliteJob>();
        std::thread::Builder::new()
            .name("bench-single-sqlite".into())
            .spawn(move || {
                let conn = open_sqlite(&path);
                for job in queue {
                    let result = match &conn {
                        Ok(conn) => {
                            let booked = book_on_sqlite(conn, &job.txid, &job.passenger, &job.legs);
                            if booked.is_err() && !conn.is_autocommit() {
                                let _ = conn.execute_batch("ROLLBACK");
                            }
                            booked.map_err(|e| e.to_string())
                        }
                        Err(e) => Err(format!("opening {}: {e}", path.display())),
                    };
                    let _ = job.reply.send(result);
                }
            })
            .expect("the bench can start a thread");
        SqliteBooker { jobs }
    }

    async fn book(
        &self,
        txid: String,
        passenger: &str,
        legs: &[Flight; 2],
    ) -> Result<bool, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let job = SqliteJob {
            txid,
            passenger: passenger.to_string(),
            legs: legs.clone(),
            reply,
        };
        let stopped = || sqlx::Error::Protocol("the (c) SQLite thread stopped".into());
        self.jobs.send(job).map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(sqlx::Error::Protocol)
    }
}

/// The (c) connection: the participants' settings (WAL is on in the file).
fn open_sqlite(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch("PRAGMA synchronous = FULL")?;
    conn.busy_timeout(Duration::from_millis(u64::from(SQLITE_BUSY_TIMEOUT_MS)))?;
    Ok(conn)
}

/// One itinerary as one local transaction: per leg the lowest free seat,
/// then the record, then COMMIT; false (and nothing written) if a leg is
/// sold out.
fn book_on_sqlite(
    conn: &rusqlite::Connection,
    txid: &str,
    passenger: &str,
    legs: &[Flight; 2],
) -> rusqlite::Result<bool> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut booked = Vec::with_capacity(2);
    for flight in legs {
        // Each statement's `$N` first appear in order 1, 2, ..., so SQLite's
        // positions are their numbers.
        let seat: Option<String> = conn
            .prepare_cached(PICK_SEAT)?
            .query_row([&*flight.id], |row| row.get(0))
            .optional()?;
        let Some(seat) = seat else {
            conn.execute_batch("ROLLBACK")?;
            return Ok(false);
        };
        let updated =
            conn.prepare_cached(BOOK_SEAT)?
                .execute((txid, passenger, &*flight.id, &seat))?;
        assert_eq!(updated, 1, "the seat was free and the write lock held");
        booked.push((flight, seat));
    }
    conn.prepare_cached(RECORD_TXN)?.execute((
        txid,
        "local",
        2_i64,
        legs_json(&booked),
        now_ms(),
    ))?;
    conn.execute_batch("COMMIT")?;
    Ok(true)
}

impl Booker for SingleDb {
    async fn book(&self, _key: &str, passenger: &str, legs: &[Flight; 2]) -> Answer {
        match self.try_book(passenger, legs).await {
            Ok(true) => Answer::Committed,
            Ok(false) => Answer::SoldOut,
            Err(error) => Answer::Failed(error_kind(&error)),
        }
    }
}

/// Variant (e): PostgreSQL's PREPARE TRANSACTION over one database per shard.
#[derive(Debug)]
pub struct PgNative {
    /// `pools[s]` is shard s's database.
    pub pools: Vec<AnyPool>,
    /// PREPARE TRANSACTION, COMMIT PREPARED and ROLLBACK PREPARED so far:
    /// each one a durable local commit (a WAL flush).
    pub local_commits: AtomicU64,
}

/// How one leg's local transaction ended.
enum Prepared {
    Yes(String),
    SoldOut,
}

impl PgNative {
    pub fn new(pools: Vec<AnyPool>) -> PgNative {
        PgNative {
            pools,
            local_commits: AtomicU64::new(0),
        }
    }

    pub async fn create_flights(&self, set: &FlightSet) -> Result<(), sqlx::Error> {
        let per_shard = self.pools.iter().enumerate().map(|(shard, pool)| {
            let flights: Vec<&Flight> = set.flights().iter().filter(|f| f.shard == shard).collect();
            async move { insert_flights(pool, &flights).await }
        });
        futures::future::try_join_all(per_shard).await?;
        Ok(())
    }

    /// BEGIN, book the leg, record the txid, PREPARE TRANSACTION `gid`.
    async fn prepare(
        &self,
        conn: &mut AnyConnection,
        flight: &Flight,
        txid: &str,
        gid: &str,
        passenger: &str,
    ) -> Result<Prepared, sqlx::Error> {
        conn.execute(sqlx::raw_sql("BEGIN")).await?;
        let Some(seat) = book_seat(conn, Db::Postgres, flight, txid, passenger).await? else {
            conn.execute(sqlx::raw_sql("ROLLBACK")).await?;
            return Ok(Prepared::SoldOut);
        };
        record_txn(conn, txid, "2pc", &[(flight, seat)]).await?;
        let prepare = format!("PREPARE TRANSACTION '{gid}'");
        conn.execute(sqlx::raw_sql(&prepare)).await?;
        self.local_commits.fetch_add(1, Ordering::Relaxed);
        Ok(Prepared::Yes(gid.to_string()))
    }

    async fn finish(
        &self,
        conn: &mut AnyConnection,
        gid: &str,
        commit: bool,
    ) -> Result<(), sqlx::Error> {
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        let sql = format!("{verb} PREPARED '{gid}'");
        conn.execute(sqlx::raw_sql(&sql)).await?;
        self.local_commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn try_book(&self, passenger: &str, legs: &[Flight; 2]) -> Result<bool, sqlx::Error> {
        let txid = uuid::Uuid::new_v4().to_string();
        // Connections in shard order, so two bookings never wait on each other's pool.
        let (low, high) = if legs[0].shard < legs[1].shard {
            (&legs[0], &legs[1])
        } else {
            (&legs[1], &legs[0])
        };
        let mut first = self.pools[low.shard].acquire().await?;
        let mut second = self.pools[high.shard].acquire().await?;
        let (gid_first, gid_second) = (format!("{txid}-0"), format!("{txid}-1"));
        let (vote_first, vote_second) = tokio::join!(
            self.prepare(&mut first, low, &txid, &gid_first, passenger),
            self.prepare(&mut second, high, &txid, &gid_second, passenger),
        );
        let votes = [(&mut first, vote_first), (&mut second, vote_second)];
        let commit = votes
            .iter()
            .all(|(_, vote)| matches!(vote, Ok(Prepared::Yes(_))));
        let mut failure = None;
        let finishing = votes.into_iter().map(|(conn, vote)| async move {
            match vote {
                Ok(Prepared::Yes(gid)) => self.finish(conn, &gid, commit).await,
                Ok(Prepared::SoldOut) => Ok(()),
                Err(error) => {
                    discard(conn).await;
                    Err(error)
                }
            }
        });
        for result in futures::future::join_all(finishing).await {
            if let Err(error) = result {
                failure.get_or_insert(error);
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(commit),
        }
    }
}

/// A connection left mid-transaction by an error: roll back what is open.
async fn discard(conn: &mut PoolConnection<Any>) {
    let _ = conn.execute(sqlx::raw_sql("ROLLBACK")).await;
}

impl Booker for PgNative {
    async fn book(&self, _key: &str, passenger: &str, legs: &[Flight; 2]) -> Answer {
        match self.try_book(passenger, legs).await {
            Ok(true) => Answer::Committed,
            Ok(false) => Answer::SoldOut,
            Err(error) => Answer::Failed(error_kind(&error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn flight(id: &str, shard: usize) -> Flight {
        Flight {
            id: Arc::from(id),
            shard,
        }
    }

    #[test]
    fn seat_rows_follow_the_participants_order() {
        let sql = seats_insert(&flight("U1-0001", 0));
        assert!(sql.starts_with(
            "INSERT INTO seats (flight_id, seat_no, seat_index, state) VALUES ('U1-0001', '1A', 0, 'free'), ('U1-0001', '1B', 1, 'free')"
        ), "{sql}");
        assert!(sql.ends_with("('U1-0001', '30F', 179, 'free')"), "{sql}");
        let flights = flights_insert(&[&flight("A1", 0), &flight("B2", 1)]);
        assert!(flights.ends_with("('A1', 30, 'ABCDEF', 180), ('B2', 30, 'ABCDEF', 180)"));
    }

    #[test]
    #[should_panic(expected = "valid flight ids")]
    fn an_unsafe_id_is_a_bug() {
        seats_insert(&flight("X'); DROP TABLE seats; --", 0));
    }

    /// The whole (c) path on a real SQLite file: create, book until sold out.
    #[tokio::test]
    async fn one_database_books_until_a_flight_sells_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/one.db?mode=rwc", dir.path().display());
        let pool = open_pool(&url, Db::Sqlite).await.expect("open");
        let single = SingleDb::new(pool, Db::Sqlite, Some(dir.path().join("one.db")));
        let set = FlightSet::numbered("T-", 2, 2, |id| usize::from(id.ends_with('1')));
        single.create_flights(&set).await.expect("create");
        let legs = [set.flights()[0].clone(), set.flights()[1].clone()];
        for n in 0..180 {
            assert_eq!(
                single.book("k", &format!("P{n}"), &legs).await,
                Answer::Committed
            );
        }
        assert_eq!(single.book("k", "late", &legs).await, Answer::SoldOut);
        let booked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM seats WHERE state = 'booked'")
            .fetch_one(&single.pool)
            .await
            .expect("count");
        assert_eq!(booked, 360);
        let txns: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM txns")
            .fetch_one(&single.pool)
            .await
            .expect("count");
        assert_eq!(txns, 180, "a sold-out attempt leaves nothing");
        assert_eq!(single.local_commits.load(Ordering::Relaxed), 180);
    }
}

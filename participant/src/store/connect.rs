//! Connecting: the database URL, the pools, the per-connection durability
//! settings and the migrations. The backend differences of connecting live
//! here: SQLite gets WAL (set once, it is persistent in the file),
//! `synchronous=FULL` and a busy timeout on every connection; PostgreSQL gets
//! `synchronous_commit=on` on every connection.
//!
//! The writer lanes have a pool of their own (PostgreSQL: one connection
//! per lane; SQLite: the migrations', the lanes open their own in
//! `lane.rs`), and the reads (admin calls, in-doubt sweep) another. SQLite drops a
//! connection's whole page cache when another connection has committed
//! since its last transaction; from one shared pool (which hands out idle
//! connections first in, first out) the SQLite writer lane got a different
//! connection for nearly every batch and started each one cold. With its
//! own connection the lane keeps its cache and never waits behind a read.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::AnyConnection;
use sqlx::{AnyPool, Connection, Executor};

use crate::config::{Backend, Config};
use crate::error::StoreError;

/// The shard schema, embedded in the binary.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Connections beyond the writers', for reads (admin calls, in-doubt sweep).
const READ_CONNECTIONS: u32 = 4;
/// How long a caller waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits on a locked database before SQLITE_BUSY.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5000;
/// Most page cache per SQLite connection, in KiB (SQLite's default is
/// 2 MiB, less than the seat rows and indexes of a shard of a few
/// thousand flights); memory is taken only as pages are read.
const SQLITE_CACHE_KIB: u32 = 64 * 1024;

/// The shard database's connections.
#[derive(Debug, Clone)]
pub struct Pools {
    /// The writer lanes': one connection each.
    pub write: AnyPool,
    /// Everything else's.
    pub read: AnyPool,
}

/// Opens the pools; for SQLite, creates the file and turns on WAL first.
pub async fn pools(config: &Config) -> Result<Pools, StoreError> {
    sqlx::any::install_default_drivers();
    let url = match config.backend {
        Backend::Sqlite => sqlite_url(&config.database_url)?,
        Backend::Postgres => config.database_url.clone(),
    };
    first_connection(&url, config.backend).await?;
    let backend = config.backend;
    let options = |connections: u32, lane: Lane| {
        AnyPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _meta| {
                Box::pin(async move { configure(conn, backend, lane).await })
            })
    };
    // A SQLite connection is a file handle in this process: nothing to
    // test before each batch. A PostgreSQL one may have died with its server.
    // SQLite: the migrations' only; its lanes open their own (`lane.rs`).
    let writers = match backend {
        Backend::Sqlite => 1,
        Backend::Postgres => config.writers as u32,
    };
    let write = options(writers, Lane::Write)
        .test_before_acquire(backend == Backend::Postgres)
        .connect(&url)
        .await?;
    let read = options(READ_CONNECTIONS, Lane::Read).connect(&url).await?;
    Ok(Pools { write, read })
}

/// Runs the migrations that have not run yet.
pub async fn migrate(pool: &AnyPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Which pool a connection is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Write,
    Read,
}

/// The durability settings every connection needs, and the writers'
/// planner setting.
async fn configure(
    conn: &mut AnyConnection,
    backend: Backend,
    lane: Lane,
) -> Result<(), sqlx::Error> {
    let statements: Vec<String> = match backend {
        Backend::Sqlite => sqlite_pragmas(),
        Backend::Postgres => {
            let mut statements = vec!["SET synchronous_commit = on".into()];
            if lane == Lane::Write {
                // Every statement of a batch finds its rows by key (txid,
                // flight_id, seat), and sqlx prepares each once per
                // connection. PostgreSQL settles a prepared statement on a
                // generic plan after five runs, and plans made while `txns`
                // was still small (a fresh shard; autovacuum had not
                // analysed it yet) scanned the whole table for every
                // batch: at 64 clients the shard servers spent 77% of the
                // machine's CPU there (`perf`), with 25 million `txns` rows
                // read in 5,000 sequential scans within seconds
                // (`pg_stat_user_tables`). With sequential scans priced
                // out, the cached plans use the keys' indexes however
                // small the tables were when they were made.
                statements.push("SET enable_seqscan = off".into());
            }
            statements
        }
    };
    for statement in statements {
        conn.execute(statement.as_str()).await?;
    }
    Ok(())
}

/// The settings of every SQLite connection, the writer lanes' own
/// (`lane.rs`) included.
pub fn sqlite_pragmas() -> Vec<String> {
    vec![
        "PRAGMA synchronous = FULL".into(),
        format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"),
        format!("PRAGMA cache_size = -{SQLITE_CACHE_KIB}"),
        "PRAGMA temp_store = MEMORY".into(),
        // No connection checkpoints by itself (a writer lane would pay for
        // copying the WAL into the database file inside a batch); the
        // participant's checkpointer task does, from a read connection
        // (`Store::checkpoint`), and asks the lane to finish a long copy.
        "PRAGMA wal_autocheckpoint = 0".into(),
    ]
}

/// Where a SQLite writer lane opens its connection (`lane.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteFile {
    pub path: PathBuf,
    /// The URL says `mode=ro`: batches fail, as they would through sqlx.
    pub read_only: bool,
}

/// The file of a SQLite URL as `sqlite_url` returns it, read as sqlx
/// reads it (percent-decoded).
pub fn sqlite_file(url: &str) -> Result<SqliteFile, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?;
    let params = url.split_once('?').map_or("", |(_, params)| params);
    Ok(SqliteFile {
        path: options.get_filename().to_path_buf(),
        read_only: params.split('&').any(|kv| kv == "mode=ro"),
    })
}

/// One connection before the pool: its error says why the database cannot
/// be reached (the pool would only time out). On SQLite it also turns on WAL
/// mode, which stays on in the file for later connections.
async fn first_connection(url: &str, backend: Backend) -> Result<(), StoreError> {
    let mut conn = AnyConnection::connect(url).await?;
    if backend == Backend::Sqlite {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
            .fetch_one(&mut conn)
            .await?;
        if !mode.eq_ignore_ascii_case("wal") {
            let problem = format!("SQLite refused WAL mode (got {mode:?})");
            return Err(StoreError::Url {
                url: url.to_string(),
                problem,
            });
        }
    }
    conn.close().await?;
    Ok(())
}

/// The sqlx URL of a SQLite file: `sqlite:///abs/path.db` or
/// `sqlite:relative.db`, opened with `mode=rwc` (create if missing) unless
/// the URL names a mode.
pub fn sqlite_url(url: &str) -> Result<String, StoreError> {
    let bad = |problem: &str| StoreError::Url {
        url: url.to_string(),
        problem: problem.to_string(),
    };
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| bad("not a sqlite: URL"))?;
    let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || params.contains("mode=memory") {
        return Err(bad(
            "the participant needs a database file, e.g. sqlite:///var/lib/booking/s0.db",
        ));
    }
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        if !parent.is_dir() {
            return Err(bad(&format!(
                "directory {} does not exist; create it first",
                parent.display()
            )));
        }
    }
    let params = match params {
        "" => "mode=rwc".to_string(),
        p if p.split('&').any(|kv| kv.starts_with("mode=")) => p.to_string(),
        p => format!("{p}&mode=rwc"),
    };
    Ok(format!("sqlite://{path}?{params}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_the_file_unless_told_otherwise() {
        assert_eq!(
            sqlite_url("sqlite:///tmp/s0.db").expect("valid"),
            "sqlite:///tmp/s0.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite:s0.db").expect("valid"),
            "sqlite://s0.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite:s0.db?mode=ro").expect("valid"),
            "sqlite://s0.db?mode=ro"
        );
        assert_eq!(
            sqlite_url("sqlite:s0.db?cache=private").expect("valid"),
            "sqlite://s0.db?cache=private&mode=rwc"
        );
        assert!(sqlite_url("sqlite::memory:").is_err());
        // The lanes open the file sqlx would.
        let file = |url: &str| sqlite_file(&sqlite_url(url).expect("valid")).expect("a file");
        assert_eq!(
            file("sqlite:///tmp/my%20shard.db"),
            SqliteFile {
                path: PathBuf::from("/tmp/my shard.db"),
                read_only: false
            }
        );
        assert!(file("sqlite:s0.db?mode=ro").read_only);
        assert_eq!(file("sqlite:s0.db").path, PathBuf::from("s0.db"));
        assert!(sqlite_url("sqlite:///no/such/dir/s0.db").is_err());
    }
}

//! [`PgCluster`]: a throwaway PostgreSQL server for shard databases in tests
//! and the demo. It lives in a fresh temporary directory, listens on
//! 127.0.0.1 only (plus a Unix socket in that directory), and is removed
//! when dropped.
//!
//! Durability is real (`fsync=on`, `synchronous_commit=on`), since the
//! tests crash processes and expect acknowledged local commits to survive;
//! only the one-time bootstrap (`initdb --no-sync`) skips fsync.
//!
//! PostgreSQL refuses to run as root: as root, the directory is given to
//! user `postgres` and every server command runs through
//! `runuser -u postgres --`.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use sqlx::{Connection, PgConnection};
use tempfile::TempDir;
use tokio::process::Command;

/// The operating-system user that runs the server when we are root.
const SERVER_USER: &str = "postgres";
/// The message for a machine without the server binaries.
const NOT_FOUND: &str = "PostgreSQL server binaries not found (initdb, pg_ctl): install Debian's `postgresql` package (apt-get install postgresql)";

/// Why the PostgreSQL server could not be set up or driven.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{NOT_FOUND}")]
    BinariesNotFound,
    #[error("running as root, but there is no user {SERVER_USER:?} to run PostgreSQL as; create it (useradd --system postgres)")]
    NoServerUser,
    #[error("cannot {action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("cannot {action}")]
    Sql {
        action: String,
        #[source]
        source: sqlx::Error,
    },
}

/// The user id and group id of the server user, looked up in the password database.
fn server_user_ids() -> Result<(u32, u32), PgError> {
    let name = CString::new(SERVER_USER).expect("the user name has no NUL byte");
    // SAFETY: `name` is a valid C string; getpwnam returns a pointer to static
    // storage (or null), read at once before any other getpw* call.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(PgError::NoServerUser);
    }
    // SAFETY: non-null, so it points to a valid passwd record.
    Ok(unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The directory holding initdb and pg_ctl: from PATH (symlinks resolved,
/// since pg_ctl finds `postgres` beside its real file), else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn find_server_binaries() -> Result<PathBuf, PgError> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in on_path {
        let real = dir
            .join("initdb")
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        if let Some(real) = real.filter(|d| has_tools(d)) {
            return Ok(real);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            Some((
                entry.file_name().to_str()?.parse().ok()?,
                entry.path().join("bin"),
            ))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .ok_or(PgError::BinariesNotFound)
}

/// A running (or stopped) throwaway PostgreSQL server.
#[derive(Debug)]
pub struct PgCluster {
    /// Holds `data/`, the Unix socket and `server.log`; removed on drop.
    dir: TempDir,
    bin_dir: PathBuf,
    port: u16,
    databases: usize,
    as_server_user: bool,
    /// True between a successful start and a stop.
    running: bool,
    /// `name = value` lines appended after the defaults (later lines win).
    extra_settings: Vec<(String, String)>,
}

impl PgCluster {
    /// Creates a server with databases `shard0..shard{n-1}` and starts it.
    pub async fn start(databases: usize) -> Result<PgCluster, PgError> {
        PgCluster::start_with_settings(databases, &[]).await
    }

    /// Like [`start`](Self::start), with extra server settings appended to
    /// postgresql.conf after the defaults, e.g. `("max_connections", "400")`
    /// (values as postgresql.conf spells them).
    pub async fn start_with_settings(
        databases: usize,
        settings: &[(&str, &str)],
    ) -> Result<PgCluster, PgError> {
        let bin_dir = find_server_binaries()?;
        let as_server_user = running_as_root();
        let dir = make_dir(as_server_user)?;
        let port = free_port()?;
        let mut cluster = PgCluster {
            dir,
            bin_dir,
            port,
            databases,
            as_server_user,
            running: false,
            extra_settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        cluster.init().await?;
        cluster.start_server().await?;
        cluster.create_databases().await?;
        Ok(cluster)
    }

    /// The URL of database i (`shard<i>`), e.g. `postgres://postgres@127.0.0.1:5433/shard0`.
    pub fn database_url(&self, i: usize) -> String {
        format!("postgres://{SERVER_USER}@127.0.0.1:{}/shard{i}", self.port)
    }

    /// Every database's URL, in order.
    pub fn database_urls(&self) -> Vec<String> {
        (0..self.databases).map(|i| self.database_url(i)).collect()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id (first line of `postmaster.pid`), while
    /// the server runs.
    pub fn server_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The server's own log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn init(&self) -> Result<(), PgError> {
        let data = self.data_dir().display().to_string();
        let args = [
            "-D",
            &data,
            "-A",
            "trust",
            "-U",
            SERVER_USER,
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ];
        self.run("initdb", &args).await?;
        self.append_config()
    }

    /// Settings for every start, appended to postgresql.conf (whose owner
    /// does not change by appending).
    fn append_config(&self) -> Result<(), PgError> {
        let settings = format!(
            "\n# booking-client PgCluster\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             max_connections = 200\nmax_prepared_transactions = 200\nfsync = on\nsynchronous_commit = on\n\
             full_page_writes = on\n",
            self.port,
            self.dir.path().display()
        ) + &self
            .extra_settings
            .iter()
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect::<String>();
        let path = self.data_dir().join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(settings.as_bytes()))
            .map_err(|source| PgError::Io {
                action: format!("append to {}", path.display()),
                source,
            })
    }

    /// Starts the server (again, after a stop) and waits until it accepts connections.
    pub async fn start_server(&mut self) -> Result<(), PgError> {
        let (data, log) = (
            self.data_dir().display().to_string(),
            self.log_path().display().to_string(),
        );
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        )
        .await?;
        self.running = true;
        Ok(())
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`): no
    /// checkpoint, recovery replays the WAL on the next start.
    pub async fn stop_immediate(&mut self) -> Result<(), PgError> {
        self.stop("immediate").await
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`).
    pub async fn stop_fast(&mut self) -> Result<(), PgError> {
        self.stop("fast").await
    }

    async fn stop(&mut self, mode: &str) -> Result<(), PgError> {
        let data = self.data_dir().display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", mode, "-w", "stop"])
            .await?;
        self.running = false;
        Ok(())
    }

    async fn create_databases(&self) -> Result<(), PgError> {
        let admin_url = format!("postgres://{SERVER_USER}@127.0.0.1:{}/postgres", self.port);
        let sql_error = |action: String| move |source| PgError::Sql { action, source };
        let mut connection = PgConnection::connect(&admin_url)
            .await
            .map_err(sql_error(format!("connect to {admin_url}")))?;
        for i in 0..self.databases {
            sqlx::raw_sql(&format!("CREATE DATABASE shard{i}"))
                .execute(&mut connection)
                .await
                .map_err(sql_error(format!("create database shard{i}")))?;
        }
        let _ = connection.close().await;
        Ok(())
    }

    /// Runs a server tool, as the server user when we are root.
    async fn run(&self, tool: &str, args: &[&str]) -> Result<(), PgError> {
        let program = self.bin_dir.join(tool);
        let mut command = if self.as_server_user {
            let mut command = Command::new("runuser");
            command.args(["-u", SERVER_USER, "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        command
            .args(args)
            .current_dir(self.dir.path())
            .kill_on_drop(true);
        let text = format!("{} {}", program.display(), args.join(" "));
        let output = command.output().await.map_err(|source| PgError::Io {
            action: format!("run {text}"),
            source,
        })?;
        if !output.status.success() {
            let output_text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            return Err(PgError::Command {
                command: text,
                status: output.status.to_string(),
                output: output_text,
            });
        }
        Ok(())
    }

    /// `stop_immediate` without awaiting, for `Drop`.
    fn stop_blocking(&self) {
        let program = self.bin_dir.join("pg_ctl");
        let data = self.data_dir();
        let mut command = if self.as_server_user {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", SERVER_USER, "--"]).arg(&program);
            command
        } else {
            std::process::Command::new(&program)
        };
        let _ = command
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            self.stop_blocking();
        }
        // `dir` is removed by its own Drop after this.
    }
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, release it).
fn free_port() -> Result<u16, PgError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|source| PgError::Io {
            action: "pick a free port".into(),
            source,
        })
}

/// A fresh temporary directory, owned by the server user when we are root.
fn make_dir(as_server_user: bool) -> Result<TempDir, PgError> {
    let dir = tempfile::Builder::new()
        .prefix("booking-pg-")
        .tempdir()
        .map_err(|source| PgError::Io {
            action: "create a temporary directory".into(),
            source,
        })?;
    if as_server_user {
        let (uid, gid) = server_user_ids()?;
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|source| {
            PgError::Io {
                action: format!("chown {} to {SERVER_USER}", dir.path().display()),
                source,
            }
        })?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_missing_binaries_message_says_how_to_install_them() {
        assert_eq!(
            PgError::BinariesNotFound.to_string(),
            "PostgreSQL server binaries not found (initdb, pg_ctl): install Debian's `postgresql` package (apt-get install postgresql)"
        );
    }

    async fn scalar(url: &str, sql: &str) -> Result<String, sqlx::Error> {
        let mut connection = PgConnection::connect(url).await?;
        sqlx::query_scalar(sql).fetch_one(&mut connection).await
    }

    /// Needs the PostgreSQL server binaries.
    #[tokio::test]
    async fn extra_settings_override_the_defaults() {
        let pg = PgCluster::start_with_settings(1, &[("max_prepared_transactions", "300")])
            .await
            .expect("start PostgreSQL");
        let url = pg.database_url(0);
        let prepared = scalar(&url, "SHOW max_prepared_transactions").await;
        assert_eq!(prepared.unwrap(), "300");
        let pid = pg.server_pid().expect("a running server has a postmaster");
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    /// Needs the PostgreSQL server binaries; fails saying what to install
    /// without them.
    #[tokio::test]
    async fn a_throwaway_server_keeps_committed_rows_across_an_immediate_stop() {
        let mut pg = PgCluster::start(2).await.expect("start PostgreSQL");
        let url = pg.database_url(1);
        assert_eq!(
            scalar(&url, "SHOW max_prepared_transactions")
                .await
                .unwrap(),
            "200"
        );
        assert_eq!(scalar(&url, "SHOW fsync").await.unwrap(), "on");
        let mut connection = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("CREATE TABLE t(x TEXT); INSERT INTO t VALUES ('kept')")
            .execute(&mut connection)
            .await
            .unwrap();
        drop(connection);
        pg.stop_immediate().await.unwrap();
        assert!(
            PgConnection::connect(&url).await.is_err(),
            "the server is down"
        );
        pg.start_server().await.unwrap();
        assert_eq!(scalar(&url, "SELECT x FROM t").await.unwrap(), "kept");
        let dir = pg.dir.path().to_path_buf();
        drop(pg);
        assert!(!dir.exists(), "the directory is removed on drop");
    }
}

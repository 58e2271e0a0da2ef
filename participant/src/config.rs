//! Configuration: the raw settings a command line or a TOML file gives
//! (`Settings`, every key optional) and the checked `Config` the participant
//! runs with. This module owns the rules for each key and the defaults; it
//! reads no files and binds no sockets (the binary does).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use booking_proto::limits::PARTITIONS_MAX;
use booking_proto::routing::parse_partition_set;
use serde::Deserialize;

use crate::writer::BATCH_OPS_MAX;

/// Most writer tasks a participant may run.
pub const WRITERS_MAX: usize = 64;
/// Longest shard name, in bytes.
pub const SHARD_NAME_BYTES_MAX: usize = 64;
/// Shortest in-doubt wait; below it the sweep would hammer the coordinator.
pub const IN_DOUBT_AFTER_MS_MIN: u64 = 50;
/// The in-doubt wait used when none is configured.
pub const IN_DOUBT_AFTER_MS_DEFAULT: u64 = 2000;

/// A configuration key that is missing or holds a bad value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key} is required (flag --{flag} or key {key} in the config file)")]
    Missing {
        key: &'static str,
        flag: &'static str,
    },
    #[error("{key} = {value:?}: {problem}")]
    Invalid {
        key: &'static str,
        value: String,
        problem: String,
    },
    #[error("config file is not valid TOML for a participant: {0}")]
    Toml(#[from] toml::de::Error),
}

/// The database engine behind a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names, by its scheme.
    pub fn of_url(url: &str) -> Result<Backend, ConfigError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(invalid(
                "database",
                url,
                "use sqlite:///abs/path.db, sqlite:relative.db or postgres://...",
            ))
        }
    }

    /// Writer tasks when none are configured: one for either backend.
    /// SQLite has one writer at a time. On PostgreSQL a batch costs the
    /// server a few statements whatever its size (`store::readahead`,
    /// `store::script`), so one lane taking everything that waits makes
    /// the fewest statements per booking; more lanes split the same load
    /// into smaller batches. `bookctl bench --db postgres`, 2026-11-24,
    /// (a) at 64 clients: 2,729 bookings/s with 1 lane, 1,912 with 2,
    /// 1,642 with 3, ~1,500 with 4, 1,137 with 8; 1 was also fastest at
    /// 1, 16 and 256 clients. More lanes may pay where a round trip to the
    /// server costs more than its work (a distant server): `--writers`.
    pub fn writers_default(self) -> usize {
        match self {
            Backend::Sqlite | Backend::Postgres => 1,
        }
    }
}

/// Settings as given, before checking: flags and the TOML file both fill
/// one of these, and flags override the file (`Settings::or`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub database: Option<String>,
    pub partitions: Option<u32>,
    pub owns: Option<String>,
    pub coordinator: Option<String>,
    pub in_doubt_after_ms: Option<u64>,
    pub writers: Option<usize>,
    pub metrics_listen: Option<String>,
    pub batch_max: Option<usize>,
}

/// Where to listen and how to run: the checked form of `Settings`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub participant: Config,
}

/// The checked configuration of one participant.
#[derive(Debug, Clone)]
pub struct Config {
    /// The shard's name, reported in every LegResult.
    pub name: String,
    pub database_url: String,
    pub backend: Backend,
    /// P in `partition_of(flight_id, P)`; 1..=PARTITIONS_MAX.
    pub partitions: u32,
    /// Partitions this shard owns; non-empty, each below `partitions`.
    pub owned_partitions: BTreeSet<u32>,
    /// Where to ask GetDecision for in-doubt txids; None leaves them waiting.
    pub coordinator_url: Option<String>,
    /// How long a txid may stay prepared before the sweep asks about it.
    pub in_doubt_after: Duration,
    /// Writer tasks (local transactions in flight at once); 1..=WRITERS_MAX.
    pub writers: usize,
    /// Where Prometheus scrapes `/metrics` (plain HTTP); None serves no
    /// metrics. Never the gRPC `listen` address.
    pub metrics_listen: Option<SocketAddr>,
    /// Most operations one local transaction applies; 1..=BATCH_OPS_MAX,
    /// default BATCH_OPS_MAX. 1 turns batching off (the naive benchmark
    /// baseline). The binary applies it process-wide
    /// (`writer::set_batch_ops_limit`) before `run` starts the lanes.
    pub batch_max: usize,
}

impl Settings {
    /// Parses the TOML config file's text.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// These settings, with every key left unset taken from `fallback`.
    pub fn or(self, fallback: Settings) -> Settings {
        Settings {
            name: self.name.or(fallback.name),
            listen: self.listen.or(fallback.listen),
            database: self.database.or(fallback.database),
            partitions: self.partitions.or(fallback.partitions),
            owns: self.owns.or(fallback.owns),
            coordinator: self.coordinator.or(fallback.coordinator),
            in_doubt_after_ms: self.in_doubt_after_ms.or(fallback.in_doubt_after_ms),
            writers: self.writers.or(fallback.writers),
            metrics_listen: self.metrics_listen.or(fallback.metrics_listen),
            batch_max: self.batch_max.or(fallback.batch_max),
        }
    }

    /// Checks every key and fills in the defaults.
    pub fn resolve(self) -> Result<ServeConfig, ConfigError> {
        let listen_text = self.listen.ok_or(ConfigError::Missing {
            key: "listen",
            flag: "listen",
        })?;
        let listen = check_address("listen", &listen_text, "127.0.0.1:7101")?;
        let name = check_name(self.name.ok_or(ConfigError::Missing {
            key: "name",
            flag: "name",
        })?)?;
        let database_url = self.database.ok_or(ConfigError::Missing {
            key: "database",
            flag: "database",
        })?;
        let backend = Backend::of_url(&database_url)?;
        let partitions = check_partitions(self.partitions)?;
        let owns = self.owns.ok_or(ConfigError::Missing {
            key: "owns",
            flag: "owns",
        })?;
        let participant = Config {
            name,
            database_url,
            backend,
            partitions,
            owned_partitions: check_owns(&owns, partitions)?,
            coordinator_url: self.coordinator.map(check_coordinator).transpose()?,
            in_doubt_after: check_in_doubt_after(self.in_doubt_after_ms)?,
            writers: check_writers(self.writers.unwrap_or(backend.writers_default()))?,
            metrics_listen: check_metrics_listen(self.metrics_listen.as_deref(), listen)?,
            batch_max: check_batch_max(self.batch_max.unwrap_or(BATCH_OPS_MAX))?,
        };
        Ok(ServeConfig {
            listen,
            participant,
        })
    }
}

impl Config {
    /// A configuration with defaults for the optional keys, for tests and
    /// embedding: owns every partition, no coordinator.
    pub fn new(name: &str, database_url: &str, partitions: u32) -> Result<Config, ConfigError> {
        let backend = Backend::of_url(database_url)?;
        Ok(Config {
            name: check_name(name.to_string())?,
            database_url: database_url.to_string(),
            backend,
            partitions: check_partitions(Some(partitions))?,
            owned_partitions: (0..partitions).collect(),
            coordinator_url: None,
            in_doubt_after: Duration::from_millis(IN_DOUBT_AFTER_MS_DEFAULT),
            writers: backend.writers_default(),
            metrics_listen: None,
            batch_max: BATCH_OPS_MAX,
        })
    }
}

fn invalid(key: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        problem: problem.into(),
    }
}

fn check_address(key: &'static str, text: &str, example: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| invalid(key, text, format!("must be an ip:port such as {example}")))
}

fn check_metrics_listen(
    text: Option<&str>,
    listen: SocketAddr,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let address = check_address("metrics_listen", text, "127.0.0.1:9101")?;
    if address == listen && address.port() != 0 {
        return Err(invalid(
            "metrics_listen",
            text,
            "is the gRPC listen address; give /metrics a port of its own",
        ));
    }
    Ok(Some(address))
}

fn check_name(name: String) -> Result<String, ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || name.len() > SHARD_NAME_BYTES_MAX || !name.chars().all(allowed) {
        return Err(invalid(
            "name",
            &name,
            format!(
                "must be 1..={SHARD_NAME_BYTES_MAX} characters of A-Z, a-z, 0-9, '-', '_', e.g. s0"
            ),
        ));
    }
    Ok(name)
}

fn check_partitions(partitions: Option<u32>) -> Result<u32, ConfigError> {
    let partitions = partitions.ok_or(ConfigError::Missing {
        key: "partitions",
        flag: "partitions",
    })?;
    if partitions == 0 || partitions > PARTITIONS_MAX {
        return Err(invalid(
            "partitions",
            &partitions.to_string(),
            format!("must be 1..={PARTITIONS_MAX}"),
        ));
    }
    Ok(partitions)
}

fn check_owns(spec: &str, partitions: u32) -> Result<BTreeSet<u32>, ConfigError> {
    let owned =
        parse_partition_set(spec, partitions).map_err(|problem| invalid("owns", spec, problem))?;
    if owned.is_empty() {
        return Err(invalid(
            "owns",
            spec,
            "names no partition; give ranges such as \"0-21\"",
        ));
    }
    Ok(owned.into_iter().collect())
}

fn check_coordinator(url: String) -> Result<String, ConfigError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid(
            "coordinator",
            &url,
            "must be a URL such as http://127.0.0.1:7000",
        ));
    }
    Ok(url)
}

fn check_in_doubt_after(ms: Option<u64>) -> Result<Duration, ConfigError> {
    let ms = ms.unwrap_or(IN_DOUBT_AFTER_MS_DEFAULT);
    if ms < IN_DOUBT_AFTER_MS_MIN {
        return Err(invalid(
            "in_doubt_after_ms",
            &ms.to_string(),
            format!("must be at least {IN_DOUBT_AFTER_MS_MIN}"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

fn check_writers(writers: usize) -> Result<usize, ConfigError> {
    if writers == 0 || writers > WRITERS_MAX {
        return Err(invalid(
            "writers",
            &writers.to_string(),
            format!("must be 1..={WRITERS_MAX}"),
        ));
    }
    Ok(writers)
}

fn check_batch_max(batch_max: usize) -> Result<usize, ConfigError> {
    if batch_max == 0 || batch_max > BATCH_OPS_MAX {
        return Err(invalid(
            "batch_max",
            &batch_max.to_string(),
            format!("must be 1..={BATCH_OPS_MAX} (1 turns batching off)"),
        ));
    }
    Ok(batch_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Settings {
        Settings {
            name: Some("s0".into()),
            listen: Some("127.0.0.1:0".into()),
            database: Some("sqlite:s0.db".into()),
            partitions: Some(64),
            owns: Some("0-21".into()),
            ..Settings::default()
        }
    }

    #[test]
    fn defaults_depend_on_the_backend() {
        let config = full()
            .resolve()
            .expect("full settings are valid")
            .participant;
        assert_eq!(config.writers, 1);
        assert_eq!(config.owned_partitions.len(), 22);
        assert_eq!(config.in_doubt_after, Duration::from_millis(2000));
        assert_eq!(config.metrics_listen, None, "no metrics unless asked");
        assert_eq!(config.batch_max, BATCH_OPS_MAX, "batching on unless asked");
        let pg = Settings {
            database: Some("postgres://u@h/db".into()),
            ..full()
        };
        assert_eq!(pg.resolve().expect("valid").participant.writers, 1);
    }

    #[test]
    fn flags_override_the_file() {
        let file = Settings::from_toml(
            "name = \"file\"\nwriters = 2\nin_doubt_after_ms = 500\nmetrics_listen = \"127.0.0.1:9101\"\nbatch_max = 1\n",
        )
        .expect("valid toml");
        let flags = Settings {
            name: Some("flag".into()),
            ..full()
        };
        let config = flags.or(file).resolve().expect("valid").participant;
        assert_eq!(config.name, "flag");
        assert_eq!(config.writers, 2);
        assert_eq!(config.in_doubt_after, Duration::from_millis(500));
        assert_eq!(config.batch_max, 1);
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9101".parse().expect("an address"))
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(Settings, &str)> = vec![
            (
                Settings {
                    name: None,
                    ..full()
                },
                "name",
            ),
            (
                Settings {
                    name: Some("s 0".into()),
                    ..full()
                },
                "name",
            ),
            (
                Settings {
                    listen: Some("nowhere".into()),
                    ..full()
                },
                "listen",
            ),
            (
                Settings {
                    database: Some("mysql://x".into()),
                    ..full()
                },
                "database",
            ),
            (
                Settings {
                    partitions: Some(0),
                    ..full()
                },
                "partitions",
            ),
            (
                Settings {
                    owns: Some("0-64".into()),
                    ..full()
                },
                "owns",
            ),
            (
                Settings {
                    owns: Some("".into()),
                    ..full()
                },
                "owns",
            ),
            (
                Settings {
                    coordinator: Some("127.0.0.1:7000".into()),
                    ..full()
                },
                "coordinator",
            ),
            (
                Settings {
                    in_doubt_after_ms: Some(1),
                    ..full()
                },
                "in_doubt_after_ms",
            ),
            (
                Settings {
                    writers: Some(0),
                    ..full()
                },
                "writers",
            ),
            (
                Settings {
                    metrics_listen: Some("9101".into()),
                    ..full()
                },
                "metrics_listen",
            ),
            (
                Settings {
                    batch_max: Some(0),
                    ..full()
                },
                "batch_max",
            ),
            (
                Settings {
                    batch_max: Some(BATCH_OPS_MAX + 1),
                    ..full()
                },
                "batch_max",
            ),
            (
                Settings {
                    listen: Some("127.0.0.1:7101".into()),
                    metrics_listen: Some("127.0.0.1:7101".into()),
                    ..full()
                },
                "metrics_listen",
            ),
        ];
        for (settings, key) in cases {
            let err = settings.resolve().expect_err(key).to_string();
            assert!(err.starts_with(key), "{key}: {err}");
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(Settings::from_toml("nmae = \"s0\"").is_err());
    }
}

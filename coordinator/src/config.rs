//! The coordinator's configuration file (`coordinator.toml`) and the
//! partition → shard table it defines.
//!
//! ```toml
//! listen = "127.0.0.1:7000"
//! log_dir = "data/log"
//! partitions = 64
//! default_timeout_ms = 2000
//! # optional: inflight_max = 256, segment_bytes_max = 67108864,
//! # log_retention_secs = 600, group_commit = true, batch_calls = true,
//! # decision_linger_ms = 5, metrics_listen = "127.0.0.1:9100"
//! [[shards]]
//! name = "s0"
//! address = "http://127.0.0.1:7101"
//! partitions = "0-21"
//! ```
//! Every partition must be owned by exactly one shard; the file is refused
//! otherwise, naming the partition.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use booking_proto::limits::PARTITIONS_MAX;
use booking_proto::routing::{parse_partition_set, partition_of};
use serde::Deserialize;

/// What is wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config: {0}")]
    Invalid(String),
}

fn default_timeout_ms() -> u32 {
    2_000
}
/// The shipped admission limit. About what keeps this project's 2-core
/// reference machine at its peak (the best closed-loop cell of `bookctl
/// bench` has 256 clients); more in flight only queues in the
/// participants, adding latency without adding bookings (BENCHMARKS.md,
/// "Overload"). Raise it with the machine.
pub const INFLIGHT_MAX_DEFAULT: usize = 256;

fn default_inflight_max() -> usize {
    INFLIGHT_MAX_DEFAULT
}
fn default_segment_bytes_max() -> u64 {
    64 * 1024 * 1024
}
fn default_true() -> bool {
    true
}
fn default_log_retention_secs() -> u64 {
    600
}
fn default_decision_linger_ms() -> u64 {
    5
}
/// Most `decision_linger_ms` accepted: longer holds seats in `held`, and
/// delays END records, for no gain.
pub const DECISION_LINGER_MS_MAX: u64 = 1_000;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub log_dir: PathBuf,
    pub partitions: u32,
    /// Booking deadline when the request gives none.
    #[serde(default = "default_timeout_ms")]
    pub default_timeout_ms: u32,
    /// Admission control: bookings in flight at once; the excess is refused
    /// with RESOURCE_EXHAUSTED and a retry hint. Default [`INFLIGHT_MAX_DEFAULT`].
    #[serde(default = "default_inflight_max")]
    pub inflight_max: usize,
    #[serde(default = "default_segment_bytes_max")]
    pub segment_bytes_max: u64,
    /// Group commit of the decision log; off only for the naive benchmark.
    #[serde(default = "default_true")]
    pub group_commit: bool,
    /// Protocol messages batched per shard into `ReserveMany` and
    /// `DecideMany` calls (see `crate::shards`); off (one call per message)
    /// only for the naive benchmark.
    #[serde(default = "default_true")]
    pub batch_calls: bool,
    /// With `batch_calls`: how long phase 2 lets a shard's first decision
    /// wait for others before its `DecideMany` call (`crate::batcher`).
    /// After the client's reply, so a booking's answer never waits for it;
    /// its seats read `held` rather than `booked` that much longer. 0: no
    /// wait.
    #[serde(default = "default_decision_linger_ms")]
    pub decision_linger_ms: u64,
    /// Retention: a closed log segment whose transactions all ended at least
    /// this long ago is deleted, and its transactions forgotten (their
    /// idempotency keys honoured no longer). See `crate::retention`.
    #[serde(default = "default_log_retention_secs")]
    pub log_retention_secs: u64,
    /// Where Prometheus scrapes `/metrics` (plain HTTP); none when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    pub shards: Vec<ShardConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub name: String,
    /// gRPC address of the participant, e.g. `http://127.0.0.1:7101`.
    pub address: String,
    /// Partition set owned by this shard, e.g. `"0-21,40"`.
    pub partitions: String,
}

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        config.shard_map()?;
        if config.segment_bytes_max < 4096 {
            return Err(ConfigError::Invalid(
                "segment_bytes_max must be at least 4096 bytes".into(),
            ));
        }
        if config.inflight_max == 0 {
            return Err(ConfigError::Invalid(
                "inflight_max must be at least 1".into(),
            ));
        }
        if config.decision_linger_ms > DECISION_LINGER_MS_MAX {
            return Err(ConfigError::Invalid(format!(
                "decision_linger_ms must be at most {DECISION_LINGER_MS_MAX} (it is {})",
                config.decision_linger_ms
            )));
        }
        Ok(config)
    }

    /// The partition → shard table, checked: every partition has exactly one owner.
    pub fn shard_map(&self) -> Result<ShardMap, ConfigError> {
        ShardMap::new(self.partitions, &self.shards)
    }
}

/// One participant as the coordinator knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub name: String,
    pub address: String,
}

/// Routing: flight → partition → shard.
#[derive(Debug, Clone)]
pub struct ShardMap {
    partitions: u32,
    shards: Vec<Shard>,
    /// `owner[p]` is the index in `shards` of the shard owning partition p.
    /// Invariant: `owner.len() == partitions` and every entry < shards.len().
    owner: Vec<usize>,
}

impl ShardMap {
    pub fn new(partitions: u32, shards: &[ShardConfig]) -> Result<ShardMap, ConfigError> {
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(ConfigError::Invalid(format!(
                "partitions must be 1..={PARTITIONS_MAX}"
            )));
        }
        if shards.is_empty() {
            return Err(ConfigError::Invalid(
                "at least one [[shards]] entry is required".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut owner: Vec<Option<usize>> = vec![None; partitions as usize];
        for (index, shard) in shards.iter().enumerate() {
            if shard.name.is_empty() || !names.insert(shard.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "shard name {:?} is empty or repeated",
                    shard.name
                )));
            }
            let owned = parse_partition_set(&shard.partitions, partitions).map_err(|problem| {
                ConfigError::Invalid(format!("shard {}: {problem}", shard.name))
            })?;
            for p in owned {
                if let Some(other) = owner[p as usize].replace(index) {
                    return Err(ConfigError::Invalid(format!(
                        "partition {p} is owned by both {} and {}",
                        shards[other].name, shard.name
                    )));
                }
            }
        }
        let owner = owner
            .into_iter()
            .enumerate()
            .map(|(p, o)| {
                o.ok_or_else(|| ConfigError::Invalid(format!("partition {p} has no shard")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shards = shards
            .iter()
            .map(|s| Shard {
                name: s.name.clone(),
                address: s.address.clone(),
            })
            .collect();
        Ok(ShardMap {
            partitions,
            shards,
            owner,
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Index of the shard owning `flight_id`.
    pub fn shard_of(&self, flight_id: &str) -> usize {
        self.owner[partition_of(flight_id, self.partitions) as usize]
    }

    /// Index of the shard named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(name: &str, partitions: &str) -> ShardConfig {
        ShardConfig {
            name: name.into(),
            address: format!("http://{name}"),
            partitions: partitions.into(),
        }
    }

    #[test]
    fn every_partition_needs_exactly_one_owner() {
        assert!(ShardMap::new(8, &[shard("a", "0-3"), shard("b", "4-7")]).is_ok());
        let gap = ShardMap::new(8, &[shard("a", "0-3"), shard("b", "5-7")]).unwrap_err();
        assert!(
            gap.to_string().contains("partition 4 has no shard"),
            "{gap}"
        );
        let overlap = ShardMap::new(8, &[shard("a", "0-4"), shard("b", "4-7")]).unwrap_err();
        assert!(
            overlap.to_string().contains("partition 4 is owned by both"),
            "{overlap}"
        );
        assert!(ShardMap::new(8, &[shard("a", "0-7"), shard("a", "")]).is_err());
    }

    /// `decision_linger_ms`: 5 when absent, refused past its maximum with
    /// a message naming the setting.
    #[test]
    fn the_decision_linger_defaults_to_5_ms_and_is_bounded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("coordinator.toml");
        let write = |extra: &str| {
            let text = format!(
                "listen = \"127.0.0.1:7000\"\nlog_dir = \"log\"\npartitions = 4\n{extra}\n\
                 [[shards]]\nname = \"s0\"\naddress = \"http://127.0.0.1:7101\"\npartitions = \"0-3\"\n"
            );
            std::fs::write(&path, text).expect("write config");
        };
        write("");
        assert_eq!(Config::load(&path).expect("valid").decision_linger_ms, 5);
        write("decision_linger_ms = 0");
        assert_eq!(Config::load(&path).expect("valid").decision_linger_ms, 0);
        write(&format!(
            "decision_linger_ms = {}",
            DECISION_LINGER_MS_MAX + 1
        ));
        let err = Config::load(&path).expect_err("too long a linger");
        assert!(err.to_string().contains("decision_linger_ms"), "{err}");
    }

    #[test]
    fn routing_follows_the_documented_hash() {
        let map = ShardMap::new(4, &[shard("a", "0-1"), shard("b", "2-3")]).unwrap();
        for flight in ["BA117", "LH400", "AF1", "X-9"] {
            let expected = if partition_of(flight, 4) < 2 { 0 } else { 1 };
            assert_eq!(map.shard_of(flight), expected);
        }
    }
}

//! Where a local cluster's pieces go: free ports, each shard's contiguous
//! partition range, and the coordinator's configuration file.

use std::net::TcpListener;
use std::path::Path;

use super::ClusterError;

/// `count` distinct free TCP ports on 127.0.0.1. Each is found by binding
/// port 0 and reading the port the kernel chose; all stay bound until every
/// port is picked, so they differ. Another program may take one before our
/// process binds it: a small race that tests accept.
pub fn free_ports(count: usize) -> Result<Vec<u16>, ClusterError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ClusterError::Io {
            action: "pick a free port".into(),
            source,
        })?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|source| ClusterError::Io {
            action: "read a bound port".into(),
            source,
        })
}

/// Splits partitions `0..partitions` into `shards` contiguous inclusive
/// ranges, the first ones one partition longer when it does not divide
/// evenly: 64 over 3 gives 0-21, 22-42, 43-63.
pub fn partition_ranges(partitions: u32, shards: usize) -> Vec<(u32, u32)> {
    assert!(
        shards > 0 && shards as u64 <= u64::from(partitions),
        "need 1..=partitions shards"
    );
    let start = |i: u64| ((i * u64::from(partitions)).div_ceil(shards as u64)) as u32;
    (0..shards as u64)
        .map(|i| (start(i), start(i + 1) - 1))
        .collect()
}

/// A TOML basic string holding `text`.
fn toml_string(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One `[[shards]]` entry of coordinator.toml.
pub struct ShardEntry {
    pub name: String,
    pub address: String,
    pub partitions: (u32, u32),
}

/// The text of coordinator.toml: gRPC on `listen_port`, Prometheus
/// `/metrics` on `metrics_port`, both on 127.0.0.1.
pub fn coordinator_toml(
    listen_port: u16,
    metrics_port: u16,
    log_dir: &Path,
    partitions: u32,
    default_timeout_ms: u64,
    shards: &[ShardEntry],
) -> String {
    let mut text = format!(
        "listen = \"127.0.0.1:{listen_port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nlog_dir = {}\npartitions = {partitions}\ndefault_timeout_ms = {default_timeout_ms}\n",
        toml_string(&log_dir.display().to_string()),
    );
    for shard in shards {
        let (low, high) = shard.partitions;
        text += &format!(
            "\n[[shards]]\nname = {}\naddress = {}\npartitions = \"{low}-{high}\"\n",
            toml_string(&shard.name),
            toml_string(&shard.address),
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_split_into_contiguous_ranges() {
        assert_eq!(partition_ranges(64, 3), vec![(0, 21), (22, 42), (43, 63)]);
        assert_eq!(partition_ranges(64, 1), vec![(0, 63)]);
        assert_eq!(partition_ranges(4, 4), vec![(0, 0), (1, 1), (2, 2), (3, 3)]);
        for shards in 1..=10 {
            let ranges = partition_ranges(100, shards);
            assert_eq!(ranges[0].0, 0);
            assert_eq!(ranges[shards - 1].1, 99);
            assert!(ranges.windows(2).all(|w| w[1].0 == w[0].1 + 1));
        }
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(4).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
    }

    #[test]
    fn coordinator_toml_names_every_shard() {
        let shards = [ShardEntry {
            name: "s0".into(),
            address: "http://127.0.0.1:7101".into(),
            partitions: (0, 21),
        }];
        let text = coordinator_toml(7000, 9000, Path::new("/tmp/a \"b\"/log"), 64, 2000, &shards);
        assert_eq!(
            text,
            "listen = \"127.0.0.1:7000\"\nmetrics_listen = \"127.0.0.1:9000\"\nlog_dir = \"/tmp/a \\\"b\\\"/log\"\npartitions = 64\ndefault_timeout_ms = 2000\n\
             \n[[shards]]\nname = \"s0\"\naddress = \"http://127.0.0.1:7101\"\npartitions = \"0-21\"\n"
        );
    }
}

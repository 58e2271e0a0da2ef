//! Routing: flight → partition → shard, never flight → shard directly.
//!
//! `partition(flight_id, P) = fnv1a64(utf8 bytes of flight_id) mod P`, where
//! fnv1a64 is the 64-bit FNV-1a hash (offset basis 0xcbf29ce484222325, prime
//! 0x100000001b3). The function is fixed forever: changing it would move
//! every flight to another shard. The partition → shard table lives in the
//! coordinator's configuration; a participant is told which partitions it
//! owns and refuses flights outside them.

use std::hash::Hasher;

/// The documented, stable 64-bit FNV-1a hash of a flight id.
pub fn flight_hash(flight_id: &str) -> u64 {
    flight_hash_bytes(flight_id.as_bytes())
}

/// FNV-1a 64 of raw bytes (also used to fingerprint requests).
pub fn flight_hash_bytes(bytes: &[u8]) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    // `write` hashes the raw bytes; `Hash for str` would append a 0xff
    // terminator, which is not part of the documented function.
    hasher.write(bytes);
    hasher.finish()
}

/// The partition that owns `flight_id` when there are `partitions` of them.
pub fn partition_of(flight_id: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "partition count must be positive");
    (flight_hash(flight_id) % u64::from(partitions)) as u32
}

/// Parses a partition set such as `"0-7,12,14-15"` into sorted partitions.
pub fn parse_partition_set(spec: &str, partitions: u32) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (low, high) = match part.split_once('-') {
            Some((low, high)) => (parse_partition(low)?, parse_partition(high)?),
            None => {
                let one = parse_partition(part)?;
                (one, one)
            }
        };
        if low > high || high >= partitions {
            return Err(format!(
                "partition range {part:?} must be ascending and below the partition count {partitions}"
            ));
        }
        out.extend(low..=high);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn parse_partition(text: &str) -> Result<u32, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a partition number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is part of the contract: these values must never change.
    #[test]
    fn flight_hash_is_the_documented_fnv1a64() {
        assert_eq!(flight_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(flight_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(flight_hash("foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn partition_of_is_stable_across_calls_and_processes() {
        assert_eq!(
            partition_of("BA117", 64),
            (flight_hash("BA117") % 64) as u32
        );
        let first: Vec<u32> = (0..100)
            .map(|i| partition_of(&format!("F{i}"), 16))
            .collect();
        let again: Vec<u32> = (0..100)
            .map(|i| partition_of(&format!("F{i}"), 16))
            .collect();
        assert_eq!(first, again);
        assert!(first.iter().all(|p| *p < 16));
    }

    #[test]
    fn partition_set_parses_ranges_and_rejects_bad_ones() {
        assert_eq!(
            parse_partition_set("0-2, 5,7-7", 8).unwrap(),
            vec![0, 1, 2, 5, 7]
        );
        assert!(parse_partition_set("3-1", 8).is_err());
        assert!(parse_partition_set("0-8", 8).is_err());
        assert!(parse_partition_set("x", 8).is_err());
    }
}

//! A microbenchmark of `append`: `tasks` concurrent callers each appending
//! Forced records, as concurrent bookings force their COMMITs. Not a test;
//! the benchmark command calls it.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use super::{DecisionLog, Durability, LogError, LogOptions, LogRecord, RecordKind};
use booking_proto::log_v1::LegSummary;

/// Appends `records` Forced records (a COMMIT with two legs, about 120
/// bytes) from `tasks` concurrent tasks into a fresh log in `dir`. Returns
/// (records per second, records per fsync). With `group_commit` false it
/// measures the naive one-fsync-per-record baseline.
pub async fn bench_appends(
    dir: &Path,
    tasks: usize,
    records: usize,
    group_commit: bool,
) -> Result<(f64, f64), LogError> {
    let mut options = LogOptions::new(dir);
    options.group_commit = group_commit;
    let (log, _) = DecisionLog::open(options)?;
    let tasks = tasks.max(1);
    let record = Arc::new(bench_record());
    let started = Instant::now();
    let mut set = JoinSet::new();
    for task in 0..tasks {
        let count = records / tasks + usize::from(task < records % tasks);
        set.spawn(append_many(log.clone(), Arc::clone(&record), count));
    }
    while let Some(joined) = set.join_next().await {
        joined.expect("bench tasks do not panic")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = log.stats();
    log.shutdown().await?;
    let per_fsync = stats.records_written as f64 / stats.fsyncs.max(1) as f64;
    Ok((records as f64 / seconds, per_fsync))
}

async fn append_many(
    log: DecisionLog,
    record: Arc<LogRecord>,
    count: usize,
) -> Result<(), LogError> {
    for _ in 0..count {
        log.append(LogRecord::clone(&record), Durability::Forced)
            .await?;
    }
    Ok(())
}

fn bench_record() -> LogRecord {
    let leg = |index: u32, flight: &str, shard: &str| LegSummary {
        leg_index: index,
        flight_id: flight.to_string(),
        shard: shard.to_string(),
        seat_count: 2,
        seats: vec!["12A".to_string(), "12B".to_string()],
        passengers: Vec::new(),
    };
    LogRecord {
        kind: RecordKind::Commit as i32,
        txid: vec![7; 16],
        at_unix_ms: 1_760_000_000_000,
        shards: vec!["s0".to_string(), "s1".to_string()],
        idempotency_key: "bench-0000000001".to_string(),
        request_fingerprint: 0x0123_4567_89ab_cdef,
        legs: vec![
            leg(0, "BA117-20261201", "s0"),
            leg(1, "BA118-20261208", "s1"),
        ],
        ..LogRecord::default()
    }
}

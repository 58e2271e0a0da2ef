//! The decision log alone: `coordinator::log::bench_appends` (concurrent
//! appenders forcing COMMIT-sized records) at 1, 64 and 256 appenders,
//! group commit on and off, each in a fresh log directory on the bench's
//! disk.

use std::path::Path;

use super::report::LogRun;
use super::BenchError;

/// Appender counts measured.
pub const APPENDERS: [usize; 3] = [1, 64, 256];
/// Records per run when every record gets its own fsync: about as many
/// fsyncs as the disk does in a few seconds.
const RECORDS_ONE_FSYNC_EACH: usize = 2_000;
/// Records per appender when group commit can batch them.
const RECORDS_PER_APPENDER_BATCHED: usize = 400;

/// Records appended by one run: enough fsyncs to average over, few enough
/// that a one-fsync-per-record run stays short.
pub fn records_for(appenders: usize, group_commit: bool) -> usize {
    if group_commit && appenders > 1 {
        (appenders * RECORDS_PER_APPENDER_BATCHED).max(RECORDS_ONE_FSYNC_EACH * 10)
    } else {
        RECORDS_ONE_FSYNC_EACH
    }
}

/// Every run, in a fresh directory under `dir` each (removed afterwards).
pub async fn run(dir: &Path) -> Result<Vec<LogRun>, BenchError> {
    let mut runs = Vec::new();
    for appenders in APPENDERS {
        for group_commit in [true, false] {
            let records = records_for(appenders, group_commit);
            let run_dir = dir.join(format!(
                "log-bench-{appenders}-{}",
                if group_commit { "on" } else { "off" }
            ));
            std::fs::create_dir_all(&run_dir).map_err(|source| {
                BenchError::io(format!("create {}", run_dir.display()), source)
            })?;
            let (records_per_s, records_per_fsync) =
                coordinator::log::bench_appends(&run_dir, appenders, records, group_commit).await?;
            let _ = std::fs::remove_dir_all(&run_dir);
            runs.push(LogRun {
                appenders,
                group_commit,
                records,
                records_per_s,
                records_per_fsync,
            });
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_runs_stay_short_and_batched_runs_get_many_rounds() {
        assert_eq!(records_for(1, true), 2_000, "one appender: one fsync each");
        assert_eq!(records_for(256, false), 2_000);
        assert_eq!(records_for(64, true), 25_600);
        assert_eq!(records_for(256, true), 102_400);
    }
}

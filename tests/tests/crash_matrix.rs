//! The crash matrix of DESIGN.md "Failures we test by causing them": every
//! failpoint × the process it lives in, plus a SIGKILL of each kind of
//! process at a random instant, each as one round of the crash harness
//! (load recorded in the oracle, crash, random downtime, restart, retry the
//! unanswered, quiescence, the four invariants, a new booking commits).
//! All of it on SQLite shards; a representative subset on PostgreSQL.

use std::time::Duration;

use booking_client::ProcessId;
use booking_tests::harness::{
    CrashHarness, Fault, COORDINATOR_FAILPOINTS, PARTICIPANT_FAILPOINTS, RETENTION_SECS,
};
use booking_tests::*;
use rand::Rng;

const SEED: u64 = 0x5eed_0004;

async fn run_matrix(db: Db, faults: Vec<Fault>) {
    let mut harness = CrashHarness::start(db, SEED).await;
    let mut failed = Vec::new();
    for fault in faults {
        let report = harness
            .round(fault.clone())
            .await
            .unwrap_or_else(|e| panic!("{fault}: {e:#}"));
        tracing::info!("{report}");
        eprintln!("{db:?}: {report}");
        assert!(report.fired, "{fault}: the failpoint never fired");
        // Answers before the crash, or after it to the retried keys (each
        // retry must end COMMITTED or ABORTED, else it is a violation). A
        // failpoint that tears the third log write can fire before any
        // booking was answered when fsyncs are slow, so the answers may all
        // come after recovery.
        assert!(
            report.acknowledged + report.unknown_retried > 0,
            "{fault}: the load got no answer at all, before the crash or on retry after it"
        );
        if !report.violations.is_empty() {
            failed.push(format!("{fault}:\n{}", report.violations.join("\n")));
        }
    }
    assert!(failed.is_empty(), "violations:\n{}", failed.join("\n\n"));
    // Retention runs among the crashes; once the window has passed over the
    // quiescent cluster, the oldest segment must be gone (no transaction of
    // it may be left open after all those crashes and recoveries).
    let log_dir = harness.test.cluster.data_dir().join("coordinator-log");
    let first = log_dir.join("0000000000000001.seg");
    let window: u64 = RETENTION_SECS.parse().expect("a number of seconds");
    let deadline = std::time::Instant::now() + Duration::from_secs(window + 10);
    while first.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if first.exists() {
        panic!(
            "retention never removed the first segment of {}:\n{}",
            log_dir.display(),
            why_kept(&harness, &log_dir)
        );
    }
}

/// What holds the first segment back: the transactions the log leaves
/// open, and the coordinator's errors and retention lines.
fn why_kept(harness: &CrashHarness, log_dir: &std::path::Path) -> String {
    let mut why = String::new();
    match coordinator::log::scan(log_dir) {
        Ok(replayed) => match coordinator::recovery::histories(&replayed) {
            Ok(histories) => {
                for (txid, history) in histories.iter().filter(|(_, h)| h.end.is_none()) {
                    why += &format!(
                        "open in the log: {txid} first in segment {} (begin {}, decision {})\n",
                        history.first_segment,
                        history.begin.is_some(),
                        history.decision.is_some()
                    );
                }
            }
            Err(error) => why += &format!("histories: {error}\n"),
        },
        Err(error) => why += &format!("scan: {error}\n"),
    }
    let log = std::fs::read_to_string(harness.test.cluster.log_path(ProcessId::Coordinator))
        .unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("retention") || l.contains("panicked"))
        .take(40)
    {
        why += line;
        why.push('\n');
    }
    why
}

/// A failpoint armed to fire after a few passes, so not always on the first
/// booking.
fn armed(harness_rng: &mut impl Rng, process: ProcessId, failpoint: &'static str) -> Fault {
    Fault::Failpoint {
        process,
        failpoint,
        skip: harness_rng.gen_range(0..4),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_matrix_on_sqlite_shards() {
    init_tracing();
    let mut rng = rand::thread_rng();
    let mut faults: Vec<Fault> = COORDINATOR_FAILPOINTS
        .iter()
        .map(|fp| armed(&mut rng, ProcessId::Coordinator, fp))
        .collect();
    for (i, fp) in PARTICIPANT_FAILPOINTS.iter().enumerate() {
        faults.push(armed(&mut rng, ProcessId::Participant((i + 1) % 3), fp));
    }
    faults.push(Fault::Kill {
        process: ProcessId::Coordinator,
        after: Duration::from_millis(rng.gen_range(100..1_000)),
    });
    faults.push(Fault::Kill {
        process: ProcessId::Participant(0),
        after: Duration::from_millis(rng.gen_range(100..1_000)),
    });
    run_matrix(Db::Sqlite, faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_matrix_subset_on_postgres_shards() {
    init_tracing();
    let mut rng = rand::thread_rng();
    let faults = vec![
        armed(
            &mut rng,
            ProcessId::Coordinator,
            "coordinator::after_commit_logged",
        ),
        armed(
            &mut rng,
            ProcessId::Coordinator,
            "coordinator::after_first_commit",
        ),
        armed(
            &mut rng,
            ProcessId::Participant(1),
            "participant::after_prepare_commit",
        ),
        armed(
            &mut rng,
            ProcessId::Participant(2),
            "participant::after_commit_applied",
        ),
        armed(
            &mut rng,
            ProcessId::Coordinator,
            "coordinator::saga_mid_compensation",
        ),
        Fault::Kill {
            process: ProcessId::Participant(0),
            after: Duration::from_millis(rng.gen_range(100..1_000)),
        },
    ];
    run_matrix(Db::Postgres, faults).await;
}

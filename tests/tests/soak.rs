//! A bounded run of the random crash soak (the `soak` binary runs it for
//! as many rounds as asked): random process, random crash, random instant.

use booking_tests::harness::CrashHarness;
use booking_tests::*;

const ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_crash_soak_bounded() {
    init_tracing();
    let seed = rand::random();
    eprintln!("soak seed {seed}");
    let mut harness = CrashHarness::start(Db::Sqlite, seed).await;
    let mut failed = Vec::new();
    for round in 0..ROUNDS {
        let fault = harness.random_fault();
        let report = harness
            .round(fault.clone())
            .await
            .unwrap_or_else(|e| panic!("seed {seed} round {round} {fault}: {e:#}"));
        eprintln!("round {round}: {report}");
        if !report.violations.is_empty() {
            failed.push(format!(
                "round {round} {fault}:\n{}",
                report.violations.join("\n")
            ));
        }
    }
    assert!(failed.is_empty(), "seed {seed}:\n{}", failed.join("\n\n"));
}

//! The crash harness of DESIGN.md "Failures we test by causing them".
//!
//! One [`CrashRound`] runs a booking load against the cluster while
//! recording every reply in the oracle, crashes one process (a failpoint
//! armed to fire at a random instant, or a SIGKILL at a random instant),
//! restarts it after a random downtime, and then checks, against the shard
//! databases:
//! - every booking whose answer the client never got gets a final one when
//!   retried with its idempotency key, and every key keeps its first reply;
//! - quiescence: no seat held, no transaction prepared, within the timeouts;
//! - the four invariants (no double booking, atomicity, durability against
//!   the oracle, liveness);
//! - new bookings commit afterwards.
//!
//! The matrix test runs one round per failpoint; the soak command runs many
//! rounds with random faults. Retention runs all along (small segments, a
//! short window), so every crash also lands among segment deletions.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use booking_client::checker::{self, CheckMode, Oracle, OracleOutcome};
use booking_client::load::{self, FlightPlan, LoadSpec, StopAfter};
use booking_client::{BookingClient, ClusterError, ProcessId};
use booking_proto::v1::Outcome;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{start_with, two_shard_request, Db, TestCluster};

/// Every round also runs retention: small log segments, deleted 10 s after
/// their transactions end (longer than a round takes to retry its unknown
/// keys, so no key of the current round is forgotten before its retry).
pub const SEGMENT_BYTES: &str = "16384";
pub const RETENTION_SECS: &str = "10";

/// Failpoints of the coordinator that a booking load reaches.
pub const COORDINATOR_FAILPOINTS: [&str; 9] = [
    "coordinator::after_begin",
    "coordinator::after_prepares_sent",
    "coordinator::after_commit_logged",
    "coordinator::after_first_commit",
    "coordinator::before_end",
    "coordinator::log_torn_write",
    "coordinator::saga_after_intent",
    "coordinator::saga_after_leg",
    "coordinator::saga_mid_compensation",
];

/// Failpoints of a participant that a booking load reaches.
pub const PARTICIPANT_FAILPOINTS: [&str; 3] = [
    "participant::after_prepare_commit",
    "participant::after_commit_applied",
    "participant::before_compensation_commit",
];

/// Share of each round's itineraries booked in saga mode, so that the saga
/// failpoints are reached too.
const SAGA_PERCENT: u8 = 30;

/// How long after a crash everything must be settled again.
const QUIESCENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an armed failpoint may take to fire once the load runs.
const FIRE_TIMEOUT_AFTER_LOAD: Duration = Duration::from_secs(5);
/// Rows × letters of each flight a round books on.
const ROUND_FLIGHTS: usize = 9;
const ROUND_ROWS: u32 = 8;
const ROUND_LETTERS: &str = "ABCDEF";

/// One crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Arm `failpoint` in `process`, skipping its first `skip` evaluations,
    /// so it fires at a random instant of the load.
    Failpoint {
        process: ProcessId,
        failpoint: &'static str,
        skip: u32,
    },
    /// SIGKILL `process` `after` the load started.
    Kill { process: ProcessId, after: Duration },
}

impl Fault {
    pub fn process(&self) -> ProcessId {
        match self {
            Fault::Failpoint { process, .. } | Fault::Kill { process, .. } => *process,
        }
    }

    /// A random fault: any process, a SIGKILL or one of its failpoints.
    pub fn random(rng: &mut StdRng, shards: usize, load: Duration) -> Fault {
        let process = match rng.gen_range(0..=shards) {
            0 => ProcessId::Coordinator,
            i => ProcessId::Participant(i - 1),
        };
        let failpoints: &[&'static str] = match process {
            ProcessId::Coordinator => &COORDINATOR_FAILPOINTS,
            ProcessId::Participant(_) => &PARTICIPANT_FAILPOINTS,
        };
        if rng.gen_bool(0.4) {
            Fault::Kill {
                process,
                after: random_instant(rng, load),
            }
        } else {
            let failpoint = failpoints[rng.gen_range(0..failpoints.len())];
            Fault::Failpoint {
                process,
                failpoint,
                skip: rng.gen_range(0..passes_to_skip_max(failpoint)),
            }
        }
    }

    /// The `FAILPOINTS` value arming this fault, if it is a failpoint. The
    /// torn write pauses 300 ms before exiting, so a build that replied
    /// before the record was durable would get its reply out.
    fn failpoints_env(&self) -> Option<String> {
        match self {
            Fault::Failpoint {
                failpoint, skip, ..
            } => {
                let action = if *failpoint == "coordinator::log_torn_write" {
                    "return(300)"
                } else {
                    "return"
                };
                Some(if *skip == 0 {
                    format!("{failpoint}={action}")
                } else {
                    format!("{failpoint}={skip}*off->{action}")
                })
            }
            Fault::Kill { .. } => None,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Failpoint {
                process,
                failpoint,
                skip,
            } => write!(f, "{process}: failpoint {failpoint} after {skip} passes"),
            Fault::Kill { process, after } => {
                write!(f, "{process}: SIGKILL at {} ms", after.as_millis())
            }
        }
    }
}

/// Passes of `failpoint` a round may skip before it fires: fewer where a
/// round reaches the point only a few times. A shard's phase-2 decisions
/// go in a few `DecideMany` calls per round (they linger,
/// `decision_linger_ms`), and `after_commit_applied` is passed once per
/// call: skipping up to 40 left it unfired in 5 of 47 soak rounds.
fn passes_to_skip_max(failpoint: &str) -> u32 {
    match failpoint {
        "participant::after_commit_applied" => 10,
        _ => 40,
    }
}

fn random_instant(rng: &mut StdRng, load: Duration) -> Duration {
    let max_ms = (load.as_millis() as u64 * 4 / 5).max(1);
    Duration::from_millis(rng.gen_range(0..max_ms))
}

/// What one round saw.
#[derive(Debug)]
pub struct RoundReport {
    pub fault: Fault,
    /// Whether the armed failpoint fired (a SIGKILL always "fires"). One
    /// that did not is replaced by a SIGKILL at the end of the load.
    pub fired: bool,
    /// Bookings the clients got a final answer for during the load.
    pub acknowledged: u64,
    pub committed: u64,
    /// Bookings without an answer during the load, each retried afterwards.
    pub unknown_retried: u64,
    /// Every invariant violation found; empty when the round passed.
    pub violations: Vec<String>,
    pub elapsed: Duration,
}

impl fmt::Display for RoundReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}: {} acknowledged ({} committed), {} unknown retried, {} violations, {:.1} s",
            self.fault,
            if self.fired {
                ""
            } else {
                " (did not fire; SIGKILLed)"
            },
            self.acknowledged,
            self.committed,
            self.unknown_retried,
            self.violations.len(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// A cluster under test, with the oracle of every reply it ever gave.
pub struct CrashHarness {
    pub test: TestCluster,
    pub oracle: Arc<Oracle>,
    pub rng: StdRng,
    /// Concurrent customers of each round's load.
    pub customers: usize,
    /// How long each round's load runs.
    pub load: Duration,
    rounds: u64,
}

impl CrashHarness {
    pub async fn start(db: Db, seed: u64) -> CrashHarness {
        CrashHarness {
            test: start_with(db, |spec| {
                spec.coordinator_settings
                    .push(("segment_bytes_max".into(), SEGMENT_BYTES.into()));
                spec.coordinator_settings
                    .push(("log_retention_secs".into(), RETENTION_SECS.into()));
            })
            .await,
            oracle: Arc::new(Oracle::new()),
            rng: StdRng::seed_from_u64(seed),
            customers: 24,
            load: Duration::from_millis(1500),
            rounds: 0,
        }
    }

    /// A fault chosen at random for the next round.
    pub fn random_fault(&mut self) -> Fault {
        let shards = self.test.cluster.shards();
        let load = self.load;
        Fault::random(&mut self.rng, shards, load)
    }

    /// One round: load, crash, restart, recover, check. `Err` means the
    /// harness itself could not go on (a process would not restart, a
    /// database could not be read); violations are in the report.
    pub async fn round(&mut self, fault: Fault) -> anyhow::Result<RoundReport> {
        let started = Instant::now();
        self.rounds += 1;
        let round = self.rounds;
        let cluster = &mut self.test.cluster;
        let victim = fault.process();
        tracing::info!(round, %fault, "crash round");

        // Arm, before the load, so the failpoint fires at its Nth pass. The
        // restarted process may have recovery work (phase 2 of the last
        // round's probe), so the point may fire before the load even starts:
        // that is a crash during recovery, and the round goes on with it.
        let flights = round_flights(cluster, round).await?;
        let mut fired_early = false;
        if let Some(env) = fault.failpoints_env() {
            cluster.set_env(victim, "FAILPOINTS", &env);
            match cluster.restart(victim).await {
                Ok(()) => {}
                Err(ClusterError::Exited { status, .. }) if status.contains("137") => {
                    tracing::info!(%victim, "the failpoint fired during start-up recovery");
                    fired_early = true;
                }
                Err(error) => return Err(error).with_context(|| format!("restart {victim} armed")),
            }
        }
        // Lazy: the coordinator may be the one down.
        let client = BookingClient::connect_lazy(&cluster.coordinator_url())
            .map_err(|e| anyhow!("coordinator url: {e}"))?;
        let round_oracle = Arc::new(Oracle::new());
        let load = {
            let mut spec = LoadSpec::new(flights);
            spec.customers = self.customers;
            spec.stop = StopAfter::Duration(self.load);
            spec.key_prefix = format!("r{round}");
            spec.seed = self.rng.gen();
            spec.timeout_ms = 2_000;
            spec.saga_percent = SAGA_PERCENT;
            let client = client.clone();
            let oracle = Arc::clone(&round_oracle);
            tokio::spawn(async move { load::run(&client, &spec, &oracle).await })
        };

        // Crash.
        let fired = match &fault {
            _ if fired_early => true,
            Fault::Kill { after, .. } => {
                tokio::time::sleep(*after).await;
                cluster.kill(victim).await.context("SIGKILL")?;
                true
            }
            Fault::Failpoint { .. } => {
                let exit = cluster
                    .wait_exit(victim, self.load + FIRE_TIMEOUT_AFTER_LOAD)
                    .await
                    .context("wait for the failpoint")?;
                match exit {
                    Some(status) => {
                        if status.code() != Some(137) {
                            bail!("{victim} exited with {status}, not at the failpoint");
                        }
                        true
                    }
                    None => {
                        cluster.kill(victim).await.context("SIGKILL")?;
                        false
                    }
                }
            }
        };

        // Down for a while (sometimes past the participants' in-doubt
        // timeout), then back, unarmed.
        let downtime = Duration::from_millis(self.rng.gen_range(0..1_000));
        tokio::time::sleep(downtime).await;
        cluster.remove_env(victim, "FAILPOINTS");
        cluster
            .restart(victim)
            .await
            .with_context(|| format!("restart {victim}"))?;
        load.await.context("the load task")?;

        // Every booking without an answer gets one now, and every key keeps
        // the reply it had.
        let client = cluster.client().await.context("reconnect")?;
        let during = round_oracle.entries();
        let mut violations = Vec::new();
        let mut unknown_retried = 0;
        for entry in &during {
            if let OracleOutcome::Unknown { .. } = entry.outcome {
                unknown_retried += 1;
                let (again, _) = load::book_with_retries(&client, &entry.request, 20).await;
                match &again {
                    Ok(reply)
                        if reply.outcome == Outcome::Committed as i32
                            || reply.outcome == Outcome::Aborted as i32 => {}
                    other => violations.push(format!(
                        "key {}: no final answer after recovery: {other:?}",
                        entry.request.idempotency_key
                    )),
                }
                round_oracle.record(&entry.request, &again);
            }
        }
        self.oracle.extend(round_oracle.entries());

        violations.extend(settled_and_checked(cluster, &self.oracle).await?);
        violations.extend(new_bookings_commit(cluster, &client, round).await);

        let (mut acknowledged, mut committed) = (0, 0);
        for entry in &during {
            match entry.outcome {
                OracleOutcome::Committed(_) => {
                    acknowledged += 1;
                    committed += 1;
                }
                OracleOutcome::Aborted(_) => acknowledged += 1,
                OracleOutcome::Unknown { .. } => {}
            }
        }
        Ok(RoundReport {
            fault,
            fired,
            acknowledged,
            committed,
            unknown_retried,
            violations,
            elapsed: started.elapsed(),
        })
    }
}

/// Fresh flights for round `round`, so every round has seats to fight over.
async fn round_flights(
    cluster: &booking_client::Cluster,
    round: u64,
) -> anyhow::Result<Vec<FlightPlan>> {
    let mut flights = Vec::with_capacity(ROUND_FLIGHTS);
    for i in 0..ROUND_FLIGHTS {
        let flight_id = format!("R{round}F{i}");
        cluster
            .create_flight(&flight_id, ROUND_ROWS, ROUND_LETTERS)
            .await
            .with_context(|| format!("create flight {flight_id}"))?;
        flights.push(FlightPlan {
            shard: cluster.shard_of(&flight_id),
            flight_id,
            rows: ROUND_ROWS,
            letters: ROUND_LETTERS.into(),
        });
    }
    Ok(flights)
}

/// Waits for quiescence and runs the checker; violations as text.
async fn settled_and_checked(
    cluster: &booking_client::Cluster,
    oracle: &Oracle,
) -> anyhow::Result<Vec<String>> {
    let urls = cluster.shard_database_urls();
    if let Err(error) = checker::wait_quiescent(&urls, QUIESCENCE_TIMEOUT).await {
        return Ok(vec![format!("liveness: not quiescent: {error}")]);
    }
    let report = checker::check(&urls, oracle, CheckMode::Quiescent)
        .await
        .map_err(|e| anyhow!("read the shard databases: {e}"))?;
    Ok(if report.is_ok() {
        Vec::new()
    } else {
        vec![report.to_string()]
    })
}

/// After recovery a fresh two-shard booking must commit.
async fn new_bookings_commit(
    cluster: &booking_client::Cluster,
    client: &BookingClient,
    round: u64,
) -> Option<String> {
    let request =
        two_shard_request(cluster, &format!("R{round}P"), &format!("probe-{round}")).await;
    match client.book(request).await {
        Ok(reply) if reply.outcome == Outcome::Committed as i32 => None,
        other => Some(format!(
            "liveness: a new booking after recovery did not commit: {other:?}"
        )),
    }
}

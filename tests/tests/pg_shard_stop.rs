//! DESIGN.md "Failures we test by causing them": a shard database stopped
//! and restarted under load. Shard 1's PostgreSQL server is stopped as a
//! crash would (`pg_ctl stop -m immediate`) while customers book, kept down
//! five seconds and started again. Shards 0 and 2 live on another server,
//! so only one participant loses its database.
//!
//! The participant is not restarted: it must reconnect by itself. While
//! its database is down, itineraries touching shard 1 are never COMMITTED;
//! once it is back they commit again (a probe itinerary booked every 50 ms
//! commits within 20 s, while the customers' load goes on for its last
//! seconds); afterwards
//! the shards are quiescent, every invariant holds (every booking the
//! customers were told was COMMITTED is booked in full, after the crash of
//! the database that held it), and new bookings on the shard commit.
//!
//! Needs the PostgreSQL server binaries: without them it fails saying which
//! package to install, never skips.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use booking_client::checker::Oracle;
use booking_client::load::{self, FlightPlan, LoadSpec, StopAfter};
use booking_client::pg::PgCluster;
use booking_client::{find_binaries, Backend, BookingClient, Cluster, ClusterSpec, ProcessId};
use booking_proto::v1::{BookRequest, LegRequest, Outcome};
use booking_tests::*;

/// The shard whose database server is stopped.
const STOPPED: usize = 1;
const FLIGHTS_PER_SHARD: usize = 3;
const ROWS: u32 = 100;
const LETTERS_WIDE: &str = "ABCDEFGHJK";
const DEADLINE_MS: u32 = 2000;
const LOAD_FOR: Duration = Duration::from_secs(11);
/// Long enough for a few probes to start and end inside the outage even
/// when fsyncs are slow: an aborted probe's answer waits for its forced
/// ABORT record, which took 1.4 s on a loaded disk.
const DOWN_FOR: Duration = Duration::from_millis(5000);
/// The probes' deadline until the database is back: short, so that several
/// fall inside the outage.
const PROBE_DEADLINE_MS: u32 = 1000;
/// The probes' deadline once the database is back. What is tested then is
/// that the shard commits again without a participant restart, not how
/// fast: on a CI machine whose disk was busy, every local commit of the
/// healthy shards took over a second for a while, and probes with the short
/// deadline aborted for 10 s after the restart.
const PROBE_DEADLINE_AFTER_MS: u32 = 5000;
/// How soon after its database is back the shard must commit again.
const RECOVERY_WITHIN: Duration = Duration::from_secs(20);

/// Shard i's flights, `flights[i]`.
async fn create_flights(cluster: &Cluster) -> Vec<Vec<String>> {
    let mut flights = vec![Vec::new(); cluster.shards()];
    let mut i = 0;
    while flights.iter().any(|f| f.len() < FLIGHTS_PER_SHARD) {
        let id = format!("PG{i}");
        i += 1;
        let shard = cluster.shard_of(&id);
        if flights[shard].len() < FLIGHTS_PER_SHARD {
            cluster
                .create_flight(&id, ROWS, LETTERS_WIDE)
                .await
                .expect("create flight");
            flights[shard].push(id);
        }
    }
    flights
}

/// A two-leg itinerary: one seat on shard STOPPED and one on another shard.
fn probe_request(flights: &[Vec<String>], key: String, n: usize, timeout_ms: u32) -> BookRequest {
    let other = [0, 2][n % 2];
    let leg = |flight: &String| LegRequest {
        flight_id: flight.clone(),
        seat_count: 1,
        passengers: vec![format!("{key}-pax")],
        ..Default::default()
    };
    BookRequest {
        idempotency_key: key.clone(),
        timeout_ms,
        legs: vec![
            leg(&flights[STOPPED][n % FLIGHTS_PER_SHARD]),
            leg(&flights[other][n % FLIGHTS_PER_SHARD]),
        ],
        ..Default::default()
    }
}

/// One probe call: when it ran and whether it committed.
#[derive(Debug, Clone)]
struct Probe {
    key: String,
    started: Instant,
    finished: Instant,
    committed: bool,
    answer: String,
}

/// Books probe itineraries touching shard STOPPED one after another, every
/// 50 ms, until `until`, recording every answer in `oracle` and `probes`.
async fn probe(
    client: BookingClient,
    flights: Arc<Vec<Vec<String>>>,
    oracle: Arc<Oracle>,
    probes: Arc<Mutex<Vec<Probe>>>,
    restarted: Arc<Mutex<Option<Instant>>>,
) {
    let mut n = 0;
    // Until a probe started after the database came back has committed, or
    // RECOVERY_WITHIN after that moment: however long the restart took.
    loop {
        if let Some(restarted) = *restarted.lock().unwrap() {
            let recovered = probes
                .lock()
                .unwrap()
                .iter()
                .any(|p| p.started >= restarted && p.committed);
            if recovered || Instant::now() > restarted + RECOVERY_WITHIN {
                break;
            }
        }
        let timeout_ms = if restarted.lock().unwrap().is_some() {
            PROBE_DEADLINE_AFTER_MS
        } else {
            PROBE_DEADLINE_MS
        };
        let request = probe_request(&flights, format!("probe-{n}"), n, timeout_ms);
        n += 1;
        let started = Instant::now();
        let result = client.book(request.clone()).await;
        let finished = Instant::now();
        oracle.record(&request, &result);
        let committed = matches!(&result, Ok(r) if r.outcome == Outcome::Committed as i32);
        let answer = match &result {
            Ok(reply) => format!("{:?} {:?}", reply.outcome(), reply.abort),
            Err(error) => error.to_string(),
        };
        probes.lock().unwrap().push(Probe {
            key: request.idempotency_key,
            started,
            finished,
            committed,
            answer,
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_database_stopped_under_load_comes_back_without_restarting_the_participant() {
    init_tracing();
    // Shard 1 alone on one server; shards 0 and 2 on another.
    let mut alone = PgCluster::start(1)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL shards: {e}"));
    let others = PgCluster::start(2)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL shards: {e}"));
    let bin_dir = find_binaries()
        .await
        .expect("find or build the coordinator and participant binaries");
    let dir = tempfile::tempdir().expect("create a temp dir");
    let mut spec = ClusterSpec::new(bin_dir, dir.path());
    spec.backend = Backend::Postgres(vec![
        others.database_url(0),
        alone.database_url(0),
        others.database_url(1),
    ]);
    spec.in_doubt_after_ms = 500;
    let mut cluster = Cluster::start(spec).await.expect("start the cluster");
    let flights = Arc::new(create_flights(&cluster).await);
    let participant_pid = cluster.pid(ProcessId::Participant(STOPPED));
    let client = cluster.client().await.expect("connect");
    let oracle = Arc::new(Oracle::new());

    tracing::info!("load starts");
    let plans: Vec<FlightPlan> = flights
        .iter()
        .enumerate()
        .flat_map(|(shard, ids)| {
            ids.iter().map(move |id| FlightPlan {
                flight_id: id.clone(),
                shard,
                rows: ROWS,
                letters: LETTERS_WIDE.into(),
            })
        })
        .collect();
    let mut load_spec = LoadSpec::new(plans);
    load_spec.customers = 8;
    load_spec.stop = StopAfter::Duration(LOAD_FOR);
    load_spec.timeout_ms = DEADLINE_MS;
    load_spec.seed = 4;
    let load = {
        let (client, oracle) = (client.clone(), Arc::clone(&oracle));
        tokio::spawn(async move { load::run(&client, &load_spec, &oracle).await })
    };
    let probes = Arc::new(Mutex::new(Vec::new()));
    let restarted_at = Arc::new(Mutex::new(None));
    let prober = tokio::spawn(probe(
        client.clone(),
        Arc::clone(&flights),
        Arc::clone(&oracle),
        Arc::clone(&probes),
        Arc::clone(&restarted_at),
    ));

    tokio::time::sleep(Duration::from_millis(2000)).await;
    tracing::info!("stopping shard {STOPPED}'s PostgreSQL server (immediate)");
    alone
        .stop_immediate()
        .await
        .expect("pg_ctl stop -m immediate");
    let stopped = Instant::now();
    tokio::time::sleep(DOWN_FOR).await;
    tracing::info!("starting it again");
    let restarting = Instant::now();
    alone.start_server().await.expect("pg_ctl start");
    let restarted = Instant::now();
    *restarted_at.lock().unwrap() = Some(restarted);
    tracing::info!(took = ?restarted - restarting, "the server is back");

    let report = load.await.expect("the load task");
    prober.await.expect("the probe task");
    tracing::info!("load report:\n{report}");
    assert!(
        cluster.is_running(ProcessId::Participant(STOPPED))
            && cluster.pid(ProcessId::Participant(STOPPED)) == participant_pid,
        "the participant of shard {STOPPED} must ride out its database's restart without \
         exiting or being restarted; its log:\n{}",
        log_tail(&cluster, STOPPED)
    );
    assert!(
        report.committed > 0,
        "the load committed bookings:\n{report}"
    );

    let probes = probes.lock().unwrap().clone();
    let while_down: Vec<&Probe> = probes
        .iter()
        .filter(|p| p.started >= stopped && p.finished <= restarting)
        .collect();
    let timeline: Vec<String> = probes
        .iter()
        .map(|p| {
            let at = |t: Instant| {
                t.saturating_duration_since(stopped).as_millis() as i128
                    - stopped.saturating_duration_since(t).as_millis() as i128
            };
            format!(
                "{} {}..{} ms: {}",
                p.key,
                at(p.started),
                at(p.finished),
                p.answer
            )
        })
        .collect();
    assert!(
        !while_down.is_empty(),
        "probes ran while the database was down; probes (ms from the stop): {timeline:#?}"
    );
    let committed_while_down: Vec<&&Probe> = while_down.iter().filter(|p| p.committed).collect();
    assert!(
        committed_while_down.is_empty(),
        "nothing can commit on shard {STOPPED} while its database is down: {committed_while_down:#?}"
    );
    let recovered = probes
        .iter()
        .find(|p| p.started >= restarted && p.committed)
        .map(|p| p.finished - restarted);
    let after: Vec<(&str, &str)> = probes
        .iter()
        .filter(|p| p.started >= restarted)
        .map(|p| (p.key.as_str(), p.answer.as_str()))
        .collect();
    match recovered {
        Some(after_restart) => {
            tracing::info!(?after_restart, "shard {STOPPED} commits again");
            assert!(
                after_restart <= RECOVERY_WITHIN,
                "shard {STOPPED} took {after_restart:?} to commit again after its database came back"
            );
        }
        None => panic!(
            "no itinerary touching shard {STOPPED} committed in the {RECOVERY_WITHIN:?} after its \
             database came back; probe answers: {after:#?}\nparticipant log:\n{}",
            log_tail(&cluster, STOPPED)
        ),
    }

    tracing::info!("afterwards: quiescent, invariants hold");
    assert_invariants(&cluster, &oracle).await;

    tracing::info!("new bookings on the shard commit");
    let fresh = Arc::new(Oracle::new());
    let requests: Vec<BookRequest> = (0..20)
        .map(|n| probe_request(&flights, format!("after-{n}"), n, PROBE_DEADLINE_AFTER_MS))
        .collect();
    book_all_at_once(&client, requests, &fresh).await;
    let counts = fresh.counts();
    assert_eq!(
        counts.committed,
        20,
        "every new itinerary touching shard {STOPPED} commits: {:#?}",
        fresh.entries()
    );
    assert_invariants(&cluster, &fresh).await;
}

fn log_tail(cluster: &Cluster, shard: usize) -> String {
    let text = std::fs::read_to_string(cluster.log_path(ProcessId::Participant(shard)))
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

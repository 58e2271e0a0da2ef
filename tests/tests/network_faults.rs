//! DESIGN.md "Failures we test by causing them": the network between the
//! coordinator and one participant cut, and slowed, by a TCP proxy in the
//! test harness, while customers book multi-shard itineraries (SQLite
//! shards, real processes).
//!
//! The coordinator reaches shard PROXIED only through the proxy; the
//! participants still reach the coordinator directly, so a participant left
//! holding a prepared txid by a cut asks `GetDecision` after the in-doubt
//! timeout (500 ms here) and resolves it itself. The phases:
//!
//! 1. pass-through;
//! 2. cut (longer than the in-doubt timeout): itineraries touching the cut
//!    shard are ABORTED (SHARD_UNAVAILABLE or DEADLINE) or unknown, never
//!    COMMITTED; the others still commit;
//! 3. healed: itineraries touching the shard commit again;
//! 4. slowed (200 ms per chunk each way): they still commit, more slowly;
//! 5. cut while slowed, so votes and COMMITs in flight inside the proxy are
//!    lost: participants are left in doubt and ask the coordinator;
//! 6. healed.
//!
//! Every call returns a final answer or a clean error within the booking
//! deadline (plus slack); afterwards the shards are quiescent within the
//! timeouts and every invariant holds (read from the shard databases).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use booking_client::checker::{self, Oracle};
use booking_client::{BookingClient, Cluster, ProcessId};
use booking_proto::v1::{AbortReason, BookRequest, LegRequest, Outcome};
use booking_tests::proxy::Proxy;
use booking_tests::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The shard behind the proxy.
const PROXIED: usize = 1;
/// Each booking's deadline (`timeout_ms`).
const DEADLINE_MS: u32 = 1000;
/// What a call may take beyond its deadline: logging the decision, the
/// reply's way back, a busy 2-core machine. Under a disk kept busy by
/// other writers (`dd conv=fsync` in a loop) the forced decision record
/// alone took over 1.5 s; 3 s stays a bound a client can plan with.
const SLACK: Duration = Duration::from_millis(3000);
const CUSTOMERS: usize = 8;
/// 10 flights of 2,000 seats per shard, 60,000 seats. The load committed
/// up to 8,295 itineraries (1–3 legs, 1–2 passengers) in runs of 2026-11-24;
/// with 3 per shard, flights sold out, and sold-out answers, being fast,
/// made the load larger still.
const FLIGHTS_PER_SHARD: usize = 10;
/// Big flights: no itinerary is refused for want of seats, so every abort
/// is caused by the network (checked: nothing sells out).
const ROWS: u32 = 200;
const LETTERS_WIDE: &str = "ABCDEFGHJK";
const SLOW: Duration = Duration::from_millis(200);
/// In-doubt timeout (500 ms, set by `start`) plus the retry backoff (≤ 2 s).
const QUIESCENCE_WITHIN: Duration = Duration::from_secs(5);
/// How long each cut lasts. Every txid a cut leaves prepared must be
/// resolved through GetDecision before it ends: the in-doubt timeout
/// (500 ms), the coordinator's own deadline for the txid (1 s) and its
/// forced ABORT record, which a busy disk can stretch past a second.
const CUT_FOR: Duration = Duration::from_millis(3000);
/// How long the link stays healed before the next phase (and before the
/// load stops): long enough for a few itineraries through it to commit.
const HEALED_FOR: Duration = Duration::from_millis(3000);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Committed,
    Aborted(AbortReason),
    /// A gRPC error (or a reply without an outcome): outcome unknown.
    Unknown(String),
}

/// One call, as the customer saw it.
#[derive(Clone, Debug)]
struct Attempt {
    key: String,
    shards: Vec<usize>,
    started: Instant,
    finished: Instant,
    answer: Answer,
}

impl Attempt {
    fn touches(&self, shard: usize) -> bool {
        self.shards.contains(&shard)
    }

    /// Started at or after `from` and answered before `to`.
    fn within(&self, from: Instant, to: Instant) -> bool {
        self.started >= from && self.finished <= to
    }

    fn elapsed(&self) -> Duration {
        self.finished - self.started
    }
}

/// The booking load: customers booking 1–3-leg itineraries (mostly 2–3,
/// on distinct shards) until told to stop, one call per itinerary (no
/// retries, so each answer is attributable to the phase it fell in).
struct Load {
    stop: AtomicBool,
    oracle: Arc<Oracle>,
    attempts: Mutex<Vec<Attempt>>,
}

impl Load {
    async fn customer(
        self: Arc<Self>,
        client: BookingClient,
        flights: Arc<Vec<Vec<String>>>,
        number: usize,
    ) {
        let mut rng = StdRng::seed_from_u64(0x5eed + number as u64);
        let mut n = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let request = itinerary(&mut rng, &flights, &format!("net-c{number}-{n}"));
            n += 1;
            let mut shards: Vec<usize> = request
                .legs
                .iter()
                .map(|leg| shard_in(&flights, &leg.flight_id))
                .collect();
            shards.sort_unstable();
            let started = Instant::now();
            let result = client.book(request.clone()).await;
            let finished = Instant::now();
            self.oracle.record(&request, &result);
            let answer = match &result {
                Ok(reply) if reply.outcome == Outcome::Committed as i32 => Answer::Committed,
                Ok(reply) if reply.outcome == Outcome::Aborted as i32 => Answer::Aborted(
                    reply
                        .abort
                        .as_ref()
                        .map_or(AbortReason::Unspecified, |a| a.reason()),
                ),
                Ok(reply) => Answer::Unknown(format!("no outcome: {reply:?}")),
                Err(error) => Answer::Unknown(error.to_string()),
            };
            self.attempts.lock().unwrap().push(Attempt {
                key: request.idempotency_key,
                shards,
                started,
                finished,
                answer,
            });
        }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }
}

fn shard_in(flights: &[Vec<String>], flight_id: &str) -> usize {
    flights
        .iter()
        .position(|on_shard| on_shard.iter().any(|f| f == flight_id))
        .expect("a flight of the test")
}

/// 1 leg one time in ten, else 2 or 3 legs on distinct shards; 1–2 passengers.
fn itinerary(rng: &mut StdRng, flights: &[Vec<String>], key: &str) -> BookRequest {
    let legs = match rng.gen_range(0..10) {
        0 => 1,
        1..=5 => 2,
        _ => 3,
    };
    let mut shards: Vec<usize> = (0..flights.len()).collect();
    shards.shuffle(rng);
    let passengers: Vec<String> = (0..rng.gen_range(1..=2))
        .map(|p| format!("{key}-p{p}"))
        .collect();
    BookRequest {
        idempotency_key: key.into(),
        timeout_ms: DEADLINE_MS,
        legs: shards[..legs]
            .iter()
            .map(|shard| LegRequest {
                flight_id: flights[*shard].choose(rng).expect("flights").clone(),
                seat_count: passengers.len() as u32,
                passengers: passengers.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Big flights, `FLIGHTS_PER_SHARD` on each shard: `flights[shard]`.
async fn create_flights(cluster: &Cluster) -> Vec<Vec<String>> {
    let mut flights = vec![Vec::new(); cluster.shards()];
    let mut i = 0;
    while flights.iter().any(|f| f.len() < FLIGHTS_PER_SHARD) {
        let id = format!("NET{i}");
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

/// How many attempts ended each way, for messages.
fn tally(attempts: &[&Attempt]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for attempt in attempts {
        let name = match &attempt.answer {
            Answer::Committed => "COMMITTED".to_string(),
            Answer::Aborted(reason) => format!("ABORTED {}", reason.as_str_name()),
            Answer::Unknown(_) => "unknown".to_string(),
        };
        *counts.entry(name).or_default() += 1;
    }
    counts
}

/// The phase boundaries, as the test driver switched the proxy.
struct Phases {
    cut: Instant,
    healed: Instant,
    slowed: Instant,
    cut_while_slow: Instant,
    healed_again: Instant,
    stopped: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_slowed_shard_link_aborts_cleanly_and_recovers() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let flights = Arc::new(create_flights(&test.cluster).await);
    let upstream = test
        .cluster
        .listening_address(ProcessId::Participant(PROXIED))
        .expect("the participant runs");
    let proxy = Proxy::start(upstream).await;
    test.cluster
        .set_shard_address(PROXIED, Some(&proxy.url()))
        .expect("route the shard through the proxy");
    test.cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart the coordinator on the proxied route");
    let client = test
        .cluster
        .client()
        .await
        .expect("connect")
        .with_request_timeout(Duration::from_millis(u64::from(DEADLINE_MS)) + 2 * SLACK);

    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        oracle: Arc::new(Oracle::new()),
        attempts: Mutex::new(Vec::new()),
    });
    let customers: Vec<_> = (0..CUSTOMERS)
        .map(|number| {
            tokio::spawn(Arc::clone(&load).customer(client.clone(), Arc::clone(&flights), number))
        })
        .collect();

    let proxied_db = test.cluster.shard_database_url(PROXIED);
    tracing::info!("phase 1: pass-through");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        proxy.forwarded_bytes() > 0,
        "the coordinator talks to shard {PROXIED} through the proxy"
    );
    tracing::info!("phase 2: cut, longer than the in-doubt timeout");
    proxy.cut();
    let cut = Instant::now();
    let in_doubt = resolved_while_cut(&proxied_db, cut, CUT_FOR).await;
    tracing::info!(
        in_doubt,
        "prepared txids the first cut left in doubt, resolved by GetDecision"
    );
    tracing::info!("phase 3: healed");
    let healed = Instant::now();
    proxy.heal();
    tokio::time::sleep(HEALED_FOR).await;
    tracing::info!("phase 4: slowed by {SLOW:?} per chunk each way");
    proxy.slow(SLOW);
    let slowed = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tracing::info!("phase 5: cut while slowed: whatever is inside the proxy is lost");
    proxy.cut();
    let cut_while_slow = Instant::now();
    let in_doubt = resolved_while_cut(&proxied_db, cut_while_slow, CUT_FOR).await;
    tracing::info!(
        in_doubt,
        "prepared txids the second cut left in doubt, resolved by GetDecision"
    );
    assert!(
        in_doubt > 0,
        "a cut while slowed loses votes and COMMITs inside the proxy, leaving shard \
         {PROXIED} with prepared txids to resolve"
    );
    tracing::info!("phase 6: healed");
    let healed_again = Instant::now();
    proxy.heal();
    tokio::time::sleep(HEALED_FOR).await;
    load.stop.store(true, Ordering::Relaxed);
    for customer in customers {
        customer.await.expect("a customer task panicked");
    }
    let phases = Phases {
        cut,
        healed,
        slowed,
        cut_while_slow,
        healed_again,
        stopped: Instant::now(),
    };

    let attempts = load.attempts();
    let all: Vec<&Attempt> = attempts.iter().collect();
    tracing::info!(
        calls = attempts.len(),
        reset = proxy.connections_reset(),
        tally = ?tally(&all),
        "load done"
    );
    let sold_out = attempts
        .iter()
        .filter(|a| a.answer == Answer::Aborted(AbortReason::SoldOut))
        .count();
    assert_eq!(
        sold_out, 0,
        "flights sold out, so aborts are not all the network's: raise FLIGHTS_PER_SHARD"
    );
    check_answers(&attempts, &phases);

    tracing::info!("afterwards: quiescent within the timeouts, invariants hold");
    let urls = test.cluster.shard_database_urls();
    checker::wait_quiescent(&urls, QUIESCENCE_WITHIN)
        .await
        .expect("liveness: nothing held or prepared once the link is healed");
    assert_invariants(&test.cluster, &load.oracle).await;
}

/// Reads the txids shard `db` holds prepared just after a cut began at
/// `cut`, then, before the cut ends (`cut + length`), requires every one of
/// them decided. The coordinator cannot reach the shard meanwhile, so only
/// the participant's own GetDecision (after the 500 ms in-doubt timeout)
/// can have decided them. Returns how many there were.
async fn resolved_while_cut(db: &str, cut: Instant, length: Duration) -> usize {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let in_doubt = prepared_txids(db).await;
    tokio::time::sleep_until((cut + length - Duration::from_millis(100)).into()).await;
    let still = prepared_txids(db).await;
    let unresolved: Vec<&String> = in_doubt.iter().filter(|t| still.contains(t)).collect();
    assert!(
        unresolved.is_empty(),
        "liveness: {} of {} txids left prepared by the cut were not resolved through \
         GetDecision within {:?} (in-doubt timeout 500 ms): {unresolved:?}",
        unresolved.len(),
        in_doubt.len(),
        length - Duration::from_millis(100)
    );
    in_doubt.len()
}

/// The txids a SQLite shard database holds prepared, read directly.
async fn prepared_txids(db: &str) -> Vec<String> {
    use sqlx::Connection;
    let mut connection = sqlx::SqliteConnection::connect(&format!("{db}?mode=ro"))
        .await
        .expect("open the shard database read-only");
    sqlx::query_scalar("SELECT txid FROM txns WHERE state = 'prepared'")
        .fetch_all(&mut connection)
        .await
        .expect("read prepared txids")
}

/// Every answer is final or a clean error in time; the cut shard never
/// commits while cut; the other shards do; the healed and slowed link commits.
fn check_answers(attempts: &[Attempt], phases: &Phases) {
    let deadline = Duration::from_millis(u64::from(DEADLINE_MS));
    let late: Vec<(&str, Duration, &Answer)> = attempts
        .iter()
        .filter(|a| a.elapsed() > deadline + SLACK)
        .map(|a| (a.key.as_str(), a.elapsed(), &a.answer))
        .collect();
    assert!(
        late.is_empty(),
        "{} calls took longer than the {DEADLINE_MS} ms deadline + {SLACK:?}: {late:#?}",
        late.len()
    );
    let unclean: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| matches!(&a.answer, Answer::Unknown(e) if !e.starts_with("UNAVAILABLE")))
        .collect();
    assert!(
        unclean.is_empty(),
        "an unknown outcome must be a clean UNAVAILABLE (\"retry with the same key\"): {unclean:#?}"
    );

    for (name, from, to) in [
        ("the cut", phases.cut, phases.healed),
        (
            "the cut while slowed",
            phases.cut_while_slow,
            phases.healed_again,
        ),
    ] {
        let on_cut: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.touches(PROXIED) && a.within(from, to))
            .collect();
        assert!(
            on_cut.len() >= 10,
            "too few calls touched the cut shard during {name}: {}",
            on_cut.len()
        );
        let wrong: Vec<&&Attempt> = on_cut
            .iter()
            .filter(|a| match &a.answer {
                Answer::Aborted(AbortReason::ShardUnavailable | AbortReason::Deadline) => false,
                // A multi-shard itinerary is decided by the coordinator,
                // which the client still reaches: it must get an answer.
                Answer::Unknown(_) => a.shards.len() > 1,
                Answer::Committed | Answer::Aborted(_) => true,
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "during {name}, itineraries touching shard {PROXIED} must be ABORTED \
             (SHARD_UNAVAILABLE or DEADLINE), or unknown when single-shard; got {wrong:#?}"
        );
        let elsewhere: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| !a.touches(PROXIED) && a.within(from, to))
            .collect();
        assert!(
            elsewhere.iter().any(|a| a.answer == Answer::Committed),
            "the other shards keep booking during {name}: {:?}",
            tally(&elsewhere)
        );
    }

    for (name, from, to) in [
        ("after the first heal", phases.healed, phases.slowed),
        ("the slow phase", phases.slowed, phases.cut_while_slow),
        ("after the second heal", phases.healed_again, phases.stopped),
    ] {
        let touching: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.touches(PROXIED) && a.shards.len() > 1 && a.within(from, to))
            .collect();
        assert!(
            touching.iter().any(|a| a.answer == Answer::Committed),
            "multi-shard itineraries through the proxy commit in {name}: {:?}",
            tally(&touching)
        );
    }
}

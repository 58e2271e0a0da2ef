//! The invariant checker of DESIGN.md ("Invariants every test suite checks"),
//! reusable by every test suite and by `bookctl demo`.
//!
//! It reads the shard databases directly (SQLite files or PostgreSQL URLs,
//! through sqlx's `Any` driver), never the services' answers, and holds them
//! to the [`Oracle`] of replies clients were given. One function per
//! invariant lives in `invariants.rs`; this module reads, runs them and
//! reports. It writes nothing.
//!
//! Two modes ([`CheckMode`]): `Live` may run while bookings are in flight and
//! flags only what can never be right; `Quiescent` (after
//! [`wait_quiescent`], with every process up) also requires every itinerary
//! complete and nothing held or in doubt (invariant 4).

mod invariants;
mod oracle;
mod snapshot;
mod violation;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

pub use oracle::{Oracle, OracleCounts, OracleEntry, OracleOutcome};
pub use snapshot::{FlightRow, SeatRow, ShardSnapshot, Snapshot, TxnLeg, TxnRow};
pub use violation::{Invariant, Violation};

/// Whether the system is at rest when checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckMode {
    /// Bookings may be in flight: only states that can never be right count.
    Live,
    /// All processes up, no booking in flight, in-doubt timeouts passed:
    /// every invariant applies in full, including liveness.
    Quiescent,
}

/// Why the checker could not check (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot open shard database {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("shard database {url}: cannot {what}")]
    Query {
        url: String,
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("shards not quiescent after {waited:?}: {held_seats} seats held, {prepared_txns} transactions prepared; {detail}")]
    NotQuiescent {
        waited: Duration,
        held_seats: i64,
        prepared_txns: i64,
        detail: String,
    },
}

/// Totals seen in the shard databases and the oracle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub shards: usize,
    pub flights: usize,
    pub capacity: i64,
    pub seats_booked: i64,
    pub seats_held: i64,
    pub seats_free: i64,
    pub txns_committed: usize,
    pub txns_aborted: usize,
    pub txns_prepared: usize,
    pub oracle: OracleCounts,
}

/// What a check found. `is_ok()` when no invariant is broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub mode: CheckMode,
    pub violations: Vec<Violation>,
    pub stats: Stats,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations of one invariant.
    pub fn violations_of(&self, invariant: Invariant) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(move |v| v.invariant() == invariant)
    }

    /// Whether `invariant` was checked in this mode (liveness needs quiescence).
    pub fn checked(&self, invariant: Invariant) -> bool {
        invariant != Invariant::Liveness || self.mode == CheckMode::Quiescent
    }
}

/// How many violations of one invariant `Display` lists before summarising.
const VIOLATIONS_SHOWN_MAX: usize = 10;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for invariant in Invariant::ALL {
            let broken: Vec<&Violation> = self.violations_of(invariant).collect();
            match (self.checked(invariant), broken.len()) {
                (false, _) => writeln!(f, "  {invariant}: not checked (needs quiescence)")?,
                (true, 0) => writeln!(f, "  {invariant}: OK")?,
                (true, count) => {
                    writeln!(f, "  {invariant}: FAILED, {count} violations")?;
                    for violation in broken.iter().take(VIOLATIONS_SHOWN_MAX) {
                        writeln!(f, "    - {violation}")?;
                    }
                    if count > VIOLATIONS_SHOWN_MAX {
                        writeln!(f, "    ... and {} more", count - VIOLATIONS_SHOWN_MAX)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads every shard database and checks every invariant against `oracle`.
pub async fn check(
    shard_urls: &[String],
    oracle: &Oracle,
    mode: CheckMode,
) -> Result<Report, CheckError> {
    let snapshot = Snapshot::read(shard_urls).await?;
    Ok(check_snapshot(&snapshot, &oracle.entries(), mode))
}

/// Checks every invariant on a snapshot already read.
pub fn check_snapshot(snapshot: &Snapshot, oracle: &[OracleEntry], mode: CheckMode) -> Report {
    let index = invariants::Index::new(snapshot);
    let mut violations = invariants::no_double_booking(&index);
    violations.extend(invariants::atomicity(&index, mode));
    violations.extend(invariants::durability(&index, oracle, mode));
    if mode == CheckMode::Quiescent {
        violations.extend(invariants::liveness(&index));
    }
    Report {
        mode,
        violations,
        stats: stats(snapshot, oracle),
    }
}

fn stats(snapshot: &Snapshot, oracle: &[OracleEntry]) -> Stats {
    let mut stats = Stats {
        shards: snapshot.shards.len(),
        ..Stats::default()
    };
    for shard in &snapshot.shards {
        stats.flights += shard.flights.len();
        stats.capacity += shard.flights.iter().map(|f| f.capacity).sum::<i64>();
        for seat in &shard.seats {
            match seat.state.as_str() {
                "booked" => stats.seats_booked += 1,
                "held" => stats.seats_held += 1,
                _ => stats.seats_free += 1,
            }
        }
        for txn in &shard.txns {
            match txn.state.as_str() {
                "committed" => stats.txns_committed += 1,
                "aborted" => stats.txns_aborted += 1,
                _ => stats.txns_prepared += 1,
            }
        }
    }
    for entry in oracle {
        match entry.outcome {
            OracleOutcome::Committed(_) => stats.oracle.committed += 1,
            OracleOutcome::Aborted(_) => stats.oracle.aborted += 1,
            OracleOutcome::Unknown { .. } => stats.oracle.unknown += 1,
        }
    }
    stats
}

/// How often [`wait_quiescent`] looks again.
const QUIESCENCE_POLL: Duration = Duration::from_millis(100);

/// Waits until no shard has a held seat or a prepared transaction, and no
/// saga is booked on some shards only (its compensation still running). A
/// shard that cannot be read (restarting) counts as not quiescent yet. On
/// timeout the error says what is still unsettled, and where.
pub async fn wait_quiescent(shard_urls: &[String], timeout: Duration) -> Result<(), CheckError> {
    let started = Instant::now();
    loop {
        let (held_seats, prepared_txns, mut detail) = unsettled(shard_urls).await;
        if held_seats == 0 && prepared_txns == 0 && detail.is_empty() {
            match Snapshot::read(shard_urls).await {
                Ok(snapshot) => {
                    let partial = invariants::sagas_in_flight(&invariants::Index::new(&snapshot));
                    if partial.is_empty() {
                        return Ok(());
                    }
                    detail.push(format!(
                        "{} sagas booked on some shards only, e.g. {}",
                        partial.len(),
                        partial[..partial.len().min(3)].join(", ")
                    ));
                }
                Err(error) => detail.push(format!("unreadable: {}", crate::error_chain(&error))),
            }
        }
        if started.elapsed() >= timeout {
            let waited = started.elapsed();
            return Err(CheckError::NotQuiescent {
                waited,
                held_seats,
                prepared_txns,
                detail: detail.join("; "),
            });
        }
        tokio::time::sleep(QUIESCENCE_POLL).await;
    }
}

/// Totals of held seats and prepared transactions, and per-shard details.
async fn unsettled(shard_urls: &[String]) -> (i64, i64, Vec<String>) {
    let (mut held, mut prepared, mut detail) = (0, 0, Vec::new());
    for (i, url) in shard_urls.iter().enumerate() {
        match snapshot::read_unsettled(url).await {
            Ok(found) if found.held_seats == 0 && found.prepared_txns == 0 => {}
            Ok(found) => {
                held += found.held_seats;
                prepared += found.prepared_txns;
                detail.push(format!(
                    "shard {i}: {} held, {} prepared, e.g. {}",
                    found.held_seats,
                    found.prepared_txns,
                    found.examples.join(", ")
                ));
            }
            Err(error) => detail.push(format!(
                "shard {i}: unreadable: {}",
                crate::error_chain(&error)
            )),
        }
    }
    (held, prepared, detail)
}

/// One flight's seats by state, as the shard database has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlightSummary {
    pub flight_id: String,
    pub shard: usize,
    pub capacity: i64,
    pub booked: i64,
    pub held: i64,
    pub free: i64,
}

impl FlightSummary {
    /// Every seat booked, none held or free.
    pub fn sold_out(&self) -> bool {
        self.booked == self.capacity && self.held == 0 && self.free == 0
    }
}

/// Per-flight capacity and seats booked, held and free, read from the shards.
pub async fn flight_summary(shard_urls: &[String]) -> Result<Vec<FlightSummary>, CheckError> {
    let snapshot = Snapshot::read(shard_urls).await?;
    Ok(summarise_flights(&snapshot))
}

/// [`flight_summary`] of a snapshot already read, sorted by flight id.
pub fn summarise_flights(snapshot: &Snapshot) -> Vec<FlightSummary> {
    let mut summaries: BTreeMap<(&str, usize), FlightSummary> = BTreeMap::new();
    for (shard, shard_snapshot) in snapshot.shards.iter().enumerate() {
        for flight in &shard_snapshot.flights {
            let summary = FlightSummary {
                flight_id: flight.flight_id.clone(),
                shard,
                capacity: flight.capacity,
                booked: 0,
                held: 0,
                free: 0,
            };
            summaries.insert((flight.flight_id.as_str(), shard), summary);
        }
        for seat in &shard_snapshot.seats {
            let Some(summary) = summaries.get_mut(&(seat.flight_id.as_str(), shard)) else {
                continue;
            };
            match seat.state.as_str() {
                "booked" => summary.booked += 1,
                "held" => summary.held += 1,
                _ => summary.free += 1,
            }
        }
    }
    summaries.into_values().collect()
}

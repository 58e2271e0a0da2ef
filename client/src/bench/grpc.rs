//! The variants that book through a real local cluster (one coordinator,
//! three participants, each its own process): (a) 2PC as shipped, (b) saga,
//! (d) naive 2PC. [`ClusterSystem`] starts the cluster and creates flights
//! on it; [`GrpcBooker`] books over gRPC exactly as an itinerary service
//! would, one attempt per booking, no retries.
//!
//! The clients share a few HTTP/2 connections (one per
//! `CLIENTS_PER_CONNECTION` clients, at most `CONNECTIONS_MAX`), as an
//! itinerary service with a small channel pool would.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use booking_proto::v1::coordinator_client::CoordinatorClient;
use booking_proto::v1::{AbortReason, BookReply, BookRequest, LegRequest, Mode, Outcome};
use futures::stream::{self, StreamExt, TryStreamExt};
use tonic::transport::Channel;

use super::driver::{Answer, Booker};
use super::scrape::{self, ClusterSamples};
use super::workload::{Flight, FlightSet, SEAT_LETTERS, SEAT_ROWS};
use super::BenchError;
use crate::client::{code_name, retry_after, BookingClient, ParticipantAdmin};
use crate::cluster::{Backend, Cluster, ClusterSpec, ProcessId};
use crate::throttle::Throttle;

/// Clients per HTTP/2 connection to the coordinator.
pub const CLIENTS_PER_CONNECTION: usize = 32;
/// Most HTTP/2 connections to the coordinator.
pub const CONNECTIONS_MAX: usize = 8;
/// A booking call is cut off after this long (counted DEADLINE_EXCEEDED).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Flights being created at once.
const CREATES_IN_FLIGHT: usize = 64;
/// The participants' switch for the naive variant (`participant serve --batch-max`).
const BATCH_MAX_ENV: &str = "PARTICIPANT_BATCH_MAX";
/// The participants' writer lanes (`participant serve --writers`).
const WRITERS_ENV: &str = "PARTICIPANT_WRITERS";
/// Writer lanes of the naive variant on PostgreSQL: one local commit per
/// message, but not one at a time (a naive participant commits each
/// request on a connection of its own); the shipped default is one lane,
/// which batches instead.
const NAIVE_POSTGRES_WRITERS: &str = "4";

/// How the cluster is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterKind {
    /// As shipped: group commit and batching on.
    Shipped,
    /// Coordinator `group_commit = false` and `batch_calls = false`,
    /// participants `--batch-max 1`.
    Naive,
}

/// A running cluster and the bench's connections to it.
pub struct ClusterSystem {
    pub cluster: Cluster,
    coordinators: Vec<CoordinatorClient<Channel>>,
    admins: Vec<ParticipantAdmin>,
}

impl ClusterSystem {
    /// Starts a 3-shard cluster of `kind` in `data_dir` on `backend`.
    pub async fn start(
        bin_dir: &Path,
        data_dir: &Path,
        backend: Backend,
        kind: ClusterKind,
        extra_settings: &[(&str, &str)],
    ) -> Result<ClusterSystem, BenchError> {
        let on_postgres = matches!(backend, Backend::Postgres(_));
        let mut spec = ClusterSpec::new(bin_dir, data_dir);
        spec.backend = backend;
        spec.env.push(("RUST_LOG".into(), "warn".into()));
        if kind == ClusterKind::Naive {
            spec.coordinator_settings
                .push(("group_commit".into(), "false".into()));
            spec.coordinator_settings
                .push(("batch_calls".into(), "false".into()));
            spec.env.push((BATCH_MAX_ENV.into(), "1".into()));
            if on_postgres {
                spec.env
                    .push((WRITERS_ENV.into(), NAIVE_POSTGRES_WRITERS.into()));
            }
        }
        for (key, value) in extra_settings {
            spec.coordinator_settings
                .push(((*key).into(), (*value).into()));
        }
        let cluster = Cluster::start(spec).await?;
        let mut coordinators = Vec::new();
        for _ in 0..CONNECTIONS_MAX {
            let client = BookingClient::connect(&cluster.coordinator_url())
                .await
                .map_err(|source| BenchError::client("connect to the coordinator", source))?;
            coordinators.push(client.raw());
        }
        let mut admins = Vec::new();
        for shard in 0..cluster.shards() {
            let url = cluster.participant_url(shard);
            let admin = ParticipantAdmin::connect(&url)
                .await
                .map_err(|source| BenchError::client(format!("connect to {url}"), source))?;
            admins.push(admin);
        }
        Ok(ClusterSystem {
            cluster,
            coordinators,
            admins,
        })
    }

    /// Which shard owns a flight, by the cluster's routing.
    pub fn shard_of(&self, flight_id: &str) -> usize {
        self.cluster.shard_of(flight_id)
    }

    /// Creates every flight of `set` on its participant, many at once.
    pub async fn create_flights(&self, set: &FlightSet) -> Result<(), BenchError> {
        stream::iter(set.flights())
            .map(|flight| async move {
                self.admins[flight.shard]
                    .create_flight(&flight.id, SEAT_ROWS, SEAT_LETTERS)
                    .await
                    .map_err(|source| {
                        BenchError::client(format!("create flight {}", flight.id), source)
                    })
            })
            .buffer_unordered(CREATES_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// A booker using as many connections as `clients` need, in `mode`.
    pub fn booker(&self, mode: Mode, clients: usize) -> GrpcBooker {
        let connections = clients
            .div_ceil(CLIENTS_PER_CONNECTION)
            .clamp(1, CONNECTIONS_MAX);
        GrpcBooker {
            clients: self.coordinators[..connections].to_vec(),
            next: AtomicUsize::new(0),
            mode,
            throttle: None,
        }
    }

    /// Operating-system ids of the coordinator and every participant.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(ProcessId::Coordinator)
            .chain((0..self.cluster.shards()).map(ProcessId::Participant))
            .filter_map(|id| self.cluster.pid(id))
            .collect()
    }

    /// One scrape of every process's `/metrics`.
    pub async fn samples(&self) -> Result<ClusterSamples, BenchError> {
        let scrape_of = |id: ProcessId| async move {
            let address = self
                .cluster
                .metrics_address(id)
                .expect("every process of the cluster has a metrics port");
            scrape::scrape(address).await.map_err(BenchError::Scrape)
        };
        let coordinator = scrape_of(ProcessId::Coordinator).await?;
        let mut participants = Vec::new();
        for shard in 0..self.cluster.shards() {
            participants.push(scrape_of(ProcessId::Participant(shard)).await?);
        }
        Ok(ClusterSamples {
            coordinator,
            participants,
        })
    }
}

/// Books over gRPC, spreading calls over its connections.
pub struct GrpcBooker {
    clients: Vec<CoordinatorClient<Channel>>,
    next: AtomicUsize,
    mode: Mode,
    /// The client library's throttle, shared by every booking, as a
    /// [`crate::BookingClient`] has it; None for bare generated stubs.
    throttle: Option<Throttle>,
}

impl GrpcBooker {
    /// The same booker, its bookings going through `throttle`.
    pub fn with_throttle(mut self, throttle: Option<Throttle>) -> GrpcBooker {
        self.throttle = throttle;
        self
    }

    fn request(&self, key: &str, passenger: &str, legs: &[Flight; 2]) -> BookRequest {
        BookRequest {
            idempotency_key: key.to_string(),
            mode: self.mode as i32,
            timeout_ms: 0,
            legs: legs
                .iter()
                .map(|flight| LegRequest {
                    flight_id: flight.id.to_string(),
                    seat_count: 1,
                    seats: Vec::new(),
                    passengers: vec![passenger.to_string()],
                })
                .collect(),
        }
    }
}

/// The answer a reply or a status stands for.
pub fn answer_of(result: Result<BookReply, tonic::Status>) -> Answer {
    match result {
        Ok(reply) if reply.outcome == Outcome::Committed as i32 => Answer::Committed,
        Ok(reply) => {
            let reason = reply.abort.as_ref().map_or(0, |a| a.reason);
            match AbortReason::try_from(reason) {
                Ok(AbortReason::SoldOut) => Answer::SoldOut,
                Ok(other) => Answer::Aborted(other.as_str_name().to_string()),
                Err(_) => Answer::Aborted(format!("REASON_{reason}")),
            }
        }
        Err(status) if status.code() == tonic::Code::ResourceExhausted => Answer::Refused {
            retry_hint: retry_after(&status).is_some(),
        },
        Err(status) => Answer::Failed(code_name(status.code()).to_string()),
    }
}

impl Booker for GrpcBooker {
    async fn book(&self, key: &str, passenger: &str, legs: &[Flight; 2]) -> Answer {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let client = self.clients[index].clone();
        // The call's future is a few kilobytes: boxed, it is made only for
        // bookings sent, and each booking's task stays small when refused.
        let call = move || {
            let mut request = tonic::Request::new(self.request(key, passenger, legs));
            request.set_timeout(CALL_TIMEOUT);
            let mut client = client;
            Box::pin(async move { client.book(request).await })
        };
        let result = match &self.throttle {
            Some(throttle) => match throttle.send(call).await {
                Ok(result) => result,
                Err(_) => return Answer::Throttled,
            },
            None => call().await,
        };
        answer_of(result.map(tonic::Response::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::RETRY_AFTER_KEY;
    use booking_proto::v1::AbortDetail;

    fn aborted(reason: AbortReason) -> BookReply {
        BookReply {
            outcome: Outcome::Aborted as i32,
            abort: Some(AbortDetail {
                reason: reason as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn replies_and_statuses_map_to_answers() {
        let committed = BookReply {
            outcome: Outcome::Committed as i32,
            ..Default::default()
        };
        assert_eq!(answer_of(Ok(committed)), Answer::Committed);
        assert_eq!(
            answer_of(Ok(aborted(AbortReason::SoldOut))),
            Answer::SoldOut
        );
        assert_eq!(
            answer_of(Ok(aborted(AbortReason::Deadline))),
            Answer::Aborted("DEADLINE".into())
        );
        let mut overloaded = tonic::Status::resource_exhausted("busy");
        overloaded
            .metadata_mut()
            .insert(RETRY_AFTER_KEY, "25".parse().expect("digits"));
        assert_eq!(
            answer_of(Err(overloaded)),
            Answer::Refused { retry_hint: true }
        );
        assert_eq!(
            answer_of(Err(tonic::Status::resource_exhausted("busy"))),
            Answer::Refused { retry_hint: false }
        );
        assert_eq!(
            answer_of(Err(tonic::Status::unavailable("down"))),
            Answer::Failed("UNAVAILABLE".into())
        );
    }

    #[test]
    fn requests_book_one_seat_per_leg_for_one_passenger() {
        let booker = GrpcBooker {
            clients: Vec::new(),
            next: AtomicUsize::new(0),
            mode: Mode::Saga,
            throttle: None,
        };
        let flight = |id: &str, shard| Flight {
            id: id.into(),
            shard,
        };
        let request = booker.request("k-1", "P1", &[flight("A1", 0), flight("B2", 2)]);
        booking_proto::validate::book_request(&request).expect("valid");
        assert_eq!(request.mode, Mode::Saga as i32);
        assert!(request
            .legs
            .iter()
            .all(|l| l.seat_count == 1 && l.passengers == ["P1"]));
    }
}

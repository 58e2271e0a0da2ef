//! [`BookingClient`]: the coordinator's gRPC client for itinerary services
//! and operators, and the participants' admin calls (create a flight, read
//! its inventory).
//!
//! This module owns no state beyond a gRPC channel. It sends requests as
//! given: validation is the receiving edge's job (the coordinator refuses a
//! bad request with INVALID_ARGUMENT), so tests can send bad requests too.
//! Every failure is a [`ClientError`]; a gRPC status keeps its code and
//! message so callers can tell "retry later" from "fix the request".

mod leg_spec;

use std::sync::Arc;
use std::time::Duration;

use booking_proto::v1::coordinator_client::CoordinatorClient;
use booking_proto::v1::get_transaction_request::Key;
use booking_proto::v1::participant_client::ParticipantClient;
use booking_proto::v1::{
    BookReply, BookRequest, CreateFlightRequest, FlightInventory, GetFlightRequest, GetRouteReply,
    GetRouteRequest, GetTransactionRequest, ListTxnsReply, ListTxnsRequest,
    RetryTransactionRequest, TransactionStatus,
};
use tonic::transport::{Channel, Endpoint};

pub use leg_spec::LegSpec;

use crate::throttle::{Throttle, ThrottleOptions, ThrottleOptionsError};

/// How long connecting to a service may take before it is called unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub use booking_proto::limits::RETRY_AFTER_KEY;
/// Default time a call may take: above the largest booking deadline
/// (`limits::TIMEOUT_MS_MAX`, 60 s), so a slow booking is answered by the
/// coordinator rather than cut off by the client.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(65);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not a valid URI such as `http://127.0.0.1:7000`.
    #[error("{url:?} is not a service address like http://127.0.0.1:7000: {detail}")]
    InvalidUrl { url: String, detail: String },
    /// No connection could be made. `detail` is the transport error's chain.
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    /// The service (or the transport) answered with a gRPC status.
    #[error("{} ({}): {message}", code_name(*.code), *.code as i32)]
    Status {
        code: tonic::Code,
        message: String,
        /// The `retry-after-ms` hint an overload refusal carries.
        retry_after: Option<Duration>,
    },
    /// Not sent: the coordinator has been refusing bookings for overload,
    /// and this client's [`Throttle`] refused this one too, before sending.
    #[error("RESOURCE_EXHAUSTED (8): not sent: the coordinator is overloaded and this client sends only part of its bookings ({percent:.0}% refused locally); retry after {} ms", .retry_after.as_millis())]
    Throttled { retry_after: Duration, percent: f64 },
    /// A leg written as text (`"BA117:2"`) could not be parsed.
    #[error("leg {spec:?}: {problem}")]
    BadLegSpec { spec: String, problem: String },
}

impl ClientError {
    /// The gRPC code, when the failure was a status.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            ClientError::Throttled { .. } => Some(tonic::Code::ResourceExhausted),
            _ => None,
        }
    }

    /// How long to wait before retrying, when the refusal said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            ClientError::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// True for an overload refusal (by the coordinator, with its retry
    /// hint, or by this client's throttle): the booking was not attempted.
    pub fn is_overload(&self) -> bool {
        match self {
            ClientError::Status {
                code, retry_after, ..
            } => *code == tonic::Code::ResourceExhausted && retry_after.is_some(),
            ClientError::Throttled { .. } => true,
            _ => false,
        }
    }

    /// True when the same request may succeed later: the service was
    /// unreachable, overloaded or too slow. Retry with the same idempotency
    /// key, so a booking that did happen is answered, not repeated.
    pub fn is_retryable(&self) -> bool {
        use tonic::Code;
        match self {
            ClientError::Connect { .. } | ClientError::Throttled { .. } => true,
            ClientError::Status { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::DeadlineExceeded
                    | Code::Cancelled
            ),
            _ => false,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Status {
            code: status.code(),
            message: status.message().to_owned(),
            retry_after: retry_after(&status),
        }
    }
}

/// The `retry-after-ms` hint of a status, when it carries a valid one.
pub fn retry_after(status: &tonic::Status) -> Option<Duration> {
    let text = status.metadata().get(RETRY_AFTER_KEY)?.to_str().ok()?;
    text.parse().ok().map(Duration::from_millis)
}

/// The canonical upper-case name of a gRPC code, as grpcurl prints it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The endpoint for `url`, with our connection settings.
fn endpoint(url: &str) -> Result<Endpoint, ClientError> {
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| ClientError::InvalidUrl {
        url: url.to_owned(),
        detail: crate::error_chain(&e),
    })?;
    Ok(endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true))
}

/// Opens a channel to `url`, failing fast when nothing answers.
async fn connect_channel(url: &str) -> Result<Channel, ClientError> {
    endpoint(url)?
        .connect()
        .await
        .map_err(|e| ClientError::Connect {
            url: url.to_owned(),
            detail: crate::error_chain(&e),
        })
}

/// The throttle a new [`BookingClient`] starts with.
fn default_throttle() -> Arc<Throttle> {
    Arc::new(Throttle::new(ThrottleOptions::default()).expect("the default options are valid"))
}

/// Wraps a message in a request that gives up after `timeout`.
fn request_with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// A client of the coordinator. Cheap to clone: clones share one HTTP/2
/// connection, on which calls run concurrently, and one [`Throttle`].
///
/// Bookings go through adaptive client-side throttling ([`crate::throttle`]):
/// while the coordinator refuses bookings for overload, the client sends
/// only about 1.1 times what it admits and refuses the rest itself, at once,
/// with [`ClientError::Throttled`] (RESOURCE_EXHAUSTED and a retry hint).
/// It never refuses while the coordinator admits everything.
#[derive(Clone, Debug)]
pub struct BookingClient {
    url: String,
    coordinator: CoordinatorClient<Channel>,
    request_timeout: Duration,
    throttle: Option<Arc<Throttle>>,
}

impl BookingClient {
    /// Connects to the coordinator at `url` (e.g. `http://127.0.0.1:7000`).
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let channel = connect_channel(url).await?;
        Ok(BookingClient {
            url: url.to_owned(),
            coordinator: CoordinatorClient::new(channel),
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            throttle: Some(default_throttle()),
        })
    }

    /// A client that connects on first use (and reconnects after the
    /// coordinator restarts); only the URL is checked now. Needs a Tokio runtime.
    pub fn connect_lazy(url: &str) -> Result<Self, ClientError> {
        let channel = endpoint(url)?.connect_lazy();
        Ok(BookingClient {
            url: url.to_owned(),
            coordinator: CoordinatorClient::new(channel),
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            throttle: Some(default_throttle()),
        })
    }

    /// The same client with calls cut off after `timeout` (a gRPC deadline:
    /// a cut-off call fails with DEADLINE_EXCEEDED, and its outcome is unknown).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The same client with its own throttle of `options`, or none: every
    /// booking sent, whatever the coordinator has been refusing.
    pub fn with_throttle(
        mut self,
        options: Option<ThrottleOptions>,
    ) -> Result<Self, ThrottleOptionsError> {
        self.throttle = options.map(Throttle::new).transpose()?.map(Arc::new);
        Ok(self)
    }

    /// The throttle bookings go through, if any.
    pub fn throttle(&self) -> Option<&Throttle> {
        self.throttle.as_deref()
    }

    /// The coordinator's address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The generated gRPC client, for calls this type does not wrap.
    pub fn raw(&self) -> CoordinatorClient<Channel> {
        self.coordinator.clone()
    }

    /// Books an itinerary. Sold-out and other business outcomes are replies
    /// (`outcome == ABORTED`); bad requests and overload are errors.
    pub async fn book(&self, request: BookRequest) -> Result<BookReply, ClientError> {
        let request = request_with_timeout(request, self.request_timeout);
        let mut coordinator = self.coordinator.clone();
        let call = move || async move { coordinator.book(request).await };
        let result = match &self.throttle {
            Some(throttle) => {
                throttle
                    .send(call)
                    .await
                    .map_err(|refusal| ClientError::Throttled {
                        retry_after: refusal.retry_after,
                        percent: refusal.share * 100.0,
                    })?
            }
            None => call().await,
        };
        Ok(result?.into_inner())
    }

    /// The coordinator's record of transaction `txid`.
    pub async fn status_by_txid(&self, txid: &str) -> Result<TransactionStatus, ClientError> {
        self.status(Key::Txid(txid.to_owned())).await
    }

    /// The coordinator's record of the booking made with `idempotency_key`.
    pub async fn status_by_key(
        &self,
        idempotency_key: &str,
    ) -> Result<TransactionStatus, ClientError> {
        self.status(Key::IdempotencyKey(idempotency_key.to_owned()))
            .await
    }

    async fn status(&self, key: Key) -> Result<TransactionStatus, ClientError> {
        let request = request_with_timeout(
            GetTransactionRequest { key: Some(key) },
            self.request_timeout,
        );
        Ok(self
            .coordinator
            .clone()
            .get_transaction(request)
            .await?
            .into_inner())
    }

    /// Operator action: asks the coordinator to re-drive transaction `txid`
    /// now (its phase 2, one-phase resolution or compensation) instead of at
    /// its next backoff. Never changes a decision. NOT_FOUND for an unknown
    /// txid, FAILED_PRECONDITION for one that has ended.
    pub async fn retry_transaction(&self, txid: &str) -> Result<TransactionStatus, ClientError> {
        let message = RetryTransactionRequest {
            txid: txid.to_owned(),
        };
        let request = request_with_timeout(message, self.request_timeout);
        Ok(self
            .coordinator
            .clone()
            .retry_transaction(request)
            .await?
            .into_inner())
    }

    /// Which shard owns `flight_id`, and the address of its participant.
    pub async fn route(&self, flight_id: &str) -> Result<GetRouteReply, ClientError> {
        let message = GetRouteRequest {
            flight_id: flight_id.to_owned(),
        };
        let request = request_with_timeout(message, self.request_timeout);
        Ok(self
            .coordinator
            .clone()
            .get_route(request)
            .await?
            .into_inner())
    }

    /// Creates a flight on the participant that owns it, found by [`route`](Self::route).
    pub async fn create_flight_routed(
        &self,
        flight_id: &str,
        rows: u32,
        letters: &str,
    ) -> Result<FlightInventory, ClientError> {
        let route = self.route(flight_id).await?;
        create_flight(&route.address, flight_id, rows, letters).await
    }

    /// Reads a flight's inventory from the participant that owns it.
    pub async fn get_flight_routed(
        &self,
        flight_id: &str,
        include_seats: bool,
    ) -> Result<FlightInventory, ClientError> {
        let route = self.route(flight_id).await?;
        get_flight(&route.address, flight_id, include_seats).await
    }
}

/// Admin calls on one participant.
#[derive(Clone, Debug)]
pub struct ParticipantAdmin {
    participant: ParticipantClient<Channel>,
}

impl ParticipantAdmin {
    /// Connects to the participant at `url`.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let channel = connect_channel(url).await?;
        Ok(ParticipantAdmin {
            participant: ParticipantClient::new(channel),
        })
    }

    /// The generated gRPC client, for protocol calls in tests.
    pub fn raw(&self) -> ParticipantClient<Channel> {
        self.participant.clone()
    }

    /// Creates `flight_id` with seats `1A..{rows}{last letter}`.
    pub async fn create_flight(
        &self,
        flight_id: &str,
        rows: u32,
        letters: &str,
    ) -> Result<FlightInventory, ClientError> {
        let message = CreateFlightRequest {
            flight_id: flight_id.to_owned(),
            rows,
            letters: letters.to_owned(),
        };
        let request = request_with_timeout(message, REQUEST_TIMEOUT_DEFAULT);
        Ok(self
            .participant
            .clone()
            .create_flight(request)
            .await?
            .into_inner())
    }

    /// Reads a flight's inventory, with every seat when `include_seats`.
    pub async fn get_flight(
        &self,
        flight_id: &str,
        include_seats: bool,
    ) -> Result<FlightInventory, ClientError> {
        let message = GetFlightRequest {
            flight_id: flight_id.to_owned(),
            include_seats,
        };
        let request = request_with_timeout(message, REQUEST_TIMEOUT_DEFAULT);
        Ok(self
            .participant
            .clone()
            .get_flight(request)
            .await?
            .into_inner())
    }

    /// Lists the shard's transactions, only the prepared (in-doubt) ones when asked.
    pub async fn list_txns(
        &self,
        prepared_only: bool,
        limit: u32,
    ) -> Result<ListTxnsReply, ClientError> {
        let request = request_with_timeout(
            ListTxnsRequest {
                prepared_only,
                limit,
                txid: String::new(),
            },
            REQUEST_TIMEOUT_DEFAULT,
        );
        Ok(self
            .participant
            .clone()
            .list_txns(request)
            .await?
            .into_inner())
    }
}

/// Creates a flight on the participant at `participant_url`.
pub async fn create_flight(
    participant_url: &str,
    flight_id: &str,
    rows: u32,
    letters: &str,
) -> Result<FlightInventory, ClientError> {
    ParticipantAdmin::connect(participant_url)
        .await?
        .create_flight(flight_id, rows, letters)
        .await
}

/// Reads a flight's inventory from the participant at `participant_url`.
pub async fn get_flight(
    participant_url: &str,
    flight_id: &str,
    include_seats: bool,
) -> Result<FlightInventory, ClientError> {
    ParticipantAdmin::connect(participant_url)
        .await?
        .get_flight(flight_id, include_seats)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throttle::Sent;

    #[test]
    fn status_errors_keep_code_and_message() {
        let error = ClientError::from(tonic::Status::not_found("flight ZZ9 does not exist"));
        assert_eq!(error.code(), Some(tonic::Code::NotFound));
        assert_eq!(
            error.to_string(),
            "NOT_FOUND (5): flight ZZ9 does not exist"
        );
        assert!(!error.is_retryable());
        assert!(ClientError::from(tonic::Status::resource_exhausted("busy")).is_retryable());
    }

    #[test]
    fn an_overload_refusal_keeps_its_retry_hint() {
        let mut status = tonic::Status::resource_exhausted("coordinator overloaded");
        status
            .metadata_mut()
            .insert(RETRY_AFTER_KEY, "40".parse().expect("digits"));
        assert_eq!(
            Sent::of::<()>(&Err(status.clone())),
            Sent::Refused {
                retry_after: Some(Duration::from_millis(40))
            }
        );
        let error = ClientError::from(status);
        assert!(error.is_overload() && error.is_retryable());
        assert_eq!(error.retry_after(), Some(Duration::from_millis(40)));
        // Too large a message is RESOURCE_EXHAUSTED too, but not overload.
        let too_large = tonic::Status::resource_exhausted("request is 99999 bytes");
        assert_eq!(Sent::of::<()>(&Err(too_large.clone())), Sent::Accepted);
        assert!(!ClientError::from(too_large).is_overload());
        assert_eq!(
            Sent::of::<()>(&Err(tonic::Status::unavailable("down"))),
            Sent::Accepted
        );
        let throttled = ClientError::Throttled {
            retry_after: Duration::from_millis(25),
            percent: 80.0,
        };
        assert_eq!(throttled.code(), Some(tonic::Code::ResourceExhausted));
        assert!(throttled.is_overload() && throttled.is_retryable());
        assert_eq!(
            throttled.to_string(),
            "RESOURCE_EXHAUSTED (8): not sent: the coordinator is overloaded and this client sends only part of its bookings (80% refused locally); retry after 25 ms"
        );
    }

    #[tokio::test]
    async fn a_bad_url_is_a_typed_error() {
        let error = BookingClient::connect("not a url")
            .await
            .expect_err("the url has a space");
        assert!(matches!(error, ClientError::InvalidUrl { .. }), "{error}");
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let port = {
            let listener =
                std::net::TcpListener::bind("127.0.0.1:0").expect("binding port 0 always works");
            listener
                .local_addr()
                .expect("a bound socket has an address")
                .port()
        };
        let error = BookingClient::connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect_err("port is closed");
        assert!(matches!(error, ClientError::Connect { .. }), "{error}");
        assert!(error.is_retryable());
    }
}

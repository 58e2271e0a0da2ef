//! [`Oracle`]: what clients were told. Every booking attempt's final answer
//! is recorded here, so the checker can hold the shards to it (invariant 3,
//! durability): a COMMITTED reply must be booked in full, an ABORTED one must
//! leave nothing. An attempt without a reply (timeout, transport error,
//! overload) is recorded as unknown: it may or may not have happened, and is
//! never assumed absent.

use std::sync::{Mutex, MutexGuard};

use booking_proto::v1::{BookReply, BookRequest, Outcome};

use crate::client::ClientError;

/// The final answer a client got for one booking attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum OracleOutcome {
    /// The coordinator replied COMMITTED: this booking must exist forever.
    Committed(BookReply),
    /// The coordinator replied ABORTED: nothing of it may remain.
    Aborted(BookReply),
    /// No definitive reply: the booking may or may not exist.
    Unknown {
        code: Option<tonic::Code>,
        error: String,
    },
}

/// One recorded attempt: the request as sent and its final answer.
#[derive(Clone, Debug, PartialEq)]
pub struct OracleEntry {
    pub request: BookRequest,
    pub outcome: OracleOutcome,
}

/// How many attempts ended each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OracleCounts {
    pub committed: u64,
    pub aborted: u64,
    pub unknown: u64,
}

/// The record of every booking attempt's answer. Share it with `Arc`; every
/// method takes `&self`.
#[derive(Debug, Default)]
pub struct Oracle {
    entries: Mutex<Vec<OracleEntry>>,
}

impl Oracle {
    pub fn new() -> Self {
        Oracle::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<OracleEntry>> {
        // A panic while pushing cannot leave the vector half-written, so a
        // poisoned lock still guards a valid list.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the result of `BookingClient::book(request)`.
    pub fn record(&self, request: &BookRequest, result: &Result<BookReply, ClientError>) {
        match result {
            Ok(reply) => self.record_reply(request, reply.clone()),
            Err(error) => self.record_unknown(request, error.code(), crate::error_chain(error)),
        }
    }

    /// Records a reply; one without an outcome counts as unknown.
    pub fn record_reply(&self, request: &BookRequest, reply: BookReply) {
        let outcome = match Outcome::try_from(reply.outcome) {
            Ok(Outcome::Committed) => OracleOutcome::Committed(reply),
            Ok(Outcome::Aborted) => OracleOutcome::Aborted(reply),
            _ => OracleOutcome::Unknown {
                code: None,
                error: format!(
                    "reply for txid {} has no outcome ({})",
                    reply.txid, reply.outcome
                ),
            },
        };
        self.push(request, outcome);
    }

    /// Records an attempt that got no definitive answer.
    pub fn record_unknown(&self, request: &BookRequest, code: Option<tonic::Code>, error: String) {
        self.push(request, OracleOutcome::Unknown { code, error });
    }

    fn push(&self, request: &BookRequest, outcome: OracleOutcome) {
        self.lock().push(OracleEntry {
            request: request.clone(),
            outcome,
        });
    }

    /// Appends entries recorded elsewhere (e.g. one round's oracle into the
    /// whole run's), keeping their order.
    pub fn extend(&self, entries: impl IntoIterator<Item = OracleEntry>) {
        self.lock().extend(entries);
    }

    /// A copy of every entry, in the order recorded.
    pub fn entries(&self) -> Vec<OracleEntry> {
        self.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn counts(&self) -> OracleCounts {
        let mut counts = OracleCounts::default();
        for entry in self.lock().iter() {
            match entry.outcome {
                OracleOutcome::Committed(_) => counts.committed += 1,
                OracleOutcome::Aborted(_) => counts.aborted += 1,
                OracleOutcome::Unknown { .. } => counts.unknown += 1,
            }
        }
        counts
    }
}

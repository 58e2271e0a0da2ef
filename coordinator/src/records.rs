//! Builds the decision-log records the coordinator writes, and the request
//! fingerprint that ties an idempotency key to one request.

use booking_proto::log_v1::{LegSummary, LogRecord, RecordKind};
use booking_proto::v1::{BookReply, BookRequest, Mode};
use prost::Message;
use uuid::Uuid;

use crate::registry::now_ms;

/// What every record of one transaction repeats, so that each record can be
/// understood on its own (a COMMIT without its BEGIN is still redriven).
#[derive(Debug, Clone)]
pub struct TxnHeader {
    pub txid: Uuid,
    pub key: String,
    pub fingerprint: u64,
    pub mode: Mode,
    pub one_phase: bool,
    /// Shard names, sorted.
    pub shards: Vec<String>,
    pub legs: Vec<LegSummary>,
}

impl TxnHeader {
    fn record(&self, kind: RecordKind) -> LogRecord {
        LogRecord {
            format_version: crate::log::FORMAT_VERSION,
            kind: kind as i32,
            txid: self.txid.as_bytes().to_vec(),
            at_unix_ms: now_ms(),
            mode: self.mode as i32,
            one_phase: self.one_phase,
            shards: self.shards.clone(),
            idempotency_key: self.key.clone(),
            request_fingerprint: self.fingerprint,
            legs: self.legs.clone(),
            reply: None,
        }
    }

    pub fn begin(&self) -> LogRecord {
        let kind = if self.mode == Mode::Saga {
            RecordKind::SagaBegin
        } else {
            RecordKind::Begin
        };
        self.record(kind)
    }

    /// COMMIT or ABORT, carrying the reply the client gets.
    pub fn decision(&self, reply: &BookReply) -> LogRecord {
        let kind = if reply.outcome == booking_proto::v1::Outcome::Committed as i32 {
            RecordKind::Commit
        } else {
            RecordKind::Abort
        };
        LogRecord {
            reply: Some(reply.clone()),
            ..self.record(kind)
        }
    }

    /// END: every shard acknowledged. Carries only the txid and shards.
    pub fn end(&self) -> LogRecord {
        LogRecord {
            legs: Vec::new(),
            idempotency_key: String::new(),
            ..self.record(RecordKind::End)
        }
    }

    /// Rebuilds the header from any record of the transaction.
    pub fn from_record(txid: Uuid, record: &LogRecord) -> TxnHeader {
        TxnHeader {
            txid,
            key: record.idempotency_key.clone(),
            fingerprint: record.request_fingerprint,
            mode: Mode::try_from(record.mode).unwrap_or(Mode::TwoPhase),
            one_phase: record.one_phase,
            shards: record.shards.clone(),
            legs: record.legs.clone(),
        }
    }
}

/// A stable fingerprint of what a request asks for: everything but the
/// deadline, which is transport, not intent. FNV-1a 64 over the protobuf
/// encoding (deterministic for a given message and schema version).
pub fn fingerprint(request: &BookRequest) -> u64 {
    let intent = BookRequest {
        timeout_ms: 0,
        ..request.clone()
    };
    booking_proto::routing::flight_hash_bytes(&intent.encode_to_vec())
}

//! The coordinator's in-memory view of every transaction it knows: by txid
//! (for `GetDecision` and `GetTransaction`) and by idempotency key (for safe
//! retries). Rebuilt from the decision log at start; nothing here is durable
//! by itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use booking_proto::log_v1::LegSummary;
use booking_proto::v1::{
    BookReply, Decision, LegRequest, Outcome, TransactionState, TransactionStatus,
};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::records::TxnHeader;
use crate::retention::SegmentLedger;

/// Where a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    InProgress,
    Committed,
    Aborted,
}

/// Everything known about one transaction.
#[derive(Debug)]
pub struct TxnEntry {
    pub header: TxnHeader,
    pub phase: Phase,
    /// Invariant: `reply.is_some()` iff `phase != InProgress`.
    pub reply: Option<BookReply>,
    pub ended: bool,
    pub begun_at_ms: u64,
    pub decided_at_ms: u64,
    pub ended_at_ms: u64,
    /// The log segment counted for this transaction by retention.
    first_segment: u64,
    /// Wakes the retry loops (phase 2, resolve, compensation) of this
    /// transaction at once: the operator's `RetryTransaction`.
    retry: Arc<Notify>,
    done: watch::Sender<Option<BookReply>>,
}

/// A new transaction's identity, before it is registered.
pub struct NewTxn {
    pub header: TxnHeader,
    pub begun_at_ms: u64,
    /// The segment its first record is in (restored) or will be in (new:
    /// the log's current segment, read before the first append).
    pub first_segment: u64,
}

/// What `register` found.
pub enum Registered {
    /// The key is new; the transaction is registered as in progress.
    New,
    /// The key was seen before with the same request: wait for its reply.
    Retry {
        txid: Uuid,
        reply: watch::Receiver<Option<BookReply>>,
    },
    /// The key was seen before with a different request.
    KeyReused { txid: Uuid },
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    txns: HashMap<Uuid, TxnEntry>,
    keys: HashMap<String, Uuid>,
    ledger: SegmentLedger,
}

/// What `retry` found.
pub enum RetryOutcome {
    /// The transaction's retry loops were woken; its status now.
    Woken(TransactionStatus),
    /// Every shard has acknowledged; nothing to retry.
    Ended(TransactionStatus),
    Unknown,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock is a bug that already crashed a
        // task; the map itself is still consistent (updates are single calls).
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `txn` under its key unless the key is already known.
    pub fn register(&self, txn: NewTxn) -> Registered {
        let mut inner = self.lock();
        if let Some(txid) = inner.keys.get(&txn.header.key).copied() {
            let existing = &inner.txns[&txid];
            if existing.header.fingerprint != txn.header.fingerprint {
                return Registered::KeyReused { txid };
            }
            return Registered::Retry {
                txid,
                reply: existing.done.subscribe(),
            };
        }
        inner.keys.insert(txn.header.key.clone(), txn.header.txid);
        inner.ledger.opened(txn.first_segment);
        inner.txns.insert(txn.header.txid, TxnEntry::from_new(txn));
        Registered::New
    }

    /// Registers a transaction found in the log at start, whatever its phase.
    /// `ended_at_ms` is Some for a transaction whose END is in the log.
    pub fn restore(
        &self,
        txn: NewTxn,
        reply: Option<BookReply>,
        decided_at_ms: u64,
        ended_at_ms: Option<u64>,
    ) {
        let mut inner = self.lock();
        let txid = txn.header.txid;
        if !txn.header.key.is_empty() {
            inner.keys.insert(txn.header.key.clone(), txid);
        }
        match ended_at_ms {
            Some(at) => inner.ledger.restored_end(txn.first_segment, txid, at),
            None => inner.ledger.opened(txn.first_segment),
        }
        let mut entry = TxnEntry::from_new(txn);
        if let Some(reply) = reply {
            entry.set_reply(reply, decided_at_ms);
        }
        if let Some(at) = ended_at_ms {
            entry.ended = true;
            entry.ended_at_ms = at;
        }
        inner.txns.insert(txid, entry);
    }

    /// Records the decision and wakes every caller waiting on the key.
    /// Call only once the decision is as durable as its reply requires.
    pub fn decide(&self, txid: Uuid, reply: BookReply) {
        let mut inner = self.lock();
        let entry = inner
            .txns
            .get_mut(&txid)
            .expect("a decided transaction was registered");
        assert!(
            entry
                .reply
                .as_ref()
                .is_none_or(|r| r.outcome == reply.outcome),
            "transaction {txid} decided twice, differently"
        );
        entry.set_reply(reply, now_ms());
    }

    /// END is in the log: every shard acknowledged.
    pub fn end(&self, txid: Uuid) {
        let mut inner = self.lock();
        let Inner { txns, ledger, .. } = &mut *inner;
        let entry = txns
            .get_mut(&txid)
            .expect("an ended transaction was registered");
        assert!(!entry.ended, "transaction {txid} ended twice");
        entry.ended = true;
        entry.ended_at_ms = now_ms();
        ledger.ended(entry.first_segment, txid, entry.ended_at_ms);
    }

    /// Retention: the highest log segment that may be deleted now (see
    /// `SegmentLedger::removable`).
    pub fn removable_segments(&self, current: u64, cutoff_ms: u64) -> Option<u64> {
        self.lock().ledger.removable(current, cutoff_ms)
    }

    /// Retention deleted the segments up to `through`: forgets the
    /// transactions first seen in them (all ended). Returns how many.
    pub fn forget_through(&self, through: u64) -> usize {
        let mut inner = self.lock();
        let forgotten = inner.ledger.remove_through(through);
        for txid in &forgotten {
            let entry = inner
                .txns
                .remove(txid)
                .expect("the ledger counts only registered transactions");
            assert!(entry.ended, "retention forgot {txid}, which has not ended");
            if inner.keys.get(&entry.header.key) == Some(txid) {
                inner.keys.remove(&entry.header.key);
            }
        }
        forgotten.len()
    }

    /// The operator's re-drive: wakes the transaction's retry loops now.
    pub fn retry(&self, txid: Uuid) -> RetryOutcome {
        let inner = self.lock();
        let Some(entry) = inner.txns.get(&txid) else {
            return RetryOutcome::Unknown;
        };
        if entry.ended {
            return RetryOutcome::Ended(entry.status());
        }
        entry.retry.notify_waiters();
        RetryOutcome::Woken(entry.status())
    }

    /// The handle a retry loop of `txid` waits on besides its backoff.
    pub fn retry_signal(&self, txid: Uuid) -> Arc<Notify> {
        self.lock()
            .txns
            .get(&txid)
            .map(|e| Arc::clone(&e.retry))
            .expect("a transaction being retried is registered")
    }

    /// Transactions known, and those not yet ended (for metrics).
    pub fn counts(&self) -> RegistryCounts {
        let inner = self.lock();
        let mut counts = RegistryCounts {
            known: inner.txns.len(),
            ..Default::default()
        };
        for entry in inner.txns.values() {
            match (entry.phase, entry.ended) {
                (Phase::InProgress, _) => counts.undecided += 1,
                (_, false) => counts.in_doubt += 1,
                (_, true) => {}
            }
        }
        counts
    }

    /// The answer to a participant's `GetDecision`. A txid this coordinator
    /// does not know was never decided COMMIT (a COMMIT record would have put
    /// it here at start): presumed abort.
    pub fn decision(&self, txid: Uuid) -> Decision {
        match self.lock().txns.get(&txid).map(|e| e.phase) {
            Some(Phase::InProgress) => Decision::InProgress,
            Some(Phase::Committed) => Decision::Commit,
            Some(Phase::Aborted) | None => Decision::Abort,
        }
    }

    /// A receiver that sees the transaction's reply once decided.
    pub fn subscribe(&self, txid: Uuid) -> Option<watch::Receiver<Option<BookReply>>> {
        self.lock().txns.get(&txid).map(|e| e.done.subscribe())
    }

    pub fn status(&self, txid: Uuid) -> Option<TransactionStatus> {
        self.lock().txns.get(&txid).map(TxnEntry::status)
    }

    pub fn status_by_key(&self, key: &str) -> Option<TransactionStatus> {
        let inner = self.lock();
        inner
            .keys
            .get(key)
            .and_then(|txid| inner.txns.get(txid))
            .map(TxnEntry::status)
    }

    /// Transactions still in progress (for tests and shutdown).
    pub fn in_progress(&self) -> usize {
        self.lock()
            .txns
            .values()
            .filter(|e| e.phase == Phase::InProgress)
            .count()
    }
}

/// A census of the registry.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RegistryCounts {
    /// Every transaction remembered (until retention forgets it).
    pub known: usize,
    /// No decision yet.
    pub undecided: usize,
    /// Decided, and some shard has not acknowledged yet.
    pub in_doubt: usize,
}

impl TxnEntry {
    fn from_new(txn: NewTxn) -> TxnEntry {
        let (done, _) = watch::channel(None);
        TxnEntry {
            header: txn.header,
            phase: Phase::InProgress,
            reply: None,
            ended: false,
            begun_at_ms: txn.begun_at_ms,
            decided_at_ms: 0,
            ended_at_ms: 0,
            first_segment: txn.first_segment,
            retry: Arc::new(Notify::new()),
            done,
        }
    }

    fn set_reply(&mut self, reply: BookReply, at_ms: u64) {
        self.phase = if reply.outcome == Outcome::Committed as i32 {
            Phase::Committed
        } else {
            Phase::Aborted
        };
        self.decided_at_ms = at_ms;
        self.reply = Some(reply.clone());
        self.done.send_replace(Some(reply));
    }

    fn status(&self) -> TransactionStatus {
        let state = match self.phase {
            Phase::InProgress => TransactionState::TxnInProgress,
            Phase::Committed => TransactionState::TxnCommitted,
            Phase::Aborted => TransactionState::TxnAborted,
        };
        let header = &self.header;
        TransactionStatus {
            txid: header.txid.to_string(),
            idempotency_key: header.key.clone(),
            mode: header.mode as i32,
            state: state as i32,
            ended: self.ended,
            shards: header.shards.clone(),
            legs: header.legs.iter().map(leg_request).collect(),
            reply: self.reply.clone(),
            begun_at_unix_ms: self.begun_at_ms,
            decided_at_unix_ms: self.decided_at_ms,
            ended_at_unix_ms: self.ended_at_ms,
            one_phase: header.one_phase,
        }
    }
}

fn leg_request(leg: &LegSummary) -> LegRequest {
    LegRequest {
        flight_id: leg.flight_id.clone(),
        seat_count: leg.seat_count,
        seats: leg.seats.clone(),
        passengers: leg.passengers.clone(),
    }
}

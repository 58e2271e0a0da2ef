//! Retention: the decision log stays bounded. A closed segment is deleted
//! once every transaction whose first record is in it (or in an older
//! segment) has ended, and the last of them ended more than the retention
//! window ago. Only a prefix of the log is ever deleted, oldest first.
//!
//! # Why this is safe
//! - A transaction that has ended (END written after every shard
//!   acknowledged) needs nothing from the log: no shard will ask
//!   `GetDecision` about it again, and recovery has nothing to finish. Its
//!   records may go; a later segment may still hold its END alone, which
//!   recovery reads as "ended, forgotten" (`recovery.rs`).
//! - A transaction is counted as open in the segment that is current when it
//!   is registered, *before* its first record is appended, so its records
//!   land in that segment or a later one: no segment holding a record of an
//!   open transaction is in the deleted prefix. The prefix stops at the
//!   oldest segment holding an open transaction's first record.
//! - The segment being written is never deleted (`DecisionLog` asserts it).
//!
//! # What it costs the client
//! A transaction deleted from the log is also forgotten by the registry, at
//! the same moment: `GetTransaction` answers NOT_FOUND, and the same
//! idempotency key books anew. Idempotency keys are therefore honoured for at
//! least `log_retention_secs` after the transaction ended (longer, since
//! deletion goes by whole segments).
//!
//! A transaction that never ends (a shard gone for good keeps its phase 2
//! retrying) holds back every segment from its first one on;
//! `coordinator inspect stats` names the oldest open transaction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};
use uuid::Uuid;

use crate::core::Core;
use crate::registry::now_ms;

/// The open and ended transactions counted by the segment of their first
/// record. Kept inside the registry, under its lock.
#[derive(Debug, Default)]
pub struct SegmentLedger {
    segments: BTreeMap<u64, SegmentTally>,
    /// Every segment up to this one is already deleted (0: none).
    removed_through: u64,
}

#[derive(Debug, Default)]
struct SegmentTally {
    /// Transactions first seen in this segment that have not ended.
    open: usize,
    /// Transactions first seen here that have ended: forgotten when the
    /// segment is deleted.
    ended: Vec<Uuid>,
    /// When the last of `ended` ended (unix ms).
    last_end_ms: u64,
}

impl SegmentLedger {
    /// A transaction whose first record is (or will be) in `segment`.
    pub fn opened(&mut self, segment: u64) {
        self.segments.entry(segment).or_default().open += 1;
    }

    /// The transaction counted in `segment` by `opened` has ended.
    pub fn ended(&mut self, segment: u64, txid: Uuid, at_ms: u64) {
        let tally = self
            .segments
            .get_mut(&segment)
            .expect("a transaction ends in the segment where it was opened");
        assert!(tally.open > 0, "segment {segment} ended more transactions than it opened");
        tally.open -= 1;
        self.restored_end(segment, txid, at_ms);
    }

    /// A transaction found ended in the log at start.
    pub fn restored_end(&mut self, segment: u64, txid: Uuid, at_ms: u64) {
        let tally = self.segments.entry(segment).or_default();
        tally.ended.push(txid);
        tally.last_end_ms = tally.last_end_ms.max(at_ms);
    }

    /// The highest segment `seq` such that every segment up to it may be
    /// deleted: all below `current` (the segment being written), none holding
    /// an open transaction's first record, and every transaction in them
    /// ended at or before `cutoff_ms`. None when the oldest segment must stay.
    pub fn removable(&self, current: u64, cutoff_ms: u64) -> Option<u64> {
        let mut through = current.checked_sub(1).filter(|seq| *seq > 0)?;
        for (seq, tally) in self.segments.range(..current) {
            if tally.open > 0 || tally.last_end_ms > cutoff_ms {
                through = seq.checked_sub(1)?;
                break;
            }
        }
        (through > self.removed_through).then_some(through)
    }

    /// Forgets the segments up to `through` (deleted from disk); returns the
    /// ended transactions first seen in them, for the registry to forget.
    pub fn remove_through(&mut self, through: u64) -> Vec<Uuid> {
        assert!(through > self.removed_through, "segments up to {through} were already removed");
        self.removed_through = through;
        let kept = self.segments.split_off(&(through + 1));
        let removed = std::mem::replace(&mut self.segments, kept);
        removed
            .into_values()
            .flat_map(|tally| {
                assert_eq!(tally.open, 0, "a segment with an open transaction was removed");
                tally.ended
            })
            .collect()
    }

    /// Open transactions counted in every segment.
    pub fn open(&self) -> usize {
        self.segments.values().map(|t| t.open).sum()
    }
}

/// Runs until the process stops: every `period`, deletes the segments the
/// ledger says are removable and forgets their transactions.
pub fn spawn(core: Arc<Core>, retention: Duration, period: Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if core.fatal().is_cancelled() {
                return;
            }
            if let Err(error) = sweep(&core, retention).await {
                // Deleting is housekeeping; the log itself is still sound
                // (a half-done sweep leaves a shorter, valid prefix).
                error!(%error, "decision log retention failed; will retry");
            }
        }
    });
}

/// One pass: deletes what is removable now.
pub async fn sweep(core: &Arc<Core>, retention: Duration) -> anyhow::Result<()> {
    let current = core.log().current_segment();
    let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
    let Some(through) = core.registry.removable_segments(current, cutoff) else {
        return Ok(());
    };
    let log = core.log().clone();
    let (segments, bytes) =
        tokio::task::spawn_blocking(move || log.remove_segments_through(through)).await??;
    // Forget only after the files are gone: until then a restart would
    // restore these transactions anyway.
    crate::metrics::segments_removed(segments);
    let forgotten = core.registry.forget_through(through);
    info!(through, segments, bytes, forgotten, "decision log retention: removed ended segments");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txid(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn nothing_goes_while_only_one_segment_exists() {
        let mut ledger = SegmentLedger::default();
        ledger.opened(1);
        ledger.ended(1, txid(1), 10);
        assert_eq!(ledger.removable(1, 100), None);
    }

    #[test]
    fn the_prefix_stops_at_the_oldest_open_transaction() {
        let mut ledger = SegmentLedger::default();
        for seg in 1..=4 {
            ledger.opened(seg);
        }
        ledger.ended(1, txid(1), 10);
        ledger.ended(2, txid(2), 10);
        ledger.ended(4, txid(4), 10);
        // Segment 3 holds an open transaction: 1 and 2 may go, not 4.
        assert_eq!(ledger.removable(5, 100), Some(2));
        assert_eq!(ledger.remove_through(2), vec![txid(1), txid(2)]);
        assert_eq!(ledger.removable(5, 100), None);
        ledger.ended(3, txid(3), 20);
        assert_eq!(ledger.removable(5, 100), Some(4));
    }

    #[test]
    fn young_ends_wait_for_the_window() {
        let mut ledger = SegmentLedger::default();
        ledger.opened(1);
        ledger.opened(2);
        ledger.ended(1, txid(1), 50);
        ledger.ended(2, txid(2), 150);
        assert_eq!(ledger.removable(3, 100), Some(1));
        assert_eq!(ledger.removable(3, 149), Some(1));
        assert_eq!(ledger.removable(3, 150), Some(2));
    }

    #[test]
    fn segments_without_first_records_go_with_the_prefix() {
        let mut ledger = SegmentLedger::default();
        ledger.opened(2);
        ledger.ended(2, txid(2), 10);
        // Segments 1, 3 and 4 hold no first record (only later records of
        // transactions counted elsewhere, or nothing).
        assert_eq!(ledger.removable(5, 100), Some(4));
        ledger.opened(6);
        assert_eq!(ledger.removable(7, 100), Some(5));
    }

    #[test]
    fn the_current_segment_never_goes() {
        let mut ledger = SegmentLedger::default();
        ledger.opened(3);
        ledger.ended(3, txid(3), 10);
        assert_eq!(ledger.removable(3, 100), Some(2));
        assert_eq!(ledger.removable(1, 100), None);
    }

    #[test]
    #[should_panic(expected = "ended more transactions than it opened")]
    fn ending_twice_is_a_bug() {
        let mut ledger = SegmentLedger::default();
        ledger.opened(1);
        ledger.ended(1, txid(1), 10);
        ledger.ended(1, txid(1), 10);
    }
}

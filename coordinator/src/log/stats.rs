//! Counters of the writer, read without locks by `DecisionLog::stats`.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of what the writer has done since `open`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records written to a segment (write(2) done).
    pub records_written: u64,
    /// Frame bytes written (headers of segments not counted).
    pub bytes_written: u64,
    /// fsyncs of segment data by the writer: group commits, per-record syncs
    /// with `group_commit` off, and the sync of a segment before rotation.
    /// The header and directory fsyncs of segment creation are not counted
    /// here (see `segments_created`), nor the one fsync of `open`.
    pub fsyncs: u64,
    /// Batches written: one write (per segment touched) each. A record
    /// that `append` wrote itself is a batch of one.
    pub batches: u64,
    /// `Written` records that `append` wrote on its caller's task, the
    /// writer thread being idle (counted in `records_written` too).
    pub written_by_appenders: u64,
    /// Segments created by `open` or by rotation.
    pub segments_created: u64,
    /// Closed segments deleted by retention.
    pub segments_removed: u64,
}

/// The live counters behind [`LogStats`]; only the holder of the tail's
/// lock (and `open`) increments them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub records_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub fsyncs: AtomicU64,
    pub batches: AtomicU64,
    pub written_by_appenders: AtomicU64,
    pub segments_created: AtomicU64,
    pub segments_removed: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LogStats {
        LogStats {
            records_written: self.records_written.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            written_by_appenders: self.written_by_appenders.load(Ordering::Relaxed),
            segments_created: self.segments_created.load(Ordering::Relaxed),
            segments_removed: self.segments_removed.load(Ordering::Relaxed),
        }
    }
}

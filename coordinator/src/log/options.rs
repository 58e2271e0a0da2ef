//! How to open a decision log: where, how large a segment may grow, and
//! whether appends are batched (group commit) or fsynced one by one.

use std::path::PathBuf;

/// Options of [`super::DecisionLog::open`]. Build with [`LogOptions::new`]
/// and adjust fields.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// The directory holding the segment files; created if missing.
    pub dir: PathBuf,
    /// A segment is rotated before a frame would take it past this size. A
    /// single frame larger than this gets a segment of its own.
    pub segment_bytes_max: u64,
    /// true: one write and at most one fsync per batch of queued records.
    /// false: each record written and fsynced on its own, even `Written`
    /// ones (the naive baseline for benchmarks).
    pub group_commit: bool,
}

impl LogOptions {
    /// 64 MiB segments, group commit on.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogOptions {
            dir: dir.into(),
            segment_bytes_max: 64 * 1024 * 1024,
            group_commit: true,
        }
    }
}

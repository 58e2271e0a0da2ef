//! The handle the coordinator holds: `open` (replay, cut the torn tail,
//! start the writer), `append` (frame on the caller's task; write a
//! `Written` record there if the writer is idle, else queue it and await
//! the writer), `stats` and `shutdown`.

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, TryLockError, Weak};

use tokio::sync::{mpsc, oneshot};

use super::segment::{self, Segment};
use super::stats::Counters;
use super::writer::{Append, Request, Shared, Tail, Writer, QUEUE_DEPTH_MAX};
use super::{
    frame, scan, Durability, LogError, LogOptions, LogRecord, LogStats, Position, Replayed,
    FORMAT_VERSION,
};

/// A cheap, cloneable handle to the log's one writer. The writer stops when
/// `shutdown` is called or every handle is dropped (after a last fsync).
#[derive(Clone, Debug)]
pub struct DecisionLog {
    sender: mpsc::Sender<Request>,
    /// The end of the log, which the writer locks for each batch; `append`
    /// writes a `Written` record there itself when the lock is free.
    tail: Weak<Mutex<Tail>>,
    shared: Arc<Shared>,
    dir: std::path::PathBuf,
}

impl DecisionLog {
    /// Creates `dir` if needed (and fsyncs its parent), replays every segment
    /// in order, cuts a torn tail of the last segment (truncate + fsync),
    /// refuses corruption anywhere else, then starts the writer thread.
    /// Needs no runtime itself; `append` must be awaited in a tokio runtime.
    pub fn open(options: LogOptions) -> Result<(DecisionLog, Replayed), LogError> {
        create_dir(&options.dir)?;
        let segments = segment::list(&options.dir)?;
        let replayed = scan::replay(&segments)?;
        if let Some(cut) = &replayed.tail_cut {
            tracing::warn!(segment = %cut.segment.display(), offset = cut.offset, bytes_cut = cut.bytes_cut,
                "decision log: cutting a torn tail (never acknowledged)");
            segment::cut_tail(&options.dir, cut)?;
        }
        let shared = Arc::new(Shared::default());
        let segment = match segments.last() {
            Some((seq, _)) => Segment::open_append(&options.dir, *seq)?,
            None => {
                Counters::add(&shared.counters.segments_created, 1);
                Segment::create(&options.dir, 1)?
            }
        };
        let log = start_writer(&options, segment, shared)?;
        Ok((log, replayed))
    }

    /// Appends one record. `Forced` resolves only after this record and all
    /// before it are fsynced; `Written` once it is written to the file.
    /// A caller that awaits each append before the next gets its records
    /// in call order (appends in flight at once may land in any order); the
    /// result is where it went.
    /// Stamps `format_version` with [`FORMAT_VERSION`] when it is 0.
    pub async fn append(
        &self,
        mut record: LogRecord,
        durability: Durability,
    ) -> Result<Position, LogError> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(LogError::Poisoned);
        }
        stamp_version(&mut record)?;
        // (1) Encode and frame here, so the writer only copies bytes.
        let frame = frame::encode(&record)?;
        if durability == Durability::Written {
            if let Some(written) = self.write_now(&frame) {
                return written;
            }
        }
        let (reply, answer) = oneshot::channel();
        let request = Request::Append(Append {
            frame,
            durability,
            reply,
        });
        self.sender
            .send(request)
            .await
            .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    /// Writes a `Written` record on the caller's task (one write(2) of
    /// about a hundred bytes, no fsync) when nobody holds the tail: the
    /// writer is between batches, so no hand-over to its thread and back is
    /// needed. None when the record must be queued instead: the writer is
    /// writing or fsyncing a batch, has stopped, or the record would rotate
    /// the segment (which only the writer does).
    fn write_now(&self, frame: &[u8]) -> Option<Result<Position, LogError>> {
        let tail = self.tail.upgrade()?;
        let mut tail = match tail.try_lock() {
            Ok(tail) => tail,
            Err(TryLockError::WouldBlock) => return None,
            Err(TryLockError::Poisoned(poisoned)) => {
                poisoned.into_inner().poison_after_panic();
                return Some(Err(LogError::Poisoned));
            }
        };
        tail.write_one(frame)
    }

    /// What the writer has done since `open`.
    pub fn stats(&self) -> LogStats {
        self.shared.counters.snapshot()
    }

    /// `seq` of the segment being appended to. Only grows; every segment
    /// below it is closed: fsynced in full, never written again.
    pub fn current_segment(&self) -> u64 {
        self.shared.current_segment.load(Ordering::Acquire)
    }

    /// Retention: deletes every closed segment with `seq <= through`, oldest
    /// first, then fsyncs the directory so the removal is durable. Blocking
    /// file I/O: call it from a blocking thread. The caller decides which
    /// segments hold nothing recovery needs (`crate::retention`); the log
    /// only refuses to touch the segment being written. Returns how many
    /// segments were removed and their bytes.
    pub fn remove_segments_through(&self, through: u64) -> Result<(usize, u64), LogError> {
        let current = self.current_segment();
        assert!(
            through < current,
            "retention asked to remove segment {through}, but {current} is being written"
        );
        let mut removed = (0, 0);
        for (seq, path) in segment::list(&self.dir)? {
            if seq > through {
                break;
            }
            let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(LogError::io(format!(
                "remove segment {}",
                segment::file_name(seq)
            )))?;
            Counters::add(&self.shared.counters.segments_removed, 1);
            removed.0 += 1;
            removed.1 += bytes;
        }
        if removed.0 > 0 {
            segment::fsync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Writes everything queued before this call, fsyncs it and stops the
    /// writer; later appends get `Closed`. Err(Poisoned) if the log was (or
    /// the last fsync made it) poisoned, Err(Closed) if already stopped.
    pub async fn shutdown(&self) -> Result<(), LogError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Request::Shutdown { reply })
            .await
            .map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    /// Test hook: the end of the log, kept alive by the caller.
    #[cfg(test)]
    pub(crate) fn tail_for_test(&self) -> Arc<Mutex<Tail>> {
        self.tail.upgrade().expect("the writer runs")
    }

    /// Test hook: the writer's next fsync fails as if the disk had failed.
    #[cfg(test)]
    pub(crate) fn fail_next_fsync(&self) {
        self.shared.fail_next_fsync.store(true, Ordering::Release);
    }
}

fn start_writer(
    options: &LogOptions,
    segment: Segment,
    shared: Arc<Shared>,
) -> Result<DecisionLog, LogError> {
    let (sender, receiver) = mpsc::channel(QUEUE_DEPTH_MAX);
    shared
        .current_segment
        .store(segment.seq(), Ordering::Release);
    let writer = Writer::new(options, segment, Arc::clone(&shared), receiver);
    let tail = writer.tail();
    std::thread::Builder::new()
        .name("decision-log-writer".to_string())
        .spawn(move || writer.run())
        .map_err(LogError::io("spawn the decision log writer thread"))?;
    Ok(DecisionLog {
        sender,
        tail,
        shared,
        dir: options.dir.clone(),
    })
}

/// Creates the log directory if missing, and fsyncs its parent so the new
/// directory's name is durable.
fn create_dir(dir: &Path) -> Result<(), LogError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(LogError::io(format!(
        "create decision log directory {}",
        dir.display()
    )))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => segment::fsync_dir(parent),
        _ => segment::fsync_dir(Path::new(".")),
    }
}

fn stamp_version(record: &mut LogRecord) -> Result<(), LogError> {
    if record.format_version == 0 {
        record.format_version = FORMAT_VERSION;
    }
    if record.format_version > FORMAT_VERSION {
        return Err(LogError::RecordVersionUnsupported {
            version: record.format_version,
        });
    }
    Ok(())
}

//! The one writer: a std thread doing blocking I/O (every fsync of the
//! log but a failpoint's is its), fed by a bounded tokio channel, waking
//! waiters through tokio oneshots. It takes every record queued at that
//! moment, writes them with one write, fsyncs once if any of them asked
//! for `Forced`, then wakes them all: group commit. A failed write or
//! fsync poisons the log for good.
//!
//! The end of the log (`Tail`: the open segment, what is written and what
//! is fsynced) sits behind a mutex. The writer holds it for a batch's write
//! and fsync; in between, `append` may take it to write one `Written`
//! record itself (`Tail::write_one`), which spares the caller two thread
//! hand-overs. Whoever holds the lock writes at the end of the file, so the
//! file is still one sequence of whole frames, and an fsync still makes
//! durable everything written before it.
//!
//! Two failpoints (see "Failpoints" in the module docs of `log`) let the
//! fault-injection suite damage the log from a real process: [`TORN_WRITE`]
//! and [`FSYNC_FAILS`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{mpsc, oneshot};

use super::frame::FRAME_HEADER_BYTES;
use super::segment::{Segment, HEADER_BYTES};
use super::stats::Counters;
use super::{Durability, LogError, LogOptions, Position};

/// Most appends queued for the writer; `append` waits for room beyond it.
pub(crate) const QUEUE_DEPTH_MAX: usize = 16 * 1024;
/// A batch stops taking records once its frames reach this many bytes.
const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Failpoint: a batch write is torn. Only the first half of the batch's
/// first frame is written (always past its length and CRC), fsynced, and the
/// process exits with status 137 as SIGKILL would, after sleeping the
/// action's argument in milliseconds when it is a number. Nobody is woken.
/// A record `append` writes itself is a batch of one.
pub(crate) const TORN_WRITE: &str = "coordinator::log_torn_write";
/// Failpoint: a writer fsync (batch, rotation or the last one at shutdown)
/// fails with an I/O error instead of syncing, which poisons the log.
pub(crate) const FSYNC_FAILS: &str = "coordinator::log_fsync_fails";

/// A message to the writer.
pub(crate) enum Request {
    Append(Append),
    /// Write everything queued before it, fsync, stop.
    Shutdown {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// One record, already framed by `append`.
pub(crate) struct Append {
    pub frame: Vec<u8>,
    pub durability: Durability,
    pub reply: oneshot::Sender<Result<Position, LogError>>,
}

/// State shared by the handles and the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Set once, by the writer, when a write or fsync fails; never cleared.
    pub poisoned: AtomicBool,
    pub counters: Counters,
    /// `seq` of the segment the writer appends to; only grows. Segments
    /// below it are closed (fsynced, never written again).
    pub current_segment: AtomicU64,
    /// Test hook: the next fsync by the writer fails.
    #[cfg(test)]
    pub fail_next_fsync: AtomicBool,
}

/// Records taken from the queue together.
#[derive(Default)]
struct Batch {
    appends: Vec<Append>,
    bytes: usize,
    forced: bool,
    shutdown: Option<oneshot::Sender<Result<(), LogError>>>,
}

pub(crate) struct Writer {
    tail: Arc<Mutex<Tail>>,
    receiver: mpsc::Receiver<Request>,
    group_commit: bool,
}

/// The end of the log: the segment being appended to, and how far it is
/// written and fsynced. Only the holder of its lock writes.
pub(crate) struct Tail {
    dir: PathBuf,
    segment_bytes_max: u64,
    group_commit: bool,
    segment: Segment,
    /// End of the bytes handed to write(2): where the next frame goes.
    written: Position,
    /// End of the bytes known to be fsynced. Invariant: `durable <= written`;
    /// no Forced waiter is woken for a record that ends past `durable`.
    durable: Position,
    shared: Arc<Shared>,
    /// Records and bytes written since the last fsync (for the metrics of
    /// what one fsync makes durable).
    unsynced_records: u64,
    unsynced_bytes: u64,
    /// Set by the writer's last fsync: nothing is written after it.
    closed: bool,
}

impl Writer {
    /// `segment` is open at its end, and everything in it is fsynced.
    pub fn new(
        options: &LogOptions,
        segment: Segment,
        shared: Arc<Shared>,
        receiver: mpsc::Receiver<Request>,
    ) -> Self {
        let end = Position {
            segment: segment.seq(),
            offset: segment.len(),
        };
        let tail = Tail {
            dir: options.dir.clone(),
            segment_bytes_max: options.segment_bytes_max,
            group_commit: options.group_commit,
            segment,
            written: end,
            durable: end,
            shared,
            unsynced_records: 0,
            unsynced_bytes: 0,
            closed: false,
        };
        Writer {
            tail: Arc::new(Mutex::new(tail)),
            receiver,
            group_commit: options.group_commit,
        }
    }

    /// The end of the log, for `append` to write to while the writer runs;
    /// gone once the writer has stopped.
    pub fn tail(&self) -> Weak<Mutex<Tail>> {
        Arc::downgrade(&self.tail)
    }

    /// The thread's body: batches until shutdown or until every handle is
    /// dropped, then a last fsync.
    pub fn run(mut self) {
        let mut shutdown = None;
        while shutdown.is_none() {
            let Some(mut batch) = self.next_batch() else {
                break;
            };
            shutdown = batch.shutdown.take();
            self.commit(batch);
        }
        let result = self.close();
        // Close the segment before answering, so the caller may reopen (an
        // appender that has just taken the tail may close it a moment later;
        // `closed` keeps it from writing).
        drop(self);
        if let Some(reply) = shutdown {
            // The caller may have stopped waiting; nothing to do then.
            let _ = reply.send(result);
        }
    }

    /// Waits for one request, then takes every request already queued, up to
    /// `BATCH_BYTES_MAX` (one request only with group commit off), stopping
    /// at a shutdown. None when every handle is gone.
    fn next_batch(&mut self) -> Option<Batch> {
        let mut batch = Batch::default();
        let mut next = Some(self.receiver.blocking_recv()?);
        while let Some(request) = next {
            match request {
                Request::Shutdown { reply } => {
                    batch.shutdown = Some(reply);
                    break;
                }
                Request::Append(append) => batch.push(append),
            }
            if !self.group_commit || batch.bytes >= BATCH_BYTES_MAX {
                break;
            }
            next = self.receiver.try_recv().ok();
        }
        Some(batch)
    }

    /// Writes a batch and wakes its waiters (step 5), or poisons the log.
    fn commit(&mut self, batch: Batch) {
        if batch.appends.is_empty() {
            return;
        }
        let result = {
            let mut tail = self.lock();
            let written = if tail.shared.poisoned.load(Ordering::Acquire) {
                Err(LogError::Poisoned)
            } else {
                tail.write_batch(&batch)
            };
            written.map_err(|error| tail.poison(error))
        };
        match result {
            Ok(positions) => wake(batch.appends, positions),
            Err(()) => wake_poisoned(batch.appends),
        }
    }

    /// After the last batch: fsync what was only written, close the tail to
    /// `append`'s own writes, then answer `Closed` to anything still queued.
    fn close(&mut self) -> Result<(), LogError> {
        let result = {
            let mut tail = self.lock();
            let result = tail.final_fsync();
            tail.closed = true;
            result
        };
        self.receiver.close();
        while let Ok(request) = self.receiver.try_recv() {
            reply_closed(request);
        }
        result
    }

    /// The tail, locked. After a panic while it was held (an invariant of
    /// the file broke), the log is poisoned: nothing more is written, and
    /// every waiter is told `Poisoned`.
    fn lock(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|poisoned| {
            let tail = poisoned.into_inner();
            tail.poison_after_panic();
            tail
        })
    }
}

impl Tail {
    /// Steps 2 and 3 for one `Written` record, by `append` on its own task:
    /// None when it must go to the writer instead (group commit off, the
    /// writer stopped, or the record would rotate the segment). A failed
    /// write poisons the log, as the writer's does.
    pub fn write_one(&mut self, frame: &[u8]) -> Option<Result<Position, LogError>> {
        if !self.group_commit || self.closed || self.must_rotate(0, frame.len()) {
            return None;
        }
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Some(Err(LogError::Poisoned));
        }
        if let Some(delay) = fail::eval(TORN_WRITE, |arg| arg) {
            self.tear_and_exit(frame, delay.as_deref());
        }
        let position = self.written;
        if let Err(error) = self.write(frame) {
            self.poison(error);
            return Some(Err(LogError::Poisoned));
        }
        self.unsynced_records += 1;
        self.unsynced_bytes += frame.len() as u64;
        self.count_write(1, frame.len());
        Counters::add(&self.shared.counters.written_by_appenders, 1);
        Some(Ok(position))
    }

    /// Steps 2-4 for one batch; returns where each record went.
    fn write_batch(&mut self, batch: &Batch) -> Result<Vec<Position>, LogError> {
        let mut positions = Vec::with_capacity(batch.appends.len());
        let mut buffer = Vec::with_capacity(batch.bytes);
        for append in &batch.appends {
            if self.must_rotate(buffer.len(), append.frame.len()) {
                self.write(&buffer)?;
                buffer.clear();
                self.rotate()?;
            }
            positions.push(Position {
                segment: self.written.segment,
                offset: self.written.offset + buffer.len() as u64,
            });
            buffer.extend_from_slice(&append.frame);
            self.unsynced_records += 1;
            self.unsynced_bytes += append.frame.len() as u64;
        }
        if let Some(delay) = fail::eval(TORN_WRITE, |arg| arg) {
            self.tear_and_exit(&buffer, delay.as_deref());
        }
        // (2) One write of every frame of the batch.
        self.write(&buffer)?;
        // (3) One fsync if anyone asked for it; every record with group commit off.
        if batch.forced || !self.group_commit {
            self.fsync()?;
        }
        self.count_write(batch.appends.len(), batch.bytes);
        Ok(positions)
    }

    /// True when a frame of `frame_bytes` after `pending` unwritten bytes
    /// would take a non-empty segment past `segment_bytes_max`.
    fn must_rotate(&self, pending: usize, frame_bytes: usize) -> bool {
        let end = self.written.offset + pending as u64;
        end > HEADER_BYTES && end + frame_bytes as u64 > self.segment_bytes_max
    }

    /// (2a) fsync the full segment, so everything before the switch is
    /// durable, then (4) create the next one.
    fn rotate(&mut self) -> Result<(), LogError> {
        self.fsync()?;
        self.segment = Segment::create(&self.dir, self.segment.seq() + 1)?;
        Counters::add(&self.shared.counters.segments_created, 1);
        self.shared
            .current_segment
            .store(self.segment.seq(), Ordering::Release);
        self.written = Position {
            segment: self.segment.seq(),
            offset: self.segment.len(),
        };
        // The new segment's header was fsynced by `create`.
        self.durable = self.written;
        self.validate();
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.segment.write(bytes)?;
        self.written.offset = self.segment.len();
        self.validate();
        Ok(())
    }

    /// (3) fdatasync of the current segment; never retried after a failure.
    fn fsync(&mut self) -> Result<(), LogError> {
        if self.durable == self.written {
            return Ok(());
        }
        self.injected_fsync_failure()?;
        let started = std::time::Instant::now();
        self.segment.sync()?;
        crate::metrics::fsync(
            self.unsynced_records,
            self.unsynced_bytes,
            started.elapsed(),
        );
        self.unsynced_records = 0;
        self.unsynced_bytes = 0;
        Counters::add(&self.shared.counters.fsyncs, 1);
        self.durable = self.written;
        self.validate();
        Ok(())
    }

    /// The unit tests' per-log hook, or the [`FSYNC_FAILS`] failpoint: this
    /// fsync fails as if the disk had failed, without syncing anything.
    fn injected_fsync_failure(&self) -> Result<(), LogError> {
        #[cfg(test)]
        let hook = self.shared.fail_next_fsync.swap(false, Ordering::AcqRel);
        #[cfg(not(test))]
        let hook = false;
        let cause = if hook {
            "injected fsync failure"
        } else if fail::eval(FSYNC_FAILS, |_| ()).is_some() {
            "injected fsync failure (failpoint coordinator::log_fsync_fails)"
        } else {
            return Ok(());
        };
        Err(LogError::Io {
            context: format!(
                "fsync segment {}",
                super::segment::file_name(self.segment.seq())
            ),
            source: std::io::Error::other(cause),
        })
    }

    /// The [`TORN_WRITE`] failpoint fired on a batch about to be written as
    /// `buffer` (which starts at a frame boundary): write a torn prefix of
    /// its first frame, fsync it so the torn record is really on disk, wait
    /// `delay_ms` if it is a number, then exit as if killed. Nobody is woken.
    fn tear_and_exit(&mut self, buffer: &[u8], delay_ms: Option<&str>) -> ! {
        let torn = torn_prefix_len(buffer);
        let at = self.written;
        let result = self
            .segment
            .write(&buffer[..torn])
            .and_then(|()| self.segment.sync());
        eprintln!(
            "failpoint {TORN_WRITE} fired: wrote {torn} of {} bytes of the batch at segment {} offset {} ({result:?}); exiting as if killed",
            buffer.len(),
            super::segment::file_name(at.segment),
            at.offset,
        );
        if let Some(ms) = delay_ms.and_then(|arg| arg.trim().parse::<u64>().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        std::process::exit(137)
    }

    /// Logs the first failure once at ERROR and refuses all further writes.
    fn poison(&self, error: impl std::fmt::Display) {
        if !self.shared.poisoned.swap(true, Ordering::AcqRel) {
            tracing::error!(%error, written = ?self.written, durable = ?self.durable,
                "decision log poisoned: refusing all further writes until restart");
        }
    }

    /// A panic while the lock was held: the file may not be what `written`
    /// says, so the log refuses all further writes.
    pub fn poison_after_panic(&self) {
        self.poison("a panic while the log's tail was locked");
    }

    fn final_fsync(&mut self) -> Result<(), LogError> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(LogError::Poisoned);
        }
        self.fsync().map_err(|error| {
            self.poison(error);
            LogError::Poisoned
        })
    }

    /// One write(2) of `records` frames, `bytes` in all.
    fn count_write(&self, records: usize, bytes: usize) {
        let counters = &self.shared.counters;
        Counters::add(&counters.records_written, records as u64);
        Counters::add(&counters.bytes_written, bytes as u64);
        Counters::add(&counters.batches, 1);
    }

    fn validate(&self) {
        assert!(
            self.durable <= self.written,
            "durable {:?} past written {:?}",
            self.durable,
            self.written
        );
        assert_eq!(
            self.written.segment,
            self.segment.seq(),
            "written is in the current segment"
        );
        assert_eq!(
            self.written.offset,
            self.segment.len(),
            "written is the end of the current segment"
        );
    }
}

impl Batch {
    fn push(&mut self, append: Append) {
        self.bytes += append.frame.len();
        self.forced |= append.durability == Durability::Forced;
        self.appends.push(append);
    }
}

/// (5) Wakes each waiter with its position. A waiter that stopped waiting
/// (dropped its future) is skipped: its record is written all the same.
fn wake(appends: Vec<Append>, positions: Vec<Position>) {
    assert_eq!(
        appends.len(),
        positions.len(),
        "one position per record of the batch"
    );
    for (append, position) in appends.into_iter().zip(positions) {
        let _ = append.reply.send(Ok(position));
    }
}

/// How much of `buffer`'s first frame a torn write keeps: half of it, but
/// at least its 8-byte header and one payload byte (so the length field is
/// whole and the record is really torn, not missing), and never all of it.
pub(crate) fn torn_prefix_len(buffer: &[u8]) -> usize {
    let length: [u8; 4] = buffer[..4]
        .try_into()
        .expect("a batch holds at least one whole frame");
    let frame = FRAME_HEADER_BYTES + u32::from_le_bytes(length) as usize;
    (frame / 2).max(FRAME_HEADER_BYTES + 1).min(frame - 1)
}

fn wake_poisoned(appends: Vec<Append>) {
    for append in appends {
        let _ = append.reply.send(Err(LogError::Poisoned));
    }
}

fn reply_closed(request: Request) {
    match request {
        Request::Append(append) => drop(append.reply.send(Err(LogError::Closed))),
        Request::Shutdown { reply } => drop(reply.send(Err(LogError::Closed))),
    }
}

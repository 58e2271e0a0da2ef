//! DESIGN.md "The decision log" and "Failures we test by causing them": a
//! decision log damaged on disk, with real processes.
//!
//! | damage                                   | the coordinator                       | the retried key gets          |
//! |------------------------------------------|---------------------------------------|-------------------------------|
//! | the COMMIT record torn by a crash        | cuts the torn tail at restart         | ABORTED (presumed abort)      |
//! | one byte flipped in a record mid-segment | refuses to start, naming file + offset| COMMITTED again once restored |
//! | the decision's fsync fails               | poisons the log, never replies COMMITTED, stops | what the log holds  |
//!
//! The damage comes from the log writer's failpoints
//! (`coordinator::log_torn_write`, `coordinator::log_fsync_fails`) and, for
//! the flipped byte, from this file editing the segment while the
//! coordinator is stopped. The segment is read here with a small reader of
//! the documented framing (`coordinator/src/log/mod.rs`, "On disk"), so the
//! assertions do not trust the code under test to describe its own log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use booking_client::checker::Oracle;
use booking_client::{Cluster, ClusterError, ProcessId};
use booking_proto::log_v1::RecordKind;
use booking_proto::v1::{AbortReason, BookRequest, Outcome};
use booking_tests::*;

/// The first (and, in these tests, only) segment of the coordinator's log.
const SEGMENT: &str = "0000000000000001.seg";
const SEGMENT_HEADER_BYTES: u64 = 8;
const FRAME_HEADER_BYTES: u64 = 8;
/// Printed by the cluster launcher before each start of a process.
const START_MARKER: &str = "==== bookctl cluster: starting";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_decision_record_is_cut_and_the_booking_ends_by_presumed_abort() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let cluster = &mut test.cluster;
    let request = booking(cluster, "TORN", "torn-decision").await;
    let segment = segment_path(cluster);

    // Let the first batch (BEGIN) through, tear the second (the decision);
    // the 300 ms pause would let a reply sent too early reach the client.
    cluster.set_env(
        ProcessId::Coordinator,
        "FAILPOINTS",
        "coordinator::log_torn_write=1*off->return(300)",
    );
    cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart armed");
    let oracle = Arc::new(Oracle::new());
    let client = cluster.client().await.expect("connect");
    let first = client.book(request.clone()).await;
    oracle.record(&request, &first);
    assert!(
        first.is_err(),
        "a booking whose decision was never durable got a reply: {first:?}"
    );
    let status = cluster
        .wait_exit(ProcessId::Coordinator, Duration::from_secs(10))
        .await
        .expect("wait for exit")
        .expect("the coordinator must have exited at the torn write");
    assert_eq!(status.code(), Some(137), "{status}");
    let crash_log = this_run_log(cluster);
    assert!(
        crash_log.contains("failpoint coordinator::log_torn_write fired"),
        "{crash_log}"
    );

    // The log now holds the booking's BEGIN, then a torn COMMIT.
    let torn_log = read_segment(&segment);
    let kinds: Vec<_> = torn_log.records.iter().map(|r| (r.kind, &r.key)).collect();
    assert_eq!(
        kinds,
        [(
            Some(RecordKind::Begin as i32),
            &Some(request.idempotency_key.clone())
        )],
        "only the BEGIN is whole"
    );
    let torn = torn_log.torn.expect("the decision record is torn");
    assert_eq!(
        torn.offset,
        torn_log.records[0].offset + torn_log.records[0].frame_bytes,
        "the torn record follows the BEGIN"
    );
    assert_eq!(torn.kind, Some(RecordKind::Commit as i32), "{torn:?}");
    assert!(
        torn.present_bytes > FRAME_HEADER_BYTES && torn.present_bytes < torn.frame_bytes,
        "a torn record, past its length field: {torn:?}"
    );

    // Restart unarmed: the tail is cut, the undecided BEGIN is aborted.
    cluster.remove_env(ProcessId::Coordinator, "FAILPOINTS");
    cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("a torn tail must not stop the coordinator");
    let restart_log = this_run_log(cluster);
    let cut_line = restart_log
        .lines()
        .find(|line| line.contains("cutting a torn tail"))
        .unwrap_or_else(|| panic!("the coordinator must say it cut a torn tail:\n{restart_log}"));
    let fields: Vec<&str> = cut_line.split_whitespace().collect();
    for expected in [
        format!("segment={}", segment.display()),
        format!("offset={}", torn.offset),
        format!("bytes_cut={}", torn.present_bytes),
    ] {
        assert!(
            fields.contains(&expected.as_str()),
            "{expected:?} in {cut_line:?}"
        );
    }
    let client = cluster.client().await.expect("reconnect");
    let again = client
        .book(request.clone())
        .await
        .expect("retry after restart");
    assert_eq!(again.outcome, Outcome::Aborted as i32, "{again:?}");
    assert_eq!(
        again.abort.as_ref().map(|a| a.reason),
        Some(AbortReason::CoordinatorRestarted as i32),
        "{again:?}"
    );
    oracle.record(&request, &Ok(again.clone()));
    assert_invariants(cluster, &oracle).await;
    assert_eq!(
        seats_booked(cluster).await,
        0,
        "presumed abort books nothing"
    );

    // On disk: the torn bytes are gone, recovery's ABORT took their place.
    cluster
        .stop(ProcessId::Coordinator)
        .await
        .expect("stop the coordinator");
    let repaired = read_segment(&segment);
    assert!(repaired.torn.is_none(), "no torn record left: {repaired:?}");
    let at_torn_offset = repaired
        .records
        .iter()
        .find(|r| r.offset == torn.offset)
        .unwrap_or_else(|| panic!("a whole record at offset {}: {repaired:?}", torn.offset));
    assert_eq!(at_torn_offset.kind, Some(RecordKind::Abort as i32));
    assert_eq!(
        at_torn_offset.key.as_deref(),
        Some(request.idempotency_key.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_mid_segment_stops_the_coordinator_naming_file_and_offset() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let cluster = &mut test.cluster;
    let segment = segment_path(cluster);
    let oracle = Arc::new(Oracle::new());
    let client = cluster.client().await.expect("connect");
    let mut requests = Vec::new();
    let mut replies = Vec::new();
    for n in 0..3 {
        let request = booking(cluster, &format!("FLIP{n}-"), &format!("flip-{n}")).await;
        let reply = client.book(request.clone()).await;
        oracle.record(&request, &reply);
        let reply = reply.expect("book");
        assert_eq!(reply.outcome, Outcome::Committed as i32, "{reply:?}");
        requests.push(request);
        replies.push(reply);
    }
    // Phase 2 done (no seat held), so every END is written; then stop cleanly.
    assert_invariants(cluster, &oracle).await;
    cluster
        .stop(ProcessId::Coordinator)
        .await
        .expect("stop the coordinator");

    // Damage the first booking's COMMIT record, which is followed by others.
    let before = read_segment(&segment);
    assert!(before.torn.is_none(), "a clean stop leaves no torn tail");
    assert!(before.records.len() >= 6, "{before:?}");
    let victim = before
        .records
        .iter()
        .find(|r| r.kind == Some(RecordKind::Commit as i32))
        .expect("a COMMIT record")
        .clone();
    assert!(
        victim.offset + victim.frame_bytes < before.len,
        "the victim is not the last record: {victim:?}"
    );
    let flipped_at =
        victim.offset + FRAME_HEADER_BYTES + (victim.frame_bytes - FRAME_HEADER_BYTES) / 2;
    let original = std::fs::read(&segment).expect("read the segment");
    let mut damaged = original.clone();
    damaged[flipped_at as usize] ^= 0x40;
    std::fs::write(&segment, &damaged).expect("write the damaged segment");

    let error = cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect_err("a corrupt record mid-segment must stop the coordinator");
    let ClusterError::Exited { status, .. } = &error else {
        panic!("the coordinator must exit before it is ready: {error}");
    };
    assert_ne!(status, "exit status: 0", "a failure exit: {error}");
    // The whole log, not the tail: with RUST_BACKTRACE=1 the error is
    // followed by a backtrace longer than the tail.
    let text = strip_ansi(
        &std::fs::read_to_string(cluster.log_path(ProcessId::Coordinator))
            .expect("read the coordinator's log"),
    );
    let expected = format!(
        "corrupt decision log segment {} at byte offset {}",
        segment.display(),
        victim.offset
    );
    assert!(
        text.contains(&expected),
        "the coordinator must print {expected:?}:\n{text}"
    );
    assert_eq!(
        std::fs::read(&segment).expect("read the segment"),
        damaged,
        "a corrupt log is never modified"
    );

    // Restore the byte: the coordinator starts and nothing was lost.
    std::fs::write(&segment, &original).expect("restore the segment");
    cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart on the restored log");
    let client = cluster.client().await.expect("reconnect");
    for (request, reply) in requests.iter().zip(&replies) {
        let again = client.book(request.clone()).await.expect("retry");
        assert_eq!(&again, reply, "the same key gets the same reply");
    }
    assert_invariants(cluster, &oracle).await;
    assert_eq!(
        seats_booked(cluster).await,
        3 * 2 * 2,
        "every COMMITTED booking stays booked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_of_the_decision_is_never_acknowledged_and_stops_the_coordinator() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let cluster = &mut test.cluster;
    let request = booking(cluster, "FSYNC", "fsync-fails").await;
    let segment = segment_path(cluster);

    // The BEGIN is only written; the decision's fsync is the first one.
    cluster.set_env(
        ProcessId::Coordinator,
        "FAILPOINTS",
        "coordinator::log_fsync_fails=return",
    );
    cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart armed");
    let oracle = Arc::new(Oracle::new());
    let client = cluster.client().await.expect("connect");
    let first = client.book(request.clone()).await;
    oracle.record(&request, &first);
    let error = first.expect_err("a decision whose fsync failed must not be acknowledged");
    assert_eq!(error.code(), Some(tonic::Code::Unavailable), "{error}");
    assert!(
        error.to_string().contains("decision log is poisoned"),
        "{error}"
    );

    // The log refuses further writes and the process stops with an error.
    let status = cluster
        .wait_exit(ProcessId::Coordinator, Duration::from_secs(10))
        .await
        .expect("wait for exit")
        .expect("the coordinator must stop after its log failed");
    assert_eq!(status.code(), Some(1), "{status}");
    let failed_run = this_run_log(cluster);
    for expected in [
        "injected fsync failure (failpoint coordinator::log_fsync_fails)",
        "decision log poisoned: refusing all further writes until restart",
        "stopped after a fatal error",
    ] {
        assert!(
            failed_run.contains(expected),
            "the coordinator's log must say {expected:?}:\n{failed_run}"
        );
    }

    // The decision reached the file (write(2) succeeded; only its fsync
    // failed), so what a restart finds there is the answer.
    let log = read_segment(&segment);
    let decision = log
        .records
        .iter()
        .filter(|r| r.key.as_deref() == Some(request.idempotency_key.as_str()))
        .filter_map(|r| r.kind)
        .find(|k| *k == RecordKind::Commit as i32 || *k == RecordKind::Abort as i32);
    assert_eq!(
        decision,
        Some(RecordKind::Commit as i32),
        "the decision was written before its fsync failed: {log:?}"
    );

    cluster.remove_env(ProcessId::Coordinator, "FAILPOINTS");
    cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart");
    let client = cluster.client().await.expect("reconnect");
    let again = client
        .book(request.clone())
        .await
        .expect("retry after restart");
    assert_eq!(
        again.outcome,
        Outcome::Committed as i32,
        "the retry gets the decision the log holds: {again:?}"
    );
    oracle.record(&request, &Ok(again.clone()));
    assert_invariants(cluster, &oracle).await;
    assert_eq!(
        seats_booked(cluster).await,
        2 * 2,
        "the logged COMMIT is booked"
    );
}

/// A two-shard booking with a generous deadline, so that a loaded machine
/// cannot turn the COMMIT these tests damage into a deadline ABORT.
async fn booking(cluster: &Cluster, prefix: &str, key: &str) -> BookRequest {
    BookRequest {
        timeout_ms: 20_000,
        ..two_shard_request(cluster, prefix, key).await
    }
}

fn segment_path(cluster: &Cluster) -> PathBuf {
    cluster.data_dir().join("coordinator-log").join(SEGMENT)
}

/// The coordinator's log since its last start, without colour codes.
fn this_run_log(cluster: &Cluster) -> String {
    let path = cluster.log_path(ProcessId::Coordinator);
    let text = std::fs::read(&path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let start = text.rfind(START_MARKER).unwrap_or(0);
    strip_ansi(&text[start..])
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One frame of a segment, as far as it is present.
#[derive(Clone, Debug)]
struct FrameView {
    offset: u64,
    /// 8 + the length field: how long the frame says it is.
    frame_bytes: u64,
    /// How many of those bytes the file holds.
    present_bytes: u64,
    /// `LogRecord.kind` and `idempotency_key`, when the bytes present hold them.
    kind: Option<i32>,
    key: Option<String>,
}

#[derive(Debug)]
struct SegmentView {
    len: u64,
    records: Vec<FrameView>,
    /// A last frame that runs past the end of the file.
    torn: Option<FrameView>,
}

/// Reads a segment by its documented framing (no CRC check: the tests only
/// read segments they have not damaged).
fn read_segment(path: &Path) -> SegmentView {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        bytes.len() as u64 >= SEGMENT_HEADER_BYTES && bytes[..4] == *b"BKLG",
        "segment header"
    );
    let len = bytes.len() as u64;
    let mut view = SegmentView {
        len,
        records: Vec::new(),
        torn: None,
    };
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < len {
        let at = offset as usize;
        let length = bytes
            .get(at..at + 4)
            .map(|b| u64::from(u32::from_le_bytes(b.try_into().expect("4 bytes"))));
        let frame_bytes = length.map_or(u64::MAX, |l| FRAME_HEADER_BYTES + l);
        let present_bytes = frame_bytes.min(len - offset);
        let payload_start = (at + FRAME_HEADER_BYTES as usize).min(bytes.len());
        let payload = &bytes[payload_start..at + present_bytes as usize];
        let (kind, key) = kind_and_key(payload);
        let frame = FrameView {
            offset,
            frame_bytes,
            present_bytes,
            kind,
            key,
        };
        if present_bytes < frame_bytes {
            view.torn = Some(frame);
            break;
        }
        view.records.push(frame);
        offset += frame_bytes;
    }
    view
}

/// Fields 2 (`kind`) and 8 (`idempotency_key`) of a `LogRecord` payload,
/// possibly cut short: a field the bytes do not hold in full is None.
fn kind_and_key(payload: &[u8]) -> (Option<i32>, Option<String>) {
    let (mut kind, mut key) = (None, None);
    let mut at = 0;
    while at < payload.len() {
        let Some(tag) = varint(payload, &mut at) else {
            break;
        };
        match tag & 7 {
            0 => {
                let Some(value) = varint(payload, &mut at) else {
                    break;
                };
                if tag >> 3 == 2 {
                    kind = i32::try_from(value).ok();
                }
            }
            1 => at += 8,
            2 => {
                let Some(n) = varint(payload, &mut at) else {
                    break;
                };
                let end = at + n as usize;
                let Some(value) = payload.get(at..end) else {
                    break;
                };
                if tag >> 3 == 8 {
                    key = Some(String::from_utf8_lossy(value).into_owned());
                }
                at = end;
            }
            5 => at += 4,
            _ => break,
        }
    }
    (kind, key)
}

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

//! Tests of the decision log (DESIGN.md, "The decision log"; STYLE.md,
//! "Durable writes" and "Tests"): codec, replay, torn tails and corruption,
//! rotation, group commit, poisoning, versions, and read-only scans.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use booking_proto::log_v1::LegSummary;
use booking_proto::v1::{AbortDetail, AbortReason, BookReply, LegResult, Mode, Outcome};
use tokio::task::JoinSet;

use super::frame::{self, FrameRead};
use super::segment::{self, HEADER_BYTES};
use super::*;

const KINDS: [RecordKind; 6] = [
    RecordKind::Unspecified,
    RecordKind::Begin,
    RecordKind::Commit,
    RecordKind::Abort,
    RecordKind::End,
    RecordKind::SagaBegin,
];

/// A record of `kind` with every field set to a non-default value.
fn full_record(kind: RecordKind, n: u64) -> LogRecord {
    let leg = LegSummary {
        leg_index: 1,
        flight_id: "BA117-20261201".to_string(),
        shard: "s1".to_string(),
        seat_count: 2,
        seats: vec!["12A".to_string(), "12B".to_string()],
        passengers: vec!["Ada Lovelace".to_string(), "Alan Turing".to_string()],
    };
    let reply = BookReply {
        txid: "0192f0c1-0000-7000-8000-000000000001".to_string(),
        outcome: Outcome::Aborted as i32,
        legs: vec![LegResult {
            leg_index: 1,
            flight_id: leg.flight_id.clone(),
            shard: "s1".to_string(),
            seats: leg.seats.clone(),
        }],
        abort: Some(AbortDetail {
            reason: AbortReason::SoldOut as i32,
            leg_index: 1,
            flight_id: leg.flight_id.clone(),
            message: "sold out".to_string(),
        }),
        mode: Mode::Saga as i32,
    };
    LogRecord {
        format_version: FORMAT_VERSION,
        kind: kind as i32,
        txid: n.to_be_bytes().repeat(2),
        at_unix_ms: 1_760_000_000_000 + n,
        mode: Mode::Saga as i32,
        one_phase: true,
        shards: vec!["s0".to_string(), "s1".to_string()],
        idempotency_key: format!("key-{n}"),
        request_fingerprint: 0xfeed_0000 + n,
        legs: vec![leg],
        reply: Some(reply),
    }
}

fn options(dir: &Path) -> LogOptions {
    LogOptions::new(dir)
}

fn open(dir: &Path) -> (DecisionLog, Replayed) {
    DecisionLog::open(options(dir)).expect("open the decision log")
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment::file_name(seq))
}

/// Appends records 0..count, Forced, one after another; returns them as
/// replay should return them.
async fn append_numbered(log: &DecisionLog, count: u64) -> Vec<(Position, LogRecord)> {
    let mut appended = Vec::new();
    for n in 0..count {
        let record = full_record(KINDS[n as usize % KINDS.len()], n);
        let position = log
            .append(record.clone(), Durability::Forced)
            .await
            .expect("append");
        appended.push((position, record));
    }
    appended
}

/// A fresh log with `count` records, shut down; returns them.
async fn log_with_records(dir: &Path, count: u64) -> Vec<(Position, LogRecord)> {
    let (log, _) = open(dir);
    let appended = append_numbered(&log, count).await;
    log.shutdown().await.expect("shutdown");
    appended
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read segment");
    bytes[offset as usize] ^= 0x40;
    fs::write(path, bytes).expect("write segment");
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .expect("truncate segment");
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat segment").len()
}

fn payload_len(frame_bytes: u64) -> u64 {
    frame_bytes - frame::FRAME_HEADER_BYTES as u64
}

#[test]
fn codec_round_trips_every_record_kind_with_all_fields() {
    for (n, kind) in KINDS.into_iter().enumerate() {
        let record = full_record(kind, n as u64);
        let encoded = frame::encode(&record).expect("encode");
        match frame::decode(&encoded, 0) {
            FrameRead::Record {
                record: decoded,
                frame_bytes,
            } => {
                assert_eq!(*decoded, record, "{kind:?}");
                assert_eq!(frame_bytes, encoded.len() as u64);
            }
            other => panic!("{kind:?} decoded as {other:?}"),
        }
    }
}

#[test]
fn codec_refuses_a_record_over_the_cap() {
    let mut record = full_record(RecordKind::Commit, 1);
    record.idempotency_key = "x".repeat(RECORD_BYTES_MAX);
    assert!(matches!(
        frame::encode(&record),
        Err(LogError::RecordTooLarge { .. })
    ));
}

#[tokio::test]
async fn reopen_returns_the_appended_records_in_order_with_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = log_with_records(dir.path(), 20).await;
    assert_eq!(
        appended[0].0,
        Position {
            segment: 1,
            offset: HEADER_BYTES
        }
    );
    let (log, replayed) = open(dir.path());
    assert_eq!(replayed.records, appended);
    assert_eq!(replayed.tail_cut, None);
    // Appends continue where the log ended.
    let end = file_len(&segment_path(dir.path(), 1));
    let next = log
        .append(full_record(RecordKind::End, 99), Durability::Written)
        .await
        .expect("append");
    assert_eq!(
        next,
        Position {
            segment: 1,
            offset: end
        }
    );
    log.shutdown().await.expect("shutdown");
}

fn frame_len_of(record: &LogRecord) -> u64 {
    frame::encode(record).expect("encode").len() as u64
}

#[tokio::test]
async fn append_stamps_the_format_version_and_refuses_a_newer_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    let mut unstamped = full_record(RecordKind::Begin, 1);
    unstamped.format_version = 0;
    log.append(unstamped, Durability::Forced)
        .await
        .expect("append");
    let mut newer = full_record(RecordKind::Begin, 2);
    newer.format_version = FORMAT_VERSION + 1;
    let refused = log.append(newer, Durability::Forced).await;
    assert!(
        matches!(
            refused,
            Err(LogError::RecordVersionUnsupported { version: 2 })
        ),
        "{refused:?}"
    );
    log.shutdown().await.expect("shutdown");
    let replayed = scan(dir.path()).expect("scan");
    assert_eq!(replayed.records.len(), 1);
    assert_eq!(replayed.records[0].1.format_version, FORMAT_VERSION);
}

/// Cut points inside the last frame, relative to its start.
fn cut_points(frame_bytes: u64) -> Vec<(&'static str, u64)> {
    vec![
        ("inside the length field", 2),
        ("inside the CRC field", 6),
        ("right after the frame header", 8),
        ("inside the payload", 8 + payload_len(frame_bytes) / 2),
        ("one byte short of the end", frame_bytes - 1),
    ]
}

#[tokio::test]
async fn torn_tail_is_cut_at_every_cut_point_and_appends_continue() {
    for (name, cut) in cut_points(frame_len_of(&full_record(KINDS[4], 4))) {
        let dir = tempfile::tempdir().expect("tempdir");
        let appended = log_with_records(dir.path(), 5).await;
        let last = appended[4].0;
        let path = segment_path(dir.path(), 1);
        truncate(&path, last.offset + cut);

        let (log, replayed) = open(dir.path());
        assert_eq!(replayed.records, appended[..4], "{name}");
        let expected = TailCut {
            segment: path.clone(),
            offset: last.offset,
            bytes_cut: cut,
        };
        assert_eq!(replayed.tail_cut, Some(expected), "{name}");
        assert_eq!(
            file_len(&path),
            last.offset,
            "{name}: the torn bytes are gone"
        );

        let again = full_record(RecordKind::Commit, 77);
        let position = log
            .append(again.clone(), Durability::Forced)
            .await
            .expect("append after cut");
        assert_eq!(
            position, last,
            "{name}: the new record takes the torn one's place"
        );
        log.shutdown().await.expect("shutdown");
        let (_, reopened) = open(dir.path());
        assert_eq!(reopened.tail_cut, None, "{name}: no garbage left");
        assert_eq!(reopened.records.len(), 5, "{name}");
        assert_eq!(reopened.records[4], (last, again), "{name}");
    }
}

#[tokio::test]
async fn the_torn_write_failpoint_leaves_a_torn_tail_past_the_length_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = log_with_records(dir.path(), 3).await;
    let path = segment_path(dir.path(), 1);
    let end = file_len(&path);
    let frame = frame::encode(&full_record(RecordKind::Commit, 3)).expect("encode");
    let torn = super::writer::torn_prefix_len(&frame);
    assert!(
        torn > frame::FRAME_HEADER_BYTES && torn < frame.len(),
        "{torn} of {} bytes: past the header, not the whole frame",
        frame.len()
    );
    let mut file = OpenOptions::new().append(true).open(&path).expect("open");
    std::io::Write::write_all(&mut file, &frame[..torn]).expect("write");
    drop(file);

    let (log, replayed) = open(dir.path());
    assert_eq!(replayed.records, appended);
    assert_eq!(
        replayed.tail_cut,
        Some(TailCut {
            segment: path.clone(),
            offset: end,
            bytes_cut: torn as u64,
        })
    );
    assert_eq!(file_len(&path), end, "the torn record is cut");
    log.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn flipped_byte_in_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = log_with_records(dir.path(), 5).await;
    let path = segment_path(dir.path(), 1);
    let last = appended[4].0;
    let len = file_len(&path);
    flip_byte(&path, last.offset + 8 + payload_len(len - last.offset) / 2);

    let (_, replayed) = open(dir.path());
    assert_eq!(replayed.records, appended[..4]);
    assert_eq!(
        replayed.tail_cut,
        Some(TailCut {
            segment: path.clone(),
            offset: last.offset,
            bytes_cut: len - last.offset
        })
    );
    assert_eq!(file_len(&path), last.offset);
}

#[tokio::test]
async fn zero_filled_tail_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = log_with_records(dir.path(), 3).await;
    let path = segment_path(dir.path(), 1);
    let end = file_len(&path);
    truncate(&path, end + 4096); // set_len fills with zeros, as a crash may
    let (_, replayed) = open(dir.path());
    assert_eq!(replayed.records, appended);
    assert_eq!(
        replayed.tail_cut.map(|cut| (cut.offset, cut.bytes_cut)),
        Some((end, 4096))
    );
    assert_eq!(file_len(&path), end);
}

#[tokio::test]
async fn flipped_byte_mid_segment_is_corrupt_naming_file_and_offset_and_file_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = log_with_records(dir.path(), 5).await;
    let path = segment_path(dir.path(), 1);
    let bad = appended[2].0.offset;
    flip_byte(&path, bad + 8 + 3);
    let before = fs::read(&path).expect("read");

    let error = DecisionLog::open(options(dir.path()))
        .expect_err("mid-segment corruption must refuse to open");
    assert!(
        matches!(&error, LogError::Corrupt { segment, offset, .. } if *segment == path && *offset == bad),
        "{error:?}"
    );
    let shown = error.to_string();
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert!(shown.contains(&format!("byte offset {bad}")), "{shown}");
    assert_eq!(
        fs::read(&path).expect("read"),
        before,
        "open must not modify a corrupt segment"
    );
    assert!(matches!(scan(dir.path()), Err(LogError::Corrupt { offset, .. }) if offset == bad));
}

#[tokio::test]
async fn absurd_length_is_corrupt_even_when_it_points_past_eof() {
    for record in [1, 4] {
        let dir = tempfile::tempdir().expect("tempdir");
        let appended = log_with_records(dir.path(), 5).await;
        let path = segment_path(dir.path(), 1);
        let bad = appended[record].0.offset;
        // The length's high byte: far above RECORD_BYTES_MAX and past EOF.
        // Our writer never writes such a length, so this is no torn write.
        flip_byte(&path, bad + 3);
        let before = fs::read(&path).expect("read");
        let error = DecisionLog::open(options(dir.path())).expect_err("must refuse");
        assert!(
            matches!(&error, LogError::Corrupt { offset, .. } if *offset == bad),
            "record {record}: {error:?}"
        );
        assert_eq!(fs::read(&path).expect("read"), before);
    }
}

#[tokio::test]
async fn corruption_in_a_segment_that_is_not_the_last_is_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut small = options(dir.path());
    small.segment_bytes_max = 600;
    let (log, _) = DecisionLog::open(small).expect("open");
    let appended = append_numbered(&log, 12).await;
    log.shutdown().await.expect("shutdown");
    let last_in_first = appended
        .iter()
        .rfind(|(p, _)| p.segment == 1)
        .expect("segment 1 has records")
        .0;
    assert!(
        appended.iter().any(|(p, _)| p.segment > 1),
        "records span segments"
    );
    let path = segment_path(dir.path(), 1);
    // The frame reaches the end of segment 1: torn if it were the last.
    flip_byte(&path, file_len(&path) - 1);

    let error = DecisionLog::open(options(dir.path())).expect_err("must refuse");
    assert!(
        matches!(&error, LogError::Corrupt { segment, offset, .. } if *segment == path && *offset == last_in_first.offset),
        "{error:?}"
    );
}

#[tokio::test]
async fn torn_header_of_the_last_segment_is_rewritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = log_with_records(dir.path(), 3).await;
    let path = segment_path(dir.path(), 2);
    fs::write(&path, b"BKL").expect("write a torn segment");
    let (log, replayed) = open(dir.path());
    assert_eq!(replayed.records, appended);
    assert_eq!(
        replayed.tail_cut,
        Some(TailCut {
            segment: path.clone(),
            offset: 0,
            bytes_cut: 3
        })
    );
    assert_eq!(file_len(&path), HEADER_BYTES);
    let position = log
        .append(full_record(RecordKind::End, 9), Durability::Forced)
        .await
        .expect("append");
    assert_eq!(
        position,
        Position {
            segment: 2,
            offset: HEADER_BYTES
        }
    );
    log.shutdown().await.expect("shutdown");
    assert_eq!(scan(dir.path()).expect("scan").records.len(), 4);
}

#[tokio::test]
async fn bad_header_is_corrupt_and_newer_header_is_unsupported() {
    let dir = tempfile::tempdir().expect("tempdir");
    log_with_records(dir.path(), 1).await;
    let path = segment_path(dir.path(), 1);
    flip_byte(&path, 0);
    assert!(matches!(
        DecisionLog::open(options(dir.path())),
        Err(LogError::Corrupt { offset: 0, .. })
    ));
    flip_byte(&path, 0);
    let mut bytes = fs::read(&path).expect("read");
    bytes[4] = 2;
    fs::write(&path, bytes).expect("write");
    assert!(matches!(
        DecisionLog::open(options(dir.path())),
        Err(LogError::UnsupportedVersion {
            version: 2,
            offset: 0,
            ..
        })
    ));
}

#[tokio::test]
async fn record_with_a_newer_format_version_is_unsupported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = log_with_records(dir.path(), 2).await;
    let path = segment_path(dir.path(), 1);
    let end = file_len(&path);
    let mut newer = full_record(RecordKind::Commit, 3);
    newer.format_version = FORMAT_VERSION + 1;
    let mut file = OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open segment");
    std::io::Write::write_all(&mut file, &frame::encode(&newer).expect("encode"))
        .expect("append a newer frame");

    let error = DecisionLog::open(options(dir.path())).expect_err("must refuse");
    assert!(
        matches!(&error, LogError::UnsupportedVersion { segment, offset, version: 2 } if *segment == path && *offset == end),
        "{error:?}"
    );
    assert!(matches!(
        scan(dir.path()),
        Err(LogError::UnsupportedVersion { .. })
    ));
    assert_eq!(
        file_len(&path),
        end + frame_len_of(&newer),
        "a newer record is never cut"
    );
    drop(appended);
}

#[tokio::test]
async fn rotation_spreads_records_over_segments_and_replays_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut small = options(dir.path());
    small.segment_bytes_max = 700;
    let (log, _) = DecisionLog::open(small.clone()).expect("open");
    let appended = append_numbered(&log, 40).await;
    let stats = log.stats();
    log.shutdown().await.expect("shutdown");

    let segments = segment::list(dir.path()).expect("list");
    assert!(segments.len() >= 5, "{} segments", segments.len());
    assert_eq!(stats.segments_created, segments.len() as u64);
    let seqs: Vec<u64> = segments.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=segments.len() as u64).collect::<Vec<_>>());
    for (_, path) in &segments {
        assert!(
            file_len(path) <= 700,
            "{} is {} bytes",
            path.display(),
            file_len(path)
        );
    }
    assert!(
        appended.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "positions increase"
    );
    let (_, replayed) = DecisionLog::open(small).expect("reopen");
    assert_eq!(replayed.records, appended);
}

#[tokio::test]
async fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tiny = options(dir.path());
    tiny.segment_bytes_max = 64;
    let (log, _) = DecisionLog::open(tiny).expect("open");
    let appended = append_numbered(&log, 3).await;
    log.shutdown().await.expect("shutdown");
    let positions: Vec<Position> = appended.iter().map(|(p, _)| *p).collect();
    let expected: Vec<Position> = (1..=3)
        .map(|segment| Position {
            segment,
            offset: HEADER_BYTES,
        })
        .collect();
    assert_eq!(positions, expected);
    assert_eq!(scan(dir.path()).expect("scan").records, appended);
}

#[tokio::test]
async fn rotation_fsyncs_the_old_segment_before_the_switch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut small = options(dir.path());
    small.segment_bytes_max = 700;
    let (log, _) = DecisionLog::open(small).expect("open");
    for n in 0..20 {
        log.append(full_record(RecordKind::End, n), Durability::Written)
            .await
            .expect("append");
    }
    let stats = log.stats();
    log.shutdown().await.expect("shutdown");
    assert!(stats.segments_created >= 3, "{stats:?}");
    assert_eq!(
        stats.fsyncs,
        stats.segments_created - 1,
        "only rotations fsync Written records: {stats:?}"
    );
    assert_eq!(
        stats.written_by_appenders,
        20 - (stats.segments_created - 1),
        "every record but those that rotate is written by its appender: {stats:?}"
    );
}

/// `tasks` concurrent tasks, one append each; returns the positions.
async fn append_concurrently(
    log: &DecisionLog,
    tasks: u64,
    durability: impl Fn(u64) -> Durability,
) -> Vec<Position> {
    let mut set = JoinSet::new();
    for n in 0..tasks {
        let log = log.clone();
        let durability = durability(n);
        set.spawn(async move {
            log.append(full_record(RecordKind::Commit, n), durability)
                .await
        });
    }
    let mut positions = Vec::new();
    while let Some(joined) = set.join_next().await {
        positions.push(joined.expect("task").expect("append"));
    }
    positions.sort();
    positions.dedup();
    assert_eq!(
        positions.len() as u64,
        tasks,
        "every record has its own position"
    );
    positions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_concurrent_forced_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    append_concurrently(&log, 1000, |_| Durability::Forced).await;
    let stats = log.stats();
    log.shutdown().await.expect("shutdown");
    eprintln!("group commit stats: {stats:?}");
    assert_eq!(stats.records_written, 1000);
    assert!(
        stats.fsyncs >= 1 && stats.fsyncs < stats.records_written,
        "{stats:?}"
    );
    assert!(
        stats.batches < stats.records_written,
        "more than one record per batch on average: {stats:?}"
    );
    assert!(stats.fsyncs <= stats.batches, "{stats:?}");
    assert_eq!(scan(dir.path()).expect("scan").records.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_group_commit_every_record_gets_its_own_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut naive = options(dir.path());
    naive.group_commit = false;
    let (log, _) = DecisionLog::open(naive).expect("open");
    let mixed = |n: u64| {
        if n.is_multiple_of(2) {
            Durability::Forced
        } else {
            Durability::Written
        }
    };
    append_concurrently(&log, 200, mixed).await;
    let stats = log.stats();
    log.shutdown().await.expect("shutdown");
    assert_eq!(stats.records_written, 200);
    assert_eq!(stats.fsyncs, 200, "{stats:?}");
    assert_eq!(stats.batches, 200, "{stats:?}");
    assert_eq!(stats.written_by_appenders, 0, "{stats:?}");
}

/// The writer idle, a Written record is written by `append` itself: in the
/// file, where the previous one ended, when `append` returns, and not
/// fsynced.
#[tokio::test]
async fn an_idle_writer_leaves_written_records_to_their_appenders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    let path = segment_path(dir.path(), 1);
    let mut appended = Vec::new();
    for n in 0..5 {
        let end = file_len(&path);
        let record = full_record(RecordKind::Begin, n);
        let position = log
            .append(record.clone(), Durability::Written)
            .await
            .expect("append");
        assert_eq!(
            position,
            Position {
                segment: 1,
                offset: end
            }
        );
        assert_eq!(file_len(&path), end + frame_len_of(&record));
        appended.push((position, record));
    }
    let stats = log.stats();
    assert_eq!(stats.written_by_appenders, 5, "{stats:?}");
    assert_eq!(
        (stats.records_written, stats.batches, stats.fsyncs),
        (5, 5, 0)
    );
    // A Forced record still goes to the writer, and its fsync covers them.
    let forced = log
        .append(full_record(RecordKind::Commit, 5), Durability::Forced)
        .await
        .expect("append");
    let stats = log.stats();
    assert_eq!(
        (stats.written_by_appenders, stats.fsyncs),
        (5, 1),
        "{stats:?}"
    );
    log.shutdown().await.expect("shutdown");
    let (_, replayed) = open(dir.path());
    assert_eq!(replayed.records[..5], appended);
    assert_eq!(replayed.records[5].0, forced);
}

/// Appenders writing their own records while the writer writes and fsyncs
/// batches: every record lands once, whole, at the position its append
/// returned, and the file is one sequence of good frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_and_forced_appends_at_once_each_land_whole_where_they_said() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    let mut set = JoinSet::new();
    for n in 0..2000u64 {
        let log = log.clone();
        set.spawn(async move {
            let durability = if n % 3 == 0 {
                Durability::Forced
            } else {
                Durability::Written
            };
            let record = full_record(RecordKind::Commit, n);
            let position = log.append(record.clone(), durability).await;
            (position.expect("append"), record)
        });
    }
    let mut appended = Vec::new();
    while let Some(joined) = set.join_next().await {
        appended.push(joined.expect("task"));
    }
    let stats = log.stats();
    log.shutdown().await.expect("shutdown");
    eprintln!("mixed appends: {stats:?}");
    appended.sort_by_key(|(position, _)| *position);
    let replayed = scan(dir.path()).expect("scan");
    assert_eq!(replayed.tail_cut, None);
    assert_eq!(replayed.records, appended);
    assert_eq!(stats.records_written, 2000);
    assert!(
        stats.written_by_appenders > 0,
        "the writer sleeps between batches: some appender found it idle: {stats:?}"
    );
}

/// Once the writer's last fsync is done, an appender that still holds the
/// tail writes nothing: its record goes to the stopped writer (`Closed`).
#[tokio::test]
async fn an_appender_holding_the_tail_writes_nothing_after_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    let tail = log.tail_for_test();
    log.shutdown().await.expect("shutdown");
    let end = file_len(&segment_path(dir.path(), 1));
    let frame = frame::encode(&full_record(RecordKind::Begin, 1)).expect("encode");
    let written = tail.lock().expect("lock").write_one(&frame);
    assert!(written.is_none(), "{written:?}");
    assert_eq!(
        file_len(&segment_path(dir.path(), 1)),
        end,
        "nothing written"
    );
}

/// A panic while the tail was locked (a broken invariant) poisons the log:
/// every later append and the shutdown get `Poisoned`, and nothing more is
/// written.
#[tokio::test]
async fn a_panic_while_writing_poisons_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    append_numbered(&log, 2).await;
    let tail = log.tail_for_test();
    let panicked = std::thread::spawn(move || {
        let _locked = tail.lock().expect("lock");
        panic!("an invariant of the file broke while writing");
    })
    .join();
    assert!(panicked.is_err());
    let end = file_len(&segment_path(dir.path(), 1));
    for durability in [Durability::Written, Durability::Forced, Durability::Written] {
        let after = log
            .append(full_record(RecordKind::End, 9), durability)
            .await;
        assert!(
            matches!(after, Err(LogError::Poisoned)),
            "{durability:?}: {after:?}"
        );
    }
    assert!(matches!(log.shutdown().await, Err(LogError::Poisoned)));
    assert_eq!(
        file_len(&segment_path(dir.path(), 1)),
        end,
        "nothing written"
    );
}

#[tokio::test]
async fn written_appends_are_not_fsynced_until_a_forced_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    for n in 0..3 {
        log.append(full_record(RecordKind::End, n), Durability::Written)
            .await
            .expect("append");
    }
    assert_eq!(log.stats().fsyncs, 0);
    assert_eq!(
        scan(dir.path()).expect("scan").records.len(),
        3,
        "written means visible in the file"
    );
    log.append(full_record(RecordKind::Commit, 3), Durability::Forced)
        .await
        .expect("append");
    assert_eq!(log.stats().fsyncs, 1);
    log.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn failed_fsync_poisons_the_log_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    let kept = append_numbered(&log, 2).await;
    log.fail_next_fsync();
    let failed = log
        .append(full_record(RecordKind::Commit, 2), Durability::Forced)
        .await;
    assert!(matches!(failed, Err(LogError::Poisoned)), "{failed:?}");
    for durability in [Durability::Written, Durability::Forced] {
        let later = log
            .append(full_record(RecordKind::End, 3), durability)
            .await;
        assert!(
            matches!(later, Err(LogError::Poisoned)),
            "{durability:?}: {later:?}"
        );
    }
    assert!(matches!(log.shutdown().await, Err(LogError::Poisoned)));
    // A restart replays what was acknowledged; the record whose fsync failed
    // may or may not be there.
    let (_, replayed) = open(dir.path());
    assert_eq!(replayed.records[..2], kept);
}

#[tokio::test]
async fn appends_after_shutdown_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(dir.path());
    log.shutdown().await.expect("shutdown");
    let end = file_len(&segment_path(dir.path(), 1));
    for durability in [Durability::Forced, Durability::Written] {
        let late = log
            .append(full_record(RecordKind::Begin, 1), durability)
            .await;
        assert!(
            matches!(late, Err(LogError::Closed)),
            "{durability:?}: {late:?}"
        );
    }
    assert_eq!(
        file_len(&segment_path(dir.path(), 1)),
        end,
        "nothing written"
    );
    assert!(matches!(log.shutdown().await, Err(LogError::Closed)));
}

#[tokio::test]
async fn scan_reports_a_torn_tail_without_modifying_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let appended = log_with_records(dir.path(), 4).await;
    let path = segment_path(dir.path(), 1);
    let last = appended[3].0;
    truncate(&path, last.offset + 5);
    let before = fs::read(&path).expect("read");
    let replayed = scan(dir.path()).expect("scan");
    assert_eq!(replayed.records, appended[..3]);
    assert_eq!(
        replayed.tail_cut,
        Some(TailCut {
            segment: path.clone(),
            offset: last.offset,
            bytes_cut: 5
        })
    );
    assert_eq!(
        fs::read(&path).expect("read"),
        before,
        "scan never truncates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_while_the_writer_appends_sees_a_growing_prefix_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut small = options(dir.path());
    small.segment_bytes_max = 4096;
    let (log, _) = DecisionLog::open(small.clone()).expect("open");
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for n in 0..400u64 {
                let durability = if n % 10 == 0 {
                    Durability::Forced
                } else {
                    Durability::Written
                };
                log.append(full_record(RecordKind::Begin, n), durability)
                    .await
                    .expect("append");
            }
        })
    };
    let mut seen = 0;
    while !writer.is_finished() {
        let replayed = scan(dir.path()).expect("a scan during appends never fails");
        assert!(
            replayed.records.len() >= seen,
            "the scanned prefix only grows"
        );
        seen = replayed.records.len();
        for (n, (_, record)) in replayed.records.iter().enumerate() {
            assert_eq!(
                record.at_unix_ms,
                1_760_000_000_000 + n as u64,
                "records in append order"
            );
        }
        tokio::task::yield_now().await;
    }
    writer.await.expect("writer task");
    log.shutdown().await.expect("shutdown");
    let (_, replayed) = DecisionLog::open(small).expect("reopen");
    assert_eq!(replayed.tail_cut, None, "scans left no cut behind");
    assert_eq!(replayed.records.len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_appends_reports_rates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (per_second, per_fsync) = bench_appends(dir.path(), 16, 200, true)
        .await
        .expect("bench");
    assert!(per_second > 0.0);
    assert!(per_fsync >= 1.0);
}

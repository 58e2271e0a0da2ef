//! `inspect follow`: prints records as they are appended, like `tail -f`,
//! with `log::LogTail` (which reads only what is new, follows rotation and
//! waits for a half-written frame). Stops on Ctrl-C or after
//! `--exit-after N` records. JSON: one `FollowJson` object per record.

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use booking_proto::log_v1::LogRecord;
use booking_proto::v1::Mode;
use serde::Serialize;
use uuid::Uuid;

use super::model::{self, RecordView};
use super::render::{self, or_dash};
use super::{log_error, FollowArgs, InspectError, Output};
use crate::log::{LogTail, Position, TailWait};

/// How long the tail may hold an incomplete frame before a note says so.
const WAIT_NOTE_AFTER: Duration = Duration::from_secs(2);

/// One followed record.
#[derive(Serialize)]
struct FollowJson {
    /// The txid, or null for a record whose txid is not 16 bytes.
    txid: Option<Uuid>,
    idempotency_key: String,
    mode: &'static str,
    one_phase: bool,
    shards: Vec<String>,
    #[serde(flatten)]
    record: RecordView,
}

pub(crate) async fn run(
    dir: &Path,
    args: &FollowArgs,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), InspectError> {
    let mut tail = if args.from_start {
        LogTail::from_start(dir)
    } else {
        LogTail::from_end(dir)
    }
    .map_err(|source| log_error(dir, source))?;
    let start = tail.position();
    let from = match start.offset {
        0 => format!("the start of segment {}", start.segment),
        offset => format!("segment {} offset {offset}", start.segment),
    };
    eprintln!("following {} from {from}; Ctrl-C stops", dir.display());
    let limit = args.exit_after.unwrap_or(u64::MAX);
    let mut printed = 0;
    let mut waiting = WaitNote::default();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while printed < limit {
        let poll = tail.poll().map_err(|source| log_error(dir, source))?;
        for (position, record) in poll.records.iter().take((limit - printed) as usize) {
            write_record(out, output, *position, record)?;
            printed += 1;
        }
        out.flush()?;
        waiting.update(poll.waiting);
        if printed >= limit {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(args.poll_interval) => {}
            _ = &mut ctrl_c => break,
        }
    }
    Ok(())
}

fn write_record(
    out: &mut dyn Write,
    output: Output,
    position: Position,
    record: &LogRecord,
) -> io::Result<()> {
    let view = model::record_view(position, record);
    let txid = Uuid::from_slice(&record.txid).ok();
    if output.json {
        let json = FollowJson {
            txid,
            idempotency_key: record.idempotency_key.clone(),
            mode: model::mode_name(Mode::try_from(record.mode).unwrap_or(Mode::TwoPhase)),
            one_phase: record.one_phase,
            shards: record.shards.clone(),
            record: view,
        };
        return render::json_line(out, &json);
    }
    let txid = txid.map_or_else(|| "(bad txid)".to_string(), |t| t.to_string());
    writeln!(
        out,
        "{}  {}@{}  {:<10}  {}  key={}  {}",
        render::timestamp(view.at_unix_ms),
        view.segment_file,
        view.offset,
        view.kind.to_ascii_uppercase(),
        txid,
        or_dash(&record.idempotency_key),
        view.summary
    )
}

/// Says once on stderr when the tail holds the same incomplete frame for
/// longer than `WAIT_NOTE_AFTER`: a torn tail left by a crash, most likely.
#[derive(Default)]
struct WaitNote {
    current: Option<(TailWait, Instant)>,
    noted: bool,
}

impl WaitNote {
    fn update(&mut self, waiting: Option<TailWait>) {
        let same = matches!((&self.current, &waiting), (Some((old, _)), Some(new)) if old.segment == new.segment && old.offset == new.offset);
        if !same {
            self.current = waiting.map(|wait| (wait, Instant::now()));
            self.noted = false;
            return;
        }
        let Some((wait, since)) = &self.current else {
            return;
        };
        if !self.noted && since.elapsed() >= WAIT_NOTE_AFTER {
            self.noted = true;
            eprintln!(
                "note: {} holds {} bytes at offset {} that are not a whole record ({}); waiting for the writer to finish it, or for a coordinator restart to cut it as a torn tail",
                wait.segment.display(),
                wait.bytes,
                wait.offset,
                wait.reason
            );
        }
    }
}

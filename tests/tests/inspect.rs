//! DESIGN.md "The decision log" (developers read it with the coordinator's
//! own inspect command): `coordinator inspect` run as a subprocess, the way
//! an operator runs it, against the log of a real cluster.
//!
//! | scenario                                        | what the inspector must say                         |
//! |-------------------------------------------------|-----------------------------------------------------|
//! | bookings committed and one sold out             | list/show/stats: states, shards, legs, counts       |
//! | crash after the COMMIT is logged                | in_doubt; `show --live`: shards PREPARED, coordinator down; then one shard down; committed after recovery |
//! | a torn half frame at the tail                   | verify exits 2 naming segment + offset; list works  |
//! | a flipped byte in a record mid-log              | verify exits 3 naming segment + offset; list/stats fail naming it |
//! | records appended while `follow` runs            | exactly those records                               |
//! | bad input                                       | non-zero exit and a message saying what to fix      |
//!
//! The JSON output is read with a small reader in this file, and segment
//! frames with the documented framing (`coordinator/src/log/mod.rs`, "On
//! disk"), so that the assertions do not trust the code under test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use booking_client::cluster::COORDINATOR_BINARY;
use booking_client::{find_binaries, Cluster, ProcessId};
use booking_proto::v1::{BookRequest, LegRequest, Outcome};
use booking_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const SEGMENT: &str = "0000000000000001.seg";
const SEGMENT_HEADER_BYTES: usize = 8;
const FRAME_HEADER_BYTES: usize = 8;
/// `inspect verify` exit codes (coordinator/src/inspect/verify.rs).
const EXIT_TORN_TAIL: i32 = 2;
const EXIT_CORRUPT: i32 = 3;
/// A usage error of the coordinator binary (sysexits EX_USAGE).
const EXIT_USAGE: i32 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_and_stats_describe_committed_and_aborted_bookings() {
    init_tracing();
    let test = start(Db::Sqlite).await;
    let cluster = &test.cluster;
    let client = cluster.client().await.expect("connect");
    let mut committed = Vec::new();
    for n in 0..2 {
        let request = two_shard_request(cluster, &format!("LS{n}-"), &format!("list-{n}")).await;
        let reply = client.book(request.clone()).await.expect("book");
        assert_eq!(reply.outcome, Outcome::Committed as i32, "{reply:?}");
        committed.push(request);
    }
    cluster
        .create_flight("SOLO1", 3, "AB")
        .await
        .expect("create");
    let one_phase = single_leg("SOLO1", 1, "list-one-phase");
    let reply = client.book(one_phase.clone()).await.expect("book");
    assert_eq!(reply.outcome, Outcome::Committed as i32, "{reply:?}");
    committed.push(one_phase.clone());
    let sold_out = BookRequest {
        idempotency_key: "list-sold-out".into(),
        legs: vec![
            leg(&committed[0].legs[0].flight_id, 5),
            leg(&committed[0].legs[1].flight_id, 1),
        ],
        ..Default::default()
    };
    let reply = client.book(sold_out.clone()).await.expect("book");
    assert_eq!(reply.outcome, Outcome::Aborted as i32, "{reply:?}");
    let inspect = Inspector::new(cluster).await;
    let lines = inspect.wait_all_ended(4).await;

    tracing::info!("phase: list --json names every booking with its state, shards and legs");
    for request in &committed {
        let txn = by_key(&lines, &request.idempotency_key);
        assert_eq!(txn.field("state").str(), "committed", "{txn:?}");
        assert_eq!(txn.field("outcome").str(), "committed");
        assert_eq!(txn.field("mode").str(), "two_phase");
        assert_eq!(
            txn.field("shards").strings(),
            expected_shards(cluster, request)
        );
        let flights: Vec<String> = txn
            .field("legs")
            .array()
            .iter()
            .map(|l| l.field("flight_id").str().to_string())
            .collect();
        let requested: Vec<String> = request.legs.iter().map(|l| l.flight_id.clone()).collect();
        assert_eq!(flights, requested);
        for leg in txn.field("legs").array() {
            assert_eq!(
                leg.field("seats_assigned").array().len() as u64,
                leg.field("seat_count").u64()
            );
        }
        assert_eq!(txn.field("recovery_case").str(), "ended");
        assert!(txn.field("age_ms").u64() < 120_000, "{txn:?}");
    }
    assert!(by_key(&lines, "list-one-phase").field("one_phase").bool());
    assert!(!by_key(&lines, "list-0").field("one_phase").bool());
    let aborted = by_key(&lines, "list-sold-out");
    assert_eq!(aborted.field("state").str(), "aborted");
    let abort = aborted.field("abort");
    assert_eq!(abort.field("reason").str(), "sold_out", "{abort:?}");
    assert_eq!(abort.field("flight_id").str(), committed[0].legs[0].flight_id);

    tracing::info!("phase: list filters, as plain text");
    let run = inspect.run(&["list", "--state", "committed"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    println!(
        "$ coordinator inspect --log-dir ... list --state committed\n{}",
        run.stdout
    );
    for key in ["list-0", "list-1", "list-one-phase"] {
        assert!(run.stdout.contains(key), "{key} in {run:?}");
    }
    assert!(!run.stdout.contains("list-sold-out"), "{run:?}");
    assert!(
        run.stdout.contains("3 of 4 transactions matched"),
        "{run:?}"
    );
    let flight = &committed[1].legs[0].flight_id;
    let run = inspect.run(&["list", "--flight", flight, "--json"]).await;
    assert_eq!(keys_of(&run.json_lines()), ["list-1"]);
    let run = inspect
        .run(&["list", "--state", "aborted,in_doubt", "--json"])
        .await;
    assert_eq!(keys_of(&run.json_lines()), ["list-sold-out"]);
    let run = inspect
        .run(&["list", "--newest-first", "--limit", "2", "--json"])
        .await;
    assert_eq!(
        keys_of(&run.json_lines()),
        ["list-sold-out", "list-one-phase"]
    );

    tracing::info!("phase: show prints the timeline with times and positions");
    let run = inspect.run(&["show", "list-0"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    println!(
        "$ coordinator inspect --log-dir ... show list-0\n{}",
        run.stdout
    );
    let txid = by_key(&lines, "list-0").field("txid").str().to_string();
    assert!(
        run.stdout.contains(&format!("transaction {txid}")),
        "{run:?}"
    );
    assert!(run.stdout.contains("state:    committed"), "{run:?}");
    let timeline: Vec<&str> = run.stdout.lines().filter(|l| l.contains(".seg@")).collect();
    assert_eq!(timeline.len(), 3, "{run:?}");
    for (line, kind) in timeline.iter().zip(["BEGIN", "COMMIT", "END"]) {
        assert!(is_rfc3339_millis_utc(&line[..24]), "{line}");
        assert!(
            line.contains(kind) && line.contains(SEGMENT),
            "{kind} in {line}"
        );
    }
    assert!(
        run.stdout
            .contains("recovery:  nothing: every shard acknowledged"),
        "{run:?}"
    );
    let show = inspect
        .run(&["show", &txid, "--json"])
        .await
        .json_lines()
        .remove(0);
    let records = show.field("records").array();
    let kinds: Vec<&str> = records.iter().map(|r| r.field("kind").str()).collect();
    assert_eq!(kinds, ["begin", "commit", "end"]);
    let offsets: Vec<u64> = records.iter().map(|r| r.field("offset").u64()).collect();
    let frames = frame_offsets(&std::fs::read(inspect.segment()).expect("read segment"));
    assert!(
        offsets.iter().all(|o| frames.contains(o)),
        "{offsets:?} are frame starts {frames:?}"
    );
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");

    tracing::info!("phase: stats counts match the log");
    let stats = inspect
        .run(&["stats", "--json"])
        .await
        .json_lines()
        .remove(0);
    let kinds = stats.field("records_by_kind");
    let counted: Vec<u64> = ["begin", "commit", "abort", "end", "saga_begin"]
        .iter()
        .map(|k| kinds.field(k).u64())
        .collect();
    assert_eq!(counted, [4, 3, 1, 4, 0], "{stats:?}");
    assert_eq!(stats.field("records_total").u64(), 12);
    assert_eq!(
        stats.field("records_total").u64() as usize,
        frames.len(),
        "every frame on disk is counted"
    );
    let states = stats.field("transactions_by_state");
    assert_eq!(
        (
            states.field("committed").u64(),
            states.field("aborted").u64(),
            states.field("in_doubt").u64()
        ),
        (3, 1, 0)
    );
    assert_eq!(stats.field("segments_count").u64(), 1);
    assert_eq!(
        stats.field("segments_bytes_total").u64(),
        std::fs::metadata(inspect.segment()).expect("stat").len()
    );
    assert_eq!(stats.field("tail").field("status").str(), "clean");
    assert!(stats.field("oldest_in_doubt").is_null());
    let run = inspect.run(&["verify"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_commit_is_logged_is_in_doubt_until_recovery_finishes_it() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let cluster = &mut test.cluster;
    let request = BookRequest {
        timeout_ms: 20_000,
        ..two_shard_request(cluster, "DOUBT", "in-doubt").await
    };
    let shards = expected_shards(cluster, &request);

    tracing::info!("phase: the coordinator dies right after forcing COMMIT");
    cluster.set_env(
        ProcessId::Coordinator,
        "FAILPOINTS",
        "coordinator::after_commit_logged=return",
    );
    cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart armed");
    let client = cluster.client().await.expect("connect");
    let first = client.book(request.clone()).await;
    assert!(first.is_err(), "no reply before the crash: {first:?}");
    let status = cluster
        .wait_exit(ProcessId::Coordinator, Duration::from_secs(10))
        .await
        .expect("wait");
    assert!(status.is_some(), "the coordinator must have crashed");

    let inspect = Inspector::new(cluster).await;
    let run = inspect
        .run(&["list", "--state", "in_doubt", "--json"])
        .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines = run.json_lines();
    assert_eq!(keys_of(&lines), ["in-doubt"], "{run:?}");
    let txn = &lines[0];
    assert_eq!(txn.field("outcome").str(), "committed");
    assert_eq!(txn.field("recovery_case").str(), "redrive_commit");
    assert_eq!(txn.field("shards").strings(), shards);
    let run = inspect.run(&["list", "--state", "open"]).await;
    println!(
        "$ coordinator inspect --config coordinator.toml list --state open\n{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("in-doubt") && run.stdout.contains("in_doubt"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("1 of 1 transactions matched"),
        "{run:?}"
    );
    let stats = inspect
        .run(&["stats", "--json"])
        .await
        .json_lines()
        .remove(0);
    assert_eq!(
        stats.field("oldest_in_doubt").field("idempotency_key").str(),
        "in-doubt"
    );
    let run = inspect.run(&["stats"]).await;
    println!(
        "$ coordinator inspect --config coordinator.toml stats\n{}",
        run.stdout
    );
    let txid = txn.field("txid").str();
    assert!(
        run.stdout
            .contains(&format!("oldest in_doubt:    {txid} key=in-doubt begun ")),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("in_progress 0, in_doubt 1, committed 0"),
        "{run:?}"
    );

    tracing::info!("phase: show --live: both shards PREPARED, the coordinator down");
    let run = inspect.run(&["show", "in-doubt", "--live"]).await;
    assert_eq!(
        run.code,
        Some(0),
        "unreachable services are findings, not errors: {run:?}"
    );
    println!(
        "$ coordinator inspect --config coordinator.toml show in-doubt --live\n{}",
        run.stdout
    );
    assert!(run.stdout.contains("state:    in_doubt"), "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "a restart re-sends COMMIT to {}, then logs END",
            shards.join(", ")
        )),
        "{run:?}"
    );
    assert!(
        run.stdout.contains(&format!(
            "coordinator at {} unreachable",
            cluster.coordinator_url()
        )),
        "{run:?}"
    );
    for shard in &shards {
        assert!(
            run.stdout
                .contains(&format!("{shard} still PREPARED since")),
            "{shard} in {run:?}"
        );
    }
    assert!(
        run.stdout.contains(&format!(
            "stuck in doubt: waiting for {} to acknowledge COMMIT; the coordinator is down",
            shards.join(", ")
        )),
        "{run:?}"
    );
    let live = inspect
        .run(&["show", "in-doubt", "--live", "--json"])
        .await
        .json_lines()
        .remove(0);
    let live = live.field("live");
    assert_eq!(live.field("coordinator").field("status").str(), "unreachable");
    let states: Vec<&str> = live
        .field("shards")
        .array()
        .iter()
        .map(|s| s.field("state").str())
        .collect();
    assert_eq!(states, ["prepared", "prepared"], "{live:?}");

    tracing::info!("phase: one shard down, the coordinator back: COMMIT reaches the other");
    let down = ProcessId::Participant(shard_index(&shards[1]));
    cluster.kill(down).await.expect("kill a participant");
    cluster.remove_env(ProcessId::Coordinator, "FAILPOINTS");
    cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("restart");
    let live = inspect
        .wait_json(
            &["show", "in-doubt", "--live", "--json"],
            "the up shard to commit",
            |show| {
                show.field("live").field("shards").array()[0]
                    .field("state")
                    .as_str()
                    == Some("committed")
            },
        )
        .await;
    let run = inspect.run(&["show", "in-doubt", "--live"]).await;
    println!(
        "$ coordinator inspect --config coordinator.toml show in-doubt --live   # {} down\n{}",
        shards[1], run.stdout
    );
    assert_eq!(live.field("state").str(), "in_doubt", "{live:?}");
    assert!(run.stdout.contains("committed, not ended"), "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("{} COMMITTED since", shards[0])),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains(&format!("{} unreachable at", shards[1])),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains(&format!("waiting for {} to acknowledge COMMIT", shards[1])),
        "{run:?}"
    );

    tracing::info!("phase: the shard is back; recovery ends the transaction");
    cluster
        .restart(down)
        .await
        .expect("restart the participant");
    inspect
        .wait_json(
            &["show", "in-doubt", "--json"],
            "the transaction to end",
            |show| show.field("state").as_str() == Some("committed"),
        )
        .await;
    let run = inspect.run(&["show", "in-doubt", "--live"]).await;
    assert!(
        run.stdout.contains("not stuck: the transaction has ended"),
        "{run:?}"
    );
    for shard in &shards {
        assert!(
            run.stdout.contains(&format!("{shard} COMMITTED since")),
            "{shard} in {run:?}"
        );
    }
    let run = inspect.run(&["list", "--state", "open", "--json"]).await;
    assert!(run.json_lines().is_empty(), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_named_by_verify_and_list_still_reads_the_log() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let cluster = &mut test.cluster;
    let request = two_shard_request(cluster, "TT", "torn-tail").await;
    let client = cluster.client().await.expect("connect");
    client.book(request).await.expect("book");
    let inspect = Inspector::new(cluster).await;
    inspect.wait_all_ended(1).await;
    cluster.stop(ProcessId::Coordinator).await.expect("stop");

    // A frame whose length says 100 payload bytes, followed by only 10.
    let segment = inspect.segment();
    let whole = std::fs::read(&segment).expect("read");
    let torn_at = whole.len() as u64;
    let mut torn = whole.clone();
    torn.extend_from_slice(&100u32.to_le_bytes());
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    torn.extend_from_slice(&[0x10; 10]);
    std::fs::write(&segment, &torn).expect("write the torn tail");

    let run = inspect.run(&["verify"]).await;
    println!(
        "$ coordinator inspect --log-dir ... verify   # torn tail\n{}",
        run.stdout
    );
    assert_eq!(run.code, Some(EXIT_TORN_TAIL), "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "{SEGMENT}  {} bytes  3 records  TORN TAIL at offset {torn_at}",
            torn.len()
        )),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("the next coordinator start cuts it"),
        "{run:?}"
    );
    let report = inspect
        .run(&["verify", "--json"])
        .await
        .parse_lines()
        .remove(0);
    assert_eq!(report.field("verdict").str(), "torn_tail");
    let damage = report.field("segments").array()[0].field("damage");
    assert_eq!(
        (
            damage.field("offset").u64(),
            damage.field("bytes_from_offset").u64()
        ),
        (torn_at, 18)
    );

    let run = inspect.run(&["list", "--json"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(keys_of(&run.json_lines()), ["torn-tail"]);
    assert!(
        run.stderr
            .contains(&format!("18 bytes at offset {torn_at}")),
        "{run:?}"
    );
    let stats = inspect
        .run(&["stats", "--json"])
        .await
        .json_lines()
        .remove(0);
    let tail = stats.field("tail");
    assert_eq!(
        (
            tail.field("status").str(),
            tail.field("offset").u64(),
            tail.field("bytes").u64()
        ),
        ("torn", torn_at, 18)
    );
    assert_eq!(
        std::fs::read(&segment).expect("read"),
        torn,
        "inspect never writes"
    );

    // What verify promised: a restart cuts the torn tail, and nothing else.
    cluster
        .restart(ProcessId::Coordinator)
        .await
        .expect("a torn tail does not stop the coordinator");
    cluster.stop(ProcessId::Coordinator).await.expect("stop");
    let run = inspect.run(&["verify"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(std::fs::read(&segment).expect("read"), whole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_mid_log_is_named_by_verify_and_list_and_stats_refuse() {
    init_tracing();
    let mut test = start(Db::Sqlite).await;
    let cluster = &mut test.cluster;
    let client = cluster.client().await.expect("connect");
    for n in 0..2 {
        let request = two_shard_request(cluster, &format!("CR{n}-"), &format!("corrupt-{n}")).await;
        client.book(request).await.expect("book");
    }
    let inspect = Inspector::new(cluster).await;
    inspect.wait_all_ended(2).await;
    cluster.stop(ProcessId::Coordinator).await.expect("stop");

    // Flip a payload byte of the second frame, which others follow.
    let segment = inspect.segment();
    let mut bytes = std::fs::read(&segment).expect("read");
    let frames = frame_offsets(&bytes);
    assert!(frames.len() >= 6, "{frames:?}");
    let victim = frames[1];
    bytes[victim as usize + FRAME_HEADER_BYTES + 3] ^= 0x40;
    std::fs::write(&segment, &bytes).expect("write the damage");

    let run = inspect.run(&["verify"]).await;
    println!(
        "$ coordinator inspect --log-dir ... verify   # flipped byte\n{}",
        run.stdout
    );
    assert_eq!(run.code, Some(EXIT_CORRUPT), "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "{SEGMENT}  {} bytes  1 records  CORRUPT at offset {victim}: CRC32C mismatch",
            bytes.len()
        )),
        "{run:?}"
    );
    assert!(
        run.stdout.contains(&format!(
            "corruption at {SEGMENT} at byte offset {victim}: the coordinator refuses to start"
        )),
        "{run:?}"
    );
    let report = inspect
        .run(&["verify", "--json"])
        .await
        .parse_lines()
        .remove(0);
    assert_eq!(report.field("verdict").str(), "corrupt");
    assert_eq!(report.field("exit_code").u64(), EXIT_CORRUPT as u64);

    let named = format!(
        "corrupt decision log segment {} at byte offset {victim}",
        segment.display()
    );
    for command in [&["list"][..], &["stats", "--json"], &["show", "corrupt-0"]] {
        let run = inspect.run(command).await;
        println!(
            "$ coordinator inspect --log-dir ... {}\n{}",
            command.join(" "),
            run.stderr
        );
        assert_eq!(run.code, Some(1), "{command:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{command:?}: {run:?}");
        assert!(
            run.stderr.contains(&named),
            "{command:?}: {named:?} in {run:?}"
        );
        assert!(
            run.stderr.contains("inspect verify"),
            "{command:?}: {run:?}"
        );
        assert!(!run.stderr.contains("panicked"), "{run:?}");
    }
    assert_eq!(
        std::fs::read(&segment).expect("read"),
        bytes,
        "inspect never writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_the_records_appended_after_it_started() {
    init_tracing();
    let test = start(Db::Sqlite).await;
    let cluster = &test.cluster;
    let client = cluster.client().await.expect("connect");
    let before = two_shard_request(cluster, "FB", "before-follow").await;
    client.book(before).await.expect("book");
    let inspect = Inspector::new(cluster).await;
    inspect.wait_all_ended(1).await;

    let mut follow = inspect.command(&[
        "follow",
        "--exit-after",
        "3",
        "--json",
        "--poll-interval",
        "50ms",
    ]);
    let mut child = follow
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn follow");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.expect("read stderr") {
            if line.starts_with("following ") {
                return line;
            }
        }
        panic!("follow exited before saying where it starts")
    })
    .await
    .expect("follow says where it starts");
    assert!(ready.contains("from segment 1 offset"), "{ready}");

    let after = two_shard_request(cluster, "FA", "after-follow").await;
    let reply = client.book(after).await.expect("book");
    let mut stdout = String::new();
    let mut out = child.stdout.take().expect("stdout");
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        out.read_to_string(&mut stdout).await.expect("read stdout");
        child.wait().await.expect("wait")
    })
    .await
    .expect("follow exits after 3 records");
    println!("$ coordinator inspect --log-dir ... follow --exit-after 3 --json\n{stdout}");
    assert!(status.success(), "{status}");
    let lines: Vec<Json> = stdout.lines().map(parse_json).collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l.field("kind").str()).collect();
    assert_eq!(kinds, ["begin", "commit", "end"], "{stdout}");
    assert!(
        lines.iter().all(|l| l.field("txid").str() == reply.txid),
        "{stdout}"
    );
    assert_eq!(lines[0].field("idempotency_key").str(), "after-follow");
    assert!(!stdout.contains("before-follow"), "{stdout}");

    let run = inspect
        .run(&["follow", "--from-start", "--exit-after", "2"])
        .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let printed: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(printed.len(), 2, "{run:?}");
    assert!(
        printed[0].contains(&format!("{SEGMENT}@8")) && printed[0].contains("BEGIN"),
        "{run:?}"
    );
    assert!(printed[0].contains("key=before-follow"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_non_zero_saying_what_to_fix() {
    init_tracing();
    let bin = find_binaries()
        .await
        .expect("binaries")
        .join(COORDINATOR_BINARY);
    let dir = tempfile::tempdir().expect("temp dir");
    let log_dir = dir.path().to_str().expect("utf-8 path").to_string();
    let cases: [(&[&str], i32, &str); 7] = [
        (
            &[
                "--log-dir",
                &log_dir,
                "show",
                "0190b2c4-7d1e-7c3a-9f00-000000000000",
            ],
            1,
            "no transaction has txid or idempotency key \"0190b2c4-7d1e-7c3a-9f00-000000000000\"",
        ),
        (
            &["--log-dir", &log_dir, "show", "no-such-key"],
            1,
            "removed once the retention window has passed",
        ),
        (
            &[
                "--log-dir",
                &log_dir,
                "show",
                "0190b2c4-7d1e-7c3a-9f00-00000000000Z",
            ],
            1,
            "is not a valid txid",
        ),
        (
            &["--log-dir", &log_dir, "list", "--older-than", "soon"],
            EXIT_USAGE,
            "write a duration like 30s",
        ),
        (
            &["--log-dir", &log_dir, "list", "--state", "stuck"],
            EXIT_USAGE,
            "possible values: in_progress",
        ),
        (
            &["--log-dir", "/no/such/dir", "list"],
            1,
            "does not exist or is not a directory",
        ),
        (
            &["--log-dir", &log_dir, "show", "x", "--live"],
            1,
            "needs --config",
        ),
    ];
    for (args, code, message) in cases {
        let run = run_inspect(&bin, args).await;
        assert_eq!(run.code, Some(code), "{args:?}: {run:?}");
        assert!(
            run.stderr.contains(message),
            "{args:?}: {message:?} in {run:?}"
        );
        assert!(!run.stderr.contains("panicked"), "{args:?}: {run:?}");
    }
    let run = run_inspect(&bin, &["list"]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("give --log-dir DIR"), "{run:?}");
    let run = run_inspect(&bin, &["--log-dir", &log_dir, "verify"]).await;
    assert_eq!(run.code, Some(0), "an empty log is clean: {run:?}");
}

/// Runs `coordinator inspect` against one cluster's log and configuration.
struct Inspector {
    bin: PathBuf,
    config: PathBuf,
    log_dir: PathBuf,
}

impl Inspector {
    async fn new(cluster: &Cluster) -> Inspector {
        let bin = find_binaries()
            .await
            .expect("binaries")
            .join(COORDINATOR_BINARY);
        Inspector {
            bin,
            config: cluster.config_path(),
            log_dir: cluster.data_dir().join("coordinator-log"),
        }
    }

    fn segment(&self) -> PathBuf {
        self.log_dir.join(SEGMENT)
    }

    /// `--config` (the log directory and the addresses) then `args`.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .arg("inspect")
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Run {
        let output = self
            .command(args)
            .output()
            .await
            .expect("run coordinator inspect");
        Run::of(output)
    }

    /// Polls `args` (one JSON object) until `done` holds, for up to 30 s.
    async fn wait_json(&self, args: &[&str], what: &str, done: impl Fn(&Json) -> bool) -> Json {
        let mut last = None;
        for _ in 0..300 {
            let run = self.run(args).await;
            if let Some(json) = run.json_lines().into_iter().next() {
                if done(&json) {
                    return json;
                }
            }
            last = Some(run);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("waited 30 s for {what}: {last:?}")
    }

    /// Waits until the log holds `count` transactions, all ended (phase 2
    /// writes END after the reply); returns `list --json`.
    async fn wait_all_ended(&self, count: usize) -> Vec<Json> {
        for _ in 0..300 {
            let lines = self.run(&["list", "--json"]).await.json_lines();
            let ended = lines
                .iter()
                .all(|l| l.field("ended_at_unix_ms").as_u64().is_some());
            if lines.len() == count && ended {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the log never held {count} ended transactions");
    }
}

async fn run_inspect(bin: &Path, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(bin)
        .arg("inspect")
        .args(args)
        .output()
        .await
        .expect("run coordinator inspect");
    Run::of(output)
}

/// One finished run of the inspector.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(output: std::process::Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The JSON lines of a run that succeeded.
    fn json_lines(&self) -> Vec<Json> {
        assert_eq!(self.code, Some(0), "{self:?}");
        self.parse_lines()
    }

    /// The JSON lines, whatever the exit code (`verify` exits 2 or 3).
    fn parse_lines(&self) -> Vec<Json> {
        self.stdout.lines().map(parse_json).collect()
    }
}

fn leg(flight: &str, seats: u32) -> LegRequest {
    LegRequest {
        flight_id: flight.into(),
        seat_count: seats,
        ..Default::default()
    }
}

fn single_leg(flight: &str, seats: u32, key: &str) -> BookRequest {
    BookRequest {
        idempotency_key: key.into(),
        legs: vec![leg(flight, seats)],
        ..Default::default()
    }
}

/// The sorted shard names of a request's flights, as the log records them.
fn expected_shards(cluster: &Cluster, request: &BookRequest) -> Vec<String> {
    let mut shards: Vec<String> = request
        .legs
        .iter()
        .map(|l| format!("s{}", cluster.shard_of(&l.flight_id)))
        .collect();
    shards.sort();
    shards.dedup();
    shards
}

fn shard_index(name: &str) -> usize {
    name.trim_start_matches('s')
        .parse()
        .expect("shards are named s<i>")
}

fn by_key<'a>(lines: &'a [Json], key: &str) -> &'a Json {
    lines
        .iter()
        .find(|l| l.field("idempotency_key").as_str() == Some(key))
        .unwrap_or_else(|| panic!("no transaction with key {key} in {lines:?}"))
}

fn keys_of(lines: &[Json]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.field("idempotency_key").str().to_string())
        .collect()
}

/// `2026-01-05T10:11:12.345Z`.
fn is_rfc3339_millis_utc(text: &str) -> bool {
    let pattern = "dddd-dd-ddTdd:dd:dd.dddZ";
    text.len() == pattern.len()
        && text
            .chars()
            .zip(pattern.chars())
            .all(|(c, p)| if p == 'd' { c.is_ascii_digit() } else { c == p })
}

/// Frame start offsets of a segment, by the documented framing (no CRC check).
fn frame_offsets(bytes: &[u8]) -> Vec<u64> {
    assert_eq!(&bytes[..4], b"BKLG", "segment header");
    let mut offsets = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while at + FRAME_HEADER_BYTES <= bytes.len() {
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if at + FRAME_HEADER_BYTES + length > bytes.len() {
            break;
        }
        offsets.push(at as u64);
        at += FRAME_HEADER_BYTES + length;
    }
    offsets
}

/// The inspector's JSON lines, read with serde_json.
type Json = serde_json::Value;

fn parse_json(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Panicking accessors, so a missing field names itself.
trait Fields {
    fn field(&self, key: &str) -> &Json;
    fn str(&self) -> &str;
    fn u64(&self) -> u64;
    fn bool(&self) -> bool;
    fn array(&self) -> &[Json];
    fn strings(&self) -> Vec<String>;
}

impl Fields for Json {
    fn field(&self, key: &str) -> &Json {
        self.get(key)
            .unwrap_or_else(|| panic!("no field {key} in {self:?}"))
    }

    fn str(&self) -> &str {
        self.as_str()
            .unwrap_or_else(|| panic!("not a string: {self:?}"))
    }

    fn u64(&self) -> u64 {
        self.as_u64()
            .unwrap_or_else(|| panic!("not an unsigned integer: {self:?}"))
    }

    fn bool(&self) -> bool {
        self.as_bool()
            .unwrap_or_else(|| panic!("not a bool: {self:?}"))
    }

    fn array(&self) -> &[Json] {
        self.as_array()
            .unwrap_or_else(|| panic!("not an array: {self:?}"))
    }

    fn strings(&self) -> Vec<String> {
        self.array().iter().map(|s| s.str().to_string()).collect()
    }
}

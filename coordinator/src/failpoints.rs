//! Named crash points for the fault-injection suite (DESIGN.md "Failures we
//! test by causing them").
//!
//! Armed at run time with the `FAILPOINTS` environment variable, read once
//! at start (`FAILPOINTS="coordinator::after_commit_logged=return"`). An armed
//! point makes the process exit at once with status 137, as SIGKILL would:
//! no reply, no flush, no phase 2. An unarmed point costs a read lock and a
//! map lookup in the `fail` crate's registry: nothing next to an RPC.
//!
//! | name                               | where                                         |
//! |------------------------------------|-----------------------------------------------|
//! | `coordinator::after_begin`         | 2PC BEGIN written, before any PREPARE is sent |
//! | `coordinator::after_prepares_sent` | every PREPARE sent, first vote not yet counted|
//! | `coordinator::after_commit_logged` | COMMIT fsynced, before anyone hears of it     |
//! | `coordinator::after_first_commit`  | one shard acknowledged COMMIT, others pending |
//! | `coordinator::before_end`          | every shard acknowledged, END not written     |
//! | `coordinator::log_torn_write`      | a log batch is half written, fsynced; exit    |
//! | `coordinator::log_fsync_fails`     | a log fsync fails: the log is poisoned        |
//! | `coordinator::during_replay`       | the log is replayed, health still NOT_SERVING |
//!
//! The two log points live in `log/writer.rs` (see the `log` module docs).
//!
//! `return` exits; `sleep(ms)` pauses the task there instead (the fail
//! crate's own action), e.g. to widen a window for a SIGKILL.

/// Exits the process when the named failpoint is armed.
pub fn crash_point(name: &str) {
    fail::eval(name, |_| {
        eprintln!("failpoint {name} fired: exiting as if killed");
        std::process::exit(137)
    });
}

/// A point where only `sleep(ms)` makes sense (a pause, never an exit):
/// `coordinator::during_replay` keeps the coordinator replaying, health
/// NOT_SERVING, for that long. Blocking: call it off the runtime's workers.
pub fn pause_point(name: &str) {
    // `sleep` pauses inside eval; any other action is ignored here.
    let _ = fail::eval(name, |_| ());
}

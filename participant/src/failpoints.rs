//! Named crash points for the fault-injection suite, armed at run time with
//! `FAILPOINTS` (read once at start). An armed point exits the process at
//! once with status 137, as SIGKILL would.
//!
//! | name                               | where                                                |
//! |------------------------------------|------------------------------------------------------|
//! | `participant::after_prepare_commit`| YES vote durable (local commit), before it is sent   |
//! | `participant::after_commit_applied`| COMMIT applied and durable, before the acknowledgement|
//! | `participant::before_compensation_commit`| a saga's COMPENSATE applied in the local transaction, not yet committed |

/// Exits the process when the named failpoint is armed.
pub fn crash_point(name: &str) {
    fail::eval(name, |_| {
        eprintln!("failpoint {name} fired: exiting as if killed");
        std::process::exit(137)
    });
}

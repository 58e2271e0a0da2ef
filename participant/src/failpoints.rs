//! Named crash points for the fault-injection suite, armed at run time with
//! `FAILPOINTS` (read once at start). An armed point exits the process at
//! once with status 137, as SIGKILL would.
//!
//! | name                               | where                                                |
//! |------------------------------------|------------------------------------------------------|
//! | `participant::after_prepare_commit`| YES vote durable (local commit), before it is sent   |
//! | `participant::after_commit_applied`| COMMIT applied and durable, before the acknowledgement|
//! | `participant::before_compensation_commit`| a saga's COMPENSATE applied in the local transaction, not yet committed |
//!
//! One point panics instead, as a bug would: `participant::batch_panics`
//! panics in a batch after the batch's writes and before its local commit;
//! armed with `return(<txid>)` only in a batch that holds an operation for
//! that txid, armed with `return` in any batch.

/// Exits the process when the named failpoint is armed.
pub fn crash_point(name: &str) {
    fail::eval(name, |_| {
        eprintln!("failpoint {name} fired: exiting as if killed");
        std::process::exit(137)
    });
}

/// Panics when `participant::batch_panics` is armed: with `return`, in
/// any batch; with `return(<txid>)`, when one of `ops` is for that txid.
pub fn batch_panic_point(ops: &[crate::op::Op]) {
    fail::eval("participant::batch_panics", |txid| {
        let holds = |txid: &str| {
            ops.iter()
                .any(|op| op.txid().is_some_and(|t| t.as_str() == txid))
        };
        match txid {
            None => panic!("failpoint participant::batch_panics fired in a batch"),
            Some(txid) if holds(&txid) => {
                panic!("failpoint participant::batch_panics fired in a batch holding txid {txid}")
            }
            Some(_) => {}
        }
    });
}

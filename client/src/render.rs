//! Human-readable and JSON renderings of the coordinator's and the
//! participants' replies, for `bookctl`. Enum fields are shown by their
//! proto names (`COMMITTED`, `SOLD_OUT`), never as numbers.

use std::collections::BTreeMap;
use std::fmt::Write;

use booking_proto::v1::{
    AbortDetail, AbortReason, BookReply, FlightInventory, GetRouteReply, LegRequest, LegResult,
    Mode, Outcome, TransactionState, TransactionStatus,
};
use booking_proto::validate;
use serde_json::{json, Value};

/// The proto name of an enum value, or `UNKNOWN(n)` for a value this build does not know.
fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(E) -> &'static str) -> String {
    E::try_from(value)
        .map(|e| name(e).to_owned())
        .unwrap_or_else(|_| format!("UNKNOWN({value})"))
}

pub fn outcome_name(outcome: i32) -> String {
    enum_name(outcome, |o: Outcome| o.as_str_name())
}

pub fn mode_name(mode: i32) -> String {
    enum_name(mode, |m: Mode| m.as_str_name())
}

pub fn reason_name(reason: i32) -> String {
    enum_name(reason, |r: AbortReason| r.as_str_name())
}

pub fn state_name(state: i32) -> String {
    enum_name(state, |s: TransactionState| s.as_str_name())
}

fn leg_result_json(leg: &LegResult) -> Value {
    json!({"leg_index": leg.leg_index, "flight_id": leg.flight_id, "shard": leg.shard, "seats": leg.seats})
}

fn abort_json(abort: &AbortDetail) -> Value {
    json!({
        "reason": reason_name(abort.reason),
        "leg_index": abort.leg_index,
        "flight_id": abort.flight_id,
        "message": abort.message,
    })
}

fn leg_request_json(leg: &LegRequest) -> Value {
    json!({"flight_id": leg.flight_id, "seat_count": leg.seat_count, "seats": leg.seats, "passengers": leg.passengers})
}

pub fn book_reply_json(reply: &BookReply) -> Value {
    json!({
        "txid": reply.txid,
        "outcome": outcome_name(reply.outcome),
        "mode": mode_name(reply.mode),
        "legs": reply.legs.iter().map(leg_result_json).collect::<Vec<_>>(),
        "abort": reply.abort.as_ref().map(abort_json),
    })
}

/// e.g. "COMMITTED txid 0190...\n  leg 0 BA117 (s1): 12A 12B\n".
pub fn book_reply_text(reply: &BookReply) -> String {
    let mut text = format!(
        "{} txid {} ({})\n",
        outcome_name(reply.outcome),
        reply.txid,
        mode_name(reply.mode)
    );
    for leg in &reply.legs {
        let _ = writeln!(
            text,
            "  leg {} {} on {}: seats {}",
            leg.leg_index,
            leg.flight_id,
            leg.shard,
            leg.seats.join(" ")
        );
    }
    if let Some(abort) = &reply.abort {
        let _ = writeln!(
            text,
            "  {} on leg {} ({}): {}",
            reason_name(abort.reason),
            abort.leg_index,
            abort.flight_id,
            abort.message
        );
    }
    text
}

pub fn status_json(status: &TransactionStatus) -> Value {
    json!({
        "txid": status.txid,
        "idempotency_key": status.idempotency_key,
        "mode": mode_name(status.mode),
        "state": state_name(status.state),
        "ended": status.ended,
        "one_phase": status.one_phase,
        "shards": status.shards,
        "legs": status.legs.iter().map(leg_request_json).collect::<Vec<_>>(),
        "reply": status.reply.as_ref().map(book_reply_json),
        "begun_at_unix_ms": status.begun_at_unix_ms,
        "decided_at_unix_ms": status.decided_at_unix_ms,
        "ended_at_unix_ms": status.ended_at_unix_ms,
    })
}

pub fn status_text(status: &TransactionStatus) -> String {
    let mut text = format!(
        "txid {}  key {:?}\n  state {}{}  mode {}{}\n  shards {}\n",
        status.txid,
        status.idempotency_key,
        state_name(status.state),
        if status.ended { " (ended)" } else { "" },
        mode_name(status.mode),
        if status.one_phase { " (one-phase)" } else { "" },
        status.shards.join(", "),
    );
    for (i, leg) in status.legs.iter().enumerate() {
        let seats = if leg.seats.is_empty() {
            format!("{} seats", leg.seat_count)
        } else {
            leg.seats.join(" ")
        };
        let _ = writeln!(text, "  leg {i} {}: {seats}", leg.flight_id);
    }
    let _ = writeln!(
        text,
        "  begun {} · decided {} · ended {} (unix ms)",
        status.begun_at_unix_ms, status.decided_at_unix_ms, status.ended_at_unix_ms
    );
    if let Some(reply) = &status.reply {
        text += "  reply: ";
        text += &book_reply_text(reply);
    }
    text
}

pub fn flight_json(flight: &FlightInventory) -> Value {
    let seats: Vec<Value> = flight
        .seats
        .iter()
        .map(|s| json!({"seat_no": s.seat_no, "state": s.state, "txid": s.txid, "passenger": s.passenger}))
        .collect();
    json!({
        "flight_id": flight.flight_id,
        "capacity": flight.capacity,
        "free": flight.free,
        "held": flight.held,
        "booked": flight.booked,
        "seats": seats,
    })
}

pub fn flight_text(flight: &FlightInventory, route: Option<&GetRouteReply>) -> String {
    let mut text = format!(
        "flight {}: capacity {}, booked {}, held {}, free {}\n",
        flight.flight_id, flight.capacity, flight.booked, flight.held, flight.free
    );
    if let Some(route) = route {
        let _ = writeln!(
            text,
            "  partition {}/{} on shard {} at {}",
            route.partition, route.partitions, route.shard, route.address
        );
    }
    if !flight.seats.is_empty() {
        text += &seat_map(flight);
    }
    text
}

/// A seat map: one line per row, `.` free, `h` held, `X` booked.
pub fn seat_map(flight: &FlightInventory) -> String {
    let mut rows: BTreeMap<u32, BTreeMap<char, char>> = BTreeMap::new();
    let mut letters = std::collections::BTreeSet::new();
    for seat in &flight.seats {
        let Ok((row, letter)) = validate::seat_label("seat", &seat.seat_no) else {
            continue;
        };
        let mark = match seat.state.as_str() {
            "free" => '.',
            "held" => 'h',
            "booked" => 'X',
            _ => '?',
        };
        rows.entry(row).or_default().insert(letter, mark);
        letters.insert(letter);
    }
    let header: String = letters.iter().map(|l| format!(" {l}")).collect();
    let mut text = format!("  row{header}   (. free, h held, X booked)\n");
    for (row, marks) in rows {
        let line: String = letters
            .iter()
            .map(|l| format!(" {}", marks.get(l).copied().unwrap_or(' ')))
            .collect();
        let _ = writeln!(text, "  {row:>3}{line}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use booking_proto::v1::SeatRow;

    #[test]
    fn replies_render_with_enum_names() {
        let reply = BookReply {
            txid: "t1".into(),
            outcome: Outcome::Aborted as i32,
            legs: vec![],
            abort: Some(AbortDetail {
                reason: 1,
                leg_index: 1,
                flight_id: "LH400".into(),
                message: "2 wanted, 1 free".into(),
            }),
            mode: 0,
        };
        assert_eq!(
            book_reply_text(&reply),
            "ABORTED txid t1 (TWO_PHASE)\n  SOLD_OUT on leg 1 (LH400): 2 wanted, 1 free\n"
        );
        let json = book_reply_json(&reply);
        assert_eq!(json["abort"]["reason"], "SOLD_OUT");
        assert_eq!(json["outcome"], "ABORTED");
        assert_eq!(outcome_name(42), "UNKNOWN(42)");
    }

    #[test]
    fn the_seat_map_marks_states() {
        let seat = |no: &str, state: &str| SeatRow {
            seat_no: no.into(),
            state: state.into(),
            ..Default::default()
        };
        let flight = FlightInventory {
            flight_id: "AB1".into(),
            capacity: 4,
            free: 2,
            held: 1,
            booked: 1,
            seats: vec![
                seat("1A", "free"),
                seat("1B", "booked"),
                seat("2A", "held"),
                seat("2B", "free"),
            ],
        };
        assert_eq!(
            seat_map(&flight),
            "  row A B   (. free, h held, X booked)\n    1 . X\n    2 h .\n"
        );
    }
}

//! Validation rules shared by every receiving edge. A request that breaks one
//! is refused whole (INVALID_ARGUMENT) before anything is written; the error
//! names the field and says what to fix.

use crate::limits::*;
use crate::v1::{BookRequest, LegRequest, ShardLeg};

/// A request field that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    /// Path of the offending field, e.g. `legs[1].seats[0]`.
    pub field: String,
    /// What is wrong and what to do instead.
    pub problem: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        InvalidField {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A flight id: 1..=16 characters of `A-Z`, `0-9` and `-`.
pub fn flight_id(field: &str, id: &str) -> Result<(), InvalidField> {
    if id.is_empty() {
        return Err(InvalidField::new(
            field,
            "is empty; name the flight, e.g. \"BA117\"",
        ));
    }
    if id.chars().count() > FLIGHT_ID_CHARS_MAX {
        return Err(InvalidField::new(
            field,
            format!("{id:?} is longer than {FLIGHT_ID_CHARS_MAX} characters"),
        ));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(InvalidField::new(
            field,
            format!("{id:?} may only hold A-Z, 0-9 and '-'"),
        ));
    }
    Ok(())
}

/// A seat label: a row number 1..=SEAT_ROWS_MAX followed by one letter A-Z,
/// e.g. `"12A"`. Returns (row, letter).
pub fn seat_label(field: &str, label: &str) -> Result<(u32, char), InvalidField> {
    let bad = || InvalidField::new(field, format!("{label:?} is not a seat like \"12A\""));
    let letter = label.chars().last().ok_or_else(bad)?;
    if !letter.is_ascii_uppercase() {
        return Err(bad());
    }
    let digits = &label[..label.len() - 1];
    if digits.is_empty() || digits.starts_with('0') || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let row: u32 = digits.parse().map_err(|_| bad())?;
    if row == 0 || row > SEAT_ROWS_MAX {
        return Err(bad());
    }
    Ok((row, letter))
}

/// The seats one leg asks for, checked: a count of any seats, or named seats.
/// Returns the number of seats the leg books.
pub fn leg_seats(
    field: &str,
    seat_count: u32,
    seats: &[String],
    passengers: &[String],
) -> Result<usize, InvalidField> {
    let wanted = match (seat_count, seats.len()) {
        (0, 0) => {
            return Err(InvalidField::new(
                field,
                "asks for no seats; set seat_count (1..=9) or list seats",
            ))
        }
        (count, 0) => count as usize,
        (0, named) => named,
        (count, named) if count as usize == named => named,
        (count, named) => {
            return Err(InvalidField::new(
                format!("{field}.seat_count"),
                format!("is {count} but {named} seats are listed; give one or the other"),
            ))
        }
    };
    if wanted > SEATS_PER_LEG_MAX {
        return Err(InvalidField::new(
            format!("{field}.seat_count"),
            format!("asks for {wanted} seats; at most {SEATS_PER_LEG_MAX} per leg"),
        ));
    }
    for (i, seat) in seats.iter().enumerate() {
        seat_label(&format!("{field}.seats[{i}]"), seat)?;
        if seats[..i].contains(seat) {
            return Err(InvalidField::new(
                format!("{field}.seats[{i}]"),
                format!("seat {seat} is listed twice"),
            ));
        }
    }
    if !passengers.is_empty() && passengers.len() != wanted {
        return Err(InvalidField::new(
            format!("{field}.passengers"),
            format!(
                "names {} passengers for {wanted} seats; name one per seat or none",
                passengers.len()
            ),
        ));
    }
    for (i, name) in passengers.iter().enumerate() {
        if name.trim().is_empty() || name.len() > PASSENGER_BYTES_MAX {
            return Err(InvalidField::new(
                format!("{field}.passengers[{i}]"),
                format!("must be 1..={PASSENGER_BYTES_MAX} bytes, not blank"),
            ));
        }
    }
    Ok(wanted)
}

fn leg(field: &str, leg: &LegRequest) -> Result<usize, InvalidField> {
    flight_id(&format!("{field}.flight_id"), &leg.flight_id)?;
    leg_seats(field, leg.seat_count, &leg.seats, &leg.passengers)
}

/// Every rule of a `BookRequest` that can be checked without the inventory.
pub fn book_request(request: &BookRequest) -> Result<(), InvalidField> {
    let key = &request.idempotency_key;
    if key.trim().is_empty() {
        return Err(InvalidField::new(
            "idempotency_key",
            "is required; send a unique key per itinerary and reuse it on retries",
        ));
    }
    if key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(InvalidField::new(
            "idempotency_key",
            format!(
                "is {} bytes; at most {IDEMPOTENCY_KEY_BYTES_MAX}",
                key.len()
            ),
        ));
    }
    if request.timeout_ms > TIMEOUT_MS_MAX {
        return Err(InvalidField::new(
            "timeout_ms",
            format!(
                "is {}; at most {TIMEOUT_MS_MAX} (0 for the default)",
                request.timeout_ms
            ),
        ));
    }
    if crate::v1::Mode::try_from(request.mode).is_err() {
        return Err(InvalidField::new(
            "mode",
            format!("{} is not TWO_PHASE (0) or SAGA (1)", request.mode),
        ));
    }
    if request.legs.is_empty() {
        return Err(InvalidField::new(
            "legs",
            "is empty; an itinerary needs at least one leg",
        ));
    }
    if request.legs.len() > LEGS_MAX {
        return Err(InvalidField::new(
            "legs",
            format!("has {} legs; at most {LEGS_MAX}", request.legs.len()),
        ));
    }
    for (i, this) in request.legs.iter().enumerate() {
        let field = format!("legs[{i}]");
        leg(&field, this)?;
        if let Some(first) = request.legs[..i]
            .iter()
            .position(|l| l.flight_id == this.flight_id)
        {
            return Err(InvalidField::new(
                format!("{field}.flight_id"),
                format!(
                    "flight {} is also legs[{first}]; merge duplicate legs into one",
                    this.flight_id
                ),
            ));
        }
    }
    Ok(())
}

/// Every rule of the legs a participant receives.
pub fn shard_legs(legs: &[ShardLeg]) -> Result<(), InvalidField> {
    if legs.is_empty() || legs.len() > LEGS_MAX {
        return Err(InvalidField::new(
            "legs",
            format!("must hold 1..={LEGS_MAX} legs"),
        ));
    }
    for (i, this) in legs.iter().enumerate() {
        let field = format!("legs[{i}]");
        flight_id(&format!("{field}.flight_id"), &this.flight_id)?;
        leg_seats(&field, this.seat_count, &this.seats, &this.passengers)?;
        if legs[..i].iter().any(|l| l.flight_id == this.flight_id) {
            return Err(InvalidField::new(
                format!("{field}.flight_id"),
                "duplicate flight",
            ));
        }
    }
    Ok(())
}

/// A transaction id: a UUID in its canonical text form.
pub fn txid(field: &str, text: &str) -> Result<[u8; 16], InvalidField> {
    parse_uuid(text).ok_or_else(|| {
        InvalidField::new(
            field,
            format!("{text:?} is not a UUID like 0190b2c4-7d1e-7c3a-9f00-000000000000"),
        )
    })
}

fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if text.len() != 36 || hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg_of(flight: &str, count: u32) -> LegRequest {
        LegRequest {
            flight_id: flight.into(),
            seat_count: count,
            ..Default::default()
        }
    }

    fn request(legs: Vec<LegRequest>) -> BookRequest {
        BookRequest {
            idempotency_key: "k1".into(),
            legs,
            ..Default::default()
        }
    }

    #[test]
    fn a_good_request_passes() {
        assert_eq!(
            book_request(&request(vec![leg_of("AB1", 2), leg_of("CD2", 2)])),
            Ok(())
        );
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<(BookRequest, &str)> = vec![
            (
                BookRequest {
                    idempotency_key: "".into(),
                    ..request(vec![leg_of("A", 1)])
                },
                "idempotency_key",
            ),
            (
                BookRequest {
                    idempotency_key: "x".repeat(129),
                    ..request(vec![leg_of("A", 1)])
                },
                "idempotency_key",
            ),
            (request(vec![]), "legs"),
            (
                request((0..9).map(|i| leg_of(&format!("F{i}"), 1)).collect()),
                "legs",
            ),
            (request(vec![leg_of("A", 0)]), "legs[0]"),
            (request(vec![leg_of("A", 10)]), "legs[0].seat_count"),
            (request(vec![leg_of("", 1)]), "legs[0].flight_id"),
            (request(vec![leg_of("a b", 1)]), "legs[0].flight_id"),
            (
                request(vec![leg_of("A", 1), leg_of("A", 1)]),
                "legs[1].flight_id",
            ),
            (
                BookRequest {
                    timeout_ms: 60_001,
                    ..request(vec![leg_of("A", 1)])
                },
                "timeout_ms",
            ),
            (
                BookRequest {
                    mode: 7,
                    ..request(vec![leg_of("A", 1)])
                },
                "mode",
            ),
        ];
        for (request, field) in cases {
            let err = book_request(&request).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn named_seats_are_checked() {
        let named = |seats: &[&str], count: u32| LegRequest {
            flight_id: "A".into(),
            seat_count: count,
            seats: seats.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            book_request(&request(vec![named(&["1A", "12F"], 0)])),
            Ok(())
        );
        assert_eq!(
            book_request(&request(vec![named(&["1A", "12F"], 2)])),
            Ok(())
        );
        assert_eq!(
            book_request(&request(vec![named(&["1A"], 2)]))
                .unwrap_err()
                .field,
            "legs[0].seat_count"
        );
        assert_eq!(
            book_request(&request(vec![named(&["1A", "1A"], 0)]))
                .unwrap_err()
                .field,
            "legs[0].seats[1]"
        );
        for bad in ["A1", "0A", "01A", "1a", "", "201A", "12"] {
            assert!(seat_label("s", bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(seat_label("s", "12C"), Ok((12, 'C')));
    }

    #[test]
    fn passengers_must_match_seats() {
        let mut leg = leg_of("A", 2);
        leg.passengers = vec!["Ada".into()];
        assert_eq!(
            book_request(&request(vec![leg.clone()])).unwrap_err().field,
            "legs[0].passengers"
        );
        leg.passengers = vec!["Ada".into(), "Bob".into()];
        assert_eq!(book_request(&request(vec![leg])), Ok(()));
    }

    #[test]
    fn txids_are_uuids() {
        assert!(txid("t", "0190b2c4-7d1e-7c3a-9f00-000000000001").is_ok());
        assert!(txid("t", "not-a-uuid").is_err());
        assert!(txid("t", "").is_err());
    }
}

//! [`LegSpec`]: one leg written as text, the way `bookctl book --leg` takes it:
//! `"BA117:2"` (two seats, any free ones), `"BA117:12A,12B"` (those seats) or
//! `"BA117"` (one seat).

use std::fmt;
use std::str::FromStr;

use booking_proto::limits::SEATS_PER_LEG_MAX;
use booking_proto::v1::LegRequest;
use booking_proto::validate;

use super::ClientError;

/// Which seats a leg asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeatChoice {
    /// This many seats, any free ones (1..=SEATS_PER_LEG_MAX).
    Count(u32),
    /// Exactly these seats, e.g. `["12A", "12B"]`.
    Named(Vec<String>),
}

/// One leg of an itinerary: a flight and the seats wanted on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegSpec {
    pub flight_id: String,
    pub seats: SeatChoice,
}

impl LegSpec {
    /// Parses `FLIGHT[:COUNT | :SEAT,SEAT...]`, checking the flight id and
    /// the seat labels with the rules the coordinator applies.
    pub fn parse(spec: &str) -> Result<LegSpec, ClientError> {
        let bad = |problem: String| ClientError::BadLegSpec {
            spec: spec.to_owned(),
            problem,
        };
        let (flight_id, seats) = spec.split_once(':').unwrap_or((spec, "1"));
        validate::flight_id("flight", flight_id).map_err(|e| bad(e.problem))?;
        let seats = parse_seats(seats.trim()).map_err(bad)?;
        Ok(LegSpec {
            flight_id: flight_id.to_owned(),
            seats,
        })
    }

    /// How many seats the leg books.
    pub fn seat_count(&self) -> usize {
        match &self.seats {
            SeatChoice::Count(count) => *count as usize,
            SeatChoice::Named(seats) => seats.len(),
        }
    }

    /// The wire form, with `passengers` named one per seat (or none).
    pub fn to_leg_request(&self, passengers: &[String]) -> LegRequest {
        let (seat_count, seats) = match &self.seats {
            SeatChoice::Count(count) => (*count, Vec::new()),
            SeatChoice::Named(seats) => (0, seats.clone()),
        };
        LegRequest {
            flight_id: self.flight_id.clone(),
            seat_count,
            seats,
            passengers: passengers.to_vec(),
        }
    }
}

fn parse_seats(text: &str) -> Result<SeatChoice, String> {
    if text.chars().all(|c| c.is_ascii_digit()) && !text.is_empty() {
        let count: u32 = text
            .parse()
            .map_err(|_| format!("{text:?} is not a seat count"))?;
        if count == 0 || count as usize > SEATS_PER_LEG_MAX {
            return Err(format!(
                "seat count must be 1..={SEATS_PER_LEG_MAX}, not {count}"
            ));
        }
        return Ok(SeatChoice::Count(count));
    }
    let seats: Vec<String> = text.split(',').map(|s| s.trim().to_owned()).collect();
    for seat in &seats {
        validate::seat_label("seat", seat).map_err(|e| e.problem)?;
    }
    if seats.len() > SEATS_PER_LEG_MAX {
        return Err(format!(
            "names {} seats; at most {SEATS_PER_LEG_MAX} per leg",
            seats.len()
        ));
    }
    Ok(SeatChoice::Named(seats))
}

impl FromStr for LegSpec {
    type Err = ClientError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        LegSpec::parse(spec)
    }
}

impl fmt::Display for LegSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.seats {
            SeatChoice::Count(count) => write!(f, "{}:{count}", self.flight_id),
            SeatChoice::Named(seats) => write!(f, "{}:{}", self.flight_id, seats.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_named_seats_and_bare_flights_parse() {
        assert_eq!(
            LegSpec::parse("BA117:2").unwrap().seats,
            SeatChoice::Count(2)
        );
        let named = LegSpec::parse("LH400:12A,12B").unwrap();
        assert_eq!(
            named.seats,
            SeatChoice::Named(vec!["12A".into(), "12B".into()])
        );
        assert_eq!(named.seat_count(), 2);
        assert_eq!(LegSpec::parse("AF1").unwrap().seats, SeatChoice::Count(1));
        assert_eq!(named.to_string(), "LH400:12A,12B");
    }

    #[test]
    fn bad_legs_say_what_is_wrong() {
        for bad in [
            "",
            "ba117:2",
            "BA117:0",
            "BA117:10",
            "BA117:12",
            "BA117:A1",
            "BA117:1A,",
            "BA 1:1",
        ] {
            let error = LegSpec::parse(bad).expect_err(bad);
            assert!(
                matches!(error, ClientError::BadLegSpec { .. }),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn wire_form_carries_passengers() {
        let leg = LegSpec::parse("BA117:2")
            .unwrap()
            .to_leg_request(&["Ada".into(), "Bob".into()]);
        assert_eq!(leg.seat_count, 2);
        assert!(leg.seats.is_empty());
        assert_eq!(leg.passengers, vec!["Ada".to_string(), "Bob".to_string()]);
    }
}

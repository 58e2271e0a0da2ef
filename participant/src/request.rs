//! The receiving edge: prost request types become checked domain requests
//! (`TryFrom`), or an `InvalidField` that the service turns into
//! INVALID_ARGUMENT in one place. Nothing here touches the database; rules
//! that need the inventory (sold out, seat taken) belong to the store.

use std::collections::BTreeSet;

use booking_proto::limits::{LEGS_MAX, SEAT_LETTERS_MAX, SEAT_ROWS_MAX};
use booking_proto::v1::{CreateFlightRequest, PrepareRequest, ShardLeg};
use booking_proto::validate::{self, InvalidField};

use crate::model::{FlightMap, SeatLabel, TxnId};

/// A checked Prepare or BookLocal request: the legs of one itinerary that
/// fall on this shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booking {
    pub txid: TxnId,
    /// 1..=LEGS_MAX legs, each on a different flight, distinct leg indexes.
    pub legs: Vec<LegRequest>,
    /// Legs of the whole itinerary; legs.len()..=LEGS_MAX, above every leg_index.
    pub itinerary_legs: u32,
}

/// One leg of a booking on this shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegRequest {
    pub leg_index: u32,
    pub flight_id: String,
    pub seats: SeatChoice,
    /// Empty, or one name per seat in seat order.
    pub passengers: Vec<String>,
}

/// Which seats a leg asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeatChoice {
    /// This many seats, the lowest free ones by seat_index.
    Count(usize),
    /// Exactly these seats, in this order.
    Named(Vec<SeatLabel>),
}

impl TryFrom<PrepareRequest> for Booking {
    type Error = InvalidField;

    fn try_from(request: PrepareRequest) -> Result<Booking, InvalidField> {
        let txid = TxnId::parse("txid", &request.txid)?;
        validate::shard_legs(&request.legs)?;
        check_itinerary_legs(&request.legs, request.itinerary_legs)?;
        let legs = request
            .legs
            .into_iter()
            .enumerate()
            .map(|(i, leg)| leg_request(i, leg))
            .collect::<Result<_, _>>()?;
        Ok(Booking {
            txid,
            legs,
            itinerary_legs: request.itinerary_legs,
        })
    }
}

fn check_itinerary_legs(legs: &[ShardLeg], itinerary_legs: u32) -> Result<(), InvalidField> {
    if (itinerary_legs as usize) < legs.len() || itinerary_legs as usize > LEGS_MAX {
        return Err(InvalidField::new(
            "itinerary_legs",
            format!(
                "is {itinerary_legs} but {} legs were sent; set it to the leg count of the whole itinerary (at most {LEGS_MAX})",
                legs.len()
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, leg) in legs.iter().enumerate() {
        if leg.leg_index >= itinerary_legs || !seen.insert(leg.leg_index) {
            return Err(InvalidField::new(
                format!("legs[{i}].leg_index"),
                format!(
                    "is {}; it must be unique and below itinerary_legs ({itinerary_legs})",
                    leg.leg_index
                ),
            ));
        }
    }
    Ok(())
}

/// One leg, already checked by `validate::shard_legs`.
fn leg_request(i: usize, leg: ShardLeg) -> Result<LegRequest, InvalidField> {
    let seats = if leg.seats.is_empty() {
        SeatChoice::Count(leg.seat_count as usize)
    } else {
        let labels = leg.seats.iter().enumerate().map(|(j, seat)| {
            validate::seat_label(&format!("legs[{i}].seats[{j}]"), seat)
                .map(|(row, letter)| SeatLabel { row, letter })
        });
        SeatChoice::Named(labels.collect::<Result<_, _>>()?)
    };
    Ok(LegRequest {
        leg_index: leg.leg_index,
        flight_id: leg.flight_id,
        seats,
        passengers: leg.passengers,
    })
}

impl TryFrom<CreateFlightRequest> for FlightMap {
    type Error = InvalidField;

    fn try_from(request: CreateFlightRequest) -> Result<FlightMap, InvalidField> {
        validate::flight_id("flight_id", &request.flight_id)?;
        if request.rows == 0 || request.rows > SEAT_ROWS_MAX {
            return Err(InvalidField::new(
                "rows",
                format!("is {}; must be 1..={SEAT_ROWS_MAX}", request.rows),
            ));
        }
        check_letters(&request.letters)?;
        Ok(FlightMap {
            flight_id: request.flight_id,
            rows: request.rows,
            letters: request.letters,
        })
    }
}

fn check_letters(letters: &str) -> Result<(), InvalidField> {
    let problem = if letters.is_empty() || letters.len() > SEAT_LETTERS_MAX {
        format!("must hold 1..={SEAT_LETTERS_MAX} seat letters, e.g. \"ABCDEF\"")
    } else if !letters.chars().all(|c| c.is_ascii_uppercase()) {
        "may only hold the letters A-Z".to_string()
    } else if letters.chars().collect::<BTreeSet<_>>().len() != letters.len() {
        "lists a letter twice".to_string()
    } else {
        return Ok(());
    };
    Err(InvalidField::new(
        "letters",
        format!("{letters:?} {problem}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: &str = "0190b2c4-7d1e-7c3a-9f00-000000000001";

    fn leg(index: u32, flight: &str, count: u32) -> ShardLeg {
        ShardLeg {
            leg_index: index,
            flight_id: flight.into(),
            seat_count: count,
            ..Default::default()
        }
    }

    fn request(legs: Vec<ShardLeg>, itinerary_legs: u32) -> PrepareRequest {
        PrepareRequest {
            txid: TXID.into(),
            legs,
            itinerary_legs,
        }
    }

    #[test]
    fn a_good_request_converts() {
        let mut named = leg(2, "CD2", 0);
        named.seats = vec!["12A".into(), "3C".into()];
        let booking = Booking::try_from(request(vec![leg(0, "AB1", 2), named], 3)).expect("valid");
        assert_eq!(booking.legs[0].seats, SeatChoice::Count(2));
        assert_eq!(
            booking.legs[1].seats,
            SeatChoice::Named(vec![
                SeatLabel {
                    row: 12,
                    letter: 'A'
                },
                SeatLabel {
                    row: 3,
                    letter: 'C'
                }
            ])
        );
    }

    #[test]
    fn bad_requests_name_their_field() {
        let cases = vec![
            (
                PrepareRequest {
                    txid: "x".into(),
                    ..request(vec![leg(0, "A", 1)], 1)
                },
                "txid",
            ),
            (request(vec![], 1), "legs"),
            (request(vec![leg(0, "A", 0)], 1), "legs[0]"),
            (request(vec![leg(0, "A", 1)], 0), "itinerary_legs"),
            (request(vec![leg(0, "A", 1)], 9), "itinerary_legs"),
            (request(vec![leg(1, "A", 1)], 1), "legs[0].leg_index"),
            (
                request(vec![leg(0, "A", 1), leg(0, "B", 1)], 2),
                "legs[1].leg_index",
            ),
        ];
        for (request, field) in cases {
            let err = Booking::try_from(request).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn seat_maps_are_checked() {
        let map = |rows, letters: &str| CreateFlightRequest {
            flight_id: "AB1".into(),
            rows,
            letters: letters.into(),
        };
        assert!(FlightMap::try_from(map(30, "ABCDEF")).is_ok());
        for (bad, field) in [
            (map(0, "AB"), "rows"),
            (map(201, "AB"), "rows"),
            (map(3, ""), "letters"),
            (map(3, "ABA"), "letters"),
            (map(3, "ab"), "letters"),
            (map(3, "ABCDEFGHIJKLM"), "letters"),
        ] {
            assert_eq!(FlightMap::try_from(bad).expect_err(field).field, field);
        }
    }
}

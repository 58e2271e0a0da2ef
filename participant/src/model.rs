//! The shard's domain types: transaction ids, states and kinds, the seats a
//! transaction holds per leg, a NO vote's refusal, the `txns` record, and a
//! flight's seat map. This module owns their text and JSON forms as stored
//! in the `txns` and `flights` tables (the invariant checker reads those
//! forms directly); it does no I/O.

use std::fmt;

use booking_proto::v1::{AbortDetail, AbortReason};
use serde::{Deserialize, Serialize};

/// A transaction id: a UUID, kept in canonical lowercase hyphenated text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxnId(String);

impl TxnId {
    /// Checks `text` with the shared rule and canonicalises it.
    pub fn parse(field: &str, text: &str) -> Result<TxnId, booking_proto::validate::InvalidField> {
        let bytes = booking_proto::validate::txid(field, text)?;
        Ok(TxnId(
            uuid::Uuid::from_bytes(bytes).hyphenated().to_string(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `txns.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Prepared,
    Committed,
    Aborted,
}

impl TxnState {
    pub fn as_str(self) -> &'static str {
        match self {
            TxnState::Prepared => "prepared",
            TxnState::Committed => "committed",
            TxnState::Aborted => "aborted",
        }
    }

    pub fn parse(text: &str) -> Option<TxnState> {
        [TxnState::Prepared, TxnState::Committed, TxnState::Aborted]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// `txns.kind`: how the txid reached this shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnKind {
    /// Via Prepare (two-phase commit), or an Abort fence.
    TwoPhase,
    /// Via BookLocal (one-phase commit or saga leg), or a Resolve/Compensate fence.
    Local,
}

impl TxnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TxnKind::TwoPhase => "2pc",
            TxnKind::Local => "local",
        }
    }

    pub fn parse(text: &str) -> Option<TxnKind> {
        [TxnKind::TwoPhase, TxnKind::Local]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// The seats one transaction holds or booked on one leg: an element of the
/// `txns.legs` JSON array. Field order is the stored JSON's key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegSeats {
    pub leg_index: u32,
    pub flight_id: String,
    pub seats: Vec<String>,
}

/// Why a leg was refused: a NO vote's reason, stored as `txns.refusal` JSON
/// with the reason by its proto name, e.g. `"SOLD_OUT"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: AbortReason,
    pub leg_index: u32,
    pub flight_id: String,
    pub message: String,
}

#[derive(Serialize, Deserialize)]
struct RefusalJson {
    reason: String,
    leg_index: u32,
    flight_id: String,
    message: String,
}

impl Refusal {
    pub fn to_json(&self) -> String {
        let json = RefusalJson {
            reason: self.reason.as_str_name().to_string(),
            leg_index: self.leg_index,
            flight_id: self.flight_id.clone(),
            message: self.message.clone(),
        };
        serde_json::to_string(&json).expect("a struct of strings and integers always serialises")
    }

    pub fn from_json(text: &str) -> Result<Refusal, String> {
        let json: RefusalJson = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let reason = AbortReason::from_str_name(&json.reason)
            .ok_or_else(|| format!("unknown refusal reason {:?}", json.reason))?;
        Ok(Refusal {
            reason,
            leg_index: json.leg_index,
            flight_id: json.flight_id,
            message: json.message,
        })
    }

    pub fn to_proto(&self) -> AbortDetail {
        AbortDetail {
            reason: self.reason as i32,
            leg_index: self.leg_index,
            flight_id: self.flight_id.clone(),
            message: self.message.clone(),
        }
    }
}

/// One row of `txns`.
///
/// Invariants (`validate`): a prepared row is two-phase and holds seats; a
/// committed row holds seats; a refusal is only on an aborted row that holds
/// no seats; every listed leg names at least one seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    pub txid: TxnId,
    pub state: TxnState,
    pub kind: TxnKind,
    pub itinerary_legs: u32,
    pub legs: Vec<LegSeats>,
    pub refusal: Option<Refusal>,
    pub updated_at_ms: i64,
}

impl TxnRecord {
    /// A fence: the txid is aborted here, with the NO vote's reason if any.
    pub fn fence(txid: TxnId, kind: TxnKind, refusal: Option<Refusal>, now_ms: i64) -> TxnRecord {
        TxnRecord {
            txid,
            state: TxnState::Aborted,
            kind,
            itinerary_legs: 0,
            legs: Vec::new(),
            refusal,
            updated_at_ms: now_ms,
        }
    }

    /// How many seats the record says this txid holds or booked.
    pub fn seat_count(&self) -> usize {
        self.legs.iter().map(|leg| leg.seats.len()).sum()
    }

    pub fn legs_json(&self) -> String {
        serde_json::to_string(&self.legs).expect("a list of strings and integers always serialises")
    }

    /// Checks the invariants above; the error says which one broke.
    pub fn validate(&self) -> Result<(), String> {
        if self.state == TxnState::Prepared && self.kind != TxnKind::TwoPhase {
            return Err("a prepared txid must be two-phase".into());
        }
        if self.state != TxnState::Aborted && self.legs.is_empty() {
            return Err(format!(
                "a {} txid must list its seats",
                self.state.as_str()
            ));
        }
        if self.refusal.is_some() && (self.state != TxnState::Aborted || !self.legs.is_empty()) {
            return Err("only an aborted txid without seats may carry a refusal".into());
        }
        if self.legs.iter().any(|leg| leg.seats.is_empty()) {
            return Err("every leg must list at least one seat".into());
        }
        Ok(())
    }
}

/// A seat label such as `12A`: row 1..=SEAT_ROWS_MAX and a letter A-Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeatLabel {
    pub row: u32,
    pub letter: char,
}

impl fmt::Display for SeatLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.row, self.letter)
    }
}

/// A flight's seat map: rows 1..=rows, each with the seats `letters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlightMap {
    pub flight_id: String,
    pub rows: u32,
    /// Distinct letters A-Z, in cabin order.
    pub letters: String,
}

impl FlightMap {
    pub fn capacity(&self) -> u32 {
        self.rows * self.letters.len() as u32
    }

    /// The seat's row-major position, if the seat is on this map.
    pub fn seat_index(&self, seat: SeatLabel) -> Option<u32> {
        let position = self
            .letters
            .chars()
            .position(|letter| letter == seat.letter)?;
        (1..=self.rows)
            .contains(&seat.row)
            .then(|| (seat.row - 1) * self.letters.len() as u32 + position as u32)
    }

    /// Every seat of the map in `seat_index` order: (seat_index, label).
    pub fn seats(&self) -> impl Iterator<Item = (u32, String)> + '_ {
        (1..=self.rows)
            .flat_map(move |row| {
                self.letters
                    .chars()
                    .map(move |letter| format!("{row}{letter}"))
            })
            .enumerate()
            .map(|(index, label)| (index as u32, label))
    }

    /// "rows 1-30, letters ABCDEF", for messages.
    pub fn describe(&self) -> String {
        format!("rows 1-{}, letters {}", self.rows, self.letters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txids_are_canonicalised() {
        let id =
            TxnId::parse("txid", "0190B2C4-7D1E-7C3A-9F00-00000000000A").expect("a valid uuid");
        assert_eq!(id.as_str(), "0190b2c4-7d1e-7c3a-9f00-00000000000a");
        assert!(TxnId::parse("txid", "nope").is_err());
    }

    #[test]
    fn legs_json_has_the_documented_shape() {
        let record = TxnRecord {
            legs: vec![LegSeats {
                leg_index: 0,
                flight_id: "AB1".into(),
                seats: vec!["1A".into(), "1B".into()],
            }],
            state: TxnState::Prepared,
            kind: TxnKind::TwoPhase,
            ..TxnRecord::fence(
                TxnId::parse("t", "0190b2c4-7d1e-7c3a-9f00-000000000001").expect("valid"),
                TxnKind::TwoPhase,
                None,
                0,
            )
        };
        assert_eq!(
            record.legs_json(),
            r#"[{"leg_index":0,"flight_id":"AB1","seats":["1A","1B"]}]"#
        );
        assert_eq!(record.validate(), Ok(()));
    }

    #[test]
    fn refusal_json_round_trips() {
        let refusal = Refusal {
            reason: AbortReason::SoldOut,
            leg_index: 1,
            flight_id: "AB1".into(),
            message: "flight AB1 has 2 free seats, leg asks for 3".into(),
        };
        let json = refusal.to_json();
        assert!(json.contains(r#""reason":"SOLD_OUT""#), "{json}");
        assert_eq!(Refusal::from_json(&json), Ok(refusal));
        assert!(Refusal::from_json(
            r#"{"reason":"NOPE","leg_index":0,"flight_id":"A","message":""}"#
        )
        .is_err());
    }

    #[test]
    fn record_invariants_are_checked() {
        let txid = TxnId::parse("t", "0190b2c4-7d1e-7c3a-9f00-000000000001").expect("valid");
        let fence = TxnRecord::fence(txid, TxnKind::Local, None, 0);
        assert_eq!(fence.validate(), Ok(()));
        let prepared_without_seats = TxnRecord {
            state: TxnState::Prepared,
            kind: TxnKind::TwoPhase,
            ..fence.clone()
        };
        assert!(prepared_without_seats.validate().is_err());
        let local_prepared = TxnRecord {
            state: TxnState::Prepared,
            ..fence
        };
        assert!(local_prepared.validate().is_err());
    }

    #[test]
    fn seat_map_indexes_row_major() {
        let map = FlightMap {
            flight_id: "AB1".into(),
            rows: 30,
            letters: "ABCDEF".into(),
        };
        assert_eq!(map.capacity(), 180);
        assert_eq!(
            map.seat_index(SeatLabel {
                row: 1,
                letter: 'A'
            }),
            Some(0)
        );
        assert_eq!(
            map.seat_index(SeatLabel {
                row: 2,
                letter: 'C'
            }),
            Some(8)
        );
        assert_eq!(
            map.seat_index(SeatLabel {
                row: 31,
                letter: 'A'
            }),
            None
        );
        assert_eq!(
            map.seat_index(SeatLabel {
                row: 1,
                letter: 'K'
            }),
            None
        );
        let seats: Vec<_> = map.seats().take(7).collect();
        assert_eq!(seats[6], (6, "2A".to_string()));
        assert_eq!(map.seats().count(), 180);
    }
}

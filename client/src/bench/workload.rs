//! The fixed workload: which flights exist and which itineraries the
//! clients book. Pure: no I/O, seeded randomness.
//!
//! - A flight has 180 seats (30 rows × ABCDEF).
//! - The uniform set is 3,000 flights; each shard owns the ones routing
//!   gives it (`partition_of`, then the partition ranges).
//! - An itinerary has 2 legs on 2 different shards, 1 passenger, 1 seat
//!   per leg: the first leg uniform over the set, the second uniform over
//!   the set's flights on the other shards.
//! - Hot: a booking is hot with probability 0.8, and then both legs come
//!   from a set of 10 flights spread over the shards (4/3/3); the other 20%
//!   are uniform. Hot flights sell out within about 900 bookings: a fresh
//!   hot set is made for every cell.

use std::sync::Arc;

use rand::Rng;

use super::args::Workload;

/// Seat rows of every flight.
pub const SEAT_ROWS: u32 = 30;
/// Seat letters of every flight.
pub const SEAT_LETTERS: &str = "ABCDEF";
/// Seats of every flight.
pub const SEATS_PER_FLIGHT: u64 = SEAT_ROWS as u64 * SEAT_LETTERS.len() as u64;
/// Flights of the uniform set.
pub const UNIFORM_FLIGHTS: usize = 3_000;
/// Flights of a hot set.
pub const HOT_FLIGHTS: usize = 10;
/// Share of hot bookings in the hot workload.
pub const HOT_SHARE: f64 = 0.8;
/// Legs per itinerary.
pub const LEGS: usize = 2;

/// One flight and the shard that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flight {
    pub id: Arc<str>,
    pub shard: usize,
}

/// A set of flights with their owners. Invariant: at least two shards own
/// a flight of the set, so every itinerary can have legs on two shards.
#[derive(Clone, Debug)]
pub struct FlightSet {
    flights: Vec<Flight>,
    /// `by_shard[s]`: indices into `flights` of shard s's flights.
    by_shard: Vec<Vec<usize>>,
}

impl FlightSet {
    /// `count` flights `{prefix}0000`, `{prefix}0001`, ... owned as
    /// `shard_of` says.
    pub fn numbered(
        prefix: &str,
        count: usize,
        shards: usize,
        shard_of: impl Fn(&str) -> usize,
    ) -> FlightSet {
        let flights = (0..count)
            .map(|i| {
                let id = format!("{prefix}{i:04}");
                let shard = shard_of(&id);
                Flight {
                    id: id.into(),
                    shard,
                }
            })
            .collect();
        FlightSet::new(flights, shards)
    }

    /// `count` flights spread evenly over the shards (the first shards one
    /// more when it does not divide): candidates `{prefix}0`, `{prefix}1`,
    /// ... are taken while their shard still has room.
    pub fn spread(
        prefix: &str,
        count: usize,
        shards: usize,
        shard_of: impl Fn(&str) -> usize,
    ) -> FlightSet {
        let quota = |s: usize| count / shards + usize::from(s < count % shards);
        let mut taken = vec![0; shards];
        let mut flights = Vec::with_capacity(count);
        let mut candidate = 0usize;
        while flights.len() < count {
            let id = format!("{prefix}{candidate}");
            candidate += 1;
            let shard = shard_of(&id);
            if taken[shard] < quota(shard) {
                taken[shard] += 1;
                flights.push(Flight {
                    id: id.into(),
                    shard,
                });
            }
        }
        FlightSet::new(flights, shards)
    }

    fn new(flights: Vec<Flight>, shards: usize) -> FlightSet {
        let mut by_shard = vec![Vec::new(); shards];
        for (i, flight) in flights.iter().enumerate() {
            by_shard[flight.shard].push(i);
        }
        assert!(
            by_shard.iter().filter(|f| !f.is_empty()).count() >= 2,
            "a flight set spans at least two shards"
        );
        FlightSet { flights, by_shard }
    }

    pub fn flights(&self) -> &[Flight] {
        &self.flights
    }

    pub fn len(&self) -> usize {
        self.flights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }

    /// Every seat of the set.
    pub fn seats(&self) -> u64 {
        self.flights.len() as u64 * SEATS_PER_FLIGHT
    }

    /// Two flights on different shards: the first uniform over the set,
    /// the second uniform over the flights on other shards.
    pub fn pick_pair<R: Rng>(&self, rng: &mut R) -> [Flight; 2] {
        let first = &self.flights[rng.gen_range(0..self.flights.len())];
        let others = self.flights.len() - self.by_shard[first.shard].len();
        let mut pick = rng.gen_range(0..others);
        for (shard, indices) in self.by_shard.iter().enumerate() {
            if shard == first.shard {
                continue;
            }
            if pick < indices.len() {
                return [first.clone(), self.flights[indices[pick]].clone()];
            }
            pick -= indices.len();
        }
        unreachable!("pick < others, the count of flights on the other shards")
    }
}

/// The flights one cell books from.
#[derive(Clone, Debug)]
pub struct CellFlights {
    pub workload: Workload,
    pub uniform: Arc<FlightSet>,
    /// Present for the hot workload.
    pub hot: Option<Arc<FlightSet>>,
}

impl CellFlights {
    /// The legs of the next itinerary.
    pub fn itinerary<R: Rng>(&self, rng: &mut R) -> [Flight; 2] {
        match (&self.hot, self.workload) {
            (Some(hot), Workload::Hot) if rng.gen_bool(HOT_SHARE) => hot.pick_pair(rng),
            _ => self.uniform.pick_pair(rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use booking_proto::routing::partition_of;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn shard_of(id: &str) -> usize {
        (partition_of(id, 64) * 3 / 64) as usize
    }

    #[test]
    fn numbered_flights_are_valid_ids_on_their_routed_shard() {
        let set = FlightSet::numbered("U12-", UNIFORM_FLIGHTS, 3, shard_of);
        assert_eq!(set.len(), 3000);
        assert_eq!(set.seats(), 540_000);
        for flight in set.flights() {
            booking_proto::validate::flight_id("id", &flight.id).expect("a valid flight id");
            assert_eq!(flight.shard, shard_of(&flight.id));
        }
        assert_eq!(&*set.flights()[7].id, "U12-0007");
    }

    #[test]
    fn a_hot_set_is_spread_four_three_three() {
        let set = FlightSet::spread("H123-", HOT_FLIGHTS, 3, shard_of);
        let mut per_shard = [0; 3];
        for flight in set.flights() {
            per_shard[flight.shard] += 1;
            booking_proto::validate::flight_id("id", &flight.id).expect("a valid flight id");
        }
        assert_eq!(per_shard, [4, 3, 3]);
    }

    #[test]
    fn legs_are_on_two_shards_and_cover_the_set() {
        let set = FlightSet::numbered("U1-", 300, 3, shard_of);
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let [first, second] = set.pick_pair(&mut rng);
            assert_ne!(first.shard, second.shard);
            seen.insert(first.id);
            seen.insert(second.id);
        }
        assert_eq!(seen.len(), 300, "every flight gets booked");
    }

    #[test]
    fn the_hot_workload_puts_four_bookings_in_five_on_hot_flights() {
        let flights = CellFlights {
            workload: Workload::Hot,
            uniform: Arc::new(FlightSet::numbered("U1-", 300, 3, shard_of)),
            hot: Some(Arc::new(FlightSet::spread("H1-", HOT_FLIGHTS, 3, shard_of))),
        };
        let mut rng = StdRng::seed_from_u64(9);
        let hot = (0..10_000)
            .filter(|_| {
                let legs = flights.itinerary(&mut rng);
                assert_ne!(legs[0].shard, legs[1].shard);
                legs.iter().all(|leg| leg.id.starts_with("H1-"))
            })
            .count();
        assert!((7_700..8_300).contains(&hot), "{hot} of 10000 hot");
        let uniform = CellFlights {
            workload: Workload::Uniform,
            ..flights
        };
        assert!((0..1000).all(|_| uniform.itinerary(&mut rng)[0].id.starts_with("U1-")));
    }
}

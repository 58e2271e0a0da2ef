//! Which flights this shard owns: `partition_of(flight_id, P)` must be one
//! of its partitions. A leg or flight outside them is refused before
//! anything is queued or written.

use std::collections::BTreeSet;

use booking_proto::routing::partition_of;

use crate::error::Refused;
use crate::op::Op;

/// This shard's name and the partitions it owns.
#[derive(Debug, Clone)]
pub struct Shard {
    pub name: String,
    /// P; every owned partition is below it.
    pub partitions: u32,
    pub owned: BTreeSet<u32>,
}

impl Shard {
    /// Refuses a flight whose partition this shard does not own.
    pub fn check_flight(&self, flight_id: &str) -> Result<(), Refused> {
        let partition = partition_of(flight_id, self.partitions);
        if self.owned.contains(&partition) {
            return Ok(());
        }
        Err(Refused::NotOwned {
            flight_id: flight_id.to_string(),
            partition,
            shard: self.name.clone(),
        })
    }

    /// Refuses an operation that names a flight this shard does not own.
    pub fn admit(&self, op: &Op) -> Result<(), Refused> {
        match op {
            Op::Prepare(booking) | Op::BookLocal(booking) => booking
                .legs
                .iter()
                .try_for_each(|leg| self.check_flight(&leg.flight_id)),
            Op::CreateFlight(map) => self.check_flight(&map.flight_id),
            Op::Commit(_) | Op::Abort(_) | Op::Resolve(_) | Op::Compensate(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_flights_of_other_partitions() {
        let shard = Shard {
            name: "s0".into(),
            partitions: 64,
            owned: (0..22).collect(),
        };
        let (mine, theirs): (Vec<String>, Vec<String>) = (0..200)
            .map(|i| format!("F{i}"))
            .partition(|f| partition_of(f, 64) < 22);
        assert!(shard.check_flight(&mine[0]).is_ok());
        let err = shard
            .check_flight(&theirs[0])
            .expect_err("not owned")
            .to_string();
        let partition = partition_of(&theirs[0], 64);
        assert_eq!(
            err,
            format!(
                "flight {} is in partition {partition}, which shard s0 does not own",
                theirs[0]
            )
        );
    }
}

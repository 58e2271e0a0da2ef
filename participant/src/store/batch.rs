//! The batch's view of the shard database: what the batch has read, and
//! the writes it has decided but not yet sent. Sending every statement to
//! the database one operation at a time made the SQL of a batch cost about
//! 1 ms per operation on SQLite (each statement a round trip to the sqlx
//! worker thread), so a batch instead
//! - reads the `txns` records of all its txids, the seat maps of all its
//!   flights and (SQLite) the lowest free seats of those flights up front,
//!   in one statement each;
//! - applies its operations in order against that view, exactly as if each
//!   had read the database itself: every write an operation decides updates
//!   the view before the next operation looks;
//! - sends the writes as a few multi-row statements: seat claims and seat
//!   moves before anything reads seats they touch (`flush_seats`), `txns`
//!   rows at the end (nothing in a batch reads `txns` back from the
//!   database but through the view).
//!
//! The database cannot change under the view: on SQLite the batch holds
//! the write lock (`BEGIN IMMEDIATE`); on PostgreSQL a txid's operations all
//! go to one writer lane, and the seats a batch picked are locked by it
//! (`FOR UPDATE SKIP LOCKED`). Every write still names the state it expects
//! and checks the rows it changed, with the same errors as one statement
//! per operation; any error fails the whole batch, as before.

use std::collections::{HashMap, HashSet, VecDeque};

use super::conn::Conn;
use super::script::Script;
use super::{flights, readahead, seats, txns};
use crate::config::Backend;
use crate::error::StoreError;
use crate::model::{FlightMap, TxnId, TxnRecord, TxnState};
use crate::op::Op;
use crate::protocol::{SeatState, Transition};
use crate::request::SeatChoice;

/// Most free seats per flight read ahead in the batch's first statements;
/// a leg that needs more reads them when it runs.
const READ_AHEAD_SEATS_MAX: usize = 1024;

/// What the batch knows of one txid's `txns` row.
enum Slot {
    /// No row.
    Absent,
    /// A row that failed its checks: the error the first use raises.
    Corrupt(StoreError),
    /// A row in the database, in `stored` state there; `record` is it as
    /// the batch has changed it.
    Stored { record: TxnRecord, stored: TxnState },
    /// A row this batch inserts.
    New(TxnRecord),
}

/// Free seats of one flight the batch has read: the lowest ones, in
/// seat_index order, minus those it has claimed since.
struct FreeSeats {
    seats: VecDeque<String>,
    /// Every free seat of the flight is in `seats` (SQLite, which has one
    /// writer: a read that returned fewer rows than its LIMIT saw them all).
    complete: bool,
}

/// One local transaction's view of the shard; see the module docs.
pub struct Batch<'c> {
    conn: Conn<'c>,
    backend: Backend,
    now_ms: i64,
    txns: HashMap<String, Slot>,
    /// Txids in the order the batch first met them (statement and error order).
    txn_order: Vec<TxnId>,
    /// Seat maps read (None: no such flight), unchecked until used.
    flights: HashMap<String, Option<flights::FlightRow>>,
    free: HashMap<String, FreeSeats>,
    /// Seats still to be asked for per flight by this batch's bookings.
    demand: HashMap<String, usize>,
    /// Flights with seat writes not yet sent.
    dirty: HashSet<String>,
    claims: Vec<seats::Claim>,
    moves: Vec<seats::Move>,
}

impl<'c> Batch<'c> {
    /// Reads ahead what `ops` will look at. On SQLite this also begins the
    /// local transaction; on PostgreSQL the caller has.
    pub async fn open(
        conn: Conn<'c>,
        backend: Backend,
        now_ms: i64,
        ops: &[Op],
    ) -> Result<Batch<'c>, StoreError> {
        let mut batch = Batch {
            conn,
            backend,
            now_ms,
            txns: HashMap::with_capacity(ops.len()),
            txn_order: Vec::with_capacity(ops.len()),
            flights: HashMap::new(),
            free: HashMap::new(),
            demand: HashMap::new(),
            dirty: HashSet::new(),
            claims: Vec::new(),
            moves: Vec::new(),
        };
        match backend {
            Backend::Sqlite => batch.read_ahead(ops).await?,
            Backend::Postgres => batch.read_ahead_postgres(ops).await?,
        }
        Ok(batch)
    }

    /// The distinct txids of `ops`, in order.
    fn txids(ops: &[Op]) -> Vec<&TxnId> {
        let mut seen = HashSet::with_capacity(ops.len());
        ops.iter()
            .filter_map(Op::txid)
            .filter(|txid| seen.insert(txid.as_str()))
            .collect()
    }

    /// The distinct flights that the bookings and CREATE_FLIGHTs of `ops`
    /// name, and the seats their bookings ask for per flight.
    fn flights_of(ops: &[Op]) -> (Vec<&str>, HashMap<String, usize>) {
        let mut wanted: Vec<&str> = Vec::new();
        let mut demand: HashMap<String, usize> = HashMap::new();
        for op in ops {
            match op {
                Op::Prepare(booking) | Op::BookLocal(booking) => {
                    for leg in &booking.legs {
                        wanted.push(&leg.flight_id);
                        if let SeatChoice::Count(count) = leg.seats {
                            *demand.entry(leg.flight_id.clone()).or_default() += count;
                        }
                    }
                }
                Op::CreateFlight(map) => wanted.push(&map.flight_id),
                _ => {}
            }
        }
        let mut seen = HashSet::with_capacity(wanted.len());
        wanted.retain(|flight_id| seen.insert(*flight_id));
        (wanted, demand)
    }

    /// SQLite: BEGIN IMMEDIATE, then records, flights and free seats in
    /// one statement (`readahead::begin_and_read`). The bookings of every
    /// txid count, since the records are not known yet.
    async fn read_ahead(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let txids = Self::txids(ops);
        let (flight_ids, demand) = Self::flights_of(ops);
        self.demand = demand;
        let free_of: Vec<&str> = flight_ids
            .iter()
            .copied()
            .filter(|flight_id| self.demand.contains_key(*flight_id))
            .collect();
        // One LIMIT for all flights: the largest demand.
        let limit = free_of
            .iter()
            .map(|flight_id| self.demand[*flight_id])
            .max()
            .unwrap_or(1)
            .clamp(1, READ_AHEAD_SEATS_MAX);
        let found =
            readahead::begin_and_read(&mut self.conn, &txids, &flight_ids, &free_of, limit).await?;
        self.remember_txns(&txids, found.txns);
        self.remember_flights(&flight_ids, found.flights, found.free, |seats| {
            seats < limit
        });
        Ok(())
    }

    /// PostgreSQL: records, flights, and the free seats of the bookings of
    /// txids without a record, picked and locked, in one statement
    /// (`readahead::read_postgres`).
    async fn read_ahead_postgres(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let txids = Self::txids(ops);
        let (flight_ids, _) = Self::flights_of(ops);
        let mut demand = Vec::new();
        for op in ops {
            if let Op::Prepare(booking) | Op::BookLocal(booking) = op {
                for leg in &booking.legs {
                    if let SeatChoice::Count(n) = leg.seats {
                        demand.push(readahead::Demand {
                            txid: booking.txid.as_str(),
                            flight_id: &leg.flight_id,
                            n,
                        });
                    }
                }
            }
        }
        let found = readahead::read_postgres(&mut self.conn, &txids, &flight_ids, &demand).await?;
        self.remember_txns(&txids, found.txns);
        // The statement's demand: the legs of txids without a record.
        let mut wanted: HashMap<String, usize> = HashMap::new();
        for leg in &demand {
            if matches!(self.txns.get(leg.txid), Some(Slot::Absent)) {
                *wanted.entry(leg.flight_id.to_string()).or_default() += leg.n;
            }
        }
        self.demand = wanted;
        // Other lanes may hold free seats locked: a short read proves nothing.
        self.remember_flights(&flight_ids, found.flights, found.free, |_| false);
        Ok(())
    }

    /// Records the slots of `txids` from what a read found.
    fn remember_txns(
        &mut self,
        txids: &[&TxnId],
        mut found: HashMap<String, Result<TxnRecord, StoreError>>,
    ) {
        for txid in txids {
            let slot = match found.remove(txid.as_str()) {
                None => Slot::Absent,
                Some(Ok(record)) => Slot::Stored {
                    stored: record.state,
                    record,
                },
                Some(Err(err)) => Slot::Corrupt(err),
            };
            self.txns.insert(txid.to_string(), slot);
            self.txn_order.push((*txid).clone());
        }
    }

    /// Records the rows of `flight_ids` and the free seats read for those
    /// with demand; `complete` says, from how many seats a flight's read
    /// found, whether they are all its free seats.
    fn remember_flights(
        &mut self,
        flight_ids: &[&str],
        mut rows: HashMap<String, flights::FlightRow>,
        mut free: HashMap<String, Vec<String>>,
        complete: impl Fn(usize) -> bool,
    ) {
        for flight_id in flight_ids {
            let row = rows.remove(*flight_id);
            if row.is_some() && self.demand.contains_key(*flight_id) {
                let seats = free.remove(*flight_id).unwrap_or_default();
                let free = FreeSeats {
                    complete: complete(seats.len()),
                    seats: seats.into(),
                };
                self.free.insert(flight_id.to_string(), free);
            }
            self.flights.insert(flight_id.to_string(), row);
        }
    }

    /// The connection, for statements outside the view (CREATE_FLIGHT);
    /// every pending seat write is sent first.
    pub async fn conn(&mut self) -> Result<&mut Conn<'c>, StoreError> {
        self.flush_seats().await?;
        Ok(&mut self.conn)
    }

    /// The record of `txid`, if any, as the batch has left it so far.
    pub async fn txn(&mut self, txid: &TxnId) -> Result<Option<TxnRecord>, StoreError> {
        if !self.txns.contains_key(txid.as_str()) {
            let slot = match txns::find(&mut self.conn, txid).await? {
                Some(record) => Slot::Stored {
                    stored: record.state,
                    record,
                },
                None => Slot::Absent,
            };
            self.txns.insert(txid.to_string(), slot);
            self.txn_order.push(txid.clone());
        }
        let slot = self
            .txns
            .get_mut(txid.as_str())
            .expect("inserted just above");
        if let Slot::Corrupt(_) = slot {
            let Slot::Corrupt(err) = std::mem::replace(slot, Slot::Absent) else {
                unreachable!("matched just above")
            };
            return Err(err);
        }
        Ok(match slot {
            Slot::Absent | Slot::Corrupt(_) => None,
            Slot::Stored { record, .. } | Slot::New(record) => Some(record.clone()),
        })
    }

    /// Records a txid the shard has not seen (`txns::insert`).
    pub fn insert_txn(&mut self, record: TxnRecord) -> Result<(), StoreError> {
        record
            .validate()
            .map_err(|problem| StoreError::CorruptRow {
                table: "txns",
                key: record.txid.to_string(),
                problem: format!("refusing to write it: {problem}"),
            })?;
        match self.txns.get(record.txid.as_str()) {
            Some(Slot::Absent) => {}
            None => self.txn_order.push(record.txid.clone()),
            Some(_) => {
                return Err(StoreError::RowCount {
                    statement: "INSERT txns",
                    key: record.txid.to_string(),
                    expected: 1,
                    actual: 0,
                })
            }
        }
        self.txns.insert(record.txid.to_string(), Slot::New(record));
        Ok(())
    }

    /// Moves a txid's record from state `from` to `to` (`txns::set_state`).
    pub fn set_txn_state(
        &mut self,
        txid: &TxnId,
        from: TxnState,
        to: TxnState,
    ) -> Result<(), StoreError> {
        match self.txns.get_mut(txid.as_str()) {
            Some(Slot::Stored { record, .. } | Slot::New(record)) if record.state == from => {
                record.state = to;
                record.updated_at_ms = self.now_ms;
                Ok(())
            }
            _ => Err(StoreError::RowCount {
                statement: "UPDATE txns state",
                key: txid.to_string(),
                expected: 1,
                actual: 0,
            }),
        }
    }

    /// The seat map of `flight_id`, if the flight exists.
    pub async fn flight(&mut self, flight_id: &str) -> Result<Option<FlightMap>, StoreError> {
        if !self.flights.contains_key(flight_id) {
            let row = flights::find_row(&mut self.conn, flight_id).await?;
            self.flights.insert(flight_id.to_string(), row);
        }
        match &self.flights[flight_id] {
            Some(row) => flights::decode(flight_id, row).map(Some),
            None => Ok(None),
        }
    }

    /// A flight this batch has just created (its rows are in the database).
    pub fn created_flight(&mut self, map: &FlightMap) {
        let row = flights::FlightRow::of(map);
        self.flights.insert(map.flight_id.clone(), Some(row));
        self.free.remove(&map.flight_id);
    }

    /// Up to `count` free seats of the flight, lowest seat_index first
    /// (`seats::lowest_free`): fewer only if it has no more.
    pub async fn lowest_free(
        &mut self,
        flight_id: &str,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        let demand = self.demand.get(flight_id).copied().unwrap_or(0);
        let known = self
            .free
            .get(flight_id)
            .is_some_and(|free| free.complete || free.seats.len() >= count);
        if !known {
            if self.dirty.contains(flight_id) {
                self.flush_seats().await?;
            }
            let limit = count.max(demand);
            let seats = seats::lowest_free(&mut self.conn, self.backend, flight_id, limit).await?;
            let free = FreeSeats {
                complete: self.backend == Backend::Sqlite && seats.len() < limit,
                seats: seats.into(),
            };
            self.free.insert(flight_id.to_string(), free);
        }
        if let Some(left) = self.demand.get_mut(flight_id) {
            *left = left.saturating_sub(count);
        }
        let free = &self.free[flight_id];
        Ok(free.seats.iter().take(count).cloned().collect())
    }

    /// The state of each named seat that exists (`seats::states`).
    pub async fn seat_states(
        &mut self,
        flight_id: &str,
        seat_nos: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        self.flush_seats().await?;
        seats::states(&mut self.conn, self.backend, flight_id, seat_nos).await
    }

    /// Takes a free seat for `txid` (`seats::claim`).
    pub fn claim(
        &mut self,
        flight_id: &str,
        seat_no: &str,
        to: SeatState,
        txid: &TxnId,
        passenger: Option<&str>,
    ) {
        debug_assert!(
            to != SeatState::Free,
            "claiming a seat leaves it held or booked"
        );
        if let Some(free) = self.free.get_mut(flight_id) {
            if free.seats.front().is_some_and(|s| s == seat_no) {
                free.seats.pop_front();
            } else {
                free.seats.retain(|s| s != seat_no);
            }
        }
        self.dirty.insert(flight_id.to_string());
        self.claims.push(seats::Claim {
            flight_id: flight_id.to_string(),
            seat_no: seat_no.to_string(),
            state: to.as_str(),
            txid: txid.to_string(),
            passenger: passenger.map(str::to_string),
        });
    }

    /// Moves every seat of the txid of `record` (`seats::move_all`).
    pub async fn move_seats(
        &mut self,
        record: &TxnRecord,
        transition: Transition,
    ) -> Result<(), StoreError> {
        if self.moves.iter().any(|m| m.txid == record.txid) {
            self.flush_seats().await?;
        }
        for leg in &record.legs {
            if transition.seats_to == SeatState::Free {
                // Freed seats may be lower than those read: read again.
                self.free.remove(&leg.flight_id);
            }
            self.dirty.insert(leg.flight_id.clone());
        }
        self.moves.push(seats::Move {
            txid: record.txid.clone(),
            transition,
            expected: record.seat_count(),
        });
        Ok(())
    }

    /// Sends the pending seat writes (see `flush`).
    async fn flush_seats(&mut self) -> Result<(), StoreError> {
        self.flush(false).await
    }

    /// Sends the pending writes as one script (`script.rs`): seat claims,
    /// then seat moves (a txid's seats are claimed before a later operation
    /// of the batch moves them; a seat freed by a move is claimed only after
    /// a read that flushed the move), then, with `txns`, the `txns` rows.
    /// Then checks what each statement changed.
    async fn flush(&mut self, with_txns: bool) -> Result<(), StoreError> {
        let backend = self.backend;
        let mut script = Script::default();
        // A txid that claims seats and moves them in one flush (PREPARE
        // then ABORT in one batch) needs the move to see the claim.
        if !self.moves.is_empty() && !self.claims.is_empty() {
            let claiming: HashSet<&str> = self.claims.iter().map(|c| c.txid.as_str()).collect();
            if self
                .moves
                .iter()
                .any(|m| claiming.contains(m.txid.as_str()))
            {
                script.separate();
            }
        }
        let claims = (!self.claims.is_empty())
            .then(|| seats::push_claims(&mut script, backend, &self.claims));
        let moves =
            (!self.moves.is_empty()).then(|| seats::push_moves(&mut script, backend, &self.moves));
        let mut inserts: Vec<&TxnRecord> = Vec::new();
        let mut updates: Vec<((TxnState, TxnState), Vec<&TxnId>)> = Vec::new();
        if with_txns {
            for txid in &self.txn_order {
                match &self.txns[txid.as_str()] {
                    Slot::New(record) => inserts.push(record),
                    Slot::Stored { record, stored } if record.state != *stored => {
                        let key = (*stored, record.state);
                        match updates.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, txids)) => txids.push(txid),
                            None => updates.push((key, vec![txid])),
                        }
                    }
                    Slot::Stored { .. } | Slot::Absent | Slot::Corrupt(_) => {}
                }
            }
        }
        let insert = if inserts.is_empty() {
            None
        } else {
            Some(txns::push_insert(&mut script, backend, &inserts)?)
        };
        let updates: Vec<(TxnState, Vec<&TxnId>, usize)> = updates
            .into_iter()
            .map(|((from, to), txids)| {
                let index =
                    txns::push_set_states(&mut script, backend, &txids, from, to, self.now_ms);
                (to, txids, index)
            })
            .collect();
        if script.is_empty() {
            return Ok(());
        }
        let outcomes = script.run(&mut self.conn, backend).await?;
        if let Some(index) = claims {
            seats::check_claims(&mut self.conn, &self.claims, &outcomes[index]).await?;
        }
        if let Some(statements) = &moves {
            seats::check_moves(&self.moves, statements, &outcomes)?;
        }
        if let Some(index) = insert {
            txns::check_insert(&inserts, &outcomes[index])?;
        }
        for (to, txids, index) in &updates {
            txns::check_set_states(&mut self.conn, txids, *to, &outcomes[*index]).await?;
        }
        self.claims.clear();
        self.moves.clear();
        self.dirty.clear();
        Ok(())
    }

    /// Sends every pending write; the caller then commits.
    pub async fn finish(mut self) -> Result<(), StoreError> {
        self.flush(true).await
    }
}

-- Indexes that hold only the rows their queries look for. Every index entry
-- a batch changes is a page it writes to the WAL (SQLite) or heap and WAL
-- (PostgreSQL), and the old indexes changed entries that no query reads:
-- - seats_by_flight_state held every seat, so booking a held seat moved its
--   entry from the 'held' to the 'booked' part of the flight's range; the
--   batches look up free seats only.
-- - seats_by_txid held every free seat under NULL, so holding a seat deleted
--   an entry from a page chosen by the seat's rowid; the batches look up
--   seats by txid only for txids that hold them.
-- - txns_by_state_age held every record, so each commit or abort moved an
--   entry to the 'committed' or 'aborted' part; the in-doubt sweep and
--   ListTxns look up prepared records only.
-- A queried condition must name the literal of the index's WHERE clause
-- (state = 'free', state = 'prepared') for the planner to use it.

DROP INDEX seats_by_flight_state;
DROP INDEX seats_by_txid;
DROP INDEX txns_by_state_age;

-- The lowest free seats of a flight.
CREATE INDEX seats_free ON seats (flight_id, seat_index) WHERE state = 'free';
-- The seats a txid holds or booked.
CREATE INDEX seats_by_txid ON seats (txid) WHERE txid IS NOT NULL;
-- The in-doubt sweep: prepared records, oldest first.
CREATE INDEX txns_prepared ON txns (updated_at, txid) WHERE state = 'prepared';

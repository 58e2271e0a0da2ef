-- The shard schema: flights, their seat rows, and the transactions this shard
-- has seen. The test suite's invariant checker reads these tables directly:
-- table names, column names and state values are part of the contract.
-- The SQL is the common subset of SQLite and PostgreSQL.

CREATE TABLE flights (
    flight_id TEXT PRIMARY KEY,
    seat_rows INTEGER NOT NULL,
    letters   TEXT NOT NULL,
    capacity  INTEGER NOT NULL
);

CREATE TABLE seats (
    flight_id  TEXT NOT NULL,
    seat_no    TEXT NOT NULL,
    -- Row-major position: (row - 1) * length(letters) + letter position.
    seat_index INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('free', 'held', 'booked')),
    -- Set iff state != 'free'.
    txid       TEXT NULL,
    passenger  TEXT NULL,
    PRIMARY KEY (flight_id, seat_no),
    CHECK ((state = 'free') = (txid IS NULL))
);

CREATE INDEX seats_by_flight_state ON seats (flight_id, state, seat_index);
CREATE INDEX seats_by_txid ON seats (txid);

CREATE TABLE txns (
    txid           TEXT PRIMARY KEY,
    state          TEXT NOT NULL CHECK (state IN ('prepared', 'committed', 'aborted')),
    -- '2pc': via Prepare; 'local': via BookLocal (one-phase or saga leg).
    kind           TEXT NOT NULL CHECK (kind IN ('2pc', 'local')),
    -- Legs of the whole itinerary on all shards; 0 for fences.
    itinerary_legs INTEGER NOT NULL,
    -- JSON: the seats this shard held or booked per leg; [] for NO votes and fences.
    legs           TEXT NOT NULL,
    -- JSON of a NO vote's reason; NULL otherwise.
    refusal        TEXT NULL,
    -- Unix milliseconds of the last state change.
    updated_at     BIGINT NOT NULL
);

-- The in-doubt sweep looks for old 'prepared' rows.
CREATE INDEX txns_by_state_age ON txns (state, updated_at);

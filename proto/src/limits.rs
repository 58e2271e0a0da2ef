//! Limits on everything a request may carry. Requests beyond them are refused
//! at the edge with a message naming the limit.

/// Most legs in one itinerary.
pub const LEGS_MAX: usize = 8;
/// Most seats one leg may book.
pub const SEATS_PER_LEG_MAX: usize = 9;
/// Longest idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// Longest flight id, in characters.
pub const FLIGHT_ID_CHARS_MAX: usize = 16;
/// Longest passenger name, in bytes.
pub const PASSENGER_BYTES_MAX: usize = 64;
/// The gRPC metadata key of an overload refusal's retry hint, in
/// milliseconds (RESOURCE_EXHAUSTED from `Coordinator.Book`).
pub const RETRY_AFTER_KEY: &str = "retry-after-ms";
/// Largest booking deadline a client may ask for.
pub const TIMEOUT_MS_MAX: u32 = 60_000;
/// Largest encoded request accepted by any service, in bytes.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Seat map limits for a flight.
pub const SEAT_ROWS_MAX: u32 = 200;
pub const SEAT_LETTERS_MAX: usize = 12;
/// Partitions are fixed for the life of a deployment.
pub const PARTITIONS_MAX: u32 = 65_536;
/// Most entries in one DecideMany call (about 42 KiB encoded, within
/// `MESSAGE_BYTES_MAX`).
pub const DECISIONS_PER_CALL_MAX: usize = 1024;
/// Most entries in one ReserveMany call.
pub const RESERVATIONS_PER_CALL_MAX: usize = 256;
/// Most bytes of entries the coordinator puts in one batched call (each
/// entry is also held to `MESSAGE_BYTES_MAX`); participants decode up to
/// 4 MiB.
pub const BATCHED_CALL_BYTES_MAX: usize = 1024 * 1024;

//! Adaptive client-side throttling, after "Handling Overload" in Google's
//! *Site Reliability Engineering* book.
//!
//! When a coordinator refuses bookings for overload (RESOURCE_EXHAUSTED
//! with `retry-after-ms`), each refusal still costs a round trip: encoding,
//! HTTP/2 framing, the coordinator decoding and answering, the client
//! decoding the answer. Under a flash sale offered at many times capacity,
//! those refusals alone can take the CPU the admitted bookings need.
//!
//! A [`Throttle`] counts, over the last `window`, the bookings its client
//! was asked to make (`requests`) and those the coordinator did not refuse
//! for overload (`accepts`). A booking sent counts when its answer comes,
//! one refused locally at once: bookings still in flight count for nothing,
//! so a burst is never refused for being quicker than the answers. While
//! `requests ≤ k × accepts` every booking is sent. Beyond that, the share `(requests − k × accepts) / (requests + 1)`
//! of new bookings is refused locally, with no call made, and the caller gets
//! RESOURCE_EXHAUSTED with the coordinator's last retry hint. The coordinator
//! then hears about `k` times what it admits: enough to keep it at its
//! admission limit, not so much that refusing costs more than booking.
//!
//! The refused share is spread evenly, by error diffusion rather than at
//! random: at a share of 0.8, two bookings in every ten are sent.
//!
//! Only overload refusals count against the coordinator. An unreachable
//! coordinator, an invalid request or an exceeded deadline count as
//! accepts, so they never make the throttle refuse.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::retry_after;

/// Buckets the window is split into; the oldest is dropped as time goes on.
const BUCKETS: usize = 10;
/// Retry hint for a local refusal before any came from the coordinator.
const RETRY_AFTER_DEFAULT: Duration = Duration::from_millis(25);

/// How a [`Throttle`] behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThrottleOptions {
    /// Requests sent per booking the coordinator admits, at most, once it
    /// refuses. Larger lets more refusals through, each a round trip the
    /// coordinator must answer; 1 would never probe for freed capacity.
    pub k: f64,
    /// How far back requests and accepts are counted.
    pub window: Duration,
}

impl Default for ThrottleOptions {
    /// k = 1.1 (the SRE book's "aggressive" value; it suggests 2), window 1 s.
    /// Measured with `bookctl bench --overload` on the 2-core reference
    /// machine, offered 10× its peak: 78–87% of the peak committed at
    /// k = 1.1, 65% at k = 2, whose extra round trips the coordinator must
    /// refuse on the same cores (BENCHMARKS.md, "Overload").
    fn default() -> Self {
        ThrottleOptions {
            k: 1.1,
            window: Duration::from_secs(1),
        }
    }
}

/// Why a [`ThrottleOptions`] cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ThrottleOptionsError {
    #[error("throttle k is {0}; give a finite number of at least 1 (2 lets twice what is admitted through)")]
    K(f64),
    #[error("throttle window is {0:?}; give at least {BUCKETS} ms")]
    Window(Duration),
}

/// A booking refused by the client's throttle, not sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalRefusal {
    /// The coordinator's last `retry-after-ms`, or 25 ms before any.
    pub retry_after: Duration,
    /// The share of bookings being refused now, 0..1.
    pub share: f64,
}

/// What became of a booking that was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Refused for overload, with the coordinator's retry hint (if any).
    Refused { retry_after: Option<Duration> },
    /// Anything else: a reply, or an error that is not an overload refusal.
    Accepted,
}

impl Sent {
    /// What a call's result tells the throttle: only an overload refusal
    /// (RESOURCE_EXHAUSTED with a retry hint) counts against the coordinator.
    pub fn of<T>(result: &Result<T, tonic::Status>) -> Sent {
        match result {
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                match retry_after(status) {
                    Some(hint) => Sent::Refused {
                        retry_after: Some(hint),
                    },
                    // Too large a message, not overload.
                    None => Sent::Accepted,
                }
            }
            _ => Sent::Accepted,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Which slice of time (since the throttle was made) this bucket counts.
    slice: u64,
    requests: u64,
    accepts: u64,
}

#[derive(Debug)]
struct State {
    buckets: [Bucket; BUCKETS],
    /// Error-diffusion credit: a booking is sent when it reaches 1.
    credit: f64,
    retry_after: Duration,
}

/// Adaptive client-side throttling; share one per coordinator among every
/// task that books through it (cheap: one short lock per booking).
#[derive(Debug)]
pub struct Throttle {
    options: ThrottleOptions,
    slice: Duration,
    epoch: Instant,
    state: Mutex<State>,
}

impl Throttle {
    pub fn new(options: ThrottleOptions) -> Result<Throttle, ThrottleOptionsError> {
        if !options.k.is_finite() || options.k < 1.0 {
            return Err(ThrottleOptionsError::K(options.k));
        }
        if options.window < Duration::from_millis(BUCKETS as u64) {
            return Err(ThrottleOptionsError::Window(options.window));
        }
        Ok(Throttle {
            options,
            slice: options.window / BUCKETS as u32,
            epoch: Instant::now(),
            state: Mutex::new(State {
                buckets: [Bucket::default(); BUCKETS],
                credit: 1.0,
                retry_after: RETRY_AFTER_DEFAULT,
            }),
        })
    }

    pub fn options(&self) -> ThrottleOptions {
        self.options
    }

    /// Makes the call `call()` builds, unless it is refused locally, and
    /// counts its answer. The call is not even built when refused.
    pub async fn send<T, F>(
        &self,
        call: impl FnOnce() -> F,
    ) -> Result<Result<T, tonic::Status>, LocalRefusal>
    where
        F: Future<Output = Result<T, tonic::Status>>,
    {
        self.admit_at(Instant::now())?;
        let result = call().await;
        self.record_at(Instant::now(), Sent::of(&result));
        Ok(result)
    }

    /// The share of bookings refused now, 0..1.
    pub fn share(&self) -> f64 {
        self.share_at(Instant::now())
    }

    fn slice_at(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / self.slice.as_nanos()) as u64
    }

    /// The current bucket, emptied first if it still counts an old slice.
    fn bucket(state: &mut State, slice: u64) -> &mut Bucket {
        let bucket = &mut state.buckets[(slice % BUCKETS as u64) as usize];
        if bucket.slice != slice {
            *bucket = Bucket {
                slice,
                ..Bucket::default()
            };
        }
        bucket
    }

    fn share_of(&self, state: &State, slice: u64) -> f64 {
        let (requests, accepts) = state
            .buckets
            .iter()
            .filter(|b| b.slice + BUCKETS as u64 > slice && b.slice <= slice)
            .fold((0, 0), |(r, a), b| (r + b.requests, a + b.accepts));
        let excess = requests as f64 - self.options.k * accepts as f64;
        (excess / (requests as f64 + 1.0)).max(0.0)
    }

    fn share_at(&self, now: Instant) -> f64 {
        let slice = self.slice_at(now);
        let state = self.state.lock().expect("throttle lock poisoned");
        self.share_of(&state, slice)
    }

    fn admit_at(&self, now: Instant) -> Result<(), LocalRefusal> {
        let slice = self.slice_at(now);
        let mut state = self.state.lock().expect("throttle lock poisoned");
        // The share before this request is counted: the first request after
        // a quiet window is always sent.
        let share = self.share_of(&state, slice);
        state.credit = (state.credit + (1.0 - share)).min(1.0);
        if state.credit >= 1.0 - 1e-9 {
            state.credit -= 1.0;
            // Counted when its answer comes (`record_at`).
            Ok(())
        } else {
            Self::bucket(&mut state, slice).requests += 1;
            Err(LocalRefusal {
                retry_after: state.retry_after,
                share,
            })
        }
    }

    fn record_at(&self, now: Instant, sent: Sent) {
        let slice = self.slice_at(now);
        let mut state = self.state.lock().expect("throttle lock poisoned");
        let bucket = Self::bucket(&mut state, slice);
        bucket.requests += 1;
        match sent {
            Sent::Accepted => bucket.accepts += 1,
            Sent::Refused { retry_after } => {
                if let Some(hint) = retry_after {
                    state.retry_after = hint;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(k: f64) -> Throttle {
        Throttle::new(ThrottleOptions {
            k,
            window: Duration::from_secs(1),
        })
        .expect("valid options")
    }

    /// Offers `offered` bookings at `at`; the coordinator admits the first
    /// `capacity` of those sent and refuses the rest. Returns how many were sent.
    fn offer(throttle: &Throttle, at: Instant, offered: usize, capacity: usize) -> usize {
        let mut sent = 0;
        for _ in 0..offered {
            if throttle.admit_at(at).is_ok() {
                sent += 1;
                let answer = if sent <= capacity {
                    Sent::Accepted
                } else {
                    Sent::Refused {
                        retry_after: Some(Duration::from_millis(40)),
                    }
                };
                throttle.record_at(at, answer);
            }
        }
        sent
    }

    #[test]
    fn nothing_is_refused_while_the_coordinator_admits_everything() {
        let throttle = throttle(2.0);
        let start = Instant::now();
        for step in 0..50 {
            let at = start + Duration::from_millis(20 * step);
            assert_eq!(offer(&throttle, at, 100, usize::MAX), 100, "step {step}");
        }
        assert_eq!(throttle.share_at(start + Duration::from_secs(1)), 0.0);
    }

    #[test]
    fn at_ten_times_capacity_about_k_times_capacity_is_sent() {
        for k in [1.5, 2.0] {
            let throttle = throttle(k);
            let start = Instant::now();
            // 1,000 offered per 100 ms slice, 100 admitted: 10 × capacity.
            let mut sent_late = 0;
            for step in 0..30 {
                let at = start + Duration::from_millis(100 * step);
                let sent = offer(&throttle, at, 1000, 100);
                if step >= 20 {
                    sent_late += sent;
                }
            }
            // Once the window is full of the surge, sent ≈ k × admitted.
            let per_slice = sent_late as f64 / 10.0;
            assert!(
                (per_slice - k * 100.0).abs() <= 0.05 * k * 100.0,
                "k {k}: {per_slice} sent per slice"
            );
            let refused = throttle.admit_at(start + Duration::from_millis(2950));
            assert_eq!(
                refused.map_err(|r| r.retry_after),
                Err(Duration::from_millis(40)),
                "a local refusal carries the coordinator's last hint"
            );
        }
    }

    #[test]
    fn the_throttle_lets_go_once_the_window_has_passed() {
        let throttle = throttle(2.0);
        let start = Instant::now();
        for step in 0..10 {
            offer(
                &throttle,
                start + Duration::from_millis(100 * step),
                1000,
                10,
            );
        }
        let during = start + Duration::from_millis(999);
        assert!(
            throttle.share_at(during) > 0.9,
            "{}",
            throttle.share_at(during)
        );
        let after = start + Duration::from_millis(2000);
        assert_eq!(throttle.share_at(after), 0.0);
        assert_eq!(offer(&throttle, after, 50, usize::MAX), 50);
    }

    #[test]
    fn a_burst_still_in_flight_is_never_throttled() {
        let throttle = throttle(1.0);
        let at = Instant::now();
        for n in 0..10_000 {
            assert_eq!(throttle.admit_at(at), Ok(()), "booking {n}");
        }
        assert_eq!(throttle.share_at(at), 0.0);
    }

    #[test]
    fn errors_other_than_overload_never_throttle() {
        let throttle = throttle(2.0);
        let at = Instant::now();
        for _ in 0..1000 {
            throttle.admit_at(at).expect("sent");
            throttle.record_at(at, Sent::Accepted);
        }
        assert_eq!(throttle.share_at(at), 0.0);
    }

    #[test]
    fn a_refusal_without_a_hint_keeps_the_last_hint() {
        let throttle = throttle(1.0);
        let at = Instant::now();
        throttle.admit_at(at).expect("the first request is sent");
        throttle.record_at(at, Sent::Refused { retry_after: None });
        let refusal = (0..10)
            .find_map(|_| throttle.admit_at(at).err())
            .expect("refused with no accepts");
        assert_eq!(refusal.retry_after, RETRY_AFTER_DEFAULT);
        assert!(refusal.share > 0.0);
    }

    #[test]
    fn bad_options_are_refused_with_what_to_fix() {
        let bad_k = Throttle::new(ThrottleOptions {
            k: 0.5,
            ..ThrottleOptions::default()
        });
        assert_eq!(bad_k.unwrap_err(), ThrottleOptionsError::K(0.5));
        let bad_window = Throttle::new(ThrottleOptions {
            window: Duration::from_millis(3),
            ..ThrottleOptions::default()
        });
        assert!(bad_window
            .unwrap_err()
            .to_string()
            .contains("at least 10 ms"));
        assert!(Throttle::new(ThrottleOptions {
            k: f64::NAN,
            ..ThrottleOptions::default()
        })
        .is_err());
    }
}

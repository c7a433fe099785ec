//! The circuit breaker: a plugin that keeps failing is switched off for a while, then given one
//! trial call; each trip that follows doubles the pause, up to a ceiling.
//!
//! Pure: the caller passes the time, so every transition is unit-tested.

/// Consecutive failures that trip the breaker.
pub const TRIP_AFTER: u32 = 3;
/// The first pause after a trip, in milliseconds.
pub const FIRST_PAUSE_MS: u64 = 30_000;
/// The longest pause, in milliseconds.
pub const MAX_PAUSE_MS: u64 = 30 * 60_000;

/// Where a plugin's breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are skipped until this time (ms since the epoch).
    Open {
        /// When the next trial call may happen.
        until_ms: u64,
    },
    /// The pause is over; the next call is a trial.
    HalfOpen,
}

/// One plugin's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    consecutive: u32,
    trips: u32,
    open_until_ms: Option<u64>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new() -> Breaker {
        Breaker {
            consecutive: 0,
            trips: 0,
            open_until_ms: None,
        }
    }

    /// The state at `now_ms`.
    pub fn state(&self, now_ms: u64) -> BreakerState {
        match self.open_until_ms {
            None => BreakerState::Closed,
            Some(until_ms) if now_ms < until_ms => BreakerState::Open { until_ms },
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go through at `now_ms`.
    pub fn allows(&self, now_ms: u64) -> bool {
        !matches!(self.state(now_ms), BreakerState::Open { .. })
    }

    /// Records a successful call: the breaker closes and forgets past trips.
    pub fn success(&mut self) {
        self.consecutive = 0;
        self.trips = 0;
        self.open_until_ms = None;
    }

    /// Records a failed call at `now_ms`; returns true when this failure opened the breaker.
    pub fn failure(&mut self, now_ms: u64) -> bool {
        self.consecutive = self.consecutive.saturating_add(1);
        let trial_failed = self.state(now_ms) == BreakerState::HalfOpen;
        if trial_failed || self.consecutive >= TRIP_AFTER {
            let pause = FIRST_PAUSE_MS
                .saturating_mul(1u64 << self.trips.min(16))
                .min(MAX_PAUSE_MS);
            self.trips = self.trips.saturating_add(1);
            self.open_until_ms = Some(now_ms.saturating_add(pause));
            self.consecutive = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_repeated_failures_and_recovers_after_a_good_trial() {
        let mut b = Breaker::new();
        assert!(!b.failure(0));
        assert!(!b.failure(1));
        b.success();
        assert!(!b.failure(2), "a success in between resets the count");
        assert!(!b.failure(3));
        assert!(b.failure(4), "the third in a row trips it");
        assert_eq!(
            b.state(5),
            BreakerState::Open {
                until_ms: 4 + FIRST_PAUSE_MS
            }
        );
        assert!(!b.allows(5));
        let t = 4 + FIRST_PAUSE_MS;
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        assert!(b.allows(t));
        assert!(b.failure(t), "a failed trial opens it again at once");
        assert_eq!(
            b.state(t),
            BreakerState::Open {
                until_ms: t + 2 * FIRST_PAUSE_MS
            },
            "for twice as long"
        );
        b.success();
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn pauses_are_capped() {
        let mut b = Breaker::new();
        let mut now = 0;
        let mut pauses = Vec::new();
        for _ in 0..40 {
            b.failure(now);
            b.failure(now);
            b.failure(now);
            match b.state(now) {
                BreakerState::Open { until_ms } => {
                    pauses.push(until_ms - now);
                    now = until_ms;
                }
                other => panic!("still failing, yet {other:?}"),
            }
        }
        assert_eq!(pauses[0], FIRST_PAUSE_MS);
        assert!(pauses.iter().all(|&p| p <= MAX_PAUSE_MS), "{pauses:?}");
        assert_eq!(pauses.last(), Some(&MAX_PAUSE_MS), "the cap is reached");
    }
}

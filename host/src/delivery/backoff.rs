//! Retry timing: exponential backoff with full jitter, whose cap adapts to how reliably the peer
//! has answered lately.
//!
//! A peer that usually answers gets a short cap (a blip is retried within seconds); a peer that
//! keeps failing drifts towards the configured maximum, so a node offline for days costs little.
//! Everything here is pure: time comes in as a number and randomness as a generator, so the
//! schedule is unit-tested without sleeping.

use std::collections::HashMap;

use libp2p::PeerId;
use rand::Rng;

use crate::config::DeliveryConfig;

/// Weight of the latest attempt in a peer's success rate.
const ALPHA: f64 = 0.2;

/// The backoff parameters.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
}

impl Backoff {
    /// The schedule the configuration asks for.
    pub fn from_config(config: &DeliveryConfig) -> Backoff {
        Backoff {
            initial_ms: config.backoff_initial_ms,
            max_ms: config.backoff_max_ms,
        }
    }

    /// The cap for a peer whose recent success rate is `success` (0 to 1): eight initial delays for
    /// a peer that always answers, rising with the square of the failure rate to the maximum.
    pub fn cap_ms(&self, success: f64) -> u64 {
        let floor = self.initial_ms.saturating_mul(8).min(self.max_ms);
        let failure = (1.0 - success.clamp(0.0, 1.0)).powi(2);
        floor + ((self.max_ms - floor) as f64 * failure) as u64
    }

    /// The ceiling after `failures` consecutive failures: `initial * 2^(failures-1)`, capped.
    pub fn ceiling_ms(&self, failures: u32, success: f64) -> u64 {
        let shift = failures.saturating_sub(1).min(40);
        self.initial_ms
            .saturating_mul(1u64 << shift)
            .min(self.cap_ms(success))
    }
}

/// What the schedule knows of one peer.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PeerRecord {
    /// Moving average of attempt outcomes (1 = answered).
    success: f64,
    /// Failures since the last answer.
    failures: u32,
}

impl Default for PeerRecord {
    fn default() -> Self {
        PeerRecord {
            success: 1.0,
            failures: 0,
        }
    }
}

/// Per-peer retry timing.
#[derive(Debug)]
pub struct Schedule {
    backoff: Backoff,
    peers: HashMap<PeerId, PeerRecord>,
}

impl Schedule {
    /// An empty schedule: every peer starts out trusted.
    pub fn new(backoff: Backoff) -> Schedule {
        Schedule {
            backoff,
            peers: HashMap::new(),
        }
    }

    /// The peer answered.
    pub fn answered(&mut self, peer: PeerId) {
        let record = self.peers.entry(peer).or_default();
        record.success = record.success * (1.0 - ALPHA) + ALPHA;
        record.failures = 0;
    }

    /// The peer did not answer (or refused for now) at `now`; returns when to try again.
    pub fn failed<R: Rng>(&mut self, peer: PeerId, now: u64, rng: &mut R) -> u64 {
        let record = self.peers.entry(peer).or_default();
        record.success *= 1.0 - ALPHA;
        record.failures = record.failures.saturating_add(1);
        let ceiling = self.backoff.ceiling_ms(record.failures, record.success);
        now + rng.gen_range(0..=ceiling)
    }

    /// The current ceiling for `peer`, for display and tests.
    pub fn ceiling_ms(&self, peer: &PeerId) -> u64 {
        let record = self.peers.get(peer).copied().unwrap_or_default();
        self.backoff
            .ceiling_ms(record.failures.max(1), record.success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn schedule() -> Schedule {
        Schedule::new(Backoff {
            initial_ms: 500,
            max_ms: 300_000,
        })
    }

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn the_cap_follows_the_success_rate() {
        let b = Backoff {
            initial_ms: 500,
            max_ms: 300_000,
        };
        assert_eq!(b.cap_ms(1.0), 4_000);
        assert_eq!(b.cap_ms(0.0), 300_000);
        assert!(b.cap_ms(0.9) < 8_000, "{}", b.cap_ms(0.9));
        assert!(
            b.cap_ms(0.5) > 70_000 && b.cap_ms(0.5) < 80_000,
            "{}",
            b.cap_ms(0.5)
        );
        let tiny = Backoff {
            initial_ms: 500,
            max_ms: 1_000,
        };
        assert_eq!(
            tiny.cap_ms(1.0),
            1_000,
            "the floor never passes the maximum"
        );
    }

    #[test]
    fn a_peer_that_keeps_failing_drifts_to_the_maximum() {
        let mut s = schedule();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let p = peer();
        let mut now = 0;
        let mut ceilings = Vec::new();
        for _ in 0..40 {
            let next = s.failed(p, now, &mut rng);
            let ceiling = s.ceiling_ms(&p);
            assert!(
                next >= now && next <= now + ceiling,
                "next {next} outside [{now}, {}]",
                now + ceiling
            );
            ceilings.push(ceiling);
            now = next;
        }
        // First retries are quick...
        assert_eq!(&ceilings[..3], &[500, 1_000, 2_000]);
        // ...then the ceiling never shrinks while failures go on, and ends at the maximum.
        assert!(ceilings.windows(2).all(|w| w[1] >= w[0]), "{ceilings:?}");
        assert!(ceilings[39] > 290_000, "{}", ceilings[39]);
    }

    #[test]
    fn a_peer_that_usually_answers_is_retried_soon() {
        let mut s = schedule();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let p = peer();
        for round in 0..50 {
            if round % 10 == 9 {
                s.failed(p, 0, &mut rng);
            } else {
                s.answered(p);
            }
        }
        // One failure in ten: after a blip the retry comes within the short cap.
        let next = s.failed(p, 1_000, &mut rng);
        assert!(next <= 1_000 + 4_000 + 2_000, "{next}");
        assert!(s.ceiling_ms(&p) < 10_000, "{}", s.ceiling_ms(&p));
        // And an answer resets the exponent.
        s.answered(p);
        assert_eq!(s.ceiling_ms(&p), 500);
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let mut s = schedule();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // The fourth failure of a fresh peer: ceiling 4 s, drawn uniformly from [0, 4 s].
        let delays: Vec<u64> = (0..2000)
            .map(|_| {
                let p = peer();
                for _ in 0..3 {
                    s.failed(p, 0, &mut rng);
                }
                s.failed(p, 10_000, &mut rng) - 10_000
            })
            .collect();
        assert!(delays.iter().all(|&d| d <= 4_000));
        let low = delays.iter().filter(|&&d| d < 1000).count();
        let high = delays.iter().filter(|&&d| d > 3000).count();
        assert!((350..650).contains(&low), "low quarter {low}");
        assert!((350..650).contains(&high), "high quarter {high}");
    }
}

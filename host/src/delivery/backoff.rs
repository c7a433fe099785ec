//! Retry delays: exponential with full jitter (a uniform draw between zero and the exponential
//! ceiling), so that many senders retrying one peer spread out instead of arriving together.

use rand::Rng;

use crate::config::DeliveryConfig;

/// The retry schedule.
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

    /// The ceiling after `failures` failed attempts: `initial * 2^(failures-1)`, capped.
    pub fn ceiling_ms(&self, failures: u32) -> u64 {
        let shift = failures.saturating_sub(1).min(40);
        self.initial_ms
            .saturating_mul(1u64 << shift)
            .min(self.max_ms)
    }

    /// The delay before the next attempt after `failures` failed attempts.
    pub fn delay_ms<R: Rng>(&self, failures: u32, rng: &mut R) -> u64 {
        rng.gen_range(0..=self.ceiling_ms(failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn backoff() -> Backoff {
        Backoff {
            initial_ms: 500,
            max_ms: 60_000,
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = backoff();
        let ceilings: Vec<u64> = (1..=9).map(|n| b.ceiling_ms(n)).collect();
        assert_eq!(
            ceilings,
            vec![500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(
            b.ceiling_ms(1000),
            60_000,
            "no overflow on huge attempt counts"
        );
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let b = backoff();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<u64> = (0..2000).map(|_| b.delay_ms(4, &mut rng)).collect();
        assert!(delays.iter().all(|&d| d <= 4000));
        let low = delays.iter().filter(|&&d| d < 1000).count();
        let high = delays.iter().filter(|&&d| d > 3000).count();
        // Uniform: about a quarter in each end.
        assert!((350..650).contains(&low), "low quarter {low}");
        assert!((350..650).contains(&high), "high quarter {high}");
    }
}

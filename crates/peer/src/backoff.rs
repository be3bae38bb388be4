//! Exponential backoff with jitter for redialling a peer. Pure: the caller passes the
//! random source.

use std::time::Duration;

use rand::Rng;

/// Delays between dial attempts: the ceiling starts at `min` and doubles per attempt up
/// to `max`; each delay is drawn uniformly from `[ceiling / 2, ceiling]`, never below
/// `min`. The jitter keeps nodes that lost each other at the same moment from redialling
/// in lockstep.
///
/// Call order: [`Backoff::delay`] before each retry, [`Backoff::reset`] once a connection
/// has proved healthy.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        assert!(min <= max, "peer: backoff min {min:?} above max {max:?}");
        Backoff {
            min,
            max,
            ceiling: min,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.ceiling = self.min;
    }

    pub(crate) fn delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = ceiling.saturating_mul(2).min(self.max);
        let floor = (ceiling / 2).max(self.min);
        if floor >= ceiling {
            return ceiling;
        }
        rng.random_range(floor..=ceiling)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn delays_grow_to_max_within_bounds_and_reset() {
        let min = Duration::from_millis(50);
        let max = Duration::from_secs(2);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut backoff = Backoff::new(min, max);
        assert_eq!(backoff.delay(&mut rng), min);
        let mut ceiling = min;
        for _ in 0..20 {
            ceiling = (ceiling * 2).min(max);
            let delay = backoff.delay(&mut rng);
            assert!(
                delay >= (ceiling / 2).max(min) && delay <= ceiling,
                "{delay:?}"
            );
        }
        assert_eq!(backoff.ceiling, max);
        backoff.reset();
        assert_eq!(backoff.delay(&mut rng), min);
    }
}

//! The retry schedule of SPEC §4, as data: retry n (n >= 1) waits a random
//! delay in [base, min(max, base * 2^n)]; a destination's `Retry-After`
//! raises it to min(Retry-After, max) when that is larger.

use std::time::Duration;

use rand::RngExt as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The bounds of the wait before retry `n` (1-based).
    pub fn bounds(&self, n: u32) -> (Duration, Duration) {
        let factor = 2u32.checked_pow(n.min(31)).unwrap_or(u32::MAX);
        let upper = self.base.saturating_mul(factor).min(self.max);
        (self.base.min(upper), upper)
    }

    /// The wait before retry `n`, jittered uniformly within [`Self::bounds`].
    pub fn delay(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let (lo, hi) = self.bounds(n);
        let jittered = if hi > lo {
            let span = (hi - lo).as_nanos().min(u64::MAX as u128) as u64;
            lo + Duration::from_nanos(rand::rng().random_range(0..=span))
        } else {
            lo
        };
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    #[test]
    fn bounds_double_per_retry_and_clamp_at_max() {
        assert_eq!(
            B.bounds(1),
            (Duration::from_secs(1), Duration::from_secs(2))
        );
        assert_eq!(
            B.bounds(3),
            (Duration::from_secs(1), Duration::from_secs(8))
        );
        assert_eq!(
            B.bounds(10),
            (Duration::from_secs(1), Duration::from_secs(60))
        );
        assert_eq!(
            B.bounds(200),
            (Duration::from_secs(1), Duration::from_secs(60))
        );
    }

    #[test]
    fn delays_stay_within_bounds() {
        for n in 1..12 {
            let (lo, hi) = B.bounds(n);
            for _ in 0..200 {
                let d = B.delay(n, None);
                assert!(
                    d >= lo && d <= hi,
                    "retry {n}: {d:?} not in [{lo:?}, {hi:?}]"
                );
            }
        }
    }

    #[test]
    fn retry_after_raises_the_delay_but_is_capped_at_max() {
        assert!(B.delay(1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        assert_eq!(
            B.delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(60)
        );
        // A short Retry-After never shortens the schedule.
        assert!(B.delay(1, Some(Duration::ZERO)) >= Duration::from_secs(1));
    }
}

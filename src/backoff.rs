//! Capped exponential backoff with jitter for reconnects.

use std::time::Duration;

/// Delays that double from `min` up to `max`, each scaled by a random factor
/// in [0.5, 1.0] so that many teal processes do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    /// The delay before the next attempt after a session that lasted
    /// `session` (zero: it never got going). A session that outlived the
    /// longest delay was healthy: the delays start again from `min`. One
    /// that failed sooner counts as part of the same trouble, so a link that
    /// keeps breaking right after each reconnect is retried ever more slowly.
    pub(crate) fn next_delay_after(&mut self, session: Duration) -> Duration {
        if session >= self.max {
            self.attempt = 0;
        }
        self.next_delay()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(delays[7] >= Duration::from_millis(500));
    }

    #[test]
    fn a_healthy_session_resets_the_delays_and_a_short_one_does_not() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..6 {
            b.next_delay_after(Duration::ZERO);
        }
        // Sessions that broke right away: still at the cap.
        assert!(b.next_delay_after(Duration::from_millis(900)) >= Duration::from_millis(500));
        // A session that lasted the longest delay or more was healthy.
        assert!(b.next_delay_after(Duration::from_secs(1)) <= Duration::from_millis(100));
        assert!(b.next_delay_after(Duration::ZERO) <= Duration::from_millis(200));
        assert!(b.next_delay_after(Duration::from_secs(9 * 60)) <= Duration::from_millis(100));
    }
}

//! Restart back-off like kubelet's CrashLoopBackOff: the first restart is
//! immediate, then `initial` doubling up to `max`; a run that stayed ready for
//! `reset_after` starts the schedule over.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

/// Where a service is in its schedule.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
    ready_since: Option<Instant>,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            failures: 0,
            ready_since: None,
        }
    }

    /// The service became ready now.
    pub fn ready(&mut self) {
        self.ready_since = Some(Instant::now());
    }

    /// Downs since the schedule last started over (a long enough ready run, or an
    /// explicit start): what `max_restarts` counts, like systemd's start limit
    /// within `StartLimitIntervalSec`.
    pub fn failures_in_window(&self) -> u32 {
        self.failures
    }

    /// Someone asked for a start or restart: the schedule starts over.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.ready_since = None;
    }

    /// The service went down now: how long to wait before the next start.
    pub fn next_delay(&mut self) -> Duration {
        if self
            .ready_since
            .take()
            .is_some_and(|since| since.elapsed() >= self.policy.reset_after)
        {
            self.failures = 0;
        }
        let delay = match self.failures {
            0 => Duration::ZERO,
            n => self
                .policy
                .initial
                .saturating_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX))
                .min(self.policy.max),
        };
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn immediate_then_doubling_from_ten_seconds_to_five_minutes() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        let delays: Vec<u64> = (0..10).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn ten_minutes_ready_resets_the_schedule_and_less_does_not() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        for _ in 0..4 {
            backoff.next_delay();
        }
        backoff.ready();
        tokio::time::advance(Duration::from_secs(599)).await;
        assert_eq!(
            backoff.next_delay(),
            Duration::from_secs(80),
            "599 s ready is not enough"
        );
        backoff.ready();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(backoff.next_delay(), Duration::ZERO, "600 s ready resets");
        assert_eq!(backoff.next_delay(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_counts_downs_until_a_long_ready_run_or_a_reset() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        for expected in 1..=3 {
            backoff.next_delay();
            assert_eq!(backoff.failures_in_window(), expected);
        }
        // A crash a day: each one after a long ready run counts as the first.
        for _ in 0..5 {
            backoff.ready();
            tokio::time::advance(Duration::from_secs(86_400)).await;
            backoff.next_delay();
            assert_eq!(backoff.failures_in_window(), 1);
        }
        backoff.next_delay();
        assert_eq!(backoff.failures_in_window(), 2);
        backoff.reset();
        assert_eq!(backoff.failures_in_window(), 0);
        assert_eq!(
            backoff.next_delay(),
            Duration::ZERO,
            "a reset restarts at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_policy_restarts_at_once_forever() {
        let zero = BackoffPolicy {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            reset_after: Duration::ZERO,
        };
        let mut backoff = Backoff::new(zero);
        assert!((0..100).all(|_| backoff.next_delay().is_zero()));
    }
}

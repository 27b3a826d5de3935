//! The retry schedule: how long a deferred job waits before its next attempt.

use std::time::Duration;

use tern_runtime::config::{ConfigValue, parse_duration};

/// Delays between attempts; the last one repeats until the message expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    /// The delay after attempt number `attempt` (0 = the first attempt)
    /// failed, before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let i = (attempt as usize).min(self.0.len().saturating_sub(1));
        self.0.get(i).copied().unwrap_or(Duration::from_secs(60))
    }

    /// The delay with ±10% jitter, so jobs deferred together (a destination
    /// that was down) do not all come back in the same second.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, random_jitter())
    }

    /// The delay scaled by `jitter` (from [`random_jitter`]): the pure part
    /// of [`RetrySchedule::delay`].
    pub fn delay_with(&self, attempt: u32, jitter: f64) -> Duration {
        self.base_delay(attempt).mul_f64(jitter)
    }
}

/// A jitter factor between 0.9 and 1.1 (±10%).
pub fn random_jitter() -> f64 {
    rand::random_range(0.9..=1.1)
}

impl RetrySchedule {}

impl ConfigValue for RetrySchedule {
    const EXPECTED: &'static str =
        "a comma-separated list of delays like 2m,5m,10m,1h (the last repeats)";
    fn parse_value(s: &str) -> Option<Self> {
        let delays = s
            .split(',')
            .map(str::trim)
            .map(parse_duration)
            .collect::<Option<Vec<_>>>()?;
        (!delays.is_empty() && delays.iter().all(|d| !d.is_zero())).then_some(RetrySchedule(delays))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_delay_repeats_and_jitter_stays_within_ten_percent() {
        let s = RetrySchedule::parse_value("2m, 5m,4h").unwrap();
        assert_eq!(s.base_delay(0), Duration::from_secs(120));
        assert_eq!(s.base_delay(1), Duration::from_secs(300));
        assert_eq!(s.base_delay(2), Duration::from_secs(4 * 3600));
        assert_eq!(s.base_delay(40), Duration::from_secs(4 * 3600));
        for _ in 0..200 {
            let d = s.delay(0).as_secs_f64();
            assert!((108.0..=132.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn bad_schedules_are_rejected() {
        assert!(RetrySchedule::parse_value("").is_none());
        assert!(RetrySchedule::parse_value("2m,soon").is_none());
        assert!(RetrySchedule::parse_value("0s").is_none());
    }
}

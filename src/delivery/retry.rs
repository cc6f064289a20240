//! Retry timing shared by the network sinks: exponential backoff with jitter, capped, with a
//! server's `Retry-After` taking precedence, and every wait cut short by shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::RetryConfig;
use crate::io::mqtt::backoff::Backoff;

/// The attempts at delivering one alert (or one batch).
#[derive(Debug, Clone)]
pub struct Attempts {
    max_attempts: u32,
    max_delay: Duration,
    backoff: Backoff,
    made: u32,
}

impl Attempts {
    /// A fresh series of attempts under `policy`.
    pub fn new(policy: &RetryConfig) -> Attempts {
        Attempts {
            max_attempts: policy.max_attempts.max(1),
            max_delay: policy.max_delay,
            backoff: Backoff::new(policy.initial_delay, policy.max_delay),
            made: 0,
        }
    }

    /// Records an attempt; returns its number (1 for the first).
    pub fn start(&mut self) -> u32 {
        self.made = self.made.saturating_add(1);
        self.made
    }

    /// Attempts made so far.
    pub fn made(&self) -> u32 {
        self.made
    }

    /// True when another attempt is allowed.
    pub fn may_retry(&self) -> bool {
        self.made < self.max_attempts
    }

    /// The delay before the next attempt: `retry_after` when the server gave one (capped at
    /// the policy's `max_delay`, so a hostile header cannot stall a sink for a day), else the
    /// next backoff step.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(d) => d.min(self.max_delay),
            None => self.backoff.next_delay(),
        }
    }

    /// Sleeps before the next attempt; false when `stop` was cancelled first.
    pub async fn wait(&mut self, retry_after: Option<Duration>, stop: &CancellationToken) -> bool {
        let delay = self.next_delay(retry_after);
        tokio::select! {
            biased;
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
/// `now` is the wall clock in seconds since the epoch.
pub fn parse_retry_after(value: &str, now: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value)
        .ok()?
        .timestamp();
    Some(Duration::from_secs(u64::try_from(when - now).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("7", 0), Some(Duration::from_secs(7)));
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .timestamp();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date in the past means now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn attempts_are_counted_and_retry_after_is_capped() {
        let policy = RetryConfig {
            max_attempts: 3,
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(2),
        };
        let mut a = Attempts::new(&policy);
        assert_eq!(a.start(), 1);
        assert!(a.may_retry());
        assert_eq!(
            a.next_delay(Some(Duration::from_secs(3600))),
            Duration::from_secs(2)
        );
        assert!(a.next_delay(None) <= Duration::from_millis(10));
        a.start();
        a.start();
        assert!(!a.may_retry());
        assert_eq!(a.made(), 3);
    }
}

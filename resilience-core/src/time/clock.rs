//! Time, injected: schedules, locks, retention and catalog times read a [`Clock`], so tests
//! move time forward without sleeping.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Duration, Utc};
use tokio::sync::watch;

/// A future that completes at a point in time, as a [`Clock`] sees it.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> DateTime<Utc>;

    /// Completes once `now() >= at`. The default sleeps on tokio's timer for the difference
    /// (at once when `at` has passed); a test clock completes when it is moved past `at`.
    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep {
        let wait = (at - self.now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to, for tests. [`Clock::sleep_until`] completes when the
/// clock is moved past the time, so schedulers run in tests without sleeping.
///
/// ```
/// use resilience_core::time::clock::{Clock, ManualClock};
/// let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
/// clock.advance(chrono::Duration::hours(1));
/// assert_eq!(clock.now().to_rfc3339(), "2026-01-01T01:00:00+00:00");
/// ```
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: watch::Sender::new(start),
        }
    }

    /// Moves the clock forward (or back, with a negative duration).
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|now| *now += by);
    }

    /// Sets the clock.
    pub fn set(&self, to: DateTime<Utc>) {
        self.now.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is dropped, time stops for good.
            let _ = rx.wait_for(|now| *now >= at).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_ends_only_when_the_clock_passes_its_time() {
        let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
        let at = clock.now() + Duration::seconds(10);
        let mut sleep = clock.sleep_until(at);
        clock.advance(Duration::seconds(9));
        assert!(futures::poll!(&mut sleep).is_pending());
        clock.advance(Duration::seconds(1));
        tokio::time::timeout(std::time::Duration::from_secs(5), sleep)
            .await
            .expect("woke when the clock reached its time");
    }
}

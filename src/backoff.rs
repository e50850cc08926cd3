//! The one retry delay of the crate: capped exponential backoff. Every
//! retried dependency (Redis, the dead-letter store, the lookup database,
//! the schema registry) waits 100 ms, then twice as long each time, up to a
//! cap (`redis.max_retry_backoff` for outages), so an outage costs few calls
//! and a recovery is noticed within the cap.

use std::time::Duration;

/// The first wait after a failure.
pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at [`FIRST_DELAY`], doubling up to `max`.
    pub(crate) fn new(max: Duration) -> Backoff {
        Backoff {
            next: FIRST_DELAY.min(max),
            max,
        }
    }

    /// The delay to wait now; the one after it is twice as long, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100ms_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        let mut tiny = Backoff::new(Duration::from_millis(30));
        assert_eq!(tiny.next_delay(), Duration::from_millis(30));
    }
}

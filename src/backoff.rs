//! The one retry policy of the crate: capped exponential backoff, and the
//! driver every retry loop runs through. Every retried dependency (Redis,
//! the dead-letter store, the lookup database, the schema registry) waits
//! 100 ms, then twice as long each time, up to a cap
//! (`redis.max_retry_backoff` for outages), so an outage costs few calls and
//! a recovery is noticed within the cap.
//!
//! [`Retry::run`] takes the operation, a classifier that says for each
//! failure whether to try again (and reports it: a metric, a log line, the
//! readiness text), and an optional cancellation token; it owns the waiting,
//! so no loop writes its own sleep.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

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

    /// The cap: the wait for failures retrying cannot fix quickly.
    pub(crate) fn max(&self) -> Duration {
        self.max
    }
}

/// A classifier's answer for one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Retriable: wait the next backoff delay and try again.
    Retry,
    /// Retrying may not fix it soon (an operator must act), but giving up
    /// would lose work: wait the longest delay and try again.
    RetryAtCap,
    /// Permanent: stop and return the error.
    Stop,
}

/// One failed attempt, as the classifier sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// 1 for the first attempt.
    pub(crate) number: u32,
    /// Whether another attempt may follow (false on the last one allowed).
    pub(crate) will_retry: bool,
    /// The wait before the next attempt if the classifier answers
    /// [`Next::Retry`] ([`Next::RetryAtCap`] waits the cap), for its report.
    pub(crate) retry_in: Duration,
}

/// Why [`Retry::run`] returned without a value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failed<E> {
    /// The classifier said [`Next::Stop`].
    Permanent { error: E, attempts: u32 },
    /// Every allowed attempt failed; the last error.
    Exhausted { error: E, attempts: u32 },
    /// Cancelled while waiting to try again; the last error.
    Cancelled { error: E, attempts: u32 },
}

impl<E> Failed<E> {
    pub(crate) fn error(&self) -> &E {
        match self {
            Failed::Permanent { error, .. } | Failed::Exhausted { error, .. } | Failed::Cancelled { error, .. } => {
                error
            }
        }
    }

    pub(crate) fn attempts(&self) -> u32 {
        match self {
            Failed::Permanent { attempts, .. }
            | Failed::Exhausted { attempts, .. }
            | Failed::Cancelled { attempts, .. } => *attempts,
        }
    }
}

/// A retry policy: backoff with a cap, an optional attempt limit, an
/// optional cancellation token.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    backoff: Backoff,
    max_attempts: Option<u32>,
    cancel: Option<CancellationToken>,
}

impl Retry {
    /// Unlimited attempts, delays from [`FIRST_DELAY`] doubling up to `max_delay`.
    pub(crate) fn new(max_delay: Duration) -> Retry {
        Retry {
            backoff: Backoff::new(max_delay),
            max_attempts: None,
            cancel: None,
        }
    }

    /// At most `attempts` attempts in all (at least one).
    pub(crate) fn attempts(mut self, attempts: u32) -> Retry {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Stops waiting (and returns [`Failed::Cancelled`]) when `token` is cancelled.
    pub(crate) fn cancelled_by(mut self, token: &CancellationToken) -> Retry {
        self.cancel = Some(token.clone());
        self
    }

    /// Runs `operation` until it succeeds, the classifier says stop, the
    /// attempts run out or the token is cancelled during a wait. The
    /// classifier sees every failure once, before any wait, so it is where
    /// a failure is reported.
    pub(crate) async fn run<T, E, Op, Fut, Classify>(
        mut self,
        mut operation: Op,
        mut classify: Classify,
    ) -> Result<T, Failed<E>>
    where
        Op: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        Classify: FnMut(&E, Attempt) -> Next,
    {
        let mut number: u32 = 0;
        loop {
            number = number.saturating_add(1);
            let error = match operation().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let will_retry = self.max_attempts.is_none_or(|max| number < max);
            let attempt = Attempt {
                number,
                will_retry,
                retry_in: self.backoff.next,
            };
            let delay = match classify(&error, attempt) {
                Next::Stop => {
                    return Err(Failed::Permanent {
                        error,
                        attempts: number,
                    })
                }
                _ if !will_retry => {
                    return Err(Failed::Exhausted {
                        error,
                        attempts: number,
                    })
                }
                Next::Retry => self.backoff.next_delay(),
                Next::RetryAtCap => self.backoff.max(),
            };
            match &self.cancel {
                Some(token) => {
                    tokio::select! {
                        _ = token.cancelled() => return Err(Failed::Cancelled { error, attempts: number }),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                None => tokio::time::sleep(delay).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn doubles_from_100ms_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        let mut tiny = Backoff::new(Duration::from_millis(30));
        assert_eq!(tiny.next_delay(), Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_until_success() {
        let calls = Cell::new(0);
        let started = tokio::time::Instant::now();
        let mut seen = Vec::new();
        let result: Result<u32, Failed<&str>> = Retry::new(Duration::from_millis(300))
            .run(
                || {
                    calls.set(calls.get() + 1);
                    let n = calls.get();
                    async move {
                        if n < 4 {
                            Err("down")
                        } else {
                            Ok(n)
                        }
                    }
                },
                |_, attempt| {
                    seen.push((attempt.number, attempt.retry_in.as_millis()));
                    Next::Retry
                },
            )
            .await;
        assert_eq!(result, Ok(4));
        // Each failure is told the wait that follows it.
        assert_eq!(seen, [(1, 100), (2, 200), (3, 300)]);
        // 100 + 200 + 300 (capped)
        assert_eq!(started.elapsed(), Duration::from_millis(600));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_stops_at_once() {
        let result: Result<(), Failed<&str>> = Retry::new(Duration::from_secs(1))
            .run(|| async { Err("refused") }, |_, _| Next::Stop)
            .await;
        assert_eq!(
            result,
            Err(Failed::Permanent {
                error: "refused",
                attempts: 1
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_run_out_and_the_last_is_marked() {
        let mut will_retry = Vec::new();
        let result: Result<(), Failed<&str>> = Retry::new(Duration::from_secs(1))
            .attempts(3)
            .run(
                || async { Err("timeout") },
                |_, attempt| {
                    will_retry.push(attempt.will_retry);
                    Next::Retry
                },
            )
            .await;
        assert_eq!(result.map_err(|f| f.attempts()), Err(3));
        assert_eq!(will_retry, [true, true, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn at_cap_waits_the_longest_delay() {
        let started = tokio::time::Instant::now();
        let calls = Cell::new(0);
        let _: Result<(), Failed<&str>> = Retry::new(Duration::from_secs(2))
            .attempts(2)
            .run(
                || {
                    calls.set(calls.get() + 1);
                    async { Err("misconfigured") }
                },
                |_, _| Next::RetryAtCap,
            )
            .await;
        assert_eq!(calls.get(), 2);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_the_wait() {
        let token = CancellationToken::new();
        let cancel = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            cancel.cancel();
        });
        let result: Result<(), Failed<&str>> = Retry::new(Duration::from_secs(10))
            .cancelled_by(&token)
            .run(|| async { Err("down") }, |_, _| Next::Retry)
            .await;
        assert!(
            matches!(result, Err(Failed::Cancelled { attempts: 2, .. })),
            "{result:?}"
        );
    }
}

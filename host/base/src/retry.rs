//! The one retry policy cutover's waits share, on the [`backon`] crate: try a
//! fallible operation again, at a constant pace, while the error is one worth waiting
//! out and the caller's time is not up — or a fixed number of times back to back.
//!
//! Which errors are retried and until when is the caller's `.when(...)`, usually
//! with a [`Deadline`]; what it reports when the retries end is the caller's too (the
//! last error comes back unchanged). Each try starts after the previous one ended,
//! on tokio's clock.
//!
//! ```no_run
//! # async fn f() -> Result<(), std::io::Error> {
//! use cutover_base::retry::{Deadline, Retryable, every};
//! use std::time::Duration;
//! let deadline = Deadline::after(Duration::from_secs(5));
//! let read = || async { std::fs::read("/tmp/x") };
//! let _bytes = read
//!     .retry(every(Duration::from_millis(100)))
//!     .when(|e| e.kind() == std::io::ErrorKind::NotFound && deadline.open())
//!     .await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

pub use backon::{ConstantBuilder, Retryable};

/// Again every `delay`, without a count limit: the caller's `.when(...)` ends it.
pub const fn every(delay: Duration) -> ConstantBuilder {
    ConstantBuilder::new().with_delay(delay).without_max_times()
}

/// `attempts` tries in all (at least one), back to back.
pub fn attempts(attempts: u32) -> ConstantBuilder {
    ConstantBuilder::new()
        .with_delay(Duration::ZERO)
        .with_max_times(usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX))
}

/// The time a retry may go on until, from when it was made.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    started: tokio::time::Instant,
    wait: Duration,
}

impl Deadline {
    /// `wait` from now.
    pub fn after(wait: Duration) -> Deadline {
        Deadline {
            started: tokio::time::Instant::now(),
            wait,
        }
    }

    /// Whether there is time left for another try.
    pub fn open(&self) -> bool {
        self.started.elapsed() < self.wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, PartialEq)]
    enum Error {
        Transient(u32),
        Fatal(u32),
    }

    #[tokio::test]
    async fn attempts_tries_that_many_times_and_returns_the_last_error() {
        let tries = AtomicU32::new(0);
        let op =
            || async { Err::<(), _>(Error::Transient(tries.fetch_add(1, Ordering::SeqCst) + 1)) };
        let started = std::time::Instant::now();
        assert_eq!(op.retry(attempts(5)).await, Err(Error::Transient(5)));
        assert_eq!(tries.load(Ordering::SeqCst), 5);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "back to back"
        );
        tries.store(0, Ordering::SeqCst);
        assert_eq!(
            op.retry(attempts(0)).await,
            Err(Error::Transient(1)),
            "at least one"
        );
    }

    #[tokio::test]
    async fn an_error_the_caller_does_not_retry_ends_at_once() {
        let tries = AtomicU32::new(0);
        let op = || async {
            let n = tries.fetch_add(1, Ordering::SeqCst) + 1;
            Err::<(), _>(if n < 3 {
                Error::Transient(n)
            } else {
                Error::Fatal(n)
            })
        };
        let result = op
            .retry(every(Duration::from_millis(1)))
            .when(|e| matches!(e, Error::Transient(_)))
            .await;
        assert_eq!(result, Err(Error::Fatal(3)));
    }

    #[tokio::test]
    async fn every_goes_on_at_its_pace_until_the_deadline_or_success() {
        let tries = AtomicU32::new(0);
        let op =
            || async { Err::<(), _>(Error::Transient(tries.fetch_add(1, Ordering::SeqCst) + 1)) };
        let deadline = Deadline::after(Duration::from_millis(250));
        let started = std::time::Instant::now();
        let result = op
            .retry(every(Duration::from_millis(100)))
            .when(|_| deadline.open())
            .await;
        let took = started.elapsed();
        // Tries at 0, 100, 200 and 300 ms: the last one, past the deadline, is not repeated.
        assert_eq!(result, Err(Error::Transient(4)));
        assert!(took >= Duration::from_millis(300), "{took:?}");
        let tries = AtomicU32::new(0);
        let op = || async {
            let n = tries.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 3 {
                Err(Error::Transient(n))
            } else {
                Ok(n)
            }
        };
        assert_eq!(op.retry(every(Duration::from_millis(1))).await, Ok(3));
    }
}

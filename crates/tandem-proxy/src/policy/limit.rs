//! Per-upstream concurrency limit: at most `max_requests` in flight, at most `max_pending`
//! waiting for a slot, and everything beyond refused at once with 503 `overloaded` — a queue
//! without a bound only turns overload into timeouts and memory.
//!
//! A slot is held from admission until the response body ends (or the request fails), so
//! streaming responses count for as long as they stream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tandem_config::UpstreamLimits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The limit of one upstream.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    slots: Arc<Semaphore>,
    max_requests: usize,
    max_pending: usize,
    pending: AtomicUsize,
}

/// Why a request was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max_requests` in flight and `max_pending` already waiting.
    Full {
        /// In flight at the limit.
        max_requests: usize,
        /// Waiting at the limit.
        max_pending: usize,
    },
    /// Waited for a slot until the request's deadline.
    Deadline,
}

impl ConcurrencyLimit {
    /// A limit from the upstream's configuration.
    pub fn new(c: &UpstreamLimits) -> Self {
        let max_requests = c.max_requests.clamp(1, Semaphore::MAX_PERMITS);
        ConcurrencyLimit {
            slots: Arc::new(Semaphore::new(max_requests)),
            max_requests,
            max_pending: c.max_pending,
            pending: AtomicUsize::new(0),
        }
    }

    /// A slot for one request: at once when one is free, else after waiting in line (until
    /// `deadline`) when the line is not full.
    pub async fn admit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Refused> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let joined = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .is_ok();
        if !joined {
            return Err(Refused::Full {
                max_requests: self.max_requests,
                max_pending: self.max_pending,
            });
        }
        let waited = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(p)) => Ok(p),
            // The semaphore is never closed; treat it as the deadline.
            Ok(Err(_)) | Err(_) => Err(Refused::Deadline),
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.max_requests - self.slots.available_permits()
    }

    /// Requests waiting now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Two slots, one waiter: the third request waits and gets the first freed slot, the
    /// fourth is refused at once, a waiter past its deadline gives up.
    #[tokio::test(start_paused = true)]
    async fn admits_queues_and_refuses() {
        let l = Arc::new(ConcurrencyLimit::new(&UpstreamLimits {
            max_requests: 2,
            max_pending: 1,
            max_connections: None,
        }));
        let far = Instant::now() + Duration::from_secs(60);
        let a = l.admit(far).await.unwrap();
        let _b = l.admit(far).await.unwrap();
        assert_eq!(l.in_flight(), 2);
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.admit(far).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(l.pending(), 1);
        assert_eq!(
            l.admit(far).await.unwrap_err(),
            Refused::Full {
                max_requests: 2,
                max_pending: 1
            }
        );
        drop(a);
        waiter.await.unwrap().unwrap();
        assert_eq!(l.pending(), 0);

        let _c = l.admit(far).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(100);
        assert_eq!(l.admit(soon).await.unwrap_err(), Refused::Deadline);
        assert_eq!(l.pending(), 0);
    }
}

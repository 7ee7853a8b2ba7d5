//! Endpoint choice for one upstream.
//!
//! Round-robin over the upstream's endpoints with one relaxed atomic per upstream: fair, lock-free
//! and cheap. Load-aware choice (P2C over EWMA latency) and health/breaker state arrive with the
//! resilience work and replace [`Balancer::pick`]'s body, not its callers.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Picks endpoints by index.
#[derive(Debug, Default)]
pub struct Balancer {
    next: AtomicUsize,
}

impl Balancer {
    /// The index of the endpoint to use among `len`, or `None` when there are none.
    pub fn pick(&self, len: usize) -> Option<usize> {
        if len == 0 {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every endpoint gets its turn; no endpoints means no pick.
    #[test]
    fn round_robin() {
        let b = Balancer::default();
        assert_eq!(b.pick(0), None);
        let picks: Vec<_> = (0..6).filter_map(|_| b.pick(3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }
}

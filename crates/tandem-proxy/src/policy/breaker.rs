//! Passive outlier detection: per-endpoint circuit breaking from the outcomes of real requests.
//!
//! An endpoint is *ejected* (taken out of rotation) when it fails `consecutive_failures` tries in
//! a row, or when its failure share over a sliding `window` reaches `failure_rate_percent` once it
//! has seen `min_requests`. An ejection lasts `base_ejection`, doubled for each ejection in a row
//! up to `max_ejection`. When it ends the endpoint is *half-open*: exactly one request (the probe)
//! may go to it; success closes the breaker, failure ejects it again for twice as long. An
//! endpoint that stays closed for `max_ejection` starts again from `base_ejection`.
//!
//! `max_ejected_percent` of an upstream's endpoints, and never all of them, may be ejected at
//! once ([`EjectionBudget`]): a bad deploy that fails every endpoint still leaves traffic (and
//! visible errors) rather than nothing at all.
//!
//! The hot path reads two atomics ([`Outlier::available`]); outcomes take one uncontended
//! per-endpoint mutex. Time is tokio's, so tests run on paused time.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_config::CircuitBreaker;
use tokio::time::Instant;

/// Buckets of the failure-rate window.
const BUCKETS: usize = 10;

/// How many of an upstream's endpoints may be ejected at once.
#[derive(Debug)]
pub struct EjectionBudget {
    ejected: AtomicUsize,
    total: AtomicUsize,
    max_percent: u32,
}

/// The breaker of one endpoint.
#[derive(Debug)]
pub struct Outlier {
    /// Shared by every endpoint of the upstream (one copy, not one per endpoint).
    config: Arc<CircuitBreaker>,
    /// Reference point of the millisecond clock below.
    epoch: Instant,
    /// 0: closed; otherwise 1 + the millisecond (since `epoch`) the ejection ends.
    until: AtomicU64,
    /// A half-open probe is in flight.
    probing: AtomicBool,
    counts: Mutex<Counts>,
}

/// Why an endpoint was ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectReason {
    /// `consecutive_failures` in a row.
    ConsecutiveFailures,
    /// The failure rate over the window.
    FailureRate,
    /// The half-open probe failed.
    ProbeFailed,
}

/// What an outcome changed, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Ejected for this long.
    Ejected(EjectReason, Duration),
    /// The probe succeeded: back in rotation.
    Closed,
    /// It would have been ejected, but the upstream's ejection budget is spent.
    EjectionRefused(EjectReason),
}

/// The breaker's state as the admin API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// In rotation.
    Closed,
    /// Ejected until the given time.
    Open {
        /// Time left.
        remaining: Duration,
        /// Why.
        reason: EjectReason,
    },
    /// The ejection ended; the next request is the probe.
    HalfOpen,
}

#[derive(Debug)]
struct Counts {
    consecutive: u32,
    /// Ejections in a row (the exponent of the ejection time).
    streak: u32,
    reason: EjectReason,
    /// When the breaker last closed (resets `streak` after `max_ejection` closed).
    closed_at: Instant,
    buckets: [Bucket; BUCKETS],
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Index of the bucket-sized time slice it counts.
    slice: u64,
    total: u32,
    failures: u32,
}

// === impl EjectionBudget ===

impl EjectionBudget {
    /// A budget for `total` endpoints.
    pub fn new(total: usize, max_percent: u32) -> Self {
        EjectionBudget {
            ejected: AtomicUsize::new(0),
            total: AtomicUsize::new(total),
            max_percent,
        }
    }

    /// The upstream now has `total` endpoints (discovery changed the set).
    pub fn resize(&self, total: usize) {
        self.total.store(total, Ordering::Release);
    }

    /// An ejected endpoint left the upstream: its share of the budget is free again.
    pub fn release(&self) {
        self.give_back();
    }

    /// Endpoints ejected now.
    pub fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }

    fn try_take(&self) -> bool {
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                let next = n + 1;
                let total = self.total.load(Ordering::Acquire);
                let share_ok = next * 100 <= self.max_percent as usize * total;
                (share_ok && next < total).then_some(next)
            })
            .is_ok()
    }

    fn give_back(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

// === impl Outlier ===

impl Outlier {
    /// A closed breaker.
    pub fn new(config: impl Into<Arc<CircuitBreaker>>) -> Self {
        let now = Instant::now();
        Outlier {
            config: config.into(),
            epoch: now,
            until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            counts: Mutex::new(Counts {
                consecutive: 0,
                streak: 0,
                reason: EjectReason::ConsecutiveFailures,
                closed_at: now,
                buckets: [Bucket::default(); BUCKETS],
            }),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Whether a request may go to this endpoint now: closed, or half-open with no probe yet.
    pub fn available(&self, now: Instant) -> bool {
        match self.until.load(Ordering::Acquire) {
            0 => true,
            until => self.ms(now) + 1 >= until && !self.probing.load(Ordering::Acquire),
        }
    }

    /// Called when a request was sent here: claims the probe when half-open. Returns whether
    /// this request is the probe.
    pub fn on_pick(&self, now: Instant) -> bool {
        match self.until.load(Ordering::Acquire) {
            0 => false,
            until if self.ms(now) + 1 >= until => !self.probing.swap(true, Ordering::AcqRel),
            _ => false,
        }
    }

    /// The state now.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.until.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            until => {
                let now_ms = self.ms(now) + 1;
                if now_ms >= until {
                    BreakerState::HalfOpen
                } else {
                    let reason = self
                        .counts
                        .lock()
                        .map(|c| c.reason)
                        .unwrap_or(EjectReason::ConsecutiveFailures);
                    BreakerState::Open {
                        remaining: Duration::from_millis(until - now_ms),
                        reason,
                    }
                }
            }
        }
    }

    /// Records the outcome of one try; `probe` is what [`Outlier::on_pick`] returned for it.
    pub fn record(
        &self,
        success: bool,
        probe: bool,
        now: Instant,
        budget: &EjectionBudget,
    ) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        let Ok(mut c) = self.counts.lock() else {
            return None;
        };
        if self.until.load(Ordering::Acquire) != 0 {
            // Ejected or half-open: only the probe's outcome counts; requests that were in
            // flight when the endpoint was ejected say nothing new.
            if !probe {
                return None;
            }
            if success {
                self.close(&mut c, now, budget);
                return Some(Transition::Closed);
            }
            c.reason = EjectReason::ProbeFailed;
            let d = self.eject_for(&mut c, now);
            self.probing.store(false, Ordering::Release);
            return Some(Transition::Ejected(EjectReason::ProbeFailed, d));
        }

        let slice_len = (self.config.window.as_millis() as u64 / BUCKETS as u64).max(1);
        let slice = self.ms(now) / slice_len;
        let b = &mut c.buckets[(slice % BUCKETS as u64) as usize];
        if b.slice != slice {
            *b = Bucket {
                slice,
                total: 0,
                failures: 0,
            };
        }
        b.total += 1;
        if success {
            c.consecutive = 0;
            return None;
        }
        b.failures += 1;
        c.consecutive += 1;

        let reason = if self.config.consecutive_failures > 0
            && c.consecutive >= self.config.consecutive_failures
        {
            Some(EjectReason::ConsecutiveFailures)
        } else if self.config.failure_rate_percent > 0 {
            let (total, failures) = c
                .buckets
                .iter()
                .filter(|b| b.slice + (BUCKETS as u64) > slice)
                .fold((0u64, 0u64), |(t, f), b| {
                    (t + u64::from(b.total), f + u64::from(b.failures))
                });
            (total >= u64::from(self.config.min_requests.max(1))
                && failures * 100 >= u64::from(self.config.failure_rate_percent) * total)
                .then_some(EjectReason::FailureRate)
        } else {
            None
        };
        let reason = reason?;
        if !budget.try_take() {
            return Some(Transition::EjectionRefused(reason));
        }
        if now.saturating_duration_since(c.closed_at) >= self.config.max_ejection {
            c.streak = 0;
        }
        c.reason = reason;
        let d = self.eject_for(&mut c, now);
        Some(Transition::Ejected(reason, d))
    }

    /// Ends an ejection early (an active health check passed): the next request is the probe.
    pub fn half_open_now(&self, now: Instant) {
        let until = self.until.load(Ordering::Acquire);
        if until != 0 && until > self.ms(now) + 1 {
            let _ = self.until.compare_exchange(
                until,
                self.ms(now) + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Gives back an unanswered probe claim (the probe request ended without an outcome, e.g.
    /// the client went away), so the next request can probe.
    pub fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    fn eject_for(&self, c: &mut Counts, now: Instant) -> Duration {
        let factor = 1u32.checked_shl(c.streak.min(20)).unwrap_or(u32::MAX);
        let d = self
            .config
            .base_ejection
            .saturating_mul(factor)
            .min(self.config.max_ejection);
        c.streak = c.streak.saturating_add(1);
        c.consecutive = 0;
        c.buckets = [Bucket::default(); BUCKETS];
        let end = now + d;
        self.until.store(self.ms(end) + 1, Ordering::Release);
        d
    }

    fn close(&self, c: &mut Counts, now: Instant, budget: &EjectionBudget) {
        c.consecutive = 0;
        c.closed_at = now;
        c.buckets = [Bucket::default(); BUCKETS];
        self.until.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
        budget.give_back();
    }
}

// === impl EjectReason ===

impl EjectReason {
    /// Metric label and admin text.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::ConsecutiveFailures => "consecutive_failures",
            EjectReason::FailureRate => "failure_rate",
            EjectReason::ProbeFailed => "probe_failed",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> CircuitBreaker {
        CircuitBreaker {
            consecutive_failures: 3,
            failure_rate_percent: 50,
            min_requests: 10,
            window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(8),
            ..CircuitBreaker::default()
        }
    }

    /// Three failures in a row eject; the ejection ends after `base_ejection`; one probe goes
    /// through, its success closes the breaker and returns the budget.
    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_then_probe_closes() {
        let o = Outlier::new(config());
        let budget = EjectionBudget::new(3, 50);
        let now = Instant::now();
        assert_eq!(o.record(false, false, now, &budget), None);
        assert_eq!(o.record(false, false, now, &budget), None);
        assert_eq!(
            o.record(false, false, now, &budget),
            Some(Transition::Ejected(
                EjectReason::ConsecutiveFailures,
                Duration::from_secs(1)
            ))
        );
        assert_eq!(budget.ejected(), 1);
        assert!(!o.available(now));
        assert!(matches!(o.state(now), BreakerState::Open { .. }));

        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!o.available(Instant::now()));
        tokio::time::advance(Duration::from_millis(2)).await;
        let now = Instant::now();
        assert_eq!(o.state(now), BreakerState::HalfOpen);
        assert!(o.available(now));
        assert!(o.on_pick(now), "the first request is the probe");
        assert!(!o.available(now), "one probe at a time");
        assert!(!o.on_pick(now));
        // A request from before the ejection ends late: it says nothing.
        assert_eq!(o.record(false, false, now, &budget), None);
        assert_eq!(o.record(true, true, now, &budget), Some(Transition::Closed));
        assert_eq!(o.state(now), BreakerState::Closed);
        assert_eq!(budget.ejected(), 0);
    }

    /// A failed probe ejects again for twice as long, capped at `max_ejection`; a success
    /// between failures resets the consecutive count.
    #[tokio::test(start_paused = true)]
    async fn failed_probes_double_the_ejection() {
        let o = Outlier::new(config());
        let budget = EjectionBudget::new(2, 50);
        let now = Instant::now();
        for ok in [false, false, true, false, false] {
            assert_eq!(o.record(ok, false, now, &budget), None);
        }
        assert!(matches!(
            o.record(false, false, now, &budget),
            Some(Transition::Ejected(_, d)) if d == Duration::from_secs(1)
        ));
        let mut expected = [2, 4, 8, 8].into_iter();
        let mut wait = Duration::from_secs(1);
        for _ in 0..4 {
            tokio::time::advance(wait).await;
            let now = Instant::now();
            assert!(o.on_pick(now));
            let e = Duration::from_secs(expected.next().unwrap());
            assert_eq!(
                o.record(false, true, now, &budget),
                Some(Transition::Ejected(EjectReason::ProbeFailed, e))
            );
            wait = e;
        }
        assert_eq!(budget.ejected(), 1, "a re-ejection takes no more budget");
    }

    /// The failure rate ejects only once `min_requests` were seen in the window, and old
    /// buckets fall out of it.
    #[tokio::test(start_paused = true)]
    async fn failure_rate_over_the_window() {
        let mut cfg = config();
        cfg.consecutive_failures = 0;
        let o = Outlier::new(cfg);
        let budget = EjectionBudget::new(4, 50);
        // 4 failures out of 8: rate 50%, but fewer than 10 requests.
        for i in 0..8 {
            assert_eq!(o.record(i % 2 == 0, false, Instant::now(), &budget), None);
        }
        // They age out of the 10 s window.
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..9 {
            assert_eq!(o.record(true, false, Instant::now(), &budget), None);
        }
        // 1 of 10 failed: 10%.
        assert_eq!(o.record(false, false, Instant::now(), &budget), None);
        for _ in 0..7 {
            assert_eq!(o.record(false, false, Instant::now(), &budget), None);
        }
        // 8 of 17 failed: 47%, still closed; the next failure makes 9 of 18, 50%.
        assert_eq!(o.state(Instant::now()), BreakerState::Closed);
        assert!(matches!(
            o.record(false, false, Instant::now(), &budget),
            Some(Transition::Ejected(EjectReason::FailureRate, _))
        ));
    }

    /// Never more than `max_ejected_percent`, and never every endpoint.
    #[tokio::test(start_paused = true)]
    async fn the_ejection_budget_keeps_endpoints_in_rotation() {
        let budget = EjectionBudget::new(2, 100);
        let a = Outlier::new(config());
        let b = Outlier::new(config());
        let now = Instant::now();
        for _ in 0..2 {
            a.record(false, false, now, &budget);
            b.record(false, false, now, &budget);
        }
        assert!(matches!(
            a.record(false, false, now, &budget),
            Some(Transition::Ejected(..))
        ));
        assert_eq!(
            b.record(false, false, now, &budget),
            Some(Transition::EjectionRefused(
                EjectReason::ConsecutiveFailures
            ))
        );
        assert!(b.available(now));

        let budget = EjectionBudget::new(10, 20);
        let outliers: Vec<_> = (0..10).map(|_| Outlier::new(config())).collect();
        let ejected = outliers
            .iter()
            .filter(|o| {
                (0..3).any(|_| {
                    matches!(
                        o.record(false, false, now, &budget),
                        Some(Transition::Ejected(..))
                    )
                })
            })
            .count();
        assert_eq!(ejected, 2, "20% of 10");
    }

    /// A passing active health check ends an ejection early; `enabled: false` never ejects.
    #[tokio::test(start_paused = true)]
    async fn health_check_half_opens_and_disabled_never_ejects() {
        let budget = EjectionBudget::new(3, 50);
        let o = Outlier::new(config());
        let now = Instant::now();
        for _ in 0..3 {
            o.record(false, false, now, &budget);
        }
        assert!(!o.available(now));
        o.half_open_now(now);
        assert_eq!(o.state(now), BreakerState::HalfOpen);

        let off = Outlier::new(CircuitBreaker {
            enabled: false,
            ..config()
        });
        for _ in 0..100 {
            assert_eq!(off.record(false, false, now, &budget), None);
        }
        assert!(off.available(now));
    }
}

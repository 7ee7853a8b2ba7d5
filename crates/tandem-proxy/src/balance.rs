//! Endpoint choice for one upstream, and the per-endpoint load and health it chooses by.
//!
//! Algorithms ([`tandem_config::Balancer`]):
//! - `p2c` (default): power of two choices — sample two eligible endpoints (by weight) and take
//!   the one with the lower *peak-EWMA latency × (in-flight + 1) / weight*. Peak EWMA (as in
//!   linkerd2-proxy and Finagle) jumps up to a slow response at once and decays back with a 10 s
//!   time constant, so a slow endpoint loses traffic within a few requests and earns it back
//!   gradually. A failed try is not a latency sample (a refused connect is not fast, a timeout
//!   only a lower bound): it sets a separate *failure penalty* of at least [`FAILURE_PENALTY`]
//!   that decays with a short time constant ([`PENALTY_DECAY`]), and the cost uses the larger of
//!   the two. So an endpoint that fails fast does not look fast, and once it stops failing it is
//!   back to its own latency within seconds, not after the 10 s latency decay has worked off a
//!   250 ms peak (about a minute, during which P2C sent it nothing, so its breaker never saw
//!   enough failures to eject it and probe it back).
//! - `round_robin`: a precomputed smooth weighted round-robin schedule walked by one atomic.
//! - `least_request`: P2C on *(in-flight + 1) / weight* (Envoy's least request).
//! - `hash`: a consistent-hash ring (xxh3, 160 virtual nodes per unit of weight, at most
//!   [`MAX_RING`] in all); a key maps to the first eligible endpoint clockwise from its hash.
//!   Requests without the key are balanced by P2C.
//!
//! *Eligible* means: not the endpoint a retry just failed on (when another is eligible), not
//! ejected by its breaker ([`crate::policy::breaker`]), and not failing active health checks.
//! When nothing is eligible Tandem fails open and balances over every endpoint, as Envoy's panic
//! mode does: traffic to a possibly broken endpoint beats certain failure.

use std::borrow::Borrow;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_config::{Balancer as Algorithm, CircuitBreaker};
use tokio::time::Instant;

use crate::policy::breaker::Outlier;

/// Time constant of the latency EWMA's decay.
const DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for an endpoint without samples yet: middling, so new endpoints get traffic
/// without being flooded.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// A failed try makes the endpoint cost at least this much latency (decaying, see
/// [`PENALTY_DECAY`]).
pub const FAILURE_PENALTY: Duration = Duration::from_millis(250);
/// Time constant of the failure penalty's decay: 250 ms falls below a typical loopback or LAN
/// latency (~0.3-1 ms) in 3-4 s, so a dead endpoint gets one real try every few seconds (each a
/// failure its breaker counts, so it is ejected and probed after `consecutive_failures` of them)
/// and a recovered one gets its share back in seconds.
pub const PENALTY_DECAY: Duration = Duration::from_millis(500);
/// Most points on a consistent-hash ring.
pub const MAX_RING: usize = 1 << 17;
const VNODES: usize = 160;
/// Longest round-robin schedule; beyond it weights are approximated.
const MAX_SCHEDULE: usize = 1 << 16;

/// Active health of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Not checked (no health check configured, or no result yet): eligible.
    Unknown = 0,
    /// Passing.
    Healthy = 1,
    /// Failing: not eligible.
    Unhealthy = 2,
}

/// Load, latency, breaker and health of one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    /// Relative share of traffic (discovery may change it).
    weight: AtomicU32,
    in_flight: AtomicU32,
    ewma: Mutex<PeakEwma>,
    /// The endpoint's breaker.
    pub outlier: Outlier,
    health: AtomicU8,
}

#[derive(Debug)]
struct PeakEwma {
    rtt_ns: f64,
    /// Failure penalty, decaying with [`PENALTY_DECAY`]; 0 when the endpoint has not failed.
    penalty_ns: f64,
    stamp: Instant,
}

/// Chooses endpoints by index for one upstream.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Kind,
    next: AtomicUsize,
    /// Cumulative weights for weighted sampling; empty when all weights are equal.
    cumulative: Vec<u64>,
    schedule: Vec<u32>,
    ring: Vec<(u64, u32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    P2c,
    RoundRobin,
    LeastRequest,
    Hash,
}

// === impl EndpointState ===

impl EndpointState {
    /// A fresh endpoint: no load, default latency, breaker closed, health unknown.
    pub fn new(weight: u32, breaker: impl Into<Arc<CircuitBreaker>>) -> Self {
        EndpointState {
            weight: AtomicU32::new(weight.max(1)),
            in_flight: AtomicU32::new(0),
            ewma: Mutex::new(PeakEwma {
                rtt_ns: DEFAULT_RTT.as_nanos() as f64,
                penalty_ns: 0.0,
                stamp: Instant::now(),
            }),
            outlier: Outlier::new(breaker),
            health: AtomicU8::new(Health::Unknown as u8),
        }
    }

    /// Relative share of traffic.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Changes the share of traffic (the balancer of the next endpoint set uses it).
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in (the caller counts it out with [`EndpointState::finish`]).
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request out.
    pub fn finish(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Feeds one try's time to the response head into the latency estimate; a failed try
    /// (`elapsed`: its time to the failure) sets the failure penalty instead.
    pub fn observe(&self, rtt: Duration, success: bool, now: Instant) {
        if let Ok(mut e) = self.ewma.lock() {
            if success {
                e.update(rtt.as_nanos() as f64, now);
            } else {
                e.penalize(rtt.max(FAILURE_PENALTY).as_nanos() as f64, now);
            }
        }
    }

    /// Drops the failure penalty (the breaker's probe succeeded: the endpoint is back).
    pub fn forgive(&self) {
        if let Ok(mut e) = self.ewma.lock() {
            e.penalty_ns = 0.0;
        }
    }

    /// The latency P2C goes by now: the latency estimate or the failure penalty, whichever is
    /// larger (both decayed to `now`).
    pub fn latency(&self, now: Instant) -> Duration {
        let ns = self.ewma.lock().map(|mut e| e.decayed(now)).unwrap_or(0.0);
        Duration::from_nanos(ns as u64)
    }

    /// Active health.
    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    /// Sets the active health (from the health checker).
    pub fn set_health(&self, h: Health) {
        self.health.store(h as u8, Ordering::Relaxed);
    }

    /// Whether new requests may go here.
    pub fn eligible(&self, now: Instant) -> bool {
        self.health.load(Ordering::Relaxed) != Health::Unhealthy as u8
            && self.outlier.available(now)
    }

    fn p2c_cost(&self, now: Instant) -> f64 {
        let rtt = self.ewma.lock().map(|mut e| e.decayed(now)).unwrap_or(0.0);
        rtt * f64::from(self.in_flight() + 1) / f64::from(self.weight())
    }

    fn request_cost(&self) -> f64 {
        f64::from(self.in_flight() + 1) / f64::from(self.weight())
    }
}

// === impl PeakEwma ===

impl PeakEwma {
    fn update(&mut self, rtt_ns: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
        if self.penalty_ns > 0.0 {
            self.penalty_ns *= (-elapsed / PENALTY_DECAY.as_nanos() as f64).exp();
            if self.penalty_ns < 1.0 {
                self.penalty_ns = 0.0;
            }
        }
        if rtt_ns > self.rtt_ns {
            self.rtt_ns = rtt_ns;
        } else {
            let decay = (-elapsed / DECAY.as_nanos() as f64).exp();
            self.rtt_ns = self.rtt_ns * decay + rtt_ns * (1.0 - decay);
        }
        self.stamp = now;
    }

    /// A failure: the penalty jumps to `penalty_ns` (if higher); the latency estimate only
    /// decays to `now`.
    fn penalize(&mut self, penalty_ns: f64, now: Instant) {
        self.update(0.0, now);
        self.penalty_ns = self.penalty_ns.max(penalty_ns);
    }

    /// The estimate decayed towards zero for the time without samples (as tower's `PeakEwma`
    /// does on every load read): an endpoint that was slow long ago gets another chance. The
    /// larger of it and the failure penalty.
    fn decayed(&mut self, now: Instant) -> f64 {
        self.update(0.0, now);
        self.rtt_ns.max(self.penalty_ns)
    }
}

// === impl Balancer ===

impl Balancer {
    /// A balancer for endpoints with these weights (in endpoint order); endpoint labels name
    /// the points of a hash ring, so rings agree across sidecars and restarts.
    pub fn new(algorithm: &Algorithm, weights: &[u32], labels: &[String]) -> Self {
        let kind = match algorithm {
            Algorithm::P2c => Kind::P2c,
            Algorithm::RoundRobin => Kind::RoundRobin,
            Algorithm::LeastRequest => Kind::LeastRequest,
            Algorithm::Hash(_) => Kind::Hash,
        };
        let uneven = weights.windows(2).any(|w| w[0] != w[1]);
        let cumulative = if uneven {
            weights
                .iter()
                .scan(0u64, |acc, w| {
                    *acc += u64::from((*w).max(1));
                    Some(*acc)
                })
                .collect()
        } else {
            Vec::new()
        };
        let schedule = if kind == Kind::RoundRobin {
            smooth_schedule(weights)
        } else {
            Vec::new()
        };
        let ring = if kind == Kind::Hash {
            build_ring(weights, labels)
        } else {
            Vec::new()
        };
        Balancer {
            algorithm: kind,
            next: AtomicUsize::new(0),
            cumulative,
            schedule,
            ring,
        }
    }

    /// The endpoint for the next request: `hash` is the request's hash key (hash balancers),
    /// `avoid` the endpoint a previous try failed on. `None` only when there are no endpoints.
    pub fn pick<E: Borrow<EndpointState>>(
        &self,
        eps: &[E],
        hash: Option<u64>,
        avoid: Option<usize>,
        now: Instant,
    ) -> Option<usize> {
        match eps.len() {
            0 => return None,
            1 => return Some(0),
            _ => {}
        }
        let eligible = |i: usize| Some(i) != avoid && eps[i].borrow().eligible(now);
        match self.algorithm {
            Kind::RoundRobin => {
                let len = self.schedule.len().max(1);
                for _ in 0..len.min(64) {
                    let at = self.next.fetch_add(1, Ordering::Relaxed) % len;
                    let i = self
                        .schedule
                        .get(at)
                        .map_or(at % eps.len(), |&i| i as usize);
                    if i < eps.len() && eligible(i) {
                        return Some(i);
                    }
                }
                self.sample(eps, &eligible)
            }
            Kind::Hash if hash.is_some() && !self.ring.is_empty() => {
                let h = hash.unwrap_or_default();
                let start = self.ring.partition_point(|(p, _)| *p < h);
                let n = self.ring.len();
                (0..n)
                    .map(|k| self.ring[(start + k) % n].1 as usize)
                    .find(|&i| i < eps.len() && eligible(i))
                    .or_else(|| self.sample(eps, &eligible))
            }
            Kind::LeastRequest => self.p2c(eps, &eligible, |e| e.request_cost()),
            Kind::P2c | Kind::Hash => self.p2c(eps, &eligible, |e| e.p2c_cost(now)),
        }
    }

    fn p2c<E: Borrow<EndpointState>>(
        &self,
        eps: &[E],
        eligible: &dyn Fn(usize) -> bool,
        cost: impl Fn(&EndpointState) -> f64,
    ) -> Option<usize> {
        let a = self.sample(eps, eligible)?;
        let b = self.sample(eps, &|i| i != a && eligible(i));
        match b {
            Some(b) if cost(eps[b].borrow()) < cost(eps[a].borrow()) => Some(b),
            _ => Some(a),
        }
    }

    /// A random eligible endpoint, by weight; failing open to any endpoint (still honouring
    /// the filter's exclusions when possible) when none is eligible.
    fn sample<E>(&self, eps: &[E], eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        // Random draws first: with most endpoints eligible, one or two draws do.
        for _ in 0..4 {
            let i = self.draw(eps.len());
            if eligible(i) {
                return Some(i);
            }
        }
        let candidates: Vec<usize> = (0..eps.len()).filter(|&i| eligible(i)).collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[fastrand::usize(..candidates.len())])
    }

    fn draw(&self, n: usize) -> usize {
        match self.cumulative.last() {
            Some(&total) if self.cumulative.len() == n => {
                let r = fastrand::u64(..total);
                self.cumulative.partition_point(|&c| c <= r)
            }
            _ => fastrand::usize(..n),
        }
    }
}

/// Picks like [`Balancer::pick`], then fails open: with nothing eligible, any endpoint but the
/// avoided one (or that one, when it is the only one).
pub fn pick_or_fail_open<E: Borrow<EndpointState>>(
    balancer: &Balancer,
    eps: &[E],
    hash: Option<u64>,
    avoid: Option<usize>,
    now: Instant,
) -> Option<usize> {
    if let Some(i) = balancer.pick(eps, hash, avoid, now) {
        return Some(i);
    }
    if eps.is_empty() {
        return None;
    }
    let others: Vec<usize> = (0..eps.len()).filter(|&i| Some(i) != avoid).collect();
    match others.len() {
        0 => Some(0),
        n => Some(others[fastrand::usize(..n)]),
    }
}

/// Smooth weighted round robin (nginx's), unrolled once: `a:5 b:1 c:1` gives
/// `a a b a c a a`, not `a a a a a b c`.
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|w| u64::from((*w).max(1))).sum();
    let scale = if total as usize > MAX_SCHEDULE {
        total as f64 / MAX_SCHEDULE as f64
    } else {
        1.0
    };
    let w: Vec<i64> = weights
        .iter()
        .map(|&w| ((f64::from(w.max(1)) / scale).round() as i64).max(1))
        .collect();
    let sum: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(sum as usize);
    for _ in 0..sum {
        for (c, wi) in current.iter_mut().zip(&w) {
            *c += wi;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
        else {
            break;
        };
        current[best] -= sum;
        out.push(best as u32);
    }
    out
}

fn build_ring(weights: &[u32], labels: &[String]) -> Vec<(u64, u32)> {
    let total: u64 = weights.iter().map(|w| u64::from((*w).max(1))).sum();
    let per_unit = ((MAX_RING as u64 / total.max(1)) as usize).clamp(1, VNODES);
    let mut ring = Vec::with_capacity((total as usize * per_unit).min(MAX_RING));
    for (i, (w, label)) in weights.iter().zip(labels).enumerate() {
        for v in 0..(*w).max(1) as usize * per_unit {
            let h = xxhash_rust::xxh3::xxh3_64(format!("{label}#{v}").as_bytes());
            ring.push((h, i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// The hash of a request key for a hash balancer.
pub fn hash_key(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tandem_config::HashKey;

    fn states(weights: &[u32]) -> Vec<EndpointState> {
        weights
            .iter()
            .map(|&w| EndpointState::new(w, CircuitBreaker::default()))
            .collect()
    }

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn shares(b: &Balancer, eps: &[EndpointState], n: usize) -> Vec<usize> {
        let mut counts = vec![0; eps.len()];
        for _ in 0..n {
            counts[b.pick(eps, None, None, Instant::now()).unwrap()] += 1;
        }
        counts
    }

    /// Round robin follows weights exactly over one schedule, interleaved.
    #[tokio::test(start_paused = true)]
    async fn weighted_round_robin() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        let eps = states(&[1, 1, 1]);
        let b = Balancer::new(&Algorithm::RoundRobin, &[1, 1, 1], &labels(3));
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(&eps, None, None, Instant::now()).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let eps = states(&[3, 1]);
        let b = Balancer::new(&Algorithm::RoundRobin, &[3, 1], &labels(2));
        assert_eq!(shares(&b, &eps, 400), [300, 100]);
    }

    /// P2C sends almost nothing to an endpoint that answered slowly, and traffic comes back as
    /// the estimate decays.
    #[tokio::test(start_paused = true)]
    async fn p2c_avoids_the_slow_endpoint() {
        let eps = states(&[1, 1, 1]);
        let b = Balancer::new(&Algorithm::P2c, &[1, 1, 1], &labels(3));
        let now = Instant::now();
        for (i, ms) in [(0, 1), (1, 1), (2, 50)] {
            eps[i].observe(Duration::from_millis(ms), true, now);
        }
        let s = shares(&b, &eps, 3000);
        assert_eq!(s[2], 0, "{s:?}");
        assert!(s[0] > 1200 && s[1] > 1200, "{s:?}");

        // In-flight load on the fast ones: the slow one gets some again.
        for _ in 0..100 {
            eps[0].start();
            eps[1].start();
        }
        let s = shares(&b, &eps, 3000);
        assert!(s[2] > 1500, "{s:?}");
    }

    /// A failed try costs at least the failure penalty, so a fast-failing endpoint loses its
    /// traffic; the penalty decays within seconds, the latency estimate over tens of seconds.
    #[tokio::test(start_paused = true)]
    async fn failures_count_as_slow_and_estimates_decay() {
        let e = EndpointState::new(1, CircuitBreaker::default());
        let now = Instant::now();
        e.observe(Duration::from_millis(50), true, now);
        e.observe(Duration::from_micros(100), false, now);
        assert_eq!(e.latency(now), FAILURE_PENALTY);
        tokio::time::advance(PENALTY_DECAY).await;
        let l = e.latency(Instant::now());
        assert!(
            l < FAILURE_PENALTY / 2 && l > FAILURE_PENALTY / 3,
            "the penalty decays by 1/e per {PENALTY_DECAY:?}: {l:?}"
        );
        // After 10 time constants the penalty is gone; what is left is the latency estimate,
        // which the failure did not raise (50 ms decayed for 5 s).
        tokio::time::advance(PENALTY_DECAY * 9).await;
        let l = e.latency(Instant::now());
        assert!(
            l < Duration::from_millis(35) && l > Duration::from_millis(25),
            "latency estimate decays by 1/e per 10 s: {l:?}"
        );
        tokio::time::advance(DECAY).await;
        let l = e.latency(Instant::now());
        assert!(l < Duration::from_millis(15), "{l:?}");
        // A probe's success forgives at once.
        e.observe(Duration::from_micros(100), false, Instant::now());
        e.forgive();
        assert!(e.latency(Instant::now()) < Duration::from_millis(15));
    }

    /// An endpoint that failed (e.g. restarted) gets traffic back within seconds once it works:
    /// P2C shares are even again 5 s after its last failure.
    #[tokio::test(start_paused = true)]
    async fn p2c_takes_a_failed_endpoint_back_within_seconds() {
        let eps = states(&[1, 1, 1]);
        let b = Balancer::new(&Algorithm::P2c, &[1, 1, 1], &labels(3));
        let now = Instant::now();
        for e in &eps {
            e.observe(Duration::from_micros(300), true, now);
        }
        eps[2].observe(Duration::from_micros(50), false, now);
        assert_eq!(shares(&b, &eps, 3000)[2], 0);
        tokio::time::advance(Duration::from_secs(5)).await;
        for e in &eps[..2] {
            e.observe(Duration::from_micros(300), true, Instant::now());
        }
        let s = shares(&b, &eps, 3000);
        assert!(s[2] > 600, "{s:?}");
    }

    /// Least request goes to the endpoint with fewer requests in flight per weight.
    #[tokio::test(start_paused = true)]
    async fn least_request() {
        let eps = states(&[1, 1]);
        let b = Balancer::new(&Algorithm::LeastRequest, &[1, 1], &labels(2));
        eps[0].start();
        assert_eq!(shares(&b, &eps, 100), [0, 100]);
    }

    /// Weighted P2C sampling: idle endpoints share traffic by weight.
    #[tokio::test(start_paused = true)]
    async fn p2c_by_weight_when_idle() {
        let eps = states(&[1, 4, 1, 4]);
        let b = Balancer::new(&Algorithm::P2c, &[1, 4, 1, 4], &labels(4));
        let mut counts = [0usize; 4];
        for _ in 0..10_000 {
            counts[b.draw(4)] += 1;
        }
        assert!(
            counts[1] > 3 * counts[0] && counts[3] > 3 * counts[2],
            "{counts:?}"
        );
        assert_eq!(shares(&b, &eps, 10).iter().sum::<usize>(), 10);
    }

    /// A key always reaches the same endpoint; removing one endpoint moves only its keys;
    /// an ineligible endpoint's keys go to the next one on the ring.
    #[tokio::test(start_paused = true)]
    async fn consistent_hash() {
        let alg = Algorithm::Hash(HashKey::ClientIp);
        let eps = states(&[1, 1, 1, 1]);
        let b = Balancer::new(&alg, &[1; 4], &labels(4));
        let keys: Vec<u64> = (0..1000)
            .map(|k| hash_key(format!("user{k}").as_bytes()))
            .collect();
        let first: Vec<usize> = keys
            .iter()
            .map(|&k| b.pick(&eps, Some(k), None, Instant::now()).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|&k| b.pick(&eps, Some(k), None, Instant::now()).unwrap())
            .collect();
        assert_eq!(first, again);
        for i in 0..4 {
            let n = first.iter().filter(|&&e| e == i).count();
            assert!((150..350).contains(&n), "share of {i}: {n}");
        }
        // Endpoint 3 unhealthy: its keys move, nobody else's do.
        eps[3].set_health(Health::Unhealthy);
        for (k, before) in keys.iter().zip(&first) {
            let now = b.pick(&eps, Some(*k), None, Instant::now()).unwrap();
            if *before == 3 {
                assert_ne!(now, 3);
            } else {
                assert_eq!(now, *before);
            }
        }
    }

    /// A retry avoids the endpoint that failed when another is eligible; with nothing
    /// eligible, the fail-open pick still avoids it.
    #[tokio::test(start_paused = true)]
    async fn avoid_and_fail_open() {
        let eps = states(&[1, 1, 1]);
        let b = Balancer::new(&Algorithm::P2c, &[1, 1, 1], &labels(3));
        for _ in 0..200 {
            assert_ne!(b.pick(&eps, None, Some(1), Instant::now()), Some(1));
        }
        for e in &eps {
            e.set_health(Health::Unhealthy);
        }
        assert_eq!(b.pick(&eps, None, None, Instant::now()), None);
        for _ in 0..50 {
            let i = pick_or_fail_open(&b, &eps, None, Some(2), Instant::now()).unwrap();
            assert_ne!(i, 2);
        }
        eps[0].set_health(Health::Healthy);
        for _ in 0..50 {
            assert_eq!(b.pick(&eps, None, None, Instant::now()), Some(0));
        }
    }
}

//! Local rate limiting: a token bucket per key, as GCRA (the generic cell rate algorithm).
//!
//! Each key stores one instant, its "theoretical arrival time" (TAT): the time at which its bucket
//! would be full again. A request at `now` is admitted when `now >= TAT - tolerance`, where the
//! tolerance is `(burst - 1)` emission intervals, and then pushes TAT one interval later
//! (`interval = per / requests`). That admits `burst` requests at once and `requests` per `per`
//! after, exactly like a bucket of `burst` tokens refilled at that rate, with 16 bytes per key.
//! A refused request learns how long until it would be admitted (`Retry-After`).
//!
//! Memory is bounded: at most `max_keys` keys are tracked. When the table is full, keys whose
//! bucket has refilled (TAT in the past: they carry no state) are purged, at most once a second so
//! a flood of new keys cannot turn every request into a scan; until space frees up, new keys share
//! one overflow bucket. A client can therefore neither grow the table without bound nor escape the
//! limit by sending fresh keys, and requests without the key header share one bucket too.
//!
//! The lock is per limiter (per route), held for a hash lookup, and never across an `.await`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::HeaderMap;
use http::HeaderName;
use tandem_config::{RateLimit, RateLimitKey};
use tokio::time::Instant;

/// How often a full key table may be scanned for refilled buckets.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// One route's rate limiter.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    key: KeyKind,
    max_keys: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
enum KeyKind {
    None,
    ClientIp,
    PeerIdentity,
    Header(HeaderName),
}

#[derive(Debug)]
struct State {
    /// TAT of the route's bucket (`key: none`), of requests without the key, and of new keys
    /// while the table is full.
    shared: Instant,
    keys: HashMap<Vec<u8>, Instant>,
    last_purge: Option<Instant>,
}

// === impl RateLimiter ===

impl RateLimiter {
    /// The limiter for a checked `rate_limit` (rates of zero were refused by `check()`).
    pub fn new(cfg: &RateLimit) -> Self {
        let requests = cfg.requests.max(1);
        let interval = cfg.per / requests;
        let key = match &cfg.key {
            RateLimitKey::None => KeyKind::None,
            RateLimitKey::ClientIp => KeyKind::ClientIp,
            RateLimitKey::PeerIdentity => KeyKind::PeerIdentity,
            RateLimitKey::Header(name) => HeaderName::from_bytes(name.as_bytes())
                .map(KeyKind::Header)
                .unwrap_or(KeyKind::None),
        };
        RateLimiter {
            interval,
            tolerance: interval * (cfg.burst.max(1) - 1),
            key,
            max_keys: cfg.max_keys.max(1),
            state: Mutex::new(State {
                shared: Instant::now(),
                keys: HashMap::new(),
                last_purge: None,
            }),
        }
    }

    /// Admits or refuses one request from `client` (verified as `identity`, if any) with
    /// `headers` at `now`; a refusal carries the time until the same request would be admitted.
    pub fn check(
        &self,
        client: Option<IpAddr>,
        identity: Option<&str>,
        headers: &HeaderMap,
        now: Instant,
    ) -> Result<(), Duration> {
        let key: Option<Vec<u8>> = match &self.key {
            KeyKind::None => None,
            KeyKind::ClientIp => client.map(|ip| match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            }),
            KeyKind::PeerIdentity => identity.map(|id| id.as_bytes().to_vec()),
            KeyKind::Header(name) => headers.get(name).map(|v| v.as_bytes().to_vec()),
        };
        let Ok(mut state) = self.state.lock() else {
            // A panic elsewhere poisoned the lock; admitting is the safe failure for a limiter.
            return Ok(());
        };
        let state = &mut *state;
        let tat = match key {
            None => &mut state.shared,
            Some(key) => {
                if !state.keys.contains_key(&key) && state.keys.len() >= self.max_keys {
                    let due = state
                        .last_purge
                        .is_none_or(|t| now.saturating_duration_since(t) >= PURGE_EVERY);
                    if due {
                        state.last_purge = Some(now);
                        state.keys.retain(|_, tat| *tat > now);
                    }
                }
                if state.keys.len() < self.max_keys || state.keys.contains_key(&key) {
                    state.keys.entry(key).or_insert(now)
                } else {
                    &mut state.shared
                }
            }
        };
        admit(tat, now, self.interval, self.tolerance)
    }
}

/// GCRA step on one TAT.
fn admit(
    tat: &mut Instant,
    now: Instant,
    interval: Duration,
    tolerance: Duration,
) -> Result<(), Duration> {
    let earliest = tat.checked_sub(tolerance).unwrap_or(now);
    if now < earliest {
        return Err(earliest - now);
    }
    *tat = (*tat).max(now) + interval;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn limiter(
        requests: u32,
        per_ms: u64,
        burst: u32,
        key: RateLimitKey,
        max_keys: usize,
    ) -> RateLimiter {
        RateLimiter::new(&RateLimit {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
            key,
            max_keys,
        })
    }

    fn admitted(l: &RateLimiter, n: usize, ip: Option<IpAddr>, headers: &HeaderMap) -> usize {
        (0..n)
            .filter(|_| l.check(ip, None, headers, Instant::now()).is_ok())
            .count()
    }

    /// `burst` at once, then exactly `requests` per `per`; a refusal says how long to wait.
    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let l = limiter(10, 1000, 3, RateLimitKey::None, 10);
        let none = HeaderMap::new();
        assert_eq!(admitted(&l, 10, None, &none), 3);
        let wait = l.check(None, None, &none, Instant::now()).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(l.check(None, None, &none, Instant::now()).is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(l.check(None, None, &none, Instant::now()).is_ok());
        // Over 10 s of steady demand, 10 per second.
        let mut ok = 0;
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            ok += admitted(&l, 5, None, &none);
        }
        assert_eq!(ok, 100);
        // A quiet spell refills the bucket to `burst`, no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(admitted(&l, 10, None, &none), 3);
    }

    /// Keys get their own buckets; requests without the key share one.
    #[tokio::test(start_paused = true)]
    async fn keyed_by_header_and_client_ip() {
        let l = limiter(1, 1000, 2, RateLimitKey::Header("x-api-key".into()), 100);
        let mut a = HeaderMap::new();
        a.insert("x-api-key", HeaderValue::from_static("a"));
        let mut b = HeaderMap::new();
        b.insert("x-api-key", HeaderValue::from_static("b"));
        let none = HeaderMap::new();
        assert_eq!(admitted(&l, 5, None, &a), 2);
        assert_eq!(admitted(&l, 5, None, &b), 2);
        assert_eq!(admitted(&l, 5, None, &none), 2);
        assert_eq!(
            admitted(&l, 5, None, &none),
            0,
            "keyless requests share a bucket"
        );

        let l = limiter(1, 1000, 1, RateLimitKey::ClientIp, 100);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "::2".parse().unwrap();
        assert_eq!(admitted(&l, 3, Some(one), &none), 1);
        assert_eq!(admitted(&l, 3, Some(two), &none), 1);
        assert_eq!(admitted(&l, 3, Some(one), &none), 0);
    }

    /// The table never holds more than `max_keys`: new keys beyond it share the overflow bucket
    /// (so fresh keys do not escape the limit), and refilled keys are purged to make room.
    #[tokio::test(start_paused = true)]
    async fn key_table_is_bounded() {
        let l = limiter(1, 1000, 1, RateLimitKey::Header("k".into()), 3);
        let key = |v: usize| {
            let mut h = HeaderMap::new();
            h.insert("k", HeaderValue::from_str(&v.to_string()).unwrap());
            h
        };
        for v in 0..3 {
            assert_eq!(admitted(&l, 1, None, &key(v)), 1);
        }
        // Full: 1000 fresh keys get one admission between them.
        let fresh: usize = (100..1100).map(|v| admitted(&l, 1, None, &key(v))).sum();
        assert_eq!(fresh, 1);
        assert_eq!(l.state.lock().unwrap().keys.len(), 3);
        // Once the tracked buckets have refilled they are purged and new keys get their own.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(admitted(&l, 1, None, &key(2000)), 1);
        assert_eq!(admitted(&l, 1, None, &key(2001)), 1);
        assert!(l.state.lock().unwrap().keys.len() <= 3);
    }

    /// `key: peer_identity`: a bucket per verified identity; connections without one share one.
    #[tokio::test(start_paused = true)]
    async fn per_peer_identity() {
        let l = limiter(1, 1000, 1, RateLimitKey::PeerIdentity, 100);
        let none = HeaderMap::new();
        let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let count = |id: Option<&str>| {
            (0..3)
                .filter(|_| l.check(ip, id, &none, Instant::now()).is_ok())
                .count()
        };
        assert_eq!(count(Some("spiffe://p/a")), 1);
        assert_eq!(
            count(Some("spiffe://p/b")),
            1,
            "another identity, another bucket"
        );
        assert_eq!(count(Some("spiffe://p/a")), 0);
        assert_eq!(count(None), 1);
        assert_eq!(count(None), 0, "no identity: one shared bucket");
    }
}

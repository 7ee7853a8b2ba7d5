//! A lock-free histogram over integer observations (nanoseconds, bytes), encoded as an ordinary
//! Prometheus/OpenMetrics histogram.
//!
//! Why not `prometheus_client`'s `Histogram`: its `observe` takes a write lock on the histogram.
//! A route's histogram is shared by every worker thread serving that route, so with several
//! workers each request would serialize on it; here an observation is two relaxed atomic adds.
//! Integer bounds also keep the bucket search to integer compares.
//!
//! A scrape reads the buckets and the sum one by one, so under concurrent updates `_count` and
//! `_sum` can be off by the few observations in flight; every value is monotonic, which is what
//! `rate()` needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A histogram with fixed integer upper bounds; clones share the same storage.
#[derive(Clone, Debug)]
pub struct IntHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Inclusive upper bounds in observation units, ascending.
    bounds: &'static [u64],
    /// Divides observations into the exported unit (1e9 for nanoseconds -> seconds). A divisor
    /// rather than a factor: `500_000 / 1e9` prints as `0.0005`, `500_000 * 1e-9` does not.
    divisor: f64,
    /// One count per bound, then the overflow (`+Inf`) bucket; not cumulative.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl IntHistogram {
    /// A histogram with inclusive upper `bounds` (ascending), exported divided by `divisor`.
    pub fn new(bounds: &'static [u64], divisor: f64) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        IntHistogram {
            inner: Arc::new(Inner {
                bounds,
                divisor,
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0),
            }),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: u64) {
        let i = self.inner.bounds.partition_point(|&b| b < v);
        if let Some(c) = self.inner.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The sum of observations so far, in observation units.
    pub fn sum(&self) -> u64 {
        self.inner.sum.load(Ordering::Relaxed)
    }
}

impl TypedMetric for IntHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for IntHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.inner;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .map(|&b| b as f64 / inner.divisor)
            .chain(std::iter::once(f64::MAX))
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.sum() as f64 / inner.divisor;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use prometheus_client::registry::{Registry, Unit};

    use super::*;

    static BOUNDS: [u64; 3] = [10, 100, 1000];

    /// Bounds are inclusive (`le`), buckets cumulative on output, the overflow lands in `+Inf`,
    /// and the sum is scaled to the exported unit.
    #[test]
    fn buckets_sum_and_encoding() {
        let h = IntHistogram::new(&BOUNDS, 1000.0);
        for v in [0, 10, 11, 100, 5000] {
            h.observe(v);
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum(), 5121);
        let mut r = Registry::default();
        r.register_with_unit("t", "test", Unit::Seconds, h.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        for line in [
            "t_seconds_sum 5.121",
            "t_seconds_count 5",
            r#"t_seconds_bucket{le="0.01"} 2"#,
            r#"t_seconds_bucket{le="0.1"} 4"#,
            r#"t_seconds_bucket{le="1.0"} 4"#,
            r#"t_seconds_bucket{le="+Inf"} 5"#,
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
    }

    /// Concurrent observers lose nothing.
    #[test]
    fn concurrent_observations_all_count() {
        let h = IntHistogram::new(&BOUNDS, 1.0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let h = h.clone();
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        h.observe((i + t) % 2000);
                    }
                });
            }
        });
        assert_eq!(h.count(), 40_000);
    }
}

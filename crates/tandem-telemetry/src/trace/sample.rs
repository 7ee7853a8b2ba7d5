//! Sampling: parent-based, with a ratio for traces that start here.
//!
//! A request that carries a decision keeps it (a sampled parent is recorded, an unsampled one is
//! not), so every hop of a trace agrees and no trace is recorded in pieces. A request without one
//! is recorded when its trace id falls under the ratio, computed exactly as OpenTelemetry's
//! `TraceIdRatioBased` does (the trace id's low 64 bits, shifted right by one, below
//! `ratio * 2^63`): the decision depends on the trace id alone, so every Tandem and SDK with the
//! same ratio makes the same one for the same trace.

use super::context::{Extracted, TraceId};

/// The sampling policy of one Tandem.
#[derive(Clone, Copy, Debug)]
pub struct Sampler {
    /// Traces whose shifted low 64 bits are below this are sampled.
    threshold: u64,
    always: bool,
}

impl Sampler {
    /// Samples `ratio` (0 to 1, clamped) of new traces.
    pub fn new(ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Sampler {
            // 2^63 as f64 is exact, and the product is at most 2^63: the cast cannot saturate.
            threshold: (ratio * (1u64 << 63) as f64) as u64,
            always: ratio >= 1.0,
        }
    }

    /// Whether the trace `trace_id` is recorded, given what the request carried.
    pub fn sample(&self, extracted: &Extracted, trace_id: TraceId) -> bool {
        match extracted.sampled {
            Some(decided) => decided,
            None => self.always || ((trace_id.to_u128() as u64) >> 1) < self.threshold,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::trace::context::{Parent, SpanId};

    fn id(v: u128) -> TraceId {
        TraceId::from_u128(v).unwrap()
    }

    /// A parent's decision wins over the ratio both ways; without one the ratio decides.
    #[test]
    fn parent_based() {
        let parent = Some(Parent {
            trace_id: id(1),
            span_id: SpanId::from_u64(1).unwrap(),
            trace_state: None,
        });
        let sampled = Extracted {
            parent: parent.clone(),
            sampled: Some(true),
        };
        let unsampled = Extracted {
            parent,
            sampled: Some(false),
        };
        assert!(Sampler::new(0.0).sample(&sampled, id(u128::MAX)));
        assert!(!Sampler::new(1.0).sample(&unsampled, id(1)));
        // B3 `b3: 1` without ids: a decision without a parent is honoured too.
        let decision_only = Extracted {
            parent: None,
            sampled: Some(true),
        };
        assert!(Sampler::new(0.0).sample(&decision_only, id(u128::MAX)));
        let none = Extracted::default();
        assert!(Sampler::new(1.0).sample(&none, id(u128::MAX)));
        assert!(!Sampler::new(0.0).sample(&none, id(1)));
    }

    /// The ratio is OpenTelemetry's: the low 64 bits shifted right once against ratio * 2^63;
    /// high bits do not matter, and the boundary is exact.
    #[test]
    fn ratio_matches_trace_id_ratio_based() {
        let half = Sampler::new(0.5);
        let none = Extracted::default();
        // low 64 bits 0x7fff.. >> 1 = 0x3fff.. < 2^62: sampled; 0x8000.. >> 1 = 2^62: not.
        assert!(half.sample(&none, id(0xffff_0000_0000_0000_7fff_ffff_ffff_ffff)));
        assert!(!half.sample(&none, id(0x8000_0000_0000_0000)));
        assert!(half.sample(&none, id(1 << 64)), "only the low bits count");
        // Deterministic per trace id, and close to the ratio over many ids.
        let tenth = Sampler::new(0.1);
        let n = 100_000;
        let hits = (0..n)
            .filter(|_| tenth.sample(&none, TraceId::random()))
            .count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        let t = TraceId::random();
        assert_eq!(tenth.sample(&none, t), tenth.sample(&none, t));
        // Out-of-range ratios are clamped rather than wrapping.
        assert!(!Sampler::new(f64::NAN).sample(&none, id(1)));
        assert!(Sampler::new(7.0).sample(&none, id(u64::MAX as u128)));
    }
}

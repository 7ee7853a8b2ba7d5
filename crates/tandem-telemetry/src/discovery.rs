//! Service discovery and registration metrics: per upstream, how many endpoints its source
//! publishes, how old its last good answer is, and how often it failed; per registered service,
//! whether the registration is in place and how often its lease was lost.
//!
//! Labels are upstream and service names from the config, so cardinality is bounded by the file.
//! Also here: [`EndpointFamilies`], the per-endpoint families an upstream whose endpoints change
//! at run time resolves handles from (and removes the series of endpoints that left).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::{EndpointLabels, EndpointMetrics, HealthCheckLabels, Metrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamSourceLabels {
    upstream: String,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

/// The discovery families, registered once.
#[derive(Clone, Debug)]
pub(crate) struct DiscoveryFamilies {
    endpoints: Family<UpstreamSourceLabels, Gauge>,
    age: Family<UpstreamSourceLabels, Gauge<f64, AtomicU64>>,
    errors: Family<UpstreamSourceLabels, Counter>,
    updates: Family<UpstreamSourceLabels, Counter>,
    registered: Family<ServiceLabels, Gauge>,
    lost: Family<ServiceLabels, Counter>,
}

/// Handles of one upstream's discovery source.
#[derive(Clone, Debug)]
pub struct DiscoveryMetrics {
    /// Endpoints in the set in use.
    pub endpoints: Gauge,
    /// Seconds since the source last answered successfully (updated about once a second).
    pub age_seconds: Gauge<f64, AtomicU64>,
    /// Failed resolutions, reads or watches.
    pub errors: Counter,
    /// Endpoint sets published (changes only).
    pub updates: Counter,
}

/// Handles of the app's registration.
#[derive(Clone, Debug)]
pub struct RegistrationMetrics {
    /// 1 while the instance is registered under a live lease, else 0.
    pub registered: Gauge,
    /// Times the lease was lost (expired, revoked or unreachable) and the instance registered
    /// again.
    pub lost: Counter,
}

/// The per-endpoint families, for upstreams whose endpoints change at run time.
#[derive(Clone, Debug)]
pub struct EndpointFamilies {
    ejected: Family<EndpointLabels, Gauge>,
    /// `None` for an upstream without active health checks: its endpoints share the
    /// unregistered handles of [`Unchecked`] instead of three series each.
    health: Option<(
        Family<EndpointLabels, Gauge>,
        Family<HealthCheckLabels, Counter>,
    )>,
    unchecked: Unchecked,
}

/// The health handles of endpoints nobody health-checks: never registered, never written.
#[derive(Clone, Debug, Default)]
pub(crate) struct Unchecked {
    healthy: Gauge,
    passed: Counter,
    failed: Counter,
}

// === impl DiscoveryFamilies ===

impl DiscoveryFamilies {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let f = DiscoveryFamilies {
            endpoints: Family::default(),
            age: Family::default(),
            errors: Family::default(),
            updates: Family::default(),
            registered: Family::default(),
            lost: Family::default(),
        };
        registry.register(
            "discovery_endpoints",
            "Endpoints an upstream's discovery source currently provides",
            f.endpoints.clone(),
        );
        registry.register_with_unit(
            "discovery_snapshot_age",
            "Time since an upstream's discovery source last answered successfully",
            Unit::Seconds,
            f.age.clone(),
        );
        registry.register(
            "discovery_errors",
            "Failed resolutions, reads or watches of an upstream's discovery source",
            f.errors.clone(),
        );
        registry.register(
            "discovery_updates",
            "Endpoint sets published by an upstream's discovery source (changes only)",
            f.updates.clone(),
        );
        registry.register(
            "registration_registered",
            "1 while the app is registered in etcd under a live lease",
            f.registered.clone(),
        );
        registry.register(
            "registration_lease_lost",
            "Times the registration's lease was lost and the app registered again",
            f.lost.clone(),
        );
        f
    }
}

// === impl Metrics ===

impl Metrics {
    /// Handles for the discovery source (`static`, `dns`, `file`, `etcd`) of `upstream`.
    pub fn discovery(&self, upstream: &str, source: &'static str) -> DiscoveryMetrics {
        let labels = UpstreamSourceLabels {
            upstream: upstream.to_owned(),
            source,
        };
        let f = &self.discovery;
        DiscoveryMetrics {
            endpoints: f.endpoints.get_or_create(&labels).clone(),
            age_seconds: f.age.get_or_create(&labels).clone(),
            errors: f.errors.get_or_create(&labels).clone(),
            updates: f.updates.get_or_create(&labels).clone(),
        }
    }

    /// Handles for the registration of `service`.
    pub fn registration(&self, service: &str) -> RegistrationMetrics {
        let labels = ServiceLabels {
            service: service.to_owned(),
        };
        RegistrationMetrics {
            registered: self.discovery.registered.get_or_create(&labels).clone(),
            lost: self.discovery.lost.get_or_create(&labels).clone(),
        }
    }

    /// The per-endpoint families (cheap clones of the registered ones) of an upstream with
    /// (`health_checked`) or without active health checks.
    pub fn endpoint_families(&self, health_checked: bool) -> EndpointFamilies {
        EndpointFamilies {
            ejected: self.ejected.clone(),
            health: health_checked.then(|| (self.healthy.clone(), self.health_checks.clone())),
            unchecked: self.unchecked.clone(),
        }
    }
}

// === impl EndpointFamilies ===

impl EndpointFamilies {
    /// Handles for endpoint `endpoint` of `upstream` (healthy starts at 1).
    pub fn endpoint(&self, upstream: &str, endpoint: &str) -> EndpointMetrics {
        let labels = EndpointLabels {
            upstream: upstream.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        let ejected = self.ejected.get_or_create(&labels).clone();
        let Some((healthy, checks)) = &self.health else {
            return EndpointMetrics {
                ejected,
                healthy: self.unchecked.healthy.clone(),
                checks_passed: self.unchecked.passed.clone(),
                checks_failed: self.unchecked.failed.clone(),
            };
        };
        let check = |result| {
            checks
                .get_or_create(&HealthCheckLabels {
                    upstream: upstream.to_owned(),
                    endpoint: endpoint.to_owned(),
                    result,
                })
                .clone()
        };
        let healthy = healthy.get_or_create(&labels).clone();
        healthy.set(1);
        EndpointMetrics {
            ejected,
            healthy,
            checks_passed: check("pass"),
            checks_failed: check("fail"),
        }
    }

    /// Drops the series of an endpoint that left its upstream.
    pub fn remove(&self, upstream: &str, endpoint: &str) {
        let labels = EndpointLabels {
            upstream: upstream.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        self.ejected.remove(&labels);
        let Some((healthy, checks)) = &self.health else {
            return;
        };
        healthy.remove(&labels);
        for result in ["pass", "fail"] {
            checks.remove(&HealthCheckLabels {
                upstream: upstream.to_owned(),
                endpoint: endpoint.to_owned(),
                result,
            });
        }
    }
}

//! Prometheus metrics, served as text at `/metrics` on the admin listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::health::Health;
use crate::hsm::Hsm;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Counters, histograms and gauges of one server.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OpLabels, Histogram, fn() -> Histogram>,
    pool_size: Gauge,
    pool_in_use: Gauge,
    pool_waiting: Gauge,
    health: Family<BackendLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register everything.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("xki_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<OpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let pool_size = Gauge::default();
        let pool_in_use = Gauge::default();
        let pool_waiting = Gauge::default();
        let health = Family::<BackendLabels, Gauge>::default();
        registry.register(
            "requests",
            "API requests by operation and outcome",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "API request latency",
            latency.clone(),
        );
        registry.register("hsm_sessions", "HSM session pool size", pool_size.clone());
        registry.register(
            "hsm_sessions_in_use",
            "HSM sessions in a call",
            pool_in_use.clone(),
        );
        registry.register(
            "hsm_waiting",
            "Requests waiting for an HSM session",
            pool_waiting.clone(),
        );
        registry.register(
            "backend_health",
            "Backend health: 2 ACTIVE, 1 DEGRADED, 0 UNAVAILABLE",
            health.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            pool_size,
            pool_in_use,
            pool_waiting,
            health,
        }
    }

    /// Count one finished request.
    pub fn observe(&self, operation: &str, outcome: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                operation: operation.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&OpLabels {
                operation: operation.to_string(),
            })
            .observe(seconds);
    }

    /// Refresh gauges and render the text exposition format.
    pub fn render(&self, hsm: &Hsm, health: &Health) -> String {
        let st = hsm.pool_stats();
        self.pool_size.set(st.size as i64);
        self.pool_in_use.set(st.in_use as i64);
        self.pool_waiting.set(st.waiting as i64);
        let v = match health.status() {
            "ACTIVE" => 2,
            "DEGRADED" => 1,
            _ => 0,
        };
        self.health
            .get_or_create(&BackendLabels {
                backend: health.backend_id(),
            })
            .set(v);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

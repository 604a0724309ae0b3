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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadTimeoutLabels {
    listener: String,
    phase: String,
}

/// The connection metrics of one listener (handles into the registered families).
#[derive(Clone)]
pub struct ConnMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed at once because the cap was reached and all open ones were busy.
    pub refused: Counter,
    /// Connections closed to make room at the cap (or to free descriptors).
    pub evicted: Counter,
    /// Failed `accept` calls (each followed by a back-off).
    pub accept_errors: Counter,
    /// Requests whose head did not arrive within the read timeout (connection closed).
    pub head_timeouts: Counter,
    /// Requests whose body did not arrive within the read timeout (408, connection closed).
    pub body_timeouts: Counter,
}

#[derive(Default)]
struct ConnFamilies {
    open: Family<ListenerLabels, Gauge>,
    refused: Family<ListenerLabels, Counter>,
    evicted: Family<ListenerLabels, Counter>,
    accept_errors: Family<ListenerLabels, Counter>,
    read_timeouts: Family<ReadTimeoutLabels, Counter>,
}

impl ConnFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Client connections open, by listener",
            self.open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because the cap was reached and every open one was being served",
            self.refused.clone(),
        );
        registry.register(
            "connections_evicted",
            "Connections closed to make room at the cap: those that waited longest for a complete request",
            self.evicted.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accept calls (each followed by a back-off)",
            self.accept_errors.clone(),
        );
        registry.register(
            "request_read_timeouts",
            "Requests whose head or body did not arrive within clients.request_read_timeout_ms",
            self.read_timeouts.clone(),
        );
    }
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
    member_health: Family<MemberLabels, Gauge>,
    member_in_flight: Family<MemberLabels, Gauge>,
    member_stuck: Family<MemberLabels, Gauge>,
    member_failures: Family<MemberLabels, Gauge>,
    audit: AuditMetrics,
    conns: ConnFamilies,
}

/// The module's audit trail (`XKI_GetAuditStatus`); absent modules leave them at 0.
#[derive(Default)]
struct AuditMetrics {
    failing: Gauge,
    retained: Gauge,
    lost: Counter,
    refused: Counter,
    write_errors: Counter,
}

impl AuditMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "audit_failing",
            "1 while the module's audit file cannot be written (fail-closed: key operations refused)",
            self.failing.clone(),
        );
        registry.register(
            "audit_records_retained",
            "Audit records kept in memory until the audit file can be written",
            self.retained.clone(),
        );
        registry.register(
            "audit_records_lost",
            "Audit records the module dropped because they could not be written",
            self.lost.clone(),
        );
        registry.register(
            "audit_refused_operations",
            "Key operations the module refused because its audit file could not be written",
            self.refused.clone(),
        );
        registry.register(
            "audit_write_errors",
            "Failed writes of the module's audit file",
            self.write_errors.clone(),
        );
    }

    /// Follow the module's counters (process-wide, only growing).
    fn update(&self, a: &crate::hsm::AuditStatus) {
        self.failing.set(i64::from(a.failing));
        self.retained.set(a.retained_records as i64);
        for (c, v) in [
            (&self.lost, a.lost_records),
            (&self.refused, a.refused_operations),
            (&self.write_errors, a.write_errors),
        ] {
            c.inc_by(v.saturating_sub(c.get()));
        }
    }
}

fn health_value(status: &str) -> i64 {
    match status {
        "ACTIVE" => 2,
        "DEGRADED" => 1,
        _ => 0,
    }
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
        let member_health = Family::<MemberLabels, Gauge>::default();
        let member_in_flight = Family::<MemberLabels, Gauge>::default();
        let member_stuck = Family::<MemberLabels, Gauge>::default();
        let member_failures = Family::<MemberLabels, Gauge>::default();
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
        registry.register(
            "member_health",
            "Health of each token behind the slot, as in GetHealthStatus: 2 ACTIVE, 1 DEGRADED, 0 UNAVAILABLE",
            member_health.clone(),
        );
        registry.register(
            "member_in_flight",
            "Calls running on each token behind the slot",
            member_in_flight.clone(),
        );
        registry.register(
            "member_stuck_calls",
            "Abandoned (timed-out) calls still inside each token's library",
            member_stuck.clone(),
        );
        registry.register(
            "member_failures",
            "Times each token behind the slot was taken out of service (since module start)",
            member_failures.clone(),
        );
        let audit = AuditMetrics::default();
        audit.register(&mut registry);
        let conns = ConnFamilies::default();
        conns.register(&mut registry);
        Metrics {
            audit,
            registry,
            requests,
            latency,
            pool_size,
            pool_in_use,
            pool_waiting,
            health,
            member_health,
            member_in_flight,
            member_stuck,
            member_failures,
            conns,
        }
    }

    /// The connection metrics of `listener` ("api", "admin").
    pub fn connections(&self, listener: &str) -> ConnMetrics {
        let l = ListenerLabels {
            listener: listener.to_string(),
        };
        let phase = |p: &str| ReadTimeoutLabels {
            listener: listener.to_string(),
            phase: p.to_string(),
        };
        // One statement each: a family's guard lives to the end of its statement, and
        // creating a second series in the same family then would wait on it forever.
        let f = &self.conns;
        let open = f.open.get_or_create(&l).clone();
        let refused = f.refused.get_or_create(&l).clone();
        let evicted = f.evicted.get_or_create(&l).clone();
        let accept_errors = f.accept_errors.get_or_create(&l).clone();
        let head_timeouts = f.read_timeouts.get_or_create(&phase("head")).clone();
        let body_timeouts = f.read_timeouts.get_or_create(&phase("body")).clone();
        ConnMetrics {
            open,
            refused,
            evicted,
            accept_errors,
            head_timeouts,
            body_timeouts,
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
        if let Some(a) = hsm.audit() {
            self.audit.update(&a);
        }
        let v = health_value(health.status());
        for (m, st) in health.members().unwrap_or_default() {
            let l = MemberLabels { member: m.name };
            self.member_health
                .get_or_create(&l)
                .set(health_value(st.as_str()));
            self.member_in_flight
                .get_or_create(&l)
                .set(m.in_flight as i64);
            self.member_stuck
                .get_or_create(&l)
                .set(m.stuck_calls as i64);
            self.member_failures
                .get_or_create(&l)
                .set(m.failures as i64);
        }
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

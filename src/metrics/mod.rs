//! Prometheus metrics, all named `pgsidecar_*`. One process-wide registry: metrics are
//! observations of the process, and passing a handle through every layer would buy nothing.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub pinned: Family<ReasonLabel, Counter>,
    pub routed: Family<RouteLabel, Counter>,
    pub read_retries: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("pgsidecar");
    let pinned = Family::<ReasonLabel, Counter>::default();
    registry.register("sessions_pinned", "Client sessions pinned to one backend, by reason", pinned.clone());
    let routed = Family::<RouteLabel, Counter>::default();
    registry.register("requests_routed", "Requests routed, by destination (primary or replica)", routed.clone());
    let read_retries = Counter::default();
    registry.register("read_retries", "Replica reads retried on the primary", read_retries.clone());
    Metrics { registry, pinned, routed, read_retries }
});

pub fn get() -> &'static Metrics {
    &METRICS
}

pub fn session_pinned(reason: &str) {
    METRICS.pinned.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
}

pub fn routed(replica: bool) {
    METRICS.routed.get_or_create(&RouteLabel { route: if replica { "replica" } else { "primary" } }).inc();
}

/// The Prometheus text exposition of every metric.
pub fn encode() -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

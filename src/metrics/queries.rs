//! Statement statistics (`crate::stats`) and request latency as Prometheus series:
//! `pgsidecar_request_duration_seconds{route}` (every answered request, by where it was
//! answered: primary, replica or cache) and, for the `stats.metrics_queries` statement shapes
//! with the most total time, `pgsidecar_query_*{query="<normalized text>"}`.
//!
//! The per-shape series are gauges rebuilt at each scrape from `SHOW QUERIES`' table: a shape
//! can leave the top N, be evicted or be reset, which a monotonic counter could not express.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{Label, RouteLabel};

/// The figures of one statement shape that its series show (`stats::QueryEntry` has them).
pub struct QueryRow<'a> {
    pub text: &'a str,
    pub calls: u64,
    pub total_us: u64,
    pub rows: u64,
    pub replica: u64,
    pub cache_hits: u64,
    pub lock_wait_us: u64,
}

/// Where a request was answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Primary,
    Replica,
    Cache,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Primary => "primary",
            Route::Replica => "replica",
            Route::Cache => "cache",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabel {
    pub query: Label,
}

/// Longest `query` label value; the full text is in `SHOW QUERIES`.
const MAX_LABEL: usize = 200;

type FGauge = Gauge<f64, AtomicU64>;

pub struct QueryMetrics {
    durations: Family<RouteLabel, Histogram>,
    calls: Family<QueryLabel, Gauge>,
    seconds: Family<QueryLabel, FGauge>,
    rows: Family<QueryLabel, Gauge>,
    replica_calls: Family<QueryLabel, Gauge>,
    cache_hits: Family<QueryLabel, Gauge>,
    lock_wait_seconds: Family<QueryLabel, FGauge>,
    pub evicted: Counter,
}

fn histogram() -> Histogram {
    Histogram::new(
        [
            0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
        ]
        .into_iter(),
    )
}

impl QueryMetrics {
    pub fn register(registry: &mut Registry) -> QueryMetrics {
        let m = QueryMetrics {
            durations: Family::new_with_constructor(histogram),
            calls: Family::default(),
            seconds: Family::default(),
            rows: Family::default(),
            replica_calls: Family::default(),
            cache_hits: Family::default(),
            lock_wait_seconds: Family::default(),
            evicted: Counter::default(),
        };
        registry.register(
            "request_duration_seconds",
            "Client requests from the client's Sync/Query to its ReadyForQuery, by where they were answered (primary, replica, cache)",
            m.durations.clone(),
        );
        registry.register(
            "query_calls",
            "Calls of the statement shapes with the most total time (stats.metrics_queries; since RESET QUERIES or the shape's admission)",
            m.calls.clone(),
        );
        registry.register(
            "query_seconds",
            "Total time of those statement shapes",
            m.seconds.clone(),
        );
        registry.register(
            "query_rows",
            "Rows returned or changed by those statement shapes",
            m.rows.clone(),
        );
        registry.register(
            "query_replica_calls",
            "Calls of those statement shapes that ran on a replica",
            m.replica_calls.clone(),
        );
        registry.register(
            "query_cache_hits",
            "Calls of those statement shapes answered from the result cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "query_lock_wait_seconds",
            "Time those statement shapes waited for advisory locks",
            m.lock_wait_seconds.clone(),
        );
        registry.register(
            "query_evictions",
            "Statement shapes dropped from SHOW QUERIES to make room for new ones (stats.max_queries)",
            m.evicted.clone(),
        );
        m
    }

    /// One answered request; the three label sets are resolved once, not per request.
    pub fn request(&self, route: Route, secs: f64) {
        static H: LazyLock<[Histogram; 3]> = LazyLock::new(|| {
            let m = &super::get().queries;
            [Route::Primary, Route::Replica, Route::Cache].map(|r| {
                m.durations
                    .get_or_create(&RouteLabel { route: r.as_str() })
                    .clone()
            })
        });
        let i = match route {
            Route::Primary => 0,
            Route::Replica => 1,
            Route::Cache => 2,
        };
        H[i].observe(secs);
    }

    /// Replaces the per-shape series with `top`.
    pub fn observe(&self, top: &[QueryRow<'_>]) {
        self.calls.clear();
        self.seconds.clear();
        self.rows.clear();
        self.replica_calls.clear();
        self.cache_hits.clear();
        self.lock_wait_seconds.clear();
        for e in top {
            let mut q: String = e.text.chars().take(MAX_LABEL).collect();
            if q.len() < e.text.len() {
                q.push('…');
            }
            let l = QueryLabel { query: Label(q) };
            let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.calls.get_or_create(&l).set(i(e.calls));
            self.seconds.get_or_create(&l).set(e.total_us as f64 / 1e6);
            self.rows.get_or_create(&l).set(i(e.rows));
            self.replica_calls.get_or_create(&l).set(i(e.replica));
            self.cache_hits.get_or_create(&l).set(i(e.cache_hits));
            self.lock_wait_seconds
                .get_or_create(&l)
                .set(e.lock_wait_us as f64 / 1e6);
        }
    }
}

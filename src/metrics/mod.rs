//! Prometheus metrics, all named `pgsidecar_*`. One process-wide registry: metrics are
//! observations of the process, and passing a handle through every layer would buy nothing.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

mod cache;
mod observed;
mod queries;
mod resilience;
pub mod round_trips;

pub use observed::*;
pub use queries::{QueryRow, Route};

pub use resilience::{held_now, holds_total, timeout, timeouts_total, Held};
pub use round_trips::Trip;

/// A label value from outside the program (user and database names from a client's startup
/// packet, host names, environment names), escaped as the text format requires: the encoder
/// writes label values verbatim, so a `"` or a newline in a user name could otherwise end the
/// value and forge series in the scrape.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub String);

impl From<String> for Label {
    fn from(s: String) -> Label {
        Label(s)
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Label {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub node: Label,
    pub database: Label,
    pub user: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

/// The process's current state, refreshed from the live context just before a scrape
/// ([`observe`]), so nothing on the data path has to keep gauges up to date.
pub struct Gauges {
    pub clients: Gauge,
    pub pool_active: Family<PoolLabels, Gauge>,
    pub pool_idle: Family<PoolLabels, Gauge>,
    pub replica_lag_bytes: Family<NodeLabel, Gauge>,
    pub replica_lag_seconds: Family<NodeLabel, Gauge<f64, AtomicU64>>,
    pub node_healthy: Family<NodeLabel, Gauge>,
    pub active_environment: Family<EnvironmentLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnvironmentLabel {
    pub environment: Label,
}

impl Gauges {
    fn register(registry: &mut Registry) -> Gauges {
        let g = Gauges {
            clients: Gauge::default(),
            pool_active: Family::default(),
            pool_idle: Family::default(),
            replica_lag_bytes: Family::default(),
            replica_lag_seconds: Family::default(),
            node_healthy: Family::default(),
            active_environment: Family::default(),
        };
        registry.register(
            "active_environment",
            "1 for the environment traffic goes to, 0 for the other defined ones",
            g.active_environment.clone(),
        );
        registry.register("clients", "Client connections open now", g.clients.clone());
        registry.register(
            "pool_active",
            "Backend connections lent to clients, by pool",
            g.pool_active.clone(),
        );
        registry.register(
            "pool_idle",
            "Idle backend connections, by pool",
            g.pool_idle.clone(),
        );
        registry.register(
            "replica_lag_bytes",
            "WAL bytes a replica is behind the primary",
            g.replica_lag_bytes.clone(),
        );
        registry.register(
            "replica_lag_seconds",
            "Seconds a replica's replay is behind",
            g.replica_lag_seconds.clone(),
        );
        registry.register(
            "node_healthy",
            "1 while the monitor (or the configuration) deems the node healthy",
            g.node_healthy.clone(),
        );
        g
    }
}

pub struct Metrics {
    registry: Registry,
    pub gauges: Gauges,
    pub session_errors: Family<PhaseLabel, Counter>,
    pub pinned: Family<ReasonLabel, Counter>,
    pub routed: Family<RouteLabel, Counter>,
    pub read_retries: Counter,
    cache: cache::CacheMetrics,
    queries: queries::QueryMetrics,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("pgsidecar");
    let pinned = Family::<ReasonLabel, Counter>::default();
    registry.register(
        "sessions_pinned",
        "Client sessions pinned to one backend, by reason",
        pinned.clone(),
    );
    registry.register(
        "lock_keys",
        "Advisory lock keys taken around lock-table statements",
        LOCK_KEYS.clone(),
    );
    registry.register(
        "lock_timeouts",
        "Lock-table statements that hit lock_timeout (55P03)",
        LOCK_TIMEOUTS.clone(),
    );
    registry.register(
        "lock_wait_seconds",
        "Time statements waited for their advisory locks",
        LOCK_WAIT.clone(),
    );
    registry.register(
        "lock_undeterminable",
        "Lock-table statements without determinable keys that took no lock",
        LOCK_UNDETERMINABLE.clone(),
    );
    registry.register(
        "replica_waits",
        "Reads that waited for a replica to replay a commit they must see (read_your_writes), by result: replica (one caught up within max_wait) or primary",
        REPLICA_WAITS.clone(),
    );
    registry.register(
        "replica_wait_seconds",
        "How long those reads waited",
        REPLICA_WAIT.clone(),
    );
    registry.register(
        "switch_pause_seconds",
        "How long a SWITCH held new transactions (the longest pause a client saw)",
        SWITCH_PAUSE.clone(),
    );
    registry.register(
        "switches",
        "SWITCH commands, by result (ok or aborted)",
        SWITCHES.clone(),
    );
    registry.register(
        "dns_fallbacks",
        "Upstream connects that used a host's last good addresses because resolving it failed",
        DNS_FALLBACKS.clone(),
    );
    registry.register(
        "slow_queries",
        "Requests that took at least log.slow_query (each one is in the log)",
        SLOW_QUERIES.clone(),
    );
    registry.register(
        "backends_retired",
        "Backends reset (DISCARD ALL but prepared statements; closed on a replica) because a user function, procedure or unparseable statement may have left session state on them",
        BACKENDS_RETIRED.clone(),
    );
    registry.register(
        "analysis_uncertain",
        "Statements treated as unparseable because standard_conforming_strings or client_encoding make their text ambiguous to lex",
        ANALYSIS_UNCERTAIN.clone(),
    );
    registry.register(
        "stuck_requests",
        "Client requests that made no progress for longer than pool.stuck_request_timeout (each one is in the log with its messages)",
        STUCK_REQUESTS.clone(),
    );
    registry.register(
        "desynced_backends",
        "Backend answers the proxy could not match to a request: the client got 08P01 and the connection was closed",
        DESYNCED.clone(),
    );
    registry.register(
        "schema_changes",
        "DDL (or a stale-plan error) after which prepared statements are parsed again before reuse",
        SCHEMA_EPOCH.clone(),
    );
    registry.register(
        "stale_statements_refused",
        "Uses of a client's prepared statement whose result type changed since it was described (answered 0A000, as Postgres does)",
        STALE_REFUSED.clone(),
    );
    registry.register(
        "pipeline_requests",
        "Client requests answered over a pipelining backend connection (pool.pipeline)",
        PIPELINE_REQUESTS.clone(),
    );
    registry.register(
        "pipeline_writes",
        "Writes to pipelining backend connections (requests / writes = average batch depth)",
        PIPELINE_WRITES.clone(),
    );
    registry.register(
        "pipeline_batched_requests",
        "Requests carried by those writes",
        PIPELINE_BATCHED.clone(),
    );
    registry.register(
        "pipeline_reruns",
        "Pipelined requests run again on a normal backend: their connection died, a replica refused them, or they waited behind a slow request",
        PIPELINE_RERUNS.clone(),
    );
    registry.register(
        "worker_idle_spin_seconds",
        "Time session workers spent spinning for the next request instead of sleeping (workers.idle_spin)",
        IDLE_SPIN_SECONDS.clone(),
    );
    registry.register(
        "worker_idle_spin_backoffs",
        "Spins given up because another thread needed the CPU or no CPU was idle (each stops spinning on that worker for 10 ms)",
        IDLE_SPIN_BACKOFFS.clone(),
    );
    registry.register(
        "security_events",
        "Clients refused or limits hit, by event (passthrough_unverified, auth_timeout, limit_* …; docs/SECURITY.md)",
        SECURITY_EVENTS.clone(),
    );
    registry.register(
        "client_errors",
        "Errors sent to clients, by kind (the error type and its family: pool_exhausted, backend_unreachable, auth_password, session_protocol …)",
        CLIENT_ERRORS.clone(),
    );
    registry.register(
        "cache_lookups",
        "Result-cache lookups in the data path, by result (hit or miss)",
        CACHE_LOOKUPS.clone(),
    );
    for (i, (name, help)) in [
        ("mirror_requests", "Reads mirrored to the switch.mirror_to environment and compared"),
        ("mirror_differences", "Mirrored reads whose row count or row checksum differed (each one is in the log with its statement)"),
        ("mirror_dropped", "Reads not mirrored because the mirroring queue was full"),
        ("mirror_errors", "Mirrored reads the target environment did not answer (connect failure, timeout)"),
    ]
    .into_iter()
    .enumerate()
    {
        registry.register(name, help, MIRROR[i].clone());
    }
    registry.register(
        "upstream_round_trips",
        "Requests the proxy itself sends, by destination (postgres, redis) and purpose; postgres purposes ending in _queued share the client's own round trip",
        round_trips::TRIPS.family.clone(),
    );
    let routed = Family::<RouteLabel, Counter>::default();
    registry.register(
        "requests_routed",
        "Requests routed, by destination (primary or replica)",
        routed.clone(),
    );
    let read_retries = Counter::default();
    registry.register(
        "read_retries",
        "Replica reads retried on the primary",
        read_retries.clone(),
    );
    let session_errors = Family::<PhaseLabel, Counter>::default();
    registry.register(
        "session_errors",
        "Client sessions that ended with an error, by phase (startup or session)",
        session_errors.clone(),
    );
    resilience::register(&mut registry);
    let gauges = Gauges::register(&mut registry);
    let cache = cache::CacheMetrics::register(&mut registry);
    let queries = queries::QueryMetrics::register(&mut registry);
    Metrics {
        cache,
        queries,
        registry,
        gauges,
        session_errors,
        pinned,
        routed,
        read_retries,
    }
});

pub fn get() -> &'static Metrics {
    &METRICS
}

pub fn session_pinned(reason: &str) {
    METRICS
        .pinned
        .get_or_create(&ReasonLabel {
            reason: Label(reason.to_string()),
        })
        .inc();
}

pub fn routed(replica: bool) {
    // Resolved once: a label lookup per request would cost a lock and a hash.
    static PRIMARY: LazyLock<Counter> = LazyLock::new(|| {
        METRICS
            .routed
            .get_or_create(&RouteLabel { route: "primary" })
            .clone()
    });
    static REPLICA: LazyLock<Counter> = LazyLock::new(|| {
        METRICS
            .routed
            .get_or_create(&RouteLabel { route: "replica" })
            .clone()
    });
    if replica {
        REPLICA.inc()
    } else {
        PRIMARY.inc()
    };
}

pub fn routed_total(replica: bool) -> u64 {
    METRICS
        .routed
        .get_or_create(&RouteLabel {
            route: if replica { "replica" } else { "primary" },
        })
        .get()
}

/// A session ended with an error: `phase` is "startup" (before the client was accepted) or
/// "session".
pub fn session_error(phase: &'static str) {
    METRICS
        .session_errors
        .get_or_create(&PhaseLabel { phase })
        .inc();
}

pub fn session_errors_total(phase: &'static str) -> u64 {
    METRICS
        .session_errors
        .get_or_create(&PhaseLabel { phase })
        .get()
}

/// A request was answered (`route`: where from), after `took` (statement statistics).
pub fn request_answered(route: Route, took: std::time::Duration) {
    METRICS.queries.request(route, took.as_secs_f64());
}

static MIRROR: LazyLock<[Counter; 4]> = LazyLock::new(Default::default);

/// Mirroring (`switch::mirror`): `requests` compared, `differences`, `dropped` (queue full),
/// `errors` (the target did not answer).
pub fn mirror_event(event: &'static str) {
    let i = match event {
        "requests" => 0,
        "differences" => 1,
        "dropped" => 2,
        _ => 3,
    };
    MIRROR[i].inc();
}

/// A statement shape was dropped from `SHOW QUERIES` for a new one.
pub fn query_evicted() {
    METRICS.queries.evicted.inc();
}

/// The Prometheus text exposition of every metric.
pub fn encode() -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

/// Cache lookups answered from the cache.
pub fn cache_hit() {
    CACHE_LOOKUPS
        .get_or_create(&ResultLabel { result: "hit" })
        .inc();
}

/// Cache lookups that went to the database.
pub fn cache_miss() {
    CACHE_LOOKUPS
        .get_or_create(&ResultLabel { result: "miss" })
        .inc();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

static CACHE_LOOKUPS: LazyLock<Family<ResultLabel, Counter>> = LazyLock::new(Family::default);

static LOCK_KEYS: LazyLock<Counter> = LazyLock::new(Counter::default);
static LOCK_UNDETERMINABLE: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Advisory lock keys taken for inventory writes.
pub fn locks_taken(keys: usize) {
    LOCK_KEYS.inc_by(keys as u64);
}

/// Statements on lock tables whose keys could not be determined and took no lock (`pass`).
pub fn locks_undeterminable(n: usize) {
    LOCK_UNDETERMINABLE.inc_by(n as u64);
}

static LOCK_TIMEOUTS: LazyLock<Counter> = LazyLock::new(Counter::default);
static LOCK_WAIT: LazyLock<prometheus_client::metrics::histogram::Histogram> =
    LazyLock::new(|| {
        prometheus_client::metrics::histogram::Histogram::new(
            [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0].into_iter(),
        )
    });

/// Lock statements that gave up after the rule's lock_timeout (55P03).
pub fn lock_timeout() {
    LOCK_TIMEOUTS.inc();
}

/// How long a statement waited for its advisory locks (round trip of the lock statement).
pub fn lock_wait(d: std::time::Duration) {
    LOCK_WAIT.observe(d.as_secs_f64());
}

static REPLICA_WAITS: LazyLock<Family<ResultLabel, Counter>> = LazyLock::new(Family::default);
static REPLICA_WAIT: LazyLock<prometheus_client::metrics::histogram::Histogram> =
    LazyLock::new(|| {
        prometheus_client::metrics::histogram::Histogram::new(
            [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5].into_iter(),
        )
    });

/// A read waited `d` for a replica to replay what it must see; `replica`: one did in time.
pub fn replica_wait(d: std::time::Duration, replica: bool) {
    REPLICA_WAIT.observe(d.as_secs_f64());
    REPLICA_WAITS
        .get_or_create(&ResultLabel {
            result: if replica { "replica" } else { "primary" },
        })
        .inc();
}

static SWITCH_PAUSE: LazyLock<prometheus_client::metrics::histogram::Histogram> =
    LazyLock::new(|| {
        prometheus_client::metrics::histogram::Histogram::new(
            [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0].into_iter(),
        )
    });
static SWITCHES: LazyLock<Family<ResultLabel, Counter>> = LazyLock::new(Family::default);

/// A SWITCH moved traffic; `pause` is how long new transactions were held.
pub fn switched(pause: std::time::Duration) {
    SWITCH_PAUSE.observe(pause.as_secs_f64());
    SWITCHES.get_or_create(&ResultLabel { result: "ok" }).inc();
}

/// A SWITCH gave up (timeout or unusable target) and left traffic where it was.
pub fn switch_aborted() {
    SWITCHES
        .get_or_create(&ResultLabel { result: "aborted" })
        .inc();
}

static SLOW_QUERIES: LazyLock<Counter> = LazyLock::new(Counter::default);
static BACKENDS_RETIRED: LazyLock<Counter> = LazyLock::new(Counter::default);
static ANALYSIS_UNCERTAIN: LazyLock<Counter> = LazyLock::new(Counter::default);

/// A backend reset (or, on a replica, closed) before reuse: code the analyser cannot see
/// into ran on it.
pub fn backend_retired() {
    BACKENDS_RETIRED.inc();
}

/// A statement treated as unparseable because the session's settings (standard_conforming_strings,
/// client_encoding) make its text impossible to lex with certainty.
pub fn analysis_uncertain() {
    ANALYSIS_UNCERTAIN.inc();
}

/// A request logged as slow (`log.slow_query`).
pub fn slow_query() {
    SLOW_QUERIES.inc();
}

static STUCK_REQUESTS: LazyLock<Counter> = LazyLock::new(Counter::default);
static DESYNCED: LazyLock<Counter> = LazyLock::new(Counter::default);
static SCHEMA_EPOCH: LazyLock<Counter> = LazyLock::new(Counter::default);
static STALE_REFUSED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// A client request made no progress for longer than `pool.stuck_request_timeout`.
pub fn stuck_request() {
    STUCK_REQUESTS.inc();
}

/// A backend's answer matched no outstanding request.
pub fn desynced() {
    DESYNCED.inc();
}

/// Prepared statements became stale (DDL, or a backend's stale-plan error).
pub fn schema_epoch_bumped() {
    SCHEMA_EPOCH.inc();
}

/// A client's statement described before DDL now has another result type (0A000).
pub fn stale_statement_refused() {
    STALE_REFUSED.inc();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host: Label,
}

static DNS_FALLBACKS: LazyLock<Family<HostLabel, Counter>> = LazyLock::new(Family::default);

/// A connect to `host` used its last good addresses: resolving it failed.
pub fn dns_fallback(host: &str) {
    DNS_FALLBACKS
        .get_or_create(&HostLabel {
            host: Label(host.to_string()),
        })
        .inc();
}

static PIPELINE_REQUESTS: LazyLock<Counter> = LazyLock::new(Counter::default);
static PIPELINE_WRITES: LazyLock<Counter> = LazyLock::new(Counter::default);
static IDLE_SPIN_SECONDS: LazyLock<Counter<f64, AtomicU64>> = LazyLock::new(Counter::default);
static IDLE_SPIN_BACKOFFS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// A session worker spun this long before it slept or backed off (once per spin, not per turn:
/// the counter is shared by the workers).
pub fn idle_spin(spun: std::time::Duration) {
    IDLE_SPIN_SECONDS.inc_by(spun.as_secs_f64());
}

/// A session worker stopped spinning because its CPU was contended.
pub fn idle_spin_backoff() {
    IDLE_SPIN_BACKOFFS.inc();
}
static PIPELINE_BATCHED: LazyLock<Counter> = LazyLock::new(Counter::default);
static PIPELINE_RERUNS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// A request was answered over a pipelining connection.
pub fn pipeline_request() {
    PIPELINE_REQUESTS.inc();
}

/// One write to a pipelining connection carried `requests` requests.
pub fn pipeline_write(requests: usize) {
    PIPELINE_WRITES.inc();
    PIPELINE_BATCHED.inc_by(requests as u64);
}

/// A pipelined request is run again on the normal path (its connection died unanswered).
pub fn pipeline_rerun() {
    PIPELINE_RERUNS.inc();
}

/// Requests pipelined, writes to pipelining connections, requests those writes carried.
pub fn pipeline_totals() -> (u64, u64, u64) {
    (
        PIPELINE_REQUESTS.get(),
        PIPELINE_WRITES.get(),
        PIPELINE_BATCHED.get(),
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: &'static str,
}

static SECURITY_EVENTS: LazyLock<Family<EventLabel, Counter>> = LazyLock::new(Family::default);

/// A defence fired: a client refused, a limit hit, untrusted input dropped (docs/SECURITY.md
/// lists the events).
pub fn security_event(event: &'static str) {
    SECURITY_EVENTS.get_or_create(&EventLabel { event }).inc();
}

/// How often `event` fired (tests, SHOW).
pub fn security_events_total(event: &'static str) -> u64 {
    SECURITY_EVENTS.get_or_create(&EventLabel { event }).get()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

static CLIENT_ERRORS: LazyLock<Family<KindLabel, Counter>> = LazyLock::new(Family::default);

/// An error was sent to a client (`crate::error::respond`).
pub fn client_error(kind: &'static str) {
    CLIENT_ERRORS.get_or_create(&KindLabel { kind }).inc();
}

/// How many errors of `kind` were sent to clients (tests).
pub fn client_errors_total(kind: &'static str) -> u64 {
    CLIENT_ERRORS.get_or_create(&KindLabel { kind }).get()
}

#[cfg(test)]
mod tests;

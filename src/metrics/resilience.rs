//! Outage holds and timeouts: what an operator watches during a primary restart or when
//! clients hit a timeout (deploy/RUNBOOK.md "Primary outages" and "Timeouts").

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

static HOLDS: LazyLock<Family<OutcomeLabel, Counter>> = LazyLock::new(Family::default);
static HELD: LazyLock<Gauge> = LazyLock::new(Gauge::default);
/// The same as [`HELD`], readable without the registry for the console.
static HELD_NOW: AtomicI64 = AtomicI64::new(0);
static TIMEOUTS: LazyLock<Family<KindLabel, Counter>> = LazyLock::new(Family::default);

pub(super) fn register(registry: &mut Registry) {
    registry.register(
        "outage_holds",
        "Requests held while the primary was unreachable or restarting (upstream.outage_hold), by outcome: resumed (ran once it was back or on a promoted replica), replica (a read served by a replica instead), expired (the client got 57P03/08006)",
        HOLDS.clone(),
    );
    registry.register(
        "outage_held",
        "Requests held right now waiting for the primary",
        HELD.clone(),
    );
    registry.register(
        "timeouts",
        "Timeouts enforced, by kind: query (cancelled, 57014), transaction (25P04), idle_in_transaction (25P03), client_idle (57P05), query_wait (no backend free, 53300)",
        TIMEOUTS.clone(),
    );
}

/// One request held for the primary; the gauge counts it until the guard is dropped with
/// its outcome.
pub struct Held {
    outcome: &'static str,
}

impl Held {
    pub fn start() -> Held {
        HELD.inc();
        HELD_NOW.fetch_add(1, Ordering::Relaxed);
        Held { outcome: "expired" }
    }

    pub fn resumed(mut self, on_replica: bool) {
        self.outcome = if on_replica { "replica" } else { "resumed" };
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.dec();
        HELD_NOW.fetch_sub(1, Ordering::Relaxed);
        HOLDS
            .get_or_create(&OutcomeLabel {
                outcome: self.outcome,
            })
            .inc();
    }
}

/// Requests waiting for the primary now.
pub fn held_now() -> i64 {
    HELD_NOW.load(Ordering::Relaxed)
}

/// Holds ended with `outcome` ("resumed", "replica", "expired").
pub fn holds_total(outcome: &'static str) -> u64 {
    HOLDS.get_or_create(&OutcomeLabel { outcome }).get()
}

/// A timeout of `kind` was enforced.
pub fn timeout(kind: &'static str) {
    TIMEOUTS.get_or_create(&KindLabel { kind }).inc();
}

pub fn timeouts_total(kind: &'static str) -> u64 {
    TIMEOUTS.get_or_create(&KindLabel { kind }).get()
}

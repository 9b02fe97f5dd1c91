//! Where a request runs: the primary, or a replica that is healthy, within the lag limits and
//! has replayed every write the request must see.
//!
//! `classify` is the pure part (analysis + hints + rules → what the request wants and why);
//! `choose` applies the live topology. `pgsidecar explain` runs `classify` alone.

pub mod flush;
pub mod functions;
pub mod lsn;
pub mod rules;
pub mod topology;

use std::sync::Arc;

use crate::analyze::{Analysis, StatementKind, TxnControl};
use crate::config::{NoReplica, RouteTo, RoutingConfig};
pub use lsn::WriteLog;
pub use rules::{Rules, Who};
pub use topology::{Lsn, Node, Role, Topology};

/// What a request wants, before the topology is consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub to: RouteTo,
    /// Why, in words a DBA can act on ("provably read-only", "rule 'catalog' → replica", …).
    pub reason: String,
    pub rule: Option<String>,
    /// How long the result may be cached (a rule's `cache_ttl` or a `cache_ttl=` hint).
    pub cache_ttl: Option<std::time::Duration>,
}

impl Intent {
    pub fn new(to: RouteTo, reason: impl Into<String>) -> Self {
        Intent {
            to,
            reason: reason.into(),
            rule: None,
            cache_ttl: None,
        }
    }

    fn primary(reason: impl Into<String>) -> Self {
        Intent::new(RouteTo::Primary, reason)
    }
}

/// Classifies one analysed query string.
pub fn classify_one(a: &Analysis, rules: &Rules, who: &Who<'_>) -> Intent {
    classify_one_indexed(a, rules, who).0
}

/// [`classify_one`], also saying which rule matched (its index), so a caller that remembers
/// the intent for the next execution of the same statement can still count the rule's hits
/// ([`Rules::count_hit`]).
pub fn classify_one_indexed(a: &Analysis, rules: &Rules, who: &Who<'_>) -> (Intent, Option<usize>) {
    let found = rules.first(a, who);
    let index = found.map(|(i, _)| i);
    let rule = found.map(|(_, r)| r);
    let mut intent = route_of(a, rule);
    if let Some(r) = rule {
        intent.rule = Some(r.name.clone());
        intent.cache_ttl = r.cache_ttl;
    }
    if a.hints.cache_ttl.is_some() {
        intent.cache_ttl = a.hints.cache_ttl;
    }
    if a.hints.cache == Some(false) {
        intent.cache_ttl = None;
    }
    (intent, index)
}

fn route_of(a: &Analysis, rule: Option<&rules::Rule>) -> Intent {
    if let Some(h) = a.hints.route {
        let to = match h {
            crate::analyze::RouteHint::Primary => RouteTo::Primary,
            crate::analyze::RouteHint::Replica => RouteTo::Replica,
            crate::analyze::RouteHint::Any => RouteTo::Any,
        };
        return Intent::new(to, format!("hint route={}", h.as_str()));
    }
    if let Some(rule) = rule {
        if let Some(to) = rule.route {
            return Intent::new(to, format!("rule '{}'", rule.name));
        }
    }
    match &a.kind {
        StatementKind::Unknown => {
            let why = a.parse_error.as_deref().unwrap_or("not understood");
            return Intent::primary(format!("unparseable → primary ({why})"));
        }
        StatementKind::Transaction(TxnControl::Begin {
            read_only: Some(true),
            serializable: true,
        }) => {
            return Intent::primary(
                "serializable transaction: hot standbys refuse serializable isolation",
            );
        }
        StatementKind::Transaction(TxnControl::Begin {
            read_only: Some(true),
            serializable: false,
        }) if a.statements.len() == 1 => {
            return Intent::new(RouteTo::Replica, "read-only transaction");
        }
        StatementKind::Transaction(t) => {
            return Intent::primary(format!(
                "transaction control ({t}): the transaction may write"
            ))
        }
        _ => {}
    }
    if let Some(view) = a.tables_read.iter().find(|t| t.is_primary_state_view()) {
        return Intent::primary(format!(
            "reads {}: state of the primary a replica does not show",
            view.name
        ));
    }
    if a.read_only {
        Intent::new(RouteTo::Replica, "provably read-only")
    } else {
        let why = if a.reasons.is_empty() {
            format!("{} statement", a.kind)
        } else {
            a.reasons.join("; ")
        };
        Intent::primary(why)
    }
}

/// Classifies a whole request (an extended-protocol batch may hold several statements): any
/// statement that needs the primary sends the request there.
pub fn classify(analyses: &[Arc<Analysis>], rules: &Rules, who: &Who<'_>) -> Intent {
    let mut result: Option<Intent> = None;
    for a in analyses {
        let i = classify_one(a, rules, who);
        if i.to == RouteTo::Primary {
            return i;
        }
        result = Some(match result {
            Some(prev) if prev.to == RouteTo::Replica => prev,
            _ => i,
        });
    }
    result.unwrap_or_else(|| Intent::primary("nothing to analyse (sync, flush or function call)"))
}

/// The outcome of routing against the live topology.
pub enum Choice {
    Node {
        node: Arc<Node>,
        reason: String,
    },
    /// Replicas within the lag limits exist, but none has replayed `min_lsn` yet.
    WaitFor {
        candidates: Vec<Arc<Node>>,
        min_lsn: Lsn,
    },
    /// No replica may serve and `no_replica = "error"`.
    Refuse(String),
}

/// The `min_lsn` of a read whose sidecar is out of the fleet sharing Redis (or has not caught
/// up since joining it): the writes it must see are not all known, so no replica can be
/// proven to have them (see `crate::cache` `fleet`).
pub const OUT_OF_FLEET: Lsn = Lsn::MAX;

/// Where a session's last request ran, for monotonic reads: a later read must not see an
/// older state of the database than that request did. Replicas replay at their own pace, so
/// a read on a replica further behind would show rows going back in time.
#[derive(Clone)]
pub struct Seen {
    pub node: Arc<Node>,
    /// When the backend was given back: the request had seen all it would by then.
    pub released: std::time::Instant,
    /// A position known to be at or beyond everything the request saw (the commit position
    /// captured after its last statement), when there is one.
    pub position: Option<Lsn>,
}

impl Seen {
    /// A position every node must have replayed to show at least what the request saw: its
    /// captured position, else a position read from its node or from the primary (which is
    /// ahead of every replica) by a query sent after the release. None until one is read
    /// (`routing.health_interval`, or sooner when reads poll replicas): meanwhile only the
    /// same node and the primary are known to be far enough.
    pub fn floor(&self, topo: &Topology) -> Option<Lsn> {
        if self.position.is_some() {
            return self.position;
        }
        let node = self.node.observed_after(self.released);
        let primary = topo.primary().observed_after(self.released);
        match (node, primary) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

pub fn choose(
    intent: &Intent,
    topo: &Topology,
    cfg: &RoutingConfig,
    min_lsn: Lsn,
    seen: Option<&Seen>,
) -> Choice {
    let primary = topo.primary();
    if intent.to == RouteTo::Primary || !cfg.enabled || topo.nodes.len() < 2 {
        return Choice::Node {
            node: primary.clone(),
            reason: intent.reason.clone(),
        };
    }
    if min_lsn == OUT_OF_FLEET {
        return Choice::Node {
            node: primary.clone(),
            reason: format!(
                "{} → primary (other sidecars' writes not known: out of the fleet sharing Redis)",
                intent.reason
            ),
        };
    }
    // Monotonic reads: at least what the session's last request saw, or its very node.
    let (min_lsn, only) = match seen.filter(|_| cfg.monotonic_reads) {
        None => (min_lsn, None),
        Some(s) => match s.floor(topo) {
            Some(floor) => (min_lsn.max(floor), None),
            None if Arc::ptr_eq(&s.node, primary) => {
                return Choice::Node {
                    node: primary.clone(),
                    reason: format!(
                        "{} → primary (monotonic reads: the session's last request ran on the primary, whose position since is not known yet)",
                        intent.reason
                    ),
                }
            }
            None => (min_lsn, Some(&s.node)),
        },
    };
    let mut within_limits = topo.eligible_replicas(cfg.max_lag_bytes, cfg.max_lag, 0);
    if let Some(only) = only {
        within_limits.retain(|n| Arc::ptr_eq(n, only));
    }
    let mut fresh: Vec<&Arc<Node>> = within_limits
        .iter()
        .copied()
        .filter(|n| n.replayed() >= min_lsn)
        .collect();
    if intent.to == RouteTo::Any {
        fresh.push(primary);
    }
    if let Some(node) = topo.pick(&fresh, cfg.balance) {
        return Choice::Node {
            node: node.clone(),
            reason: intent.reason.clone(),
        };
    }
    if !within_limits.is_empty() && !cfg.max_wait.is_zero() {
        return Choice::WaitFor {
            candidates: within_limits.into_iter().cloned().collect(),
            min_lsn,
        };
    }
    let why = if within_limits.is_empty() && only.is_some() {
        "monotonic reads: the replica of the session's last read is unavailable"
    } else if within_limits.is_empty() {
        "no healthy replica within the lag limits"
    } else {
        "no replica has replayed the writes this read must see"
    };
    match cfg.no_replica {
        NoReplica::Primary => Choice::Node {
            node: primary.clone(),
            reason: format!("{} → primary ({why})", intent.reason),
        },
        NoReplica::Error => {
            Choice::Refuse(format!("pgsidecar: {why} (routing.no_replica = \"error\")"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::NodeAddr;

    fn topology() -> Topology {
        let addr = |port| NodeAddr {
            host: "127.0.0.1".into(),
            port,
            user: None,
            password: None,
            database: None,
            weight: 1,
        };
        let t = Topology::new(addr(1), vec![addr(2), addr(3)]);
        for (i, n) in t.nodes.iter().enumerate() {
            n.checked.store(true, Ordering::Relaxed);
            n.healthy.store(true, Ordering::Relaxed);
            n.in_recovery.store(i > 0, Ordering::Relaxed);
        }
        t
    }

    fn replica_read() -> Intent {
        Intent::new(RouteTo::Replica, "provably read-only")
    }

    /// The ports `choose` sends eight reads to.
    fn ports(t: &Topology, seen: Option<&Seen>) -> Vec<u16> {
        let cfg = RoutingConfig::default();
        (0..8)
            .map(|_| match choose(&replica_read(), t, &cfg, 0, seen) {
                Choice::Node { node, .. } => node.addr.port,
                Choice::WaitFor { candidates, .. } => candidates[0].addr.port,
                Choice::Refuse(why) => panic!("refused: {why}"),
            })
            .collect()
    }

    #[test]
    fn a_read_after_a_replica_read_stays_on_that_replica_until_a_later_position_is_known() {
        let t = topology();
        t.nodes[1].lsn.store(200, Ordering::Relaxed);
        t.nodes[2].lsn.store(100, Ordering::Relaxed);
        assert!(
            ports(&t, None).contains(&3),
            "without history both replicas serve"
        );
        let seen = Seen {
            node: t.nodes[1].clone(),
            released: Instant::now(),
            position: None,
        };
        t.nodes[1].observe(seen.released - Duration::from_millis(1), 200);
        assert_eq!(
            ports(&t, Some(&seen)),
            vec![2; 8],
            "an observation from before the read says nothing"
        );
        t.nodes[1].observe(Instant::now() + Duration::from_millis(1), 200);
        assert_eq!(
            ports(&t, Some(&seen)),
            vec![2; 8],
            "the other replica is behind the position read after the read"
        );
        t.nodes[2].lsn.store(200, Ordering::Relaxed);
        assert!(
            ports(&t, Some(&seen)).contains(&3),
            "caught up: it serves again"
        );
    }

    #[test]
    fn a_read_after_a_commit_needs_the_commit_position_and_after_a_primary_read_the_primary() {
        let t = topology();
        t.nodes[1].lsn.store(300, Ordering::Relaxed);
        t.nodes[2].lsn.store(100, Ordering::Relaxed);
        let mut seen = Seen {
            node: t.nodes[0].clone(),
            released: Instant::now(),
            position: Some(250),
        };
        assert_eq!(ports(&t, Some(&seen)), vec![2; 8]);
        seen.position = None;
        assert_eq!(
            ports(&t, Some(&seen)),
            vec![1; 8],
            "position unknown: the primary"
        );
        t.nodes[0].observe(Instant::now() + Duration::from_millis(1), 90);
        assert!(ports(&t, Some(&seen)).contains(&3));
        let cfg = RoutingConfig {
            monotonic_reads: false,
            ..RoutingConfig::default()
        };
        seen.position = Some(u64::MAX - 1);
        assert!(matches!(
            choose(&replica_read(), &t, &cfg, 0, Some(&seen)),
            Choice::Node { node, .. } if node.addr.port != 1
        ));
    }
}

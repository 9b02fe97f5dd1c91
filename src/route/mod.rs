//! Where a request runs: the primary, or a replica that is healthy, within the lag limits and
//! has replayed every write the request must see.
//!
//! `classify` is the pure part (analysis + hints + rules → what the request wants and why);
//! `choose` applies the live topology. `pgsidecar explain` runs `classify` alone.

pub mod flush;
pub mod functions;
pub mod lsn;
pub mod monitor;
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

pub fn choose(intent: &Intent, topo: &Topology, cfg: &RoutingConfig, min_lsn: Lsn) -> Choice {
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
    let within_limits = topo.eligible_replicas(cfg.max_lag_bytes, cfg.max_lag, 0);
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
    let why = if within_limits.is_empty() {
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

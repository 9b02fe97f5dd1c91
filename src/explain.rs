//! `explain`: the routing decision for a statement, in words a DBA can act on. Shared by the
//! `pgsidecar explain` command and the admin console's EXPLAIN.

use std::fmt::Write;

use crate::analyze::{analyze, FunctionCatalog};
use crate::config::{Config, RouteTo};
use crate::route::{classify_one, Rules, Who};

/// Analysis, matching rule, route and reason, one fact per line.
pub fn explain(cfg: &Config, sql: &str, who: &Who<'_>) -> String {
    explain_with(
        cfg,
        &Rules::compile(&cfg.routing.rules),
        &FunctionCatalog::builtin(),
        sql,
        who,
    )
}

pub fn explain_with(
    cfg: &Config,
    rules: &Rules,
    funcs: &FunctionCatalog,
    sql: &str,
    who: &Who<'_>,
) -> String {
    let a = analyze(sql, funcs);
    let intent = classify_one(&a, rules, who);
    let mut out = a.describe();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(out, "rule: {}", intent.rule.as_deref().unwrap_or("(none)"));
    let route = match intent.to {
        RouteTo::Primary => "primary",
        RouteTo::Replica
            if cfg
                .environment(cfg.upstream.active_environment())
                .is_none_or(|e| e.replicas.is_empty()) =>
        {
            "primary (no replicas configured)"
        }
        RouteTo::Replica => "replica",
        RouteTo::Any => "any",
    };
    let _ = writeln!(out, "route: {route}");
    let _ = writeln!(out, "why: {}", intent.reason);
    if let Some(ttl) = intent.cache_ttl {
        let _ = writeln!(
            out,
            "cache: {} (ttl {})",
            if a.cacheable() {
                "yes"
            } else {
                "no: not cacheable"
            },
            humantime::format_duration(ttl)
        );
    }
    // Which advisory locks the statement would take (outside and inside a transaction).
    for in_txn in [false, true] {
        let mut plan = crate::locks::Plan::default();
        match crate::locks::plan(&cfg.locks, &a, None, in_txn, &mut plan) {
            Ok(()) => {
                plan.finish(&Default::default());
                if !plan.keys.is_empty() || plan.passed > 0 {
                    let when = if in_txn {
                        "in a transaction"
                    } else {
                        "autocommit"
                    };
                    let keys = if plan.keys.is_empty() {
                        "none (undeterminable, passed)".to_string()
                    } else {
                        plan.keys.join(", ")
                    };
                    let _ = writeln!(out, "locks ({when}): {keys}");
                }
            }
            Err(e) => {
                let _ = writeln!(out, "locks: rejected: {e}");
            }
        }
    }
    out
}

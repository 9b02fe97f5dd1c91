//! The console's view of blue-green environments: `SHOW ENVIRONMENTS` and `SWITCH`'s answer.

use super::show::{some, Table};
use crate::config::redact;
use crate::context::Context;
use crate::tasks::Switched;

/// Every defined environment: active, warm (seconds before it is closed) or cold.
pub fn environments(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        "environment",
        "state",
        "primary",
        "replicas",
        "warm_seconds_left",
        "transactions_in_flight",
        "last_switch_pause_ms",
        "switched_at_runtime",
    ]);
    let cfg = ctx.config.load();
    let active = ctx.topology.load().environment.clone();
    let warm = ctx.envs.warm();
    let mut names: Vec<String> = cfg.environments.keys().cloned().collect();
    if !names.contains(&active) {
        names.insert(0, active.clone());
    }
    for name in names {
        let env = cfg.environment(&name);
        let left = warm.iter().find(|w| w.name == name).map(|w| w.remaining);
        let state = if name == active {
            "active"
        } else if left.is_some() {
            "warm"
        } else {
            "cold"
        };
        let is_active = name == active;
        t.row([
            some(&name),
            some(state),
            env.as_ref().map(|e| redact(&e.primary)),
            env.as_ref().map(|e| {
                e.replicas
                    .iter()
                    .map(|r| redact(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
            left.map(|d| d.as_secs().to_string()),
            is_active.then(|| ctx.envs.in_flight().to_string()),
            is_active
                .then(|| ctx.envs.last_pause())
                .flatten()
                .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3)),
            is_active.then(|| ctx.envs.switched().to_string()),
        ]);
    }
    t
}

/// `SWITCH`'s one-row answer: what moved, and what clients felt.
pub fn switched(s: &Switched) -> Table {
    let mut t = Table::new(&[
        "from",
        "to",
        "paused_at",
        "pause_ms",
        "waited_for_transactions",
        "connections_opened",
        "floor_lsn",
        "rollback_window_s",
    ]);
    t.row([
        some(&s.from),
        some(&s.to),
        some(humantime::format_rfc3339_micros(s.paused_at)),
        some(format!("{:.1}", s.pause.as_secs_f64() * 1e3)),
        some(s.waited_for),
        some(s.connections_opened),
        some(s.floor_text()),
        some(s.rollback_window.as_secs()),
    ]);
    t
}

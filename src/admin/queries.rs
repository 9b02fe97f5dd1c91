//! `SHOW QUERIES` / `RESET QUERIES` (statement statistics, `crate::stats`), the statistics
//! `EXPLAIN` adds for the statement it explains, and `SHOW MIRROR` (`switch::mirror`).

use std::sync::atomic::Ordering;

use super::show::{some, Table};
use crate::context::Context;
use crate::stats::QueryEntry;

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// Why the router sent the shape's last call where it went.
fn why(e: &QueryEntry) -> String {
    let reason = e.last_reason.as_deref().unwrap_or("");
    if e.last_later {
        format!("same backend as the open transaction or pinned session ({reason})")
    } else {
        reason.to_string()
    }
}

/// Every tracked statement shape, most total time first.
pub fn queries(ctx: &Context) -> Table {
    let mut t = Table::new(&[
        "query",
        "calls",
        "total_ms",
        "mean_ms",
        "max_ms",
        "rows",
        "primary",
        "replica",
        "cache",
        "replica_share",
        "rule",
        "reason",
        "cache_hits",
        "cache_misses",
        "cache_fills",
        "cache_rejects",
        "lock_waits",
        "lock_wait_ms",
        "tracked_since_evicted_ms",
    ]);
    for e in ctx.queries.snapshot() {
        t.row([
            some(&e.text),
            some(e.calls),
            some(ms(e.total_us)),
            some(format!("{:.3}", e.mean_ms())),
            some(ms(e.max_us)),
            some(e.rows),
            some(e.primary),
            some(e.replica),
            some(e.cache),
            some(format!("{:.2}", e.replica_share())),
            e.last_rule.as_deref().map(str::to_string),
            some(why(&e)),
            some(e.cache_hits),
            some(e.cache_misses),
            some(e.cache_fills),
            some(e.cache_rejects),
            some(e.lock_waits),
            some(ms(e.lock_wait_us)),
            (e.error_us > 0).then(|| ms(e.error_us)),
        ]);
    }
    t
}

/// `RESET QUERIES`' answer.
pub fn reset(ctx: &Context) -> Table {
    let before = ctx.queries.len();
    ctx.queries.reset();
    let mut t = Table::new(&["reset"]);
    t.row([some(format!("{before} statement shape(s) forgotten"))]);
    t
}

/// Lines `EXPLAIN` appends: what the statistics say of the statement's shape.
pub fn explain_lines(ctx: &Context, sql: &str) -> Vec<String> {
    let a = ctx.analyzer.analyze(sql);
    let mut out = vec![
        String::new(),
        format!("statistics of \"{}\":", a.loggable_text()),
    ];
    match ctx.queries.get(&a) {
        None => out
            .push("  not seen since the last RESET QUERIES (or evicted; stats.max_queries)".into()),
        Some(e) => {
            out.push(format!(
                "  calls {}, total {} ms, mean {:.3} ms, max {} ms, rows {}",
                e.calls,
                ms(e.total_us),
                e.mean_ms(),
                ms(e.max_us),
                e.rows
            ));
            out.push(format!(
                "  ran on primary {}, replica {}, cache {} (replica share {:.2})",
                e.primary,
                e.replica,
                e.cache,
                e.replica_share()
            ));
            out.push(format!(
                "  last routed by rule {} because: {}",
                e.last_rule.as_deref().unwrap_or("(none)"),
                why(&e)
            ));
            out.push(format!(
                "  cache hits {}, misses {}, fills {}, rejected fills {}; lock waits {} ({} ms)",
                e.cache_hits,
                e.cache_misses,
                e.cache_fills,
                e.cache_rejects,
                e.lock_waits,
                ms(e.lock_wait_us)
            ));
        }
    }
    out
}

/// Mirroring to another environment: settings, counters, the last difference seen.
pub fn mirror(ctx: &Context) -> Table {
    let cfg = ctx.config.load();
    let s = &ctx.mirror.stats;
    let mut t = Table::new(&["stat", "value"]);
    let mut kv = |k: &str, v: String| t.row([some(k), Some(v)]);
    kv(
        "mirror_to",
        cfg.switch
            .mirror_to
            .clone()
            .unwrap_or_else(|| "(off)".into()),
    );
    kv("mirror_sample", cfg.switch.mirror_sample.to_string());
    kv(
        "active_environment",
        ctx.topology.load().environment.clone(),
    );
    for (k, c) in [
        ("requests", &s.requests),
        ("differences", &s.differences),
        ("dropped", &s.dropped),
        ("errors", &s.errors),
    ] {
        kv(k, c.load(Ordering::Relaxed).to_string());
    }
    kv("queued", ctx.mirror.queued().to_string());
    kv(
        "last_difference",
        s.last_difference.lock().clone().unwrap_or_default(),
    );
    t
}

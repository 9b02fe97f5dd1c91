//! The SWITCH procedure — warm the target, close the gate, flip, reopen — and the timer that
//! closes the environment left behind once its rollback window is over.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::TaskError;
use crate::backend::Server;
use crate::config::NodeAddr;
use crate::context::Context;
use crate::pool::{Checkout, PoolKey};
use crate::route::topology::{format_lsn, parse_lsn};
use crate::route::{Lsn, Topology};
use crate::switch::{SwitchError, Warm};

/// What a SWITCH did, for the operator.
pub struct Switched {
    pub from: String,
    pub to: String,
    /// How long new transactions were held: the longest any client waited because of it.
    pub pause: Duration,
    /// When the hold began (wall clock), to line it up with client-side latency logs.
    pub paused_at: std::time::SystemTime,
    /// Transactions running when the gate closed, which the switch waited for.
    pub waited_for: usize,
    /// Connections opened on the target before the pause (none when it was still warm).
    pub connections_opened: usize,
    /// The target primary's position at the switch: no replica behind it serves a read.
    pub floor: Lsn,
    /// How long `from` stays warm.
    pub rollback_window: Duration,
}

impl Switched {
    pub fn floor_text(&self) -> String {
        format_lsn(self.floor)
    }
}

/// A connection to the target primary, to read its position while nothing runs.
enum Probe {
    Pooled(Checkout),
    Own(Server),
}

impl Probe {
    fn server(&mut self) -> &mut Server {
        match self {
            Probe::Pooled(c) => c,
            Probe::Own(s) => s,
        }
    }

    fn finish(self) {
        match self {
            Probe::Pooled(c) => c.release(),
            Probe::Own(s) => {
                tokio::spawn(s.terminate());
            }
        }
    }
}

/// Moves traffic to environment `to`. Never cuts a transaction: if those in flight do not
/// finish within `upstream.switch_timeout`, nothing changes and the held ones resume.
#[tracing::instrument(skip(ctx), fields(from))]
pub async fn switch(ctx: &Arc<Context>, to: &str) -> Result<Switched, SwitchError> {
    let envs = &ctx.envs;
    let _one = envs.switching.try_lock().map_err(|_| SwitchError::Busy)?;
    let cfg = ctx.config.load_full();
    let current = ctx.topology.load_full();
    let from = current.environment.clone();
    tracing::Span::current().record("from", from.as_str());
    let window = cfg.upstream.rollback_window;
    let Some(env) = cfg.environment(to) else {
        let names: Vec<String> = if cfg.environments.is_empty() {
            vec![crate::config::DEFAULT_ENVIRONMENT.to_string()]
        } else {
            cfg.environments.keys().cloned().collect()
        };
        return Err(SwitchError::Unknown(to.to_string(), names.join(", ")));
    };
    let done = |paused_at, pause, waited_for, connections_opened, floor| Switched {
        from: from.clone(),
        to: to.to_string(),
        paused_at,
        pause,
        waited_for,
        connections_opened,
        floor,
        rollback_window: window,
    };
    if to == from {
        let now = std::time::SystemTime::now();
        return Ok(done(now, Duration::ZERO, 0, 0, ctx.write_log.floor()));
    }
    let unreachable = |node: &str, error: &dyn std::fmt::Display| SwitchError::Unreachable {
        from: from.clone(),
        to: to.to_string(),
        node: node.to_string(),
        error: error.to_string(),
    };
    let warm = envs.warm.lock().get(to).map(|w| w.topology.clone());
    let (target, fresh) = match warm {
        Some(t) => (t, false),
        None => {
            let (p, r) = env
                .addrs()
                .map_err(|e| unreachable(&crate::config::redact(&env.primary), &e))?;
            let t = Arc::new(Topology::for_environment(to, p, r));
            super::monitor::spawn_for(ctx, t.clone());
            (t, true)
        }
    };
    let primary_name = target.nodes[0].addr.display();
    // A target built for this attempt is dropped with it; a warm one stays warm.
    let abandon = |e: SwitchError| {
        if fresh {
            target.retired.store(true, Ordering::Relaxed);
        }
        crate::metrics::switch_aborted();
        tracing::warn!(error = %e, "switch aborted");
        e
    };
    // Everything that can be slow happens before anyone is paused.
    let opened = prewarm(ctx, &current, &target, !fresh)
        .await
        .map_err(|e| abandon(unreachable(&primary_name, &e)))?;
    let mut probe = probe(ctx, &target)
        .await
        .map_err(|e| abandon(unreachable(&primary_name, &e)))?;
    // Function volatility (read-only routing) comes from the primary's pg_proc: the target's.
    let catalog = super::catalog::fetch(ctx, target.nodes[0].addr.clone()).await;

    let started = Instant::now();
    let paused_at = std::time::SystemTime::now();
    let waited_for = envs.in_flight();
    let closed =
        tokio::time::timeout(cfg.upstream.switch_timeout, envs.gate.clone().write_owned()).await;
    let Ok(gate) = closed else {
        // Dropping the pending write lets every held transaction through, on `from`.
        let running = envs.in_flight();
        if let Some(p) = probe {
            p.finish();
        }
        return Err(abandon(SwitchError::Timeout {
            from: from.clone(),
            to: to.to_string(),
            running,
            waited: cfg.upstream.switch_timeout,
        }));
    };
    // Nothing runs now. Positions of `from` mean nothing on `to`: start over from its primary's.
    let floor = match probe.as_mut() {
        Some(p) => match read_position(p.server()).await {
            Ok(l) => l,
            Err(e) => {
                drop(gate);
                return Err(abandon(unreachable(&primary_name, &e)));
            }
        },
        None => 0,
    };
    let old = ctx.topology.swap(target);
    ctx.write_log.reset(floor);
    // "Parsed fine somewhere" was learnt on the other environment's servers.
    ctx.known_statements.write().clear();
    let ticket = envs.tickets.fetch_add(1, Ordering::Relaxed) + 1;
    {
        let mut warm = envs.warm.lock();
        warm.remove(to);
        warm.insert(
            from.clone(),
            Warm {
                topology: old,
                until: Instant::now() + window,
                ticket,
            },
        );
    }
    envs.switched.store(true, Ordering::Relaxed);
    envs.epoch.send_modify(|e| *e += 1);
    // Back in the pool before the clients resume, so none of them opens a connection for it.
    if let Some(p) = probe {
        p.finish();
    }
    drop(gate);
    let pause = started.elapsed();
    envs.last_pause_micros
        .store((pause.as_micros() as u64).max(1), Ordering::Relaxed);
    crate::metrics::switched(pause);
    tracing::info!(to, pause_ms = pause.as_secs_f64() * 1e3, waited_for, opened, floor = %format_lsn(floor), "switched environment");
    tokio::spawn(expire(ctx.clone(), from.clone(), ticket, window));
    match catalog {
        // Replacing it empties the analysis cache: only when the functions differ.
        Ok(c) if *ctx.analyzer.catalog() != c => ctx.analyzer.set_catalog(c),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "function catalog of the new environment not loaded; keeping the old one")
        }
    }
    Ok(done(paused_at, pause, waited_for, opened, floor))
}

/// Opens on the target as many connections per (database, user) as the current environment
/// has, node for node (primary to primary, n-th replica to n-th replica), so the clients
/// released by the switch find them ready. A primary that refuses aborts the switch. A warm
/// target keeps the pools it had (sized by its own traffic): only pools that are empty (closed
/// by `pool.idle_timeout`) are filled, so switching back within the window opens nothing.
async fn prewarm(
    ctx: &Context,
    current: &Topology,
    target: &Topology,
    warm: bool,
) -> Result<usize, TaskError> {
    let mut opened = 0;
    for pool in ctx.pools.all() {
        let Some(i) = current.nodes.iter().position(|n| *n.addr == *pool.key.node) else {
            continue;
        };
        let Some(node) = target.nodes.get(i) else {
            continue;
        };
        let key = PoolKey {
            node: node.addr.clone(),
            database: pool.key.database.clone(),
            user: pool.key.user.clone(),
        };
        let want = pool.idle_count() + pool.active_count();
        let there = ctx.pools.get(&key, || pool.login());
        if warm && there.idle_count() + there.active_count() > 0 {
            continue;
        }
        match there.warm(want).await {
            Ok(n) => opened += n,
            Err(e) if i == 0 => return Err(e.into()),
            Err(e) => {
                tracing::warn!(node = %node.addr.display(), error = %e, "cannot warm a replica of the target; reads will skip it while it is unhealthy")
            }
        }
    }
    Ok(opened)
}

/// A connection to the target primary: a pooled one if prewarm made any, else one with the
/// monitor's login. None when the sidecar has no login yet (no client ever came: nothing to
/// protect).
async fn probe(ctx: &Context, target: &Topology) -> Result<Option<Probe>, TaskError> {
    let addr = &target.nodes[0].addr;
    if let Some(pool) = ctx.pools.all().into_iter().find(|p| p.key.node == *addr) {
        return Ok(Some(Probe::Pooled(pool.checkout().await?)));
    }
    let Some(spec) = ctx.monitor_spec(addr.clone(), "pgsidecar-switch") else {
        return Ok(None);
    };
    let s = Server::connect(&spec).await?;
    Ok(Some(Probe::Own(s)))
}

/// The target primary's WAL *insert* position: at or after every commit made there so far, even
/// asynchronous ones (a logical replication apply worker commits with `synchronous_commit = off`
/// by default) whose records are not written yet, which `pg_current_wal_lsn()` (the write
/// position) would miss.
async fn read_position(s: &mut Server) -> Result<Lsn, TaskError> {
    let rows = tokio::time::timeout(
        Duration::from_secs(2),
        s.query_column("SELECT pg_current_wal_insert_lsn()"),
    )
    .await
    .map_err(|_| TaskError::Timeout("reading pg_current_wal_insert_lsn()"))??;
    rows.into_iter()
        .next()
        .flatten()
        .and_then(|t| parse_lsn(&t))
        .ok_or(TaskError::NoAnswer(
            "pg_current_wal_insert_lsn() gave no position (is it a replica?)",
        ))
}

/// Closes `name` when its rollback window is over, unless it became active again (or was
/// switched away from again: a newer ticket owns it then).
async fn expire(ctx: Arc<Context>, name: String, ticket: u64, after: Duration) {
    let mut shutdown = ctx.shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(after) => {}
        _ = shutdown.changed() => return,
    }
    // Not while a SWITCH runs: it may be switching back to this very environment.
    let _no_switch = ctx.envs.switching.lock().await;
    let gone = {
        let mut warm = ctx.envs.warm.lock();
        match warm.get(&name) {
            Some(w) if w.ticket == ticket => warm.remove(&name),
            _ => None,
        }
    };
    if let Some(w) = gone {
        close(&ctx, &w.topology).await;
        tracing::info!(environment = %name, "rollback window over: pools and monitors closed");
    }
}

/// Stops a topology's monitors and closes its pools (except nodes the active one shares).
pub async fn close(ctx: &Context, topo: &Topology) {
    topo.retired.store(true, Ordering::Relaxed);
    let active = ctx.topology.load();
    let nodes: Vec<Arc<NodeAddr>> = topo
        .nodes
        .iter()
        .map(|n| n.addr.clone())
        .filter(|a| !active.nodes.iter().any(|n| *n.addr == **a))
        .collect();
    ctx.pools.close_nodes(&nodes).await;
}

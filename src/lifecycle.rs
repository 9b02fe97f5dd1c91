//! Reload and drain: the two things operators do to a running sidecar.
//!
//! Reload (SIGHUP or the console's RELOAD) re-reads the configuration, validates it, and only
//! then swaps it in — rules, pool sizes, replicas, TTLs, lock rules, log level, slow-query
//! threshold, the users and credentials files — so an invalid file changes nothing. Drain (SIGTERM or SHUTDOWN) makes `/readyz`
//! fail, stops accepting, lets transactions in flight finish (bounded by
//! `listen.shutdown_timeout`) and closes idle clients at a transaction boundary with 57P01.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crate::auth::{AuthError, UserList};
use crate::config::{Config, ConfigError, UrlError};
use crate::context::Context;
use crate::route::{Rules, Topology};

/// Why a reload changed nothing. The console answers it after "reload rejected, configuration
/// unchanged: "; SIGHUP logs it.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this process was not started with a reloadable configuration")]
    NotReloadable,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{option} {path}: {source}")]
    Secrets {
        option: &'static str,
        path: String,
        source: AuthError,
    },
    #[error("reading the configuration failed: {0}")]
    Blocking(#[from] tokio::task::JoinError),
    #[error("a SWITCH is in progress; reload again when it has finished")]
    Switching,
    #[error(
        "the active environment \"{0}\" is not defined in the new configuration; \
         SWITCH to an environment the file keeps before removing this one"
    )]
    ActiveEnvironmentGone(String),
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The binary's log filter refused `log.level`.
    #[error(transparent)]
    LogLevel(Box<dyn std::error::Error + Send + Sync>),
}

/// How to build the configuration again: the file plus the command line's overrides.
pub struct Loader {
    pub path: Option<PathBuf>,
    pub overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
}

impl Loader {
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.path {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        (self.overrides)(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }
}

static LOADER: OnceLock<Loader> = OnceLock::new();
type LogReload =
    Box<dyn Fn(&str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;
static LOG_RELOAD: OnceLock<LogReload> = OnceLock::new();

pub fn set_loader(l: Loader) {
    let _ = LOADER.set(l);
}

/// The binary registers how to change the log filter at run time.
pub fn set_log_reload(f: LogReload) {
    let _ = LOG_RELOAD.set(f);
}

/// Re-reads and applies the configuration. Returns what changed, or why nothing did.
///
/// Reading the files (and deriving SCRAM keys for plaintext secrets, a PBKDF2 each) runs on the
/// blocking pool, so a large users file does not stall the sessions of a runtime worker.
pub async fn reload(ctx: &Arc<Context>) -> Result<String, ReloadError> {
    let loaded = tokio::task::spawn_blocking(|| {
        let loader = LOADER.get().ok_or(ReloadError::NotReloadable)?;
        let new = loader.load()?;
        let users = load_secrets(new.auth.users_file.as_deref(), "auth.users_file")?;
        let credentials = load_secrets(
            new.upstream.credentials_file.as_deref(),
            "upstream.credentials_file",
        )?;
        Ok::<_, ReloadError>((new, users, credentials))
    })
    .await
    .unwrap_or_else(|e| Err(ReloadError::Blocking(e)));
    let (new, users, credentials) = loaded.map_err(|e| {
        tracing::error!(error = %e, "reload rejected; configuration unchanged");
        e
    })?;
    let _no_switch = ctx.envs.exclusive().ok_or(ReloadError::Switching)?;
    let old = ctx.config.load_full();
    // A reload never moves traffic between environments: SWITCH does, between transactions.
    let active = ctx.topology.load().environment.clone();
    let Some(active_env) = new.environment(&active) else {
        return Err(ReloadError::ActiveEnvironmentGone(active));
    };
    let mut changed = Vec::new();
    if new.listen.addr != old.listen.addr {
        changed.push("listen.addr needs a restart (ignored)".to_string());
    }
    if old.environment(&active).as_ref() != Some(&active_env) {
        let (primary, replicas) = active_env.addrs()?;
        let before = ctx.topology.swap(Arc::new(Topology::for_environment(
            &active, primary, replicas,
        )));
        before.retired.store(true, Ordering::Relaxed);
        crate::tasks::monitor::spawn_all(ctx);
        changed.push(format!(
            "environment {active}: primary and {} replica(s)",
            active_env.replicas.len()
        ));
    }
    // A warm environment whose servers changed (or that is gone) is not the one to go back to.
    for t in ctx.envs.retire_warm_unless(|name, _| {
        new.environment(name).is_some() && new.environment(name) == old.environment(name)
    }) {
        changed.push(format!("environment {} closed (changed)", t.environment));
        let ctx = ctx.clone();
        tokio::spawn(async move { crate::tasks::close(&ctx, &t).await });
    }
    let wanted = new.upstream.active_environment();
    if wanted != active {
        changed.push(if ctx.envs.switched() {
            format!(
                "upstream.active = \"{wanted}\" in the file, but SWITCH made \"{active}\" active: \
                 kept (set upstream.active = \"{active}\" so a restart keeps it too)"
            )
        } else {
            format!(
                "upstream.active = \"{wanted}\" in the file, \"{active}\" active: a reload \
                 never moves traffic; use SWITCH {wanted}"
            )
        });
    }
    ctx.rules
        .store(Arc::new(Rules::compile(&new.routing.rules)));
    ctx.analyzer
        .set_max_analyzed(new.routing.max_analyzed_statement);
    changed.push(format!("{} routing rule(s)", new.routing.rules.len()));
    ctx.queries.set_capacity(new.stats.max_queries);
    if new.switch.mirror_sample != old.switch.mirror_sample
        || new.switch.mirror_to != old.switch.mirror_to
    {
        changed.push(format!(
            "switch.mirror_sample = {} to {}",
            new.switch.mirror_sample,
            new.switch.mirror_to.as_deref().unwrap_or("(none)")
        ));
    }
    ctx.pools.reconfigure(new.pool.clone());
    ctx.pools
        .shared
        .auth_policy
        .store(Arc::new(crate::backend::AuthPolicy::from_config(
            &new.upstream,
        )));
    changed.push(format!("pool.max_size = {}", new.pool.max_size));
    changed.push(format!("{} lock rule(s)", new.locks.len()));
    if new.log.level != old.log.level {
        if let Some(f) = LOG_RELOAD.get() {
            f(&new.log.level).map_err(ReloadError::LogLevel)?;
            changed.push(format!("log.level = {}", new.log.level));
        }
    }
    if new.log.slow_query != old.log.slow_query {
        changed.push(match new.log.slow_query {
            Some(t) => format!("log.slow_query = {}", humantime::format_duration(t)),
            None => "log.slow_query off".into(),
        });
    }
    changed.push(describe_secrets("auth.users_file", users.as_deref()));
    ctx.users.store(users);
    // Passwords proven under the old rules and servers are proven again.
    ctx.passthrough.clear();
    changed.push(describe_secrets(
        "upstream.credentials_file",
        credentials.as_deref(),
    ));
    ctx.backend_credentials.store(credentials);
    if new.cache != old.cache {
        changed.push("cache settings need a restart (ignored)".to_string());
    }
    ctx.config.store(Arc::new(new));
    let summary = changed.join("; ");
    tracing::info!(%summary, "configuration reloaded");
    Ok(summary)
}

/// Reads a secrets file named by the configuration, so a reload picks up added, removed or
/// changed users; any problem rejects the whole reload.
fn load_secrets(
    path: Option<&Path>,
    option: &'static str,
) -> Result<Option<Arc<UserList>>, ReloadError> {
    path.map(|p| {
        UserList::load_and_warn(p)
            .map(Arc::new)
            .map_err(|source| ReloadError::Secrets {
                option,
                path: p.display().to_string(),
                source,
            })
    })
    .transpose()
}

fn describe_secrets(option: &str, list: Option<&UserList>) -> String {
    match list {
        Some(l) => format!("{option}: {} user(s)", l.len()),
        None => format!("{option}: none"),
    }
}

/// Starts draining: not ready, no new clients, idle sessions told 57P01 at their next boundary.
pub fn start_drain(ctx: &Context) {
    if !ctx.draining.swap(true, Ordering::SeqCst) {
        tracing::info!(clients = ctx.clients.load(Ordering::Relaxed), "draining");
        ctx.drain.send_replace(true);
    }
}

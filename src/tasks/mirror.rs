//! The mirroring task: runs the copies that sessions queue on [`crate::switch::mirror::Mirror`]
//! against the target environment's primary and compares the answers (what is mirrored and
//! why: `switch/mirror.rs`). It lives here, above `Context`, because it reads the live
//! configuration and borrows the pools' TLS connector and auth policy.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::TaskError;
use crate::backend::{ConnectSpec, Server};
use crate::context::Context;
use crate::switch::mirror::{Job, Summary};
use crate::wire::tag::back;

/// Starts the mirroring task on the calling runtime (the main one); once.
pub fn spawn(ctx: &Arc<Context>) {
    let Some(rx) = ctx.mirror.take_queue() else {
        return;
    };
    tokio::spawn(run(ctx.clone(), rx));
}

async fn run(ctx: Arc<Context>, mut rx: mpsc::Receiver<Job>) {
    let mut conns: HashMap<(String, String, String), Server> = HashMap::new();
    while let Some(job) = rx.recv().await {
        let timeout = ctx.config.load().switch.mirror_timeout;
        let key = (
            job.environment.clone(),
            job.database.clone(),
            job.user.clone(),
        );
        let conn = conns.remove(&key);
        match tokio::time::timeout(timeout, compare(&ctx, &job, conn)).await {
            Ok(Ok((server, green))) => {
                conns.insert(key, server);
                record(&ctx, &job, green);
            }
            Ok(Err(e)) => error(&ctx, &job, &e),
            Err(_) => error(&ctx, &job, &format!("no answer within {timeout:?}")),
        }
    }
}

fn record(ctx: &Context, job: &Job, green: Result<Summary, TaskError>) {
    let s = &ctx.mirror.stats;
    s.requests.fetch_add(1, Ordering::Relaxed);
    crate::metrics::mirror_event("requests");
    let what = match green {
        Ok(g) if g == job.blue => return,
        Ok(g) => format!(
            "{} rows (checksum {:016x}) on the active environment, {} rows (checksum {:016x}) on \"{}\"",
            job.blue.rows, job.blue.checksum, g.rows, g.checksum, job.environment
        ),
        Err(e) => format!("answered on the active environment, failed on \"{}\": {e}", job.environment),
    };
    s.differences.fetch_add(1, Ordering::Relaxed);
    crate::metrics::mirror_event("differences");
    tracing::warn!(
        target: "pgsidecar::mirror",
        statement = %job.statement,
        database = %job.database,
        user = %job.user,
        environment = %job.environment,
        blue_rows = job.blue.rows,
        difference = %what,
        "mirrored read answered differently"
    );
    *s.last_difference.lock() = Some(format!("{}: {what}", job.statement));
}

fn error(ctx: &Context, job: &Job, e: &dyn std::fmt::Display) {
    ctx.mirror.stats.errors.fetch_add(1, Ordering::Relaxed);
    crate::metrics::mirror_event("errors");
    tracing::info!(target: "pgsidecar::mirror", environment = %job.environment, database = %job.database, error = %e, "mirrored read not compared");
}

/// Runs the copy on the target's primary: its answer (or the server's error), and the
/// connection to reuse.
async fn compare(
    ctx: &Context,
    job: &Job,
    conn: Option<Server>,
) -> Result<(Server, Result<Summary, TaskError>), TaskError> {
    let mut server = match conn {
        Some(s) => s,
        None => connect(ctx, job).await?,
    };
    server.stream.write_all(&job.request).await?;
    let mut summary = Summary::default();
    let mut failed = None;
    loop {
        let f = server.read_frame().await?;
        match f.tag {
            back::DATA_ROW => summary.add_row(f.body()),
            back::ERROR_RESPONSE if failed.is_none() => {
                let e = crate::wire::msg::ErrorFields::decode(f.body());
                failed = Some(TaskError::Refused(format!("{} {}", e.code, e.message)));
            }
            back::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    Ok((server, failed.map_or(Ok(summary), Err)))
}

async fn connect(ctx: &Context, job: &Job) -> Result<Server, TaskError> {
    let cfg = ctx.config.load();
    let env = cfg
        .environment(&job.environment)
        .ok_or_else(|| TaskError::EnvironmentGone(job.environment.clone()))?;
    let (primary, _) = env.addrs()?;
    let spec = ConnectSpec {
        node: Arc::new(primary),
        database: job.database.clone(),
        user: job.user.clone(),
        login: job.login.clone(),
        tls: cfg.upstream.tls,
        tls_connector: ctx.pools.shared.tls_connector.clone(),
        connect_timeout: cfg.pool.connect_timeout,
        auth_policy: ctx.pools.shared.auth_policy.load_full(),
        startup_params: vec![("application_name".into(), "pgsidecar-mirror".into())],
    };
    Ok(Server::connect(&spec).await?)
}

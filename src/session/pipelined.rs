//! Which requests may share a backend with other clients' requests (`pool.pipeline`), and
//! answering them over a pipelining connection (`pool::pipeline`).
//!
//! Conservative on purpose: only what cannot affect anyone else, nor be affected, is
//! pipelined — everything else takes the normal path unchanged.
//! * transaction pooling, no pinned session, no backend attached (so not in a transaction),
//!   no SET or RESET since startup (the connection has exactly the client's settings), no
//!   cache fill and no commit position capture in progress, no `query_timeout` in force;
//! * exactly one complete group: a simple Query, or `[Parse ""] Bind [Describe portal]
//!   Execute Sync` (no Flush, Close, named Parse, COPY or function call);
//! * one statement, a plain `SELECT`/`WITH`/`VALUES`/`TABLE` read: read-only per the analyser
//!   (no writes, locking clause, session effect, `SELECT INTO`, transaction control), no
//!   volatile function (`nextval`, `pg_advisory_*`, `pg_sleep` …), so no lock plan either;
//! * seen to run faster than `pipeline_fast` the last time (on any path): one slow statement
//!   would hold back every request queued behind it;
//!
//! A request still waiting for the first byte of its answer after `pipeline_fast` sits behind a
//! slow one: unless it is the one running, it is given up there (its answer dropped when it
//! comes) and run on the normal path — a plain read may run twice.
//! A CancelRequest for a client whose request is pipelined is not forwarded: the backend may
//! be running another client's statement by then, and only reads seen to be fast get here.
//! A request whose connection dies before any of its answer reached the client is run again
//! on the normal path (it is a read, and nothing of it was seen); otherwise the client gets
//! SQLSTATE 08006 and its ReadyForQuery. Likewise a replica read refused with an SQLSTATE that
//! `routing.retry_reads` retries (the whole answer is held until its ReadyForQuery, unless it
//! is big) goes to the normal path, which retries it as usual.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

use super::inbound::Msg;
use super::relay::Session;
use super::SessionError;
use crate::analyze::{Analysis, Volatility};
use crate::backend::PreparedSet;
use crate::config::PoolMode;
use crate::pool::pipeline::{self, Chunk};
use crate::route::Node;
use crate::wire::msg::{self, Bind, Severity, Target};
use crate::wire::tag::{back, front, target, txn};

/// Client bytes gathered before they are written out while a big answer streams.
const FLUSH_AT: usize = 64 * 1024;

impl Session {
    /// Answers the pending request over a pipelining connection of `node`'s pool if it may
    /// be. False: it is still pending, for the normal path (not eligible, no room, or the
    /// connection died before anything of the answer was sent).
    pub(super) async fn try_pipeline(
        &mut self,
        node: &Arc<Node>,
        replica: bool,
    ) -> Result<bool, SessionError> {
        let cfg = self.ctx.config.load_full();
        let pool_cfg = &cfg.pool;
        if !pool_cfg.pipeline
            || self.backend.mode != PoolMode::Transaction
            || self.backend.pinned.is_some()
            || self.backend.attached.is_some()
            || self.commit.filling.is_some()
            || self.commit.held.is_some()
            || self.time.timings.mirror.is_some()
            || !self.vars.settings.only_startup()
            // A shared backend cannot be cancelled for one client's `query_timeout`: a
            // request under one takes the normal path, where it can.
            || !self.time.limits.query.is_zero()
        {
            return Ok(false);
        }
        let fast = pool_cfg.pipeline_fast;
        let Some(analysis) = pipelinable(&self.request.pending, fast) else {
            return Ok(false);
        };
        let pool = self.pool_for(node);
        let max_prepared = pool_cfg.max_prepared_per_backend;
        let mut parsed: Option<Bytes> = None;
        let pending = &self.request.pending;
        let submitted = pipeline::submit(
            &pool,
            &self.vars.settings,
            fast,
            pool_cfg.pipeline_backends_per_worker,
            |prepared, out| encode(pending, prepared, out, max_prepared, &mut parsed),
        )
        .await;
        let Some((conn, req)) = submitted else {
            return Ok(false);
        };
        // Counted like any other request, or least-outstanding balancing would not see the
        // load pipelining puts on a node.
        let _inflight = node.begin_request();
        let retry = replica && cfg.routing.retry_reads;
        let mark = self.client.cout.len();
        let mut flushed = false;
        let mut first = true;
        let mut rows = 0;
        // Until its answer starts: a request that waits longer than `fast` sits behind a slow
        // one, and runs on the normal path instead (see `Conn::abandon`).
        let mut deadline = Some(tokio::time::Instant::from_std(req.submitted() + fast));
        loop {
            let chunk = match deadline {
                Some(at) => match tokio::time::timeout_at(at, req.next()).await {
                    Ok(chunk) => chunk,
                    Err(_) => {
                        deadline = None;
                        if conn.abandon(&req) {
                            crate::metrics::pipeline_rerun();
                            return Ok(false);
                        }
                        continue;
                    }
                },
                None => req.next().await,
            };
            deadline = None;
            match chunk {
                Chunk::Bytes(mut bytes, done) => {
                    if first && !bytes.is_empty() {
                        first = false;
                        if let Some(name) = parsed.take() {
                            // The Parse the proxy put in front: its answer is not the client's.
                            if bytes.starts_with(msg::PARSE_COMPLETE) {
                                bytes.advance(msg::PARSE_COMPLETE.len());
                                self.ctx.known_statement(name);
                            } else {
                                conn.forget_prepared(&name);
                            }
                        }
                    }
                    rows += super::stats::rows_in(&bytes);
                    self.client.cout.extend_from_slice(&bytes);
                    if done {
                        if !flushed && stale_plan(&self.client.cout[mark..]) {
                            // Planned before a schema change made elsewhere: nothing of it
                            // ran, and the normal path parses it again.
                            crate::backend::prepared::schema_changed();
                            crate::metrics::pipeline_rerun();
                            self.client.cout.truncate(mark);
                            return Ok(false);
                        }
                        if retry && !flushed && refused(&self.client.cout[mark..]) {
                            // A replica refused it (recovery conflict, shutting down…) and
                            // the client saw nothing: the normal path retries it.
                            crate::metrics::pipeline_rerun();
                            self.client.cout.truncate(mark);
                            return Ok(false);
                        }
                        break;
                    }
                    if self.client.cout.len() >= FLUSH_AT {
                        flushed = true;
                        self.flush_client().await?;
                    }
                }
                Chunk::Lost(why) if !flushed => {
                    // Nothing of the answer reached the client: it is a read, run it again.
                    tracing::debug!(%why, "pipelined request lost; running it on a normal backend");
                    crate::metrics::pipeline_rerun();
                    self.client.cout.truncate(mark);
                    return Ok(false);
                }
                Chunk::Lost(why) => {
                    msg::error_response(
                        &mut self.client.cout,
                        Severity::Error,
                        crate::wire::sqlstate::CONNECTION_FAILURE,
                        &format!("pgsidecar lost the server connection during this read: {why}"),
                    );
                    msg::ready_for_query(&mut self.client.cout, txn::IDLE);
                    break;
                }
            }
        }
        // Its time includes the wait behind earlier requests: a statement that got slow, or
        // a connection that got busy, stops being pipelined at once.
        self.commit.ran_on(node.clone(), replica, None);
        crate::metrics::routed(replica);
        crate::metrics::pipeline_request();
        let took = req.submitted().elapsed();
        analysis.observe(took);
        let answered = self
            .time
            .timings
            .next_started()
            .map_or(took, |s| s.elapsed());
        self.pipelined_stats(&analysis, replica, answered, rows);
        self.log_if_slow(
            took,
            std::slice::from_ref(&analysis),
            if replica { "replica" } else { "primary" },
            &node.addr.display(),
            &"pipelined: a plain read seen to be fast shared a backend with other clients'",
            "not cached",
        );
        if self
            .request
            .pending
            .last()
            .is_some_and(|m| m.frame.tag == front::QUERY)
        {
            // A simple query destroys the unnamed statement, for the client as in Postgres
            // (the normal path does the same in `on_client_message`).
            self.stmts.unnamed_parse = None;
        }
        self.request.pending.clear();
        self.time.timings.forget_next();
        Ok(true)
    }
}

/// Whether an answer carries an error after which `routing.retry_reads` runs a replica read
/// again elsewhere.
fn refused(mut answer: &[u8]) -> bool {
    while let Ok(Some(total)) = crate::wire::frame::check(answer, usize::MAX) {
        if answer[0] == back::ERROR_RESPONSE {
            let code = msg::ErrorFields::decode(&answer[5..total]).code;
            return super::dispatch::retryable(&code);
        }
        answer = &answer[total..];
    }
    false
}

/// Whether the answer is an error saying the statement's plan or a type went away.
fn stale_plan(mut answer: &[u8]) -> bool {
    while let Ok(Some(total)) = crate::wire::frame::check(answer, usize::MAX) {
        if answer[0] == back::ERROR_RESPONSE {
            return super::answers::stale_plan_error(&msg::ErrorFields::decode(&answer[5..total]));
        }
        answer = &answer[total..];
    }
    false
}

/// The statement of the pending request if it has one of the pipelined shapes and is a plain
/// read seen to be fast.
fn pipelinable(pending: &[Msg], fast: Duration) -> Option<Arc<Analysis>> {
    let (last, rest) = pending.split_last()?;
    let analysis = match last.frame.tag {
        front::QUERY if rest.is_empty() => last.analysis.clone()?,
        front::SYNC => extended_group(rest)?,
        _ => return None,
    };
    plain_fast_read(&analysis, fast).then_some(analysis)
}

/// `[Parse ""] Bind [Describe portal] Execute`: the Bind's statement.
fn extended_group(msgs: &[Msg]) -> Option<Arc<Analysis>> {
    let (mut unnamed_parse, mut bound, mut executed) = (false, None, false);
    for m in msgs {
        if m.fail.is_some() {
            return None;
        }
        match m.frame.tag {
            // Annotation gave a named Parse its statement; unnamed ones have none.
            front::PARSE if bound.is_none() && m.stmt.is_none() && !unnamed_parse => {
                unnamed_parse = true
            }
            front::BIND if bound.is_none() => {
                let b = Bind::decode(m.frame.body())?;
                // A named statement must be known to the client; the unnamed one must come
                // with its Parse (another client's may be in the connection's).
                let ok = if b.statement.is_empty() {
                    unnamed_parse
                } else {
                    m.stmt.is_some() && !unnamed_parse
                };
                if !ok {
                    return None;
                }
                bound = Some(m.analysis.clone()?);
            }
            front::DESCRIBE if bound.is_some() && !executed => {
                if Target::decode(m.frame.body())?.kind != target::PORTAL {
                    return None;
                }
            }
            front::EXECUTE if bound.is_some() && !executed => executed = true,
            _ => return None,
        }
    }
    bound.filter(|_| executed)
}

fn plain_fast_read(a: &Analysis, fast: Duration) -> bool {
    a.read_only
        && a.statements.len() == 1
        && matches!(a.statements[0].verb, "SELECT" | "WITH" | "VALUES" | "TABLE")
        && !a.locking
        && a.txn.is_none()
        && a.session.is_none()
        && a.tables_written.is_empty()
        && a.hidden_writes.is_none()
        && a.volatility != Volatility::Volatile
        && a.seen_faster_than(fast)
}

/// The request's bytes for a connection holding `prepared`: a named statement it lacks is
/// prepared first (its answer dropped), and Bind names it as the normal path does.
fn encode(
    pending: &[Msg],
    prepared: &PreparedSet,
    out: &mut BytesMut,
    max_prepared: usize,
    parsed: &mut Option<Bytes>,
) -> Option<Vec<Bytes>> {
    let mut added = Vec::new();
    for m in pending {
        match (m.frame.tag, &m.stmt) {
            (front::BIND, Some(stmt)) => {
                if prepared.stale(&stmt.global) {
                    // Parsed there before a schema change; a shared connection closes
                    // nothing, so this request takes the normal path (which re-prepares).
                    return None;
                }
                if !prepared.contains(&stmt.global) {
                    if prepared.len() >= max_prepared {
                        return None; // no evictions on a shared connection
                    }
                    out.extend_from_slice(&stmt.parse);
                    added.push(stmt.global.clone());
                    *parsed = Some(stmt.global.clone());
                }
                Bind::decode(m.frame.body())?.encode_renamed(out, &stmt.global);
            }
            _ => out.extend_from_slice(&m.frame.bytes),
        }
    }
    Some(added)
}

//! What a completed request did to the session: settings to carry to the next backend, pins,
//! and writes whose commit position later reads must wait for.

use std::sync::Arc;

use super::relay::Session;
use super::track::Expect;
use crate::analyze::{Analysis, SessionEffect, StatementKind, TableRef, TxnControl};
use crate::route::lsn::COMMIT_POSITION_SQL;
use crate::route::topology::parse_lsn;
use crate::wire::msg;
use crate::wire::tag::txn;

/// The position after a commit: see [`COMMIT_POSITION_SQL`].
const CAPTURE_SQL: &str = COMMIT_POSITION_SQL;

/// Undoes what code the analyser cannot see into may have left in a session: `DISCARD ALL`
/// without `DEALLOCATE ALL` (the proxy's prepared statements stay) and `DISCARD PLANS`.
/// Every statement here succeeds in any state a function can leave (`RESET ROLE` covers
/// `set_config('role', …)`), so none is skipped by an earlier one's error.
const RESET_SQL: &str = "CLOSE ALL; RESET ROLE; RESET ALL; UNLISTEN *; \
    SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// The current transaction, as far as the proxy must remember it.
#[derive(Default)]
pub struct TxnState {
    /// Tables written since the transaction began (or by the autocommit statement).
    tables: Vec<TableRef>,
    wrote: bool,
    /// Settings changed inside the transaction: kept only if it commits.
    effects: Vec<Arc<Analysis>>,
    /// The last COMMIT/ROLLBACK seen, to tell how the transaction ended.
    ending: Option<TxnControl>,
    /// Tables whose commit position is being captured.
    capturing: Vec<TableRef>,
    pub captured: Option<String>,
    /// A statement may have written tables the analyser cannot name.
    hidden: bool,
    /// A statement ran code the analyser cannot see into (a volatile user function, a
    /// procedure, an unparseable statement): it may have left session state behind.
    opaque: bool,
    /// DDL (or a DO block, which may run some) ran in this transaction: the catalogs changed.
    /// When it ends, the schema epoch is bumped again (prepared statements), the function and
    /// view catalog is reloaded, and its commit position covers every read (`capturing_ddl`).
    ddl: bool,
    /// The transaction being captured ran DDL.
    capturing_ddl: bool,
    /// Tables written by statements sent in this transaction so far (answered or not), and
    /// whether one may have written tables the analyser cannot name: what its commit must
    /// announce (`Session::announce_before_commit`).
    pub(super) sent_writes: Vec<String>,
    pub(super) sent_hidden: bool,
    /// Its writes announced to the cache before the commit.
    pub(super) announced: crate::cache::Announced,
}

impl Session {
    /// A ReadyForQuery arrived: `ok` when the request it concludes raised no error.
    /// `group`: the statements it concluded (`track::Event::Concluded`).
    pub(super) fn on_ready(&mut self, status: u8, ok: bool, group: super::track::Group) {
        self.lex_settled();
        for a in &group {
            if a.kind == StatementKind::Ddl
                || a.statements.iter().any(|s| s.kind == StatementKind::Ddl)
            {
                // Other backends' prepared statements may depend on what changed; again at the
                // transaction's end, when other sessions can first see it.
                crate::backend::prepared::schema_changed();
                self.commit.txn.ddl = true;
            }
            if a.kind.is_write() || a.hidden_writes.is_some() || !a.tables_written.is_empty() {
                self.commit.txn.wrote = true;
                self.commit.txn.hidden |= a.hidden_writes.is_some();
                self.commit
                    .txn
                    .tables
                    .extend(a.tables_written.iter().cloned());
            }
            for t in a.txn_controls() {
                if matches!(
                    t,
                    TxnControl::Commit | TxnControl::Rollback | TxnControl::PrepareTransaction
                ) {
                    self.commit.txn.ending = Some(t.clone());
                }
            }
            if a.session_effects().next().is_some() {
                self.commit.txn.effects.push(a.clone());
            }
            self.commit.txn.opaque |= a.hidden_writes.is_some() && !a.pins_session();
            self.commit.txn.ddl |= a
                .statements
                .iter()
                .any(|s| s.kind == StatementKind::Ddl || s.verb == "DO");
        }
        if status != txn::IDLE {
            return; // still inside a transaction: decide when it ends
        }
        if self.commit.txn.ddl {
            crate::backend::prepared::schema_changed();
        }
        let opaque = std::mem::take(&mut self.commit.txn.opaque);
        self.locks
            .forget(&self.ctx.lock_registry, self.identity.client_id);
        let committed = ok
            && !matches!(
                self.commit.txn.ending,
                Some(TxnControl::Rollback) | Some(TxnControl::PrepareTransaction)
            );
        let effects = std::mem::take(&mut self.commit.txn.effects);
        if self.commit.txn.ddl && committed {
            self.ctx.catalog_reload.request(&self.identity.database);
        }
        if committed {
            for a in effects {
                self.apply_effects(&a);
            }
        }
        let wrote = std::mem::take(&mut self.commit.txn.wrote);
        let tables = std::mem::take(&mut self.commit.txn.tables);
        let hidden = std::mem::take(&mut self.commit.txn.hidden);
        let ddl = std::mem::take(&mut self.commit.txn.ddl);
        // Requests pipelined behind this one may have announced their writes already: the
        // announcement then ends with the last of them, not before they commit.
        let announced = if self.backend.tracker.client_rfqs() == 0 {
            self.commit.txn.sent_writes.clear();
            self.commit.txn.sent_hidden = false;
            std::mem::take(&mut self.commit.txn.announced)
        } else {
            crate::cache::Announced::default()
        };
        if wrote && committed && self.cache_shared() {
            use super::caching::{InvalidTables, Invalidation};
            self.commit.invalidation = Some(Invalidation {
                tables: if hidden {
                    InvalidTables::All
                } else {
                    InvalidTables::Tables(tables.iter().map(|t| t.name.clone()).collect())
                },
                lsn: 0,
                announced,
            });
        } else {
            self.ctx.cache.abandon(announced);
        }
        self.commit.txn.ending = None;
        let on_primary = self.backend.attached.as_ref().is_some_and(|a| !a.replica);
        if wrote && on_primary && ok && self.has_replicas() {
            // The commit position must be on record before anyone can learn of the commit, so
            // this ReadyForQuery (and anything after it) is held until the capture answers.
            // Usually the capture was sent along with the request (`predict_capture`); if not,
            // it goes now, at the cost of one round trip for this client.
            if !self.backend.tracker.capture_next() {
                crate::metrics::round_trips::count(crate::metrics::Trip::Capture);
                msg::query(&mut self.client.sout, CAPTURE_SQL);
                self.backend.tracker.push(Expect::Capture);
            }
            self.commit.txn.capturing = tables;
            self.commit.txn.capturing_ddl = ddl;
            if self.commit.held.is_none() {
                self.commit.held = Some(bytes::BytesMut::new());
            }
        }
        if opaque {
            self.reset_backend();
        }
    }

    /// A user function, a procedure or an unparseable statement may have created temp tables
    /// (which shadow real ones for whoever uses the backend next), changed settings with
    /// `set_config(…, false)` (which the settings sync does not know to undo), LISTENed, taken
    /// session locks or opened cursors. Nothing of that may reach another client, and pinning
    /// every caller of a user function would end transaction pooling for most applications
    /// that have them: the backend is reset before anyone else gets it ([`RESET_SQL`], what
    /// `DISCARD ALL` does but keeping the prepared statements the proxy tracks), then brought
    /// back to the client's own settings. The client's next transaction starts clean, as it
    /// may under transaction pooling anyway. Cost: one round trip on that backend, behind the
    /// client's answer. A replica's backend (a hint can send anything there) is closed
    /// instead; a pinned or session-pooled client keeps its backend and its state.
    fn reset_backend(&mut self) {
        if self.backend.pinned.is_some()
            || self.backend.mode != crate::config::PoolMode::Transaction
        {
            return;
        }
        let Some(att) = self.backend.attached.as_mut() else {
            return;
        };
        crate::metrics::backend_retired();
        if att.replica {
            att.server.broken = true;
            return;
        }
        crate::metrics::round_trips::count(crate::metrics::Trip::Reset);
        msg::query(&mut self.client.sout, RESET_SQL);
        self.backend.tracker.push(Expect::Query {
            swallow: true,
            group: Vec::new(),
        });
        att.server.settings = Default::default();
        self.sync_settings();
    }

    /// Whether to send the commit-position capture along with a request that will probably end a
    /// write transaction (an autocommit write, or a COMMIT), saving a round trip later.
    pub(super) fn wants_capture(&self, group: &[Arc<Analysis>]) -> bool {
        if self.commit.no_predicted_capture || !self.has_replicas() {
            return false; // only reads on replicas need commit positions
        }
        let Some(att) = self.backend.attached.as_ref() else {
            return false;
        };
        if att.replica {
            return false;
        }
        let writes = group.iter().any(|a| {
            a.kind.is_write() || a.hidden_writes.is_some() || !a.tables_written.is_empty()
        });
        let begins = group
            .iter()
            .flat_map(|a| a.txn_controls())
            .any(|t| matches!(t, TxnControl::Begin { .. }));
        let commits = group
            .iter()
            .flat_map(|a| a.txn_controls())
            .any(|t| matches!(t, TxnControl::Commit));
        // Nothing may follow a COPY … FROM STDIN until its data has been sent: capture later.
        if group
            .iter()
            .flat_map(|a| a.statements.iter())
            .any(|s| s.verb == "COPY")
        {
            return false;
        }
        let autocommit = att.server.txn_status == txn::IDLE && !begins;
        if (writes && autocommit) || (commits && (self.commit.txn.wrote || writes)) {
            return true;
        }
        // Monotonic reads: what a read on the primary saw is bounded by the position captured
        // right behind it, so the session's next read may go to any replica that replayed it
        // (without it, only the primary until the monitor's next probe). Only for sessions
        // that read from replicas at all, and only where the backend may then be let go.
        let ends = autocommit
            || group
                .iter()
                .flat_map(|a| a.txn_controls())
                .any(|t| matches!(t, TxnControl::Commit | TxnControl::Rollback));
        ends && !group.is_empty()
            && self.commit.reads_replicas
            && self.backend.pinned.is_none()
            && self.backend.mode == crate::config::PoolMode::Transaction
            && {
                let cfg = self.ctx.config.load();
                cfg.routing.enabled && cfg.routing.monotonic_reads
            }
    }

    /// Queues the capture right behind the request just forwarded.
    pub(super) fn send_capture(&mut self) {
        if let Some(att) = self.backend.attached.as_mut() {
            att.capture_after = att.requests;
        }
        crate::metrics::round_trips::count(crate::metrics::Trip::CaptureQueued);
        msg::query(&mut self.client.sout, CAPTURE_SQL);
        self.backend.tracker.push(Expect::Capture);
    }

    fn has_replicas(&self) -> bool {
        self.ctx.topology.load().nodes.len() > 1
    }

    /// Whether invalidations matter: this sidecar caches, or shares Redis with others that do.
    pub(super) fn cache_shared(&self) -> bool {
        let c = self.ctx.cache.config();
        c.enabled || c.redis.is_some()
    }

    pub(super) fn on_captured(&mut self) {
        let tables = std::mem::take(&mut self.commit.txn.capturing);
        if let Some(lsn) = self
            .commit
            .txn
            .captured
            .take()
            .as_deref()
            .and_then(parse_lsn)
        {
            if let Some(att) = self.backend.attached.as_mut() {
                att.position = Some((lsn, att.capture_after));
            }
            if !tables.is_empty() || self.commit.held.is_some() {
                self.ctx.write_log.record(tables.iter(), lsn);
                self.commit.last_write_lsn = self.commit.last_write_lsn.max(lsn);
            }
            // DDL changed the catalogs, which reads name in ways the write log cannot match
            // to the table (pg_class rows, information_schema views, `'t'::regclass`): every
            // read of this sidecar waits for it. DDL is rare, so this costs little.
            if std::mem::take(&mut self.commit.txn.capturing_ddl) {
                self.ctx.write_log.record_everything(lsn);
            }
            // The invalidation waits for this (`run_invalidation`) and carries it to the tokens.
            if let Some(inv) = self.commit.invalidation.as_mut() {
                inv.lsn = lsn;
            }
        }
        if let Some(held) = self.commit.held.take() {
            self.client.cout.extend_from_slice(&held);
        }
    }

    fn apply_effects(&mut self, a: &Analysis) {
        self.apply_effects_inner(a);
        // RESET returns to the client's startup values, which this backend never had: put them
        // back before the client's next statement runs here.
        self.sync_settings();
    }

    fn apply_effects_inner(&mut self, a: &Analysis) {
        let discards = a.statements.iter().any(|s| s.verb == "DISCARD");
        for e in a.session_effects() {
            match e {
                SessionEffect::Set { local: true, .. } => {}
                SessionEffect::Set { name, value, .. } => {
                    let sql = format!("SET {name} TO {value}");
                    self.vars.settings.set(name, sql.clone());
                    if let Some(att) = self.backend.attached.as_mut() {
                        att.server.settings.set(name, sql);
                    }
                }
                SessionEffect::Reset { name } => {
                    self.vars.settings.reset(name);
                    if let Some(att) = self.backend.attached.as_mut() {
                        att.server.settings.reset(name);
                    }
                }
                SessionEffect::ResetAll => {
                    self.vars.settings.reset_all();
                    if let Some(att) = self.backend.attached.as_mut() {
                        att.server.settings.reset_all();
                        if discards {
                            att.server.prepared.clear();
                        }
                    }
                }
                SessionEffect::Discard(what) => {
                    if what == "listen" {
                        // Subscriptions are gone; nothing else of the session is pinned by them.
                    }
                }
                SessionEffect::Pin(reason) => {
                    if self.backend.pinned.is_none() {
                        tracing::debug!(reason = reason.as_str(), "session pinned to its backend");
                        crate::metrics::session_pinned(reason.as_str());
                    }
                    self.backend.pinned = Some(reason.as_str());
                }
            }
        }
    }
}

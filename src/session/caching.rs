//! The result cache in the data path: a cacheable request is looked up before a backend is
//! borrowed; on a miss, exactly what the client receives is captured and offered to the cache
//! when the request completes without error; committed writes invalidate the tables they wrote
//! before the client hears of the commit.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::commit::CommitTracking;
use super::relay::Session;
use crate::analyze::{Analysis, TxnControl};
use crate::cache::{Cache, Fill, KeyParts, Lookup, Reason};
use crate::wire::msg::{self, Bind, Parse, Target};
use crate::wire::tag::{back, front, txn};

/// A miss being filled from the backend's answer.
pub(super) struct Filling {
    fill: Fill,
    buf: BytesMut,
    ttl: Duration,
    tables: Arc<[String]>,
    failed: bool,
    /// For SHOW QUERIES' fills and rejected fills.
    statement: Arc<Analysis>,
}

/// Tables whose cached results a committed write made stale, and the commit's position.
pub(super) struct Invalidation {
    pub(super) tables: InvalidTables,
    /// The primary's WAL position at or after the commit, once captured (0: none coming). It
    /// travels with the new tokens, so other sidecars demand it of the replicas they cache from.
    pub(super) lsn: crate::route::Lsn,
    /// The write's announcement before its commit, which this invalidation ends.
    pub(super) announced: crate::cache::Announced,
}

pub(super) enum InvalidTables {
    Tables(Vec<String>),
    All,
}

impl CommitTracking {
    /// Bytes on their way to the client, seen by an active capture.
    pub fn capture(&mut self, bytes: &[u8], tag: u8, cache: &Cache) {
        let Some(f) = self.filling.as_mut() else {
            return;
        };
        if tag == back::ERROR_RESPONSE {
            f.failed = true;
        }
        if f.failed || f.buf.len() + bytes.len() > cache.config().max_entry_bytes {
            f.failed = true;
            return;
        }
        f.buf.extend_from_slice(bytes);
    }

    /// The transaction whose writes were announced is gone without its commit being seen.
    pub fn abandon_announced(&mut self, cache: &Cache) {
        self.txn.sent_writes.clear();
        self.txn.sent_hidden = false;
        cache.abandon(std::mem::take(&mut self.txn.announced));
    }

    /// A write announced and still in flight half an `INTENT_HOLD` later (a commit waiting for
    /// a synchronous standby): held anew, so that no sidecar stores a fill of its tables from a
    /// replica that already shows it while the primary does not yet (`Cache::renew`).
    pub async fn renew_announced(&mut self, cache: &Cache) {
        let mut announced = std::mem::take(&mut self.txn.announced);
        cache.renew(&mut announced).await;
        self.txn.announced = announced;
    }
}

impl Session {
    /// Serves the pending request from the cache if it may be; on a miss, prepares the capture.
    /// True when the client has been answered.
    pub(super) async fn try_cache(
        &mut self,
        analyses: &[Arc<Analysis>],
        ttl: Option<Duration>,
    ) -> bool {
        let Some(mut ttl) = ttl else { return false };
        let cfg = self.ctx.cache.config();
        if !cfg.enabled || analyses.len() != 1 || !analyses[0].cacheable() {
            return false;
        }
        if analyses[0].hints.cache_ttl.is_some() {
            ttl = ttl.min(cfg.max_hint_ttl);
        }
        let a = &analyses[0];
        let Some(key) = self.cache_key(a) else {
            return false;
        };
        let tables = self.stmts.memo.cache_tables(a, &self.identity.database);
        let refs: Vec<&str> = tables.keyed.iter().map(String::as_str).collect();
        match self.ctx.cache.lookup(&key, &refs).await {
            Lookup::Hit(bytes) => {
                self.client.cout.extend_from_slice(&bytes);
                self.request.pending.clear();
                crate::metrics::cache_hit();
                true
            }
            Lookup::Miss(fill) => {
                crate::metrics::cache_miss();
                self.commit.filling = Some(Filling {
                    fill,
                    buf: BytesMut::new(),
                    ttl,
                    tables: tables.names.clone(),
                    failed: false,
                    statement: a.clone(),
                });
                false
            }
        }
    }

    /// Everything that decides the bytes of the answer: the request's shape and statement, its
    /// parameters and formats, who asks, and the settings that change how values print.
    fn cache_key(&self, a: &Analysis) -> Option<crate::cache::CacheKey> {
        let mut shape = Vec::with_capacity(8);
        let mut bind: Option<Bind<'_>> = None;
        let mut text: Vec<u8> = Vec::new();
        let protocol = self.request.pending.first()?.frame.tag;
        for m in &self.request.pending {
            if m.fail.is_some() {
                return None; // the backend must raise it, in its place in the batch
            }
            let f = &m.frame;
            shape.push(f.tag);
            match f.tag {
                front::QUERY => text.extend_from_slice(msg::query_text(f.body())),
                front::PARSE => text.extend_from_slice(Parse::decode(f.body())?.query),
                front::BIND => {
                    if bind.is_some() {
                        return None; // one execution per cached request
                    }
                    bind = Some(Bind::decode(f.body())?);
                }
                front::DESCRIBE => shape.push(Target::decode(f.body())?.kind),
                front::EXECUTE | front::SYNC => {}
                _ => return None,
            }
        }
        let shape_ok = match protocol {
            front::QUERY => shape == [front::QUERY],
            _ => {
                shape.last() == Some(&front::SYNC)
                    && shape.iter().filter(|&&t| t == front::EXECUTE).count() == 1
            }
        };
        if !shape_ok {
            return None;
        }
        let text: &[u8] = if text.is_empty() {
            a.sql().as_bytes()
        } else {
            &text
        };
        let mut statement = Vec::with_capacity(shape.len() + 1 + text.len());
        statement.extend_from_slice(&shape);
        statement.push(0);
        statement.extend_from_slice(text);
        let params = match &bind {
            Some(b) => Some(b.params()?),
            None => None,
        };
        let settings: Vec<(&str, &str)> = self
            .vars
            .settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let search_path = self
            .vars
            .settings
            .iter()
            .find(|(k, _)| k.as_str() == "search_path")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let empty: Vec<Option<&[u8]>> = Vec::new();
        // Blue and green hold different data under the same names: never mix their answers.
        let topo = self.ctx.topology.load();
        Some(
            KeyParts {
                environment: &topo.environment,
                database: &self.identity.database,
                role: Some(&self.identity.user),
                search_path,
                statement_text: &statement,
                param_formats: params.as_ref().map(|p| &p.formats[..]).unwrap_or(&[]),
                params: params.as_ref().map(|p| &p.values[..]).unwrap_or(&empty),
                result_formats: params
                    .as_ref()
                    .map(|p| &p.result_formats[..])
                    .unwrap_or(&[]),
                settings: &settings,
                protocol,
            }
            .key(),
        )
    }

    /// The captured request is complete: store it if it is whole, error-free and fresh.
    pub(super) fn finish_capture(&mut self) {
        let Some(f) = self.commit.filling.take() else {
            return;
        };
        if f.failed {
            self.ctx.queries.cache_fill(&f.statement, false);
            return; // dropping the ticket releases anyone waiting on it
        }
        let fresh = match self.backend.attached.as_ref() {
            Some(att) if att.replica => {
                let refs = f.tables.iter().map(|t| crate::analyze::TableRef {
                    schema: None,
                    name: t.clone(),
                });
                let required = self.ctx.write_log.required(refs.collect::<Vec<_>>().iter());
                att.node.replayed() >= required
            }
            Some(_) => true,
            None => false,
        };
        let cache = self.ctx.cache.clone();
        self.ctx.queries.cache_fill(&f.statement, fresh);
        if !fresh {
            cache.reject(f.fill, Reason::Lagging);
            return;
        }
        let bytes: Bytes = f.buf.freeze();
        tokio::spawn(async move {
            cache.fill(f.fill, bytes, f.ttl).await;
        });
    }

    /// Applies a committed write's invalidation; runs before the client can hear of the commit.
    /// Waits for the commit position while it is being captured (the answer is held until then).
    pub(super) async fn run_invalidation(&mut self) {
        if self.commit.held.is_some() {
            return; // `on_captured` fills in the position, then this runs again
        }
        self.invalidate_now().await;
    }

    /// Applies the pending invalidation with whatever position is known.
    pub(super) async fn invalidate_now(&mut self) {
        let Some(inv) = self.commit.invalidation.take() else {
            return;
        };
        let keyed: Vec<String> = match inv.tables {
            InvalidTables::Tables(t) => t
                .iter()
                .map(|t| crate::cache::table_key(&self.identity.database, t))
                .collect(),
            InvalidTables::All => vec![crate::cache::ALL_TABLES.to_owned()],
        };
        let refs: Vec<&str> = keyed.iter().map(String::as_str).collect();
        self.ctx
            .cache
            .invalidate_announced(&refs, inv.lsn, inv.announced)
            .await;
    }

    /// Step 8 of the cache's module doc, on the session's side: before a request that may
    /// commit writes is sent (an autocommit write, or a COMMIT), its tables are announced to
    /// the cache, so that no sidecar serves or stores an older result of them once the
    /// commit can be seen; the commit's invalidation ends the announcement. Writes inside a
    /// transaction are only noted here, and announced together at its COMMIT.
    pub(super) async fn announce_before_commit(&mut self, analyses: &[Arc<Analysis>]) {
        if analyses.is_empty() || !self.cache_shared() {
            return;
        }
        let mut commits = false;
        let mut writes = false;
        for a in analyses {
            if a.kind.is_write() || a.hidden_writes.is_some() || !a.tables_written.is_empty() {
                writes = true;
                self.commit.txn.sent_hidden |= a.hidden_writes.is_some();
                for t in &a.tables_written {
                    if !self.commit.txn.sent_writes.contains(&t.name) {
                        self.commit.txn.sent_writes.push(t.name.clone());
                    }
                }
            }
            commits |= a.txn_controls().any(|t| matches!(t, TxnControl::Commit));
        }
        let in_txn = self
            .backend
            .attached
            .as_ref()
            .is_some_and(|a| a.server.txn_status != txn::IDLE);
        if !(commits || (writes && !in_txn)) {
            return;
        }
        let keyed: Vec<String> = if self.commit.txn.sent_hidden {
            vec![crate::cache::ALL_TABLES.to_owned()]
        } else {
            self.commit
                .txn
                .sent_writes
                .iter()
                .map(|t| crate::cache::table_key(&self.identity.database, t))
                .collect()
        };
        if !self.commit.txn.announced.is_empty() && !self.commit.txn.announced.is_fresh() {
            // Announced long ago in this transaction: held anew rather than announced twice
            // (its end names one announcement per table).
            self.ctx.cache.renew(&mut self.commit.txn.announced).await;
        }
        let new: Vec<&str> = keyed
            .iter()
            .map(String::as_str)
            .filter(|t| !self.commit.txn.announced.covers(t))
            .collect();
        if new.is_empty() {
            return;
        }
        let announced = self.ctx.cache.announce(&new).await;
        self.commit.txn.announced.merge(announced);
    }
}

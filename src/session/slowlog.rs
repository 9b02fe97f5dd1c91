//! The slow-query log (`log.slow_query`): a request that took longer than the threshold, from
//! the moment the client completed it (Sync or Query) to the ReadyForQuery it received, is
//! logged with where it ran and why — the routing decision is what an operator needs next to
//! a slow statement. Only the normalized text is logged (literals replaced by `?`), so values
//! the application sent (personal data, secrets) never reach the logs.
//!
//! Each request the client sends is timed from there to its own ReadyForQuery, in order:
//! requests are answered in the order sent, so a queue lines them up, pipelined ones included.
//! The threshold is read at each request's end, so a reload applies at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::relay::Session;
use crate::analyze::Analysis;

/// One request on its way through a backend.
pub(super) struct Timing {
    started: Instant,
    statements: Vec<Arc<Analysis>>,
    route: &'static str,
    node: Arc<crate::route::Node>,
    reason: Why,
    cache: &'static str,
}

/// The routing reason of a timed request, put into words only if it is logged.
pub(super) struct Why {
    reason: Arc<str>,
    /// A later request of a transaction (or pinned session): it ran where that already was.
    later: bool,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.later {
            write!(
                f,
                "same backend as the open transaction or pinned session ({})",
                self.reason
            )
        } else {
            f.write_str(&self.reason)
        }
    }
}

/// One request in flight: its slow-log timing, and (with `pool.pipeline` on) its single
/// statement with when it was sent, to record how long it runs (only statements seen to be
/// fast are pipelined).
pub(super) struct Entry {
    log: Option<Timing>,
    observe: Option<(Instant, Arc<Analysis>)>,
    /// For statement statistics (`SHOW QUERIES`) and the per-route latency histogram.
    note: Option<super::stats::Note>,
}

/// Requests sent to the backend and not yet answered, oldest first. A request sent while the
/// log is off holds a `None`, so turning it on by a reload never pairs an answer with the
/// wrong request (and costs nothing while off).
#[derive(Default)]
pub(super) struct Timings {
    queue: VecDeque<Entry>,
    /// When the request about to be dispatched was completed by the client: checkout and
    /// replica waits count towards its time.
    next_started: Option<Instant>,
    /// Statement statistics gathered while the oldest request is answered (`stats.rs`).
    pub(super) acc: super::stats::Accumulated,
    /// The routing decision of the request being dispatched (its rule, for SHOW QUERIES).
    pub(super) next_intent: Option<Arc<crate::route::Intent>>,
    /// The request being dispatched is copied to the mirror environment (`mirroring.rs`).
    pub(super) mirror: Option<super::mirroring::Capture>,
    /// Requests whose ReadyForQuery is held until the commit position is captured and the
    /// cache invalidated: timed when the client is sent their answer (`flush_client`).
    deferred: Vec<(Entry, super::stats::Accumulated)>,
}

impl Timings {
    /// The request the session is dispatching became complete now.
    pub fn request_complete(&mut self) {
        self.next_started.get_or_insert_with(Instant::now);
    }

    /// The requests in flight are being sent again elsewhere (replica retry): they keep their
    /// start time and are timed anew with the route of the retry.
    pub fn restart(&mut self) {
        match self.queue.front() {
            Some(Entry { log: Some(t), .. }) => self.next_started = Some(t.started),
            Some(Entry { note: Some(n), .. }) => self.next_started = Some(n.started),
            _ => {}
        }
        self.queue.clear();
        self.acc = Default::default();
        if let Some(m) = self.mirror.as_mut() {
            m.restart();
        }
    }

    /// When the client completed the request being dispatched.
    pub fn next_started(&self) -> Option<Instant> {
        self.next_started
    }

    /// The request being dispatched was answered without a backend (refused).
    pub fn forget_next(&mut self) {
        self.next_started = None;
        self.next_intent = None;
        self.mirror = None;
    }

    /// Responses to these requests will not come (connection lost).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.next_started = None;
        self.next_intent = None;
        self.mirror = None;
        self.acc = Default::default();
    }
}

fn statement_text(statements: &[Arc<Analysis>]) -> String {
    let texts: Vec<&str> = statements.iter().map(|a| a.loggable_text()).collect();
    if texts.is_empty() {
        "(no statement: a Sync alone, or a FunctionCall)".into()
    } else {
        texts.join("; ")
    }
}

impl Session {
    fn slow_threshold(&self) -> Option<Duration> {
        self.ctx.config.load().log.slow_query
    }

    /// A client request (Sync, Query or FunctionCall: each gets one ReadyForQuery) goes to the
    /// attached backend now.
    pub(super) fn time_request(&mut self, statements: &[Arc<Analysis>]) {
        let started = self.time.timings.next_started.take();
        if let Some(att) = self.backend.attached.as_mut() {
            att.ran_statements |= !statements.is_empty();
        }
        let cfg = self.ctx.config.load();
        let observe = match statements {
            [one] if cfg.pool.pipeline => Some((Instant::now(), one.clone())),
            _ => None,
        };
        let log = cfg.log.slow_query.is_some();
        drop(cfg);
        // Whether this is the first request on the attached backend (later ones of a
        // transaction or pinned session go where it already is).
        let first = self.backend.attached.as_mut().map(|att| {
            att.requests += 1;
            att.requests == 1
        });
        let note = self.stats_note(started, statements, first);
        let log = match first {
            Some(first) if log => self.slow_timing(started, statements, first),
            _ => None,
        };
        self.time
            .timings
            .queue
            .push_back(Entry { log, observe, note });
    }

    fn slow_timing(
        &mut self,
        started: Option<Instant>,
        statements: &[Arc<Analysis>],
        first: bool,
    ) -> Option<Timing> {
        let cache = if self.commit.filling.is_some() {
            "miss"
        } else {
            "not cached"
        };
        let att = self.backend.attached.as_ref()?;
        let reason = Why {
            reason: att.reason.clone(),
            later: !first,
        };
        Some(Timing {
            started: started.unwrap_or_else(Instant::now),
            statements: statements.to_vec(),
            route: if att.replica { "replica" } else { "primary" },
            node: att.node.clone(),
            reason,
            cache,
        })
    }

    /// The client is getting the ReadyForQuery of its oldest request in flight.
    pub(super) fn request_answered(&mut self) {
        let Some(mut entry) = self.time.timings.queue.pop_front() else {
            return;
        };
        if let Some((sent, a)) = entry.observe.take() {
            a.observe(sent.elapsed());
        }
        let acc = std::mem::take(&mut self.time.timings.acc);
        self.time.timings.mirror_answered(&self.ctx.mirror);
        if self.commit.held.is_some() || self.commit.invalidation.is_some() {
            // A committed write: the client hears of it only after the commit position is
            // captured and the cache invalidated, which is part of the time it waited.
            self.time.timings.deferred.push((entry, acc));
            return;
        }
        self.entry_answered(entry, acc);
    }

    /// The answers of deferred requests are being sent to the client.
    pub(super) fn deferred_answered(&mut self) {
        for (entry, acc) in std::mem::take(&mut self.time.timings.deferred) {
            self.entry_answered(entry, acc);
        }
    }

    fn entry_answered(&mut self, entry: Entry, acc: super::stats::Accumulated) {
        if let Some(note) = entry.note {
            self.record_stats(note, acc);
        }
        let Some(t) = entry.log else {
            return;
        };
        let took = t.started.elapsed();
        if self.slow_threshold().is_none_or(|limit| took < limit) {
            return; // nothing to word: most requests end here
        }
        self.log_if_slow(
            took,
            &t.statements,
            t.route,
            &t.node.addr.display(),
            &t.reason,
            t.cache,
        );
    }

    /// A request answered from the result cache, without a backend.
    /// `answer`: the bytes the client was sent.
    pub(super) fn cache_hit_answered(&mut self, statements: &[Arc<Analysis>], answer: &[u8]) {
        self.cache_hit_stats(statements, answer);
        if let Some(started) = self.time.timings.next_started.take() {
            self.log_if_slow(
                started.elapsed(),
                statements,
                "cache",
                "-",
                &"served from the result cache",
                "hit",
            );
        }
    }

    pub(super) fn log_if_slow(
        &self,
        took: Duration,
        statements: &[Arc<Analysis>],
        route: &str,
        node: &str,
        reason: &dyn std::fmt::Display,
        cache: &str,
    ) {
        let Some(threshold) = self.slow_threshold() else {
            return;
        };
        if took < threshold {
            return;
        }
        crate::metrics::slow_query();
        tracing::warn!(
            target: "pgsidecar::slow_query",
            duration_ms = took.as_secs_f64() * 1000.0,
            statement = %statement_text(statements),
            route,
            node,
            reason = %reason,
            cache,
            user = %self.identity.user,
            database = %self.identity.database,
            application_name = %self.identity.application_name,
            "slow query"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::{analyze, FunctionCatalog};

    #[test]
    fn logged_text_has_no_literal_values() {
        let a = analyze(
            "SELECT * FROM users WHERE email = 'alice@example.com' AND pin = 1234",
            &FunctionCatalog::builtin(),
        );
        let text = statement_text(&[a]);
        assert!(!text.contains("alice") && !text.contains("1234"), "{text}");
        assert!(text.contains("users"), "{text}");
    }

    #[test]
    fn untokenizable_text_is_withheld() {
        let a = analyze("SELECT 'secret unterminated", &FunctionCatalog::builtin());
        assert!(!statement_text(&[a]).contains("secret"));
    }

    #[test]
    fn a_retried_request_keeps_its_start() {
        let mut t = Timings::default();
        t.request_complete();
        let first = t.next_started.unwrap();
        t.next_started = None;
        let node = crate::config::NodeAddr::parse("postgres://r1:5432").unwrap();
        t.queue.push_back(Entry {
            observe: None,
            note: None,
            log: Some(Timing {
                started: first,
                statements: Vec::new(),
                route: "replica",
                node: Arc::new(crate::route::Node::new(
                    node,
                    crate::route::Role::Replica,
                    1,
                )),
                reason: Why {
                    reason: Arc::from("read"),
                    later: false,
                },
                cache: "not cached",
            }),
        });
        t.restart();
        assert_eq!(t.next_started, Some(first));
        assert!(t.queue.is_empty());
    }
}

//! What a session tells the statement statistics (`crate::stats`, `SHOW QUERIES`) and the
//! per-route latency histogram about each request it answers: timed like the slow-query log
//! (from the client's Sync/Query to its ReadyForQuery), rows from the CommandCompletes the
//! client received, advisory-lock waits, the cache's outcome, the route and the rule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::relay::Session;
use super::slowlog::Timings;
use crate::analyze::Analysis;
use crate::stats::{CacheOutcome, Outcome, Route};
use crate::wire::tag::back;

/// One request in flight, to be recorded when its ReadyForQuery reaches the client.
pub(super) struct Note {
    pub(super) started: Instant,
    statements: Vec<Arc<Analysis>>,
    route: Route,
    reason: Arc<str>,
    later: bool,
    intent: Option<Arc<crate::route::Intent>>,
    cache: CacheOutcome,
}

/// Counted while the oldest request in flight is answered; taken when it is.
#[derive(Default)]
pub(super) struct Accumulated {
    rows: u64,
    lock_waits: u32,
    lock_wait: Duration,
}

/// The row count of a CommandComplete (its body): `SELECT 5`, `INSERT 0 5`, `UPDATE 5`, …;
/// 0 for commands that count none (`BEGIN`, `SET`, …).
pub fn command_rows(body: &[u8]) -> u64 {
    let tag = body.strip_suffix(&[0]).unwrap_or(body);
    let counts = [
        &b"SELECT "[..],
        b"INSERT ",
        b"UPDATE ",
        b"DELETE ",
        b"MERGE ",
        b"COPY ",
        b"FETCH ",
        b"MOVE ",
    ]
    .iter()
    .any(|p| tag.starts_with(p));
    if !counts {
        return 0;
    }
    tag.rsplit(|&c| c == b' ')
        .next()
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Rows counted by the CommandCompletes among whole messages (the pipelined path's chunks
/// are whole messages too).
pub(super) fn rows_in(mut bytes: &[u8]) -> u64 {
    let mut rows = 0;
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let Some(msg) = bytes.get(..1 + len).filter(|_| len >= 4) else {
            break;
        };
        if msg[0] == back::COMMAND_COMPLETE {
            rows += command_rows(&msg[5..]);
        }
        bytes = &bytes[1 + len..];
    }
    rows
}

impl Timings {
    /// Bytes on their way to the client (`emit`): rows of the request being answered.
    pub fn stats_saw(&mut self, bytes: &[u8], tag: u8) {
        self.mirror_saw(bytes, tag);
        if tag == back::COMMAND_COMPLETE {
            if let Some(body) = bytes.get(5..) {
                self.acc.rows += command_rows(body);
            }
        }
    }

    /// An advisory-lock statement of the request in flight was answered after `waited`.
    pub fn stats_lock_waited(&mut self, waited: Duration) {
        self.acc.lock_waits += 1;
        self.acc.lock_wait += waited;
    }
}

impl Session {
    /// The note of a request going to the attached backend now (`first`: the first request
    /// since it was attached; None: no backend).
    pub(super) fn stats_note(
        &mut self,
        started: Option<Instant>,
        statements: &[Arc<Analysis>],
        first: Option<bool>,
    ) -> Option<Note> {
        let intent = self.time.timings.next_intent.take();
        let att = self.backend.attached.as_ref()?;
        Some(Note {
            started: started.unwrap_or_else(Instant::now),
            statements: if self.ctx.queries.enabled() {
                statements.to_vec()
            } else {
                Vec::new()
            },
            route: if att.replica {
                Route::Replica
            } else {
                Route::Primary
            },
            reason: att.reason.clone(),
            later: first == Some(false),
            intent,
            cache: if self.commit.filling.is_some() {
                CacheOutcome::Miss
            } else {
                CacheOutcome::None
            },
        })
    }

    /// The request of `note` got its ReadyForQuery; `acc`: what was counted while it was answered.
    pub(super) fn record_stats(&mut self, note: Note, acc: Accumulated) {
        let took = note.started.elapsed();
        crate::metrics::request_answered(note.route, took);
        if note.statements.is_empty() {
            return;
        }
        let rule = if note.later {
            None
        } else {
            note.intent.as_ref().and_then(|i| i.rule.as_deref())
        };
        self.ctx.queries.record(
            &note.statements,
            &Outcome {
                route: note.route,
                took,
                rows: acc.rows,
                cache: note.cache,
                lock_waits: acc.lock_waits,
                lock_wait: acc.lock_wait,
                reason: &note.reason,
                later: note.later,
                rule,
            },
        );
    }

    /// A request answered from the result cache with `answer`.
    pub(super) fn cache_hit_stats(&mut self, statements: &[Arc<Analysis>], answer: &[u8]) {
        let took = self
            .time
            .timings
            .next_started()
            .map_or(Duration::ZERO, |s| s.elapsed());
        crate::metrics::request_answered(Route::Cache, took);
        let intent = self.time.timings.next_intent.take();
        self.time.timings.mirror_cached(answer, &self.ctx.mirror);
        self.ctx.queries.record(
            statements,
            &Outcome {
                route: Route::Cache,
                took,
                rows: rows_in(answer),
                cache: CacheOutcome::Hit,
                lock_waits: 0,
                lock_wait: Duration::ZERO,
                reason: "served from the result cache",
                later: false,
                rule: intent.as_ref().and_then(|i| i.rule.as_deref()),
            },
        );
    }

    /// A pipelined read (`pipelined.rs`) was answered with `rows` after `took`.
    pub(super) fn pipelined_stats(
        &mut self,
        analysis: &Arc<Analysis>,
        replica: bool,
        took: Duration,
        rows: u64,
    ) {
        let route = if replica {
            Route::Replica
        } else {
            Route::Primary
        };
        crate::metrics::request_answered(route, took);
        let intent = self.time.timings.next_intent.take();
        self.ctx.queries.record(
            std::slice::from_ref(analysis),
            &Outcome {
                route,
                took,
                rows,
                cache: CacheOutcome::None,
                lock_waits: 0,
                lock_wait: Duration::ZERO,
                reason: intent.as_ref().map_or("pipelined", |i| i.reason.as_str()),
                later: false,
                rule: intent.as_ref().and_then(|i| i.rule.as_deref()),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tag::txn;

    #[test]
    fn command_tags_give_their_row_counts() {
        assert_eq!(command_rows(b"SELECT 5\0"), 5);
        assert_eq!(command_rows(b"INSERT 0 3\0"), 3);
        assert_eq!(command_rows(b"UPDATE 12\0"), 12);
        assert_eq!(command_rows(b"DELETE 0\0"), 0);
        assert_eq!(command_rows(b"BEGIN\0"), 0);
        assert_eq!(command_rows(b"SET\0"), 0);
        assert_eq!(command_rows(b"CREATE TABLE\0"), 0);
    }

    #[test]
    fn rows_add_up_over_the_messages_of_an_answer() {
        let mut b = Vec::new();
        for tag in [&b"SELECT 2\0"[..], b"UPDATE 1\0"] {
            b.push(back::COMMAND_COMPLETE);
            b.extend_from_slice(&(tag.len() as u32 + 4).to_be_bytes());
            b.extend_from_slice(tag);
        }
        b.extend_from_slice(&[back::READY_FOR_QUERY, 0, 0, 0, 5, txn::IDLE]);
        assert_eq!(rows_in(&b), 3);
    }
}

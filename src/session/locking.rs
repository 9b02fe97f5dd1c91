//! Advisory locks around writes to lock tables (see `crate::locks`): computed per request from
//! its statements and bound parameters, sent on the statement's own backend just before it. An
//! autocommit request is wrapped in BEGIN … COMMIT so the lock lives exactly as long as the
//! statement's transaction; the client still sees only its own results, ending idle.
//!
//! A request that carries transaction control itself (pgjdbc sends `BEGIN` in the same
//! Parse/Bind/Execute … Sync batch as the transaction's first statement; pipelines may carry a
//! whole transaction) cannot be wrapped: the locks of each transaction in it are taken inside
//! the batch, right after the `BEGIN` that opens it and before its first statement on a lock
//! table, with extended-protocol messages of a named statement and portal, so neither the
//! client's unnamed statement nor its portal is disturbed and a lock timeout fails the batch
//! exactly like the client's own statement failing there.

use std::collections::HashSet;

use super::inbound::Msg;
use super::relay::Session;
use super::track::Expect;
use super::SessionError;
use crate::analyze::TxnControl;
use crate::locks::{self, LockRegistry, Plan};
use crate::wire::msg::{self, Bind, Severity};
use crate::wire::tag::{front, txn};

/// Statement and portal name of the lock statement sent inside a batch.
const LOCK_NAME: &[u8] = b"pgsc_lock";

/// The session's advisory-lock bookkeeping. It exists so that what the current transaction
/// holds (each key is taken once), whether SHOW LOCKS lists this session, and when the lock
/// statement in flight was sent (lock-wait metrics) are owned apart from the statements that
/// take the locks.
#[derive(Default)]
pub(super) struct AdvisoryLocks {
    /// Advisory lock keys the current transaction holds (not taken twice).
    pub held: HashSet<String>,
    /// SHOW LOCKS lists entries of this session (released at the transaction's end).
    pub registered: bool,
    /// When the advisory-lock statement in flight was sent (lock-wait metrics).
    pub started: Option<std::time::Instant>,
}

impl AdvisoryLocks {
    /// A lock statement was sent for `keys` on backend `pid`: metrics, SHOW LOCKS (`registry`,
    /// under `client`), and keys not to take twice.
    pub fn sent(&mut self, keys: Vec<String>, registry: &LockRegistry, client: u64, pid: i32) {
        self.started = Some(std::time::Instant::now());
        crate::metrics::locks_taken(keys.len());
        registry.waiting(client, &keys, pid);
        self.registered = true;
        self.held.extend(keys);
    }

    /// The transaction is over (or its backend is gone): its advisory keys are no longer held.
    /// The registry is shared by every session, so it is touched only by sessions that locked.
    pub fn forget(&mut self, registry: &LockRegistry, client: u64) {
        self.held.clear();
        if std::mem::take(&mut self.registered) {
            registry.release(client);
        }
    }
}

impl Session {
    pub(super) fn locks_configured(&self) -> bool {
        !self.ctx.config.load().locks.is_empty()
    }

    /// Forwards the pending request to the attached backend, preceded by the locks it needs.
    pub(super) fn forward_group(&mut self) -> Result<(), SessionError> {
        let on_primary = self.backend.attached.as_ref().is_some_and(|a| !a.replica);
        if !self.locks_configured() || !on_primary {
            return self.forward_pending(false);
        }
        let in_txn = self
            .backend
            .attached
            .as_ref()
            .is_some_and(|a| a.server.txn_status != txn::IDLE);
        if self.request.pending.iter().any(controls_transaction) {
            return self.forward_with_batch_locks(in_txn);
        }
        let plan = match self.lock_plan(in_txn) {
            Ok(plan) => plan,
            Err(rejected) => return self.reject(rejected),
        };
        let Some(plan) = plan else {
            return self.forward_pending(false);
        };
        let sql = plan.sql();
        let wrapped = !in_txn;
        self.backend.unnamed_spent(); // a simple query: the backend's unnamed statement is gone
        if in_txn {
            msg::query(&mut self.client.sout, &sql);
        } else {
            msg::query(&mut self.client.sout, &format!("BEGIN; {sql}"));
        }
        self.backend.tracker.push(Expect::Lock);
        crate::metrics::round_trips::count(crate::metrics::Trip::LockQueued);
        self.lock_sent(plan.keys);
        self.forward_pending(wrapped)
    }

    /// Forwards the pending request; `wrapped`: it runs inside the proxy's BEGIN … COMMIT, so
    /// the commit-position capture, if the request writes, goes right behind that COMMIT (in
    /// the same write, costing the client no round trip) rather than behind the request.
    fn forward_pending(&mut self, wrapped: bool) -> Result<(), SessionError> {
        let capture_after = wrapped && {
            let group: Vec<_> = self
                .request
                .pending
                .iter()
                .filter_map(|m| m.analysis.clone())
                .collect();
            self.wants_capture(&group)
        };
        self.commit.no_predicted_capture = wrapped;
        for m in std::mem::take(&mut self.request.pending) {
            self.forward(m)?;
        }
        self.commit.no_predicted_capture = false;
        if wrapped {
            msg::query(&mut self.client.sout, "COMMIT");
            self.backend.tracker.push(Expect::WrapCommit);
            crate::metrics::round_trips::count(crate::metrics::Trip::WrapCommitQueued);
            if capture_after {
                self.send_capture();
            }
        }
        Ok(())
    }

    /// A lock statement was sent for `keys`: metrics, SHOW LOCKS, and keys not to take twice.
    fn lock_sent(&mut self, keys: Vec<String>) {
        let pid = self.backend.attached.as_ref().map_or(0, |a| a.server.pid);
        self.locks
            .sent(keys, &self.ctx.lock_registry, self.identity.client_id, pid);
    }

    /// A lock statement answered (taken, or failed and not held): metrics and SHOW LOCKS.
    pub(super) fn lock_statement_answered(&mut self, ok: bool) {
        if let Some(started) = self.locks.started.take() {
            crate::metrics::lock_wait(started.elapsed());
            self.time.timings.stats_lock_waited(started.elapsed());
        }
        self.ctx.lock_registry.answered(self.identity.client_id, ok);
    }

    /// The request may not run under its table's lock rule: the client is told why.
    fn reject(&mut self, rejected: locks::Rejected) -> Result<(), SessionError> {
        self.request.pending.clear();
        msg::error_response(
            &mut self.client.cout,
            Severity::Error,
            "55000",
            &rejected.to_string(),
        );
        msg::ready_for_query(
            &mut self.client.cout,
            self.backend
                .attached
                .as_ref()
                .map_or(txn::IDLE, |a| a.server.txn_status),
        );
        Ok(())
    }

    /// Forwards a request that contains transaction control, with each of its transactions'
    /// locks injected at the point computed by [`batch_locks`].
    fn forward_with_batch_locks(&mut self, in_txn: bool) -> Result<(), SessionError> {
        let cfg = self.ctx.config.load_full();
        let mut held = self.locks.held.clone();
        let plans = match batch_locks(&cfg.locks, &self.request.pending, in_txn, &mut held) {
            Ok(Some(plans)) => plans,
            Ok(None) => {
                // Counted with the statements whose keys cannot be determined: both run unlocked
                // and an operator must be able to see it (a rule with undeterminable = "reject"
                // refuses them instead).
                tracing::warn!(
                    "simple query mixes BEGIN/COMMIT with lock-table statements; run without locks"
                );
                crate::metrics::locks_undeterminable(1);
                return self.forward_pending(false);
            }
            Err(rejected) => return self.reject(rejected),
        };
        let mut plans = plans.into_iter().peekable();
        for (i, m) in std::mem::take(&mut self.request.pending)
            .into_iter()
            .enumerate()
        {
            while let Some((_, plan)) = plans.next_if(|(at, _)| *at == i) {
                msg::run_named(&mut self.client.sout, LOCK_NAME, &plan.sql());
                self.backend.tracker.push(Expect::ExtLock);
                crate::metrics::round_trips::count(crate::metrics::Trip::LockQueued);
                self.lock_sent(plan.keys);
            }
            self.forward(m)?;
        }
        // Keys of transactions the batch ended are no longer held.
        self.locks.held = held;
        Ok(())
    }

    /// The locks the pending request needs (sorted, without those this transaction holds).
    fn lock_plan(&self, in_txn: bool) -> Result<Option<Plan>, locks::Rejected> {
        let cfg = self.ctx.config.load();
        let mut plan = Plan::default();
        let mut touched = false;
        for m in &self.request.pending {
            let Some(a) = m.analysis.as_ref() else {
                continue;
            };
            let params = match m.frame.tag {
                front::BIND => Bind::decode(m.frame.body()).and_then(|b| b.params()),
                front::QUERY => None,
                _ => continue, // a Parse's statement is locked at its Bind
            };
            locks::plan(&cfg.locks, a, params.as_ref(), in_txn, &mut plan)?;
            touched = true;
        }
        if plan.passed > 0 {
            crate::metrics::locks_undeterminable(plan.passed);
        }
        let held: &HashSet<String> = &self.locks.held;
        plan.finish(held);
        Ok((touched && !plan.keys.is_empty()).then_some(plan))
    }
}

/// Whether a message runs transaction control (a Parse's statement runs at its Bind).
fn controls_transaction(m: &Msg) -> bool {
    matches!(m.frame.tag, front::BIND | front::QUERY)
        && m.analysis
            .as_ref()
            .is_some_and(|a| a.txn_controls().next().is_some())
}

/// The lock statements a batch with transaction control needs, each with the index of the
/// message it must precede: one per transaction (segment) of the batch, taken after the
/// `BEGIN`/`SET TRANSACTION` that opens it (a snapshot taken earlier would make them fail) —
/// or at the segment's start when lock-table statements run before any — with the keys of all
/// its lock-table statements, sorted. Keys `held` by the transaction are not taken again;
/// `held` is left as it is after the batch. `None`: a simple query carries both transaction
/// control and lock-table statements, and nothing can be put between them.
fn batch_locks(
    rules: &[locks::LockRule],
    msgs: &[Msg],
    mut in_txn: bool,
    held: &mut HashSet<String>,
) -> Result<Option<Vec<(usize, Plan)>>, locks::Rejected> {
    let mut segment = Segment {
        out: Vec::new(),
        plan: Plan::default(),
        point: 0,
        passed: 0,
        held,
    };
    for (i, m) in msgs.iter().enumerate() {
        let Some(a) = m.analysis.as_ref() else {
            continue;
        };
        let params = match m.frame.tag {
            front::BIND => Bind::decode(m.frame.body()).and_then(|b| b.params()),
            front::QUERY => None,
            _ => continue,
        };
        if a.txn_controls().next().is_none() {
            locks::plan(rules, a, params.as_ref(), in_txn, &mut segment.plan)?;
            continue;
        }
        if m.frame.tag == front::QUERY {
            let mut inside = Plan::default();
            locks::plan(rules, a, None, true, &mut inside)?;
            if !inside.keys.is_empty() || inside.passed > 0 {
                locks::refuse_unlockable(
                    rules,
                    a,
                    "it shares one simple-protocol query string with BEGIN/COMMIT, where no lock \
                     can be placed between them; send the statements separately",
                )?;
                return Ok(None);
            }
        }
        // The control takes effect once its Execute has run.
        let after = match m.frame.tag {
            front::QUERY => i + 1,
            _ => match msgs[i..].iter().position(|m| m.frame.tag == front::EXECUTE) {
                Some(e) => i + e + 1,
                None => continue, // bound, never executed
            },
        };
        for c in a.txn_controls() {
            match c {
                TxnControl::Begin { .. } | TxnControl::SetTransaction { .. } => {
                    segment.flush(after, false);
                    in_txn = true;
                }
                TxnControl::Commit
                | TxnControl::Rollback
                | TxnControl::PrepareTransaction
                | TxnControl::CommitPrepared
                | TxnControl::RollbackPrepared => {
                    segment.flush(after, true);
                    in_txn = false;
                }
                // Locks taken since the savepoint are released with it.
                TxnControl::RollbackTo => segment.flush(after, true),
                // Locks taken before a savepoint survive its rollback: keep the point.
                TxnControl::Savepoint | TxnControl::Release => {}
            }
        }
    }
    let end = segment.point;
    segment.flush(end, false);
    if segment.passed > 0 {
        crate::metrics::locks_undeterminable(segment.passed);
    }
    Ok(Some(segment.out))
}

/// The part of a batch whose locks one statement takes, and the statements found so far.
struct Segment<'h> {
    out: Vec<(usize, Plan)>,
    plan: Plan,
    /// Index of the message the segment's lock statement must precede.
    point: usize,
    passed: usize,
    held: &'h mut HashSet<String>,
}

impl Segment<'_> {
    /// Ends the segment (its locks, if any, go at its point); the next starts at `next`.
    /// `released`: the transaction control ending it releases the locks held so far.
    fn flush(&mut self, next: usize, released: bool) {
        let mut p = std::mem::take(&mut self.plan);
        self.passed += p.passed;
        p.finish(self.held);
        if !p.keys.is_empty() {
            self.held.extend(p.keys.iter().cloned());
            self.out.push((self.point, p));
        }
        if released {
            self.held.clear();
        }
        self.point = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::{analyze, FunctionCatalog};
    use crate::wire::Frame;
    use bytes::{BufMut, BytesMut};

    fn frame(tag: u8, body: &[u8]) -> Frame {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_i32(body.len() as i32 + 4);
        b.put_slice(body);
        Frame {
            tag,
            bytes: b.freeze(),
        }
    }

    /// Bind, Execute of `sql` (the analysis a Bind inherits from its Parse) with text params.
    fn run(sql: &str, params: &[&str]) -> [Msg; 2] {
        let mut body = b"\0\0\0\0".to_vec();
        body.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            body.extend_from_slice(&(p.len() as i32).to_be_bytes());
            body.extend_from_slice(p.as_bytes());
        }
        body.extend_from_slice(&[0, 0]);
        [
            msg(frame(front::BIND, &body), Some(sql)),
            msg(frame(front::EXECUTE, b"\0\0\0\0\0"), None),
        ]
    }

    fn msg(frame: Frame, sql: Option<&str>) -> Msg {
        Msg {
            frame,
            analysis: sql.map(|sql| analyze(sql, &FunctionCatalog::builtin())),
            fail: None,
            stmt: None,
        }
    }

    fn rules() -> Vec<locks::LockRule> {
        vec![toml::from_str("table = \"inventory\"\nkey = [\"sku_id\", \"warehouse_id\"]").unwrap()]
    }

    const READ: &str = "SELECT on_hand FROM inventory WHERE sku_id = $1 AND warehouse_id = $2";
    const WRITE: &str = "UPDATE inventory SET on_hand = 0 WHERE sku_id = $1 AND warehouse_id = $2";

    fn points(plans: &[(usize, Plan)]) -> Vec<(usize, Vec<&str>)> {
        plans
            .iter()
            .map(|(at, p)| (*at, p.keys.iter().map(String::as_str).collect()))
            .collect()
    }

    #[test]
    fn a_jdbc_batch_is_locked_right_after_its_begin_with_all_its_keys_sorted() {
        let msgs: Vec<Msg> = [
            run("BEGIN", &[]),
            run(READ, &["2", "1"]),
            run(WRITE, &["1", "1"]),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut held = HashSet::new();
        let plans = batch_locks(&rules(), &msgs, false, &mut held)
            .unwrap()
            .unwrap();
        assert_eq!(
            points(&plans),
            [(2, vec!["inventory|1|1", "inventory|2|1"])]
        );
        assert_eq!(held.len(), 2);
    }

    #[test]
    fn each_transaction_of_a_batch_takes_its_own_locks_and_commit_releases_them() {
        let msgs: Vec<Msg> = [
            run(WRITE, &["1", "1"]),
            run("COMMIT", &[]),
            run("BEGIN", &[]),
            run(WRITE, &["1", "1"]),
            run(WRITE, &["2", "1"]),
        ]
        .into_iter()
        .flatten()
        .collect();
        // Key 1|1 is held by the open transaction: not taken again before its COMMIT.
        let mut held = HashSet::from(["inventory|1|1".to_string()]);
        let plans = batch_locks(&rules(), &msgs, true, &mut held)
            .unwrap()
            .unwrap();
        assert_eq!(
            points(&plans),
            [(6, vec!["inventory|1|1", "inventory|2|1"])]
        );
    }

    #[test]
    fn reads_before_begin_take_no_lock_and_a_simple_query_mixing_both_is_left_alone() {
        let msgs: Vec<Msg> = [run(READ, &["1", "1"]), run("BEGIN", &[])]
            .into_iter()
            .flatten()
            .collect();
        let plans = batch_locks(&rules(), &msgs, false, &mut HashSet::new()).unwrap();
        assert!(plans.unwrap().is_empty());
        let sql = "BEGIN; UPDATE inventory SET on_hand = 0 WHERE sku_id = 1 AND warehouse_id = 1";
        let q = msg(
            frame(front::QUERY, format!("{sql}\0").as_bytes()),
            Some(sql),
        );
        assert!(batch_locks(&rules(), &[q], false, &mut HashSet::new())
            .unwrap()
            .is_none());
    }
}

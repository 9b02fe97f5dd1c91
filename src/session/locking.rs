//! Advisory locks around writes to lock tables (see `crate::locks`): computed per request from
//! its statements and bound parameters, sent on the statement's own backend just before it. An
//! autocommit request is wrapped in BEGIN … COMMIT so the lock lives exactly as long as the
//! statement's transaction; the client still sees only its own results, ending idle.

use std::collections::HashSet;

use super::relay::Session;
use super::track::Expect;
use super::SessionError;
use crate::locks::{self, Plan};
use crate::wire::msg::{self, Bind, Severity};

impl Session {
    pub(super) fn locks_configured(&self) -> bool {
        !self.ctx.config.load().locks.is_empty()
    }

    /// Forwards the pending request to the attached backend, preceded by the locks it needs.
    pub(super) fn forward_group(&mut self) -> Result<(), SessionError> {
        let mut wrapped = false;
        if self.locks_configured() && self.attached.as_ref().is_some_and(|a| !a.replica) {
            let in_txn = self
                .attached
                .as_ref()
                .is_some_and(|a| a.server.txn_status != b'I');
            match self.lock_plan(in_txn) {
                Ok(Some(plan)) => {
                    let sql = plan.sql();
                    if in_txn {
                        msg::query(&mut self.sout, &sql);
                    } else {
                        msg::query(&mut self.sout, &format!("BEGIN; {sql}"));
                        wrapped = true;
                    }
                    self.tracker.push(Expect::Lock);
                    self.lock_started = Some(std::time::Instant::now());
                    crate::metrics::locks_taken(plan.keys.len());
                    let pid = self.attached.as_ref().map_or(0, |a| a.server.pid);
                    self.ctx
                        .lock_registry
                        .waiting(self.client_id, &plan.keys, pid);
                    self.locks_held.extend(plan.keys);
                }
                Ok(None) => {}
                Err(rejected) => {
                    self.pending.clear();
                    msg::error_response(
                        &mut self.cout,
                        Severity::Error,
                        "55000",
                        &rejected.to_string(),
                    );
                    msg::ready_for_query(
                        &mut self.cout,
                        self.attached.as_ref().map_or(b'I', |a| a.server.txn_status),
                    );
                    return Ok(());
                }
            }
        }
        self.no_predicted_capture = wrapped;
        for m in std::mem::take(&mut self.pending) {
            self.forward(m)?;
        }
        self.no_predicted_capture = false;
        if wrapped {
            msg::query(&mut self.sout, "COMMIT");
            self.tracker.push(Expect::WrapCommit);
        }
        Ok(())
    }

    /// The locks the pending request needs (sorted, without those this transaction holds).
    fn lock_plan(&self, in_txn: bool) -> Result<Option<Plan>, locks::Rejected> {
        let cfg = self.ctx.config.load();
        let mut plan = Plan::default();
        let mut touched = false;
        for m in &self.pending {
            let Some(a) = m.analysis.as_ref() else {
                continue;
            };
            if a.txn_controls().next().is_some() {
                // BEGIN/COMMIT inside the request: the lock could not share the statement's
                // transaction. Such requests run unlocked (said in the log).
                tracing::debug!(
                    "request mixes transaction control with lock-table statements; not locked"
                );
                return Ok(None);
            }
            let params = match m.frame.tag {
                b'B' => Bind::decode(m.frame.body()).and_then(|b| b.params()),
                b'Q' => None,
                _ => continue, // a Parse's statement is locked at its Bind
            };
            locks::plan(&cfg.locks, a, params.as_ref(), in_txn, &mut plan)?;
            touched = true;
        }
        if plan.passed > 0 {
            crate::metrics::locks_undeterminable(plan.passed);
        }
        let held: &HashSet<String> = &self.locks_held;
        plan.finish(held);
        Ok((touched && !plan.keys.is_empty()).then_some(plan))
    }
}

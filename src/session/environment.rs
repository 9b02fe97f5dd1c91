//! The session's place among environments (SWITCH, blue/green) and the proxy's shutdown.

use tokio::sync::watch;

use super::relay::Session;
use crate::config::PoolMode;
use crate::context::Context;

/// The environment this session runs in. It exists because a SWITCH must wait for the
/// transactions in flight and every session must then follow to the new environment, and a
/// drain must close clients between transactions: this owns the session's side of both.
pub(super) struct Environment {
    /// Turns true when the proxy drains (shutdown, handover).
    pub drain: watch::Receiver<bool>,
    /// Held from a transaction's first message to its boundary, so SWITCH can wait for it.
    pub gate: Option<crate::switch::TxnGuard>,
    /// The switch epoch this session last saw: positions and backends of older ones belong
    /// to another environment.
    pub epoch: u64,
    /// Signals a SWITCH (its new epoch).
    pub switched: watch::Receiver<u64>,
}

impl Environment {
    pub fn new(ctx: &Context) -> Self {
        Environment {
            drain: ctx.drain.subscribe(),
            gate: None,
            epoch: ctx.envs.epoch(),
            switched: ctx.envs.subscribe(),
        }
    }

    /// A transaction starts: waits while a SWITCH runs and holds it off until the transaction
    /// ends. True when a SWITCH happened since this session last looked (its epoch is now the
    /// new one).
    pub async fn enter(&mut self, ctx: &Context) -> bool {
        self.gate = Some(ctx.envs.enter().await);
        let epoch = ctx.envs.epoch();
        if epoch == self.epoch {
            return false;
        }
        self.epoch = epoch;
        true
    }

    /// Between transactions: a SWITCH may happen while this client thinks.
    pub fn leave(&mut self) {
        self.gate = None;
        drop(self.switched.borrow_and_update());
    }

    /// The proxy is draining.
    pub fn draining(&self) -> bool {
        *self.drain.borrow()
    }
}

impl Session {
    /// Starts a transaction: waits while a SWITCH runs, then catches up with one that
    /// happened. False when this session must end (its backend cannot follow).
    pub(super) async fn enter(&mut self) -> bool {
        if !self.env.enter(&self.ctx).await {
            return true;
        }
        self.commit.forget_positions();
        if self.backend_elsewhere() {
            self.close_after_switch().await;
            return false;
        }
        true
    }

    /// A backend this session keeps (pinned, session pooling) is on a server that is no
    /// longer part of the active environment. An idle backend that merely was not given back
    /// yet is let go instead: nothing ties the client to it.
    pub(super) fn backend_elsewhere(&mut self) -> bool {
        let Some(att) = self.backend.attached.as_ref() else {
            return false;
        };
        let topo = self.ctx.topology.load();
        if topo.nodes.iter().any(|n| *n.addr == *att.node.addr) {
            return false;
        }
        if self.backend.pinned.is_some() || self.backend.mode != PoolMode::Transaction {
            return true;
        }
        self.backend.cancel.clear();
        if let Some(att) = self.backend.attached.take() {
            att.server.release();
        }
        false
    }

    /// Session state (temp tables, LISTEN, session settings…) cannot move to another
    /// environment: the client is told 57P01 between transactions and reconnects there.
    pub(super) async fn close_after_switch(&mut self) {
        let env = self.ctx.topology.load().environment.clone();
        tracing::info!(environment = %env, "closing a pinned session after SWITCH");
        self.client
            .fatal(
                crate::wire::sqlstate::ADMIN_SHUTDOWN,
                &format!(
                "terminating connection because pgsidecar switched to environment \"{env}\" and \
                 this session's state cannot move; reconnect to continue there"
            ),
            )
            .await;
    }
}

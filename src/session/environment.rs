//! The session's place among environments (SWITCH, blue/green) and the proxy's shutdown.

use tokio::sync::watch;

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
}

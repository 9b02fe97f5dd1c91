//! Redis command connections: one per session worker (and one for everything else), opened
//! lazily by whichever call needs it first, single server or cluster behind one type.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::Notify;

use super::L2Error;

#[derive(Clone)]
pub(super) enum Conn {
    Single(Box<ConnectionManager>),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Clone)]
pub(super) enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// The command connection, established in the background on first use (so a slow connect is
/// not cancelled by the per-call timeout and retried forever) and dropped when the breaker
/// opens (the probe then starts from a fresh connection).
pub(super) struct Slot {
    pub(super) target: Target,
    pub(super) conn: Mutex<Option<Conn>>,
    pub(super) connecting: AtomicBool,
    pub(super) connected: Notify,
    pub(super) connect_budget: Duration,
}

impl Slot {
    pub(super) async fn get(self: &Arc<Self>) -> Result<Conn, L2Error> {
        if let Some(c) = self.conn.lock().clone() {
            return Ok(c);
        }
        let notified = self.connected.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(c) = self.conn.lock().clone() {
            return Ok(c);
        }
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let slot = self.clone();
            tokio::spawn(async move {
                let res = tokio::time::timeout(slot.connect_budget, slot.connect()).await;
                match res {
                    Ok(Ok(c)) => *slot.conn.lock() = Some(c),
                    Ok(Err(e)) => tracing::debug!(error = %e, "cache: redis connect failed"),
                    Err(_) => tracing::debug!("cache: redis connect timed out"),
                }
                slot.connecting.store(false, Ordering::Release);
                slot.connected.notify_waiters();
            });
        }
        notified.await;
        self.conn.lock().clone().ok_or_else(|| {
            L2Error::Redis(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "not connected",
            )))
        })
    }

    pub(super) async fn connect(&self) -> RedisResult<Conn> {
        match &self.target {
            Target::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(self.connect_budget)
                    .set_number_of_retries(0);
                Ok(Conn::Single(Box::new(
                    ConnectionManager::new_with_config(client.clone(), cfg).await?,
                )))
            }
            Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }
}

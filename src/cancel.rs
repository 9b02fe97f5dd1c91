//! Cancel keys: each client gets the proxy's own (pid, secret); a CancelRequest carrying it is
//! forwarded to whichever backend is serving that client at that moment.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;

use crate::config::NodeAddr;

/// Where a client's work is running right now, if anywhere.
#[derive(Default)]
pub struct Slot {
    current: Mutex<Option<(Arc<NodeAddr>, i32, i32)>>,
}

impl Slot {
    pub fn set(&self, node: Arc<NodeAddr>, pid: i32, secret: i32) {
        *self.current.lock() = Some((node, pid, secret));
    }

    pub fn clear(&self) {
        *self.current.lock() = None;
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<(i32, i32), Arc<Slot>>>,
}

/// Removes the client's key when its session ends.
pub struct Registration<'a> {
    registry: &'a CancelRegistry,
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<Slot>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.slots.lock().remove(&(self.pid, self.secret));
    }
}

impl CancelRegistry {
    pub fn register(&self) -> Registration<'_> {
        let mut rng = rand::thread_rng();
        let slot = Arc::new(Slot::default());
        let mut slots = self.slots.lock();
        loop {
            let key = (rng.gen_range(1..i32::MAX), rng.gen::<i32>());
            if let std::collections::hash_map::Entry::Vacant(v) = slots.entry(key) {
                v.insert(slot.clone());
                return Registration {
                    registry: self,
                    pid: key.0,
                    secret: key.1,
                    slot,
                };
            }
        }
    }

    /// Forwards a cancel for the client holding (pid, secret). Unknown keys are ignored, as
    /// Postgres does, so the request reveals nothing.
    ///
    /// With pooling, the backend a client used a moment ago may already serve someone else, and
    /// a cancel that lands there would interrupt a stranger's statement. So the connection to
    /// the server is opened first and the client's current backend is looked up again right
    /// before the 16 bytes go out; a client that has meanwhile finished is not cancelled at all.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let Some(slot) = self.slots.lock().get(&(pid, secret)).cloned() else {
            return;
        };
        let Some((node, _, _)) = slot.current.lock().clone() else {
            return;
        };
        let mut conn = match crate::backend::connect_node(&node).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(node = %node.display(), error = %e, "forwarding cancel request failed");
                return;
            }
        };
        let current = slot.current.lock().clone();
        match current {
            Some((now, bpid, bsecret)) if Arc::ptr_eq(&now, &node) || *now == *node => {
                if let Err(e) = crate::backend::send_cancel(&mut conn, bpid, bsecret).await {
                    tracing::warn!(node = %node.display(), error = %e, "forwarding cancel request failed");
                }
            }
            _ => tracing::debug!("cancel request for a client with nothing running; ignored"),
        }
    }
}

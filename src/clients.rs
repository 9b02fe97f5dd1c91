//! The registry behind `SHOW CLIENTS`: who is connected, from where, since when.
//!
//! It lies below the shared `Context` (which holds one) and imports nothing above `listen`;
//! how an accepted login becomes an entry is the admin console's (`admin::clients`).
//!
//! Sessions register once they are accepted and leave when their guard drops, so an entry can
//! never outlive its session, whatever path the session ends by. A mutex-protected map is
//! enough: it is touched twice per connection and read only by the admin console.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

/// What a client is doing, as far as its session reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Relayed to the servers (the relay does not report finer states yet).
    Connected = 0,
    Idle = 1,
    Active = 2,
    /// Using the admin console.
    Admin = 3,
}

impl ClientState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Connected => "connected",
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Admin => "admin",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => ClientState::Idle,
            2 => ClientState::Active,
            3 => ClientState::Admin,
            _ => ClientState::Connected,
        }
    }
}

pub struct ClientInfo {
    pub id: u64,
    pub user: String,
    pub database: String,
    pub peer: crate::listen::Peer,
    pub application_name: String,
    pub connected_at: SystemTime,
    state: AtomicU8,
}

impl ClientInfo {
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }
}

#[derive(Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    clients: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

/// Keeps a client listed until it drops.
pub struct ClientGuard<'a> {
    registry: &'a ClientRegistry,
    info: Arc<ClientInfo>,
}

impl ClientGuard<'_> {
    /// The id SHOW CLIENTS lists this client under.
    pub fn id(&self) -> u64 {
        self.info.id
    }

    pub fn set_state(&self, state: ClientState) {
        self.info.state.store(state as u8, Ordering::Relaxed);
    }
}

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        self.registry.clients.lock().remove(&self.info.id);
    }
}

impl ClientRegistry {
    /// Lists a client until the returned guard drops (the admin console builds the entry from
    /// an accepted login: `admin::clients`).
    pub fn add(
        &self,
        user: String,
        database: String,
        peer: crate::listen::Peer,
        application_name: String,
        state: ClientState,
    ) -> ClientGuard<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(ClientInfo {
            id,
            user,
            database,
            peer,
            application_name,
            connected_at: SystemTime::now(),
            state: AtomicU8::new(state as u8),
        });
        self.clients.lock().insert(id, info.clone());
        ClientGuard {
            registry: self,
            info,
        }
    }

    /// Every listed client, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<ClientInfo>> {
        let mut all: Vec<_> = self.clients.lock().values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }

    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

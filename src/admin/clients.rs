//! How an accepted login is listed for `SHOW CLIENTS` (the registry itself is
//! [`crate::clients`], below the shared `Context`, which holds it).

use crate::clients::{ClientGuard, ClientRegistry, ClientState};
use crate::session::startup::Accepted;

impl ClientRegistry {
    /// Lists an accepted client; admin-console clients start in [`ClientState::Admin`].
    pub fn register(&self, accepted: &Accepted) -> ClientGuard<'_> {
        let application_name = accepted.application_name().to_string();
        let state = if accepted.database == super::DATABASE {
            ClientState::Admin
        } else {
            ClientState::Connected
        };
        self.add(
            accepted.user.clone(),
            accepted.database.clone(),
            accepted.peer,
            application_name,
            state,
        )
    }
}

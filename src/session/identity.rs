//! Who the client is: what it authenticated as and asked for at startup.

use crate::backend::Login;
use crate::route::Who;

/// The client's identity, fixed at startup (apart from the id the client list gives it). It
/// exists so that what routing rules, pools, quotas and the admin console know the client by
/// is kept apart from the session's changing state.
pub(super) struct Identity {
    pub user: String,
    pub database: String,
    /// From the startup packet (rules match on it; empty when not sent).
    pub application_name: String,
    /// The client's startup parameters.
    pub params: Vec<(String, String)>,
    /// ParameterStatus values for the client (a backend's, with the client's own overrides).
    pub server_params: Vec<(String, String)>,
    /// How backends for this client log in.
    pub login: Login,
    /// This client's id in SHOW CLIENTS, under which SHOW LOCKS lists its advisory keys.
    pub client_id: u64,
}

impl Identity {
    /// Its client id is set once the client list has one (`client_id`).
    pub fn new(
        user: String,
        database: String,
        params: Vec<(String, String)>,
        server_params: Vec<(String, String)>,
        login: Login,
    ) -> Self {
        let application_name = super::startup::application_name(&params).to_string();
        Identity {
            user,
            database,
            application_name,
            params,
            server_params,
            login,
            client_id: 0,
        }
    }

    pub fn who(&self) -> Who<'_> {
        Who {
            user: &self.user,
            database: &self.database,
            application_name: &self.application_name,
        }
    }
}

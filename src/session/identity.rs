//! Who the client is: what it authenticated as and asked for at startup.

use crate::backend::Login;

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

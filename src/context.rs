//! State shared by every session: configuration, pools, credentials, cancel keys.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::auth::{PassthroughCache, Secret, UserList};
use crate::backend::Login;
use crate::cancel::CancelRegistry;
use crate::config::{Config, NodeAddr};
use crate::pool::Pools;

pub struct Context {
    pub config: ArcSwap<Config>,
    pub pools: Arc<Pools>,
    pub primary: ArcSwap<NodeAddr>,
    /// Client secrets (`auth.users_file`).
    pub users: ArcSwapOption<UserList>,
    /// Backend secrets (`upstream.credentials_file`).
    pub backend_credentials: ArcSwapOption<UserList>,
    pub passthrough: PassthroughCache,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub cancels: CancelRegistry,
    /// Makes mock SCRAM exchanges for unknown users look like real ones.
    pub mock_secret: [u8; 32],
    pub clients: AtomicUsize,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Context {
    /// How to log in to backends as `user` when the client's own authentication gave the proxy
    /// nothing to reuse: the upstream URL's credentials, then the credentials file.
    pub fn configured_login(&self, user: &str) -> Option<Login> {
        let primary = self.primary.load();
        if primary.user.as_deref() == Some(user) {
            if let Some(pw) = &primary.password {
                return Some(Login::Password(pw.clone()));
            }
        }
        let creds = self.backend_credentials.load();
        match creds.as_ref().and_then(|c| c.get(user)) {
            Some(Secret::Plain(pw)) => Some(Login::Password(pw.clone())),
            Some(Secret::Md5(h)) => Some(Login::Md5Stored(h.clone())),
            _ => None,
        }
    }
}

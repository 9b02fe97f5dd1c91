//! What pgsidecar agrees to when a backend asks it to authenticate (`upstream.channel_binding`,
//! `upstream.require_auth`), checked on every request *before* anything is answered.
//!
//! Why here and not in the pool: every login (pools, passthrough probes, monitors, the mirror)
//! goes through `Server::startup`, so no path can forget the check.

use crate::auth::{BackendMethod, ChannelBindingMode, RequireAuth};
use crate::config::UpstreamConfig;

/// Why a server's authentication request is refused before anything is sent (the text after
/// "and " in `BackendError::AuthMethodRefused`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    #[error("upstream.require_auth = {0} does not allow it")]
    RequireAuth(RequireAuth),
    #[error("upstream.channel_binding = \"require\" allows only SCRAM-SHA-256-PLUS over TLS")]
    ChannelBinding,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    pub channel_binding: ChannelBindingMode,
    /// `None`: whatever the server asks (the passthrough rules still decide what proves a
    /// client's password).
    pub require_auth: Option<RequireAuth>,
}

impl AuthPolicy {
    /// From a configuration that passed `Config::problems` (an invalid `require_auth` is
    /// reported there and stops the start or reload, so it never gets here).
    pub fn from_config(upstream: &UpstreamConfig) -> AuthPolicy {
        AuthPolicy {
            channel_binding: upstream.channel_binding,
            require_auth: RequireAuth::parse(&upstream.require_auth).unwrap_or_default(),
        }
    }

    /// `Err(why)` when the server's request for `method` must be refused. SCRAM's channel
    /// binding is decided later, with the server's mechanism list (`auth::choose_mechanism`).
    pub fn check(&self, method: BackendMethod) -> Result<(), Refused> {
        if let Some(ra) = &self.require_auth {
            if !ra.allows(method) {
                return Err(Refused::RequireAuth(ra.clone()));
            }
        }
        if self.channel_binding == ChannelBindingMode::Require
            && method != BackendMethod::ScramSha256
        {
            return Err(Refused::ChannelBinding);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_auth_and_channel_binding_refuse_other_methods() {
        let open = AuthPolicy::default();
        for m in [
            BackendMethod::None,
            BackendMethod::Password,
            BackendMethod::Md5,
            BackendMethod::ScramSha256,
        ] {
            assert!(open.check(m).is_ok(), "{m:?}");
        }
        let scram_only = AuthPolicy {
            require_auth: RequireAuth::parse(&["scram-sha-256".into()]).unwrap(),
            ..Default::default()
        };
        assert!(scram_only.check(BackendMethod::ScramSha256).is_ok());
        let e = scram_only.check(BackendMethod::Md5).unwrap_err();
        assert!(
            e.to_string().contains("require_auth = [scram-sha-256]"),
            "{e}"
        );
        assert!(scram_only.check(BackendMethod::None).is_err());
        let bound = AuthPolicy {
            channel_binding: ChannelBindingMode::Require,
            ..Default::default()
        };
        assert!(bound.check(BackendMethod::ScramSha256).is_ok());
        assert!(bound
            .check(BackendMethod::Password)
            .unwrap_err()
            .to_string()
            .contains("require"));
        assert!(bound.check(BackendMethod::None).is_err());
    }
}

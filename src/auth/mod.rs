//! Client and backend authentication, as pure state machines.
//!
//! Nothing in here touches a socket: the handshake code feeds the bytes of
//! `SASLInitialResponse` / `SASLResponse` / `PasswordMessage` in and sends
//! whatever comes out. That keeps every protocol rule unit-testable and lets
//! the transport (plain TCP, TLS, tests) change without touching auth logic.
//!
//! Pieces:
//! - [`scram`]: SCRAM-SHA-256 server (clients → pgsidecar) and client
//!   (pgsidecar → backend), including pass-through of a client's `ClientKey`.
//! - [`md5`]: the legacy md5 challenge, both directions.
//! - [`userlist`]: PgBouncer-compatible `userlist.txt`.
//! - [`rules`]: hba-like rules choosing the method per user/database/address.
//! - [`passthrough`]: cache of cleartext passwords the primary accepted.
//!
//! [`plan_password_auth`] encodes Postgres' decision table for "which
//! challenge do I send this user", so the handshake does not re-derive it.
//!
//! # Reporting errors to clients
//! Postgres deliberately tells a failing client very little, so that it
//! cannot probe which users exist or how they are stored. Follow
//! [`AuthError::sqlstate`]: for `28P01` send only
//! `password authentication failed for user "X"` and log the error itself;
//! protocol errors (`08P01`, `0A000`) and `28000` may be sent verbatim.
//! No message in [`AuthError`] contains a password, hash, key or salt.

pub mod channel_binding;
pub mod md5;
pub mod passthrough;
pub mod require_auth;
pub mod rules;
pub mod scram;
pub mod userlist;

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

pub use self::channel_binding::{ChannelBindingMode, Gs2};
pub use self::md5::{md5_response, md5_stored, Md5Challenge};
pub use self::passthrough::{BackendLogin, PassthroughCache, PassthroughCheck, PassthroughKey};
pub use self::require_auth::{BackendMethod, RequireAuth};
pub use self::rules::{select_method, select_rule, validate_rules, AuthMethod, AuthRule};
pub use self::scram::{
    choose_mechanism, derive_keys, make_verifier, Credentials, Mechanism, ScramClient, ScramKeys,
    ScramServer, ScramSuccess, ScramVerifier,
};
pub use self::userlist::{Secret, UserList};

/// Result alias for this module.
pub type Result<T, E = AuthError> = std::result::Result<T, E>;

/// Everything that can go wrong while authenticating.
///
/// Messages are written for the person who has to fix things (an operator
/// reading logs, or a client developer for protocol errors) and never
/// include secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    // ---- client → pgsidecar ------------------------------------------------
    /// Wrong password / proof, unknown user (mock exchange), or a secret that
    /// cannot be used with the chosen method. Deliberately indistinguishable.
    #[error("password authentication failed")]
    PasswordMismatch,

    #[error("malformed SCRAM message from client: {0}")]
    MalformedScramMessage(&'static str),

    #[error(
        "client requested SCRAM channel binding (SCRAM-SHA-256-PLUS), which pgsidecar offers \
         only over TLS (listen.tls_cert); connect with sslmode=require, or \
         channel_binding=prefer"
    )]
    ChannelBindingNotSupported,

    /// Malformed negotiation (mechanism and gs2 flag disagree, unknown binding type): 08P01.
    #[error("malformed SCRAM message: {0}")]
    ChannelBindingNegotiation(&'static str),

    /// `y` after `-PLUS` was offered: someone removed the offer on the way (RFC 5802 §6).
    #[error(
        "SCRAM channel binding negotiation error: the client supports SCRAM channel binding but \
         thinks the server does not; this server does support it (was the SCRAM-SHA-256-PLUS \
         offer removed on the way?)"
    )]
    ChannelBindingDowngrade,

    #[error(
        "SCRAM channel binding check failed: the client was bound to another server \
         certificate (a TLS relay in the middle?)"
    )]
    ChannelBindingCheckFailed,

    #[error("client used a SCRAM authorization identity (authzid), which is not supported")]
    AuthzidNotSupported,

    #[error("client requires a SCRAM extension (\"m=\"), which is not supported")]
    UnsupportedScramExtension,

    #[error("client selected SASL mechanism \"{0}\", but pgsidecar offers only SCRAM-SHA-256")]
    UnsupportedSaslMechanism(String),

    #[error("SCRAM message received out of order (the exchange was already finished or failed)")]
    ScramOutOfOrder,

    // ---- secrets and configuration -----------------------------------------
    #[error(
        "invalid SCRAM verifier: {0}; expected \
         SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, exactly as stored in \
         pg_authid.rolpassword"
    )]
    InvalidScramVerifier(&'static str),

    #[error("the user's secret is a SCRAM verifier, which cannot be used for md5 authentication")]
    Md5WithScramSecret,

    #[error("the stored secret is not an md5 hash (\"md5\" followed by 32 lowercase hex digits)")]
    NotAnMd5Secret,

    #[error("cannot read users file {}: {source}", path.display())]
    UserlistIo { path: PathBuf, source: io::Error },

    #[error("users file line {line}: {message}")]
    UserlistSyntax {
        line: usize,
        message: userlist::LineError,
    },

    #[error("invalid auth rule: {0}")]
    InvalidRule(String),

    #[error(
        "no pgsidecar auth rule for host \"{host}\", user \"{user}\", database \"{database}\""
    )]
    NoMatchingRule {
        host: IpAddr,
        user: String,
        database: String,
    },

    #[error("pgsidecar auth rules reject connection for host \"{host}\", user \"{user}\", database \"{database}\"")]
    RejectedByRule {
        host: IpAddr,
        user: String,
        database: String,
    },

    // ---- pgsidecar → backend -----------------------------------------------
    #[error(
        "backend offers no authentication mechanism pgsidecar supports (offered: {offered}); \
         pgsidecar needs SCRAM-SHA-256"
    )]
    NoSupportedMechanism { offered: String },

    #[error(
        "backend offers only SCRAM-SHA-256-PLUS (channel binding), which needs TLS to the \
         backend (upstream.tls) and upstream.channel_binding other than \"disable\""
    )]
    BackendRequiresChannelBinding,

    #[error("upstream.channel_binding = \"require\", but {0}")]
    ChannelBindingRequired(&'static str),

    #[error("cannot bind SCRAM to the backend's certificate: {0}")]
    BackendCertificateNotBindable(channel_binding::ChannelBindingError),

    #[error(
        "backend's SCRAM salt or iteration count for this user differs from the users file \
         verifier, so the client's key cannot be passed through; put the exact \
         pg_authid.rolpassword of the backend in the users file (was the password changed?)"
    )]
    BackendVerifierMismatch,

    #[error(
        "backend asked for {0} SCRAM iterations, more than the limit of {max}; refusing to spend \
         that much CPU (is this really the configured backend?)",
        max = scram::MAX_BACKEND_ITERATIONS
    )]
    BackendIterationsTooHigh(u32),

    #[error("malformed SCRAM message from backend: {0}")]
    MalformedBackendScramMessage(&'static str),

    #[error(
        "backend failed to prove it knows the user's password (SCRAM server signature mismatch); \
         possible impersonation of the backend"
    )]
    ServerSignatureMismatch,

    #[error("backend rejected SCRAM authentication: {0}")]
    BackendScramError(String),
}

impl crate::error::ClientFacing for AuthError {
    /// SQLSTATE to use when this error ends a client's handshake.
    fn sqlstate(&self) -> &str {
        use AuthError::*;
        match self {
            PasswordMismatch | Md5WithScramSecret | NotAnMd5Secret => "28P01",
            NoMatchingRule { .. } | RejectedByRule { .. } => "28000",
            MalformedScramMessage(_)
            | ChannelBindingNotSupported
            | ChannelBindingNegotiation(_)
            | ScramOutOfOrder => "08P01",
            // As Postgres: the exchange was well-formed, the binding is what failed.
            ChannelBindingDowngrade | ChannelBindingCheckFailed => "28000",
            AuthzidNotSupported | UnsupportedScramExtension | UnsupportedSaslMechanism(_) => {
                "0A000"
            }
            // Configuration problems: the client cannot fix them.
            InvalidScramVerifier(_)
            | UserlistIo { .. }
            | UserlistSyntax { .. }
            | InvalidRule(_) => "XX000",
            // Backend login failures: reported like a failed backend connection.
            NoSupportedMechanism { .. }
            | BackendRequiresChannelBinding
            | ChannelBindingRequired(_)
            | BackendCertificateNotBindable(_)
            | BackendVerifierMismatch
            | BackendIterationsTooHigh(_)
            | MalformedBackendScramMessage(_)
            | ServerSignatureMismatch
            | BackendScramError(_) => "08006",
        }
    }

    fn metric_label(&self) -> &'static str {
        match self.sqlstate() {
            "28P01" => "auth_password",
            "28000" => "auth_refused",
            "08P01" => "auth_protocol",
            "0A000" => "auth_unsupported",
            "XX000" => "auth_config",
            _ => "auth_backend",
        }
    }
}

/// The challenge to send a client whose rule says `scram-sha-256` or `md5`.
// Built once per login; boxing the SCRAM state would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum PasswordChallenge {
    /// Send `AuthenticationSASL` offering only `SCRAM-SHA-256`.
    Scram(ScramServer),
    /// Send `AuthenticationMD5Password` with `challenge.salt()`, then call
    /// `challenge.verify(&stored_md5, response)`.
    Md5 {
        challenge: Md5Challenge,
        stored_md5: String,
    },
}

/// Picks the exchange for a password method, mirroring Postgres'
/// `CheckPWChallengeAuth`:
///
/// | secret          | `md5` rule       | `scram-sha-256` rule |
/// |-----------------|------------------|----------------------|
/// | SCRAM verifier  | SCRAM            | SCRAM                |
/// | md5 hash        | md5              | mock SCRAM (fails)   |
/// | plaintext       | md5              | SCRAM                |
/// | unknown user    | mock SCRAM       | mock SCRAM           |
///
/// The mock exchanges look exactly like real ones and fail only at the end,
/// so a client cannot learn whether a user exists or how its secret is
/// stored. (Unknown users get SCRAM under `md5` too, as in Postgres ≥ 14
/// whose `password_encryption` defaults to `scram-sha-256`.) `mock_secret`
/// is described at [`ScramServer::new_mock`].
///
/// Returns `None` for methods without a password challenge (trust, reject,
/// passthrough).
pub fn plan_password_auth(
    method: AuthMethod,
    user: &str,
    users: &UserList,
    mock_secret: &[u8],
) -> Option<PasswordChallenge> {
    let md5_allowed = match method {
        AuthMethod::Md5 => true,
        AuthMethod::ScramSha256 => false,
        AuthMethod::Trust | AuthMethod::Passthrough | AuthMethod::Reject => return None,
    };
    let mock = || PasswordChallenge::Scram(ScramServer::new_mock(user, mock_secret));
    let plan = match users.get(user) {
        None => mock(),
        Some(Secret::Scram(verifier)) => {
            PasswordChallenge::Scram(ScramServer::new(verifier.clone()))
        }
        Some(Secret::Md5(stored)) if md5_allowed => PasswordChallenge::Md5 {
            challenge: Md5Challenge::new(),
            stored_md5: stored.clone(),
        },
        Some(Secret::Md5(_)) => mock(),
        Some(Secret::Plain(password)) if md5_allowed => PasswordChallenge::Md5 {
            challenge: Md5Challenge::new(),
            stored_md5: md5_stored(user, password.as_bytes()),
        },
        Some(Secret::Plain(password)) => match users.scram_verifier(user) {
            Some(verifier) => PasswordChallenge::Scram(ScramServer::new_with_password(
                verifier.clone(),
                password.clone(),
            )),
            None => mock(), // unreachable: UserList derives one for every plaintext user
        },
    };
    Some(plan)
}

/// The key of the mock exchanges' salts ([`ScramServer::new_mock`]): derived from the users
/// file's contents when there is one, so that an unknown user's salt is the same after a
/// restart and on every instance sharing that file (a salt that changes across restarts
/// while real users' do not tells an attacker which users exist), and unpredictable to whoever
/// cannot read the file (it holds the secrets). Random without a users file (no user list, so
/// no mock exchange) or when it cannot be read.
pub fn mock_secret(users_file: Option<&std::path::Path>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    if let Some(bytes) = users_file.and_then(|p| std::fs::read(p).ok()) {
        let mut h = Sha256::new();
        h.update(b"pgsidecar mock scram secret\0");
        h.update(&bytes);
        return h.finalize().into();
    }
    let mut secret = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut secret);
    secret
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ClientFacing;

    #[test]
    fn mock_salts_are_stable_across_restarts_and_instances_sharing_a_users_file() {
        let dir = std::env::temp_dir().join(format!("pgsidecar-mock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.txt"), dir.join("b.txt"));
        std::fs::write(&a, "\"app\" \"SCRAM-SHA-256$4096:...\"\n").unwrap();
        std::fs::write(&b, "\"app\" \"other secret\"\n").unwrap();
        let salt = |secret: [u8; 32]| match plan_password_auth(
            AuthMethod::ScramSha256,
            "nobody",
            &UserList::default(),
            &secret,
        ) {
            Some(PasswordChallenge::Scram(mut s)) => {
                s.select_mechanism(b"SCRAM-SHA-256").unwrap();
                let first = s.handle_client_first(b"n,,n=,r=clientnonce").unwrap();
                let first = String::from_utf8(first).unwrap();
                first
                    .split(',')
                    .find(|p| p.starts_with("s="))
                    .unwrap()
                    .to_owned()
            }
            _ => panic!("no mock exchange"),
        };
        assert_eq!(
            mock_secret(Some(&a)),
            mock_secret(Some(&a)),
            "same file, same key"
        );
        assert_eq!(salt(mock_secret(Some(&a))), salt(mock_secret(Some(&a))));
        assert_ne!(mock_secret(Some(&a)), mock_secret(Some(&b)));
        assert_ne!(
            mock_secret(None),
            mock_secret(None),
            "without a file: random"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    const MOCK: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn users() -> UserList {
        let verifier = make_verifier(b"s3cret", b"saltsaltsaltsalt", 4096);
        let text = format!(
            "\"scram\" \"{verifier}\"\n\"md5user\" \"{}\"\n\"plain\" \"pw\"\n",
            md5_stored("md5user", b"pw")
        );
        UserList::parse(&text).expect("valid userlist")
    }

    fn kind(plan: Option<PasswordChallenge>) -> &'static str {
        match plan {
            None => "none",
            Some(PasswordChallenge::Md5 { .. }) => "md5",
            Some(PasswordChallenge::Scram(s)) if s.is_mock() => "mock-scram",
            Some(PasswordChallenge::Scram(_)) => "scram",
        }
    }

    #[test]
    fn password_method_plan_matches_postgres_decision_table() {
        let u = users();
        let plan = |m, user| kind(plan_password_auth(m, user, &u, MOCK));
        use AuthMethod::*;
        assert_eq!(plan(Md5, "scram"), "scram");
        assert_eq!(plan(ScramSha256, "scram"), "scram");
        assert_eq!(plan(Md5, "md5user"), "md5");
        assert_eq!(plan(ScramSha256, "md5user"), "mock-scram");
        assert_eq!(plan(Md5, "plain"), "md5");
        assert_eq!(plan(ScramSha256, "plain"), "scram");
        assert_eq!(plan(Md5, "nobody"), "mock-scram");
        assert_eq!(plan(ScramSha256, "nobody"), "mock-scram");
        assert_eq!(plan(Trust, "scram"), "none");
        assert_eq!(plan(Passthrough, "scram"), "none");
        assert_eq!(plan(Reject, "scram"), "none");
    }

    #[test]
    fn plaintext_user_under_md5_rule_gets_md5_of_password_and_user() {
        let u = users();
        let Some(PasswordChallenge::Md5 {
            challenge,
            stored_md5,
        }) = plan_password_auth(AuthMethod::Md5, "plain", &u, MOCK)
        else {
            panic!("expected md5 challenge");
        };
        let response = md5_response("plain", b"pw", challenge.salt()).expect("md5 response");
        challenge.verify(&stored_md5, &response).expect("accepted");
    }

    #[test]
    fn scram_success_yields_the_right_backend_credentials() {
        let u = users();
        let login = |user: &str, password: &str| {
            let Some(PasswordChallenge::Scram(mut server)) =
                plan_password_auth(AuthMethod::ScramSha256, user, &u, MOCK)
            else {
                panic!("expected SCRAM");
            };
            let mut client = ScramClient::new(Credentials::Password(password.as_bytes().to_vec()));
            let first = server
                .handle_client_first(&client.client_first())
                .expect("first");
            let fin = client.handle_server_first(&first).expect("final");
            let success = server.handle_client_final(&fin).expect("authenticated");
            server.backend_credentials(&success)
        };
        // Verifier from pg_authid: pass the ClientKey through, no password.
        assert!(matches!(
            login("scram", "s3cret"),
            Some(Credentials::Keys { iterations: 4096, ref salt, .. }) if salt == b"saltsaltsaltsalt"
        ));
        // Plaintext entry: our verifier's salt is not the backend's; use the password.
        assert!(matches!(login("plain", "pw"), Some(Credentials::Password(p)) if p == b"pw"));
    }

    #[test]
    fn error_messages_map_to_postgres_sqlstates() {
        assert_eq!(AuthError::PasswordMismatch.sqlstate(), "28P01");
        let no_rule = AuthError::NoMatchingRule {
            host: "10.1.2.3".parse().expect("ip"),
            user: "bob".into(),
            database: "app".into(),
        };
        assert_eq!(no_rule.sqlstate(), "28000");
        assert_eq!(
            no_rule.to_string(),
            "no pgsidecar auth rule for host \"10.1.2.3\", user \"bob\", database \"app\""
        );
        assert_eq!(AuthError::MalformedScramMessage("x").sqlstate(), "08P01");
    }
}

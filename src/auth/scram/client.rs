//! SCRAM-SHA-256 client: logs pgsidecar in to a backend.
//!
//! Why not `postgres_protocol::authentication::sasl::ScramSha256`? It only
//! accepts a password. Pass-through needs to log in with a `ClientKey`
//! recovered from the client's own proof (plus the verifier's `ServerKey`),
//! without ever knowing the password — as PgBouncer does — and it needs to
//! reuse cached keys instead of re-running PBKDF2 per backend connection.
//! Tests check this client emits byte-identical messages to that one.

use std::fmt;
use std::mem;

use base64::Engine as _;
use subtle::ConstantTimeEq;

use super::{
    attribute, derive_keys, hmac, is_valid_nonce, random_nonce, sha256, xor, ScramKeys, BASE64,
    SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use crate::auth::channel_binding::{ChannelBindingError, ChannelBindingMode, Gs2};
use crate::auth::{AuthError, Result};

/// Highest iteration count we run PBKDF2 for with a password. The count
/// comes from the backend, so an impersonator could otherwise make us burn
/// CPU at will; 100 000 (≈25× Postgres' default) is the cap tokio-postgres
/// and pgjdbc use. Does not apply to `Credentials::Keys` (no PBKDF2 there).
pub const MAX_BACKEND_ITERATIONS: u32 = 100_000;

/// A SASL mechanism pgsidecar can use towards a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    ScramSha256,
    /// With `tls-server-end-point` channel binding.
    ScramSha256Plus,
}

impl Mechanism {
    /// Name for `SASLInitialResponse`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => SCRAM_SHA_256,
            Mechanism::ScramSha256Plus => SCRAM_SHA_256_PLUS,
        }
    }
}

/// Picks the mechanism and gs2 header from the backend's `AuthenticationSASL` list, as libpq
/// does. `tls`: `None` on a plain link, else the end-point hash of the certificate the server
/// presented (or why there is none).
///
/// - `-PLUS` offered, TLS, binding not disabled: bind (`p=tls-server-end-point`). With
///   `prefer`, a certificate that allows no binding (see [`tls_server_end_point`]) falls back
///   to `n,,` (a `y,,` would be refused: the server did offer binding).
/// - Otherwise `SCRAM-SHA-256`: `y,,` over TLS (we could bind; the server did not offer it, so
///   a server that does support it can detect a stripped offer), `n,,` without TLS or with
///   binding disabled. `require` refuses both.
///
/// [`tls_server_end_point`]: crate::auth::channel_binding::tls_server_end_point
pub fn choose_mechanism(
    server_mechanisms: &[&str],
    mode: ChannelBindingMode,
    tls: Option<std::result::Result<Vec<u8>, ChannelBindingError>>,
) -> Result<(Mechanism, Gs2)> {
    let plus = server_mechanisms.contains(&SCRAM_SHA_256_PLUS);
    let plain = server_mechanisms.contains(&SCRAM_SHA_256);
    if plus && mode != ChannelBindingMode::Disable {
        match tls {
            Some(Ok(hash)) => {
                return Ok((Mechanism::ScramSha256Plus, Gs2::TlsServerEndPoint(hash)))
            }
            Some(Err(e)) if mode == ChannelBindingMode::Require || !plain => {
                return Err(AuthError::BackendCertificateNotBindable(e))
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "SCRAM without channel binding to this backend");
                return Ok((Mechanism::ScramSha256, Gs2::NotSupported));
            }
            None => {}
        }
    }
    if mode == ChannelBindingMode::Require {
        return Err(AuthError::ChannelBindingRequired(if tls.is_none() {
            "the connection to the server does not use TLS"
        } else if plain {
            "the server does not offer SCRAM-SHA-256-PLUS"
        } else {
            "the server offers no SCRAM mechanism"
        }));
    }
    if plain {
        let gs2 = match (mode, tls) {
            (ChannelBindingMode::Disable, _) | (_, None) => Gs2::NotSupported,
            (_, Some(_)) => Gs2::NotOffered,
        };
        Ok((Mechanism::ScramSha256, gs2))
    } else if plus {
        Err(AuthError::BackendRequiresChannelBinding)
    } else {
        let offered: Vec<String> = server_mechanisms
            .iter()
            .take(8)
            .map(|m| m.chars().filter(char::is_ascii_graphic).take(40).collect())
            .collect();
        Err(AuthError::NoSupportedMechanism {
            offered: offered.join(", "),
        })
    }
}

/// What pgsidecar proves its identity with.
#[derive(Clone)]
pub enum Credentials {
    /// Runs PBKDF2 in [`ScramClient::handle_server_first`].
    Password(Vec<u8>),
    /// Pre-derived keys, valid only for this salt and iteration count: from
    /// [`super::ScramVerifier::passthrough_credentials`] (pass-through), or
    /// from a cache filled by [`ScramClient::derived_credentials`] /
    /// [`derive_keys`].
    Keys {
        client_key: [u8; 32],
        server_key: [u8; 32],
        salt: Vec<u8>,
        iterations: u32,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Password(_) => f.write_str("Credentials::Password(<redacted>)"),
            Credentials::Keys { iterations, .. } => {
                write!(
                    f,
                    "Credentials::Keys {{ iterations: {iterations}, <redacted> }}"
                )
            }
        }
    }
}

/// One SCRAM login to a backend. Owns all its data, so it can be moved into
/// `spawn_blocking` for the PBKDF2 step.
pub struct ScramClient {
    credentials: Credentials,
    client_nonce: String,
    /// Channel binding to the server's TLS certificate, if any; its header opens
    /// client-first and its data goes into `c=` of client-final.
    gs2: Gs2,
    state: State,
}

enum State {
    AwaitingServerFirst,
    AwaitingServerFinal {
        server_signature: [u8; 32],
        learned: Credentials,
    },
    Authenticated {
        learned: Credentials,
    },
    Finished,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    pub fn new(credentials: Credentials) -> ScramClient {
        ScramClient::with_nonce(credentials, random_nonce())
    }

    /// Fixed nonce, for tests (the nonce must be printable ASCII, no ',').
    pub(in crate::auth) fn with_nonce(credentials: Credentials, client_nonce: String) -> Self {
        ScramClient {
            credentials,
            client_nonce,
            gs2: Gs2::NotSupported,
            state: State::AwaitingServerFirst,
        }
    }

    /// Sets the gs2 header (from [`choose_mechanism`]); `n,,` unless called.
    pub fn with_channel_binding(mut self, gs2: Gs2) -> Self {
        self.gs2 = gs2;
        self
    }

    /// client-first-message for `SASLInitialResponse`. The username is left
    /// empty: Postgres takes it from the startup packet.
    pub fn client_first(&self) -> Vec<u8> {
        format!("{}n=,r={}", self.gs2.header(), self.client_nonce).into_bytes()
    }

    /// Takes `AuthenticationSASLContinue` data; returns client-final for
    /// `SASLResponse`. With `Credentials::Password` this runs PBKDF2
    /// (milliseconds): call it from a blocking thread, or use cached keys.
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>> {
        if !matches!(
            mem::replace(&mut self.state, State::Finished),
            State::AwaitingServerFirst
        ) {
            return Err(AuthError::ScramOutOfOrder);
        }
        let malformed = AuthError::MalformedBackendScramMessage;
        let msg = std::str::from_utf8(msg).map_err(|_| malformed("not valid UTF-8"))?;
        let mut fields = msg.split(',');
        let first = fields.next();
        if attribute(first, 'm').is_some() {
            return Err(malformed("server requires an unsupported SCRAM extension"));
        }
        let nonce = attribute(first, 'r').ok_or(malformed("expected nonce \"r=\""))?;
        if !is_valid_nonce(nonce)
            || nonce.len() <= self.client_nonce.len()
            || !nonce.starts_with(&self.client_nonce)
        {
            return Err(malformed("server nonce does not extend the client nonce"));
        }
        let salt = attribute(fields.next(), 's').ok_or(malformed("expected salt \"s=\""))?;
        let salt = BASE64
            .decode(salt)
            .map_err(|_| malformed("salt is not valid base64"))?;
        let iterations = attribute(fields.next(), 'i')
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|&i| i > 0)
            .ok_or(malformed("expected a positive iteration count \"i=\""))?;
        // Anything after is an optional extension, which we may ignore.

        let keys = match &self.credentials {
            Credentials::Password(password) => {
                if iterations > MAX_BACKEND_ITERATIONS {
                    return Err(AuthError::BackendIterationsTooHigh(iterations));
                }
                derive_keys(password, &salt, iterations)
            }
            Credentials::Keys {
                client_key,
                server_key,
                salt: s,
                iterations: i,
            } => {
                if *s != salt || *i != iterations {
                    return Err(AuthError::BackendVerifierMismatch);
                }
                ScramKeys {
                    client_key: *client_key,
                    server_key: *server_key,
                }
            }
        };

        // c=biws is base64("n,,"); with binding, the certificate hash follows the header, so
        // the proof below covers the certificate this TLS connection presented.
        let without_proof = format!("c={},r={nonce}", self.gs2.c_attribute());
        let auth_message = format!("n=,r={},{msg},{without_proof}", self.client_nonce);
        let stored_key = sha256(&keys.client_key);
        let proof = xor(
            &keys.client_key,
            &hmac(&stored_key, &[auth_message.as_bytes()]),
        );
        self.state = State::AwaitingServerFinal {
            server_signature: hmac(&keys.server_key, &[auth_message.as_bytes()]),
            learned: Credentials::Keys {
                client_key: keys.client_key,
                server_key: keys.server_key,
                salt,
                iterations,
            },
        };
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Takes `AuthenticationSASLFinal` data and checks the backend proved it
    /// knows the verifier. Only after `Ok` may the login be considered done
    /// (the backend then sends `AuthenticationOk`).
    pub fn handle_server_final(&mut self, msg: &[u8]) -> Result<()> {
        let State::AwaitingServerFinal {
            server_signature,
            learned,
        } = mem::replace(&mut self.state, State::Finished)
        else {
            return Err(AuthError::ScramOutOfOrder);
        };
        let malformed = AuthError::MalformedBackendScramMessage;
        let msg = std::str::from_utf8(msg).map_err(|_| malformed("not valid UTF-8"))?;
        let first = msg.split(',').next();
        if let Some(error) = attribute(first, 'e') {
            let error = error
                .chars()
                .filter(char::is_ascii_graphic)
                .take(100)
                .collect();
            return Err(AuthError::BackendScramError(error));
        }
        let signature = attribute(first, 'v').ok_or(malformed("expected \"v=\" or \"e=\""))?;
        let signature = BASE64
            .decode(signature)
            .map_err(|_| malformed("\"v=\" is not base64"))?;
        if signature.len() != 32 || !bool::from(signature.ct_eq(&server_signature)) {
            return Err(AuthError::ServerSignatureMismatch);
        }
        self.state = State::Authenticated { learned };
        Ok(())
    }

    /// After a successful login: keys for this backend's salt and iteration
    /// count, to cache per (backend, user) so later logins skip PBKDF2. If
    /// the password changes the cached keys fail with
    /// [`AuthError::BackendVerifierMismatch`] (new salt): drop them and
    /// log in with the password again.
    pub fn derived_credentials(&self) -> Option<Credentials> {
        match &self.state {
            State::Authenticated { learned } => Some(learned.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::{ScramServer, ScramVerifier};
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn backend(password: &[u8]) -> ScramVerifier {
        ScramVerifier::from_password(password, b"backend-salt-16b", 4096)
    }

    /// Runs `client` against a server holding `verifier`.
    fn login(client: &mut ScramClient, verifier: &ScramVerifier) -> Result<()> {
        let mut server = ScramServer::new(verifier.clone());
        let server_first = server.handle_client_first(&client.client_first())?;
        let client_final = client.handle_server_first(&server_first)?;
        let success = server.handle_client_final(&client_final)?;
        client.handle_server_final(&success.server_final)
    }

    #[test]
    fn client_with_password_logs_in_to_our_server() {
        let mut client = ScramClient::new(Credentials::Password(b"pencil".to_vec()));
        login(&mut client, &backend(b"pencil")).expect("login");
        let Some(Credentials::Keys {
            salt, iterations, ..
        }) = client.derived_credentials()
        else {
            panic!("keys learned after login");
        };
        assert_eq!(
            (salt.as_slice(), iterations),
            (&b"backend-salt-16b"[..], 4096)
        );
    }

    #[test]
    fn rfc7677_client_messages_match_test_vector() {
        let mut client = ScramClient::with_nonce(
            Credentials::Password(b"pencil".to_vec()),
            "rOprNGfwEbeRWgbNEkqO".into(),
        );
        assert_eq!(client.client_first(), b"n,,n=,r=rOprNGfwEbeRWgbNEkqO");
        // The RFC's username is "user"; ours is empty, so the proof differs
        // from the RFC's, but the server signature check must still pass.
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                             s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = client.handle_server_first(server_first).expect("final");
        assert!(fin.starts_with(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p="));
    }

    #[test]
    fn client_messages_are_byte_identical_to_tokio_postgres_client() {
        let mut driver = ScramSha256::new(b"pencil", ChannelBinding::unsupported());
        let driver_first = driver.message().to_vec();
        let nonce =
            std::str::from_utf8(&driver_first).expect("utf8")["n,,n=,r=".len()..].to_owned();
        let mut ours =
            ScramClient::with_nonce(Credentials::Password(b"pencil".to_vec()), nonce.clone());
        assert_eq!(ours.client_first(), driver_first);

        let server_first = format!("r={nonce}SRVNONCE,s={},i=4096", BASE64.encode(b"somesalt"));
        driver.update(server_first.as_bytes()).expect("driver");
        let ours_final = ours
            .handle_server_first(server_first.as_bytes())
            .expect("ours");
        assert_eq!(ours_final, driver.message());
    }

    #[test]
    fn keys_credentials_produce_identical_client_final_to_password() {
        let salt = b"0123456789abcdef".to_vec();
        let keys = derive_keys(b"pencil", &salt, 4096);
        let creds = Credentials::Keys {
            client_key: keys.client_key,
            server_key: keys.server_key,
            salt: salt.clone(),
            iterations: 4096,
        };
        let server_first = format!("r=NONCEsrv,s={},i=4096", BASE64.encode(&salt));
        let mut with_pw =
            ScramClient::with_nonce(Credentials::Password(b"pencil".to_vec()), "NONCE".into());
        let mut with_keys = ScramClient::with_nonce(creds, "NONCE".into());
        assert_eq!(
            with_pw
                .handle_server_first(server_first.as_bytes())
                .expect("pw"),
            with_keys
                .handle_server_first(server_first.as_bytes())
                .expect("keys"),
        );
    }

    #[test]
    fn client_key_recovered_from_proof_logs_in_without_password() {
        // The users file and the backend hold the same verifier.
        let verifier = backend(b"only the client knows this");
        // 1. A client authenticates to pgsidecar.
        let mut app = ScramClient::new(Credentials::Password(
            b"only the client knows this".to_vec(),
        ));
        let mut proxy_side = ScramServer::new(verifier.clone());
        let first = proxy_side
            .handle_client_first(&app.client_first())
            .expect("first");
        let fin = app.handle_server_first(&first).expect("final");
        let success = proxy_side
            .handle_client_final(&fin)
            .expect("client authenticated");
        app.handle_server_final(&success.server_final)
            .expect("app trusts proxy");
        // 2. pgsidecar logs in to the backend with what it learned: no password.
        let mut proxy_client =
            ScramClient::new(verifier.passthrough_credentials(success.client_key));
        login(&mut proxy_client, &verifier).expect("backend login via pass-through");
    }

    #[test]
    fn passthrough_to_backend_with_other_salt_is_a_clear_error() {
        let users_file = ScramVerifier::from_password(b"pw", b"salt-in-users-file", 4096);
        let keys = derive_keys(b"pw", b"salt-in-users-file", 4096);
        let mut client = ScramClient::new(users_file.passthrough_credentials(keys.client_key));
        let err = login(&mut client, &backend(b"pw")).expect_err("salt differs");
        assert!(matches!(err, AuthError::BackendVerifierMismatch), "{err:?}");
        assert!(err.to_string().contains("pg_authid.rolpassword"), "{err}");
    }

    #[test]
    fn backend_without_the_server_key_is_rejected() {
        let verifier = backend(b"pw");
        let mut client = ScramClient::new(Credentials::Password(b"pw".to_vec()));
        let mut server = ScramServer::new(verifier);
        let first = server
            .handle_client_first(&client.client_first())
            .expect("first");
        client.handle_server_first(&first).expect("final");
        // An impersonator accepts anything but cannot compute the signature.
        let forged = format!("v={}", BASE64.encode([7u8; 32]));
        let err = client
            .handle_server_final(forged.as_bytes())
            .expect_err("forged");
        assert!(matches!(err, AuthError::ServerSignatureMismatch));
        assert!(client.derived_credentials().is_none());
    }

    #[test]
    fn backend_error_and_bad_server_first_are_reported() {
        let mut client =
            ScramClient::with_nonce(Credentials::Password(b"pw".to_vec()), "abc".into());
        let err = client
            .handle_server_first(b"r=xyzdef,s=c2FsdA==,i=4096")
            .expect_err("nonce");
        assert!(matches!(err, AuthError::MalformedBackendScramMessage(m) if m.contains("nonce")));
        let mut client =
            ScramClient::with_nonce(Credentials::Password(b"pw".to_vec()), "abc".into());
        let err = client
            .handle_server_first(b"r=abcdef,s=c2FsdA==,i=1000000")
            .expect_err("iters");
        assert!(matches!(
            err,
            AuthError::BackendIterationsTooHigh(1_000_000)
        ));
        let mut client =
            ScramClient::with_nonce(Credentials::Password(b"pw".to_vec()), "abc".into());
        client
            .handle_server_first(b"r=abcdef,s=c2FsdA==,i=1")
            .expect("ok");
        let err = client
            .handle_server_final(b"e=invalid-proof")
            .expect_err("e=");
        assert_eq!(
            err.to_string(),
            "backend rejected SCRAM authentication: invalid-proof"
        );
        assert!(matches!(
            client.handle_server_final(b"v=x"),
            Err(AuthError::ScramOutOfOrder)
        ));
    }

    #[test]
    fn mechanism_choice_follows_libpq_channel_binding_rules() {
        use ChannelBindingMode::*;
        let both = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"];
        let hash = || Some(Ok(vec![9u8; 32]));
        let bad = || Some(Err(ChannelBindingError::BadCertificate));
        let pick = |mechs: &[&str], mode, tls| {
            choose_mechanism(mechs, mode, tls).map(|(m, g)| (m.name(), g.header()))
        };
        // TLS and -PLUS offered: bind unless disabled.
        assert_eq!(
            pick(&both, Prefer, hash()).ok(),
            Some(("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,"))
        );
        assert_eq!(
            pick(&both, Require, hash()).ok(),
            Some(("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,"))
        );
        assert_eq!(
            pick(&both, Disable, hash()).ok(),
            Some(("SCRAM-SHA-256", "n,,"))
        );
        // TLS, no -PLUS offered: "y" (we could have bound), refused by require.
        assert_eq!(
            pick(&["SCRAM-SHA-256"], Prefer, hash()).ok(),
            Some(("SCRAM-SHA-256", "y,,"))
        );
        assert!(matches!(
            choose_mechanism(&["SCRAM-SHA-256"], Require, hash()),
            Err(AuthError::ChannelBindingRequired(m)) if m.contains("does not offer")
        ));
        // No TLS: "n", refused by require.
        assert_eq!(
            pick(&both, Prefer, None).ok(),
            Some(("SCRAM-SHA-256", "n,,"))
        );
        let err = choose_mechanism(&both, Require, None).expect_err("no tls");
        assert!(err.to_string().contains("does not use TLS"), "{err}");
        // A certificate that cannot be bound: prefer falls back to "n", require refuses.
        assert_eq!(
            pick(&both, Prefer, bad()).ok(),
            Some(("SCRAM-SHA-256", "n,,"))
        );
        assert!(matches!(
            choose_mechanism(&both, Require, bad()),
            Err(AuthError::BackendCertificateNotBindable(_))
        ));
        // Only -PLUS offered, binding impossible.
        assert!(matches!(
            choose_mechanism(&["SCRAM-SHA-256-PLUS"], Prefer, None),
            Err(AuthError::BackendRequiresChannelBinding)
        ));
        let err = choose_mechanism(&["OAUTHBEARER"], Prefer, None).expect_err("none");
        assert!(err.to_string().contains("offered: OAUTHBEARER"), "{err}");
    }

    #[test]
    fn bound_client_messages_are_byte_identical_to_tokio_postgres_client() {
        let cert_hash = vec![0xab_u8; 48];
        let mut driver = ScramSha256::new(
            b"pencil",
            ChannelBinding::tls_server_end_point(cert_hash.clone()),
        );
        let driver_first = driver.message().to_vec();
        let prefix = "p=tls-server-end-point,,n=,r=";
        let nonce = std::str::from_utf8(&driver_first).expect("utf8")[prefix.len()..].to_owned();
        let mut ours =
            ScramClient::with_nonce(Credentials::Password(b"pencil".to_vec()), nonce.clone())
                .with_channel_binding(Gs2::TlsServerEndPoint(cert_hash));
        assert_eq!(ours.client_first(), driver_first);
        let server_first = format!("r={nonce}SRV,s={},i=4096", BASE64.encode(b"somesalt"));
        driver.update(server_first.as_bytes()).expect("driver");
        let ours_final = ours
            .handle_server_first(server_first.as_bytes())
            .expect("ours");
        assert_eq!(ours_final, driver.message());
    }

    #[test]
    fn credentials_debug_output_hides_secrets() {
        let dbg = format!("{:?}", Credentials::Password(b"hunter2".to_vec()));
        assert!(!dbg.contains("hunter2") && !dbg.contains("104"), "{dbg}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_backend_bytes_never_panic(first: Vec<u8>, fin: Vec<u8>) {
            let mut client = ScramClient::with_nonce(Credentials::Password(b"pw".to_vec()), "abc".into());
            let _ = client.handle_server_first(&first);
            let _ = client.handle_server_final(&fin);
        }
    }
}

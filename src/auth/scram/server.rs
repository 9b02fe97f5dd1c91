//! SCRAM-SHA-256 server: authenticates clients connecting to pgsidecar.
//!
//! On a plain connection we advertise only `SCRAM-SHA-256`, so the gs2 header
//! must be `n,,` ("client doesn't support binding") or `y,,` ("client
//! supports it but thinks the server doesn't" — true there). Over TLS with a
//! certificate whose end-point hash is known ([`ScramServer::offer_channel_binding`])
//! we advertise `SCRAM-SHA-256-PLUS` first, as Postgres does; then `y` is refused
//! as a downgrade (someone removed the offer on the way), and a `p=` client must
//! send, in `c=`, the hash of the certificate we presented.

use std::fmt;
use std::mem;

use base64::Engine as _;
use subtle::ConstantTimeEq;

use super::{
    attribute, hmac, is_valid_nonce, random_nonce, sha256, xor, Credentials, ScramVerifier, BASE64,
    DEFAULT_ITERATIONS, DEFAULT_SALT_LEN,
};
use crate::auth::channel_binding::TLS_SERVER_END_POINT;
use crate::auth::{AuthError, Result};

/// Outcome of a successful exchange.
pub struct ScramSuccess {
    /// Send in `AuthenticationSASLFinal`, then `AuthenticationOk`.
    pub server_final: Vec<u8>,
    /// The client's `ClientKey`, recovered from its proof. Password-equivalent
    /// for any server holding the same verifier; see
    /// [`ScramVerifier::passthrough_credentials`].
    pub client_key: [u8; 32],
}

impl fmt::Debug for ScramSuccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSuccess")
            .field("server_final", &String::from_utf8_lossy(&self.server_final))
            .field("client_key", &"<redacted>")
            .finish()
    }
}

/// One client's SCRAM exchange. Any error ends it: later calls return
/// [`AuthError::ScramOutOfOrder`].
pub struct ScramServer {
    verifier: ScramVerifier,
    /// Mock exchanges (unknown user, unusable secret) always fail at the end.
    mock: bool,
    backend: BackendLogin,
    server_nonce: String,
    /// End-point hash of our certificate when `-PLUS` is offered (client on TLS).
    binding: Option<Vec<u8>>,
    /// The client chose `SCRAM-SHA-256-PLUS` in `SASLInitialResponse`.
    plus_selected: bool,
    state: State,
}

/// How pgsidecar can log in to backends once this client succeeded.
enum BackendLogin {
    /// The verifier is the backend's own: pass the recovered ClientKey on.
    PassThrough,
    /// The verifier was derived from a users-file plaintext password.
    Password(String),
    None,
}

enum State {
    AwaitingClientFirst,
    AwaitingClientFinal {
        /// `n,,`, `y,,` or `p=tls-server-end-point,,`; the client must echo it
        /// base64-encoded in `c=`.
        gs2_header: String,
        /// What `c=` must decode to: the header, then our certificate's hash for `p=`.
        expected_binding: Vec<u8>,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Finished,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("mock", &self.mock)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// For a verifier copied from the backend's `pg_authid.rolpassword`.
    pub fn new(verifier: ScramVerifier) -> ScramServer {
        ScramServer::with_nonce(verifier, false, random_nonce())
    }

    /// For a verifier pgsidecar derived from a plaintext `password`: its salt
    /// is not the backend's, so the ClientKey cannot be passed on; backend
    /// logins use the password instead.
    pub fn new_with_password(verifier: ScramVerifier, password: String) -> ScramServer {
        let mut server = ScramServer::new(verifier);
        server.backend = BackendLogin::Password(password);
        server
    }

    /// An exchange for a user we must refuse without saying why (no such
    /// user, or a secret that cannot do SCRAM). Like Postgres' mock
    /// authentication it sends a plausible salt and iteration count and fails
    /// only on the final message, with [`AuthError::PasswordMismatch`].
    ///
    /// The salt is derived from `secret` and `username`, so asking twice
    /// yields the same salt, as for a real user. `secret` should be ≥ 32
    /// random bytes, stable across restarts and shared by every pgsidecar
    /// instance behind one address; otherwise changing salts reveal that
    /// the user does not exist. Uses [`DEFAULT_ITERATIONS`] — real verifiers
    /// with other counts would stand out.
    pub fn new_mock(username: &str, secret: &[u8]) -> ScramServer {
        let derive = |label: &[u8]| hmac(secret, &[label, username.as_bytes()]);
        let verifier = ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: derive(b"pgsidecar mock scram salt\0")[..DEFAULT_SALT_LEN].to_vec(),
            stored_key: derive(b"pgsidecar mock scram stored key\0"),
            server_key: derive(b"pgsidecar mock scram server key\0"),
        };
        ScramServer::with_nonce(verifier, true, random_nonce())
    }

    /// Offers `SCRAM-SHA-256-PLUS` bound to `end_point_hash`, the
    /// `tls-server-end-point` hash of the certificate this client's TLS connection got.
    pub fn offer_channel_binding(mut self, end_point_hash: Vec<u8>) -> Self {
        self.binding = Some(end_point_hash);
        self
    }

    /// The `AuthenticationSASL` payload: the mechanisms, each NUL-terminated, then a NUL.
    pub fn sasl_mechanisms(&self) -> &'static [u8] {
        if self.binding.is_some() {
            b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
        } else {
            b"SCRAM-SHA-256\0\0"
        }
    }

    /// Takes the mechanism name of `SASLInitialResponse`.
    pub fn select_mechanism(&mut self, name: &[u8]) -> Result<()> {
        match name {
            b"SCRAM-SHA-256" => self.plus_selected = false,
            b"SCRAM-SHA-256-PLUS" if self.binding.is_some() => self.plus_selected = true,
            b"SCRAM-SHA-256-PLUS" => return Err(AuthError::ChannelBindingNotSupported),
            other => {
                return Err(AuthError::UnsupportedSaslMechanism(printable(
                    &String::from_utf8_lossy(other),
                )))
            }
        }
        Ok(())
    }

    pub(super) fn with_nonce(verifier: ScramVerifier, mock: bool, server_nonce: String) -> Self {
        ScramServer {
            binding: None,
            plus_selected: false,
            verifier,
            mock,
            backend: if mock {
                BackendLogin::None
            } else {
                BackendLogin::PassThrough
            },
            server_nonce,
            state: State::AwaitingClientFirst,
        }
    }

    /// True for [`ScramServer::new_mock`] exchanges (useful for logging).
    pub fn is_mock(&self) -> bool {
        self.mock
    }

    /// Credentials for logging in to backends as this user, after
    /// [`ScramServer::handle_client_final`] succeeded: the recovered
    /// ClientKey with this verifier's ServerKey/salt/iterations (works when
    /// the backend holds the same verifier), or the users-file plaintext
    /// password. `None` for mock exchanges.
    pub fn backend_credentials(&self, success: &ScramSuccess) -> Option<Credentials> {
        match &self.backend {
            BackendLogin::PassThrough => {
                Some(self.verifier.passthrough_credentials(success.client_key))
            }
            BackendLogin::Password(password) => {
                Some(Credentials::Password(password.clone().into_bytes()))
            }
            BackendLogin::None => None,
        }
    }

    /// Takes the data of `SASLInitialResponse` (client-first-message) and
    /// returns the server-first-message for `AuthenticationSASLContinue`.
    /// The username in it is ignored: the startup packet's user counts.
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>> {
        if !matches!(
            mem::replace(&mut self.state, State::Finished),
            State::AwaitingClientFirst
        ) {
            return Err(AuthError::ScramOutOfOrder);
        }
        let malformed = AuthError::MalformedScramMessage;
        let msg = std::str::from_utf8(msg).map_err(|_| malformed("not valid UTF-8"))?;
        let mut parts = msg.splitn(3, ',');
        let negotiation = AuthError::ChannelBindingNegotiation;
        let binding_data: &[u8] = match parts.next().unwrap_or_default() {
            "n" if self.plus_selected => {
                return Err(negotiation(
                    "the client selected SCRAM-SHA-256-PLUS, but its SCRAM message does not \
                     include channel binding data",
                ))
            }
            "n" => &[],
            // We offered -PLUS and the client, able to bind, thinks we did not: the offer was
            // removed on the way (RFC 5802 §6).
            "y" if self.binding.is_some() => return Err(AuthError::ChannelBindingDowngrade),
            "y" => &[],
            flag if flag.starts_with("p=") => {
                let Some(ours) = self.binding.as_deref() else {
                    return Err(AuthError::ChannelBindingNotSupported);
                };
                if !self.plus_selected {
                    return Err(negotiation(
                        "the client selected SCRAM-SHA-256 without channel binding, but its \
                         SCRAM message includes channel binding data",
                    ));
                }
                if flag != format!("p={TLS_SERVER_END_POINT}") {
                    return Err(negotiation(
                        "unsupported SCRAM channel-binding type (only tls-server-end-point)",
                    ));
                }
                ours
            }
            _ => {
                return Err(malformed(
                    "expected channel binding flag \"n\", \"y\" or \"p=\"",
                ))
            }
        };
        match parts.next() {
            Some("") => {}
            Some(authzid) if authzid.starts_with("a=") => {
                return Err(AuthError::AuthzidNotSupported)
            }
            _ => return Err(malformed("expected an empty authorization identity")),
        }
        let client_first_bare = parts
            .next()
            .ok_or(malformed("missing username and nonce"))?;
        let gs2_header = &msg[..msg.len() - client_first_bare.len()];
        let mut expected_binding = gs2_header.as_bytes().to_vec();
        expected_binding.extend_from_slice(binding_data);

        let mut fields = client_first_bare.split(',');
        let first = fields.next();
        if attribute(first, 'm').is_some() {
            return Err(AuthError::UnsupportedScramExtension);
        }
        attribute(first, 'n').ok_or(malformed("expected username attribute \"n=\""))?;
        let client_nonce =
            attribute(fields.next(), 'r').ok_or(malformed("expected nonce \"r=\""))?;
        if !is_valid_nonce(client_nonce) {
            return Err(malformed(
                "nonce is empty or has characters other than printable ASCII",
            ));
        }
        check_extensions(fields)?;

        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = State::AwaitingClientFinal {
            gs2_header: gs2_header.to_owned(),
            expected_binding,
            client_first_bare: client_first_bare.to_owned(),
            server_first,
            nonce,
        };
        Ok(reply)
    }

    /// Takes the data of the second `SASLResponse` (client-final-message).
    /// On success send `server_final` in `AuthenticationSASLFinal`. A wrong
    /// proof (or any mock exchange) gives [`AuthError::PasswordMismatch`].
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<ScramSuccess> {
        let State::AwaitingClientFinal {
            gs2_header,
            expected_binding,
            client_first_bare,
            server_first,
            nonce,
        } = mem::replace(&mut self.state, State::Finished)
        else {
            return Err(AuthError::ScramOutOfOrder);
        };
        let malformed = AuthError::MalformedScramMessage;
        let msg = std::str::from_utf8(msg).map_err(|_| malformed("not valid UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(malformed("missing proof attribute \"p=\""))?;
        if proof.contains(',') {
            return Err(malformed("the proof must be the last attribute"));
        }

        let mut fields = without_proof.split(',');
        let binding = attribute(fields.next(), 'c').ok_or(malformed("expected \"c=\" first"))?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| malformed("\"c=\" is not base64"))?;
        if !binding.starts_with(gs2_header.as_bytes()) {
            return Err(malformed(
                "channel binding data differs from the first message's header",
            ));
        }
        // For p=: the hash of the certificate the client saw must be ours; a relay in the
        // middle presenting its own certificate fails here.
        if binding != expected_binding {
            return Err(AuthError::ChannelBindingCheckFailed);
        }
        if attribute(fields.next(), 'r') != Some(nonce.as_str()) {
            return Err(malformed("nonce differs from the one the server sent"));
        }
        check_extensions(fields)?;
        let proof: [u8; 32] = BASE64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(malformed("the proof is not 32 bytes of base64"))?;

        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor(&proof, &client_signature);
        let matches: bool = sha256(&client_key).ct_eq(&self.verifier.stored_key).into();
        // Mock exchanges did all the same work above, so timing matches too.
        if !matches || self.mock {
            return Err(AuthError::PasswordMismatch);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(ScramSuccess {
            server_final: format!("v={}", BASE64.encode(server_signature)).into_bytes(),
            client_key,
        })
    }
}

/// Optional trailing `x=value` extensions: ignored, like Postgres does,
/// but they must at least be well-formed attributes.
fn check_extensions<'a>(fields: impl Iterator<Item = &'a str>) -> Result<()> {
    for field in fields {
        let b = field.as_bytes();
        if b.len() < 2 || !b[0].is_ascii_alphabetic() || b[1] != b'=' {
            return Err(AuthError::MalformedScramMessage(
                "unexpected data after the nonce",
            ));
        }
    }
    Ok(())
}

/// For echoing a client-chosen name in an error: printable ASCII, bounded.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

#[cfg(test)]
pub(in crate::auth) mod tests;

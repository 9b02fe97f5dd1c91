//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as Postgres speaks it.
//!
//! This file holds what both directions share: the key derivation, the
//! `pg_authid.rolpassword` verifier format and message-level helpers.
//! [`ScramServer`] authenticates clients; [`ScramClient`] logs pgsidecar in to a backend.
//!
//! Key schedule (all 32-byte SHA-256 outputs):
//! ```text
//! SaltedPassword = PBKDF2-HMAC-SHA256(password, salt, iterations)
//! ClientKey      = HMAC(SaltedPassword, "Client Key")
//! StoredKey      = SHA256(ClientKey)                 -- in the verifier
//! ServerKey      = HMAC(SaltedPassword, "Server Key") -- in the verifier
//! ClientProof    = ClientKey XOR HMAC(StoredKey, AuthMessage)
//! ServerSignature= HMAC(ServerKey, AuthMessage)
//! ```
//! The server only knows StoredKey, yet the proof lets it recover ClientKey —
//! which is what makes pass-through to a backend with the same verifier work.
//!
//! Passwords are used as raw bytes. Postgres runs SASLprep over UTF-8
//! passwords first; for ASCII passwords that is the identity, but for some
//! non-ASCII ones (non-ASCII spaces, compatibility characters, decomposed
//! accents) [`derive_keys`]/[`make_verifier`] will differ from Postgres.
//! Verifying clients is unaffected (the verifier and the client do the work).

mod client;
mod server;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;

use super::{AuthError, Result};

pub use self::client::{
    choose_mechanism, Credentials, Mechanism, ScramClient, MAX_BACKEND_ITERATIONS,
};
pub use self::server::{ScramServer, ScramSuccess};

/// SASL mechanism name pgsidecar offers and uses.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// Channel-binding variant (`tls-server-end-point`), offered and used over TLS.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// Postgres' default `scram_iterations`; used for verifiers we make ourselves.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length Postgres uses for new verifiers.
pub const DEFAULT_SALT_LEN: usize = 16;
/// Random bytes in our nonces (Postgres uses 18, base64-encoded to 24 chars).
const NONCE_BYTES: usize = 18;

/// `ClientKey` and `ServerKey` derived from a password for one (salt,
/// iterations) pair. Either is enough to impersonate the user or the server
/// to a backend holding the matching verifier: treat them like passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScramKeys { <redacted> }")
    }
}

/// Runs PBKDF2 (`iterations` HMACs: ~1–2 ms for 4096 in release builds, tens
/// of ms in debug) — call it from a blocking thread, and cache the result per
/// (user, salt, iterations): the backend's salt only changes with the password.
pub fn derive_keys(password: impl AsRef<[u8]>, salt: &[u8], iterations: u32) -> ScramKeys {
    let mut salted = [0u8; 32];
    let password = password.as_ref();
    // 0 would be invalid SCRAM; pbkdf2 treats it like 1 and never panics.
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
    ScramKeys {
        client_key: hmac(&salted, &[b"Client Key"]),
        server_key: hmac(&salted, &[b"Server Key"]),
    }
}

/// Builds a `pg_authid.rolpassword`-style verifier (for tests, tools and
/// plaintext users-file entries). Runs PBKDF2: see [`derive_keys`].
pub fn make_verifier(password: impl AsRef<[u8]>, salt: &[u8], iterations: u32) -> String {
    ScramVerifier::from_password(password, salt, iterations).encode()
}

/// A parsed `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl fmt::Debug for ScramVerifier {
    /// StoredKey allows offline password guessing and ServerKey lets one
    /// impersonate a server, so neither is printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// Parses the Postgres verifier format. Errors say which part is wrong
    /// but never echo the input.
    pub fn parse(s: &str) -> Result<ScramVerifier> {
        let invalid = AuthError::InvalidScramVerifier;
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(invalid("it does not start with \"SCRAM-SHA-256$\""))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(invalid("missing \"$\" between the salt and the keys"))?;
        let (iterations, salt) = params.split_once(':').ok_or(invalid(
            "missing \":\" between the iteration count and the salt",
        ))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(invalid("missing \":\" between StoredKey and ServerKey"))?;
        let iterations = match iterations.parse::<u32>() {
            Ok(n) if n > 0 && iterations.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(invalid("the iteration count is not a positive integer")),
        };
        let salt = BASE64
            .decode(salt)
            .map_err(|_| invalid("the salt is not valid base64"))?;
        if salt.is_empty() {
            return Err(invalid("the salt is empty"));
        }
        let key = |b64: &str, bad_b64, bad_len| -> Result<[u8; 32]> {
            let bytes = BASE64.decode(b64).map_err(|_| invalid(bad_b64))?;
            bytes.try_into().map_err(|_| invalid(bad_len))
        };
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key: key(
                stored_key,
                "StoredKey is not valid base64",
                "StoredKey does not decode to 32 bytes",
            )?,
            server_key: key(
                server_key,
                "ServerKey is not valid base64",
                "ServerKey does not decode to 32 bytes",
            )?,
        })
    }

    /// Derives a verifier from a password (runs PBKDF2: see [`derive_keys`]).
    pub fn from_password(
        password: impl AsRef<[u8]>,
        salt: &[u8],
        iterations: u32,
    ) -> ScramVerifier {
        let keys = derive_keys(password, salt, iterations);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&keys.client_key),
            server_key: keys.server_key,
        }
    }

    /// The `rolpassword` text form. Contains secrets: do not log it.
    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// Backend login credentials from a `ClientKey` recovered by
    /// [`ScramServer::handle_client_final`] against this verifier. They work
    /// on any backend whose `rolpassword` is this very verifier (same salt and
    /// iterations); otherwise the backend login fails with
    /// [`AuthError::BackendVerifierMismatch`].
    pub fn passthrough_credentials(&self, client_key: [u8; 32]) -> Credentials {
        Credentials::Keys {
            client_key,
            server_key: self.server_key,
            salt: self.salt.clone(),
            iterations: self.iterations,
        }
    }
}

pub(super) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn random_nonce() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    BASE64.encode(bytes)
}

/// RFC 5802 `printable`: ASCII 0x21..=0x7E except ','. Nonces must be this.
fn is_valid_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Splits `k=value` (one SCRAM attribute) and checks the key.
fn attribute(field: Option<&str>, key: char) -> Option<&str> {
    let field = field?;
    let mut chars = field.chars();
    (chars.next() == Some(key) && chars.next() == Some('=')).then(|| &field[2..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_round_trips_through_encode_and_parse() {
        let text = make_verifier(b"pencil", b"0123456789abcdef", 4096);
        let parsed = ScramVerifier::parse(&text).expect("parse");
        assert_eq!(parsed.iterations(), 4096);
        assert_eq!(parsed.salt(), b"0123456789abcdef");
        assert_eq!(parsed.encode(), text);
    }

    #[test]
    fn verifier_from_postgres_protocol_crate_parses() {
        // The same code tokio-postgres uses to pre-hash `ALTER ROLE ... PASSWORD`.
        let text = postgres_protocol::password::scram_sha_256(b"pencil");
        let parsed = ScramVerifier::parse(&text).expect("parse");
        assert_eq!(parsed.iterations(), DEFAULT_ITERATIONS);
        assert_eq!(parsed.salt().len(), DEFAULT_SALT_LEN);
        // Same password + salt + iterations ⇒ byte-identical verifier.
        assert_eq!(
            make_verifier(b"pencil", parsed.salt(), parsed.iterations()),
            text
        );
    }

    #[test]
    fn verifier_with_bad_base64_is_a_clear_error() {
        let good = make_verifier(b"pw", b"salt", 4096);
        let bad = good.replacen("$", "$!", 2).replacen("$!", "$", 1); // corrupt StoredKey
        let err = ScramVerifier::parse(&bad).expect_err("must fail");
        assert!(
            err.to_string().contains("StoredKey is not valid base64"),
            "{err}"
        );
        assert!(
            !err.to_string().contains(&bad),
            "error must not echo the verifier"
        );
    }

    #[test]
    fn malformed_verifiers_name_the_broken_part() {
        let cases = [
            ("md5abc", "does not start with"),
            ("SCRAM-SHA-256$4096:c2FsdA==", "missing \"$\""),
            (
                "SCRAM-SHA-256$4096c2FsdA==$a:b",
                "missing \":\" between the iteration",
            ),
            ("SCRAM-SHA-256$0:c2FsdA==$a:b", "iteration count"),
            ("SCRAM-SHA-256$-1:c2FsdA==$a:b", "iteration count"),
            ("SCRAM-SHA-256$4096:@@$a:b", "salt is not valid base64"),
            ("SCRAM-SHA-256$4096:$a:b", "salt is empty"),
            (
                "SCRAM-SHA-256$4096:c2FsdA==$c2FsdA==:c2FsdA==",
                "StoredKey does not decode to 32",
            ),
        ];
        for (input, expected) in cases {
            let err = ScramVerifier::parse(input).expect_err(input).to_string();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }

    #[test]
    fn verifier_debug_output_hides_keys() {
        let v = ScramVerifier::from_password(b"pw", b"salt", 1);
        let dbg = format!("{v:?}");
        assert!(!dbg.contains(&BASE64.encode(v.stored_key)), "{dbg}");
        assert!(format!("{:?}", derive_keys(b"pw", b"s", 1)).contains("redacted"));
    }

    #[test]
    fn rfc7677_key_schedule_matches_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("b64");
        let v = ScramVerifier::from_password(b"pencil", &salt, 4096);
        let server_final = server::tests::rfc7677_exchange(&v);
        assert_eq!(
            server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }
}

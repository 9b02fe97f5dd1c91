//! Postgres' legacy md5 password challenge, both directions.
//!
//! ```text
//! stored   = "md5" + hex(md5(password + username))      -- pg_authid / userlist
//! response = "md5" + hex(md5(hex_part_of(stored) + salt)) -- PasswordMessage
//! ```
//! Because the response only needs the stored hash, pgsidecar can answer a
//! backend's md5 challenge from a users-file `md5…` entry without the
//! plaintext, as PgBouncer does. (That also means the md5 hash is a
//! password equivalent: protect the users file accordingly.)
//!
//! md5 is weak; it is here for older clients and backends. Prefer SCRAM.

use ::md5::{Digest, Md5};
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::{AuthError, Result};

/// Server side: one md5 challenge sent to a client.
#[derive(Debug, Clone)]
pub struct Md5Challenge {
    salt: [u8; 4],
}

impl Default for Md5Challenge {
    fn default() -> Self {
        Md5Challenge::new()
    }
}

impl Md5Challenge {
    /// A fresh random salt, so a captured response cannot be replayed.
    pub fn new() -> Md5Challenge {
        let mut salt = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut salt);
        Md5Challenge { salt }
    }

    pub fn with_salt(salt: [u8; 4]) -> Md5Challenge {
        Md5Challenge { salt }
    }

    /// Send in `AuthenticationMD5Password`.
    pub fn salt(&self) -> [u8; 4] {
        self.salt
    }

    /// Checks the client's `PasswordMessage` payload (with or without its
    /// trailing NUL) against `stored` (`"md5"` + 32 lowercase hex digits,
    /// which already binds the user name). Constant-time comparison.
    pub fn verify(&self, stored: &str, response: &[u8]) -> Result<()> {
        if looks_like_scram(stored.as_bytes()) {
            return Err(AuthError::Md5WithScramSecret);
        }
        if !is_md5_hash(stored.as_bytes()) {
            return Err(AuthError::NotAnMd5Secret);
        }
        let expected = salted_response(&stored.as_bytes()[3..], self.salt);
        let response = response.strip_suffix(&[0]).unwrap_or(response);
        if bool::from(expected.as_slice().ct_eq(response)) {
            Ok(())
        } else {
            Err(AuthError::PasswordMismatch)
        }
    }
}

/// Client side: the `PasswordMessage` payload (without the trailing NUL)
/// answering a backend's md5 challenge. `secret` may be the plaintext
/// password or an already-hashed `md5…` secret (used as is, like Postgres
/// and PgBouncer do). A SCRAM verifier cannot answer md5: error.
pub fn md5_response(user: &str, secret: impl AsRef<[u8]>, salt: [u8; 4]) -> Result<Vec<u8>> {
    let secret = secret.as_ref();
    if looks_like_scram(secret) {
        return Err(AuthError::Md5WithScramSecret);
    }
    let stored;
    let hex_part = if is_md5_hash(secret) {
        &secret[3..]
    } else {
        stored = md5_stored(user, secret);
        &stored.as_bytes()[3..]
    };
    Ok(salted_response(hex_part, salt))
}

/// `"md5" + hex(md5(password + user))`, the `pg_authid` / userlist form.
pub fn md5_stored(user: &str, password: impl AsRef<[u8]>) -> String {
    let digest = Md5::new()
        .chain_update(password.as_ref())
        .chain_update(user.as_bytes())
        .finalize();
    format!("md5{}", hex(&digest))
}

/// Whether `s` is an md5 secret by Postgres' own test: "md5" followed by
/// exactly 32 *lowercase* hex digits (anything else is a plaintext password).
pub fn is_md5_hash(s: &[u8]) -> bool {
    s.len() == 35
        && s.starts_with(b"md5")
        && s[3..]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn looks_like_scram(s: &[u8]) -> bool {
    s.starts_with(b"SCRAM-SHA-256$")
}

fn salted_response(hex_part: &[u8], salt: [u8; 4]) -> Vec<u8> {
    let digest = Md5::new()
        .chain_update(hex_part)
        .chain_update(salt)
        .finalize();
    format!("md5{}", hex(&digest)).into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];

    #[test]
    fn md5_stored_matches_postgres_protocol_crate() {
        assert_eq!(
            md5_stored("alice", b"secret"),
            postgres_protocol::password::md5(b"secret", "alice")
        );
    }

    #[test]
    fn md5_response_matches_tokio_postgres_client() {
        let driver = postgres_protocol::authentication::md5_hash(b"alice", b"secret", SALT);
        assert_eq!(
            md5_response("alice", b"secret", SALT).expect("ok"),
            driver.into_bytes()
        );
    }

    #[test]
    fn stored_hash_answers_challenge_without_plaintext() {
        let stored = md5_stored("alice", b"secret");
        assert_eq!(
            md5_response("alice", stored.as_bytes(), SALT).expect("from hash"),
            md5_response("alice", b"secret", SALT).expect("from password"),
        );
    }

    #[test]
    fn correct_response_is_accepted_with_or_without_nul() {
        let challenge = Md5Challenge::with_salt(SALT);
        let stored = md5_stored("alice", b"secret");
        let mut response = md5_response("alice", b"secret", challenge.salt()).expect("ok");
        challenge.verify(&stored, &response).expect("accepted");
        response.push(0);
        challenge
            .verify(&stored, &response)
            .expect("accepted with NUL");
    }

    #[test]
    fn wrong_password_is_rejected_with_password_mismatch() {
        let challenge = Md5Challenge::new();
        let stored = md5_stored("alice", b"secret");
        for response in [
            md5_response("alice", b"guess", challenge.salt()).expect("ok"),
            md5_response("bob", b"secret", challenge.salt()).expect("ok"), // other user
            md5_response("alice", b"secret", [0, 0, 0, 0]).expect("ok"),   // replayed
            Vec::new(),
            b"md5".to_vec(),
        ] {
            let err = challenge.verify(&stored, &response).expect_err("rejected");
            assert!(matches!(err, AuthError::PasswordMismatch), "{err:?}");
        }
    }

    #[test]
    fn scram_secret_cannot_do_md5_in_either_direction() {
        let verifier = crate::auth::make_verifier(b"pw", b"salt", 1);
        let err = md5_response("alice", verifier.as_bytes(), SALT).expect_err("client");
        assert!(matches!(err, AuthError::Md5WithScramSecret));
        let err = Md5Challenge::new()
            .verify(&verifier, b"md5whatever")
            .expect_err("server");
        assert!(matches!(err, AuthError::Md5WithScramSecret));
        assert!(err.to_string().contains("cannot be used for md5"), "{err}");
    }

    #[test]
    fn md5_hash_detection_follows_postgres() {
        assert!(is_md5_hash(md5_stored("u", b"p").as_bytes()));
        let upper_hex = format!("md5{}", md5_stored("u", b"p")[3..].to_uppercase());
        assert!(!is_md5_hash(upper_hex.as_bytes()));
        assert!(!is_md5_hash(b"md5abc"));
        let err = Md5Challenge::new()
            .verify("plaintext", b"x")
            .expect_err("not md5");
        assert!(matches!(err, AuthError::NotAnMd5Secret));
    }
}

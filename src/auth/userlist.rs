//! The users file: PgBouncer-compatible `userlist.txt`.
//!
//! ```text
//! # comment            ; also a comment
//! "alice" "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>"
//! "bob"   "md5<32 lowercase hex digits>"
//! "say ""hi""" "plaintext password"    -- "" is a literal quote
//! ```
//! Best practice is to copy `SELECT rolname, rolpassword FROM pg_authid`
//! verbatim: a SCRAM verifier identical to the backend's also enables
//! pass-through login (see [`super::ScramVerifier::passthrough_credentials`]).
//! Plaintext is accepted for PgBouncer compatibility, with a warning.
//!
//! Stricter than PgBouncer on purpose: duplicate users, text after the
//! secret and malformed verifiers are errors, not silently ignored, because
//! each of them would otherwise surface later as a confusing login failure.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use rand::RngCore;

use super::md5::is_md5_hash;
use super::scram::{ScramVerifier, DEFAULT_ITERATIONS, DEFAULT_SALT_LEN};
use super::{AuthError, Result};

/// A user's secret as written in the users file.
#[derive(Clone)]
pub enum Secret {
    Scram(ScramVerifier),
    /// `"md5" + hex(md5(password + user))`.
    Md5(String),
    Plain(String),
}

impl Secret {
    /// For logs: which kind of secret, never its value.
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::Scram(_) => "SCRAM-SHA-256 verifier",
            Secret::Md5(_) => "md5 hash",
            Secret::Plain(_) => "plaintext password",
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.kind())
    }
}

#[derive(Clone)]
struct Entry {
    secret: Secret,
    /// For `Plain` users: a verifier derived once at load time, so SCRAM
    /// logins do not run PBKDF2 on every connection.
    plain_verifier: Option<ScramVerifier>,
}

/// A parsed users file.
#[derive(Clone, Default)]
pub struct UserList {
    users: HashMap<String, Entry>,
    warnings: Vec<String>,
}

impl fmt::Debug for UserList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserList")
            .field("users", &self.users.len())
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl UserList {
    /// Reads and parses `path`. Blocking file I/O, plus PBKDF2 for each
    /// plaintext entry: call at startup or from a blocking thread.
    pub fn load(path: impl AsRef<Path>) -> Result<UserList> {
        let path = path.as_ref();
        let io_error = |source| AuthError::UserlistIo {
            path: path.to_owned(),
            source,
        };
        let bytes = std::fs::read(path).map_err(io_error)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| AuthError::UserlistSyntax {
            line: 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            message: LineError::NotUtf8,
        })?;
        let mut list = UserList::parse(text)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(io_error)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                list.warnings.push(format!(
                    "users file {} is accessible by group or others (mode {:o}); its secrets \
                     are password equivalents: chmod 600 it",
                    path.display(),
                    mode & 0o777
                ));
            }
        }
        Ok(list)
    }

    /// [`UserList::load`], with the file's warnings logged: an operator must hear of a secrets
    /// file others can read, at start and at every reload.
    pub fn load_and_warn(path: impl AsRef<Path>) -> Result<UserList> {
        let path = path.as_ref();
        let list = Self::load(path)?;
        for w in &list.warnings {
            tracing::warn!(file = %path.display(), "{w}");
        }
        Ok(list)
    }

    /// Parses users-file text. Runs PBKDF2 for each plaintext entry.
    pub fn parse(text: &str) -> Result<UserList> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut list = UserList::default();
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            let syntax = |message: LineError| AuthError::UserlistSyntax { line, message };
            let Some((user, secret)) =
                parse_line(raw.strip_suffix('\r').unwrap_or(raw)).map_err(syntax)?
            else {
                continue;
            };
            if user.is_empty() {
                return Err(syntax(LineError::EmptyUser));
            }
            if secret.is_empty() {
                return Err(syntax(LineError::EmptySecret(user)));
            }
            if let Some(previous) = first_seen.insert(user.clone(), line) {
                return Err(syntax(LineError::Duplicate { user, previous }));
            }
            let secret = classify(&user, secret).map_err(syntax)?;
            let plain_verifier = match &secret {
                Secret::Plain(password) => {
                    list.warnings.push(format!(
                        "users file line {line}: user \"{user}\" has a plaintext password; prefer \
                         its SCRAM verifier from pg_authid.rolpassword"
                    ));
                    let mut salt = [0u8; DEFAULT_SALT_LEN];
                    rand::thread_rng().fill_bytes(&mut salt);
                    Some(ScramVerifier::from_password(
                        password.as_bytes(),
                        &salt,
                        DEFAULT_ITERATIONS,
                    ))
                }
                _ => None,
            };
            list.users.insert(
                user,
                Entry {
                    secret,
                    plain_verifier,
                },
            );
        }
        Ok(list)
    }

    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user).map(|entry| &entry.secret)
    }

    /// The verifier to run SCRAM with: the user's own, or for a plaintext
    /// entry one derived at load time. `None` for md5 users and unknown ones.
    pub fn scram_verifier(&self, user: &str) -> Option<&ScramVerifier> {
        let entry = self.users.get(user)?;
        match &entry.secret {
            Secret::Scram(verifier) => Some(verifier),
            _ => entry.plain_verifier.as_ref(),
        }
    }

    /// Non-fatal problems (plaintext secrets, loose permissions) for the
    /// caller to log. They never contain secrets.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// What is wrong with one line of a users file (`AuthError::UserlistSyntax` names the line).
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("expected the {0} in double quotes")]
    NotQuoted(&'static str),
    #[error("unterminated quote in the {0} (write \"\" for a literal quote)")]
    Unterminated(&'static str),
    #[error("expected whitespace, then the double-quoted secret, after the username")]
    NoSeparator,
    #[error("unexpected text after the secret (only a comment may follow)")]
    TrailingText,
    #[error("empty username")]
    EmptyUser,
    #[error("user \"{0}\" has an empty secret")]
    EmptySecret(String),
    #[error("user \"{user}\" is already defined on line {previous}")]
    Duplicate { user: String, previous: usize },
    /// A SCRAM verifier that does not parse (the message never shows the secret).
    #[error("user \"{user}\": {source}")]
    BadVerifier {
        user: String,
        source: Box<AuthError>,
    },
    #[error(
        "user \"{0}\": secret looks like an md5 hash but has uppercase hex digits, which \
         Postgres would treat as a plaintext password; write it in lowercase"
    )]
    UppercaseMd5(String),
}

fn classify(user: &str, secret: String) -> Result<Secret, LineError> {
    if secret.starts_with("SCRAM-SHA-256$") {
        let verifier = ScramVerifier::parse(&secret).map_err(|e| LineError::BadVerifier {
            user: user.to_owned(),
            source: Box::new(e),
        })?;
        return Ok(Secret::Scram(verifier));
    }
    if is_md5_hash(secret.as_bytes()) {
        return Ok(Secret::Md5(secret));
    }
    if secret.len() == 35
        && secret.starts_with("md5")
        && secret[3..].bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(LineError::UppercaseMd5(user.to_owned()));
    }
    Ok(Secret::Plain(secret))
}

/// `Ok(None)` for blank and comment lines.
fn parse_line(line: &str) -> Result<Option<(String, String)>, LineError> {
    let rest = line.trim_start();
    if rest.is_empty() || rest.starts_with('#') || rest.starts_with(';') {
        return Ok(None);
    }
    let (user, rest) = quoted(rest, "username")?;
    if !rest.starts_with(char::is_whitespace) {
        return Err(LineError::NoSeparator);
    }
    let (secret, rest) = quoted(rest.trim_start(), "secret")?;
    let rest = rest.trim_start();
    if !(rest.is_empty() || rest.starts_with('#') || rest.starts_with(';')) {
        return Err(LineError::TrailingText);
    }
    Ok(Some((user, secret)))
}

/// Reads one `"..."` field where `""` stands for `"`; returns it and the rest.
fn quoted<'a>(s: &'a str, what: &'static str) -> Result<(String, &'a str), LineError> {
    let body = s.strip_prefix('"').ok_or(LineError::NotQuoted(what))?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            value.push(c);
        } else if body[i + 1..].starts_with('"') {
            value.push('"');
            chars.next();
        } else {
            return Ok((value, &body[i + 1..]));
        }
    }
    Err(LineError::Unterminated(what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{make_verifier, md5_stored};

    fn syntax_error(text: &str) -> (usize, String) {
        match UserList::parse(text) {
            Err(AuthError::UserlistSyntax { line, message }) => (line, message.to_string()),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn parses_scram_md5_and_plain_secrets() {
        let verifier = make_verifier(b"pw", b"salt", 4096);
        let md5 = md5_stored("bob", b"pw");
        let list = UserList::parse(&format!(
            "\"alice\" \"{verifier}\"\n\"bob\" \"{md5}\"\n\"carol\" \"pw\"\n"
        ))
        .expect("valid");
        assert_eq!(list.len(), 3);
        assert!(matches!(list.get("alice"), Some(Secret::Scram(v)) if v.encode() == verifier));
        assert!(matches!(list.get("bob"), Some(Secret::Md5(m)) if *m == md5));
        assert!(matches!(list.get("carol"), Some(Secret::Plain(p)) if p == "pw"));
        assert!(list.get("dave").is_none());
        assert!(
            list.scram_verifier("bob").is_none(),
            "md5 users cannot do SCRAM"
        );
    }

    #[test]
    fn doubled_quotes_escape_a_quote() {
        let list = UserList::parse(r#""say ""hi""" "p""w""#).expect("valid");
        assert!(matches!(list.get("say \"hi\""), Some(Secret::Plain(p)) if p == "p\"w"));
    }

    #[test]
    fn comments_blank_lines_crlf_and_bom_are_ignored() {
        let text = "\u{feff}# comment\r\n; other comment\r\n\r\n   \n\t\"a\"\t\"pw\"  # trailing\r\n\"b\" \"pw\";x";
        let list = UserList::parse(text).expect("valid");
        assert_eq!(list.len(), 2);
        assert!(matches!(list.get("a"), Some(Secret::Plain(p)) if p == "pw"));
    }

    #[test]
    fn userlist_reports_line_number_of_bad_line() {
        let cases = [
            (
                "\"a\" \"x\"\n\n\"b\" x\n",
                3,
                "expected the secret in double quotes",
            ),
            (
                "# c\nalice \"x\"",
                2,
                "expected the username in double quotes",
            ),
            ("\"a\" \"x", 1, "unterminated quote in the secret"),
            ("\"a\"\"x\"", 1, "expected whitespace"),
            ("\"a", 1, "unterminated quote in the username"),
            ("\"a\" \"x\" \"y\"", 1, "unexpected text after the secret"),
            ("\"\" \"x\"", 1, "empty username"),
            ("\n\"a\" \"\"", 2, "empty secret"),
            ("\"a\" \"x\"\n\"a\" \"y\"", 2, "already defined on line 1"),
        ];
        for (text, line, message) in cases {
            let (got_line, got) = syntax_error(text);
            assert_eq!(
                (got_line, got.contains(message)),
                (line, true),
                "{text:?}: {got}"
            );
        }
    }

    #[test]
    fn invalid_verifier_reports_line_and_user_but_not_the_secret() {
        let (line, message) = syntax_error("\n\n\"alice\" \"SCRAM-SHA-256$4096:c2FsdA==$nope\"");
        assert_eq!(line, 3);
        assert!(
            message.contains("alice") && message.contains("invalid SCRAM verifier"),
            "{message}"
        );
        assert!(!message.contains("c2FsdA=="), "{message}");
    }

    #[test]
    fn uppercase_md5_hash_is_an_error_not_a_plaintext_password() {
        let upper = format!("md5{}", md5_stored("u", b"p")[3..].to_uppercase());
        let (_, message) = syntax_error(&format!("\"u\" \"{upper}\""));
        assert!(message.contains("lowercase"), "{message}");
    }

    #[test]
    fn plaintext_secret_is_accepted_with_a_warning_that_hides_it() {
        let list = UserList::parse("\"carol\" \"correct horse\"").expect("valid");
        assert_eq!(list.warnings().len(), 1);
        assert!(list.warnings()[0].contains("carol"));
        assert!(!list.warnings()[0].contains("correct horse"));
        assert!(!format!("{list:?}{:?}", list.get("carol")).contains("correct horse"));
    }

    #[test]
    fn plaintext_user_gets_a_scram_verifier_for_its_password() {
        use crate::auth::{Credentials, ScramClient, ScramServer};
        let list = UserList::parse("\"carol\" \"correct horse\"").expect("valid");
        let verifier = list.scram_verifier("carol").expect("derived").clone();
        assert_eq!(verifier.iterations(), DEFAULT_ITERATIONS);
        let mut client = ScramClient::new(Credentials::Password(b"correct horse".to_vec()));
        let mut server = ScramServer::new(verifier);
        let first = server
            .handle_client_first(&client.client_first())
            .expect("first");
        let fin = client.handle_server_first(&first).expect("final");
        server
            .handle_client_final(&fin)
            .expect("password matches derived verifier");
    }

    #[test]
    fn load_reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("userlist.txt");
        std::fs::write(
            &path,
            "\"alice\" \"md5".to_owned() + &"0".repeat(32) + "\"\n",
        )
        .expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let list = UserList::load(&path).expect("load");
            assert!(
                list.warnings().iter().any(|w| w.contains("chmod 600")),
                "{:?}",
                list.warnings()
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let list = UserList::load(&path).expect("load");
        assert!(list.warnings().is_empty(), "{:?}", list.warnings());
        assert!(matches!(list.get("alice"), Some(Secret::Md5(_))));

        let missing = dir.path().join("nope.txt");
        let err = UserList::load(&missing).expect_err("missing");
        assert!(err.to_string().contains("nope.txt"), "{err}");
    }

    #[test]
    fn invalid_utf8_reports_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("userlist.txt");
        std::fs::write(&path, b"\"a\" \"b\"\n\"\xff\" \"c\"\n").expect("write");
        let err = UserList::load(&path).expect_err("bad utf8");
        assert!(
            matches!(err, AuthError::UserlistSyntax { line: 2, .. }),
            "{err:?}"
        );
    }
}

//! `upstream.require_auth`: which authentication requests pgsidecar answers when it logs in to
//! a backend, like libpq's `require_auth`.
//!
//! Why: whoever answers on the backend's address chooses the method. A server (or a machine in
//! the middle) asking for `password` gets the password in clear; `md5` gives a hash good for
//! offline guessing and for logging in elsewhere. Listing the methods the real servers use
//! makes anything else fail *before* a secret is sent.

use std::fmt;

/// One way a backend can authenticate pgsidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendMethod {
    /// `AuthenticationOk` without asking for anything (trust, peer…).
    None,
    /// `AuthenticationCleartextPassword`.
    Password,
    Md5,
    /// SASL: SCRAM-SHA-256, with or without channel binding.
    ScramSha256,
}

impl BackendMethod {
    pub fn name(self) -> &'static str {
        match self {
            BackendMethod::None => "none",
            BackendMethod::Password => "password",
            BackendMethod::Md5 => "md5",
            BackendMethod::ScramSha256 => "scram-sha-256",
        }
    }

    fn parse(s: &str) -> Option<BackendMethod> {
        [
            BackendMethod::None,
            BackendMethod::Password,
            BackendMethod::Md5,
            BackendMethod::ScramSha256,
        ]
        .into_iter()
        .find(|m| m.name() == s)
    }
}

/// A parsed `require_auth` list: either the methods allowed, or (every entry with `!`) the
/// methods refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequireAuth {
    negated: bool,
    methods: Vec<BackendMethod>,
}

/// Why `upstream.require_auth` was refused (a configuration problem).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequireAuthError {
    #[error("negative and positive methods cannot be mixed (\"!md5\" with \"scram-sha-256\")")]
    Mixed,
    /// The name, escaped as `{:?}` would, without the quotes.
    #[error("unknown method \"{0}\" (known: none, password, md5, scram-sha-256)")]
    Unknown(String),
    #[error("method \"{0}\" is listed more than once")]
    Repeated(String),
}

impl RequireAuth {
    /// Parses the configured list; `Ok(None)` for an empty list (anything the server asks).
    /// Names are libpq's; `gss`/`sspi`/`oauth` are refused because pgsidecar cannot use them.
    pub fn parse(list: &[String]) -> Result<Option<RequireAuth>, RequireAuthError> {
        if list.is_empty() {
            return Ok(None);
        }
        let negated = list[0].starts_with('!');
        let mut methods = Vec::new();
        for entry in list {
            let name = match entry.strip_prefix('!') {
                Some(n) if negated => n,
                None if !negated => entry.as_str(),
                _ => return Err(RequireAuthError::Mixed),
            };
            let m = BackendMethod::parse(name)
                .ok_or_else(|| RequireAuthError::Unknown(name.escape_debug().to_string()))?;
            if methods.contains(&m) {
                return Err(RequireAuthError::Repeated(name.to_owned()));
            }
            methods.push(m);
        }
        Ok(Some(RequireAuth { negated, methods }))
    }

    pub fn allows(&self, m: BackendMethod) -> bool {
        self.methods.contains(&m) != self.negated
    }
}

impl fmt::Display for RequireAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bang = if self.negated { "!" } else { "" };
        let names: Vec<String> = self
            .methods
            .iter()
            .map(|m| format!("{bang}{}", m.name()))
            .collect();
        write!(f, "[{}]", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Option<RequireAuth>, RequireAuthError> {
        RequireAuth::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn a_list_allows_only_its_methods_and_a_negated_list_all_others() {
        assert_eq!(parse(&[]), Ok(None));
        let only_scram = parse(&["scram-sha-256"]).unwrap().unwrap();
        assert!(only_scram.allows(BackendMethod::ScramSha256));
        for m in [
            BackendMethod::None,
            BackendMethod::Password,
            BackendMethod::Md5,
        ] {
            assert!(!only_scram.allows(m), "{m:?}");
        }
        let not_clear = parse(&["!password", "!none"]).unwrap().unwrap();
        assert!(not_clear.allows(BackendMethod::Md5));
        assert!(not_clear.allows(BackendMethod::ScramSha256));
        assert!(!not_clear.allows(BackendMethod::Password));
        assert!(!not_clear.allows(BackendMethod::None));
        assert_eq!(not_clear.to_string(), "[!password, !none]");
    }

    #[test]
    fn bad_lists_are_configuration_errors() {
        assert!(parse(&["md5", "!password"])
            .unwrap_err()
            .to_string()
            .contains("mixed"));
        assert!(parse(&["!md5", "password"])
            .unwrap_err()
            .to_string()
            .contains("mixed"));
        assert!(parse(&["gss"])
            .unwrap_err()
            .to_string()
            .contains("unknown method \"gss\""));
        assert!(parse(&["md5", "md5"])
            .unwrap_err()
            .to_string()
            .contains("more than once"));
    }
}

//! hba-like auth rules: the first rule matching (user, database, client
//! address) decides the method; no match means reject.
//!
//! ```toml
//! [[auth.rules]]
//! address = "10.0.0.0/8"
//! method = "scram-sha-256"
//!
//! [[auth.rules]]
//! user = "report_*, admin"   # '*' wildcards, comma-separated alternatives
//! database = "analytics"
//! method = "md5"
//! ```
//! Unlike pg_hba.conf there are no keywords: `*` is the only wildcard, and
//! the hba words `all`, `sameuser`, `samerole`, `replication`, `+group` and
//! `@file` are refused at load time. A rule written `user = "all"` meaning
//! "everyone" would otherwise silently match only a role named "all" and let
//! later, weaker rules apply.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{AuthError, Result};

/// How a matching client must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// No password.
    Trust,
    /// SCRAM against the users file.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// md5 against the users file; like Postgres, a user whose secret is a
    /// SCRAM verifier does SCRAM instead (see [`super::plan_password_auth`]).
    Md5,
    /// Ask for a cleartext password and check it by logging in to the
    /// primary with it (see [`super::PassthroughCache`]). The password
    /// crosses the wire in clear: only use over TLS or loopback.
    Passthrough,
    Reject,
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::Trust => "trust",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Passthrough => "passthrough",
            AuthMethod::Reject => "reject",
        })
    }
}

/// One `[[auth.rules]]` entry. Omitted fields match everything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRule {
    /// `*`, an exact role name, a glob like `app_*`, or a comma list of those.
    #[serde(default = "star")]
    pub user: String,
    /// Same syntax as `user`.
    #[serde(default = "star")]
    pub database: String,
    /// `*`, `local` (clients on the Unix socket), an IP address, or a CIDR such as
    /// `127.0.0.0/8` or `::1/128`.
    #[serde(default = "star")]
    pub address: String,
    pub method: AuthMethod,
}

fn star() -> String {
    "*".to_owned()
}

impl AuthRule {
    /// A rule matching every user, database and address.
    pub fn any(method: AuthMethod) -> AuthRule {
        AuthRule {
            user: star(),
            database: star(),
            address: star(),
            method,
        }
    }

    /// Checks the patterns; call at config load so mistakes stop startup
    /// instead of turning into rejected logins.
    pub fn validate(&self) -> Result<()> {
        validate_names(&self.user, "user", &["all", "sameuser", "samerole"])?;
        validate_names(
            &self.database,
            "database",
            &["all", "sameuser", "samerole", "replication"],
        )?;
        parse_address(&self.address)?;
        Ok(())
    }

    /// Whether the rule applies. Errors only for a rule that fails
    /// [`AuthRule::validate`].
    /// `addr` is `None` for a client on the Unix socket.
    pub fn matches(&self, user: &str, database: &str, addr: Option<IpAddr>) -> Result<bool> {
        let address = match (parse_address(&self.address)?, addr) {
            (Address::Any, _) | (Address::Local, None) => true,
            // A v4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
            (Address::Net(net), Some(ip)) => net.contains(&ip.to_canonical()),
            (Address::Local, Some(_)) | (Address::Net(_), None) => false,
        };
        Ok(address && names_match(&self.user, user) && names_match(&self.database, database))
    }
}

/// Validates every rule; the error names the rule by its 1-based position.
pub fn validate_rules(rules: &[AuthRule]) -> Result<()> {
    for (i, rule) in rules.iter().enumerate() {
        rule.validate().map_err(|e| match e {
            AuthError::InvalidRule(msg) => {
                AuthError::InvalidRule(format!("rule #{}: {msg}", i + 1))
            }
            other => other,
        })?;
    }
    Ok(())
}

/// The first rule that matches, if any (to tell "no rule" from a `reject`
/// rule in the error message). An invalid rule stops the search and
/// counts as `reject`: failing closed beats skipping a rule that may have
/// been meant to refuse this client.
pub fn select_rule<'a>(
    rules: &'a [AuthRule],
    user: &str,
    database: &str,
    addr: Option<IpAddr>,
) -> Option<&'a AuthRule> {
    const REJECT: &AuthRule = &AuthRule {
        user: String::new(),
        database: String::new(),
        address: String::new(),
        method: AuthMethod::Reject,
    };
    for rule in rules {
        match rule.matches(user, database, addr) {
            Ok(true) => return Some(rule),
            Ok(false) => {}
            Err(_) => return Some(REJECT),
        }
    }
    None
}

/// The method for this client; `Reject` when no rule matches, in which case
/// report [`AuthError::NoMatchingRule`] (SQLSTATE 28000).
pub fn select_method(
    rules: &[AuthRule],
    user: &str,
    database: &str,
    addr: Option<IpAddr>,
) -> AuthMethod {
    select_rule(rules, user, database, addr).map_or(AuthMethod::Reject, |rule| rule.method)
}

fn names_match(patterns: &str, name: &str) -> bool {
    patterns
        .split(',')
        .map(str::trim)
        .any(|pattern| glob_match(pattern, name))
}

/// `*` matches any run of characters (including none); the rest is literal.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = match parts.as_slice() {
        [exact] => return *exact == name,
        [first, .., last] => (*first, *last),
        [] => return false,
    };
    let Some(rest) = name.strip_prefix(first) else {
        return false;
    };
    let Some(mut middle) = rest.strip_suffix(last) else {
        return false;
    };
    // Leftmost matches of the inner parts are optimal for '*'-only globs.
    for part in &parts[1..parts.len() - 1] {
        match middle.find(part) {
            Some(at) => middle = &middle[at + part.len()..],
            None => return false,
        }
    }
    true
}

fn validate_names(patterns: &str, field: &str, keywords: &[&str]) -> Result<()> {
    for pattern in patterns.split(',').map(str::trim) {
        let invalid = |why: String| {
            Err(AuthError::InvalidRule(format!(
                "{field} \"{patterns}\": {why}"
            )))
        };
        if pattern.is_empty() {
            return invalid("empty name in the list".into());
        }
        if keywords.contains(&pattern) {
            return invalid(format!(
                "\"{pattern}\" is a pg_hba.conf keyword; use \"*\" to match every {field}"
            ));
        }
        if pattern.starts_with('+') || pattern.starts_with('@') {
            return invalid("group (+name) and file (@name) references are not supported".into());
        }
    }
    Ok(())
}

/// Which clients a rule's `address` covers.
enum Address {
    /// `*`: every client, TCP or Unix socket.
    Any,
    /// `local`: clients on the Unix socket (pg_hba's `local` lines).
    Local,
    Net(IpNet),
}

fn parse_address(address: &str) -> Result<Address> {
    let address = address.trim();
    match address {
        "*" => return Ok(Address::Any),
        "local" => return Ok(Address::Local),
        _ => {}
    }
    IpNet::from_str(address)
        .or_else(|_| IpAddr::from_str(address).map(IpNet::from))
        .map(Address::Net)
        .map_err(|_| {
            AuthError::InvalidRule(format!(
                "address \"{address}\" is not \"*\", \"local\" (the Unix socket), an IP address, \
                 or a CIDR such as 10.0.0.0/8 or ::1/128"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use AuthMethod::*;

    fn rule(user: &str, database: &str, address: &str, method: AuthMethod) -> AuthRule {
        AuthRule {
            user: user.into(),
            database: database.into(),
            address: address.into(),
            method,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    /// `local` is pg_hba's Unix-socket line: it covers only clients on the socket, and an IP
    /// rule never covers them.
    #[test]
    fn local_rules_cover_only_unix_socket_clients() {
        let rules = vec![
            rule("*", "*", "local", Trust),
            rule("*", "*", "127.0.0.1", Md5),
        ];
        assert_eq!(select_method(&rules, "u", "d", None), Trust);
        assert_eq!(select_method(&rules, "u", "d", ip("127.0.0.1")), Md5);
        let ip_only = vec![rule("*", "*", "0.0.0.0/0", Trust)];
        assert_eq!(select_method(&ip_only, "u", "d", None), Reject);
        let any = vec![rule("*", "*", "*", Trust)];
        assert_eq!(select_method(&any, "u", "d", None), Trust);
    }

    #[derive(Deserialize)]
    struct Config {
        auth: Auth,
    }
    #[derive(Deserialize)]
    struct Auth {
        rules: Vec<AuthRule>,
    }

    #[test]
    fn rules_deserialize_from_toml_with_defaults_and_kebab_case_methods() {
        let config: Config = toml::from_str(
            r#"
            [[auth.rules]]
            method = "trust"
            address = "127.0.0.1/32"
            [[auth.rules]]
            user = "app"
            method = "scram-sha-256"
            [[auth.rules]]
            method = "md5"
            [[auth.rules]]
            method = "passthrough"
            [[auth.rules]]
            method = "reject"
            "#,
        )
        .expect("valid config");
        let rules = config.auth.rules;
        let methods: Vec<_> = rules.iter().map(|r| r.method).collect();
        assert_eq!(methods, [Trust, ScramSha256, Md5, Passthrough, Reject]);
        assert_eq!(rules[1], rule("app", "*", "*", ScramSha256));
        validate_rules(&rules).expect("valid");
    }

    #[test]
    fn unknown_fields_and_methods_are_config_errors() {
        let err = toml::from_str::<Config>("[[auth.rules]]\nmethod = \"trust\"\nhost = \"x\"")
            .err()
            .expect("unknown field");
        assert!(err.to_string().contains("unknown field `host`"), "{err}");
        let err = toml::from_str::<Config>("[[auth.rules]]\nmethod = \"password\"")
            .err()
            .expect("bad method");
        assert!(err.to_string().contains("scram-sha-256"), "{err}");
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = [
            rule("admin", "*", "*", Reject),
            rule("*", "*", "10.0.0.0/8", Trust),
            rule("*", "*", "*", ScramSha256),
            rule("*", "*", "*", Trust),
        ];
        assert_eq!(select_method(&rules, "admin", "db", ip("10.1.1.1")), Reject);
        assert_eq!(select_method(&rules, "app", "db", ip("10.1.1.1")), Trust);
        assert_eq!(
            select_method(&rules, "app", "db", ip("192.168.0.1")),
            ScramSha256
        );
    }

    #[test]
    fn no_matching_rule_rejects() {
        let rules = [rule("app", "*", "*", Trust)];
        assert_eq!(
            select_method(&rules, "other", "db", ip("127.0.0.1")),
            Reject
        );
        assert!(select_rule(&rules, "other", "db", ip("127.0.0.1")).is_none());
        assert_eq!(select_method(&[], "app", "db", ip("127.0.0.1")), Reject);
        let catch_all = [AuthRule::any(Passthrough)];
        assert_eq!(
            select_method(&catch_all, "app", "db", ip("::1")),
            Passthrough
        );
    }

    #[test]
    fn ipv6_cidr_matches() {
        let rules = [
            rule("*", "*", "::1/128", Trust),
            rule("*", "*", "fd00::/8", Md5),
        ];
        assert_eq!(select_method(&rules, "u", "d", ip("::1")), Trust);
        assert_eq!(select_method(&rules, "u", "d", ip("fd12:3456::1")), Md5);
        assert_eq!(select_method(&rules, "u", "d", ip("2001:db8::1")), Reject);
        assert_eq!(select_method(&rules, "u", "d", ip("127.0.0.1")), Reject);
    }

    #[test]
    fn ipv4_mapped_ipv6_client_matches_ipv4_cidr() {
        let rules = [rule("*", "*", "127.0.0.0/8", Trust)];
        assert_eq!(
            select_method(&rules, "u", "d", ip("::ffff:127.0.0.1")),
            Trust
        );
    }

    #[test]
    fn plain_ip_address_matches_only_that_host() {
        let rules = [rule("*", "*", "192.168.1.10", Trust)];
        assert_eq!(select_method(&rules, "u", "d", ip("192.168.1.10")), Trust);
        assert_eq!(select_method(&rules, "u", "d", ip("192.168.1.11")), Reject);
    }

    #[test]
    fn user_and_database_globs_and_comma_lists_match() {
        let rules = [rule("report_*, admin", "sales,*_analytics", "*", Md5)];
        let m = |user, db| select_method(&rules, user, db, ip("10.0.0.1"));
        assert_eq!(m("report_eu", "sales"), Md5);
        assert_eq!(m("admin", "eu_analytics"), Md5);
        assert_eq!(m("report_", "sales"), Md5);
        assert_eq!(
            m("Admin", "sales"),
            Reject,
            "names are case-sensitive like Postgres roles"
        );
        assert_eq!(m("admin", "salesforce"), Reject);
        assert_eq!(m("xreport_eu", "sales"), Reject);
    }

    #[test]
    fn glob_matching_handles_overlaps_and_multiple_stars() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "abc"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(
            !glob_match("ab*b", "ab"),
            "prefix and suffix must not overlap"
        );
        assert!(glob_match("*ab*", "xaby"));
        assert!(!glob_match("a*c", "ab"));
    }

    #[test]
    fn validation_explains_bad_rules_with_their_position() {
        let cases = [
            (
                rule("*", "*", "10.0.0.0/33", Trust),
                "address \"10.0.0.0/33\"",
            ),
            (
                rule("*", "*", "localhost", Trust),
                "an IP address, or a CIDR",
            ),
            (
                rule("all", "*", "*", Reject),
                "use \"*\" to match every user",
            ),
            (rule("*", "replication", "*", Reject), "pg_hba.conf keyword"),
            (rule("+admins", "*", "*", Trust), "group (+name)"),
            (rule("a,,b", "*", "*", Trust), "empty name"),
        ];
        for (bad, expected) in cases {
            let err =
                validate_rules(&[rule("*", "*", "*", Trust), bad.clone()]).expect_err("invalid");
            let msg = err.to_string();
            assert!(
                msg.contains("rule #2") && msg.contains(expected),
                "{bad:?}: {msg}"
            );
        }
    }

    #[test]
    fn invalid_rule_fails_closed_when_evaluated() {
        let rules = [
            rule("*", "*", "not-an-address", Reject),
            rule("*", "*", "*", Trust),
        ];
        assert_eq!(select_method(&rules, "u", "d", ip("10.0.0.1")), Reject);
    }
}

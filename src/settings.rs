//! Session settings a client expects to persist, replayed onto whichever backend serves its
//! next transaction (transaction pooling would otherwise leak one client's `SET` into another's
//! session, and lose it for the client that made it).

use std::collections::BTreeMap;

/// Settings applied beyond the server's defaults, by lower-cased name. Each value is the SQL
/// that re-establishes it, so a replay is exactly what the client ran.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    map: BTreeMap<String, String>,
    /// What `RESET` returns to: the client's startup parameters, as in Postgres.
    baseline: BTreeMap<String, String>,
    fingerprint: u64,
}

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

impl Settings {
    /// Records `name` as set; `apply_sql` must restore it on a fresh backend.
    pub fn set(&mut self, name: &str, apply_sql: String) {
        self.map.insert(name.to_ascii_lowercase(), apply_sql);
        self.refresh();
    }

    /// Records a startup parameter or a value known only as text.
    pub fn set_value(&mut self, name: &str, value: &str) {
        let sql = format!(
            "SELECT pg_catalog.set_config({}, {}, false)",
            quote_literal(name),
            quote_literal(value)
        );
        self.set(name, sql);
    }

    pub fn reset(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        match self.baseline.get(&name) {
            Some(v) => self.map.insert(name, v.clone()),
            None => self.map.remove(&name),
        };
        self.refresh();
    }

    pub fn reset_all(&mut self) {
        self.map = self.baseline.clone();
        self.refresh();
    }

    /// The same settings as a backend holds them: a backend's RESET goes to server defaults.
    pub fn as_applied(&self) -> Settings {
        Settings {
            map: self.map.clone(),
            baseline: BTreeMap::new(),
            fingerprint: self.fingerprint,
        }
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Nothing was SET or RESET since startup: the client's settings are its startup
    /// parameters (which clients of one application share).
    pub fn only_startup(&self) -> bool {
        self.map == self.baseline
    }

    /// `default_transaction_isolation` is serializable (SET, SET SESSION CHARACTERISTICS,
    /// `set_config`, startup parameter or `-c` option): every transaction of the session is
    /// serializable, which hot standbys refuse, so nothing of it may run on a replica.
    pub fn serializable_by_default(&self) -> bool {
        self.map
            .get("default_transaction_isolation")
            .is_some_and(|sql| sql.to_ascii_lowercase().contains("serializable"))
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.map.iter()
    }

    fn refresh(&mut self) {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (k, v) in &self.map {
            h.update(k.as_bytes());
            h.update(&[0]);
            h.update(v.as_bytes());
            h.update(&[0]);
        }
        self.fingerprint = if self.map.is_empty() { 0 } else { h.digest() };
    }

    /// SQL turning a backend whose settings are `from` into one whose settings are `self`.
    pub fn diff_from(&self, from: &Settings) -> Option<String> {
        if self.fingerprint == from.fingerprint && self.map == from.map {
            return None;
        }
        let mut sql = String::new();
        for name in from.map.keys().filter(|k| !self.map.contains_key(*k)) {
            sql.push_str("RESET ");
            sql.push_str(&quote_ident(name));
            sql.push_str(";\n");
        }
        for (name, apply) in &self.map {
            if from.map.get(name) != Some(apply) {
                sql.push_str(apply);
                sql.push_str(";\n");
            }
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// Settings from a client's startup packet (including `-c name=value` in `options`).
    pub fn from_startup(params: &[(String, String)]) -> Settings {
        let mut s = Settings::default();
        for (k, v) in params {
            if k == "options" {
                for (name, value) in parse_options(v) {
                    s.set_value(&name, &value);
                }
            } else if !NOT_SETTINGS.contains(&k.as_str()) {
                s.set_value(k, v);
            }
        }
        s.baseline = s.map.clone();
        s
    }
}

/// `-c a=b --c=d` → [(a, b), (c, d)], honouring backslash escapes of spaces as libpq does.
pub(crate) fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let kv = if w == "-c" {
            it.next()
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest.to_string())
        } else {
            w.strip_prefix("-c").map(str::to_string)
        };
        if let Some((k, v)) = kv.as_deref().and_then(|kv| kv.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_string()));
        }
    }
    out
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_resets_what_the_next_client_did_not_set() {
        let mut a = Settings::default();
        a.set_value("statement_timeout", "1ms");
        let b = Settings::default();
        assert_eq!(b.diff_from(&a).unwrap(), "RESET \"statement_timeout\";\n");
        assert!(a.diff_from(&a.clone()).is_none());
    }

    #[test]
    fn reset_returns_to_startup_values_like_postgres() {
        let mut s = Settings::from_startup(&[("TimeZone".into(), "UTC".into())]);
        s.set("timezone", "SET timezone TO 'Asia/Tokyo'".into());
        s.set("search_path", "SET search_path TO x".into());
        s.reset_all();
        let names: Vec<_> = s.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec!["timezone"]);
        assert!(s.iter().next().unwrap().1.contains("'UTC'"));
    }

    #[test]
    fn startup_options_become_settings() {
        let s = Settings::from_startup(&[
            ("user".into(), "u".into()),
            ("application_name".into(), "psql".into()),
            (
                "options".into(),
                "-c search_path=shop,public --statement-timeout=5s".into(),
            ),
        ]);
        let names: Vec<_> = s.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            vec!["application_name", "search_path", "statement_timeout"]
        );
    }

    #[test]
    fn literal_quoting_doubles_quotes() {
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}

//! `/* pgsidecar: route=primary cache=off cache_ttl=30s lock=off */` comment hints.
//!
//! A hint comment is any block (`/* … */`) or line (`-- …`) comment whose text starts with
//! `pgsidecar` (case-insensitive), optionally followed by `:`. It carries `key=value` pairs
//! separated by spaces and/or commas; spaces around `=` are tolerated. Unknown keys and bad
//! values become warnings, never errors. Several hint comments merge; the later value wins.

use std::time::Duration;

use serde::Serialize;

/// Where the client asks the statement to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum RouteHint {
    Primary,
    Replica,
    Any,
}

impl RouteHint {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteHint::Primary => "primary",
            RouteHint::Replica => "replica",
            RouteHint::Any => "any",
        }
    }
}

/// Hints found in `pgsidecar:` comments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Hints {
    pub route: Option<RouteHint>,
    /// `cache=on|off` (also `true|false|yes|no|1|0`).
    pub cache: Option<bool>,
    /// `cache_ttl=30s` (`ms`, `s`, `m`, `h`, `d`; a bare number is seconds).
    pub cache_ttl: Option<Duration>,
    /// `lock=on|off`: the inventory advisory-lock wrapper.
    pub lock: Option<bool>,
    /// Unknown keys, unparsable values, stray words.
    pub warnings: Vec<String>,
}

impl Hints {
    pub fn is_empty(&self) -> bool {
        self.route.is_none()
            && self.cache.is_none()
            && self.cache_ttl.is_none()
            && self.lock.is_none()
            && self.warnings.is_empty()
    }

    /// `route=… cache=… cache_ttl=…ms lock=…` for the set fields (empty when none).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = self.route {
            parts.push(format!("route={}", r.as_str()));
        }
        if let Some(c) = self.cache {
            parts.push(format!("cache={}", if c { "on" } else { "off" }));
        }
        if let Some(t) = self.cache_ttl {
            parts.push(format!("cache_ttl={}ms", t.as_millis()));
        }
        if let Some(l) = self.lock {
            parts.push(format!("lock={}", if l { "on" } else { "off" }));
        }
        parts.join(" ")
    }

    /// Parses one comment's inner text (without `/*`, `*/` or `--`). Returns `false` when the
    /// comment is not a pgsidecar hint.
    pub fn absorb_comment(&mut self, inner: &str) -> bool {
        let t = inner.trim_start();
        let Some(prefix) = t.get(..9) else {
            return false;
        };
        if !prefix.eq_ignore_ascii_case("pgsidecar") {
            return false;
        }
        let mut rest = &t[9..];
        // "pgsidecarx" is not ours.
        if rest
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            return false;
        }
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(':') {
            rest = r;
        }
        self.absorb_pairs(rest);
        true
    }

    fn absorb_pairs(&mut self, text: &str) {
        let b = text.as_bytes();
        let mut i = 0;
        let is_sep = |c: u8| c.is_ascii_whitespace() || c == b',' || c == b';';
        while i < b.len() {
            while i < b.len() && is_sep(b[i]) {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            let ks = i;
            while i < b.len() && !is_sep(b[i]) && b[i] != b'=' {
                i += 1;
            }
            let key = &text[ks..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j < b.len() && b[j] == b'=' {
                j += 1;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let vs = j;
                while j < b.len() && !is_sep(b[j]) {
                    j += 1;
                }
                let value = &text[vs..j];
                i = j;
                self.set(key, value);
            } else {
                self.warnings.push(format!("hint '{key}' has no value"));
            }
        }
    }

    fn set(&mut self, key: &str, value: &str) {
        let k = key.to_ascii_lowercase();
        let v = value
            .trim_matches(|c| c == '\'' || c == '"')
            .to_ascii_lowercase();
        match k.as_str() {
            "route" => match v.as_str() {
                "primary" | "master" | "writer" => self.route = Some(RouteHint::Primary),
                "replica" | "standby" | "reader" => self.route = Some(RouteHint::Replica),
                "any" => self.route = Some(RouteHint::Any),
                _ => self
                    .warnings
                    .push(format!("bad value for route: '{value}'")),
            },
            "cache" => match parse_bool(&v) {
                Some(b) => self.cache = Some(b),
                None => self
                    .warnings
                    .push(format!("bad value for cache: '{value}'")),
            },
            "cache_ttl" | "ttl" => match parse_duration(&v) {
                Some(d) => self.cache_ttl = Some(d),
                None => self
                    .warnings
                    .push(format!("bad value for cache_ttl: '{value}'")),
            },
            "lock" => match parse_bool(&v) {
                Some(b) => self.lock = Some(b),
                None => self.warnings.push(format!("bad value for lock: '{value}'")),
            },
            "" => self
                .warnings
                .push(format!("hint value '{value}' has no key")),
            _ => self.warnings.push(format!("unknown hint key '{key}'")),
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "yes" | "1" | "enable" | "enabled" => Some(true),
        "off" | "false" | "no" | "0" | "disable" | "disabled" => Some(false),
        _ => None,
    }
}

/// `250ms`, `30s`, `5m`, `2h`, `1d`, `30` (seconds), decimals allowed (`1.5s`).
pub(crate) fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    if num.is_empty() {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => n,
        "ms" | "msec" | "millis" => n / 1000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        "d" | "day" | "days" => n * 86400.0,
        _ => return None,
    };
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

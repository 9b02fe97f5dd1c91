//! How the server will lex this client's next statement: `standard_conforming_strings` and
//! `client_encoding` as the server has them for the session (startup packet and options, role
//! and database defaults, `SET`, `set_config`, a function or `DO` block that changes them), so
//! the analyser never reads text another way than the server does (`analyze::LexSettings`).
//!
//! The server reports both settings (they are `GUC_REPORT`) in a ParameterStatus whenever they
//! change, before the ReadyForQuery of the request that changed them: the proxy follows those
//! reports. A request that may change them is uncertain until it has been answered: the
//! client may already have sent (pipelined) its next statements, which are then analysed under
//! both readings.

use super::relay::Session;
use crate::analyze::{Analysis, LexSettings, PinReason, SessionEffect};

/// The client's effective settings, as far as lexing goes.
#[derive(Debug, Default, Clone)]
pub struct LexState {
    known: LexSettings,
    /// Requests that may change the settings have been sent and not all answered.
    unsure: bool,
}

const SCS: &str = "standard_conforming_strings";
const ENCODING: &str = "client_encoding";

impl LexState {
    /// From the server's ParameterStatus at startup, overridden by the client's own startup
    /// parameters (and `-c name=value` in `options`), as the backend will apply them.
    pub fn from_startup(server: &[(String, String)], client: &[(String, String)]) -> LexState {
        let mut s = LexState::default();
        for (k, v) in server {
            s.observe(k, v);
        }
        for (k, v) in client {
            if k == "options" {
                for (k, v) in super::settings::parse_options(v) {
                    s.observe(&k, &v);
                }
            } else {
                s.observe(k, v);
            }
        }
        s
    }

    /// A ParameterStatus (or startup value) for `name`.
    pub fn observe(&mut self, name: &str, value: &str) {
        if name.eq_ignore_ascii_case(SCS) {
            self.known.backslash_strings = !is_on(value);
        } else if name.eq_ignore_ascii_case(ENCODING) {
            self.known.foreign_encoding = !is_utf8_like(value);
        }
    }

    /// The rules the next statement is analysed under.
    pub fn settings(&self) -> LexSettings {
        if self.unsure {
            LexSettings {
                backslash_strings: true,
                foreign_encoding: true,
            }
        } else {
            self.known
        }
    }
}

fn is_on(v: &str) -> bool {
    matches!(
        v.trim().trim_matches('\'').to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1" | "t" | "y"
    )
}

/// UTF8 (and its aliases) and SQL_ASCII: the text the analyser sees is the text the server lexes.
fn is_utf8_like(v: &str) -> bool {
    let v: String = v
        .trim()
        .trim_matches('\'')
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    matches!(v.as_str(), "utf8" | "unicode" | "sqlascii")
}

/// Whether running `a` may change how the server lexes what follows: it sets one of the
/// settings (or all of them), or runs code the analyser cannot see into.
fn may_change(a: &Analysis) -> bool {
    a.hidden_writes.is_some()
        || a.session_effects().any(|e| match e {
            SessionEffect::Set { name, .. } | SessionEffect::Reset { name } => {
                name == SCS || name == ENCODING
            }
            SessionEffect::ResetAll => true,
            SessionEffect::Pin(r) => matches!(r, PinReason::UntrackedSetting | PinReason::DoBlock),
            SessionEffect::Discard(_) => false,
        })
}

impl Session {
    /// Analysis of a statement text under the session's lexing rules.
    pub(super) fn analyze_text(&mut self, sql: &[u8]) -> std::sync::Arc<Analysis> {
        let a = self.ctx.analyze_for(sql, self.vars.lex.settings());
        if may_change(&a) {
            self.vars.lex.unsure = true;
        }
        a
    }

    /// Every request sent so far has been answered (its ParameterStatus reports seen): the
    /// known settings are the session's.
    pub(super) fn lex_settled(&mut self) {
        if self.vars.lex.unsure && self.backend.tracker.is_idle() && self.request.pending.is_empty()
        {
            self.vars.lex.unsure = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn startup_values_override_the_servers_defaults() {
        let server = [p(SCS, "on"), p(ENCODING, "UTF8")];
        let s = LexState::from_startup(&server, &[]);
        assert!(s.settings().is_standard());
        let s = LexState::from_startup(
            &server,
            &[p("options", "-c standard_conforming_strings=off")],
        );
        assert!(s.settings().backslash_strings);
        let s = LexState::from_startup(&server, &[p("client_encoding", "SJIS")]);
        assert!(s.settings().foreign_encoding && !s.settings().backslash_strings);
        let s = LexState::from_startup(&[p(SCS, "off"), p(ENCODING, "sql_ascii")], &[]);
        assert!(s.settings().backslash_strings && !s.settings().foreign_encoding);
    }
}

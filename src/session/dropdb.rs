//! `DROP DATABASE` through a pooler: the pooler's own idle connections must not be what makes
//! it fail.
//!
//! Postgres refuses to drop a database any session is connected to (55006 "database … is being
//! accessed by other users"). Directly, a client that closed its connections to a database can
//! drop it at once (test runners do exactly this: Django creates `test_…`, runs, drops it).
//! Through the sidecar those connections live on in the pools, idle, and the DROP would fail
//! where it succeeds directly. So before a request with `DROP DATABASE name` is sent, the
//! idle pooled connections to `name` (every node) are closed. Connections lent to other
//! clients stay: they are sessions in use, as they would be directly.

use std::sync::Arc;

use super::relay::Session;
use crate::analyze::{Analysis, StatementKind};
use crate::wire::tag::front;

impl Session {
    /// Closes idle pooled connections to every database the pending request drops.
    pub(super) async fn release_dropped_databases(&mut self, analyses: &[Arc<Analysis>]) {
        if !analyses.iter().any(|a| a.kind == StatementKind::Ddl) {
            return;
        }
        let mut names = Vec::new();
        for m in &self.request.pending {
            let sql = match (m.frame.tag, &m.stmt) {
                (front::QUERY, _) => String::from_utf8_lossy(m.frame.body()).into_owned(),
                (front::PARSE | front::BIND, Some(stmt)) => stmt.query.to_string(),
                _ => continue,
            };
            if let Some(db) = dropped_database(&sql).filter(|db| !names.contains(db)) {
                names.push(db);
            }
        }
        for db in names {
            let closed = self.ctx.pools.close_database(&db).await;
            tracing::debug!(database = %db, closed, "DROP DATABASE: idle pooled connections to it closed");
        }
    }
}

/// The database a `DROP DATABASE [IF EXISTS] name …` statement drops (its name as Postgres
/// folds it: unquoted lower-cased, quoted as written).
pub(super) fn dropped_database(sql: &str) -> Option<String> {
    let mut rest = sql.trim_start();
    for word in ["drop", "database"] {
        rest = keyword(rest, word)?;
    }
    if let Some(r) = keyword(rest, "if").and_then(|r| keyword(r, "exists")) {
        rest = r;
    }
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    return (!name.is_empty()).then_some(name);
                }
            }
            name.push(c);
        }
        return None;
    }
    let name: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
        .collect();
    (!name.is_empty()).then(|| name.to_lowercase())
}

/// `s` after the keyword `word` (case-insensitive) and the whitespace that must follow it.
fn keyword<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let head = s.get(..word.len())?;
    let rest = &s[word.len()..];
    (head.eq_ignore_ascii_case(word) && rest.starts_with(char::is_whitespace))
        .then(|| rest.trim_start())
}

#[cfg(test)]
mod tests {
    use super::dropped_database;

    #[test]
    fn the_dropped_database_is_named_as_postgres_folds_it() {
        assert_eq!(
            dropped_database("DROP DATABASE \"test_Compat\"\"1\""),
            Some("test_Compat\"1".into())
        );
        assert_eq!(
            dropped_database("  drop database if exists Test_1 WITH (FORCE)"),
            Some("test_1".into())
        );
        assert_eq!(dropped_database("DROP DATABASE x;"), Some("x".into()));
        assert_eq!(dropped_database("DROP TABLE x"), None);
        assert_eq!(dropped_database("DROP DATABASEx"), None);
        assert_eq!(dropped_database("SELECT 'DROP DATABASE x'"), None);
    }
}

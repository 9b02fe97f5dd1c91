//! Statement analysis: what a query string reads, writes, locks, calls and changes in the
//! session, whether it is provably safe on a hot-standby replica, whether its result may be
//! cached, and which inventory keys it touches.
//!
//! * [`analyze`] analyzes one string (uncached).
//! * [`Analyzer`] caches by exact text (a repeated string costs a hash lookup) and by *shape*:
//!   a string whose [normalized](normalize) form was analyzed before is not parsed again — its
//!   analysis is reused with the new literal values (lock keys read literals lazily from the
//!   text). Shapes whose analysis depends on literal values (SET values, `set_config`, typed
//!   literals in key positions, statements sqlparser cannot parse) are never reused.
//! * Analysis never fails: an unparsable statement is `StatementKind::Unknown`, not read-only,
//!   carrying sqlparser's message in `parse_error`.
//!
//! Parsing uses sqlparser 0.55 with the PostgreSQL dialect, after same-length rewrites of syntax
//! it lacks or misreads (`FOR NO KEY UPDATE`, `FOR KEY SHARE`, `FROM ONLY t`, `ANALYSE`). Every
//! call into sqlparser's parser or tokenizer is in `parse` (the adapter); `walk/` reads the AST
//! it returns, and no other code uses sqlparser. When every token of a statement is in the
//! subset our lexer converts exactly (`parse/tokens.rs`), the parser gets those tokens instead
//! of tokenizing the text again. The dialect is PostgreSQL's with a cheaper parse of plain
//! column references, literals and operator precedence (`parse/dialect.rs`: same AST, checked
//! against sqlparser's own dialect in debug builds). Each saves a quarter to a third of a
//! brand-new OLTP statement's instructions (BENCHMARKS.md, 2026-12-08). The caches are
//! [`Analyzer`] (`analyzer.rs`: by exact text, in `cache.rs`'s bounded map) and the shape
//! templates (`templates.rs`).
//! Postgres statements that sqlparser 0.55 rejects (`LOCK`, `DO`, `RESET`, `VACUUM`,
//! `REFRESH MATERIALIZED VIEW`, `COPY … FROM STDIN`, `ABORT`, `PREPARE TRANSACTION`,
//! `COMMIT PREPARED`, `SET SESSION AUTHORIZATION`, `SET NAMES`, `TABLE t`, …) are classified
//! from their leading keywords ([`ParseMode::Keywords`]; never read-only except `TABLE t`).
//! Data-modifying CTEs with `DELETE` and `WITH … DELETE` (also rejected) are handled by parsing
//! each CTE body and the main statement on their own.
//!
//! # Decisions
//!
//! * **Volatile functions.** A volatile function makes a statement not read-only, except the
//!   [`REPLICA_SAFE_VOLATILE`] allow-list (`random`, `random_normal`, `clock_timestamp`,
//!   `timeofday`, `gen_random_uuid`, `uuidv4`, `uuidv7`, `pg_sleep*`, unqualified or in
//!   `pg_catalog`): they neither write nor need a transaction id, so they run fine on a hot
//!   standby. They still make the result non-cacheable. Functions unknown to the catalog are
//!   volatile; volatile functions outside `pg_catalog` (or unknown) also set
//!   [`Analysis::hidden_writes`], which makes `lock_keys` answer `Undeterminable`.
//! * **Read-only** also excludes: locking clauses, `SELECT INTO`, data-modifying CTEs, any
//!   session effect (pins, SETs), transaction control (`BEGIN READ ONLY` is reported through
//!   `txn`, not `read_only`), DDL, utility commands, `EXPLAIN ANALYZE` of a non-read-only
//!   statement, `COPY` other than `TO STDOUT`. `EXPLAIN` without `ANALYZE` only plans, so it is
//!   read-only for any plannable statement (its tables are reported as read).
//! * **Views** (known from the catalog) make a statement stable: read-only, never cached, since
//!   writes to their base tables would not invalidate them.
//! * **Session lexing rules.** [`Analyzer::analyze_for`] first checks that the text reads the
//!   same under the session's `standard_conforming_strings` and `client_encoding`
//!   ([`LexSettings`]); if not, it is unparseable.
//! * **Date/time strings.** `'now'`, `'today'`, `'tomorrow'`, `'yesterday'` literals are
//!   evaluated at parse time whatever they are cast or coerced to: such a statement is stable.
//! * **Multi-statement strings** combine: kind = strongest ([`StatementKind::strength`]),
//!   `read_only` = all statements read-only, tables/functions united, `txn` = first
//!   transaction control, `session` = first pin else first effect (all per statement in
//!   `statements`).
//!
//! # Known limits
//!
//! * Functions reached indirectly are invisible: views, rules, triggers, column defaults, RLS
//!   policies, user-defined operators and casts. A view calling `nextval` reads as read-only;
//!   use routing rules for such relations.
//! * Unqualified column references are attributed to a relation only when it is the single
//!   relation of a top-level query block; otherwise they must be qualified to pin lock keys.
//! * `regclass` literals (`'t'::regclass`) are not counted as table references.
//! * sqlparser is more lenient than Postgres in places (e.g. `SELECT FROM WHERE` parses as a
//!   read of a table named `where`); such statements fail on the server wherever they go.

mod analyzer;
mod cache;
/// Keys that are already uniform hashes (xxh3) need no second hashing; the result cache's near
/// map uses it too.
pub(crate) use cache::IdentityHasher;
mod catalog;
mod fallback;
mod hints;
mod keys;
mod lexer;
mod normalize;
mod parse;
mod templates;
mod types;
mod walk;

#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use analyzer::{Analyzer, AnalyzerConfig, AnalyzerStats};
pub use catalog::FunctionCatalog;
pub use hints::{Hints, RouteHint};
pub use keys::{KeyError, KeyExtraction, KeyValue, MAX_KEYS};
pub use normalize::{canonical_key_text, normalize};
pub use types::{
    Analysis, ParseMode, PinReason, SessionEffect, StatementKind, StatementSummary, TableRef,
    TxnControl, Volatility,
};
pub use walk::REPLICA_SAFE_VOLATILE;

use lexer::{Lexed, LitKind};
use parse::analyze_statement;
use walk::StmtOut;

/// Analyzes one query string (simple-query text or an extended-protocol Parse), uncached.
pub fn analyze(sql: &str, funcs: &FunctionCatalog) -> Arc<Analysis> {
    let sql: Arc<str> = Arc::from(sql);
    let lexed = lexer::lex(&sql);
    let core = build_core(&sql, &lexed, funcs, None);
    Arc::new(finalize(core, sql, &lexed))
}

/// The literal-independent analysis of `sql` (a potential template).
pub(super) fn build_core(
    sql: &Arc<str>,
    lexed: &Lexed,
    funcs: &FunctionCatalog,
    normalized: Option<String>,
) -> Analysis {
    let mut a = Analysis::empty(sql.clone());
    if let Some(err) = &lexed.error {
        a.normalized = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        a.literal_free = false;
        let mut o = unknown_stmt(err.clone());
        o.summary.verb = "UNKNOWN";
        merge_statements(&mut a, vec![o]);
        return a;
    }
    a.normalized = match normalized {
        Some(n) => n,
        None => {
            let mut n = String::with_capacity(sql.len());
            normalize::normalize_into(sql, lexed, &mut n);
            n
        }
    };
    let outs: Vec<StmtOut> = lexed
        .stmts
        .iter()
        .map(|r| analyze_statement(sql, lexed, r, funcs))
        .collect();
    merge_statements(&mut a, outs);
    a
}

/// Adds what depends on the exact text: literals, hints, date/time special strings.
pub(super) fn finalize(mut a: Analysis, sql: Arc<str>, lexed: &Lexed) -> Analysis {
    a.literals.clear();
    a.literals.extend_from_slice(&lexed.lits);
    for &(s, e) in &lexed.comments {
        a.hints.absorb_comment(&sql[s as usize..e as usize]);
    }
    a.volatility = a.volatility.max(literal_volatility(&sql, lexed));
    a.sql = sql;
    a
}

/// 'now', 'today', … are evaluated when the statement is parsed, whatever type they are
/// coerced to: a text holding one is (at least) stable.
pub(super) fn literal_volatility(sql: &str, lexed: &Lexed) -> Volatility {
    for l in &lexed.lits {
        if l.kind != LitKind::Num && l.end - l.start <= 16 {
            let v = normalize::literal_value(sql, l);
            let v = v.trim();
            if ["now", "today", "tomorrow", "yesterday"]
                .iter()
                .any(|s| v.eq_ignore_ascii_case(s))
            {
                return Volatility::Stable;
            }
        }
    }
    Volatility::Immutable
}

/// Default of `routing.max_analyzed_statement` (defined with the configuration).
pub use crate::config::DEFAULT_MAX_ANALYZED;

/// The analysis of a text longer than `max`: unknown (primary, never cached, no lock keys),
/// without looking inside.
pub(super) fn not_analysed(sql: Arc<str>, max: usize) -> Analysis {
    let mut a = Analysis::empty(sql.clone());
    a.normalized = format!("/* statement of {} bytes, not analysed */", sql.len());
    a.literal_free = false;
    let mut o = unknown_stmt(format!(
        "statement of {} bytes is longer than routing.max_analyzed_statement ({max}); not analysed",
        sql.len()
    ));
    o.reasons = vec!["statement too long to analyse".to_owned()];
    merge_statements(&mut a, vec![o]);
    a
}

pub(super) fn unknown_stmt(err: String) -> StmtOut {
    let mut o = StmtOut::new(StatementKind::Unknown, "UNKNOWN", ParseMode::Failed);
    o.reasons.push("statement could not be parsed".to_owned());
    o.hidden_writes = Some("a statement could not be parsed".to_owned());
    o.volatility = Volatility::Volatile;
    o.template_ok = false;
    o.parse_error = Some(err);
    o
}

fn merge_statements(a: &mut Analysis, outs: Vec<StmtOut>) {
    let multi = outs.len() > 1;
    let mut accesses = Vec::new();
    let mut kind = StatementKind::Utility;
    let mut best = -1i32;
    for (i, o) in outs.into_iter().enumerate() {
        let strength = o.summary.kind.strength() as i32;
        if strength > best {
            best = strength;
            kind = o.summary.kind.clone();
        }
        for t in o.tables_read {
            if !a.tables_read.contains(&t) {
                a.tables_read.push(t);
            }
        }
        for t in o.tables_written {
            if !a.tables_written.contains(&t) {
                a.tables_written.push(t);
            }
        }
        for f in o.functions {
            if !a.functions.contains(&f) {
                a.functions.push(f);
            }
        }
        for f in o.unknown_functions {
            if !a.unknown_functions.contains(&f) {
                a.unknown_functions.push(f);
            }
        }
        a.volatility = a.volatility.max(o.volatility);
        a.locking |= o.locking;
        for r in o.reasons {
            a.reasons.push(if multi {
                format!("statement {}: {r}", i + 1)
            } else {
                r
            });
        }
        accesses.extend(o.accesses);
        if a.hidden_writes.is_none() {
            a.hidden_writes = o.hidden_writes;
        }
        a.template_ok &= o.template_ok;
        if a.parse_error.is_none() {
            a.parse_error = o.parse_error;
        }
        a.statements.push(o.summary);
    }
    a.accesses = Arc::from(accesses);
    if a.statements.is_empty() {
        a.kind = StatementKind::Utility;
        a.read_only = true;
        return;
    }
    a.kind = kind;
    a.read_only = a.statements.iter().all(|s| s.read_only);
    a.txn = a.statements.iter().find_map(|s| s.txn.clone());
    a.session = a
        .statements
        .iter()
        .filter_map(|s| s.session.as_ref())
        .find(|e| e.is_pin())
        .or_else(|| a.statements.iter().find_map(|s| s.session.as_ref()))
        .cloned();
    if a.statements.iter().any(|s| s.parse != ParseMode::Parsed) {
        a.template_ok = false;
    }
}

/// What, in a session's settings, decides how the server splits its text into tokens, as far
/// as the analyzer's own lexer (which assumes `standard_conforming_strings = on` and UTF-8)
/// could read it differently.
///
/// * `standard_conforming_strings = off`: `\` escapes the next character inside plain `'…'`
///   (and `N'…'`) literals, so `'a\' , '` is one literal to the server and a literal, a comma
///   and the start of another to a lexer that assumes `on`. Text in which no plain literal
///   holds a backslash lexes identically either way (the rules differ nowhere else; `U&'…'`
///   is refused by the server under `off`, which runs nothing). Otherwise the text cannot be
///   read with certainty and is analysed as unparseable: primary, not cached, every table
///   invalidated, lock keys undeterminable.
/// * `backslash_quote` only turns some `\'` into errors; it never moves where a literal ends.
/// * A `client_encoding` other than UTF8 (or SQL_ASCII, which the server does not convert):
///   the server converts the text to its own encoding before lexing it. In SJIS, BIG5, GBK,
///   UHC and GB18030 a character's second byte can be `\` (or `[`, `|`, `{`…), so byte-wise
///   lexing can end a literal where the server does not; in every other encoding the
///   analyser would still misread names and values. ASCII text is the same in all of them;
///   text with other bytes is analysed as unparseable.
///
/// A session whose settings may be changing (a request that sets them, or runs code that
/// could, is still in flight) sets both fields: the same rules then hold for either value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LexSettings {
    /// `standard_conforming_strings` is (or may be) `off`.
    pub backslash_strings: bool,
    /// `client_encoding` is (or may be) neither UTF8 nor SQL_ASCII.
    pub foreign_encoding: bool,
}

impl LexSettings {
    /// The rules the analyzer assumes: nothing to check.
    pub fn is_standard(&self) -> bool {
        !self.backslash_strings && !self.foreign_encoding
    }

    /// Why `sql` cannot be lexed with certainty under these settings, if it cannot.
    pub fn ambiguity(&self, sql: &[u8]) -> Option<String> {
        if self.foreign_encoding && !sql.is_ascii() {
            return Some(
                "non-ASCII text in a client_encoding other than UTF8 cannot be lexed as the server does"
                    .to_owned(),
            );
        }
        if self.backslash_strings && sql.contains(&b'\\') {
            let text = String::from_utf8_lossy(sql);
            let lexed = lexer::lex(&text);
            let plain_backslash = lexed.lits.iter().any(|l| {
                l.kind == LitKind::Plain
                    && text.as_bytes()[l.start as usize..l.end as usize].contains(&b'\\')
            });
            // An unterminated literal may end later under `off`: as uncertain as a backslash.
            if plain_backslash || lexed.error.is_some() {
                return Some(
                    "a backslash in a '…' literal with standard_conforming_strings off cannot be lexed with certainty"
                        .to_owned(),
                );
            }
        }
        None
    }
}

/// The analysis of a text that cannot be lexed with certainty: unparseable, with `why`.
pub(super) fn uncertain(sql: &[u8], why: String) -> Arc<Analysis> {
    let sql: Arc<str> = Arc::from(String::from_utf8_lossy(sql).as_ref());
    // No tokens, no comments: not even a hint in it may be believed.
    let lexed = Lexed {
        error: Some(why),
        ..Default::default()
    };
    let core = build_core(&sql, &lexed, &FunctionCatalog::empty(), None);
    Arc::new(finalize(core, sql, &lexed))
}

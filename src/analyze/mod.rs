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
//! it lacks or misreads (`FOR NO KEY UPDATE`, `FOR KEY SHARE`, `FROM ONLY t`, `ANALYSE`). When
//! every token of a statement is in the subset our lexer converts exactly (`tokens.rs`), the
//! parser gets those tokens instead of tokenizing the text again (a third of a new shape's cost).
//! The dialect is PostgreSQL's with a cheaper parse of plain column references, literals and
//! operator precedence (`dialect.rs`: same AST, checked against sqlparser's own dialect in
//! debug builds).
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

mod cache;
/// Keys that are already uniform hashes (xxh3) need no second hashing; the result cache's near
/// map uses it too.
pub(crate) use cache::IdentityHasher;
mod catalog;
mod dialect;
mod fallback;
mod hints;
mod keys;
mod lexer;
mod tokens;
mod types;
mod walk;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use sqlparser::parser::Parser;
use xxhash_rust::xxh3::xxh3_128;

pub use catalog::FunctionCatalog;
pub use hints::{Hints, RouteHint};
pub use keys::{KeyExtraction, KeyValue, MAX_KEYS};
pub use lexer::{canonical_key_text, normalize};
pub use types::{
    Analysis, ParseMode, PinReason, SessionEffect, StatementKind, StatementSummary, TableRef,
    TxnControl, Volatility,
};
pub use walk::REPLICA_SAFE_VOLATILE;

use lexer::{Lexed, LitKind, StmtRange, Tk};
use walk::{StmtOut, Walker};

/// Statements with more operator tokens than this are not handed to sqlparser: its AST for a
/// very long `a AND b AND …` chain is a left-deep tree deep enough to overflow a worker stack
/// when dropped. They are classified by keywords instead (never read-only).
const MAX_PARSE_OPERATORS: usize = 2000;

/// Analyzes one query string (simple-query text or an extended-protocol Parse), uncached.
pub fn analyze(sql: &str, funcs: &FunctionCatalog) -> Arc<Analysis> {
    let sql: Arc<str> = Arc::from(sql);
    let lexed = lexer::lex(&sql);
    let core = build_core(&sql, &lexed, funcs, None);
    Arc::new(finalize(core, sql, &lexed))
}

/// The literal-independent analysis of `sql` (a potential template).
fn build_core(
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
            lexer::normalize_into(sql, lexed, &mut n);
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
fn finalize(mut a: Analysis, sql: Arc<str>, lexed: &Lexed) -> Analysis {
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
fn literal_volatility(sql: &str, lexed: &Lexed) -> Volatility {
    for l in &lexed.lits {
        if l.kind != LitKind::Num && l.end - l.start <= 16 {
            let v = lexer::literal_value(sql, l);
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

/// A copy of a template for a new text of the same shape (`normalized` moved in, not cloned).
fn instantiate(t: &Analysis, normalized: String) -> Analysis {
    Analysis {
        kind: t.kind.clone(),
        read_only: t.read_only,
        statements: t.statements.clone(),
        tables_read: t.tables_read.clone(),
        tables_written: t.tables_written.clone(),
        functions: t.functions.clone(),
        volatility: t.volatility,
        locking: t.locking,
        txn: t.txn.clone(),
        session: t.session.clone(),
        hints: Hints::default(),
        normalized,
        parse_error: t.parse_error.clone(),
        reasons: t.reasons.clone(),
        unknown_functions: t.unknown_functions.clone(),
        hidden_writes: t.hidden_writes.clone(),
        sql: t.sql.clone(),
        literals: Vec::new(),
        accesses: t.accesses.clone(),
        template_ok: t.template_ok,
        literal_free: t.literal_free,
        observed: t.observed.clone(),
    }
}

/// Default of `routing.max_analyzed_statement`.
pub const DEFAULT_MAX_ANALYZED: usize = 1 << 20;

/// The analysis of a text longer than `max`: unknown (primary, never cached, no lock keys),
/// without looking inside.
fn not_analysed(sql: Arc<str>, max: usize) -> Analysis {
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

fn unknown_stmt(err: String) -> StmtOut {
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

/// Parses exactly one statement.
fn parse_single(text: &str) -> Result<sqlparser::ast::Statement, String> {
    let stmts = Parser::parse_sql(&dialect::PG, text).map_err(|e| e.to_string());
    #[cfg(debug_assertions)]
    dialect::check_same_as_stock(
        &stmts,
        Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, text),
        &text,
    );
    one_statement(stmts?)
}

/// Parses exactly one statement from tokens converted by [`tokens::for_statement`] (the same
/// tokens sqlparser's tokenizer would produce for its text).
fn parse_single_tokens(
    toks: Vec<sqlparser::tokenizer::TokenWithSpan>,
) -> Result<sqlparser::ast::Statement, String> {
    #[cfg(debug_assertions)]
    let copy = toks.clone();
    let stmts = Parser::new(&dialect::PG)
        .with_tokens_with_locations(toks)
        .parse_statements()
        .map_err(|e| e.to_string());
    #[cfg(debug_assertions)]
    dialect::check_same_as_stock(
        &stmts,
        Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
            .with_tokens_with_locations(copy.clone())
            .parse_statements(),
        &copy,
    );
    one_statement(stmts?)
}

fn one_statement(
    mut stmts: Vec<sqlparser::ast::Statement>,
) -> Result<sqlparser::ast::Statement, String> {
    if stmts.len() != 1 {
        return Err(format!(
            "expected one statement, sqlparser found {}",
            stmts.len()
        ));
    }
    Ok(stmts.pop().expect("one statement"))
}

/// Same-length rewrites of Postgres syntax sqlparser 0.55 lacks or misreads, so byte offsets
/// and locations do not move:
/// * `FOR NO KEY UPDATE` / `FOR KEY SHARE` → `FOR UPDATE` / `FOR SHARE` (extra words blanked);
/// * `ONLY` before a relation (`FROM ONLY t`, `UPDATE ONLY t`, `DELETE FROM ONLY t`, …) is
///   blanked — sqlparser would read `only` as the table name and `t` as its alias;
/// * `ANALYSE` → `ANALYZE`.
fn rewrite_for_sqlparser<'s>(
    src: &'s str,
    toks: &[lexer::Tok],
    bs: usize,
    be: usize,
) -> Cow<'s, str> {
    // (start, end, replacement word or None for blanks)
    let mut edits: Vec<(usize, usize, Option<&str>)> = Vec::new();
    for i in 0..toks.len() {
        let t = &toks[i];
        if t.kind != Tk::Word {
            continue;
        }
        let kw = |j: usize, w: &str| toks.get(j).is_some_and(|x| x.is_kw(src, w));
        if t.is_kw(src, "for") {
            if kw(i + 1, "no") && kw(i + 2, "key") && kw(i + 3, "update") {
                edits.push((toks[i + 1].start as usize, toks[i + 2].end as usize, None));
            } else if kw(i + 1, "key") && kw(i + 2, "share") {
                edits.push((toks[i + 1].start as usize, toks[i + 1].end as usize, None));
            }
        } else if t.is_kw(src, "only") && i > 0 {
            let prev = &toks[i - 1];
            let before_relation = prev.kind == Tk::Comma
                || [
                    "from", "join", "update", "table", "lock", "using", "truncate",
                ]
                .iter()
                .any(|w| prev.is_kw(src, w));
            let next_ok = toks
                .get(i + 1)
                .is_some_and(|n| matches!(n.kind, Tk::Word | Tk::QIdent | Tk::LParen));
            if before_relation && next_ok {
                edits.push((t.start as usize, t.end as usize, None));
            }
        } else if t.is_kw(src, "analyse") {
            edits.push((t.start as usize, t.end as usize, Some("analyze")));
        }
    }
    if edits.is_empty() {
        return Cow::Borrowed(&src[bs..be]);
    }
    let mut s = src[bs..be].to_owned();
    for (a, b, repl) in edits {
        // A non-ASCII char (in a comment between the words) cannot be blanked without moving
        // either byte offsets or columns: leave such a statement to the fallback.
        if !src[a..b].is_ascii() {
            continue;
        }
        let piece: String = match repl {
            Some(w) => w.to_owned(),
            // Keep newlines so line numbers stay right.
            None => src[a..b]
                .chars()
                .map(|c| if c == '\n' { c } else { ' ' })
                .collect(),
        };
        s.replace_range(a - bs..b - bs, &piece);
    }
    Cow::Owned(s)
}

fn analyze_statement(src: &str, lexed: &Lexed, r: &StmtRange, funcs: &FunctionCatalog) -> StmtOut {
    let toks = lexed.stmt_toks(r);
    let (bs, be) = r.byte_range(&lexed.toks);
    let ops = toks
        .iter()
        .filter(|t| t.kind == Tk::Op || t.is_kw(src, "and") || t.is_kw(src, "or"))
        .count();
    let text = rewrite_for_sqlparser(src, toks, bs, be);
    let err = if ops > MAX_PARSE_OPERATORS {
        format!("statement has {ops} operators (more than {MAX_PARSE_OPERATORS}); not parsed")
    } else {
        // Unrewritten text (the usual case): hand sqlparser our tokens when they convert
        // exactly, instead of having it tokenize the text again.
        let converted = match &text {
            Cow::Borrowed(_) => tokens::for_statement(src, toks, &lexed.lits, bs, be),
            Cow::Owned(_) => None,
        };
        let parsed = match converted {
            Some(t) => parse_single_tokens(t),
            None => parse_single(&text),
        };
        match parsed {
            Ok(stmt) => {
                let mut w = Walker::new(funcs, &lexed.lits, (r.line, r.col));
                w.statement(&stmt);
                return w.finish();
            }
            Err(e) => e,
        }
    };
    if toks.first().is_some_and(|t| t.is_kw(src, "with")) {
        if let Some(o) = rescue_with(src, lexed, r, &text, bs, funcs) {
            return o;
        }
    }
    match fallback::classify(src, toks) {
        Some(mut o) => {
            o.parse_error = Some(err);
            o
        }
        None => unknown_stmt(err),
    }
}

/// sqlparser 0.55 rejects `DELETE` inside a CTE and `WITH … DELETE`: split the WITH clause
/// with the lexer and parse each CTE body and the main statement on its own.
fn rescue_with(
    src: &str,
    lexed: &Lexed,
    r: &StmtRange,
    text: &str,
    bs: usize,
    funcs: &FunctionCatalog,
) -> Option<StmtOut> {
    let toks = lexed.stmt_toks(r);
    let matching = |open: usize| -> Option<usize> {
        let mut depth = 0i32;
        for (j, t) in toks.iter().enumerate().skip(open) {
            match t.kind {
                Tk::LParen => depth += 1,
                Tk::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(j);
                    }
                }
                _ => {}
            }
        }
        None
    };
    let mut i = 1;
    let recursive = toks.get(i)?.is_kw(src, "recursive");
    if recursive {
        i += 1;
    }
    let mut ctes: Vec<(String, usize, usize)> = Vec::new();
    loop {
        let name_tok = toks.get(i)?;
        let name = match name_tok.kind {
            Tk::Word => name_tok.text(src).to_ascii_lowercase(),
            Tk::QIdent => {
                let t = name_tok.text(src);
                t[1..t.len() - 1].replace("\"\"", "\"")
            }
            _ => return None,
        };
        i += 1;
        if toks.get(i)?.kind == Tk::LParen {
            i = matching(i)? + 1;
        }
        if !toks.get(i)?.is_kw(src, "as") {
            return None;
        }
        i += 1;
        if toks.get(i)?.is_kw(src, "not") {
            i += 1;
        }
        if toks.get(i)?.is_kw(src, "materialized") {
            i += 1;
        }
        if toks.get(i)?.kind != Tk::LParen {
            return None;
        }
        let close = matching(i)?;
        if close <= i + 1 {
            return None;
        }
        ctes.push((name, i + 1, close));
        i = close + 1;
        if toks.get(i)?.kind == Tk::Comma {
            i += 1;
            continue;
        }
        break;
    }
    if i >= toks.len() {
        return None;
    }
    // Location of token `ti` (for sqlparser spans of the piece). Asked for in increasing
    // order, so one pass over the text serves every CTE: rescanning from the statement's start
    // for each made thousands of CTEs cost quadratic time.
    let mut at = (bs, r.line, r.col);
    let mut loc_of = |ti: usize| -> (u32, u32) {
        let b = src.as_bytes();
        let (from, mut line, mut col) = at;
        let to = (toks[ti].start as usize).max(from);
        for &c in &b[from..to] {
            if c == b'\n' {
                line += 1;
                col = 1;
            } else if (c & 0xC0) != 0x80 {
                col += 1;
            }
        }
        at = (to, line, col);
        (line, col)
    };
    let piece = |a: usize, b: usize| -> &str {
        &text[toks[a].start as usize - bs..toks[b - 1].end as usize - bs]
    };
    let mut parsed = Vec::with_capacity(ctes.len());
    for (_, a, b) in &ctes {
        parsed.push((parse_single(piece(*a, *b)).ok()?, loc_of(*a)));
    }
    let main = parse_single(piece(i, toks.len())).ok()?;
    let mut w = Walker::new(funcs, &lexed.lits, (r.line, r.col));
    if recursive {
        for (name, _, _) in &ctes {
            w.push_cte(name.clone());
        }
    }
    for ((name, _, _), (stmt, origin)) in ctes.iter().zip(&parsed) {
        w.origin = *origin;
        if !w.cte_body(stmt) {
            return None;
        }
        if !recursive {
            w.push_cte(name.clone());
        }
    }
    w.origin = loc_of(i);
    w.statement(&main);
    let mut o = w.finish();
    o.summary.verb = match o.summary.verb {
        "SELECT" | "VALUES" | "TABLE" => "SELECT",
        v => v,
    };
    Some(o)
}

// ----------------------------------------------------------------- the session's lexing rules

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
fn uncertain(sql: &[u8], why: String) -> Arc<Analysis> {
    let sql: Arc<str> = Arc::from(String::from_utf8_lossy(sql).as_ref());
    // No tokens, no comments: not even a hint in it may be believed.
    let lexed = Lexed {
        error: Some(why),
        ..Default::default()
    };
    let core = build_core(&sql, &lexed, &FunctionCatalog::empty(), None);
    Arc::new(finalize(core, sql, &lexed))
}

// ------------------------------------------------------------------------------- Analyzer

/// Sizes of the [`Analyzer`] caches.
#[derive(Debug, Clone)]
pub struct AnalyzerConfig {
    /// Approximate bytes of analyses cached by exact text.
    pub max_cached_bytes: usize,
    /// Approximate bytes of shape templates.
    pub max_template_bytes: usize,
    /// Strings longer than this are analyzed but never cached.
    pub max_cached_statement_len: usize,
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        AnalyzerConfig {
            max_cached_bytes: 64 << 20,
            max_template_bytes: 16 << 20,
            max_cached_statement_len: 64 << 10,
        }
    }
}

/// Counters since creation (relaxed atomics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnalyzerStats {
    /// Exact-text cache hits.
    pub hits: u64,
    /// Analyses built from a cached shape (no parse).
    pub template_hits: u64,
    /// Full analyses (lex + parse + walk).
    pub misses: u64,
    pub cached_entries: usize,
    pub cached_templates: usize,
}

struct State {
    catalog: Arc<FunctionCatalog>,
    exact: cache::HashCache<Arc<Analysis>>,
    templates: cache::HashCache<Arc<Analysis>>,
}

/// Cached analyzer. Cheap to share (`Arc<Analyzer>`); all methods take `&self`.
pub struct Analyzer {
    state: RwLock<Arc<State>>,
    config: AnalyzerConfig,
    hits: AtomicU64,
    template_hits: AtomicU64,
    misses: AtomicU64,
    /// Doorkeeper for the exact-text cache (see [`Analyzer::seen_before`]).
    seen: Box<[AtomicU64]>,
    /// Texts longer than this are not analysed at all (`routing.max_analyzed_statement`).
    max_analyzed: std::sync::atomic::AtomicUsize,
}

/// Doorkeeper slots: enough that a text repeated within a few thousand other new texts counts
/// as repeated.
const SEEN_SLOTS: usize = 4096;

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyzer")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for Analyzer {
    fn default() -> Self {
        Analyzer::new(FunctionCatalog::builtin())
    }
}

impl Analyzer {
    pub fn new(catalog: FunctionCatalog) -> Analyzer {
        Analyzer::with_config(catalog, AnalyzerConfig::default())
    }

    pub fn with_config(catalog: FunctionCatalog, config: AnalyzerConfig) -> Analyzer {
        let state = Arc::new(State {
            catalog: Arc::new(catalog),
            exact: cache::HashCache::new(config.max_cached_bytes),
            templates: cache::HashCache::new(config.max_template_bytes),
        });
        Analyzer {
            state: RwLock::new(state),
            config,
            hits: AtomicU64::new(0),
            template_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            seen: (0..SEEN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            max_analyzed: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_ANALYZED),
        }
    }

    /// Sets the longest text analysed (`routing.max_analyzed_statement`).
    pub fn set_max_analyzed(&self, bytes: usize) {
        self.max_analyzed.store(bytes, Ordering::Relaxed);
    }

    /// Analysis of `sql`, from cache when possible.
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        let max = self.max_analyzed.load(Ordering::Relaxed);
        if sql.len() > max {
            // Texts this long are not cached either, so a client re-sending one would make the
            // proxy lex and parse it in full every time: it goes to the primary as it is.
            crate::metrics::security_event("limit_statement_not_analysed");
            return Arc::new(not_analysed(Arc::from(sql), max));
        }
        let key = xxh3_128(sql.as_bytes());
        let state = {
            let guard = self.state.read();
            if let Some(a) = guard.exact.get(key) {
                if &*a.sql == sql {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return a;
                }
            }
            guard.clone()
        };
        let cacheable = sql.len() <= self.config.max_cached_statement_len;
        let sql_arc: Arc<str> = Arc::from(sql);
        let lexed = lexer::lex(&sql_arc);
        let mut from_template = false;
        let result = if lexed.error.is_none() && cacheable {
            let mut norm = String::with_capacity(sql.len());
            lexer::normalize_into(&sql_arc, &lexed, &mut norm);
            let tkey = xxh3_128(norm.as_bytes());
            match state.templates.get(tkey).filter(|t| t.normalized == norm) {
                Some(t) => {
                    self.template_hits.fetch_add(1, Ordering::Relaxed);
                    from_template = true;
                    Arc::new(finalize(instantiate(&t, norm), sql_arc, &lexed))
                }
                None => {
                    self.misses.fetch_add(1, Ordering::Relaxed);
                    let core = build_core(&sql_arc, &lexed, &state.catalog, Some(norm));
                    if !core.template_ok {
                        Arc::new(finalize(core, sql_arc, &lexed))
                    } else if literal_volatility(&sql_arc, &lexed) <= core.volatility {
                        // What `finalize` adds (literals, hints, the text) is what
                        // `instantiate` ignores: the result itself is the template, one
                        // allocation and one eviction fewer than a copy.
                        let w = template_weight(&core);
                        let a = Arc::new(finalize(core, sql_arc, &lexed));
                        state.templates.insert(tkey, a.clone(), w);
                        a
                    } else {
                        // A 'now'-style literal raised this text's volatility: the template
                        // keeps the literal-independent one.
                        let w = template_weight(&core);
                        state.templates.insert(tkey, Arc::new(core.clone()), w);
                        Arc::new(finalize(core, sql_arc, &lexed))
                    }
                }
            }
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            let core = build_core(&sql_arc, &lexed, &state.catalog, None);
            Arc::new(finalize(core, sql_arc, &lexed))
        };
        // A text built from a known template costs a few µs to analyse again; caching every one
        // of them (simple-protocol clients send each literal once) would evict the texts that do
        // repeat. Such a text is cached on its second sighting only.
        if cacheable && (!from_template || self.seen_before(key)) {
            state.exact.insert(
                key,
                result.clone(),
                sql.len() * 2 + 512 + result.literals.len() * 16,
            );
        }
        result
    }

    /// Remembers `key` in a small direct-mapped table (a TinyLFU-style doorkeeper); true when
    /// it was already there. Collisions only make a text wait for one more sighting.
    fn seen_before(&self, key: u128) -> bool {
        let fingerprint = (key as u64) | 1;
        let slot = &self.seen[((key >> 64) as usize) % self.seen.len()];
        slot.swap(fingerprint, Ordering::Relaxed) == fingerprint
    }

    /// Like [`Analyzer::analyze`] for wire bytes: no copy when they are valid UTF-8 (the usual
    /// case); otherwise the lossy conversion is analyzed.
    pub fn analyze_bytes(&self, sql: &[u8]) -> Arc<Analysis> {
        match std::str::from_utf8(sql) {
            Ok(s) => self.analyze(s),
            Err(_) => self.analyze(&String::from_utf8_lossy(sql)),
        }
    }

    /// Like [`Analyzer::analyze_bytes`] for a session whose settings may make the server lex
    /// `sql` differently from the analyzer (see [`LexSettings`]): text that cannot be lexed
    /// with certainty is analysed as unparseable, never cached. Other text has one meaning
    /// under every setting, so its cached analysis is shared.
    pub fn analyze_for(&self, sql: &[u8], lex: LexSettings) -> Arc<Analysis> {
        if !lex.is_standard() {
            if let Some(why) = lex.ambiguity(sql) {
                crate::metrics::analysis_uncertain();
                return uncertain(sql, why);
            }
        }
        self.analyze_bytes(sql)
    }

    /// Replaces the function catalog and drops every cached analysis (volatility may change).
    pub fn set_catalog(&self, catalog: FunctionCatalog) {
        let state = Arc::new(State {
            catalog: Arc::new(catalog),
            exact: cache::HashCache::new(self.config.max_cached_bytes),
            templates: cache::HashCache::new(self.config.max_template_bytes),
        });
        *self.state.write() = state;
    }

    pub fn catalog(&self) -> Arc<FunctionCatalog> {
        self.state.read().catalog.clone()
    }

    /// Drops every cached analysis.
    pub fn clear(&self) {
        let s = self.state.read().clone();
        s.exact.clear();
        s.templates.clear();
    }

    pub fn stats(&self) -> AnalyzerStats {
        let s = self.state.read().clone();
        AnalyzerStats {
            hits: self.hits.load(Ordering::Relaxed),
            template_hits: self.template_hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            cached_entries: s.exact.len(),
            cached_templates: s.templates.len(),
        }
    }
}

fn template_weight(a: &Analysis) -> usize {
    a.normalized.len() * 2 + 512 + a.accesses.len() * 128
}

#[cfg(test)]
mod doorkeeper_tests {
    use super::*;

    #[test]
    fn a_text_built_from_a_template_is_cached_on_its_second_sighting_only() {
        let an = Analyzer::default();
        an.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1");
        assert_eq!(
            an.stats().cached_entries,
            1,
            "a brand-new shape is cached at once"
        );
        let once = "SELECT abalance FROM pgbench_accounts WHERE aid = 2";
        an.analyze(once);
        assert_eq!(an.stats().template_hits, 1);
        assert_eq!(
            an.stats().cached_entries,
            1,
            "a one-off literal is not cached"
        );
        an.analyze(once);
        assert_eq!(an.stats().cached_entries, 2, "seen twice: cached");
        let hits = an.stats().hits;
        assert_eq!(an.analyze(once).sql(), once);
        assert_eq!(
            an.stats().hits,
            hits + 1,
            "the third sighting is an exact hit"
        );
    }
}

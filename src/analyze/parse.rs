//! The sqlparser adapter: the only module that runs sqlparser's parser or tokenizer. The rest
//! of `analyze` gets one walked [`StmtOut`] per statement from [`analyze_statement`]; `walk/`
//! reads the AST parsed here, and nothing outside `analyze/` names sqlparser. Its two speed-ups
//! are submodules: `dialect` (PostgreSQL's dialect with a cheaper expression-prefix parse) and
//! `tokens` (our lexer's tokens handed to the parser instead of the text).
//!
//! One statement's text is rewritten where sqlparser 0.55 lacks or misreads Postgres syntax
//! (same length, so positions hold), parsed (from our tokens when they convert exactly), and
//! walked; what it rejects is rescued statement by statement or classified by keywords
//! (`fallback`, from our lexer's tokens).

use std::borrow::Cow;

use sqlparser::parser::{Parser, ParserError};

use super::lexer::{self, Lexed, StmtRange, Tk};
use super::walk::{StmtOut, Walker};
use super::{fallback, unknown_stmt, FunctionCatalog};

mod dialect;
mod tokens;

/// Statements with more operator tokens than this are not handed to sqlparser: its AST for a
/// very long `a AND b AND …` chain is a left-deep tree deep enough to overflow a worker stack
/// when dropped. They are classified by keywords instead (never read-only).
const MAX_PARSE_OPERATORS: usize = 2000;

/// Why sqlparser gave no single statement. The analysis keeps its text (`parse_error`) and the
/// statement is rescued or classified by keywords instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum ParseError {
    #[error(transparent)]
    Sqlparser(#[from] ParserError),
    #[error("expected one statement, sqlparser found {0}")]
    NotOne(usize),
}

/// Parses exactly one statement.
fn parse_single(text: &str) -> Result<sqlparser::ast::Statement, ParseError> {
    let stmts = Parser::parse_sql(&dialect::PG, text);
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
) -> Result<sqlparser::ast::Statement, ParseError> {
    #[cfg(debug_assertions)]
    let copy = toks.clone();
    let stmts = Parser::new(&dialect::PG)
        .with_tokens_with_locations(toks)
        .parse_statements();
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
) -> Result<sqlparser::ast::Statement, ParseError> {
    if stmts.len() != 1 {
        return Err(ParseError::NotOne(stmts.len()));
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

pub(super) fn analyze_statement(
    src: &str,
    lexed: &Lexed,
    r: &StmtRange,
    funcs: &FunctionCatalog,
) -> StmtOut {
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
            Err(e) => e.to_string(),
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

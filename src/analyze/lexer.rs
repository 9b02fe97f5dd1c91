//! A small, fast Postgres lexer: statement splitting, literal positions, comments (hints) and
//! normalization. It exists so that the hot path — a statement whose *shape* was seen before —
//! never runs sqlparser; for a new shape its tokens are also handed to sqlparser's parser when
//! they convert exactly (`parse/tokens.rs`), so the text is not tokenized twice.
//!
//! Lexical rules follow Postgres (scan.l) closely enough for those purposes:
//! `'…'` with `''` escapes (standard_conforming_strings = on), `E'…'` with backslash escapes,
//! `B'…'`, `X'…'`, `N'…'`, `U&'…'`, `$tag$…$tag$`, `"…"` identifiers, `$n` parameters, nested
//! `/* */` comments, `--` comments, operator runs with Postgres' trailing `+`/`-` rule.
//! What it would read differently from the server is an error (the text is then analysed as
//! unparseable): a literal continued on the next line (`'a'` newline `'b'` is one literal, lexed
//! with the first one's rules), `U&"…"` identifiers. The session settings that change lexing
//! (`standard_conforming_strings`, `client_encoding`) are checked before: `LexSettings`.

use serde::Serialize;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Tk {
    Word,
    QIdent,
    Num,
    Str,
    Param,
    Op,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Semi,
    Dot,
    DColon,
    Colon,
    Other,
}

/// The lexical form of a literal, which decides how its value is decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub(crate) enum LitKind {
    Num,
    /// `'…'` (also `N'…'`; the prefix length is in `LitSpan::prefix`).
    Plain,
    /// `E'…'`
    Escape,
    /// `$tag$…$tag$`, `tag_len` includes both `$`.
    Dollar {
        tag_len: u16,
    },
    /// `B'…'`, `X'…'`, `U&'…'`: kept verbatim (inner text).
    Raw,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Tok {
    pub kind: Tk,
    pub start: u32,
    pub end: u32,
    /// Literal ordinal (index into `Lexed::lits`) or `u32::MAX`.
    pub lit: u32,
}

impl Tok {
    pub fn text<'a>(&self, src: &'a str) -> &'a str {
        &src[self.start as usize..self.end as usize]
    }

    /// Case-insensitive keyword test for a `Word` token.
    pub fn is_kw(&self, src: &str, kw: &str) -> bool {
        self.kind == Tk::Word && self.text(src).eq_ignore_ascii_case(kw)
    }
}

/// Byte range of a literal in the analyzed text plus its sqlparser-style location (1-based
/// line and column counted in chars, `\n` starts a line).
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct LitSpan {
    pub start: u32,
    pub end: u32,
    pub kind: LitKind,
    /// Bytes of prefix before the opening quote (`E`, `N`, `U&`, …).
    pub prefix: u8,
    pub line: u32,
    pub col: u32,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct StmtRange {
    pub tok_start: usize,
    pub tok_end: usize,
    pub line: u32,
    pub col: u32,
}

impl StmtRange {
    pub fn byte_range(&self, toks: &[Tok]) -> (usize, usize) {
        (
            toks[self.tok_start].start as usize,
            toks[self.tok_end - 1].end as usize,
        )
    }
}

#[derive(Debug, Default)]
pub(crate) struct Lexed {
    pub toks: Vec<Tok>,
    pub lits: Vec<LitSpan>,
    /// Comment inner text ranges (without delimiters).
    pub comments: Vec<(u32, u32)>,
    pub stmts: Vec<StmtRange>,
    pub error: Option<String>,
}

#[inline]
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

#[inline]
fn is_ident_cont(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Postgres operator characters (sqlparser's `is_custom_operator_part` for the PostgreSQL
/// dialect too): an operator followed by one of them is glued into a longer (custom) operator.
#[inline]
pub(super) fn is_op_char(c: u8) -> bool {
    matches!(
        c,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}

/// Tracks sqlparser-compatible (line, column) for monotonically increasing byte offsets.
pub(crate) struct LocTracker {
    pos: usize,
    line: u32,
    col: u32,
}

impl LocTracker {
    /// At the start of a text (sqlparser counts from line 1, column 1).
    pub(crate) fn new() -> Self {
        Self {
            pos: 0,
            line: 1,
            col: 1,
        }
    }

    pub(crate) fn at(&mut self, b: &[u8], target: usize) -> (u32, u32) {
        for &c in &b[self.pos..target] {
            if c == b'\n' {
                self.line += 1;
                self.col = 1;
            } else if (c & 0xC0) != 0x80 {
                self.col += 1;
            }
        }
        self.pos = target;
        (self.line, self.col)
    }
}

/// Scans a quoted run starting at `i` (the opening quote `q`); `backslash` enables `\x`
/// escapes. Returns the index after the closing quote.
fn scan_quoted(b: &[u8], mut i: usize, q: u8, backslash: bool) -> Option<usize> {
    i += 1;
    while i < b.len() {
        let c = b[i];
        if backslash && c == b'\\' {
            i += 2;
            continue;
        }
        if c == q {
            if i + 1 < b.len() && b[i + 1] == q {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// Whether a quoted literal ending at `e` is continued: Postgres joins `'a'` and `'b'`
/// separated by whitespace holding a newline (and `--` comments) into one literal, lexed with
/// the first one's rules, so `E'x'` + newline + `' \' ; …'` is one escape string to the server.
/// Such text is not lexed here (see `lex`).
fn continues(b: &[u8], e: usize) -> bool {
    let mut j = e;
    let mut newline = false;
    while j < b.len() {
        match b[j] {
            b'\n' | b'\r' => {
                newline = true;
                j += 1;
            }
            b' ' | b'\t' | 0x0b | 0x0c => j += 1,
            b'-' if b.get(j + 1) == Some(&b'-') => {
                j = b[j..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |p| j + p);
            }
            b'\'' => return newline,
            _ => return false,
        }
    }
    false
}

pub(crate) fn lex(src: &str) -> Lexed {
    let b = src.as_bytes();
    let n = b.len();
    let mut out = Lexed {
        toks: Vec::with_capacity(n / 5 + 4),
        ..Default::default()
    };
    let mut i = 0usize;
    let mut lit_kinds: Vec<(LitKind, u8)> = Vec::new();
    macro_rules! push {
        ($kind:expr, $s:expr, $e:expr) => {
            out.toks.push(Tok {
                kind: $kind,
                start: $s as u32,
                end: $e as u32,
                lit: u32::MAX,
            })
        };
    }
    macro_rules! push_lit {
        ($lk:expr, $prefix:expr, $s:expr, $e:expr) => {{
            let ord = lit_kinds.len() as u32;
            lit_kinds.push(($lk, $prefix));
            out.toks.push(Tok {
                kind: if matches!($lk, LitKind::Num) {
                    Tk::Num
                } else {
                    Tk::Str
                },
                start: $s as u32,
                end: $e as u32,
                lit: ord,
            })
        }};
    }
    while i < n {
        let c = b[i];
        let next = if i + 1 < n { b[i + 1] } else { 0 };
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => i += 1,
            b'-' if next == b'-' => {
                let s = i + 2;
                let e = b[s..].iter().position(|&x| x == b'\n').map_or(n, |p| s + p);
                out.comments.push((s as u32, e as u32));
                i = e;
            }
            b'/' if next == b'*' => {
                let s = i + 2;
                let mut depth = 1;
                let mut j = s;
                while j < n && depth > 0 {
                    if b[j] == b'*' && j + 1 < n && b[j + 1] == b'/' {
                        depth -= 1;
                        j += 2;
                    } else if b[j] == b'/' && j + 1 < n && b[j + 1] == b'*' {
                        depth += 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                if depth > 0 {
                    out.error = Some(format!("unterminated /* comment at byte {i}"));
                    break;
                }
                out.comments.push((s as u32, (j - 2) as u32));
                i = j;
            }
            b'\'' => match scan_quoted(b, i, b'\'', false) {
                Some(e) if continues(b, e) => {
                    out.error = Some(format!(
                        "string literal continued on another line at byte {i}"
                    ));
                    break;
                }
                Some(e) => {
                    push_lit!(LitKind::Plain, 0u8, i, e);
                    i = e;
                }
                None => {
                    out.error = Some(format!("unterminated quoted string at byte {i}"));
                    break;
                }
            },
            b'"' => match scan_quoted(b, i, b'"', false) {
                Some(e) => {
                    push!(Tk::QIdent, i, e);
                    i = e;
                }
                None => {
                    out.error = Some(format!("unterminated quoted identifier at byte {i}"));
                    break;
                }
            },
            b'$' => {
                if next.is_ascii_digit() {
                    let mut j = i + 1;
                    while j < n && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    push!(Tk::Param, i, j);
                    i = j;
                } else if next == b'$' || (is_ident_start(next) && next != 0) {
                    // Possible dollar quote: $tag$ … $tag$
                    let mut j = i + 1;
                    while j < n && b[j] != b'$' && is_ident_cont(b[j]) {
                        j += 1;
                    }
                    if j < n && b[j] == b'$' {
                        let tag = &b[i..=j];
                        let body = j + 1;
                        match find_sub(&b[body..], tag) {
                            Some(p) => {
                                let e = body + p + tag.len();
                                push_lit!(
                                    LitKind::Dollar {
                                        tag_len: tag.len() as u16
                                    },
                                    0u8,
                                    i,
                                    e
                                );
                                i = e;
                            }
                            None => {
                                out.error =
                                    Some(format!("unterminated dollar-quoted string at byte {i}"));
                                break;
                            }
                        }
                    } else {
                        push!(Tk::Other, i, i + 1);
                        i += 1;
                    }
                } else {
                    push!(Tk::Other, i, i + 1);
                    i += 1;
                }
            }
            b'0'..=b'9' => {
                let e = scan_number(b, i);
                push_lit!(LitKind::Num, 0u8, i, e);
                i = e;
            }
            b'.' if next.is_ascii_digit() => {
                let e = scan_number(b, i);
                push_lit!(LitKind::Num, 0u8, i, e);
                i = e;
            }
            b'.' => {
                push!(Tk::Dot, i, i + 1);
                i += 1;
            }
            b'(' => {
                push!(Tk::LParen, i, i + 1);
                i += 1;
            }
            b')' => {
                push!(Tk::RParen, i, i + 1);
                i += 1;
            }
            b'[' => {
                push!(Tk::LBracket, i, i + 1);
                i += 1;
            }
            b']' => {
                push!(Tk::RBracket, i, i + 1);
                i += 1;
            }
            b',' => {
                push!(Tk::Comma, i, i + 1);
                i += 1;
            }
            b';' => {
                push!(Tk::Semi, i, i + 1);
                i += 1;
            }
            b':' => {
                if next == b':' {
                    push!(Tk::DColon, i, i + 2);
                    i += 2;
                } else {
                    push!(Tk::Colon, i, i + 1);
                    i += 1;
                }
            }
            c if is_op_char(c) => {
                let mut j = i;
                while j < n && is_op_char(b[j]) {
                    if j > i
                        && ((b[j] == b'-' && j + 1 < n && b[j + 1] == b'-')
                            || (b[j] == b'/' && j + 1 < n && b[j + 1] == b'*'))
                    {
                        break;
                    }
                    j += 1;
                }
                // Postgres: a multi-char operator cannot end in + or - unless it contains one of
                // ~ ! @ # % ^ & | ` ?
                if j - i > 1 {
                    let run = &b[i..j];
                    if !run.iter().any(|c| {
                        matches!(
                            c,
                            b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|' | b'`' | b'?'
                        )
                    }) {
                        while j - i > 1 && matches!(b[j - 1], b'+' | b'-') {
                            j -= 1;
                        }
                    }
                }
                push!(Tk::Op, i, j);
                i = j;
            }
            c if is_ident_start(c) => {
                // String prefixes: E'', B'', X'', N'', U&'' / U&"".
                if next == b'\''
                    && matches!(c, b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N')
                {
                    let esc = matches!(c, b'e' | b'E');
                    match scan_quoted(b, i + 1, b'\'', esc) {
                        Some(e) if continues(b, e) => {
                            out.error = Some(format!(
                                "string literal continued on another line at byte {i}"
                            ));
                            break;
                        }
                        Some(e) => {
                            let kind = match c {
                                b'e' | b'E' => LitKind::Escape,
                                b'n' | b'N' => LitKind::Plain,
                                _ => LitKind::Raw,
                            };
                            push_lit!(kind, 1u8, i, e);
                            i = e;
                        }
                        None => {
                            out.error = Some(format!("unterminated quoted string at byte {i}"));
                            break;
                        }
                    }
                    continue;
                }
                if (c == b'u' || c == b'U')
                    && next == b'&'
                    && i + 2 < n
                    && (b[i + 2] == b'\'' || b[i + 2] == b'"')
                {
                    let q = b[i + 2];
                    if q == b'"' {
                        // `U&"pr\0069ces"` names `prices`: a name the analyser would misread
                        // (and so not invalidate, route or lock by).
                        out.error = Some(format!("Unicode-escaped identifier at byte {i}"));
                        break;
                    }
                    match scan_quoted(b, i + 2, q, false) {
                        Some(e) if continues(b, e) => {
                            out.error = Some(format!(
                                "string literal continued on another line at byte {i}"
                            ));
                            break;
                        }
                        Some(e) => {
                            if q == b'\'' {
                                push_lit!(LitKind::Raw, 2u8, i, e);
                            } else {
                                push!(Tk::QIdent, i, e);
                            }
                            i = e;
                        }
                        None => {
                            out.error = Some(format!("unterminated quoted string at byte {i}"));
                            break;
                        }
                    }
                    continue;
                }
                let mut j = i + 1;
                while j < n && is_ident_cont(b[j]) {
                    j += 1;
                }
                push!(Tk::Word, i, j);
                i = j;
            }
            _ => {
                // Any other byte (`{`, `}`, `\`, control chars): a one-char token.
                push!(Tk::Other, i, i + 1);
                i += 1;
            }
        }
    }
    split_statements(src, &mut out, &lit_kinds);
    out
}

fn find_sub(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&c| c == first)
        {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

fn scan_number(b: &[u8], start: usize) -> usize {
    let n = b.len();
    let mut j = start;
    if b[j] == b'0'
        && j + 1 < n
        && matches!(b[j + 1], b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
        && j + 2 < n
        && b[j + 2].is_ascii_hexdigit()
    {
        j += 2;
        while j < n && (b[j].is_ascii_hexdigit() || b[j] == b'_') {
            j += 1;
        }
        return j;
    }
    while j < n && (b[j].is_ascii_digit() || b[j] == b'_') {
        j += 1;
    }
    if j < n && b[j] == b'.' && !(j + 1 < n && b[j + 1] == b'.') {
        j += 1;
        while j < n && (b[j].is_ascii_digit() || b[j] == b'_') {
            j += 1;
        }
    }
    if j < n && (b[j] == b'e' || b[j] == b'E') {
        let mut k = j + 1;
        if k < n && (b[k] == b'+' || b[k] == b'-') {
            k += 1;
        }
        if k < n && b[k].is_ascii_digit() {
            while k < n && b[k].is_ascii_digit() {
                k += 1;
            }
            j = k;
        }
    }
    j
}

/// Splits at top-level `;` (a `CREATE … BEGIN ATOMIC … END` body is kept whole) and computes
/// sqlparser-style locations for statement starts and literals.
fn split_statements(src: &str, out: &mut Lexed, lit_kinds: &[(LitKind, u8)]) {
    let b = src.as_bytes();
    let mut tracker = LocTracker::new();
    out.lits.reserve(lit_kinds.len());
    // (first token, line, col) of the statement being scanned.
    let mut cur: Option<(usize, u32, u32)> = None;
    let mut is_create = false;
    let mut atomic_depth = 0u32;
    let ntoks = out.toks.len();
    for idx in 0..ntoks {
        let t = out.toks[idx];
        if t.kind == Tk::Semi && atomic_depth == 0 {
            if let Some((s, line, col)) = cur.take() {
                out.stmts.push(StmtRange {
                    tok_start: s,
                    tok_end: idx,
                    line,
                    col,
                });
            }
            continue;
        }
        if cur.is_none() {
            let (line, col) = tracker.at(b, t.start as usize);
            cur = Some((idx, line, col));
            is_create = t.is_kw(src, "create");
            atomic_depth = 0;
        }
        if t.lit != u32::MAX {
            let (line, col) = tracker.at(b, t.start as usize);
            let (kind, prefix) = lit_kinds[t.lit as usize];
            out.lits.push(LitSpan {
                start: t.start,
                end: t.end,
                kind,
                prefix,
                line,
                col,
            });
        }
        if is_create && t.kind == Tk::Word {
            let w = t.text(src);
            if (w.eq_ignore_ascii_case("atomic")
                && idx > 0
                && out.toks[idx - 1].is_kw(src, "begin"))
                || (atomic_depth > 0 && w.eq_ignore_ascii_case("case"))
            {
                atomic_depth += 1;
            } else if atomic_depth > 0 && w.eq_ignore_ascii_case("end") {
                atomic_depth -= 1;
            }
        }
    }
    if let Some((s, line, col)) = cur.take() {
        out.stmts.push(StmtRange {
            tok_start: s,
            tok_end: ntoks,
            line,
            col,
        });
    }
}

impl Lexed {
    pub fn stmt_toks(&self, r: &StmtRange) -> &[Tok] {
        &self.toks[r.tok_start..r.tok_end]
    }
}

#[cfg(test)]
mod tests;

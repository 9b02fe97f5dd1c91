//! What the lexer's tokens mean beyond their kind: the normalized text of a statement (its
//! *shape*: literals and parameters as `?`, comments and case folded), a literal's value as
//! the server reads it, and the canonical text of a lock key's value.

use super::lexer::{lex, Lexed, LitKind, LitSpan, Tk, Tok};

/// Words after which a space is kept before `(` in the normalized form (so `in (?, ?)` does not
/// read like a function call).
fn keeps_space_before_paren(word: &str) -> bool {
    const KW: &[&str] = &[
        "in",
        "values",
        "as",
        "on",
        "using",
        "from",
        "exists",
        "and",
        "or",
        "not",
        "where",
        "into",
        "select",
        "join",
        "over",
        "filter",
        "within",
        "set",
        "any",
        "all",
        "some",
        "with",
        "by",
        "then",
        "else",
        "when",
        "is",
        "returning",
        "table",
        "conflict",
        "update",
        "delete",
        "insert",
        "lateral",
        "union",
        "except",
        "intersect",
        "case",
        "do",
        "nothing",
        "explain",
        "copy",
        "window",
        "between",
        "like",
        "ilike",
    ];
    KW.iter().any(|k| word.eq_ignore_ascii_case(k))
}

/// Appends the normalized form of `toks` to `out`.
pub(crate) fn normalize_into(src: &str, lexed: &Lexed, out: &mut String) {
    for (si, st) in lexed.stmts.iter().enumerate() {
        if si > 0 {
            out.push_str("; ");
        }
        let toks = lexed.stmt_toks(st);
        let mut prev: Option<Tok> = None;
        for t in toks {
            let no_space = match prev {
                None => true,
                Some(p) => match p.kind {
                    Tk::LParen | Tk::LBracket | Tk::Dot | Tk::DColon => true,
                    pk => match t.kind {
                        Tk::RParen
                        | Tk::RBracket
                        | Tk::Comma
                        | Tk::Dot
                        | Tk::DColon
                        | Tk::Semi
                        | Tk::LBracket => true,
                        Tk::LParen => {
                            pk == Tk::QIdent
                                || (pk == Tk::Word && !keeps_space_before_paren(p.text(src)))
                        }
                        _ => false,
                    },
                },
            };
            if !no_space {
                out.push(' ');
            }
            match t.kind {
                Tk::Word => {
                    let w = t.text(src);
                    if w.bytes().any(|c| c.is_ascii_uppercase()) {
                        for ch in w.chars() {
                            out.push(ch.to_ascii_lowercase());
                        }
                    } else {
                        out.push_str(w);
                    }
                }
                Tk::Num | Tk::Str => out.push('?'),
                _ => out.push_str(t.text(src)),
            }
            prev = Some(*t);
        }
    }
}

/// The statement text with literals replaced by `?`, comments dropped, whitespace collapsed,
/// unquoted words lower-cased; statements joined with `; `. Strings that do not lex (an
/// unterminated quote or comment) are returned trimmed with whitespace collapsed.
pub fn normalize(sql: &str) -> String {
    let lexed = lex(sql);
    if lexed.error.is_some() {
        return sql.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    let mut out = String::with_capacity(sql.len());
    normalize_into(sql, &lexed, &mut out);
    out
}

/// Decoded value of a literal, canonicalized for lock keys (see [`canonical_key_text`]).
pub(crate) fn literal_value(src: &str, l: &LitSpan) -> String {
    let raw = &src[l.start as usize..l.end as usize];
    let v = match l.kind {
        LitKind::Num => return canonical_number(raw).unwrap_or_else(|| raw.to_owned()),
        LitKind::Plain => {
            let inner = &raw[l.prefix as usize + 1..raw.len() - 1];
            inner.replace("''", "'")
        }
        LitKind::Escape => unescape_e(&raw[l.prefix as usize + 1..raw.len() - 1]),
        LitKind::Dollar { tag_len } => {
            raw[tag_len as usize..raw.len() - tag_len as usize].to_owned()
        }
        LitKind::Raw => raw[l.prefix as usize + 1..raw.len() - 1].replace("''", "'"),
    };
    match canonical_number(v.trim()) {
        Some(c) if is_numeric_text(v.trim()) => c,
        _ => v,
    }
}

fn unescape_e(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\'' {
            // '' inside E'' is a quote
            if it.peek() == Some(&'\'') {
                it.next();
            }
            out.push('\'');
            continue;
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            None => out.push('\\'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('x') => {
                let mut v = 0u32;
                let mut k = 0;
                while k < 2 {
                    match it.peek().and_then(|c| c.to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            it.next();
                            k += 1;
                        }
                        None => break,
                    }
                }
                if k == 0 {
                    out.push('x');
                } else if let Some(ch) = char::from_u32(v) {
                    out.push(ch);
                }
            }
            Some(d @ '0'..='7') => {
                let mut v = d.to_digit(8).unwrap();
                let mut k = 1;
                while k < 3 {
                    match it.peek().and_then(|c| c.to_digit(8)) {
                        Some(x) => {
                            v = v * 8 + x;
                            it.next();
                            k += 1;
                        }
                        None => break,
                    }
                }
                if let Some(ch) = char::from_u32(v) {
                    out.push(ch);
                }
            }
            Some(u @ ('u' | 'U')) => {
                let want = if u == 'u' { 4 } else { 8 };
                let mut v = 0u32;
                let mut k = 0;
                while k < want {
                    match it.peek().and_then(|c| c.to_digit(16)) {
                        Some(d) => {
                            v = v.wrapping_mul(16).wrapping_add(d);
                            it.next();
                            k += 1;
                        }
                        None => break,
                    }
                }
                match char::from_u32(v) {
                    Some(ch) if k == want => out.push(ch),
                    _ => out.push(u),
                }
            }
            Some(other) => out.push(other),
        }
    }
    out
}

fn is_numeric_text(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    !s.is_empty()
        && s.bytes().any(|c| c.is_ascii_digit())
        && s.bytes().all(|c| c.is_ascii_digit() || c == b'.')
        && s.bytes().filter(|&c| c == b'.').count() <= 1
}

/// Canonical text of a numeric literal: underscores dropped, `0x`/`0o`/`0b` integers in
/// decimal, leading zeros and trailing fractional zeros removed, `+` dropped, `-0` → `0`.
/// Returns `None` when `s` is not a plain number (exponents are kept verbatim by the caller).
fn canonical_number(s: &str) -> Option<String> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let body: std::borrow::Cow<str> = if body.contains('_') {
        body.replace('_', "").into()
    } else {
        body.into()
    };
    let lower = body.to_ascii_lowercase();
    let radix = if lower.starts_with("0x") {
        Some(16)
    } else if lower.starts_with("0o") {
        Some(8)
    } else if lower.starts_with("0b") {
        Some(2)
    } else {
        None
    };
    if let Some(r) = radix {
        let v = u128::from_str_radix(&lower[2..], r).ok()?;
        return Some(if neg && v != 0 {
            format!("-{v}")
        } else {
            v.to_string()
        });
    }
    if body.is_empty()
        || !body.bytes().all(|c| c.is_ascii_digit() || c == b'.')
        || body.bytes().filter(|&c| c == b'.').count() > 1
    {
        return None;
    }
    let (int, frac) = match body.find('.') {
        Some(p) => (&body[..p], &body[p + 1..]),
        None => (&body[..], ""),
    };
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let mut out = String::with_capacity(body.len() + 1);
    if int.is_empty() && frac.is_empty() {
        out.push('0');
        return Some(out);
    }
    if neg {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

/// Canonical form of a lock-key value given as text: numbers (optionally signed, surrounded
/// by whitespace) lose leading zeros, `+`, underscores and trailing fractional zeros
/// (`'007'`, `7`, `7.0`, `+7` → `7`); any other text is returned unchanged. Literals returned
/// by `lock_keys` are already canonical; apply this to bound parameter values (in text form)
/// before hashing them into lock keys, so `$1 = '7'` and a literal `7` lock the same key.
/// Merging distinct texts that read as the same number only ever over-locks.
pub fn canonical_key_text(s: &str) -> std::borrow::Cow<'_, str> {
    let t = s.trim();
    if is_numeric_text(t) || t.starts_with("0x") || t.starts_with("0X") {
        if let Some(c) = canonical_number(t) {
            return std::borrow::Cow::Owned(c);
        }
    }
    std::borrow::Cow::Borrowed(s)
}

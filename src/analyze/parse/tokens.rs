//! sqlparser tokens built from our lexer's tokens, so that a statement is not tokenized twice.
//!
//! Why hand-written: sqlparser 0.55's tokenizer upper-cases and allocates every word, then
//! binary-searches ~900 keywords with `memcmp`, and grows its token vector one push at a time,
//! while our lexer has already found every token boundary. Converting instead saves 26–33 % of a
//! brand-new OLTP statement's instructions (20 % over the golden files' statements; callgrind,
//! BENCHMARKS.md, 2026-12-08). The conversion is *exact* only for a small subset of tokens — plain
//! words, `"…"` identifiers, unsigned integer/decimal numbers, `'…'` strings, `$n`
//! parameters, punctuation and the common comparison/arithmetic operators, each in a context
//! where sqlparser cannot glue it to its neighbour. Anything else (escape/dollar/bit strings,
//! other operators, non-ASCII words, `COPY`, …) returns `None` and sqlparser tokenizes the text
//! itself, as before. Debug builds check every conversion against sqlparser's own tokenizer, so
//! the whole test suite is a differential test of this module.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use sqlparser::keywords::{Keyword, ALL_KEYWORDS, ALL_KEYWORDS_INDEX};
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Word};

use crate::analyze::lexer::{is_op_char, LitKind, LitSpan, LocTracker, Tk, Tok};

/// Longest keyword in sqlparser's list (checked when the table is built).
const MAX_KEYWORD_LEN: usize = 40;

/// FNV-1a: the keys are short ASCII words looked up once per word token; SipHash's setup
/// costs more than the hashing here, and the key set is fixed (no flooding concern).
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type KeywordTable = HashMap<&'static str, Keyword, BuildHasherDefault<Fnv>>;

/// Upper-case keyword text → keyword, built once (sqlparser's table is a sorted slice).
fn keywords() -> &'static KeywordTable {
    static TABLE: OnceLock<KeywordTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        ALL_KEYWORDS
            .iter()
            .zip(ALL_KEYWORDS_INDEX)
            .filter(|(w, _)| w.len() <= MAX_KEYWORD_LEN)
            .map(|(w, k)| (*w, *k))
            .collect()
    })
}

/// What sqlparser's `Token::make_word(word, None)` computes, for an ASCII word.
fn keyword_of(word: &str) -> Keyword {
    let b = word.as_bytes();
    if b.len() > MAX_KEYWORD_LEN {
        return Keyword::NoKeyword;
    }
    let mut buf = [0u8; MAX_KEYWORD_LEN];
    for (d, s) in buf.iter_mut().zip(b) {
        *d = s.to_ascii_uppercase();
    }
    // ASCII in, ASCII out: always valid UTF-8.
    let upper = std::str::from_utf8(&buf[..b.len()]).unwrap_or("");
    keywords().get(upper).copied().unwrap_or(Keyword::NoKeyword)
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn operator(text: &str) -> Option<Token> {
    Some(match text {
        "=" => Token::Eq,
        "<" => Token::Lt,
        ">" => Token::Gt,
        "<=" => Token::LtEq,
        ">=" => Token::GtEq,
        "<>" | "!=" => Token::Neq,
        "+" => Token::Plus,
        "-" => Token::Minus,
        "*" => Token::Mul,
        "/" => Token::Div,
        "%" => Token::Mod,
        "||" => Token::StringConcat,
        _ => return None,
    })
}

/// `text` between its quotes with doubled quotes collapsed (sqlparser's unescape mode).
fn unquote(text: &str, q: char) -> String {
    let inner = &text[1..text.len() - 1];
    let doubled: &[char] = &[q, q];
    let pair: String = doubled.iter().collect();
    if inner.contains(&pair) {
        inner.replace(&pair, &q.to_string())
    } else {
        inner.to_owned()
    }
}

/// The sqlparser token for `t`, or `None` when it is outside the exactly-converted subset.
/// `next` is the byte right after the token (0 at the end of the text).
fn convert(src: &str, t: &Tok, lits: &[LitSpan], next: u8) -> Option<Token> {
    let text = t.text(src);
    Some(match t.kind {
        Tk::Word => {
            // A quote right after a word may make it a string prefix for sqlparser (`b"…"`).
            if !text.is_ascii() || next == b'\'' || next == b'"' {
                return None;
            }
            Token::Word(Word {
                value: text.to_owned(),
                quote_style: None,
                keyword: keyword_of(text),
            })
        }
        Tk::QIdent if text.starts_with('"') => Token::Word(Word {
            value: unquote(text, '"'),
            quote_style: Some('"'),
            keyword: Keyword::NoKeyword,
        }),
        Tk::Num => {
            let (int, frac) = match text.split_once('.') {
                Some((i, f)) => (i, Some(f)),
                None => (text, None),
            };
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
            // `1_000`, `0x1F`, `1e5`, `1.`, `.5`, `1L`, `1.2.3`: left to sqlparser.
            if !digits(int) || !frac.is_none_or(digits) || is_ident_char(next) || next == b'.' {
                return None;
            }
            Token::Number(text.to_owned(), false)
        }
        Tk::Str => {
            let lit = lits.get(t.lit as usize)?;
            if lit.kind != LitKind::Plain || lit.prefix != 0 || text.contains('\\') {
                return None;
            }
            Token::SingleQuotedString(unquote(text, '\''))
        }
        Tk::Param => {
            if is_ident_char(next) {
                return None;
            }
            Token::Placeholder(text.to_owned())
        }
        Tk::Op => {
            if is_op_char(next) {
                return None;
            }
            operator(text)?
        }
        Tk::Dot => {
            if !(next.is_ascii_alphabetic() || next == b'_' || next == b'"' || next == b'*') {
                return None;
            }
            Token::Period
        }
        Tk::LParen => Token::LParen,
        Tk::RParen => Token::RParen,
        Tk::LBracket => Token::LBracket,
        Tk::RBracket => Token::RBracket,
        Tk::Comma => Token::Comma,
        Tk::Semi => Token::SemiColon,
        Tk::DColon => Token::DoubleColon,
        Tk::QIdent | Tk::Colon | Tk::Other => return None,
    })
}

/// sqlparser tokens (without whitespace and comments, which its parser skips) for the
/// statement text `src[bs..be]` made of `toks`, with spans relative to that text; `None` when
/// any token is outside the exactly-converted subset or the statement is a `COPY` (whose data
/// parsing reads whitespace tokens).
pub(super) fn for_statement(
    src: &str,
    toks: &[Tok],
    lits: &[LitSpan],
    bs: usize,
    be: usize,
) -> Option<Vec<TokenWithSpan>> {
    if toks.first().is_none_or(|t| t.is_kw(src, "copy")) {
        return None;
    }
    let b = src.as_bytes();
    let text = &b[bs..be];
    let mut loc = LocTracker::new();
    let mut at = |offset: usize| {
        let (line, col) = loc.at(text, offset);
        Location::new(line.into(), col.into())
    };
    let mut out = Vec::with_capacity(toks.len());
    for t in toks {
        let next = if (t.end as usize) < be {
            b[t.end as usize]
        } else {
            0
        };
        let token = convert(src, t, lits, next)?;
        let start = at(t.start as usize - bs);
        let end = at(t.end as usize - bs);
        out.push(TokenWithSpan::new(token, Span::new(start, end)));
    }
    #[cfg(debug_assertions)]
    check_against_sqlparser(&src[bs..be], &out);
    Some(out)
}

/// Debug builds: the converted tokens must equal sqlparser's own (whitespace dropped).
#[cfg(debug_assertions)]
fn check_against_sqlparser(text: &str, ours: &[TokenWithSpan]) {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::tokenizer::Tokenizer;
    let theirs: Vec<TokenWithSpan> = Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize_with_location()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    assert_eq!(
        ours.len(),
        theirs.len(),
        "token count differs from sqlparser's for {text:?}: {ours:?} vs {theirs:?}"
    );
    for (o, s) in ours.iter().zip(&theirs) {
        assert!(
            o.token == s.token && o.span == s.span,
            "token differs from sqlparser's for {text:?}: {o:?} vs {s:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::lexer;

    /// Converts the first statement of `sql`; the debug-build check compares with sqlparser.
    fn converted(sql: &str) -> Option<Vec<TokenWithSpan>> {
        let lexed = lexer::lex(sql);
        let r = lexed.stmts.first().expect("one statement");
        let (bs, be) = r.byte_range(&lexed.toks);
        for_statement(sql, lexed.stmt_toks(r), &lexed.lits, bs, be)
    }

    #[test]
    fn typical_oltp_statements_convert_exactly() {
        for sql in [
            "SELECT p.name, pr.amount FROM products p JOIN prices pr ON pr.sku_id = p.sku_id WHERE p.sku_id = $1",
            "UPDATE stock SET on_hand = on_hand - $3 WHERE sku_id = $1 AND warehouse_id = $2 AND on_hand >= $3",
            "INSERT INTO stock (sku_id, warehouse_id, on_hand) VALUES ($1, $2, $3) ON CONFLICT (sku_id, warehouse_id) DO UPDATE SET on_hand = stock.on_hand + EXCLUDED.on_hand",
            "select \"Weird \"\"name\"\"\".x, 'it''s', 12.50, count(*) from t where a <> 1 and b != 2 or c <= 3 or d||'x' = 'y' -- hi\n and e::int % 2 = 0",
            "  SELECT\n\t1 /* multi\nline */ , 'a\nb' , x[1] FROM t",
            "SELECT ROW_NUMBER() OVER (ORDER BY a DESC) FROM t WHERE a > -1",
        ] {
            assert!(converted(sql).is_some(), "{sql}");
        }
    }

    #[test]
    fn tokens_sqlparser_reads_differently_are_left_to_it() {
        for sql in [
            "SELECT E'a\\n'",
            "SELECT b'101'",
            "SELECT x\"y\"",
            "SELECT $$body$$",
            "SELECT 1_000",
            "SELECT 0x1F",
            "SELECT 1e5",
            "SELECT 1L",
            "SELECT $1abc",
            "SELECT a=-1",
            "SELECT a @> b",
            "SELECT a->>'k'",
            "SELECT 'a\\'",
            "SELECT :name",
            "SELECT naïve FROM t",
            "COPY t FROM STDIN",
            "SELECT U&'d\\0061t'",
        ] {
            assert!(converted(sql).is_none(), "{sql}");
        }
    }

    /// Pieces whose juxtaposition exercises every conversion rule: words that are string
    /// prefixes, numbers sqlparser reads differently, operators that glue, comments, non-ASCII.
    const PIECES: &[&str] = &[
        "select",
        "FROM",
        "a",
        "b_1",
        "e",
        "b",
        "x",
        "n",
        "u",
        "on",
        "\"Q\"\"x\"",
        "\"a\"",
        "1",
        "12.5",
        "0x1",
        "1e3",
        "1_0",
        "7L",
        "'a'",
        "'it''s'",
        "'x\ny'",
        "E'x'",
        "$1",
        "$12",
        "$$d$$",
        "=",
        "<",
        "<=",
        "<>",
        "!=",
        "||",
        "-",
        "+",
        "*",
        "/",
        "%",
        "@>",
        "->>",
        "::",
        ":",
        "(",
        ")",
        ",",
        ".",
        "[",
        "]",
        ";",
        "&",
        "é",
        " ",
        " ",
        "\n",
        "\t",
        "\r\n",
        "-- c\n",
        "/* c */",
    ];

    proptest::proptest! {
        #[test]
        fn converted_tokens_always_equal_sqlparsers(
            picks in proptest::collection::vec(0..PIECES.len(), 1..30)
        ) {
            let sql: String = picks.iter().map(|&i| PIECES[i]).collect();
            let lexed = lexer::lex(&sql);
            if lexed.error.is_none() {
                for r in &lexed.stmts {
                    let (bs, be) = r.byte_range(&lexed.toks);
                    // Debug builds compare with sqlparser's tokenizer inside and panic on any
                    // difference; the count keeps the result used.
                    let n = for_statement(&sql, lexed.stmt_toks(r), &lexed.lits, bs, be)
                        .map_or(0, |t| t.len());
                    proptest::prop_assert!(n <= lexed.stmt_toks(r).len());
                }
            }
        }
    }

    #[test]
    fn keywords_are_recognised_case_insensitively_and_identifiers_are_not_keywords() {
        assert_eq!(keyword_of("select"), Keyword::SELECT);
        assert_eq!(keyword_of("SeLeCt"), Keyword::SELECT);
        assert_eq!(keyword_of("sku_id"), Keyword::NoKeyword);
        assert_eq!(keyword_of(&"x".repeat(100)), Keyword::NoKeyword);
        assert!(
            ALL_KEYWORDS.iter().all(|w| w.len() <= MAX_KEYWORD_LEN),
            "every sqlparser keyword fits the lookup buffer"
        );
        assert_eq!(keywords().len(), ALL_KEYWORDS.len());
    }
}

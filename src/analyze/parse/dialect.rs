//! sqlparser's PostgreSQL dialect with a cheaper parse of plain column references.
//!
//! Why: for every expression that starts with a word, sqlparser 0.55's `parse_prefix` first
//! tries to read `<data type> '<string>'` (`DATE '2024-01-01'`): it parses the word as a type
//! name, gets a custom type (every plain identifier is one), and fails with a *formatted* error
//! message before parsing the word again as an identifier. That failed attempt (allocations,
//! `format!`) was a fifth of a brand-new OLTP statement's analysis; with the literal and
//! precedence short-cuts below, this dialect saves 25–37 % of a brand-new OLTP statement's
//! instructions (15 % over the golden files' statements; callgrind, BENCHMARKS.md,
//! 2026-12-08). The dialect hook [`Dialect::parse_prefix`] runs before that attempt; here it
//! returns the identifier directly, but only where sqlparser's own path provably ends the same
//! way:
//!
//! * the word is not one of the keywords that sqlparser's data-type parser or its
//!   reserved-word expression parser treat specially ([`special_prefix_keyword`], every keyword
//!   named in `parse_data_type_helper` and `parse_expr_prefix_by_reserved_word` of 0.55.0), so
//!   the type attempt can only produce a custom type (which sqlparser rejects) and the word
//!   has no expression meaning of its own;
//! * the next token is one after which sqlparser returns a bare identifier: not `(` (function
//!   call, type modifiers), `[` (array type), a string (introducer / typed string), `=>`, or
//!   `COLLATE`; for `a.b.c` the token after the dotted chain must not be `(` or `[` either.
//!
//! A dotted name `a.b.c` whose parts all qualify is returned whole as the compound identifier
//! sqlparser would build. The one observable difference: sqlparser spends one level of its
//! recursion limit (50) per dotted part, so a statement nested to exactly that limit with a
//! qualified column at the bottom parses here and fails there (where it would be classified
//! by keywords, never read-only).
//!
//! Numbers, plain strings and `$n` parameters hit the same failed type attempt (sqlparser
//! formats an "expected a data type name" error for each): they go straight to
//! `Parser::parse_value`, which is what sqlparser does after the attempt, unless `COLLATE`
//! follows.
//!
//! The precedence of the token after an expression ([`Dialect::get_next_precedence`], asked
//! many times per statement) is answered from a reference for the common tokens, with the
//! values sqlparser's default gives them; sqlparser clones the token (a `String` per word) to
//! answer it.
//!
//! Every other case is left to sqlparser (the hook returns `None`). Every other dialect
//! method is PostgreSqlDialect's (all of its overrides are forwarded; `dialect()` reports
//! PostgreSqlDialect so sqlparser's `dialect_of!` checks are unchanged). Debug builds parse
//! every statement with both dialects and require identical results, and a test compares them
//! for every sqlparser keyword in many positions.

use sqlparser::ast::Expr;
use sqlparser::dialect::{Dialect, PostgreSqlDialect, Precedence};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

/// PostgreSqlDialect plus a fast path for plain identifiers (see the module doc).
#[derive(Debug)]
pub(super) struct PgDialect(PostgreSqlDialect);

/// The dialect every analysis parses with.
pub(super) const PG: PgDialect = PgDialect(PostgreSqlDialect {});

/// Keywords named in sqlparser 0.55.0's `parse_data_type_helper` (a type, or part of one) or
/// `parse_expr_prefix_by_reserved_word` (an expression of its own: `CASE`, `NOT`, `TRUE`,
/// `CURRENT_USER`, `POINT '…'`, …). Such a word goes through sqlparser's full path.
fn special_prefix_keyword(k: Keyword) -> bool {
    use Keyword as K;
    matches!(
        k,
        K::ANY
            | K::ARRAY
            | K::BIGDECIMAL
            | K::BIGINT
            | K::BIGNUMERIC
            | K::BINARY
            | K::BIT
            | K::BLOB
            | K::BOOL
            | K::BOOLEAN
            | K::BOX
            | K::BYTEA
            | K::BYTES
            | K::CASE
            | K::CAST
            | K::CEIL
            | K::CHAR
            | K::CHARACTER
            | K::CIRCLE
            | K::CLOB
            | K::CONVERT
            | K::CURRENT_CATALOG
            | K::CURRENT_DATE
            | K::CURRENT_TIME
            | K::CURRENT_TIMESTAMP
            | K::CURRENT_USER
            | K::DATE
            | K::DATE32
            | K::DATETIME
            | K::DATETIME64
            | K::DEC
            | K::DECIMAL
            | K::DOUBLE
            | K::ENUM
            | K::ENUM16
            | K::ENUM8
            | K::EXISTS
            | K::EXTRACT
            | K::FALSE
            | K::FIXEDSTRING
            | K::FLOAT
            | K::FLOAT32
            | K::FLOAT4
            | K::FLOAT64
            | K::FLOAT8
            | K::FLOOR
            | K::INT
            | K::INT128
            | K::INT16
            | K::INT2
            | K::INT256
            | K::INT32
            | K::INT4
            | K::INT64
            | K::INT8
            | K::INTEGER
            | K::INTERVAL
            | K::JSON
            | K::JSONB
            | K::LARGE
            | K::LINE
            | K::LOCALTIME
            | K::LOCALTIMESTAMP
            | K::LONGBLOB
            | K::LONGTEXT
            | K::LOWCARDINALITY
            | K::LSEG
            | K::MAP
            | K::MATCH
            | K::MEDIUMBLOB
            | K::MEDIUMINT
            | K::MEDIUMTEXT
            | K::NESTED
            | K::NOT
            | K::NULL
            | K::NULLABLE
            | K::NUMERIC
            | K::NVARCHAR
            | K::OBJECT
            | K::OVERLAY
            | K::PATH
            | K::POINT
            | K::POLYGON
            | K::POSITION
            | K::PRECISION
            | K::PRIOR
            | K::REAL
            | K::REGCLASS
            | K::SAFE_CAST
            | K::SELECT
            | K::SESSION_USER
            | K::SET
            | K::SIGNED
            | K::SMALLINT
            | K::STRING
            | K::STRUCT
            | K::SUBSTRING
            | K::TABLE
            | K::TEXT
            | K::TIME
            | K::TIMESTAMP
            | K::TIMESTAMPTZ
            | K::TIMETZ
            | K::TINYBLOB
            | K::TINYINT
            | K::TINYTEXT
            | K::TRIGGER
            | K::TRIM
            | K::TRUE
            | K::TRY_CAST
            | K::TRY_CONVERT
            | K::TUPLE
            | K::TYPE
            | K::UINT128
            | K::UINT16
            | K::UINT256
            | K::UINT32
            | K::UINT64
            | K::UINT8
            | K::UNION
            | K::UNSIGNED
            | K::USER
            | K::UUID
            | K::VARBINARY
            | K::VARBIT
            | K::VARCHAR
            | K::VARYING
            | K::WITH
            | K::WITHOUT
            | K::ZONE
    )
}

/// Tokens after which sqlparser's `parse_prefix` returns a word as a bare identifier (operators
/// and punctuation that neither continue a type name nor start a call, subscript or string).
fn ends_identifier(t: &Token) -> bool {
    match t {
        Token::EOF
        | Token::Comma
        | Token::RParen
        | Token::SemiColon
        | Token::DoubleColon
        | Token::Eq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::Mod
        | Token::StringConcat => true,
        Token::Word(w) => w.keyword != Keyword::COLLATE,
        _ => false,
    }
}

/// A number, plain string or `$n` parameter: sqlparser's type attempt fails on it at once
/// (with a formatted "expected a data type name" error) and its `parse_prefix` then returns
/// `parse_value()`, unless `COLLATE` follows.
fn literal(parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
    match &parser.peek_token_ref().token {
        Token::Placeholder(_) | Token::Number(..) | Token::SingleQuotedString(_) => {}
        _ => return None,
    }
    if matches!(&parser.peek_nth_token_ref(1).token, Token::Word(w) if w.keyword == Keyword::COLLATE)
    {
        return None;
    }
    Some(parser.parse_value().map(Expr::Value))
}

/// The identifier sqlparser's `parse_prefix` would return for the next tokens, when the fast
/// path applies (see the module doc); `None` leaves the expression to sqlparser.
fn plain_identifier(parser: &mut Parser) -> Option<Expr> {
    let Token::Word(w) = &parser.peek_token_ref().token else {
        return None;
    };
    if special_prefix_keyword(w.keyword) {
        return None;
    }
    // `w.x.y` where every part would take this path on its own: the compound identifier
    // sqlparser builds from the same parts (it reads each `.x` with a nested expression parse
    // and flattens the result), without those nested parses.
    let mut i = 1;
    while parser.peek_nth_token_ref(i).token == Token::Period {
        match &parser.peek_nth_token_ref(i + 1).token {
            Token::Word(x) if !special_prefix_keyword(x.keyword) => i += 2,
            _ => break,
        }
    }
    if i > 1 && ends_identifier(&parser.peek_nth_token_ref(i).token) {
        let mut parts = Vec::with_capacity(i / 2 + 1);
        for _ in 0..i {
            let tok = parser.next_token();
            if let Token::Word(w) = tok.token {
                parts.push(w.into_ident(tok.span));
            }
        }
        return Some(Expr::CompoundIdentifier(parts));
    }
    let next = &parser.peek_nth_token_ref(1).token;
    if *next == Token::Period {
        // sqlparser's type attempt reads the dotted name `w.x.y` (and fails unless an array
        // suffix `[…]` or modifiers `(…)` follow it); the identifier is `w` alone, the rest is
        // parsed by the caller as a compound expression.
        let mut i = 1;
        loop {
            match &parser.peek_nth_token_ref(i).token {
                Token::Period => {}
                Token::LParen | Token::LBracket => return None,
                _ => break,
            }
            match &parser.peek_nth_token_ref(i + 1).token {
                Token::Word(_) => i += 2,
                // `w.*`, `w.1`: the type attempt fails on it; the caller reads the rest.
                Token::Mul | Token::Number(..) => break,
                _ => return None,
            }
        }
    } else if !ends_identifier(next) {
        return None;
    }
    let tok = parser.next_token();
    match tok.token {
        Token::Word(w) => Some(Expr::Identifier(w.into_ident(tok.span))),
        _ => None,
    }
}

impl PgDialect {
    /// The precedence sqlparser 0.55 gives the most common tokens after an expression, read
    /// through a reference: PostgreSqlDialect's hook and sqlparser's default both start with
    /// `peek_token()`, which clones the token (a `String` for every word) on each of the many
    /// calls per statement. The values are those of `get_next_precedence_default` (after
    /// PostgreSqlDialect's hook, which only claims `COLLATE`, `[` and operators not listed
    /// here); anything else gets `None` and goes through sqlparser's path.
    fn common_precedence(&self, parser: &Parser) -> Option<u8> {
        let p = |prec| self.prec_value(prec);
        Some(match &parser.peek_token_ref().token {
            Token::Word(w) => match w.keyword {
                Keyword::AND => p(Precedence::And),
                Keyword::OR => p(Precedence::Or),
                Keyword::XOR
                | Keyword::AT
                | Keyword::NOT
                | Keyword::IS
                | Keyword::IN
                | Keyword::BETWEEN
                | Keyword::OVERLAPS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::RLIKE
                | Keyword::REGEXP
                | Keyword::SIMILAR
                | Keyword::OPERATOR
                | Keyword::DIV
                | Keyword::COLLATE => return None,
                _ => 0,
            },
            Token::Eq | Token::Lt | Token::LtEq | Token::Neq | Token::Gt | Token::GtEq => {
                p(Precedence::Eq)
            }
            Token::Plus | Token::Minus => p(Precedence::PlusMinus),
            Token::Mul | Token::Div | Token::Mod => p(Precedence::MulDivModOp),
            Token::DoubleColon => p(Precedence::DoubleColon),
            Token::Period => p(Precedence::Period),
            Token::Comma | Token::RParen | Token::SemiColon | Token::EOF => 0,
            _ => return None,
        })
    }
}

impl Dialect for PgDialect {
    fn dialect(&self) -> std::any::TypeId {
        self.0.dialect()
    }

    fn parse_prefix(&self, parser: &mut Parser) -> Option<Result<Expr, ParserError>> {
        literal(parser).or_else(|| plain_identifier(parser).map(Ok))
    }

    // Every method PostgreSqlDialect 0.55 overrides, forwarded.

    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        self.0.identifier_quote_style(identifier)
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.0.is_delimited_identifier_start(ch)
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        self.0.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        self.0.is_identifier_part(ch)
    }
    fn supports_unicode_string_literal(&self) -> bool {
        self.0.supports_unicode_string_literal()
    }
    fn is_custom_operator_part(&self, ch: char) -> bool {
        self.0.is_custom_operator_part(ch)
    }
    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
        self.common_precedence(parser)
            .map(Ok)
            .or_else(|| self.0.get_next_precedence(parser))
    }
    fn supports_filter_during_aggregation(&self) -> bool {
        self.0.supports_filter_during_aggregation()
    }
    fn supports_group_by_expr(&self) -> bool {
        self.0.supports_group_by_expr()
    }
    fn prec_value(&self, prec: Precedence) -> u8 {
        self.0.prec_value(prec)
    }
    fn allow_extract_custom(&self) -> bool {
        self.0.allow_extract_custom()
    }
    fn allow_extract_single_quotes(&self) -> bool {
        self.0.allow_extract_single_quotes()
    }
    fn supports_create_index_with_clause(&self) -> bool {
        self.0.supports_create_index_with_clause()
    }
    fn supports_explain_with_utility_options(&self) -> bool {
        self.0.supports_explain_with_utility_options()
    }
    fn supports_listen_notify(&self) -> bool {
        self.0.supports_listen_notify()
    }
    fn supports_factorial_operator(&self) -> bool {
        self.0.supports_factorial_operator()
    }
    fn supports_comment_on(&self) -> bool {
        self.0.supports_comment_on()
    }
    fn supports_load_extension(&self) -> bool {
        self.0.supports_load_extension()
    }
    fn supports_named_fn_args_with_colon_operator(&self) -> bool {
        self.0.supports_named_fn_args_with_colon_operator()
    }
    fn supports_named_fn_args_with_expr_name(&self) -> bool {
        self.0.supports_named_fn_args_with_expr_name()
    }
    fn supports_empty_projections(&self) -> bool {
        self.0.supports_empty_projections()
    }
    fn supports_nested_comments(&self) -> bool {
        self.0.supports_nested_comments()
    }
    fn supports_string_escape_constant(&self) -> bool {
        self.0.supports_string_escape_constant()
    }
    fn supports_numeric_literal_underscores(&self) -> bool {
        self.0.supports_numeric_literal_underscores()
    }
    fn supports_array_typedef_with_brackets(&self) -> bool {
        self.0.supports_array_typedef_with_brackets()
    }
    fn supports_geometric_types(&self) -> bool {
        self.0.supports_geometric_types()
    }
}

/// Debug builds: `ours` (parsed with [`PgDialect`]) must equal what sqlparser's own
/// PostgreSqlDialect makes of the same input.
#[cfg(debug_assertions)]
pub(super) fn check_same_as_stock(
    ours: &Result<Vec<sqlparser::ast::Statement>, ParserError>,
    theirs: Result<Vec<sqlparser::ast::Statement>, ParserError>,
    what: &dyn std::fmt::Debug,
) {
    // See the module doc: a dotted name costs sqlparser recursion levels it does not cost us.
    if ours.is_ok() && matches!(theirs, Err(ParserError::RecursionLimitExceeded)) {
        return;
    }
    assert!(
        *ours == theirs,
        "PgDialect parses {what:?} differently from PostgreSqlDialect:\n{ours:?}\nvs\n{theirs:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::keywords::ALL_KEYWORDS;

    fn parse(d: &dyn Dialect, sql: &str) -> Result<Vec<sqlparser::ast::Statement>, String> {
        Parser::parse_sql(d, sql).map_err(|e| e.to_string())
    }

    #[test]
    fn every_keyword_in_every_position_parses_like_postgresql_dialect() {
        let contexts = [
            "SELECT {w}",
            "SELECT {w}, 1",
            "SELECT {w} = 1",
            "SELECT {w} FROM t",
            "SELECT {w} x FROM t",
            "SELECT {w} AS x",
            "SELECT {w}.x = $1",
            "SELECT {w}.x.y, {w}.*",
            "SELECT {w}.x[1], {w}.f(1), {w}.1",
            "SELECT {w}.x(1)[2] 'a'",
            "SELECT {w}(1), {w}[1], {w} 'x', {w} $1, {w} 1",
            "SELECT {w} COLLATE \"C\"",
            "SELECT {w}::int + {w} - 1 * {w} / 2 % {w} || 'a'",
            "SELECT a FROM t WHERE {w} > $1 AND {w} <= 2 OR {w} <> 3 AND {w} != 4 AND {w} >= 5",
            "SELECT f({w}, ({w}), {w} IS NULL, {w} IN (1), {w} BETWEEN 1 AND 2)",
            "UPDATE t SET a = {w} - 1 WHERE {w} = $1; SELECT {w}",
            "SELECT * FROM t JOIN u ON u.{w} = t.{w} WHERE t.{w} = {w}",
            "SELECT {w} => 1",
            "SELECT {w} {w}",
            "SELECT {w}.'x', {w}.\"y\"",
            "SELECT a.{w}, a.{w}.{w} = 1, {w}.{w}::int, a.b.{w}(1), a.{w}[1]",
            "SELECT * FROM t WHERE t.{w} = $1 AND s.t.{w} IN (1, 2) OR t.{w} COLLATE \"C\" = 'x'",
            "SELECT a.{w}.* , a.{w} {w}, \"A\".{w} FROM t",
            "SELECT 1, 1.5, $1, 'x', 'x' COLLATE \"C\", $2 COLLATE \"C\", 1 {w}, $3 {w}, 'y' {w}",
            "SELECT * FROM t WHERE {w} = 'a' || 'b' AND $1 = {w} AND 2 < {w} AND 'x'::{w} = $2::{w}",
            "SELECT (a {w} b), f(a {w}), a {w} 1, a + b {w} c * d - e / f % g, a {w} NOT IN (1)",
            "SELECT a FROM t WHERE a = 1 {w} b <> 2 OR c >= 3 AND d <= 4 AND e > 5 AND f < 6 {w}",
        ];
        let mut words: Vec<String> = ALL_KEYWORDS
            .iter()
            .map(|k| k.to_ascii_lowercase())
            .collect();
        words.extend(["foo".into(), "\"Foo\"".into(), "_x".into()]);
        for w in &words {
            for c in contexts {
                let sql = c.replace("{w}", w);
                assert_eq!(
                    parse(&PG, &sql),
                    parse(&PostgreSqlDialect {}, &sql),
                    "{sql}"
                );
            }
        }
    }

    #[test]
    fn plain_identifiers_take_the_fast_path() {
        let mut p = Parser::new(&PG)
            .try_with_sql("p.sku_id = 1")
            .expect("tokenizes");
        assert!(matches!(
            plain_identifier(&mut p),
            Some(Expr::CompoundIdentifier(parts)) if parts.len() == 2
        ));
        let mut p = Parser::new(&PG).try_with_sql("now()").expect("tokenizes");
        assert!(
            plain_identifier(&mut p).is_none(),
            "a call is left to sqlparser"
        );
    }
}

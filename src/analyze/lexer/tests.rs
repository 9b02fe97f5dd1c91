use super::*;
use crate::analyze::normalize::{canonical_key_text, literal_value, normalize};

#[test]
fn splits_statements_and_keeps_atomic_bodies_whole() {
    let l = lex("SELECT 1; UPDATE t SET a = 'x;y'; ;");
    assert_eq!(l.stmts.len(), 2);
    let l = lex("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END; SELECT 3");
    assert_eq!(l.stmts.len(), 2);
}

#[test]
fn normalizes_literals_comments_and_case() {
    assert_eq!(
        normalize("SELECT  a, B FROM \"T\"  WHERE x = 'it''s' AND y IN (1, 2.5, -3) /* c */ -- d\n AND z = $1::int"),
        "select a, b from \"T\" where x = ? and y in (?, ?, - ?) and z = $1::int"
    );
    assert_eq!(
        normalize("select count(*) from t"),
        "select count(*) from t"
    );
    assert_eq!(
        normalize("SELECT $tag$a;b$tag$, E'\\'', 1e5"),
        "select ?, ?, ?"
    );
}

#[test]
fn operator_trailing_minus_rule() {
    assert_eq!(normalize("select a=-1"), "select a = - ?");
    assert_eq!(normalize("select a @- 1"), "select a @- ?");
}

#[test]
fn literal_locations_match_sqlparser_convention() {
    let l = lex("SELECT\n  'é', 5");
    assert_eq!((l.lits[0].line, l.lits[0].col), (2, 3));
    assert_eq!((l.lits[1].line, l.lits[1].col), (2, 8));
}

#[test]
fn literal_values_are_decoded_and_canonical() {
    let src = "select 007, 'W1', E'a\\nb', $$x$$, 1_000, 0x1F, 7.50, '08'";
    let l = lex(src);
    let v: Vec<String> = l.lits.iter().map(|x| literal_value(src, x)).collect();
    assert_eq!(v, vec!["7", "W1", "a\nb", "x", "1000", "31", "7.5", "8"]);
    assert_eq!(canonical_key_text(" 0042 "), "42");
    assert_eq!(canonical_key_text("W01"), "W01");
}

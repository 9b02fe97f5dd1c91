//! Routing hints in comments, and statement normalization.

use super::*;

// ------------------------------------------------------------------ hints

#[test]
fn hints_are_parsed_from_a_leading_comment() {
    let x =
        a("/* pgsidecar: route=primary cache=off cache_ttl=30s lock=off */ SELECT * FROM stock");
    assert_eq!(x.hints.route, Some(RouteHint::Primary));
    assert_eq!(x.hints.cache, Some(false));
    assert_eq!(x.hints.cache_ttl, Some(std::time::Duration::from_secs(30)));
    assert_eq!(x.hints.lock, Some(false));
    assert!(x.hints.warnings.is_empty());
    assert!(x.read_only, "hints do not change the analysis");
}

#[test]
fn hints_tolerate_spacing_and_warn_on_unknown_keys() {
    let x =
        a("SELECT 1 /*pgsidecar:route = replica ,  cache=ON,cache_ttl= 250ms  shard=3 bogus */");
    assert_eq!(x.hints.route, Some(RouteHint::Replica));
    assert_eq!(x.hints.cache, Some(true));
    assert_eq!(
        x.hints.cache_ttl,
        Some(std::time::Duration::from_millis(250))
    );
    assert_eq!(x.hints.warnings.len(), 2, "{:?}", x.hints.warnings);
    let x = a("/* PGSIDECAR route=any cache_ttl=5m */ SELECT 1");
    assert_eq!(x.hints.route, Some(RouteHint::Any));
    assert_eq!(x.hints.cache_ttl, Some(std::time::Duration::from_secs(300)));
    let x = a("/* pgsidecar: route=sideways cache_ttl=soon */ SELECT 1");
    assert_eq!(x.hints.route, None);
    assert_eq!(x.hints.warnings.len(), 2);
}

#[test]
fn hints_in_line_comments_and_mid_statement() {
    let x = a("SELECT * FROM stock -- pgsidecar: lock=on\nWHERE sku_id = 1");
    assert_eq!(x.hints.lock, Some(true));
    assert_eq!(x.tables_read, vec![t("stock")]);
    let x = a("UPDATE stock /* pgsidecar: lock=off */ SET on_hand = 1 WHERE sku_id = 1");
    assert_eq!(x.hints.lock, Some(false));
}

#[test]
fn ordinary_comments_are_not_hints() {
    let x = a("/* just a comment about pgsidecar */ SELECT 1 -- pgsidecarx: route=primary");
    assert!(x.hints.is_empty(), "{:?}", x.hints);
}

// ------------------------------------------------------------------ normalization

#[test]
fn normalized_replaces_literals_and_collapses_whitespace() {
    assert_eq!(
        a("SELECT *\n  FROM   Stock WHERE sku_id = 42 AND name = 'x''y' AND w IN (1, 2)")
            .normalized,
        "select * from stock where sku_id = ? and name = ? and w in (?, ?)"
    );
    assert_eq!(
        normalize("SELECT $1::int, E'a\\'b', $q$x$q$"),
        "select $1::int, ?, ?"
    );
    assert_eq!(normalize("select 1; select 2"), "select ?; select ?");
    assert_eq!(
        normalize("SELECT \"Q\".x FROM \"Q\""),
        "select \"Q\".x from \"Q\""
    );
}

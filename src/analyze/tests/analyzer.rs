//! The `Analyzer`: caching by text and by shape, sharing, memory bounds.

use super::*;

#[test]
fn analyzer_returns_the_cached_analysis_for_repeated_text() {
    let an = Analyzer::default();
    let x = an.analyze("SELECT * FROM stock WHERE sku_id = $1");
    let y = an.analyze("SELECT * FROM stock WHERE sku_id = $1");
    assert!(Arc::ptr_eq(&x, &y));
    let s = an.stats();
    assert_eq!((s.hits, s.misses), (1, 1));
}

#[test]
fn analyzer_accepts_wire_bytes() {
    let an = Analyzer::default();
    let x = an.analyze_bytes(b"SELECT 1");
    let y = an.analyze("SELECT 1");
    assert!(Arc::ptr_eq(&x, &y));
    let z = an.analyze_bytes(b"SELECT '\xff'");
    assert!(z.read_only);
}

#[test]
fn analyzer_reuses_a_shape_with_new_literals() {
    let an = Analyzer::default();
    let x = an.analyze(
        "UPDATE stock SET on_hand = on_hand - 1 WHERE sku_id = 10 AND warehouse_id = 'W1'",
    );
    let y = an.analyze(
        "UPDATE stock SET on_hand = on_hand - 3 WHERE sku_id = 11 AND warehouse_id = 'W2'",
    );
    assert_eq!(an.stats().template_hits, 1);
    assert_eq!(
        x.lock_keys(&t("stock"), STOCK_KEY),
        KeyExtraction::Keys(vec![vec![lit("10"), lit("W1")]])
    );
    assert_eq!(
        y.lock_keys(&t("stock"), STOCK_KEY),
        KeyExtraction::Keys(vec![vec![lit("11"), lit("W2")]])
    );
    assert_eq!(
        y.sql(),
        "UPDATE stock SET on_hand = on_hand - 3 WHERE sku_id = 11 AND warehouse_id = 'W2'"
    );
}

#[test]
fn analyzer_shape_reuse_matches_full_analysis() {
    let an = Analyzer::default();
    let pairs = [
        (
            "SELECT * FROM stock WHERE sku_id = 1 AND warehouse_id = -2 FOR UPDATE",
            "SELECT * FROM stock WHERE sku_id = 3 AND warehouse_id = -4 FOR UPDATE",
        ),
        (
            "INSERT INTO stock (sku_id, warehouse_id) VALUES (1, 'a'), (2, E'b\\n')",
            "INSERT INTO stock (sku_id, warehouse_id) VALUES (5, 'c'), (6, $$d$$)",
        ),
        (
            "DELETE FROM stock WHERE (sku_id, warehouse_id) IN ((1, 2), (3, 4))",
            "DELETE FROM stock WHERE (sku_id, warehouse_id) IN ((5, 6), (7, 8))",
        ),
        (
            "SELECT * FROM events WHERE at > '2024-01-01'",
            "SELECT * FROM events WHERE at > 'now'",
        ),
        (
            "/* pgsidecar: route=replica */ SELECT 1",
            "/* pgsidecar: route=primary */ SELECT 2",
        ),
        ("SELECT pg_advisory_lock(1)", "SELECT pg_advisory_lock(2)"),
        ("SELECT nextval('a')", "SELECT nextval('b')"),
    ];
    for (first, second) in pairs {
        let _ = an.analyze(first);
        let cached = an.analyze(second);
        let fresh = analyze(second, &cat());
        assert_eq!(cached.describe(), fresh.describe(), "{second}");
        assert_eq!(
            cached.lock_keys(&t("stock"), STOCK_KEY),
            fresh.lock_keys(&t("stock"), STOCK_KEY),
            "{second}"
        );
    }
    assert!(an.stats().template_hits >= 6, "{:?}", an.stats());
}

#[test]
fn analyzer_shape_reuse_matches_full_analysis_over_the_golden_corpus() {
    let an = Analyzer::default();
    for sql in GOLDEN {
        let _ = an.analyze(sql);
        // Same shape, other literal values.
        let variant: String = sql
            .chars()
            .map(|c| match c {
                '0'..='8' => ((c as u8) + 1) as char,
                '9' => '0',
                _ => c,
            })
            .collect::<String>()
            .replace("'W1'", "'Z9'")
            .replace("'stock'", "'other'");
        let cached = an.analyze(&variant);
        let fresh = analyze(&variant, &cat());
        assert_eq!(cached.describe(), fresh.describe(), "{variant}");
        assert_eq!(
            cached.lock_keys(&t("stock"), STOCK_KEY),
            fresh.lock_keys(&t("stock"), STOCK_KEY),
            "{variant}"
        );
    }
    assert!(an.stats().template_hits > 10, "{:?}", an.stats());
}

#[test]
fn analyzer_never_reuses_shapes_whose_analysis_depends_on_literals() {
    let an = Analyzer::default();
    let _ = an.analyze("SET statement_timeout = '1s'");
    let y = an.analyze("SET statement_timeout = '2s'");
    assert_eq!(
        y.session,
        Some(SessionEffect::Set {
            name: "statement_timeout".into(),
            value: "'2s'".into(),
            local: false
        })
    );
    let _ = an.analyze("SELECT set_config('a', 'x', false)");
    let y = an.analyze("SELECT set_config('b', 'y', true)");
    assert_eq!(
        y.session,
        Some(SessionEffect::Set {
            name: "b".into(),
            value: "'y'".into(),
            local: true
        })
    );
    let _ = an.analyze("COMMIT PREPARED 'a'");
    let _ = an.analyze("COMMIT PREPARED 'b'");
    assert_eq!(an.stats().template_hits, 0);
}

#[test]
fn analyzer_set_catalog_clears_the_cache() {
    let an = Analyzer::new(FunctionCatalog::builtin());
    let sql = "SELECT price_of(1)";
    assert!(!an.analyze(sql).read_only);
    an.set_catalog(FunctionCatalog::from_rows([("public", "price_of", 'i')]));
    let x = an.analyze(sql);
    assert!(x.read_only);
    assert!(x.cacheable());
    assert_eq!(an.stats().cached_entries, 1);
    assert_eq!(an.catalog().len(), 1);
    an.clear();
    assert_eq!(an.stats().cached_entries, 0);
}

#[test]
fn analyzer_is_shareable_across_threads() {
    let an = Arc::new(Analyzer::default());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let an = an.clone();
            std::thread::spawn(move || {
                for j in 0..200 {
                    let x = an.analyze(&format!(
                        "SELECT * FROM stock WHERE sku_id = {} AND warehouse_id = {i}",
                        j % 50
                    ));
                    assert!(x.read_only);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = an.stats();
    assert_eq!(s.hits + s.template_hits + s.misses, 800);
}

#[test]
fn analyzer_bounds_its_memory() {
    let an = Analyzer::with_config(
        FunctionCatalog::builtin(),
        AnalyzerConfig {
            max_cached_bytes: 64 * 1024,
            max_template_bytes: 64 * 1024,
            max_cached_statement_len: 1024,
        },
    );
    for i in 0..2000 {
        let _ = an.analyze(&format!("SELECT c{i} FROM t{i} WHERE id = {i}"));
    }
    let s = an.stats();
    assert!(
        s.cached_entries < 2000 && s.cached_templates < 2000,
        "{s:?}"
    );
    let big = format!("SELECT 1 {}", " ".repeat(2000));
    let _ = an.analyze(&big);
    let _ = an.analyze(&big);
    assert_eq!(an.stats().hits, s.hits, "long statements are not cached");
}

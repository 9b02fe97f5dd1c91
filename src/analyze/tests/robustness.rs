//! Robustness: deep nesting, mutated input, non-ASCII text.

use super::*;

#[test]
fn very_long_and_chains_do_not_overflow() {
    let cond: Vec<String> = (0..5000).map(|i| format!("c{i} = {i}")).collect();
    let sql = format!("SELECT * FROM t WHERE {}", cond.join(" AND "));
    let x = a(&sql);
    assert!(!x.read_only, "not parsed, hence conservative");
    let cond: Vec<String> = (0..500).map(|i| format!("c{i} = {i}")).collect();
    let sql = format!(
        "SELECT * FROM t WHERE sku_id = 1 AND {}",
        cond.join(" AND ")
    );
    let x = a(&sql);
    assert!(x.read_only);
}

#[test]
fn analysis_never_panics_on_truncated_or_mutated_input() {
    let mut seeds: Vec<String> = GOLDEN.iter().map(|s| s.to_string()).collect();
    seeds.push(
        "SELECT E'\\x41\\'', U&'\\0041', B'101', X'FF', $a$ $ $a$, \"é\"\"x\" FROM ONLY t -- é"
            .into(),
    );
    seeds.push(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 2".into(),
    );
    let mut n = 0;
    for seed in &seeds {
        let cuts: Vec<usize> = seed
            .char_indices()
            .map(|(i, _)| i)
            .chain([seed.len()])
            .collect();
        for &cut in &cuts {
            let x = a(&seed[..cut]);
            let _ = x.describe();
            let _ = x.lock_keys(&t("stock"), STOCK_KEY);
            n += 1;
        }
        // Mutations: drop one char, duplicate a quote, insert a semicolon.
        for (i, _) in seed.char_indices().step_by(3) {
            let mut m = seed.clone();
            m.remove(i);
            let _ = a(&m).describe();
            let mut m = seed.clone();
            m.insert(i, '\'');
            let _ = a(&m).describe();
            let mut m = seed.clone();
            m.insert(i, ';');
            let _ = a(&m).describe();
            n += 3;
        }
    }
    assert!(n > 1000);
}

#[test]
fn non_ascii_text_and_locations() {
    let x = a("SELECT 'é', \"Ünï\" FROM \"Tàble\" WHERE k = 'ß'\n AND sku_id = 5");
    assert_eq!(x.tables_read, vec![t("\"Tàble\"")]);
    assert_eq!(
        x.lock_keys(&t("\"Tàble\""), &["k", "sku_id"]),
        KeyExtraction::Keys(vec![vec![lit("ß"), lit("5")]])
    );
}

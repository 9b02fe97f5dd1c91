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

/// `WITH c0 AS (…), …, cN AS (…) DELETE …` (sqlparser rejects DELETE there, so each CTE is
/// parsed on its own): the analysis must cost time linear in the statement's length. It was
/// quadratic (each CTE's position rescanned the text from the start, each table reference
/// searched the list of CTE names): 20 000 CTEs took 5.4 s, more than Postgres' own parse.
#[test]
fn many_ctes_are_analysed_in_linear_time() {
    let sql = |n: usize| {
        let ctes: Vec<String> = (0..n)
            .map(|i| format!("c{i} AS (SELECT id FROM t{i} WHERE id = {i})"))
            .collect();
        format!(
            "WITH {} DELETE FROM t WHERE id IN (SELECT id FROM c{})",
            ctes.join(",\n "),
            n - 1
        )
    };
    // The thread's CPU time, not the wall clock: the ratio measures the algorithm, not how
    // busy the machine is (wall time failed it at ×28 with a long consistency run beside it).
    let cpu = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given, nothing else.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let best_of_3 = |text: &str| {
        (0..3)
            .map(|_| {
                let started = cpu();
                let x = a(text);
                assert!(!x.read_only);
                cpu().saturating_sub(started)
            })
            .min()
            .unwrap()
    };
    let (small, large) = (sql(500), sql(4000));
    let (t_small, t_large) = (best_of_3(&small), best_of_3(&large));
    eprintln!("500 CTEs: {t_small:?}, 4000 CTEs: {t_large:?}");
    let x = a(&large);
    assert!(x.describe().contains("t3999"), "{}", x.describe());
    // Linear: ×8; quadratic: ×64. Generous for a shared machine.
    assert!(
        t_large < t_small * 20,
        "500 CTEs: {t_small:?}, 4000 CTEs: {t_large:?}"
    );
}

/// Texts over the cap are not lexed or parsed: unknown (so primary, uncached), whatever they say.
#[test]
fn statements_longer_than_the_cap_are_not_analysed() {
    let analyzer = Analyzer::new(cat());
    analyzer.set_max_analyzed(1000);
    let long = format!("SELECT 1 FROM t WHERE id IN ({})", vec!["1"; 600].join(","));
    let x = analyzer.analyze(&long);
    assert!(!x.read_only && !x.cacheable(), "{}", x.describe());
    assert_eq!(x.kind, StatementKind::Unknown);
    let short = analyzer.analyze("SELECT 1 FROM t WHERE id = 1");
    assert!(short.read_only);
}

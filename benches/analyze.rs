//! Statement analysis benchmarks: `cargo bench --bench analyze`.
//!
//! * `uncached/*`: `analyze()` with no cache at all (lex + sqlparser + walk): the cost of a
//!   statement shape never seen before.
//! * `analyzer/new_literal`: a text never seen before whose shape was (unique literal per
//!   iteration): the typical "new" OLTP statement with inlined literals.
//! * `analyzer/new_shape`: a text and shape never seen before (unique identifier per
//!   iteration), through the `Analyzer` (includes cache inserts).
//! * `analyzer/repeated`: the exact same text again (hash lookup).
//! * `lock_keys`: key extraction from a cached analysis.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use pgsidecar::analyze::{analyze, normalize, Analyzer, FunctionCatalog, TableRef};

const OLTP_JOIN: &str =
    "SELECT p.name, pr.amount FROM products p JOIN prices pr ON pr.sku_id = p.sku_id WHERE p.sku_id = $1";
const OLTP_UPDATE: &str = "UPDATE stock SET on_hand = on_hand - $3 WHERE sku_id = $1 AND warehouse_id = $2 AND on_hand >= $3";
const OLTP_INSERT: &str =
    "INSERT INTO stock (sku_id, warehouse_id, on_hand) VALUES ($1, $2, $3) ON CONFLICT (sku_id, warehouse_id) DO UPDATE SET on_hand = stock.on_hand + EXCLUDED.on_hand";

fn benches(c: &mut Criterion) {
    let catalog = FunctionCatalog::builtin();

    c.bench_function("uncached/oltp_join", |b| {
        b.iter(|| analyze(black_box(OLTP_JOIN), &catalog))
    });
    c.bench_function("uncached/oltp_update", |b| {
        b.iter(|| analyze(black_box(OLTP_UPDATE), &catalog))
    });
    c.bench_function("uncached/oltp_insert_on_conflict", |b| {
        b.iter(|| analyze(black_box(OLTP_INSERT), &catalog))
    });

    let an = Analyzer::new(catalog.clone());
    let _ = an.analyze(OLTP_JOIN);
    c.bench_function("analyzer/repeated/oltp_join", |b| {
        b.iter(|| an.analyze(black_box(OLTP_JOIN)))
    });

    let mut n = 0u64;
    c.bench_function("analyzer/new_literal/oltp_join", |b| {
        b.iter_batched(
            || {
                n += 1;
                format!("SELECT p.name, pr.amount FROM products p JOIN prices pr ON pr.sku_id = p.sku_id WHERE p.sku_id = {n}")
            },
            |sql| an.analyze(black_box(&sql)),
            BatchSize::SmallInput,
        )
    });
    let mut n = 0u64;
    c.bench_function("analyzer/new_literal/update_two_keys", |b| {
        b.iter_batched(
            || {
                n += 1;
                format!("UPDATE stock SET on_hand = on_hand - 1 WHERE sku_id = {n} AND warehouse_id = 'W{}'", n % 7)
            },
            |sql| an.analyze(black_box(&sql)),
            BatchSize::SmallInput,
        )
    });
    let mut n = 0u64;
    c.bench_function("analyzer/new_shape/oltp_join", |b| {
        b.iter_batched(
            || {
                n += 1;
                format!("SELECT p.name, pr.amount FROM products p JOIN prices pr ON pr.sku_id = p.sku_id WHERE p.sku_id = $1 AND p.c{n} = 0")
            },
            |sql| an.analyze(black_box(&sql)),
            BatchSize::SmallInput,
        )
    });

    let upd = an.analyze(OLTP_UPDATE);
    let stock = TableRef::parse("stock");
    c.bench_function("lock_keys/update_two_params", |b| {
        b.iter(|| upd.lock_keys(black_box(&stock), black_box(&["sku_id", "warehouse_id"])))
    });
    c.bench_function("normalize/oltp_join", |b| {
        b.iter(|| normalize(black_box(OLTP_JOIN)))
    });
}

criterion_group! {
    name = analyze_benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(50);
    targets = benches
}
criterion_main!(analyze_benches);

//! Statement analysis benchmarks: `cargo bench --bench analyze`.
//!
//! Times are **CPU time of the benchmarking thread** (`CLOCK_THREAD_CPUTIME_ID`), not wall
//! time: the benchmark machine is shared, and time spent preempted is not analysis cost.
//!
//! * `uncached/*`: `analyze()` with no cache at all (lex + sqlparser + walk): the cost of a
//!   statement shape never seen before. Nothing is cached between iterations.
//! * `analyzer/new_literal`: a text never seen before whose shape was (unique literal per
//!   iteration): the typical "new" OLTP statement with inlined literals.
//! * `analyzer/new_shape`: a text and shape never seen before (unique identifier per
//!   iteration), through an `Analyzer` whose caches are small enough to be full (evicting) after
//!   warm-up, as in a long-running proxy; includes lex, normalisation, parse, walk, cache
//!   lookups and inserts.
//! * `analyzer/repeated`: the exact same text again (hash lookup).
//! * `lock_keys`: key extraction from a cached analysis.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use pgsidecar::analyze::{analyze, normalize, Analyzer, AnalyzerConfig, FunctionCatalog, TableRef};

/// See the `mimalloc` feature in Cargo.toml for why.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU time consumed by the calling thread.
struct ThreadCpuTime;

fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

static WALL: WallTime = WallTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu_now()
    }
    fn end(&self, started: Duration) -> Duration {
        thread_cpu_now().saturating_sub(started)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Same unit (nanoseconds) as wall time: reuse its formatter.
        WALL.formatter()
    }
}

const OLTP_JOIN: &str =
    "SELECT p.name, pr.amount FROM products p JOIN prices pr ON pr.sku_id = p.sku_id WHERE p.sku_id = $1";
const OLTP_UPDATE: &str = "UPDATE stock SET on_hand = on_hand - $3 WHERE sku_id = $1 AND warehouse_id = $2 AND on_hand >= $3";
const OLTP_INSERT: &str =
    "INSERT INTO stock (sku_id, warehouse_id, on_hand) VALUES ($1, $2, $3) ON CONFLICT (sku_id, warehouse_id) DO UPDATE SET on_hand = stock.on_hand + EXCLUDED.on_hand";

fn benches(c: &mut Criterion<ThreadCpuTime>) {
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
    // Small caches: full (evicting) after warm-up, like a long-running proxy's.
    let steady = Analyzer::with_config(
        catalog.clone(),
        AnalyzerConfig {
            max_cached_bytes: 1 << 20,
            max_template_bytes: 1 << 20,
            ..AnalyzerConfig::default()
        },
    );
    let mut n = 0u64;
    c.bench_function("analyzer/new_shape/oltp_join", |b| {
        b.iter_batched(
            || {
                n += 1;
                format!("SELECT p.name, pr.amount FROM products p JOIN prices pr ON pr.sku_id = p.sku_id WHERE p.sku_id = $1 AND p.c{n} = 0")
            },
            |sql| steady.analyze(black_box(&sql)),
            BatchSize::SmallInput,
        )
    });
    let mut n = 0u64;
    c.bench_function("analyzer/new_shape/oltp_update", |b| {
        b.iter_batched(
            || {
                n += 1;
                format!("UPDATE stock SET on_hand = on_hand - $3 WHERE sku_id = $1 AND warehouse_id = $2 AND on_hand >= $3 AND c{n} = 0")
            },
            |sql| steady.analyze(black_box(&sql)),
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
    config = Criterion::default().with_measurement(ThreadCpuTime).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(50);
    targets = benches
}
criterion_main!(analyze_benches);

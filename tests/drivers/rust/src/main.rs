//! The shared driver scenario for the Rust drivers: `driver-matrix tokio-postgres` and
//! `driver-matrix sqlx`, each against `PGSIDECAR_DSN`. Driver defaults everywhere:
//! tokio-postgres prepares a named statement for every query (and `prepare` returns one to
//! reuse); sqlx caches a named prepared statement per query per connection.
//!
//! Output protocol (shared by every driver of the matrix, read by run.sh):
//!   step <name>: START | PASS (<s>s) [info] | FAIL (<s>s) <error> | SKIP <why>

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};

type BoxError = Box<dyn StdError + Send + Sync>;
type Res<T = Option<String>> = Result<T, BoxError>;
type StepFuture<'a> = Pin<Box<dyn Future<Output = Res> + 'a>>;

const CONCURRENCY_DEFAULT: usize = 20;
const REPEAT: i32 = 50;
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

fn concurrency() -> usize {
    std::env::var("DRIVER_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(CONCURRENCY_DEFAULT)
}

// ---- the values of step (a) -------------------------------------------------------------------
fn numeric() -> Decimal {
    Decimal::from_str("12345.6789").unwrap()
}
fn json_value() -> Value {
    json!({"a": [1, 2, {"b": null}], "s": "Grüße 東京 🚀", "n": 1.5})
}
fn ts() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 2, 29, 13, 14, 15).unwrap() + chrono::Duration::microseconds(123_456)
}
const INTS: [i32; 5] = [1, 2, 3, -4, 2147483647];
fn texts() -> Vec<String> {
    ["a", "b c", "Grüße", "x,y", "q\"q", "東京"].iter().map(|s| s.to_string()).collect()
}
const BYTES: [u8; 9] = [0, 1, 2, 0xff, 0, 0x41, 0x42, 0x43, 0];
const TEXT: &str = "Grüße 東京 🚀";
const BIGINT: i64 = 9223372036854775807;

fn types_table(p: &str) -> String {
    format!(
        "CREATE TABLE {p}_types (id int PRIMARY KEY, n numeric, j jsonb, ts timestamptz, ia int[], \
         ta text[], b bytea, nul text, t text, bo bool, bi bigint)"
    )
}

fn server_check(p: &str) -> String {
    format!(
        "SELECT n = 12345.6789 AS numeric, \
         j = '{{\"a\": [1, 2, {{\"b\": null}}], \"s\": \"Grüße 東京 🚀\", \"n\": 1.5}}'::jsonb AS jsonb, \
         ts = '2024-02-29 13:14:15.123456+00'::timestamptz AS timestamptz, \
         ia = '{{1,2,3,-4,2147483647}}'::int[] AS int_array, \
         ta = ARRAY['a','b c','Grüße','x,y','q\"q','東京'] AS text_array, \
         b = '\\x000102ff0041424300'::bytea AS bytea, \
         nul IS NULL AS null, t = 'Grüße 東京 🚀' AS text, bo IS TRUE AS bool, \
         bi = 9223372036854775807 AS bigint FROM {p}_types WHERE id = 1"
    )
}
const SERVER_CHECK_NAMES: [&str; 10] =
    ["numeric", "jsonb", "timestamptz", "int_array", "text_array", "bytea", "null", "text", "bool", "bigint"];

type TypesRow = (Decimal, Value, DateTime<Utc>, Vec<i32>, Vec<String>, Vec<u8>, Option<String>, String, bool, i64);

fn compare_types(prefix: &str, got: &TypesRow) -> Res<()> {
    let want: TypesRow =
        (numeric(), json_value(), ts(), INTS.to_vec(), texts(), BYTES.to_vec(), None, TEXT.to_string(), true, BIGINT);
    macro_rules! cmp {
        ($i:tt, $name:expr) => {
            if got.$i != want.$i {
                return Err(format!("{prefix} {}: got {:?}, expected {:?}", $name, got.$i, want.$i).into());
            }
        };
    }
    cmp!(0, "numeric");
    cmp!(1, "jsonb");
    cmp!(2, "timestamptz");
    cmp!(3, "int[]");
    cmp!(4, "text[]");
    cmp!(5, "bytea");
    cmp!(6, "null");
    cmp!(7, "text");
    cmp!(8, "bool");
    cmp!(9, "bigint");
    Ok(())
}

fn copy_rows() -> Vec<(i32, Option<String>, String)> {
    (1..=1000)
        .map(|i| {
            let name = if i % 7 == 0 { None } else { Some(format!("name {i} Grüße 東京 🚀")) };
            (i, name, format!("tab\there\nnewline \\ backslash {i}"))
        })
        .collect()
}

fn copy_escape(v: Option<&str>) -> String {
    match v {
        None => "\\N".into(),
        Some(s) => s.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n").replace('\r', "\\r"),
    }
}

fn copy_text(rows: &[(i32, Option<String>, String)]) -> String {
    rows.iter()
        .map(|(i, n, t)| format!("{i}\t{}\t{}\n", copy_escape(n.as_deref()), copy_escape(Some(t))))
        .collect()
}

fn copy_unescape(f: &str) -> Option<String> {
    if f == "\\N" {
        return None;
    }
    let mut out = String::new();
    let mut chars = f.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn parse_copy(data: &[u8]) -> Res<Vec<(i32, Option<String>, String)>> {
    let text = std::str::from_utf8(data)?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() != 3 {
                return Err(format!("COPY line with {} fields: {l:?}", f.len()).into());
            }
            Ok((f[0].parse()?, copy_unescape(f[1]), copy_unescape(f[2]).unwrap_or_default()))
        })
        .collect()
}

fn check_copy(got: &[(i32, Option<String>, String)], want: &[(i32, Option<String>, String)]) -> Res<()> {
    if got.len() != want.len() {
        return Err(format!("COPY TO STDOUT: {} rows, expected {}", got.len(), want.len()).into());
    }
    if let Some((i, (g, w))) = got.iter().zip(want).enumerate().find(|(_, (g, w))| g != w) {
        return Err(format!("COPY TO STDOUT row {i}: got {g:?}, expected {w:?}").into());
    }
    Ok(())
}

const SETTINGS_TRANSACTIONS: usize = 20;

fn settings_sql(p: &str) -> Vec<String> {
    vec![
        format!("SET application_name = '{p}_g'"),
        "SET TIME ZONE 'Asia/Tokyo'".into(),
        format!("SET search_path = public, {p}_g"),
        "SET statement_timeout = '31s'".into(),
    ]
}

fn settings_want(p: &str) -> Vec<(&'static str, String)> {
    vec![
        ("application_name", format!("{p}_g")),
        ("TimeZone", "Asia/Tokyo".into()),
        ("search_path", format!("public, {p}_g")),
        ("statement_timeout", "31s".into()),
    ]
}

fn settings_verdict(problems: &[(usize, Vec<String>)], side: &[String]) -> Res {
    let mut parts = Vec::new();
    if let Some((n, bad)) = problems.first() {
        parts.push(format!(
            "settings wrong in {}/{SETTINGS_TRANSACTIONS} transactions; first (transaction {n}): {}",
            problems.len(),
            bad.join("; ")
        ));
    }
    parts.extend(side.iter().cloned());
    if parts.is_empty() {
        Ok(None)
    } else {
        Err(parts.join(" | ").into())
    }
}

fn describe(e: &BoxError) -> String {
    if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
        if let Some(db) = pg.as_db_error() {
            return format!("{}: {}", db.code().code(), db.message());
        }
        return format!("{pg:?}");
    }
    if let Some(sx) = e.downcast_ref::<sqlx::Error>() {
        if let Some(db) = sx.as_database_error() {
            return format!("{}: {}", db.code().unwrap_or_default(), db.message());
        }
    }
    e.to_string()
}

struct Report {
    failed: Vec<&'static str>,
}

impl Report {
    async fn step(&mut self, name: &'static str, fut: StepFuture<'_>) {
        println!("step {name}: START");
        let began = Instant::now();
        let result = match tokio::time::timeout(STEP_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {STEP_TIMEOUT:?}").into()),
        };
        let took = began.elapsed().as_secs_f64();
        match result {
            Ok(info) => println!("step {name}: PASS ({took:.1}s){}", info.map(|i| format!(" {i}")).unwrap_or_default()),
            Err(e) => {
                self.failed.push(name);
                let msg: String = describe(&e).split_whitespace().collect::<Vec<_>>().join(" ");
                println!("step {name}: FAIL ({took:.1}s) {}", msg.chars().take(600).collect::<String>());
                eprintln!("{name}: {e:?}");
            }
        }
    }

    fn skip(&mut self, name: &str, why: &str) {
        println!("step {name}: SKIP {why}");
    }

    fn finish(self, driver: &str) -> ! {
        if self.failed.is_empty() {
            println!("{driver}: all steps passed");
            std::process::exit(0);
        }
        println!("{driver}: failed steps: {}", self.failed.join(", "));
        std::process::exit(1);
    }
}

// =============================================================================================
// tokio-postgres
// =============================================================================================
mod tp {
    use super::*;
    use bytes::Bytes;
    use futures_util::{pin_mut, SinkExt, StreamExt, TryStreamExt};
    use tokio_postgres::error::SqlState;
    use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

    const P: &str = "drv_tokio_postgres";

    pub struct Ctx {
        pub config: Config,
    }

    impl Ctx {
        pub async fn connect(&self) -> Res<Client> {
            let (client, conn) = self.config.connect(NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }

        pub async fn connect_as(&self, application_name: &str) -> Res<Client> {
            let mut config = self.config.clone();
            config.application_name(application_name);
            let (client, conn) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
    }

    fn expect_code(e: &tokio_postgres::Error, code: &SqlState, what: &str) -> Res<()> {
        match e.code() {
            Some(c) if c == code => Ok(()),
            other => Err(format!("{what}: expected SQLSTATE {}, got {:?}: {e}", code.code(), other.map(|c| c.code())).into()),
        }
    }

    fn expect_err<T>(r: Result<T, tokio_postgres::Error>, code: &SqlState, what: &str) -> Res<()> {
        match r {
            Ok(_) => Err(format!("{what}: expected SQLSTATE {}, but it succeeded", code.code()).into()),
            Err(e) => expect_code(&e, code, what),
        }
    }

    pub async fn setup(ctx: &Ctx) -> Res {
        let c = ctx.connect().await?;
        // One simple-protocol Query with many statements.
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS {P}_types, {P}_items, {P}_copy; \
             DROP SCHEMA IF EXISTS {P}_g CASCADE; \
             {}; \
             CREATE TABLE {P}_items (id int PRIMARY KEY, name text NOT NULL); \
             CREATE TABLE {P}_copy (id int PRIMARY KEY, name text, note text); \
             CREATE SCHEMA {P}_g; CREATE TABLE {P}_g.probe (v text); INSERT INTO {P}_g.probe VALUES ('{P}')",
            types_table(P)
        ))
        .await?;
        Ok(None)
    }

    pub async fn types(ctx: &Ctx) -> Res {
        let c = ctx.connect().await?;
        let (n, j, t, ia, ta, b, nul, tx, bo, bi) =
            (numeric(), json_value(), ts(), INTS.to_vec(), texts(), BYTES.to_vec(), None::<String>, TEXT, true, BIGINT);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [&n, &j, &t, &ia, &ta, &b, &nul, &tx, &bo, &bi];
        c.execute(
            &format!("INSERT INTO {P}_types (id, n, j, ts, ia, ta, b, nul, t, bo, bi) VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
            &params,
        )
        .await?;
        let to_row = |r: &tokio_postgres::Row| -> Res<TypesRow> {
            Ok((
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
                r.try_get(6)?,
                r.try_get(7)?,
                r.try_get(8)?,
                r.try_get(9)?,
            ))
        };
        let row = c.query_one(&format!("SELECT n, j, ts, ia, ta, b, nul, t, bo, bi FROM {P}_types WHERE id = $1"), &[&1i32]).await?;
        compare_types("stored", &to_row(&row)?)?;
        let check = c.query_one(&server_check(P), &[]).await?;
        let bad: Vec<&str> =
            SERVER_CHECK_NAMES.iter().enumerate().filter(|(i, _)| !check.get::<_, bool>(*i)).map(|(_, n)| *n).collect();
        if !bad.is_empty() {
            return Err(format!("server-side comparison failed for: {}", bad.join(", ")).into());
        }
        let row = c
            .query_one(
                "SELECT $1::numeric, $2::jsonb, $3::timestamptz, $4::int[], $5::text[], $6::bytea, $7::text, $8::text, $9::bool, $10::bigint",
                &params,
            )
            .await?;
        compare_types("echo", &to_row(&row)?)?;
        Ok(None)
    }

    pub async fn prepared_concurrency(ctx: &Ctx) -> Res {
        let n_conns = concurrency();
        let mut clients = Vec::new();
        for _ in 0..n_conns {
            clients.push(ctx.connect().await?);
        }
        let mut tasks = Vec::new();
        for (n, mut c) in clients.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                // `prepare` once, reuse 50 times: a named statement on whichever backend serves.
                let stmt = c
                    .prepare(&format!("SELECT $1::int * 2 AS doubled, $2::text AS tag, pg_backend_pid() AS pid /* {P} b */"))
                    .await?;
                let mut pids = Vec::new();
                for i in 0..REPEAT {
                    let a = n as i32 * 1000 + i;
                    let tag = format!("c{n}-{i}");
                    let row = if i % 10 == 9 {
                        let t = c.transaction().await?;
                        let row = t.query_one(&stmt, &[&a, &tag]).await?;
                        t.commit().await?;
                        row
                    } else {
                        c.query_one(&stmt, &[&a, &tag]).await?
                    };
                    let (d, g): (i32, String) = (row.get(0), row.get(1));
                    if d != 2 * a || g != tag {
                        return Err::<Vec<i32>, BoxError>(
                            format!("connection {n} iteration {i}: got ({d}, {g}), expected ({}, {tag})", 2 * a).into(),
                        );
                    }
                    pids.push(row.get::<_, i32>(2));
                }
                Ok(pids)
            }));
        }
        let mut all = std::collections::HashSet::new();
        let mut moved = 0;
        for t in tasks {
            let pids = t.await??;
            if pids.iter().collect::<std::collections::HashSet<_>>().len() > 1 {
                moved += 1;
            }
            all.extend(pids);
        }
        Ok(Some(format!(
            "{n_conns}x{REPEAT} executions on {} backends; {moved}/{n_conns} connections moved between backends",
            all.len()
        )))
    }

    async fn count(cl: &Client, id: i32) -> Res<i64> {
        Ok(cl.query_one(&format!("SELECT count(*) FROM {P}_items WHERE id = $1"), &[&id]).await?.get(0))
    }

    pub async fn transactions(ctx: &Ctx) -> Res {
        let mut c = ctx.connect().await?;
        let other = ctx.connect().await?;
        let t = c.transaction().await?;
        t.execute(&format!("INSERT INTO {P}_items VALUES ($1, $2)"), &[&1i32, &"rolled back"]).await?;
        let seen: i64 = t.query_one(&format!("SELECT count(*) FROM {P}_items WHERE id = 1"), &[]).await?.get(0);
        if seen != 1 {
            return Err("own uncommitted insert not visible".into());
        }
        t.rollback().await?;
        if count(&c, 1).await? != 0 || count(&other, 1).await? != 0 {
            return Err("row visible after rollback".into());
        }
        let t = c.transaction().await?;
        t.execute(&format!("INSERT INTO {P}_items VALUES ($1, $2)"), &[&2i32, &"committed"]).await?;
        t.commit().await?;
        if count(&other, 2).await? != 1 {
            return Err("committed row not visible to another connection".into());
        }
        let mut t = c.transaction().await?;
        t.execute(&format!("INSERT INTO {P}_items VALUES (3, 'outer')"), &[]).await?;
        let sp = t.savepoint("sp_inner").await?;
        sp.execute(&format!("INSERT INTO {P}_items VALUES (4, 'inner')"), &[]).await?;
        sp.rollback().await?;
        t.commit().await?;
        let ids: Vec<i32> =
            other.query_one(&format!("SELECT array_agg(id ORDER BY id) FROM {P}_items WHERE id IN (3, 4)"), &[]).await?.get(0);
        if ids != vec![3] {
            return Err(format!("savepoint rollback: got {ids:?}, expected [3]").into());
        }
        Ok(None)
    }

    pub async fn errors(ctx: &Ctx) -> Res {
        let mut c = ctx.connect().await?;
        expect_err(c.query_one("SELECT 1/0", &[]).await, &SqlState::DIVISION_BY_ZERO, "division by zero")?;
        let v: i32 = c.query_one("SELECT 41 + 1", &[]).await?.get(0);
        if v != 42 {
            return Err("statement after error".into());
        }
        expect_err(c.simple_query("SELECT 1/0").await, &SqlState::DIVISION_BY_ZERO, "division by zero (simple protocol)")?;
        c.execute(&format!("INSERT INTO {P}_items VALUES (100, 'x')"), &[]).await?;
        expect_err(
            c.execute(&format!("INSERT INTO {P}_items VALUES ($1, $2)"), &[&100i32, &"dup"]).await,
            &SqlState::UNIQUE_VIOLATION,
            "unique violation",
        )?;
        let stmt = c.prepare("SELECT 100 / $1::int").await?;
        for _ in 0..6 {
            c.query_one(&stmt, &[&5i32]).await?;
        }
        expect_err(c.query_one(&stmt, &[&0i32]).await, &SqlState::DIVISION_BY_ZERO, "prepared statement division by zero")?;
        let v: i32 = c.query_one(&stmt, &[&4i32]).await?.get(0);
        if v != 25 {
            return Err(format!("prepared statement after its error: got {v}").into());
        }
        let t = c.transaction().await?;
        expect_err(t.query_one("SELECT 1/0", &[]).await, &SqlState::DIVISION_BY_ZERO, "division by zero in transaction")?;
        expect_err(t.query_one("SELECT 1", &[]).await, &SqlState::IN_FAILED_SQL_TRANSACTION, "statement in aborted transaction")?;
        t.rollback().await?;
        let ok: String = c.query_one("SELECT 'ok'", &[]).await?.get(0);
        if ok != "ok" {
            return Err("statement after rollback of failed transaction".into());
        }
        Ok(None)
    }

    pub async fn cancel(ctx: &Ctx) -> Res {
        let marker = format!("{P}_cancel_marker");
        let c = Arc::new(ctx.connect().await?);
        let probe = ctx.connect().await?;
        let token = c.cancel_token();
        let sleeper = {
            let c = c.clone();
            let sql = format!("/* pgsidecar: route=primary */ SELECT pg_sleep(10) /* {marker} */");
            tokio::spawn(async move {
                let r = c.simple_query(&sql).await;
                (r, Instant::now())
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n: i64 = probe
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE $1",
                    &[&format!("%{marker}%")],
                )
                .await?
                .get(0);
            if n > 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err("the pg_sleep query never showed up as active in pg_stat_activity".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let began = Instant::now();
        token.cancel_query(NoTls).await?;
        let (r, ended) = tokio::time::timeout(Duration::from_secs(15), sleeper)
            .await
            .map_err(|_| "pg_sleep(10) still running 15 s after the cancel")??;
        expect_err(r, &SqlState::QUERY_CANCELED, "cancelled statement")?;
        let took = ended.duration_since(began).as_secs_f64();
        if took > 5.0 {
            return Err(format!("cancel took {took:.1}s (> 5 s)").into());
        }
        let alive: String = c.query_one("SELECT 'alive'", &[]).await?.get(0);
        if alive != "alive" {
            return Err("statement after cancel".into());
        }
        Ok(Some(format!("cancelled after {took:.2}s")))
    }

    pub async fn copy(ctx: &Ctx) -> Res {
        let c = ctx.connect().await?;
        let rows = copy_rows();
        let sink = c.copy_in(&format!("COPY {P}_copy (id, name, note) FROM STDIN")).await?;
        pin_mut!(sink);
        for chunk in copy_text(&rows).as_bytes().chunks(4096) {
            sink.send(Bytes::copy_from_slice(chunk)).await?;
        }
        let n = sink.finish().await?;
        if n != 1000 {
            return Err(format!("copy_in reported {n} rows").into());
        }
        let count: i64 = c.query_one(&format!("SELECT count(*) FROM {P}_copy"), &[]).await?.get(0);
        if count != 1000 {
            return Err(format!("rows after COPY FROM: {count}").into());
        }
        let stream = c.copy_out(&format!("COPY (SELECT id, name, note FROM {P}_copy ORDER BY id) TO STDOUT")).await?;
        let chunks: Vec<Bytes> = stream.try_collect().await?;
        check_copy(&parse_copy(&chunks.concat())?, &rows)?;
        let one: i32 = c.query_one("SELECT 1", &[]).await?.get(0);
        if one != 1 {
            return Err("connection after COPY".into());
        }
        Ok(None)
    }

    async fn show(c: &Client, name: &str) -> Result<String, tokio_postgres::Error> {
        c.query_one(&format!("SHOW {name}"), &[]).await.map(|r| r.get(0))
    }

    pub async fn settings(ctx: &Ctx) -> Res {
        let stop = Arc::new(AtomicBool::new(false));
        let side = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut others = Vec::new();
        for n in 0..4 {
            let c = ctx.connect().await?;
            let (stop, side) = (stop.clone(), side.clone());
            others.push(tokio::spawn(async move {
                let r: Res<()> = async {
                    c.batch_execute(&format!(
                        "SET application_name = 'noise_{n}'; SET TIME ZONE 'America/New_York'; SET statement_timeout = '32s'"
                    ))
                    .await?;
                    while !stop.load(Ordering::Relaxed) {
                        c.batch_execute("BEGIN").await?;
                        let app = show(&c, "application_name").await?;
                        let tz = show(&c, "TimeZone").await?;
                        c.batch_execute("SELECT pg_sleep(0.005); COMMIT").await?;
                        if app != format!("noise_{n}") || tz != "America/New_York" {
                            return Err(format!("noise client {n} saw application_name='{app}' TimeZone='{tz}'").into());
                        }
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = r {
                    side.lock().unwrap().push(format!("noise {n}: {}", describe(&e)));
                }
            }));
        }
        for n in 0..2 {
            let c = ctx.connect_as(&format!("clean_{n}")).await?;
            let (stop, side) = (stop.clone(), side.clone());
            others.push(tokio::spawn(async move {
                let r: Res<()> = async {
                    let default_tz: String =
                        c.query_one("SHOW TimeZone", &[]).await?.get(0); // the session's own, at connect
                    while !stop.load(Ordering::Relaxed) {
                        c.batch_execute("BEGIN").await?;
                        let app = show(&c, "application_name").await?;
                        let tz = show(&c, "TimeZone").await?;
                        let st = show(&c, "statement_timeout").await?;
                        c.batch_execute("COMMIT").await?;
                        if app != format!("clean_{n}") || tz != default_tz || st != "0" {
                            return Err(format!(
                                "clean client {n} saw application_name='{app}' TimeZone='{tz}' statement_timeout='{st}' \
                                 (expected clean_{n}, {default_tz}, 0): another session's settings leaked"
                            )
                            .into());
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = r {
                    side.lock().unwrap().push(format!("clean {n}: {}", describe(&e)));
                }
            }));
        }
        let mut problems = Vec::new();
        let main: Res<()> = async {
            let mut c = ctx.connect().await?;
            let before = vec![show(&c, "TimeZone").await?, show(&c, "DateStyle").await?];
            for s in settings_sql(P) {
                c.batch_execute(&s).await?;
            }
            for i in 0..SETTINGS_TRANSACTIONS {
                let mut bad = Vec::new();
                let t = c.transaction().await?;
                let r: Result<(), tokio_postgres::Error> = async {
                    for (name, want) in settings_want(P) {
                        let got: String = t.query_one(&format!("SHOW {name}"), &[]).await?.get(0);
                        if got != want {
                            bad.push(format!("SHOW {name} = '{got}', expected '{want}'"));
                        }
                    }
                    let off: i32 = t.query_one("SELECT extract(timezone FROM now())::int", &[]).await?.get(0);
                    if off != 9 * 3600 {
                        bad.push(format!("now() is at UTC offset {off}s, expected 32400s"));
                    }
                    let probe: String = t.query_one("SELECT v FROM probe", &[]).await?.get(0);
                    if probe != P {
                        bad.push(format!("unqualified table 'probe' gave '{probe}'"));
                    }
                    Ok(())
                }
                .await;
                match r {
                    Ok(()) => t.commit().await?,
                    Err(e) => {
                        bad.push(describe(&(Box::new(e) as BoxError)));
                        t.rollback().await?;
                    }
                }
                if !bad.is_empty() {
                    problems.push((i + 1, bad));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            c.batch_execute("RESET ALL").await?;
            let t = c.transaction().await?;
            let after = vec![
                t.query_one("SHOW TimeZone", &[]).await?.get::<_, String>(0),
                t.query_one("SHOW DateStyle", &[]).await?.get::<_, String>(0),
            ];
            t.commit().await?;
            if after != before {
                side.lock().unwrap().push(format!(
                    "after RESET ALL: TimeZone, DateStyle = {after:?}, expected the session's own {before:?}"
                ));
            }
            Ok(())
        }
        .await;
        stop.store(true, Ordering::Relaxed);
        for o in others {
            let _ = tokio::time::timeout(Duration::from_secs(30), o).await;
        }
        main?;
        let side = side.lock().unwrap().clone();
        settings_verdict(&problems, &side)
    }

    pub async fn simple_and_extended(ctx: &Ctx) -> Res {
        // The simple protocol: several statements, rows as text, in one Query message.
        let c = ctx.connect().await?;
        let msgs = c.simple_query("SELECT 1 AS a; SELECT 'Grüße 東京 🚀' AS b, NULL AS c; SELECT generate_series(1, 3)").await?;
        let rows: Vec<Vec<Option<String>>> = msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
                _ => None,
            })
            .collect();
        let want: Vec<Vec<Option<String>>> = vec![
            vec![Some("1".into())],
            vec![Some(TEXT.into()), None],
            vec![Some("1".into())],
            vec![Some("2".into())],
            vec![Some("3".into())],
        ];
        if rows != want {
            return Err(format!("simple_query rows: got {rows:?}, expected {want:?}").into());
        }
        // The extended protocol with a portal: query_raw streams rows.
        let stream = c.query_raw("SELECT g FROM generate_series(1, $1::int) g", [1000i32]).await?;
        pin_mut!(stream);
        let mut sum = 0i64;
        while let Some(row) = stream.next().await {
            sum += row?.get::<_, i32>(0) as i64;
        }
        if sum != 500500 {
            return Err(format!("query_raw sum: {sum}").into());
        }
        // Statements prepared on one backend, used after the client moved to others.
        let stmts = [
            c.prepare("SELECT $1::int + 1").await?,
            c.prepare("SELECT $1::text || 'x'").await?,
            c.prepare("SELECT $1::bigint * 2").await?,
        ];
        for i in 0..30 {
            let a: i32 = c.query_one(&stmts[0], &[&i]).await?.get(0);
            let b: String = c.query_one(&stmts[1], &[&format!("{i}")]).await?.get(0);
            let d: i64 = c.query_one(&stmts[2], &[&(i as i64)]).await?.get(0);
            if a != i + 1 || b != format!("{i}x") || d != 2 * i as i64 {
                return Err(format!("prepared statements, round {i}: got ({a}, {b}, {d})").into());
            }
        }
        Ok(Some("simple multi-statement, query_raw, 3 prepared statements x30".into()))
    }
}

// =============================================================================================
// sqlx
// =============================================================================================
mod sx {
    use super::*;
    use futures_util::TryStreamExt;
    use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
    use sqlx::types::Json;
    use sqlx::{Connection, Row};

    const P: &str = "drv_sqlx";

    pub struct Ctx {
        pub opts: PgConnectOptions,
    }

    impl Ctx {
        pub async fn connect(&self) -> Res<PgConnection> {
            Ok(PgConnection::connect_with(&self.opts).await?)
        }
    }

    fn code(e: &sqlx::Error) -> Option<String> {
        e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
    }

    fn expect_err<T>(r: Result<T, sqlx::Error>, want: &str, what: &str) -> Res<()> {
        match r {
            Ok(_) => Err(format!("{what}: expected SQLSTATE {want}, but it succeeded").into()),
            Err(e) if code(&e).as_deref() == Some(want) => Ok(()),
            Err(e) => Err(format!("{what}: expected SQLSTATE {want}, got {:?}: {e}", code(&e)).into()),
        }
    }

    pub async fn setup(ctx: &Ctx) -> Res {
        let mut c = ctx.connect().await?;
        for s in [
            format!("DROP TABLE IF EXISTS {P}_types, {P}_items, {P}_copy, {P}_pool"),
            format!("DROP SCHEMA IF EXISTS {P}_g CASCADE"),
            types_table(P),
            format!("CREATE TABLE {P}_items (id int PRIMARY KEY, name text NOT NULL)"),
            format!("CREATE TABLE {P}_copy (id int PRIMARY KEY, name text, note text)"),
            format!("CREATE TABLE {P}_pool (id int PRIMARY KEY, worker int)"),
            format!("CREATE SCHEMA {P}_g"),
            format!("CREATE TABLE {P}_g.probe (v text)"),
            format!("INSERT INTO {P}_g.probe VALUES ('{P}')"),
        ] {
            sqlx::raw_sql(&s).execute(&mut c).await?;
        }
        Ok(None)
    }

    fn bind_all<'q>(
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        q.bind(numeric())
            .bind(Json(json_value()))
            .bind(ts())
            .bind(INTS.to_vec())
            .bind(texts())
            .bind(BYTES.to_vec())
            .bind(None::<String>)
            .bind(TEXT)
            .bind(true)
            .bind(BIGINT)
    }

    type SqlxTypesRow = (Decimal, Json<Value>, DateTime<Utc>, Vec<i32>, Vec<String>, Vec<u8>, Option<String>, String, bool, i64);

    fn plain(r: SqlxTypesRow) -> TypesRow {
        (r.0, r.1 .0, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9)
    }

    pub async fn types(ctx: &Ctx) -> Res {
        let mut c = ctx.connect().await?;
        let insert = format!("INSERT INTO {P}_types (id, n, j, ts, ia, ta, b, nul, t, bo, bi) VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)");
        bind_all(sqlx::query(&insert)).execute(&mut c).await?;
        let row: SqlxTypesRow = sqlx::query_as(&format!("SELECT n, j, ts, ia, ta, b, nul, t, bo, bi FROM {P}_types WHERE id = $1"))
            .bind(1i32)
            .fetch_one(&mut c)
            .await?;
        compare_types("stored", &plain(row))?;
        let check = sqlx::query(&server_check(P)).fetch_one(&mut c).await?;
        let bad: Vec<&str> =
            SERVER_CHECK_NAMES.iter().enumerate().filter(|(i, _)| !check.get::<bool, _>(*i)).map(|(_, n)| *n).collect();
        if !bad.is_empty() {
            return Err(format!("server-side comparison failed for: {}", bad.join(", ")).into());
        }
        let echo = "SELECT $1::numeric, $2::jsonb, $3::timestamptz, $4::int[], $5::text[], $6::bytea, $7::text, $8::text, $9::bool, $10::bigint";
        let q = sqlx::query(echo);
        let row = bind_all(q).fetch_one(&mut c).await?;
        let got: TypesRow = (
            row.try_get(0)?,
            row.try_get::<Json<Value>, _>(1)?.0,
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
            row.try_get(5)?,
            row.try_get(6)?,
            row.try_get(7)?,
            row.try_get(8)?,
            row.try_get(9)?,
        );
        compare_types("echo", &got)?;
        Ok(None)
    }

    pub async fn prepared_concurrency(ctx: &Ctx) -> Res {
        let n_conns = concurrency();
        let mut conns = Vec::new();
        for _ in 0..n_conns {
            conns.push(ctx.connect().await?);
        }
        let sql: &'static str = "SELECT $1::int * 2 AS doubled, $2::text AS tag, pg_backend_pid() AS pid /* drv_sqlx b */";
        let mut tasks = Vec::new();
        for (n, mut c) in conns.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let mut pids = Vec::new();
                for i in 0..REPEAT {
                    let a = n as i32 * 1000 + i;
                    let tag = format!("c{n}-{i}");
                    let q = sqlx::query_as::<_, (i32, String, i32)>(sql).bind(a).bind(tag.clone());
                    let (d, g, pid) = if i % 10 == 9 {
                        let mut t = c.begin().await?;
                        let r = q.fetch_one(&mut *t).await?;
                        t.commit().await?;
                        r
                    } else {
                        q.fetch_one(&mut c).await?
                    };
                    if d != 2 * a || g != tag {
                        return Err::<Vec<i32>, BoxError>(
                            format!("connection {n} iteration {i}: got ({d}, {g}), expected ({}, {tag})", 2 * a).into(),
                        );
                    }
                    pids.push(pid);
                }
                if c.cached_statements_size() == 0 {
                    return Err(format!("connection {n}: sqlx cached no prepared statement").into());
                }
                Ok(pids)
            }));
        }
        let mut all = std::collections::HashSet::new();
        let mut moved = 0;
        for t in tasks {
            let pids = t.await??;
            if pids.iter().collect::<std::collections::HashSet<_>>().len() > 1 {
                moved += 1;
            }
            all.extend(pids);
        }
        Ok(Some(format!(
            "{n_conns}x{REPEAT} executions on {} backends; {moved}/{n_conns} connections moved between backends",
            all.len()
        )))
    }

    pub async fn transactions(ctx: &Ctx) -> Res {
        let mut c = ctx.connect().await?;
        let mut other = ctx.connect().await?;
        let count_sql = format!("SELECT count(*) FROM {P}_items WHERE id = $1");
        let mut t = c.begin().await?;
        sqlx::query(&format!("INSERT INTO {P}_items VALUES ($1, $2)")).bind(1i32).bind("rolled back").execute(&mut *t).await?;
        let (seen,): (i64,) = sqlx::query_as(&count_sql).bind(1i32).fetch_one(&mut *t).await?;
        if seen != 1 {
            return Err("own uncommitted insert not visible".into());
        }
        t.rollback().await?;
        let (a,): (i64,) = sqlx::query_as(&count_sql).bind(1i32).fetch_one(&mut c).await?;
        let (b,): (i64,) = sqlx::query_as(&count_sql).bind(1i32).fetch_one(&mut other).await?;
        if a != 0 || b != 0 {
            return Err("row visible after rollback".into());
        }
        let mut t = c.begin().await?;
        sqlx::query(&format!("INSERT INTO {P}_items VALUES ($1, $2)")).bind(2i32).bind("committed").execute(&mut *t).await?;
        t.commit().await?;
        let (name,): (String,) =
            sqlx::query_as(&format!("SELECT name FROM {P}_items WHERE id = $1")).bind(2i32).fetch_one(&mut other).await?;
        if name != "committed" {
            return Err("committed row not visible to another connection".into());
        }
        let mut t = c.begin().await?;
        sqlx::query(&format!("INSERT INTO {P}_items VALUES (3, 'outer')")).execute(&mut *t).await?;
        let mut inner = t.begin().await?; // a SAVEPOINT
        sqlx::query(&format!("INSERT INTO {P}_items VALUES (4, 'inner')")).execute(&mut *inner).await?;
        inner.rollback().await?;
        t.commit().await?;
        let (ids,): (Vec<i32>,) =
            sqlx::query_as(&format!("SELECT array_agg(id ORDER BY id) FROM {P}_items WHERE id IN (3, 4)")).fetch_one(&mut other).await?;
        if ids != vec![3] {
            return Err(format!("savepoint rollback: got {ids:?}, expected [3]").into());
        }
        Ok(None)
    }

    pub async fn errors(ctx: &Ctx) -> Res {
        let mut c = ctx.connect().await?;
        expect_err(sqlx::query("SELECT 1/0").fetch_one(&mut c).await, "22012", "division by zero")?;
        let (v,): (i32,) = sqlx::query_as("SELECT 41 + 1").fetch_one(&mut c).await?;
        if v != 42 {
            return Err("statement after error".into());
        }
        sqlx::query(&format!("INSERT INTO {P}_items VALUES (100, 'x')")).execute(&mut c).await?;
        expect_err(
            sqlx::query(&format!("INSERT INTO {P}_items VALUES ($1, $2)")).bind(100i32).bind("dup").execute(&mut c).await,
            "23505",
            "unique violation",
        )?;
        for _ in 0..6 {
            sqlx::query("SELECT 100 / $1::int").bind(5i32).fetch_one(&mut c).await?;
        }
        expect_err(sqlx::query("SELECT 100 / $1::int").bind(0i32).fetch_one(&mut c).await, "22012", "cached statement division by zero")?;
        let (v,): (i32,) = sqlx::query_as("SELECT 100 / $1::int").bind(4i32).fetch_one(&mut c).await?;
        if v != 25 {
            return Err(format!("cached statement after its error: got {v}").into());
        }
        let mut t = c.begin().await?;
        expect_err(sqlx::query("SELECT 1/0").fetch_one(&mut *t).await, "22012", "division by zero in transaction")?;
        expect_err(sqlx::query("SELECT 1").fetch_one(&mut *t).await, "25P02", "statement in aborted transaction")?;
        t.rollback().await?;
        let (ok,): (String,) = sqlx::query_as("SELECT 'ok'").fetch_one(&mut c).await?;
        if ok != "ok" {
            return Err("statement after rollback of failed transaction".into());
        }
        Ok(None)
    }

    pub async fn copy(ctx: &Ctx) -> Res {
        let mut c = ctx.connect().await?;
        let rows = copy_rows();
        let mut copy = c.copy_in_raw(&format!("COPY {P}_copy (id, name, note) FROM STDIN")).await?;
        copy.send(copy_text(&rows).into_bytes()).await?;
        let n = copy.finish().await?;
        if n != 1000 {
            return Err(format!("copy_in_raw reported {n} rows").into());
        }
        let out: Vec<bytes::Bytes> =
            c.copy_out_raw(&format!("COPY (SELECT id, name, note FROM {P}_copy ORDER BY id) TO STDOUT")).await?.try_collect().await?;
        check_copy(&parse_copy(&out.concat())?, &rows)?;
        let (one,): (i32,) = sqlx::query_as("SELECT 1").fetch_one(&mut c).await?;
        if one != 1 {
            return Err("connection after COPY".into());
        }
        Ok(None)
    }

    async fn show(c: &mut PgConnection, name: &str) -> Result<String, sqlx::Error> {
        let (v,): (String,) = sqlx::query_as(&format!("SHOW {name}")).fetch_one(c).await?;
        Ok(v)
    }

    pub async fn settings(ctx: &Ctx) -> Res {
        let stop = Arc::new(AtomicBool::new(false));
        let side = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut others: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = Vec::new();
        for n in 0..4 {
            let mut c = ctx.connect().await?;
            let (stop, side) = (stop.clone(), side.clone());
            others.push(Box::pin(async move {
                let r: Res<()> = async {
                    for s in [format!("SET application_name = 'noise_{n}'"), "SET TIME ZONE 'America/New_York'".into(), "SET statement_timeout = '32s'".into()] {
                        sqlx::raw_sql(&s).execute(&mut c).await?;
                    }
                    while !stop.load(Ordering::Relaxed) {
                        let mut t = c.begin().await?;
                        let app = show(&mut t, "application_name").await?;
                        let tz = show(&mut t, "TimeZone").await?;
                        sqlx::query("SELECT pg_sleep(0.005)").execute(&mut *t).await?;
                        t.commit().await?;
                        if app != format!("noise_{n}") || tz != "America/New_York" {
                            return Err(format!("noise client {n} saw application_name='{app}' TimeZone='{tz}'").into());
                        }
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = r {
                    side.lock().unwrap().push(format!("noise {n}: {}", describe(&e)));
                }
            }));
        }
        for n in 0..2 {
            let mut c = PgConnection::connect_with(&ctx.opts.clone().application_name(&format!("clean_{n}"))).await?;
            let (stop, side) = (stop.clone(), side.clone());
            others.push(Box::pin(async move {
                let r: Res<()> = async {
                    let (default_tz,): (String,) =
                        sqlx::query_as("SHOW TimeZone").fetch_one(&mut c).await?; // the session's own, at connect
                    while !stop.load(Ordering::Relaxed) {
                        let mut t = c.begin().await?;
                        let app = show(&mut t, "application_name").await?;
                        let tz = show(&mut t, "TimeZone").await?;
                        let st = show(&mut t, "statement_timeout").await?;
                        t.commit().await?;
                        if app != format!("clean_{n}") || tz != default_tz || st != "0" {
                            return Err(format!(
                                "clean client {n} saw application_name='{app}' TimeZone='{tz}' statement_timeout='{st}' \
                                 (expected clean_{n}, {default_tz}, 0): another session's settings leaked"
                            )
                            .into());
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = r {
                    side.lock().unwrap().push(format!("clean {n}: {}", describe(&e)));
                }
            }));
        }
        let mut problems = Vec::new();
        let stop_main = stop.clone();
        let side_main = side.clone();
        let main = async {
            let mut c = ctx.connect().await?;
            let before = vec![show(&mut c, "TimeZone").await?, show(&mut c, "DateStyle").await?];
            for s in settings_sql(P) {
                sqlx::raw_sql(&s).execute(&mut c).await?;
            }
            for i in 0..SETTINGS_TRANSACTIONS {
                let mut bad = Vec::new();
                let mut t = c.begin().await?;
                let r: Result<(), sqlx::Error> = async {
                    for (name, want) in settings_want(P) {
                        let got = show(&mut t, name).await?;
                        if got != want {
                            bad.push(format!("SHOW {name} = '{got}', expected '{want}'"));
                        }
                    }
                    let (off,): (i32,) = sqlx::query_as("SELECT extract(timezone FROM now())::int").fetch_one(&mut *t).await?;
                    if off != 9 * 3600 {
                        bad.push(format!("now() is at UTC offset {off}s, expected 32400s"));
                    }
                    let (probe,): (String,) = sqlx::query_as("SELECT v FROM probe").fetch_one(&mut *t).await?;
                    if probe != P {
                        bad.push(format!("unqualified table 'probe' gave '{probe}'"));
                    }
                    Ok(())
                }
                .await;
                match r {
                    Ok(()) => t.commit().await?,
                    Err(e) => {
                        bad.push(describe(&(Box::new(e) as BoxError)));
                        t.rollback().await?;
                    }
                }
                if !bad.is_empty() {
                    problems.push((i + 1, bad));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sqlx::raw_sql("RESET ALL").execute(&mut c).await?;
            let mut t = c.begin().await?;
            let after = vec![show(&mut t, "TimeZone").await?, show(&mut t, "DateStyle").await?];
            t.commit().await?;
            if after != before {
                side_main.lock().unwrap().push(format!(
                    "after RESET ALL: TimeZone, DateStyle = {after:?}, expected the session's own {before:?}"
                ));
            }
            Ok::<(), BoxError>(())
        };
        let main = async {
            let r = main.await;
            stop_main.store(true, Ordering::Relaxed);
            r
        };
        let (main, _) = futures_util::future::join(main, futures_util::future::join_all(others)).await;
        main?;
        let side = side.lock().unwrap().clone();
        settings_verdict(&problems, &side)
    }

    pub async fn pool_query_as(ctx: &Ctx) -> Res {
        // A PgPool of 20 (sqlx's usual setup): 300 tasks, each a transaction with query_as + binds.
        let pool = PgPoolOptions::new()
            .max_connections(concurrency() as u32)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(ctx.opts.clone())
            .await?;
        let mut tasks = Vec::new();
        for i in 0..300i32 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut t = pool.begin().await?;
                sqlx::query("INSERT INTO drv_sqlx_pool (id, worker) VALUES ($1, $2)").bind(i).bind(i % 7).execute(&mut *t).await?;
                let (w, s): (i32, String) = sqlx::query_as("SELECT worker, $2::text || id FROM drv_sqlx_pool WHERE id = $1")
                    .bind(i)
                    .bind("id=")
                    .fetch_one(&mut *t)
                    .await?;
                t.commit().await?;
                if w != i % 7 || s != format!("id={i}") {
                    return Err::<(), BoxError>(format!("pooled transaction {i}: got ({w}, {s})").into());
                }
                Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM drv_sqlx_pool").fetch_one(&pool).await?;
        pool.close().await;
        if n != 300 {
            return Err(format!("pool rows: {n}").into());
        }
        Ok(Some("300 pooled transactions with query_as + binds".into()))
    }
}

fn dsn() -> String {
    match std::env::var("PGSIDECAR_DSN") {
        Ok(d) if !d.is_empty() => d,
        _ => {
            eprintln!("PGSIDECAR_DSN is not set (the proxy's postgres:// URL)");
            std::process::exit(2);
        }
    }
}

async fn run_tokio_postgres() -> ! {
    let config: tokio_postgres::Config = match dsn().parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bad PGSIDECAR_DSN: {e}");
            std::process::exit(2);
        }
    };
    let mut config = config;
    config.connect_timeout(Duration::from_secs(10));
    let ctx = tp::Ctx { config };
    println!("tokio-postgres 0.7.18");
    let mut r = Report { failed: Vec::new() };
    r.step("setup", Box::pin(tp::setup(&ctx))).await;
    r.step("a-types", Box::pin(tp::types(&ctx))).await;
    r.step("b-prepared-x20", Box::pin(tp::prepared_concurrency(&ctx))).await;
    r.step("c-transactions", Box::pin(tp::transactions(&ctx))).await;
    r.step("d-errors", Box::pin(tp::errors(&ctx))).await;
    r.step("e-cancel", Box::pin(tp::cancel(&ctx))).await;
    r.step("f-copy", Box::pin(tp::copy(&ctx))).await;
    r.step("g-settings", Box::pin(tp::settings(&ctx))).await;
    r.step("x-simple-extended", Box::pin(tp::simple_and_extended(&ctx))).await;
    r.finish("tokio-postgres")
}

async fn run_sqlx() -> ! {
    let opts: sqlx::postgres::PgConnectOptions = match dsn().parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bad PGSIDECAR_DSN: {e}");
            std::process::exit(2);
        }
    };
    let ctx = sx::Ctx { opts };
    println!("sqlx 0.8.6");
    let mut r = Report { failed: Vec::new() };
    r.step("setup", Box::pin(sx::setup(&ctx))).await;
    r.step("a-types", Box::pin(sx::types(&ctx))).await;
    r.step("b-prepared-x20", Box::pin(sx::prepared_concurrency(&ctx))).await;
    r.step("c-transactions", Box::pin(sx::transactions(&ctx))).await;
    r.step("d-errors", Box::pin(sx::errors(&ctx))).await;
    r.skip("e-cancel", "sqlx has no query-cancel API (dropping a future does not send a CancelRequest)");
    r.step("f-copy", Box::pin(sx::copy(&ctx))).await;
    r.step("g-settings", Box::pin(sx::settings(&ctx))).await;
    r.step("x-pool-query-as", Box::pin(sx::pool_query_as(&ctx))).await;
    r.finish("sqlx")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("tokio-postgres") => run_tokio_postgres().await,
        Some("sqlx") => run_sqlx().await,
        _ => {
            eprintln!("usage: driver-matrix tokio-postgres|sqlx   (with PGSIDECAR_DSN set)");
            std::process::exit(2);
        }
    }
}

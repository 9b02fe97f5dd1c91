//! SQL read the way the server reads it, in the full topology (primary, two streaming
//! replicas, Redis-backed cache with a rule on `prices`, `[[locks]]` on `inventory`): session
//! settings that change lexing, code the analyser cannot see into (DO blocks, user functions),
//! functions resolved as Postgres resolves them, and what the cache may keep.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::{lab, Lab, Node, Sidecar, SidecarConfig, APP_PASSWORD, APP_USER};

const SCHEMA: &str = "CREATE TABLE prices(sku_id int primary key, amount numeric(12,2));
    INSERT INTO prices SELECT g, g * 1.5 FROM generate_series(1, 100) g;
    CREATE TABLE inventory(sku_id int, warehouse_id int, on_hand int, primary key (sku_id, warehouse_id));
    INSERT INTO inventory SELECT g, 1, 10 FROM generate_series(1, 10) g;
    GRANT ALL ON prices, inventory TO app;";

/// The full topology, caching `prices` and `price_list`.
fn topology(l: &Lab) -> SidecarConfig {
    SidecarConfig::full_topology(l).cache_rule("catalog prices", &["prices", "price_list"], "90s")
}

/// The sidecar of `cfg`, once its invalidation listener runs.
fn listening(cfg: SidecarConfig) -> Sidecar {
    let sc = cfg.start();
    sc.wait_for_invalidation_listener();
    sc
}

fn fresh_db(l: &Lab, prefix: &str, extra_schema: &str) -> String {
    let db = l.fresh_db(prefix);
    l.psql(Node::Primary, &db, SCHEMA).unwrap();
    if !extra_schema.is_empty() {
        l.psql(Node::Primary, &db, extra_schema).unwrap();
    }
    l.wait_replicas_caught_up();
    db
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every test talks to servers: none may wait forever.
async fn limited<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("test took longer than 120 s")
}

/// One counter of the admin console's SHOW CACHE.
async fn cache_stat(sc: &Sidecar, name: &str) -> u64 {
    support::console_value(sc, "SHOW CACHE", name)
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in SHOW CACHE"))
}

use crate::support::first_value as one;

/// Reads `sql` until the sidecar has stored an answer, and returns it.
async fn read_until_cached(sc: &Sidecar, c: &tokio_postgres::Client, sql: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = cache_stat(sc, "fills").await;
        let answer = one(c, sql).await;
        for _ in 0..25 {
            if cache_stat(sc, "fills").await > before {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        assert!(Instant::now() < deadline, "never cached\n{}", sc.log());
    }
}

fn url_with_options(sc: &Sidecar, db: &str, options: &str) -> String {
    format!(
        "{}?options={}",
        sc.url(APP_USER, APP_PASSWORD, db),
        options.replace(' ', "%20").replace('=', "%3D")
    )
}

// ----------------------------------------------------------------------------- item 3

/// The attack: with standard_conforming_strings off the server ends `'a\' , '` later
/// than a lexer assuming `on`, so the UPDATE is a statement of its own to the server.
fn attack(sku: i32) -> String {
    format!("SELECT 'a\\' , ' ; UPDATE prices SET amount = 0 WHERE sku_id = {sku} ; --'")
}

#[test]
fn a_backslash_literal_with_standard_conforming_strings_off_cannot_hide_a_write_from_the_cache() {
    let l = lab();
    let db = fresh_db(l, "sqls_scs", "");
    let sc = listening(topology(l));
    rt().block_on(limited(async {
        // Off from the startup packet, in an explicit transaction (which runs on the primary).
        let c = support::client(&url_with_options(
            &sc,
            &db,
            "-c standard_conforming_strings=off",
        ))
        .await
        .unwrap();
        assert_eq!(one(&c, "SHOW standard_conforming_strings").await, "off");
        let read7 = "SELECT amount::text FROM prices WHERE sku_id = 7";
        assert_eq!(read_until_cached(&sc, &c, read7).await, "10.50");
        c.batch_execute("BEGIN").await.unwrap();
        c.simple_query(&attack(7)).await.unwrap();
        c.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            l.psql(
                Node::Primary,
                &db,
                "SELECT amount FROM prices WHERE sku_id = 7"
            )
            .unwrap()
            .trim(),
            "0.00",
            "the server ran the UPDATE"
        );
        assert_eq!(
            one(&c, read7).await,
            "0.00",
            "the cache kept serving the price the hidden UPDATE replaced"
        );

        // Off by SET during the session (the proxy learns it from ParameterStatus), autocommit.
        let c = support::app_client(&sc, &db).await;
        let read8 = "SELECT amount::text FROM prices WHERE sku_id = 8";
        assert_eq!(read_until_cached(&sc, &c, read8).await, "12.00");
        c.batch_execute("SET standard_conforming_strings = off")
            .await
            .unwrap();
        c.simple_query(&attack(8)).await.unwrap();
        assert_eq!(
            one(&c, read8).await,
            "0.00",
            "stale read after the hidden UPDATE"
        );

        // Back on: the same text is one harmless literal to the server, and read as such.
        c.batch_execute("RESET standard_conforming_strings")
            .await
            .unwrap();
        l.psql(
            Node::Primary,
            &db,
            "UPDATE prices SET amount = 13.50 WHERE sku_id = 9",
        )
        .unwrap();
        l.wait_replicas_caught_up();
        let row = c.simple_query(&attack(9)).await.unwrap();
        assert!(row
            .iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
        assert_eq!(
            l.psql(
                Node::Primary,
                &db,
                "SELECT amount FROM prices WHERE sku_id = 9"
            )
            .unwrap()
            .trim(),
            "13.50",
            "with the setting on, nothing was updated"
        );
    }));
}

#[test]
fn a_database_default_of_standard_conforming_strings_off_holds_from_the_first_statement() {
    let l = lab();
    let db = fresh_db(l, "sqls_scs_default", "");
    l.psql(
        Node::Primary,
        "postgres",
        &format!("ALTER DATABASE {db} SET standard_conforming_strings = off"),
    )
    .unwrap();
    // One primary backend: the next client's login check borrows the one the last client used.
    let sc = listening(
        topology(l)
            .set("pool.max_size", 1)
            .set("pool.checkout_timeout", "20s"),
    );
    rt().block_on(limited(async {
        let reader = support::app_client(&sc, &db).await;
        let read7 = "SELECT amount::text FROM prices WHERE sku_id = 7";
        assert_eq!(read_until_cached(&sc, &reader, read7).await, "10.50");
        // Another client turns it on and leaves that backend so (until the next client's sync).
        let a = support::app_client(&sc, &db).await;
        a.batch_execute("SET standard_conforming_strings = on; BEGIN; SELECT 1; COMMIT")
            .await
            .unwrap();
        // A new client's session has the database's default: its first statement is lexed so.
        let b = support::app_client(&sc, &db).await;
        b.simple_query(&attack(7))
            .await
            .expect("the server reads a SELECT and an UPDATE: sent to a replica, the UPDATE fails");
        assert_eq!(
            one(&b, "SHOW standard_conforming_strings").await,
            "off",
            "the database default"
        );
        assert_eq!(
            one(&reader, read7).await,
            "0.00",
            "the first statement's hidden UPDATE left the cache stale"
        );
    }));
}

// ----------------------------------------------------------------------------- item 5

const SHADOWS: &str = "CREATE SCHEMA shadow AUTHORIZATION app;
    CREATE TABLE shadow.prices(sku_id int, amount numeric(12,2));
    INSERT INTO shadow.prices VALUES (7, 999);
    GRANT ALL ON shadow.prices TO app;
    CREATE FUNCTION make_temp_prices() RETURNS int LANGUAGE plpgsql AS $$
    BEGIN
        CREATE TEMP TABLE prices AS SELECT 7 AS sku_id, 999::numeric(12,2) AS amount;
        RETURN 1;
    END $$;
    CREATE FUNCTION use_shadow() RETURNS int LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM set_config('search_path', 'shadow, public', false);
        RETURN 1;
    END $$;";

/// What the next client of the pool reads from `prices` in a transaction (on the primary).
async fn price_in_transaction(sc: &Sidecar, db: &str) -> String {
    let c = support::app_client(sc, db).await;
    c.batch_execute("BEGIN").await.unwrap();
    let v = one(&c, "SELECT amount::text FROM prices WHERE sku_id = 7").await;
    c.batch_execute("COMMIT").await.unwrap();
    v
}

#[test]
fn a_temp_table_or_setting_made_by_a_do_block_or_a_function_never_reaches_the_next_client() {
    let l = lab();
    let db = fresh_db(l, "sqls_escape", SHADOWS);
    // One backend per pool: the next client gets exactly the backend the last one released.
    let sc = listening(
        topology(l)
            .set("pool.max_size", 1)
            .set("pool.checkout_timeout", "20s"),
    );
    rt().block_on(limited(async {
        assert_eq!(price_in_transaction(&sc, &db).await, "10.50");

        // A DO block: its client keeps the temp table (pinned) ...
        let a = support::app_client(&sc, &db).await;
        a.batch_execute(
            "DO $$ BEGIN CREATE TEMP TABLE prices AS SELECT 7 AS sku_id, 999::numeric(12,2) AS amount; END $$",
        )
        .await
        .unwrap();
        a.batch_execute("BEGIN").await.unwrap();
        assert_eq!(
            one(&a, "SELECT amount::text FROM prices WHERE sku_id = 7").await,
            "999.00",
            "the DO block's client lost its temp table"
        );
        a.batch_execute("COMMIT").await.unwrap();
        drop(a);
        // ... and nobody else ever sees it.
        assert_eq!(
            price_in_transaction(&sc, &db).await,
            "10.50",
            "a temp table created in a DO block reached the next client"
        );

        // A function creating a temp table, its client still connected (not pinned).
        let a = support::app_client(&sc, &db).await;
        one(&a, "SELECT make_temp_prices()").await;
        assert_eq!(
            price_in_transaction(&sc, &db).await,
            "10.50",
            "a temp table created by a function reached the next client"
        );
        // A function changing search_path with set_config(…, false).
        one(&a, "SELECT use_shadow()").await;
        assert_eq!(
            price_in_transaction(&sc, &db).await,
            "10.50",
            "a setting made by a function reached the next client"
        );
        // The client that ran them goes on working; each call gets a clean backend (the temp
        // table of the last call is gone). What that costs: a reset round trip per call.
        let started = Instant::now();
        for _ in 0..20 {
            one(&a, "SELECT make_temp_prices()").await;
        }
        let retired = started.elapsed() / 20;
        let started = Instant::now();
        for _ in 0..20 {
            one(&a, "SELECT 1 FROM prices WHERE sku_id = 1 FOR SHARE").await;
        }
        let pooled = started.elapsed() / 20;
        println!("user-function call followed by a backend reset: {retired:?} per call; a primary statement on a pooled one: {pooled:?}");
    }));
}

// ----------------------------------------------------------------------------- item 4

/// A VOLATILE `upper(int)` that writes `prices`: Postgres picks it for `upper(sku_id)`.
const USER_UPPER: &str = "CREATE FUNCTION public.upper(int) RETURNS int LANGUAGE sql VOLATILE AS
    $$ UPDATE public.prices SET amount = amount + 1 WHERE sku_id = $1 RETURNING $1 $$;";

/// How many times the sidecar has installed a function catalog.
fn catalog_loads(sc: &Sidecar) -> usize {
    sc.log()
        .matches("loaded function volatility from pg_proc")
        .count()
}

fn wait_catalog_loads(sc: &Sidecar, more_than: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while catalog_loads(sc) <= more_than {
        assert!(
            Instant::now() < deadline,
            "the function catalog was not reloaded\n{}",
            sc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Caches the plain read of `sku`, calls `call` (which makes a user function write that row),
/// and returns what the plain read says then.
async fn read_after_hidden_write(
    sc: &Sidecar,
    c: &tokio_postgres::Client,
    sku: i32,
    call: &str,
) -> (String, String) {
    let read = format!("SELECT amount::text FROM prices WHERE sku_id = {sku}");
    let before = read_until_cached(sc, c, &read).await;
    c.simple_query(call)
        .await
        .unwrap_or_else(|e| panic!("{call}: {e}"));
    (before, one(c, &read).await)
}

#[test]
fn a_users_volatile_overload_of_a_builtin_name_is_not_routed_or_cached_as_the_builtin() {
    let l = lab();
    let db = fresh_db(l, "sqls_funcs", USER_UPPER);
    // Periodic reloads off: only DDL through the sidecar may reload the catalog.
    let sc = listening(topology(l).set("routing.catalog_refresh", "0s"));
    wait_catalog_loads(&sc, 0);
    rt().block_on(limited(async {
        let c = support::app_client(&sc, &db).await;
        // Loaded at start: upper(sku_id) may be the user's upper(int), which writes.
        let (before, after) = read_after_hidden_write(
            &sc,
            &c,
            7,
            "SELECT upper(sku_id) FROM prices WHERE sku_id = 7",
        )
        .await;
        assert_eq!(before, "10.50");
        assert_eq!(
            after, "11.50",
            "the user's upper(int) wrote, and the read was still served from the cache"
        );

        // Created through the sidecar: the catalog is read again after the DDL commits.
        let loads = catalog_loads(&sc);
        c.batch_execute(
            "CREATE FUNCTION public.lower(int) RETURNS int LANGUAGE sql VOLATILE AS
             $$ UPDATE public.prices SET amount = amount + 1 WHERE sku_id = $1 RETURNING $1 $$",
        )
        .await
        .unwrap();
        wait_catalog_loads(&sc, loads);
        let (before, after) = read_after_hidden_write(
            &sc,
            &c,
            8,
            "SELECT lower(sku_id) FROM prices WHERE sku_id = 8",
        )
        .await;
        assert_eq!(before, "12.00");
        assert_eq!(
            after, "13.00",
            "lower(int) created through the sidecar was taken for the built-in"
        );
    }));
}

#[test]
fn functions_created_behind_the_sidecars_back_are_found_by_the_periodic_reload() {
    let l = lab();
    let db = fresh_db(l, "sqls_refresh", "");
    let sc = listening(topology(l).set("routing.catalog_refresh", "1s"));
    wait_catalog_loads(&sc, 0);
    let loads = catalog_loads(&sc);
    l.psql(Node::Primary, &db, USER_UPPER).unwrap();
    l.wait_replicas_caught_up();
    wait_catalog_loads(&sc, loads);
    rt().block_on(limited(async {
        let c = support::app_client(&sc, &db).await;
        let (before, after) = read_after_hidden_write(
            &sc,
            &c,
            9,
            "SELECT upper(sku_id) FROM prices WHERE sku_id = 9",
        )
        .await;
        assert_eq!(before, "13.50");
        assert_eq!(after, "14.50");
    }));
}

// ----------------------------------------------------------------------------- item 6

#[test]
fn a_view_is_never_cached_so_a_write_to_its_table_cannot_leave_it_stale() {
    let l = lab();
    let db = fresh_db(
        l,
        "sqls_view",
        "CREATE VIEW price_list AS SELECT sku_id, amount FROM prices; GRANT ALL ON price_list TO app;",
    );
    let sc = listening(topology(l));
    wait_catalog_loads(&sc, 0);
    rt().block_on(limited(async {
        let c = support::app_client(&sc, &db).await;
        let view = "SELECT amount::text FROM price_list WHERE sku_id = 7";
        // Read it the way a fill would be stored, for as long as a fill takes.
        let fills = cache_stat(&sc, "fills").await;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            assert_eq!(one(&c, view).await, "10.50");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            cache_stat(&sc, "fills").await,
            fills,
            "a read of a view was cached under the view's name"
        );
        c.batch_execute("UPDATE prices SET amount = 1 WHERE sku_id = 7")
            .await
            .unwrap();
        assert_eq!(one(&c, view).await, "1.00");
        // A plain table read still is cached.
        read_until_cached(&sc, &c, "SELECT amount::text FROM prices WHERE sku_id = 8").await;
    }));
}

#[test]
fn a_cache_ttl_hint_is_capped_by_max_hint_ttl() {
    let l = lab();
    let db = fresh_db(l, "sqls_ttl", "");
    // Its own key prefix and channel: other tests' writes of unknown tables invalidate
    // everything under theirs, which would end this entry before its TTL does.
    let sc = listening(
        topology(l)
            .set("cache.max_hint_ttl", "5s")
            .fleet("sqls_ttl"),
    );
    rt().block_on(limited(async {
        let c = support::app_client(&sc, &db).await;
        let read =
            "/* pgsidecar: cache_ttl=1h */ SELECT on_hand::text FROM inventory WHERE sku_id = 3";
        assert_eq!(read_until_cached(&sc, &c, read).await, "10");
        // Behind the cache's back (no NOTIFY trigger): only the TTL can end the entry.
        l.psql(
            Node::Primary,
            &db,
            "UPDATE inventory SET on_hand = 4 WHERE sku_id = 3",
        )
        .unwrap();
        l.wait_replicas_caught_up();
        assert_eq!(one(&c, read).await, "10", "served from the cache meanwhile");
        tokio::time::sleep(Duration::from_millis(5500)).await;
        assert_eq!(
            one(&c, read).await,
            "4",
            "a one-hour hint outlived cache.max_hint_ttl"
        );
    }));
}

//! Hostile clients and a hostile network (issue #14): each test is one probe an attacker would
//! try, refused or bounded with a clear SQLSTATE while the sidecar keeps serving others.

mod support;

use std::time::Duration;

use support::{data_rows, errors, lab, Raw, Sidecar, APP_PASSWORD, APP_USER};

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

fn assert_no_panic(sc: &Sidecar) {
    assert!(sc.is_running(), "sidecar died:\n{}", sc.log());
    assert!(
        !sc.log().contains("panicked"),
        "sidecar panicked:\n{}",
        sc.log()
    );
}

/// Every client call in these tests is bounded: a hang is a failure, not a stuck test.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    within(url, support::client(url)).await
}

/// The full topology (primary over TCP with SCRAM, both replicas, Redis cache with a rule,
/// `[[locks]]` on `inventory`) plus `extra` TOML (sections, or `[listen]` keys first).
fn full_sidecar(extra: &str) -> Sidecar {
    full_sidecar_with("", extra)
}

fn full_sidecar_with(listen_extra: &str, extra: &str) -> Sidecar {
    let l = lab();
    let port = support::free_port();
    Sidecar::start(&format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\n{listen_extra}\n{}\
         [cache]\nenabled = true\nredis = \"{}\"\n\
         [routing]\nhealth_interval = \"100ms\"\n\
         [[routing.rules]]\nname = \"catalog\"\ntables = [\"prices\"]\ncache_ttl = \"60s\"\n\
         [[locks]]\ntable = \"inventory\"\nkey = [\"sku_id\", \"warehouse_id\"]\n{extra}",
        support::upstream_section(l),
        l.redis_url(),
    ))
}

/// The lab's primary trusts its Unix socket (as many installations trust local connections).
/// A sidecar in passthrough mode reaching it there used to take AuthenticationOk as proof of
/// the client's password, so any password opened the database and the admin console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_refuses_clients_when_the_primary_lets_the_sidecar_in_without_a_password() {
    let db = lab().fresh_db("sec_trusting_primary");
    let port = support::free_port();
    let upstream = format!(
        "[upstream]\nprimary = \"postgres://localhost:{pg}/?host={sock}\"\n",
        pg = lab().primary_port(),
        sock = lab().dir().join("sock").display(),
    );
    let sc = Sidecar::start(&format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\n{upstream}[admin]\nusers = [\"{APP_USER}\"]\n"
    ));
    for (password, database) in [
        ("wrong", db.as_str()),
        (APP_PASSWORD, db.as_str()),
        ("wrong", "pgsidecar"),
    ] {
        let Err(e) = connect(&sc.url(APP_USER, password, database)).await else {
            panic!(
                "password {password:?} to {database} accepted though the primary checked none\n{}",
                sc.log()
            );
        };
        assert_eq!(code(&e), "28P01", "{e}");
    }
    let log = sc.log();
    assert!(
        log.contains("without checking a password") && log.contains("method = \"trust\""),
        "the log must say why and what to configure:\n{log}"
    );
    assert_no_panic(&sc);
    drop(sc);

    // An explicit trust rule is the operator's own decision: then the client is let in.
    let port = support::free_port();
    let sc = Sidecar::start(&format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\n{upstream}\
         [[auth.rules]]\nuser = \"{APP_USER}\"\nmethod = \"trust\"\n"
    ));
    let c = connect(&sc.url(APP_USER, "anything", &db))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
    within("query", c.simple_query("SELECT 1")).await.unwrap();
}

/// A wildcard `trust` rule (say, for the application's subnet) must not open the admin console:
/// it gets a password method of its own unless `admin.auth` or a rule naming the console says
/// otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_does_not_inherit_trust_from_a_wildcard_rule() {
    let db = lab().fresh_db("sec_admin_trust");
    let sc = full_sidecar(&format!(
        "[[auth.rules]]\naddress = \"127.0.0.1/32\"\nmethod = \"trust\"\n\
         [admin]\nusers = [\"{APP_USER}\"]\n"
    ));
    // The application is trusted (the sidecar logs in with the upstream URL's credentials).
    let c = connect(&sc.url(APP_USER, "anything", &db))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
    within("query", c.simple_query("SELECT 1")).await.unwrap();
    // The console is not.
    let Err(e) = connect(&sc.url(APP_USER, "wrong", "pgsidecar")).await else {
        panic!("a wrong password opened the admin console\n{}", sc.log());
    };
    assert_eq!(code(&e), "28P01", "{e}");
    let console = connect(&sc.url(APP_USER, APP_PASSWORD, "pgsidecar"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
    within("SHOW", console.simple_query("SHOW VERSION"))
        .await
        .unwrap();
    assert_no_panic(&sc);
}

/// Passthrough remembers only what the primary checked, and a failed check forgets: once the
/// primary refused a password for a user, the one it accepted before is checked again, so a
/// revoked password stops working at the first failure instead of at the end of the ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_cache_forgets_a_user_whose_password_the_primary_refused() {
    let db = lab().fresh_db("sec_pt_cache");
    let role = "sec_rotating";
    lab()
        .psql(
            support::Node::Primary,
            "postgres",
            &format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'first'"),
        )
        .unwrap();
    let sc = full_sidecar("");
    let first = sc.url(role, "first", &db);
    let c = connect(&first)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
    within("query", c.simple_query("SELECT 1")).await.unwrap();
    // Cached now: the same password is let in without asking the primary.
    lab()
        .psql(
            support::Node::Primary,
            "postgres",
            &format!("ALTER ROLE {role} PASSWORD 'second'"),
        )
        .unwrap();
    let Err(e) = connect(&sc.url(role, "guess", &db)).await else {
        panic!("a wrong password was accepted");
    };
    assert_eq!(code(&e), "28P01", "{e}");
    let Err(e) = connect(&first).await else {
        panic!("the revoked password was still accepted from the cache after a failed check");
    };
    assert_eq!(code(&e), "28P01", "{e}");
    connect(&sc.url(role, "second", &db))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
    assert_no_panic(&sc);
}

/// A Bind whose parameter-format count is -1, for a statement writing a `[[locks]]` table: the
/// lock planner decodes its parameters, and the count cast to usize once made an allocation
/// panic the worker (`capacity overflow`), leaving the client without an answer.
#[test]
fn bind_with_a_negative_format_count_on_a_lock_table_gets_08p01_not_a_panic() {
    let db = lab().fresh_db("sec_bind_neg");
    lab()
        .psql(
            support::Node::Primary,
            &db,
            "CREATE TABLE inventory(sku_id int, warehouse_id int, qty int, \
             PRIMARY KEY (sku_id, warehouse_id)); INSERT INTO inventory VALUES (1, 1, 10)",
        )
        .unwrap();
    let sc = full_sidecar("");
    let mut r = Raw::login(&sc, &db);
    r.parse(
        "upd",
        "UPDATE inventory SET qty = qty - 1 WHERE sku_id = $1 AND warehouse_id = $2",
    );
    for count in [-1i16, -32768] {
        let mut b = b"\0upd\0".to_vec();
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&2i16.to_be_bytes());
        for v in ["1", "1"] {
            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
            b.extend_from_slice(v.as_bytes());
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        r.send(b'B', &b);
        r.execute("");
        let resp = r.sync();
        let errs = errors(&resp);
        assert_eq!(
            errs.first().map(|e| e.0.as_str()),
            Some("08P01"),
            "{errs:?}\n{}",
            sc.log()
        );
    }
    // The session and the sidecar go on; nothing was written.
    let rows = data_rows(&r.simple("SELECT qty FROM inventory"));
    assert_eq!(rows, vec![vec![Some("10".to_string())]]);
    let mut other = Raw::login(&sc, &db);
    let rows = data_rows(&other.simple("SELECT qty FROM inventory"));
    assert_eq!(rows, vec![vec![Some("10".to_string())]]);
    assert_no_panic(&sc);
}

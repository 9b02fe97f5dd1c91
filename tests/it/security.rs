//! Hostile clients and a hostile network (issue #14): each test is one probe an attacker would
//! try, refused or bounded with a clear SQLSTATE while the sidecar keeps serving others.

use crate::support;
use pgsidecar::wire::tag::{back, front};

use crate::support::{assert_no_panic, code};

use std::time::Duration;

use crate::support::{data_rows, errors, lab, Raw, SidecarConfig, APP_PASSWORD, APP_USER};

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
/// `[[locks]]` on `inventory`).
fn full_sidecar() -> SidecarConfig {
    SidecarConfig::full_topology(lab()).cache_rule("catalog", &["prices"], "60s")
}

/// The lab's primary trusts its Unix socket (as many installations trust local connections).
/// A sidecar in passthrough mode reaching it there used to take AuthenticationOk as proof of
/// the client's password, so any password opened the database and the admin console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_refuses_clients_when_the_primary_lets_the_sidecar_in_without_a_password() {
    let db = lab().fresh_db("sec_trusting_primary");
    let on_socket = SidecarConfig::new().set(
        "upstream.primary",
        format!(
            "postgres://localhost:{}/?host={}",
            lab().primary_port(),
            lab().dir().join("sock").display()
        ),
    );
    let sc = on_socket.clone().set("admin.users", vec![APP_USER]).start();
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
    let sc = on_socket
        .auth_rule(&[("user", APP_USER), ("method", "trust")])
        .start();
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
    let sc = full_sidecar()
        .auth_rule(&[("address", "127.0.0.1/32"), ("method", "trust")])
        .set("admin.users", vec![APP_USER])
        .start();
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
    let sc = full_sidecar().start();
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
    let sc = full_sidecar().start();
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
        r.send(front::BIND, &b);
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

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// A client that sends its startup packet and never answers the password request held a
/// `max_clients` slot forever; now it is dropped after `listen.auth_timeout` with 08P01, and
/// the sidecar serves others meanwhile.
#[test]
fn a_client_that_never_answers_the_password_request_is_dropped_after_auth_timeout() {
    use std::io::Write;
    let db = lab().fresh_db("sec_auth_timeout");
    let sc = full_sidecar().set("listen.auth_timeout", "1s").start();
    let mut silent = Raw::connect(&sc);
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", APP_USER), ("database", db.as_str())] {
        body.extend_from_slice(format!("{k}\0{v}\0").as_bytes());
    }
    body.push(0);
    let mut pkt = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    silent.0.write_all(&pkt).unwrap();
    let started = std::time::Instant::now();
    let (tag, _) = silent.read_msg().expect("password request");
    assert_eq!(tag, back::AUTHENTICATION);
    // Others are served while it waits.
    let mut other = Raw::login(&sc, &db);
    assert_eq!(
        data_rows(&other.simple("SELECT 1")),
        vec![vec![Some("1".into())]]
    );
    assert_eq!(silent.error_code().as_deref(), Some("08P01"));
    assert!(silent.closed(), "the connection must be closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "dropped after {waited:?}"
    );
    assert_no_panic(&sc);
}

/// 256 MiB of Parse/Bind/Execute without a Sync were all buffered (the proxy's RSS grew by
/// 424 MiB for one client). Past `listen.max_unsynced_bytes` the client gets 54000 and is
/// disconnected; the proxy's memory stays bounded and other clients are served.
#[test]
fn unsynced_messages_are_bounded_and_the_client_gets_54000() {
    use std::io::Write;
    let db = lab().fresh_db("sec_unsynced");
    let sc = full_sidecar()
        .set("listen.max_unsynced_bytes", 8388608)
        .start();
    let mut other = Raw::login(&sc, &db);
    let before = rss_bytes(sc.pid());
    let mut flood = Raw::login(&sc, &db);
    let reader = flood.0.try_clone().unwrap();
    let answer = std::thread::spawn(move || Raw(reader).error_code());
    // One Parse/Bind/Execute group of ~64 KiB, repeated: 256 MiB in all, or until refused.
    let filler = "x".repeat(64 << 10);
    let mut group = Vec::new();
    for (tag, body) in [
        (
            front::PARSE,
            format!("\0SELECT '{filler}'\0\0\0").into_bytes(),
        ),
        (front::BIND, b"\0\0\0\0\0\0\0\0".to_vec()),
        (front::EXECUTE, b"\0\0\0\0\0".to_vec()),
    ] {
        group.push(tag);
        group.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        group.extend_from_slice(&body);
    }
    let mut sent = 0usize;
    while sent < 256 << 20 {
        if flood.0.write_all(&group).is_err() {
            break;
        }
        sent += group.len();
    }
    assert_eq!(
        answer.join().unwrap().as_deref(),
        Some("54000"),
        "sent {sent} bytes\n{}",
        sc.log()
    );
    // Bounded, not exact: the 8 MiB of buffered messages, the read buffer's doubling and the
    // allocator's retained pages measured 40–64 MiB; without the cap the flood took 424 MiB.
    let grown = rss_bytes(sc.pid()).saturating_sub(before);
    assert!(grown < 128 << 20, "RSS grew {} MiB", grown >> 20);
    assert_eq!(
        data_rows(&other.simple("SELECT 2")),
        vec![vec![Some("2".into())]]
    );
    assert_no_panic(&sc);
}

/// Named statements per client are capped (`listen.max_prepared_statements`): the one past the
/// cap fails with 53400 like any statement error, the session goes on, and closing one makes
/// room again.
#[test]
fn named_statements_per_client_are_capped_with_53400() {
    let db = lab().fresh_db("sec_stmt_cap");
    let sc = full_sidecar()
        .set("listen.max_prepared_statements", 20)
        .start();
    let mut r = Raw::login(&sc, &db);
    for i in 0..20 {
        r.parse(&format!("s{i}"), &format!("SELECT {i}"));
    }
    let resp = r.sync();
    assert!(errors(&resp).is_empty(), "{:?}", errors(&resp));
    r.parse("s20", "SELECT 20");
    let resp = r.sync();
    assert_eq!(
        errors(&resp).first().map(|e| e.0.as_str()),
        Some("53400"),
        "{:?}",
        errors(&resp)
    );
    r.send(front::CLOSE, b"Ss0\0");
    r.parse("s20", "SELECT 20");
    r.bind("", "s20", &[]);
    r.execute("");
    let resp = r.sync();
    assert!(errors(&resp).is_empty(), "{:?}", errors(&resp));
    assert_eq!(data_rows(&resp), vec![vec![Some("20".into())]]);
    assert_no_panic(&sc);
}

/// One user may not take every slot: past `listen.max_clients_per_user` a client gets 53300,
/// other users still get in, and a slot comes back when a client leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_per_user_are_limited_with_53300() {
    let db = lab().fresh_db("sec_per_user");
    let sc = full_sidecar().set("listen.max_clients_per_user", 2).start();
    let url = sc.url(APP_USER, APP_PASSWORD, &db);
    let a = connect(&url).await.unwrap();
    let b = connect(&url).await.unwrap();
    let Err(e) = connect(&url).await else {
        panic!("a third client of the same user was accepted");
    };
    assert_eq!(code(&e), "53300", "{e}");
    let legacy = connect(&sc.url(support::LEGACY_USER, support::LEGACY_PASSWORD, &db))
        .await
        .unwrap_or_else(|e| panic!("another user must get in: {e}"));
    within("query", legacy.simple_query("SELECT 1"))
        .await
        .unwrap();
    drop(a);
    support::eventually("a slot freed", Duration::from_secs(10), || async {
        connect(&url).await.map(drop).map_err(|e| e.to_string())
    })
    .await;
    within("query", b.simple_query("SELECT 1")).await.unwrap();
    assert_no_panic(&sc);
}

/// Client sockets have TCP keepalive on (a client whose host vanished is noticed).
#[test]
fn client_sockets_have_tcp_keepalive() {
    let db = lab().fresh_db("sec_keepalive");
    let sc = full_sidecar().set("listen.tcp_keepalive", "30s").start();
    let _r = Raw::login(&sc, &db);
    // `ss` shows the timer running now: right after the login's last bytes that can still be
    // the retransmission timer (`on`) until the client's ACK arrives, so look a few times.
    let mut text = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("ss")
            .args(["-tnoH", "state", "established"])
            .arg(format!("( sport = :{} )", sc.port()))
            .output()
            .unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !text.trim().is_empty() && text.lines().all(|l| l.contains("keepalive")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the client socket never showed a keepalive timer: {text}");
}

/// The HTTP endpoint drops a client that never finishes its request headers (slowloris) and
/// serves a bounded number of connections at once, both as configured in `[admin]`.
#[test]
fn http_endpoint_times_out_slow_headers_and_limits_connections() {
    use std::io::{Read, Write};
    let sc = full_sidecar()
        .http()
        .set("admin.http_max_connections", 8)
        .set("admin.http_header_timeout", "1s")
        .start();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], sc.http_port()).into();
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a half-sent request held its connection for {:?} (http_header_timeout = 1s)",
        started.elapsed()
    );
    // Hold as many idle connections as allowed; past the limit new ones are closed at once,
    // and once they go the endpoint answers again.
    let idle: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = std::net::TcpStream::connect(addr).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = refused.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
    let mut answer = String::new();
    let _ = refused.read_to_string(&mut answer);
    assert!(answer.is_empty(), "served past the limit: {answer}");
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    let mut ok = std::net::TcpStream::connect(addr).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ok.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    ok.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("200"), "{answer}");
    assert_no_panic(&sc);
}

/// A plain `SUBSCRIBE` on the invalidation channel (anyone with Redis access can) used to count
/// as a receiver that never acknowledges: every write waited the whole acknowledgement timeout
/// for it while polling Redis back to back. Writers now wait only for members of the fleet
/// (sidecars holding a lease, `cache::fleet`), so it is never waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_acknowledges_does_not_make_every_write_wait() {
    let l = lab();
    let db = l.fresh_db("sec_silent_sub");
    l.psql(
        support::Node::Primary,
        &db,
        "CREATE TABLE prices(sku_id int PRIMARY KEY, amount numeric); \
         INSERT INTO prices VALUES (1, 1)",
    )
    .unwrap();
    let channel = format!("sec_silent_{}", support::free_port());
    let sc = full_sidecar()
        .set("cache.key_prefix", channel.as_str())
        .set("cache.invalidation_channel", format!("{channel}:inv"))
        .start();
    let mut deaf = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &l.redis_port().to_string(),
            "SUBSCRIBE",
            &format!("{channel}:inv"),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let c = connect(&sc.url(APP_USER, APP_PASSWORD, &db)).await.unwrap();
    let started = std::time::Instant::now();
    for n in 0..20 {
        within(
            "update",
            c.execute(
                &format!("UPDATE prices SET amount = {n} WHERE sku_id = 1"),
                &[],
            ),
        )
        .await
        .unwrap();
    }
    let took = started.elapsed();
    let _ = deaf.kill();
    let _ = deaf.wait();
    let timeouts: u64 = support::console_value(&sc, "SHOW CACHE", "ack_timeouts")
        .await
        .and_then(|v| v.parse().ok())
        .expect("ack_timeouts in SHOW CACHE");
    assert_eq!(
        timeouts, 0,
        "{timeouts} of 20 writes waited for a silent subscriber (20 writes took {took:?})"
    );
    assert_no_panic(&sc);
}

//! SCRAM channel binding (`tls-server-end-point`) on both sides of the sidecar, and
//! `upstream.require_auth` (issue #14 item 1).
//!
//! This area's lab primary serves TLS (an ECDSA P-256 certificate signed with SHA-384, so the
//! binding hash is SHA-384, not the usual SHA-256); its replicas do not. The sidecar's own
//! certificate is RSA with SHA-256. Postgres verifies the binding data itself, so a login under
//! `channel_binding = "require"` (which only logs in with SCRAM-SHA-256-PLUS) proves the hash
//! the sidecar sent was right.

use crate::support;
use pgsidecar::wire::tag::{back, ssl};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::{
    assert_no_panic, code, lab, Lab, Node, SidecarConfig, APP_PASSWORD, APP_USER, LEGACY_PASSWORD,
    LEGACY_USER,
};

/// Every client call is bounded: a hang is a failure, not a stuck test.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
}

/// A self-signed certificate and key (`openssl req -x509`, CN=localhost) in `dir`.
fn make_cert(dir: &Path, name: &str, key_args: &[&str]) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(key_args)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Turns TLS on for this area's lab primary, once (`server.crt`/`server.key` are Postgres'
/// defaults in the data directory; `ssl` is reloadable). Replicas keep plain TCP only.
fn lab_with_tls_primary() -> &'static Lab {
    static DONE: OnceLock<()> = OnceLock::new();
    let l = lab();
    DONE.get_or_init(|| {
        let data = l.data_dir(Node::Primary);
        let (cert, key) = make_cert(
            &data,
            "server",
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-sha384",
            ],
        );
        for f in [&cert, &key] {
            support::chown_to_postgres(f);
        }
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod key");
        l.psql(Node::Primary, "postgres", "ALTER SYSTEM SET ssl = on")
            .expect("ssl = on");
        l.psql(Node::Primary, "postgres", "SELECT pg_reload_conf()")
            .expect("reload");
        // Wait until a TLS connection is served.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("psql")
                .arg(format!(
                    "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
                    l.primary_port()
                ))
                .args([
                    "-X",
                    "-At",
                    "-c",
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                ])
                .env("PGPASSWORD", support::SUPERUSER_PASSWORD)
                .output()
                .expect("psql");
            if String::from_utf8_lossy(&out.stdout).trim() == "t" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "primary did not start serving TLS: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                l.log_tail(Node::Primary)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    l
}

/// The full topology (primary, both replicas, Redis cache with a rule, `[[locks]]`) of this
/// module's lab; the tests say how the primary is reached (`upstream.tls` and the rest).
fn full_sidecar() -> SidecarConfig {
    SidecarConfig::full_topology(lab_with_tls_primary()).cache_rule("catalog", &["prices"], "60s")
}

/// [`full_sidecar`] serving TLS to clients with a certificate of its own (RSA, SHA-256) and a
/// users file with the app's SCRAM verifier, both made in `dir`.
fn serving_tls(dir: &Path) -> SidecarConfig {
    let (cert, key) = make_cert(dir, "sidecar", &["-newkey", "rsa:2048"]);
    full_sidecar()
        .set("listen.tls_cert", cert.display().to_string())
        .set("listen.tls_key", key.display().to_string())
        .set("auth.users_file", users_file(dir).display().to_string())
}

/// (a) With `channel_binding = "require"` the sidecar logs in to the TLS primary with
/// SCRAM-SHA-256-PLUS (Postgres checks the certificate hash), and refuses to log in to the
/// replicas, which have no TLS, before sending them anything; reads are then served by the
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_binds_scram_to_the_servers_certificate_and_refuses_a_link_without_tls() {
    let l = lab_with_tls_primary();
    let db = l.fresh_db("cb_upstream");
    l.psql(Node::Primary, &db, "CREATE TABLE t (id int PRIMARY KEY)")
        .unwrap();
    let sc = full_sidecar()
        .set("upstream.tls", "prefer")
        .set("upstream.channel_binding", "require")
        .start();
    let url = sc.url(APP_USER, APP_PASSWORD, &db);
    let c = within("connect", support::client(&url))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
    // A write runs on the primary: its backend connection is TLS.
    let ssl: bool = within(
        "write",
        c.query_one(
            "INSERT INTO t VALUES (1) RETURNING (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            &[],
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sc.log()))
    .get(0);
    assert!(ssl, "the sidecar's connection to the primary is not TLS");
    // The replicas offer no TLS: the monitor's logins to them are refused by the sidecar.
    let replica = format!("127.0.0.1:{}", l.replica_ports()[0]);
    support::eventually(
        "a replica login refused for lack of TLS",
        Duration::from_secs(20),
        || async {
            let log = sc.log();
            if log.contains(&replica)
                && log.contains("the connection to the server does not use TLS")
            {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
    let n: i64 = within("read", c.query_one("SELECT count(*) FROM t", &[]))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sc.log()))
        .get(0);
    assert_eq!(n, 1);
    assert!(
        !l.log_tail(Node::Replica(0))
            .contains("password authentication failed"),
        "a password reached the replica"
    );
    assert_no_panic(&sc);
}

/// `upstream.channel_binding = "require"` with `tls = "disable"` can never log in: refused
/// by the configuration check rather than at the first client.
#[test]
fn channel_binding_require_without_tls_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgsidecar.toml");
    std::fs::write(
        &cfg,
        "[upstream]\nprimary = \"postgres://127.0.0.1:5432\"\ntls = \"disable\"\nchannel_binding = \"require\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("pgsidecar check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "check accepted it:\n{text}");
    assert!(
        text.contains("channel_binding = \"require\" needs TLS"),
        "{text}"
    );
}

/// `"user" "rolpassword"` lines for the app user, from the primary (SCRAM pass-through).
fn users_file(dir: &Path) -> PathBuf {
    let rows = lab_with_tls_primary()
        .psql(
            Node::Primary,
            "postgres",
            &format!("SELECT '\"' || rolname || '\" \"' || rolpassword || '\"' FROM pg_authid WHERE rolname = '{APP_USER}'"),
        )
        .unwrap();
    let path = dir.join("userlist.txt");
    std::fs::write(&path, rows + "\n").unwrap();
    path
}

fn psql(port: u16, db: &str, conninfo: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user={APP_USER} dbname={db} connect_timeout=10 {conninfo}"
        ))
        .args(["-X", "-At", "-c", sql])
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .expect("psql")
}

/// (b) psql (libpq) with `channel_binding=require` logs in to the sidecar over TLS: the sidecar
/// offers SCRAM-SHA-256-PLUS bound to its certificate. The client's ClientKey is passed through
/// to the primary, where the sidecar binds its own login to the primary's certificate.
#[test]
fn psql_with_channel_binding_require_logs_in_to_the_sidecar_over_tls() {
    let l = lab_with_tls_primary();
    let db = l.fresh_db("cb_client");
    let dir = tempfile::tempdir().unwrap();
    let sc = serving_tls(dir.path())
        .set("upstream.tls", "require")
        .set("upstream.channel_binding", "require")
        .start();
    let sql = "SELECT 'bound'";
    for conninfo in [
        "sslmode=require channel_binding=require",
        "sslmode=require channel_binding=prefer",
        // A client that does not bind ("n,,") is still served when -PLUS is offered.
        "sslmode=require channel_binding=disable",
    ] {
        let out = psql(sc.port(), &db, conninfo, sql);
        assert!(
            out.status.success(),
            "{conninfo}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            sc.log()
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "bound",
            "{conninfo}"
        );
    }
    // Without TLS there is nothing to bind to: libpq refuses, as against Postgres.
    let out = psql(
        sc.port(),
        &db,
        "sslmode=disable channel_binding=require",
        sql,
    );
    assert!(!out.status.success(), "bound without TLS?");
    // A wrong password is still refused over a bound exchange.
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user={APP_USER} dbname={db} sslmode=require channel_binding=require connect_timeout=10",
            sc.port()
        ))
        .args(["-X", "-At", "-c", sql])
        .env("PGPASSWORD", "wrong")
        .output()
        .expect("psql");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_panic(&sc);
}

/// Reads one message over TLS: (tag, body).
async fn read_msg<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 5];
    within("message", s.read_exact(&mut head))
        .await
        .expect("read");
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    within("message", s.read_exact(&mut body))
        .await
        .expect("read");
    (head[0], body)
}

/// (c) A client that says "y" (it could bind but thinks the server cannot) after the sidecar
/// offered SCRAM-SHA-256-PLUS was downgraded by someone in the middle: refused with 28000
/// "SCRAM channel binding negotiation error", as Postgres 15 does. The sidecar keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_claiming_y_after_plus_was_offered_is_refused_with_28000() {
    use tokio::io::AsyncWriteExt;
    let l = lab_with_tls_primary();
    let db = l.fresh_db("cb_downgrade");
    let dir = tempfile::tempdir().unwrap();
    let sc = serving_tls(dir.path())
        .set("upstream.tls", "require")
        .start();
    let mut tcp = within("connect", tokio::net::TcpStream::connect(sc.addr()))
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    within(
        "SSLRequest",
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer),
    )
    .await
    .unwrap();
    assert_eq!(answer[0], ssl::WILLING);
    let connector = pgsidecar::tls::connector(None).unwrap();
    let mut tls = within(
        "TLS handshake",
        connector.connect(pgsidecar::tls::server_name("localhost"), tcp),
    )
    .await
    .unwrap();
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", APP_USER), ("database", db.as_str())],
        &mut out,
    )
    .unwrap();
    tls.write_all(&out).await.unwrap();
    let (tag, body) = read_msg(&mut tls).await;
    assert_eq!(tag, back::AUTHENTICATION);
    assert_eq!(&body[..4], &10i32.to_be_bytes(), "AuthenticationSASL");
    let mechanisms = String::from_utf8_lossy(&body[4..]).into_owned();
    assert!(
        mechanisms.contains("SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0"),
        "{mechanisms:?}"
    );
    out.clear();
    postgres_protocol::message::frontend::sasl_initial_response(
        "SCRAM-SHA-256",
        b"y,,n=,r=0123456789abcdef",
        &mut out,
    )
    .unwrap();
    tls.write_all(&out).await.unwrap();
    let (tag, body) = read_msg(&mut tls).await;
    assert_eq!(
        tag,
        back::ERROR_RESPONSE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("C28000"), "{text}");
    assert!(text.contains("channel binding"), "{text}");
    // Others are still served.
    let ok = psql(
        sc.port(),
        &db,
        "sslmode=require channel_binding=require",
        "SELECT 1",
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_no_panic(&sc);
}

/// `upstream.require_auth = ["scram-sha-256"]`: the primary asks the `legacy` user for md5
/// (its pg_hba line), which the sidecar refuses before answering (08004 with the reason, a log
/// line); SCRAM users log in as before. Without the option the same client is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_auth_refuses_a_server_that_asks_for_md5() {
    let l = lab_with_tls_primary();
    let db = l.fresh_db("cb_require_auth");
    let strict = full_sidecar()
        .set("upstream.require_auth", vec!["scram-sha-256"])
        .start();
    let err = within(
        "legacy via strict",
        support::client(&strict.url(LEGACY_USER, LEGACY_PASSWORD, &db)),
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("md5 login accepted\n{}", strict.log()));
    assert_eq!(code(&err), "08004", "{err}");
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("\"md5\""), "{msg}");
    assert!(
        strict
            .log()
            .contains("the server asked for authentication method \\\"md5\\\"")
            || strict.log().contains("method=\"md5\"")
            || strict.log().contains("method=md5"),
        "{}",
        strict.log()
    );
    within(
        "app via strict",
        support::client(&strict.url(APP_USER, APP_PASSWORD, &db)),
    )
    .await
    .unwrap_or_else(|e| panic!("SCRAM user refused: {e}\n{}", strict.log()));
    let open = full_sidecar().start();
    let c = within(
        "legacy via open",
        support::client(&open.url(LEGACY_USER, LEGACY_PASSWORD, &db)),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", open.log()));
    within("query", c.simple_query("SELECT 1")).await.unwrap();
    assert_no_panic(&strict);
    assert_no_panic(&open);
}

//! Client authentication and TLS through the sidecar with real clients: SCRAM against a users
//! file holding the verifier copied from pg_authid (the client's key is passed through to the
//! server, so the sidecar never needs the password), md5, trust rules, and TLS to clients.

use std::process::Command;

use crate::support::{
    self, code, lab, Node, Sidecar, SidecarConfig, APP_PASSWORD, APP_USER, LEGACY_PASSWORD,
    LEGACY_USER,
};

/// A sidecar in front of the lab's primary alone.
fn sidecar() -> SidecarConfig {
    SidecarConfig::primary(lab())
}

/// `"user" "rolpassword"` lines, exactly as PgBouncer's auth_file, from the primary.
fn users_file(dir: &std::path::Path) -> std::path::PathBuf {
    let rows = lab()
        .psql(
            Node::Primary,
            "postgres",
            &format!("SELECT '\"' || rolname || '\" \"' || rolpassword || '\"' FROM pg_authid WHERE rolname IN ('{APP_USER}', '{LEGACY_USER}')"),
        )
        .unwrap();
    let path = dir.join("userlist.txt");
    std::fs::write(&path, rows + "\n").unwrap();
    path
}

async fn try_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_against_the_users_file_passes_the_client_key_through_to_the_server() {
    let db = lab().fresh_db("auth_scram");
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path());
    let sc = sidecar()
        .set("auth.users_file", file.display().to_string())
        .start();
    let c = try_connect(&sc.url(APP_USER, APP_PASSWORD, &db))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, APP_USER);
    // New backend connections for this user also log in with the passed-through key.
    let mut clients = Vec::new();
    for _ in 0..5 {
        let c = try_connect(&sc.url(APP_USER, APP_PASSWORD, &db))
            .await
            .unwrap();
        c.batch_execute("BEGIN").await.unwrap();
        clients.push(c);
    }
    let err = try_connect(&sc.url(APP_USER, "wrong", &db))
        .await
        .err()
        .unwrap_or_else(|| panic!("wrong password must fail"));
    assert_eq!(code(&err), "28P01", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_rule_with_an_md5_secret_logs_in_and_rejects_a_wrong_password() {
    let db = lab().fresh_db("auth_md5");
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path());
    let sc = sidecar()
        .set("auth.users_file", file.display().to_string())
        .auth_rule(&[("user", LEGACY_USER), ("method", "md5")])
        .auth_rule(&[("method", "scram-sha-256")])
        .start();
    let c = try_connect(&sc.url(LEGACY_USER, LEGACY_PASSWORD, &db))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sc.log()));
    c.simple_query("SELECT 1").await.unwrap();
    let err = try_connect(&sc.url(LEGACY_USER, "nope", &db))
        .await
        .err()
        .unwrap_or_else(|| panic!("wrong password must fail"));
    assert_eq!(code(&err), "28P01", "{err}");
}

#[test]
fn tls_clients_are_served_when_a_certificate_is_configured() {
    let db = lab().fresh_db("auth_tls");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let sc = sidecar()
        .set("listen.tls_cert", cert.display().to_string())
        .set("listen.tls_key", key.display().to_string())
        .start();
    let psql = |sslmode: &str| {
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} user={APP_USER} dbname={db} sslmode={sslmode}",
                sc.port()
            ))
            .args(["-X", "-At", "-c", "SELECT 'over tls'"])
            .env("PGPASSWORD", APP_PASSWORD)
            .output()
            .unwrap()
    };
    let out = psql("require");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sc.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");
    // Without a certificate configured, sslmode=require must fail (the proxy answers 'N').
    let plain = sidecar().start();
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user={APP_USER} dbname={db} sslmode=require",
            plain.port()
        ))
        .args(["-X", "-At", "-c", "SELECT 1"])
        .env("PGPASSWORD", APP_PASSWORD)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "sslmode=require succeeded against a sidecar without TLS"
    );
}

/// Polls until `url` logs in (true) or `timeout` passes (false).
async fn logs_in_within(url: &str, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(c) = try_connect(url).await {
            if c.simple_query("SELECT 1").await.is_ok() {
                return true;
            }
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Waits for the `n`th "reload rejected" line of the sidecar's log.
async fn wait_rejections(sc: &Sidecar, n: usize) -> String {
    let what = format!("{n} reload rejection(s) logged");
    support::eventually(&what, std::time::Duration::from_secs(10), || async {
        let log = sc.log();
        if log.matches("reload rejected").count() >= n {
            Ok(log)
        } else {
            Err(log)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_users_and_credentials_files_and_an_invalid_one_changes_nothing() {
    let db = lab().fresh_db("auth_reload");
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.txt");
    let creds = dir.path().join("credentials.txt");
    // Both start wrong: app's secret is not its password, legacy's backend password is wrong.
    std::fs::write(&users, format!("\"{APP_USER}\" \"not-the-password\"\n")).unwrap();
    std::fs::write(&creds, format!("\"{LEGACY_USER}\" \"wrong\"\n")).unwrap();
    let cfg = sidecar()
        .set("auth.users_file", users.display().to_string())
        .auth_rule(&[("user", LEGACY_USER), ("method", "trust")])
        .auth_rule(&[("method", "scram-sha-256")]);
    let sc = cfg.start();
    let config = sc.dir().join("pgsidecar.toml");
    let text = cfg
        .set("upstream.credentials_file", creds.display().to_string())
        .to_toml();
    std::fs::write(&config, &text).unwrap();
    sc.signal(libc::SIGHUP);
    let app_url = sc.url(APP_USER, APP_PASSWORD, &db);
    let legacy_url = sc.url(LEGACY_USER, "anything", &db);
    let Err(err) = try_connect(&app_url).await else {
        panic!("the users file does not know app's password yet");
    };
    assert_eq!(code(&err), "28P01", "{err}");
    assert!(
        try_connect(&legacy_url).await.is_err(),
        "legacy's backend password is wrong"
    );

    // The right secrets, then a reload: both log in.
    users_file(dir.path());
    std::fs::rename(dir.path().join("userlist.txt"), &users).unwrap();
    std::fs::write(&creds, format!("\"{LEGACY_USER}\" \"{LEGACY_PASSWORD}\"\n")).unwrap();
    sc.signal(libc::SIGHUP);
    let timeout = std::time::Duration::from_secs(10);
    assert!(
        logs_in_within(&app_url, timeout).await,
        "users file not re-read\n{}",
        sc.log()
    );
    assert!(
        logs_in_within(&legacy_url, timeout).await,
        "credentials file not re-read\n{}",
        sc.log()
    );

    // An invalid users file: the reload is refused, says why, and the old secrets stay.
    let good_users = std::fs::read_to_string(&users).unwrap();
    std::fs::write(&users, "this is not a userlist\n").unwrap();
    sc.signal(libc::SIGHUP);
    let log = wait_rejections(&sc, 1).await;
    assert!(log.contains("auth.users_file"), "{log}");
    assert!(logs_in_within(&app_url, timeout).await, "{}", sc.log());
    // Likewise an unreadable credentials file.
    std::fs::write(&users, good_users).unwrap();
    std::fs::remove_file(&creds).unwrap();
    sc.signal(libc::SIGHUP);
    let log = wait_rejections(&sc, 2).await;
    assert!(log.contains("upstream.credentials_file"), "{log}");
    assert!(logs_in_within(&legacy_url, timeout).await, "{}", sc.log());
    assert!(logs_in_within(&app_url, timeout).await, "{}", sc.log());
}

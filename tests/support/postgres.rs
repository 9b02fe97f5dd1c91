//! One Postgres server of the lab (primary or streaming replica), driven
//! through the stock tools: initdb, pg_basebackup, pg_ctl, psql.
//!
//! As root every tool runs as the `postgres` user (Postgres refuses root).
//! Servers listen on 127.0.0.1 only, with their unix sockets in the lab dir.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::bins::bins;
use super::net::free_port;
use super::process::{as_postgres, chown_to_postgres, poll, postmaster_pid, reap_child, run, tail};
use super::{APP_PASSWORD, APP_USER, LEGACY_PASSWORD, LEGACY_USER, SUPERUSER, SUPERUSER_PASSWORD};

/// How long a server may take to start, stop or answer its first query.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings shared by every node (replicas inherit them via basebackup).
/// Durability is off (throwaway data); replay conflicts cancel standby
/// queries after 10s instead of stalling replay forever, so a forgotten
/// open transaction on a replica cannot hang `wait_replicas_caught_up`.
/// `synchronous_commit` comes from [`super::lab::LabOptions`] (see
/// [`super::lab::SyncCommit::conf`]).
const SERVER_CONF: &str = "
# ---- pgsidecar test lab ----
listen_addresses = '127.0.0.1'
max_connections = 400
shared_buffers = 64MB
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 256MB
max_wal_size = 512MB
hot_standby = on
hot_standby_feedback = on
max_standby_streaming_delay = 10s
max_standby_archive_delay = 10s
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 500ms
fsync = off
full_page_writes = off
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
";

/// Client auth: sockets trusted; TCP uses SCRAM except for the legacy role,
/// whose MD5-stored password needs the `md5` method (SCRAM cannot check it).
const PG_HBA: &str = "\
local all         all                  trust
local replication all                  trust
host  all         legacy 127.0.0.1/32  md5
host  all         all    127.0.0.1/32  scram-sha-256
host  replication all    127.0.0.1/32  scram-sha-256
";

/// Roles and template1 defaults, so tests can set up tables as the
/// superuser and use them as `app` or `legacy` without GRANT boilerplate.
fn setup_sql() -> String {
    format!(
        "CREATE ROLE {APP_USER} LOGIN CREATEDB PASSWORD '{APP_PASSWORD}';
SET password_encryption = 'md5';
CREATE ROLE {LEGACY_USER} LOGIN PASSWORD '{LEGACY_PASSWORD}';
RESET password_encryption;
\\connect template1
GRANT ALL ON SCHEMA public TO PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE {SUPERUSER}, {APP_USER}, {LEGACY_USER} IN SCHEMA public
  GRANT ALL ON TABLES TO PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE {SUPERUSER}, {APP_USER}, {LEGACY_USER} IN SCHEMA public
  GRANT ALL ON SEQUENCES TO PUBLIC;
"
    )
}

#[derive(Debug, Default, Clone, Copy)]
pub struct NodeState {
    pub running: bool,
    pub replay_paused: bool,
}

pub struct PgNode {
    pub name: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub port: u16,
    /// Lab dir: HOME/cwd of the tools, parent of `sock/`.
    lab_dir: PathBuf,
    /// Held for the whole of an operation (start/stop/pause...).
    state: Mutex<NodeState>,
}

impl PgNode {
    fn new(lab_dir: &Path, name: &str) -> PgNode {
        PgNode {
            name: name.to_owned(),
            data_dir: lab_dir.join(name),
            log_path: lab_dir.join(format!("{name}.log")),
            port: free_port(),
            lab_dir: lab_dir.to_owned(),
            state: Mutex::new(NodeState::default()),
        }
    }

    /// initdb + config + start + roles.
    /// `extra_conf`: more postgresql.conf lines (the lab's `synchronous_commit`).
    pub fn create_primary(lab_dir: &Path, cluster: &str, extra_conf: &str) -> PgNode {
        let mut node = PgNode::new(lab_dir, "primary");
        let sock = lab_dir.join("sock");
        std::fs::create_dir_all(&sock).expect("lab: create socket dir");
        chown_to_postgres(&sock);
        let pwfile = lab_dir.join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).expect("lab: write initdb pwfile");
        let initdb = run(
            as_postgres(&mut Command::new(bins().pg("initdb")), lab_dir)
                .arg("-D")
                .arg(&node.data_dir)
                .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        let _ = std::fs::remove_file(&pwfile);
        if let Err(e) = initdb {
            panic!("lab: {e}");
        }
        let conf = format!(
            "{SERVER_CONF}{extra_conf}unix_socket_directories = '{}'\ncluster_name = '{cluster}-primary'\n",
            sock.display()
        );
        append(&node.data_dir.join("postgresql.conf"), &conf);
        std::fs::write(node.data_dir.join("pg_hba.conf"), PG_HBA).expect("lab: write pg_hba.conf");
        node.first_start();
        node.psql("postgres", &setup_sql())
            .unwrap_or_else(|e| panic!("lab: creating roles on the primary: {e}"));
        node
    }

    /// pg_basebackup -R -X stream from the primary, then start.
    pub fn create_replica(
        lab_dir: &Path,
        cluster: &str,
        index: usize,
        primary_port: u16,
    ) -> PgNode {
        let name = format!("replica{index}");
        let mut node = PgNode::new(lab_dir, &name);
        run(
            as_postgres(&mut Command::new(bins().pg("pg_basebackup")), lab_dir)
                .env("PGPASSWORD", SUPERUSER_PASSWORD)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary_port.to_string(),
                    "-U",
                    SUPERUSER,
                ])
                .arg("-D")
                .arg(&node.data_dir)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
            "pg_basebackup",
        )
        .unwrap_or_else(|e| panic!("lab: cloning {name}: {e}"));
        append(
            &node.data_dir.join("postgresql.conf"),
            &format!("cluster_name = '{cluster}-{name}'\n"),
        );
        // postgresql.auto.conf is read last, so this wins over -R's line.
        append(
            &node.data_dir.join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = 'host=127.0.0.1 port={primary_port} user={SUPERUSER} \
                 password={SUPERUSER_PASSWORD} application_name={name}'\n"
            ),
        );
        node.first_start();
        node
    }

    /// The node's state, held for the duration of an operation. A panic in
    /// another test must not poison the lab for everyone else.
    pub fn lock_state(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new node; retries on another port if ours got taken.
    fn first_start(&mut self) {
        for attempt in 1..=3 {
            append(
                &self.data_dir.join("postgresql.conf"),
                &format!("port = {}\n", self.port),
            );
            match self.pg_ctl_start() {
                Ok(()) => break,
                Err(e) if attempt < 3 && tail(&self.log_path, 20).contains("could not bind") => {
                    eprintln!("lab: {} port {} taken, retrying: {e}", self.name, self.port);
                    self.port = free_port();
                }
                Err(e) => panic!("lab: starting {}: {e}\n{}", self.name, self.log_tail()),
            }
        }
        self.wait_ready();
        self.lock_state().running = true;
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        run(
            as_postgres(&mut Command::new(bins().pg("pg_ctl")), &self.lab_dir)
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_path)
                .args(["-w", "-t", "60", "start"]),
            &format!("pg_ctl start {}", self.name),
        )
        .map(drop)
    }

    /// Starts a stopped node on its old port and waits until it answers.
    pub fn start(&self) {
        let mut state = self.lock_state();
        if let Err(e) = self.pg_ctl_start() {
            panic!("lab: {e}\n{}", self.log_tail());
        }
        self.wait_ready();
        *state = NodeState {
            running: true,
            replay_paused: false,
        };
    }

    /// Fast shutdown (clients disconnected, clean checkpoint).
    pub fn stop(&self) {
        let mut state = self.lock_state();
        let pid = postmaster_pid(&self.data_dir);
        run(
            as_postgres(&mut Command::new(bins().pg("pg_ctl")), &self.lab_dir)
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-w", "-t", "60", "-m", "fast", "stop"]),
            &format!("pg_ctl stop {}", self.name),
        )
        .unwrap_or_else(|e| panic!("lab: {e}\n{}", self.log_tail()));
        // pg_ctl returns once postmaster.pid is gone; also collect the
        // exited postmaster (orphaned to us) so no zombie is left.
        if let Some(pid) = pid {
            reap_child(pid, Duration::from_secs(10));
        }
        state.running = false;
    }

    /// Waits until the server answers `SELECT 1` over TCP.
    pub fn wait_ready(&self) {
        let mut last_err = String::new();
        let ok = poll(READY_TIMEOUT, Duration::from_millis(100), || {
            match self.psql("postgres", "SELECT 1") {
                Ok(_) => Some(()),
                Err(e) => {
                    last_err = e;
                    None
                }
            }
        });
        if ok.is_none() {
            panic!(
                "lab: {} (port {}) not ready after {READY_TIMEOUT:?}: {last_err}\n{}",
                self.name,
                self.port,
                self.log_tail()
            );
        }
    }

    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        psql(self.port, db, sql)
    }

    pub fn log_tail(&self) -> String {
        format!(
            "--- last lines of {} ---\n{}",
            self.log_path.display(),
            tail(&self.log_path, 40)
        )
    }
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("lab: open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("lab: write {}: {e}", path.display()));
}

/// Runs `sql` (any number of statements, psql meta-commands allowed) as the
/// superuser over TCP; returns stdout trimmed (unaligned, tuples only, one
/// row per line, columns separated by `|`). Stops at the first error.
pub fn psql(port: u16, db: &str, sql: &str) -> Result<String, String> {
    psql_as(port, SUPERUSER, SUPERUSER_PASSWORD, db, sql)
}

/// [`psql`] as any role. Also works against a sidecar's port.
pub fn psql_as(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    sql: &str,
) -> Result<String, String> {
    let mut child = Command::new(bins().pg("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args(["-p", &port.to_string(), "-U", user, "-d", db, "-f", "-"])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", "disable")
        .env("PGGSSENCMODE", "disable")
        .env("PGAPPNAME", "lab-psql")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("psql: could not start: {e}"))?;
    let mut stdin = child.stdin.take().expect("psql stdin is piped");
    let script = sql.to_owned();
    // A separate writer avoids a pipe deadlock on big scripts/outputs.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(script.as_bytes());
    });
    let out = child
        .wait_with_output()
        .map_err(|e| format!("psql: wait: {e}"))?;
    let _ = writer.join();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "psql -p {port} -U {user} -d {db} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

//! The lab: a Postgres primary, N streaming replicas and a Redis, plus the
//! operations tests use to provoke failures (stop, pause, restart).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::postgres::PgNode;
use super::process::{chown_to_postgres, poll};
use super::reaper::{new_subdir, reap};
use super::redis::RedisServer;
use super::{url, APP_USER};

/// Longest wait for replicas to replay up to the primary's WAL position.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a lab runs. Build it as `LabOptions { synchronous_commit: SyncCommit::Off,
/// ..LabOptions::default() }` so fields added later need no change.
#[derive(Debug, Clone, Copy)]
pub struct LabOptions {
    /// Streaming replicas cloned from the primary (default 2).
    pub replicas: usize,
    /// Whether to run a Redis (default true).
    pub redis: bool,
    /// The primary's `synchronous_commit` in postgresql.conf (default [`SyncCommit::On`]).
    pub synchronous_commit: SyncCommit,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            replicas: 2,
            redis: true,
            synchronous_commit: SyncCommit::On,
        }
    }
}

/// The primary's `synchronous_commit`, as users run it. Read-your-writes must hold under each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncCommit {
    /// Asynchronous commit: acknowledged before its WAL is written; the WAL writer writes and
    /// streams it within `wal_writer_delay` (200 ms), so replicas get it late.
    Off,
    /// Flushed locally before the acknowledgement; replicas are not waited for.
    Local,
    /// Flushed locally (no `synchronous_standby_names`: no replica is waited for).
    #[default]
    On,
    /// Acknowledged once one replica has written it (`synchronous_standby_names = 'ANY 1
    /// (replica0, replica1, …)'`). Stopping every replica then blocks commits.
    RemoteWrite,
    /// Acknowledged once one replica has replayed it (same standby names); the other replica
    /// may still be behind.
    RemoteApply,
}

impl SyncCommit {
    /// Every setting, for tests that run under each.
    pub const ALL: [SyncCommit; 5] = [
        SyncCommit::Off,
        SyncCommit::Local,
        SyncCommit::On,
        SyncCommit::RemoteWrite,
        SyncCommit::RemoteApply,
    ];

    /// `off`, `local`, `on`, `remote_write` or `remote_apply`.
    pub fn parse(s: &str) -> Option<SyncCommit> {
        SyncCommit::ALL.into_iter().find(|c| c.as_str() == s.trim())
    }

    /// The value as postgresql.conf spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncCommit::Off => "off",
            SyncCommit::Local => "local",
            SyncCommit::On => "on",
            SyncCommit::RemoteWrite => "remote_write",
            SyncCommit::RemoteApply => "remote_apply",
        }
    }

    /// The postgresql.conf line.
    pub fn conf(self) -> String {
        format!("synchronous_commit = {}\n", self.as_str())
    }

    /// `synchronous_standby_names` for a primary with `replicas` streaming replicas, set once
    /// they run (before, every commit would wait for them). Only the remote_* settings name
    /// synchronous standbys (any one of them): with none named, `on` behaves as `local`, as on
    /// a primary without synchronous replication.
    pub fn standby_names(self, replicas: usize) -> Option<String> {
        if replicas == 0 || !matches!(self, SyncCommit::RemoteWrite | SyncCommit::RemoteApply) {
            return None;
        }
        let names: Vec<String> = (0..replicas).map(|i| format!("replica{i}")).collect();
        Some(format!("ANY 1 ({})", names.join(", ")))
    }
}

/// A Postgres server of the lab. Replicas are numbered from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Primary,
    Replica(usize),
}

/// Stops the lab's servers and deletes its dir when a private lab is
/// dropped, or when a lab panics halfway through starting. (The shared lab
/// lives in a static and is never dropped: the reaper handles it.)
struct LabDir(PathBuf);

impl Drop for LabDir {
    fn drop(&mut self) {
        reap(&self.0);
    }
}

pub struct Lab {
    primary: PgNode,
    replicas: Vec<PgNode>,
    redis: Option<RedisServer>,
    db_seq: AtomicUsize,
    /// Last field: dropped after everything else.
    dir: LabDir,
}

/// The lab of the calling test file's area (`tests/it/routing.rs`: routing), shared by the
/// tests of that area: primary, 2 replicas, Redis, `synchronous_commit` from
/// `PGSIDECAR_LAB_SYNCHRONOUS_COMMIT` (off, local, on, remote_write, remote_apply; default on),
/// so a whole suite can be run under another setting. Started on the area's first call; lives
/// until the process exits. Do not stop/pause/restart its servers (other tests run
/// concurrently): use a private [`Lab::start`] for that.
///
/// One lab per area, not one for the whole process: a sidecar reads pg_proc from every
/// database of its primary at start and every `routing.catalog_refresh`, one connection each,
/// and a lab holding every area's databases (each test makes its own) made those loads outlast
/// the waits of the tests that need them and loaded the whole machine. Each area's lab holds
/// the few databases it held when every area was a test binary of its own.
#[track_caller]
pub fn lab() -> &'static Lab {
    type Slot = OnceLock<Result<Lab, String>>;
    static AREAS: Mutex<BTreeMap<String, &'static Slot>> = Mutex::new(BTreeMap::new());
    let area = Path::new(std::panic::Location::caller().file())
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let &mut slot = AREAS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(area.clone())
        .or_insert_with(|| Box::leak(Box::new(Slot::new())));
    let shared = slot.get_or_init(|| {
        std::panic::catch_unwind(|| Lab::start(shared_options())).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_owned())
        })
    });
    match shared {
        Ok(lab) => lab,
        Err(msg) => panic!("lab: the lab of {area} failed to start: {msg}"),
    }
}

/// The options of an area's lab: `synchronous_commit` from `PGSIDECAR_LAB_SYNCHRONOUS_COMMIT`.
fn shared_options() -> LabOptions {
    let mut opts = LabOptions::default();
    if let Ok(v) = std::env::var("PGSIDECAR_LAB_SYNCHRONOUS_COMMIT") {
        opts.synchronous_commit = SyncCommit::parse(&v).unwrap_or_else(|| {
            panic!("PGSIDECAR_LAB_SYNCHRONOUS_COMMIT={v}: not a synchronous_commit value")
        });
    }
    opts
}

impl Lab {
    /// Starts a private lab; it is torn down when dropped.
    pub fn start(opts: LabOptions) -> Lab {
        let began = Instant::now();
        let dir = new_subdir("lab");
        chown_to_postgres(&dir);
        let guard = LabDir(dir.clone());
        let cluster = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let primary = PgNode::create_primary(&dir, &cluster, &opts.synchronous_commit.conf());
        // Replicas and Redis start in parallel: each basebackup is mostly
        // waiting on I/O and the primary's checkpoint.
        let (replicas, redis) = std::thread::scope(|s| {
            let clones: Vec<_> = (0..opts.replicas)
                .map(|i| {
                    let (dir, cluster, port) = (&dir, &cluster, primary.port);
                    s.spawn(move || PgNode::create_replica(dir, cluster, i, port))
                })
                .collect();
            let redis = opts.redis.then(|| RedisServer::create(&dir));
            let replicas: Vec<PgNode> = clones
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect();
            (replicas, redis)
        });
        let lab = Lab {
            primary,
            replicas,
            redis,
            db_seq: AtomicUsize::new(0),
            dir: guard,
        };
        if let Some(names) = opts.synchronous_commit.standby_names(opts.replicas) {
            lab.primary
                .psql(
                    "postgres",
                    &format!(
                        "ALTER SYSTEM SET synchronous_standby_names = '{names}';\n\
                         SELECT pg_reload_conf();"
                    ),
                )
                .unwrap_or_else(|e| panic!("lab: naming synchronous standbys: {e}"));
        }
        lab.wait_replicas_caught_up();
        eprintln!(
            "lab: {} up in {:.1}s: primary :{} (synchronous_commit = {}), replicas {:?}, redis {:?}",
            dir.display(),
            began.elapsed().as_secs_f64(),
            lab.primary_port(),
            opts.synchronous_commit.as_str(),
            lab.replica_ports(),
            lab.redis.as_ref().map(|r| r.port)
        );
        lab
    }

    // ---- addresses -------------------------------------------------------

    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    pub fn replica_ports(&self) -> Vec<u16> {
        self.replicas.iter().map(|r| r.port).collect()
    }

    pub fn port(&self, node: Node) -> u16 {
        self.node(node).port
    }

    /// Panics if the lab was started without Redis.
    pub fn redis_port(&self) -> u16 {
        self.redis().port
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.redis_port())
    }

    /// Connection URL for `node` (see [`url`]).
    pub fn url(&self, node: Node, user: &str, password: &str, db: &str) -> String {
        url(self.port(node), user, password, db)
    }

    /// `postgres://127.0.0.1:PORT` of `node`, without credentials: the form
    /// a sidecar config's `[upstream] primary` / `replicas` take.
    pub fn upstream_url(&self, node: Node) -> String {
        format!("postgres://127.0.0.1:{}", self.port(node))
    }

    /// The lab's directory (data dirs, logs, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    pub fn data_dir(&self, node: Node) -> PathBuf {
        self.node(node).data_dir.clone()
    }

    pub fn log_path(&self, node: Node) -> PathBuf {
        self.node(node).log_path.clone()
    }

    /// Last lines of the server log of `node`, for assertion messages.
    pub fn log_tail(&self, node: Node) -> String {
        self.node(node).log_tail()
    }

    // ---- SQL -------------------------------------------------------------

    /// [`super::psql`] against `node` as the superuser.
    pub fn psql(&self, node: Node, db: &str, sql: &str) -> Result<String, String> {
        self.node(node).psql(db, sql)
    }

    /// Creates a database named `<prefix>_<n>` owned by `app` on the
    /// primary and waits until every running, unpaused replica has it.
    pub fn fresh_db(&self, prefix: &str) -> String {
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(50)
            .collect();
        let name = format!("{clean}_{}", self.db_seq.fetch_add(1, Ordering::Relaxed));
        self.primary
            .psql(
                "postgres",
                &format!("CREATE DATABASE \"{name}\" OWNER {APP_USER}"),
            )
            .unwrap_or_else(|e| panic!("lab: fresh_db({prefix}): {e}"));
        self.wait_replicas_caught_up();
        name
    }

    /// Waits until every running, unpaused replica has replayed all WAL the
    /// primary has written so far (commits included: see below).
    pub fn wait_replicas_caught_up(&self) {
        // Under synchronous_commit = off recent commits may not be written
        // yet, and replicas receive only what the primary has flushed. A
        // commit that wrote WAL, under synchronous_commit = local, flushes
        // all WAL before it (waiting for no replica, which may be stopped;
        // a commit that only took an xid would be asynchronous whatever the
        // setting); the flush position then covers every commit so far.
        let target = self
            .primary
            .psql(
                "postgres",
                "SET synchronous_commit = local;\n\
                 SELECT pg_logical_emit_message(true, 'pgsidecar-lab', '');\n\
                 SELECT pg_current_wal_flush_lsn();",
            )
            .unwrap_or_else(|e| panic!("lab: reading the primary's WAL position: {e}"));
        let target = target.lines().last().unwrap_or_default().to_owned();
        for replica in &self.replicas {
            let state = replica.lock_state();
            if !state.running || state.replay_paused {
                continue;
            }
            let check = format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn");
            let caught_up = poll(CATCH_UP_TIMEOUT, Duration::from_millis(20), || {
                (replica.psql("postgres", &check).ok()? == "t").then_some(())
            });
            if caught_up.is_none() {
                let receiver = replica
                    .psql(
                        "postgres",
                        "SELECT status, latest_end_lsn FROM pg_stat_wal_receiver",
                    )
                    .unwrap_or_else(|e| e);
                panic!(
                    "lab: {} did not replay up to {target} within {CATCH_UP_TIMEOUT:?} \
                     (wal receiver: {receiver:?})\n{}\n{}",
                    replica.name,
                    replica.log_tail(),
                    self.primary.log_tail()
                );
            }
        }
    }

    // ---- failures --------------------------------------------------------

    /// Fast-stops replica `i` (its clients are disconnected).
    pub fn stop_replica(&self, i: usize) {
        self.replica(i).stop();
    }

    /// Starts replica `i` again (same port and data dir) and waits until it
    /// has caught up with the primary.
    pub fn start_replica(&self, i: usize) {
        self.replica(i).start();
        self.wait_replicas_caught_up();
    }

    /// Fast-stops the primary (replicas keep serving reads).
    pub fn stop_primary(&self) {
        self.primary.stop();
    }

    /// Starts the primary again and waits for the replicas to catch up.
    pub fn start_primary(&self) {
        self.primary.start();
        self.wait_replicas_caught_up();
    }

    /// Stop + start of the primary, same port; replicas reconnect.
    pub fn restart_primary(&self) {
        self.stop_primary();
        self.start_primary();
    }

    /// Stops WAL replay on replica `i`: it keeps serving reads of old data.
    pub fn pause_replay(&self, i: usize) {
        let replica = self.replica(i);
        let mut state = replica.lock_state();
        replica
            .psql("postgres", "SELECT pg_wal_replay_pause()")
            .unwrap_or_else(|e| panic!("lab: pausing replay on replica {i}: {e}"));
        // Replay never proceeds once a pause is requested; waiting for the
        // 'paused' state just makes that visible to the server too.
        let _ = poll(Duration::from_secs(5), Duration::from_millis(20), || {
            let s = replica
                .psql("postgres", "SELECT pg_get_wal_replay_pause_state()")
                .ok()?;
            (s == "paused").then_some(())
        });
        state.replay_paused = true;
    }

    /// Resumes WAL replay on replica `i` (it then catches up by itself).
    pub fn resume_replay(&self, i: usize) {
        let replica = self.replica(i);
        let mut state = replica.lock_state();
        replica
            .psql("postgres", "SELECT pg_wal_replay_resume()")
            .unwrap_or_else(|e| panic!("lab: resuming replay on replica {i}: {e}"));
        state.replay_paused = false;
    }

    /// Stops Redis (SIGTERM, waited for).
    pub fn stop_redis(&self) {
        self.redis().stop();
    }

    /// Starts Redis again on the same port (empty: no persistence).
    pub fn start_redis(&self) {
        self.redis().start();
    }

    /// Runs one Redis command through `redis-cli`; Ok(reply) or Err.
    pub fn redis_cmd(&self, args: &[&str]) -> Result<String, String> {
        self.redis().cmd(args)
    }

    // ---- internals -------------------------------------------------------

    fn node(&self, node: Node) -> &PgNode {
        match node {
            Node::Primary => &self.primary,
            Node::Replica(i) => self.replica(i),
        }
    }

    fn replica(&self, i: usize) -> &PgNode {
        self.replicas
            .get(i)
            .unwrap_or_else(|| panic!("lab: no replica {i} (lab has {})", self.replicas.len()))
    }

    fn redis(&self) -> &RedisServer {
        self.redis
            .as_ref()
            .expect("lab: this lab was started without Redis")
    }
}

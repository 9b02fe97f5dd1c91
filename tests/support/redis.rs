//! The lab's Redis: `redis-server` on a loopback port, no persistence,
//! spawned directly (no daemonizing) and recorded for the reaper.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::bins::bins;
use super::net::free_port;
use super::process::{poll, record_process, run, tail};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    /// Extra `redis-server` arguments (cluster mode).
    extra: Vec<String>,
    log_path: PathBuf,
    /// `*.proc` record for the reaper while the server runs.
    proc_file: PathBuf,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts Redis in `lab_dir/redis`; retries on another port if taken.
    pub fn create(lab_dir: &Path) -> RedisServer {
        Self::create_named(lab_dir, "redis", &[])
    }

    /// Starts Redis in `parent/name` with extra arguments; retries on another port if taken.
    pub fn create_named(parent: &Path, name: &str, extra: &[&str]) -> RedisServer {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).expect("lab: create redis dir");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log_path: parent.join(format!("{name}.log")),
            proc_file: parent.join(format!("{name}.proc")),
            child: Mutex::new(None),
        };
        for attempt in 1..=3 {
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) if attempt < 3 && tail(&server.log_path, 20).contains("already in use") => {
                    eprintln!("lab: redis port {} taken, retrying: {e}", server.port);
                    server.port = free_port();
                }
                Err(e) => panic!("lab: starting redis: {e}\n{}", server.log_tail()),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_and_wait(&self) -> Result<(), String> {
        let mut slot = self.lock_child();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("open {}: {e}", self.log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("dup log fd: {e}"))?;
        let mut child = Command::new(&bins().redis_server)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(&self.extra)
            .arg("--dir")
            .arg(&self.dir)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        record_process(&self.proc_file, child.id());
        let ready = poll(READY_TIMEOUT, Duration::from_millis(50), || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(format!("redis-server exited early with {status}")));
            }
            ping(self.port).then_some(Ok(()))
        });
        let outcome = ready.unwrap_or_else(|| Err(format!("no PONG after {READY_TIMEOUT:?}")));
        if outcome.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.proc_file);
        } else {
            *slot = Some(child);
        }
        outcome
    }

    /// Starts it again on the same port (after [`RedisServer::stop`]).
    pub fn start(&self) {
        if let Err(e) = self.spawn_and_wait() {
            panic!(
                "lab: restarting redis on port {}: {e}\n{}",
                self.port,
                self.log_tail()
            );
        }
    }

    /// SIGTERM and wait, so the port is free when this returns.
    pub fn stop(&self) {
        let mut slot = self.lock_child();
        if let Some(mut child) = slot.take() {
            // SAFETY: plain kill(2) on our own child, which we have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            child.wait().expect("lab: waiting for redis-server to exit");
            let _ = std::fs::remove_file(&self.proc_file);
        }
    }

    /// `redis-cli -p PORT ARGS...`; Ok(stdout trimmed), Err on a failed
    /// exit status or an error reply (`ERR ...`, `WRONGTYPE ...`).
    pub fn cmd(&self, args: &[&str]) -> Result<String, String> {
        let out = run(
            Command::new(&bins().redis_cli)
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args),
            &format!("redis-cli {}", args.join(" ")),
        )?;
        let out = out.trim().to_owned();
        // redis-cli exits 0 on error replies; it prints them raw.
        if is_error_prefix(out.split_whitespace().next().unwrap_or("")) {
            return Err(out);
        }
        Ok(out)
    }

    pub fn log_tail(&self) -> String {
        format!(
            "--- last lines of {} ---\n{}",
            self.log_path.display(),
            tail(&self.log_path, 40)
        )
    }
}

fn is_error_prefix(word: &str) -> bool {
    matches!(
        word,
        "ERR"
            | "WRONGTYPE"
            | "NOSCRIPT"
            | "BUSY"
            | "NOAUTH"
            | "LOADING"
            | "READONLY"
            | "EXECABORT"
            | "NOPERM"
    )
}

/// One inline PING over raw TCP: true on `+PONG`.
pub fn ping(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let addr = ("127.0.0.1", port);
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"PING\r\n")?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].starts_with(b"+PONG"))
    };
    attempt().unwrap_or(false)
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports, in its own directory,
/// stopped and removed when dropped (and reaped with the test process in any case).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = super::reaper::new_subdir("redis-cluster");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                RedisServer::create_named(
                    &dir,
                    &format!("node-{i}"),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let cluster = RedisCluster { nodes, dir };
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new(&bins().redis_cli);
        create.arg("--cluster").arg("create").args(&addrs).args([
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]);
        if let Err(e) = run(&mut create, "redis-cli --cluster create") {
            panic!(
                "lab: creating the Redis cluster: {e}\n{}",
                cluster.log_tails()
            );
        }
        let ok = poll(READY_TIMEOUT, Duration::from_millis(100), || {
            cluster
                .nodes
                .iter()
                .all(|n| {
                    n.cmd(&["CLUSTER", "INFO"])
                        .is_ok_and(|i| i.contains("cluster_state:ok"))
                })
                .then_some(())
        });
        if ok.is_none() {
            panic!(
                "lab: the Redis cluster never became ok\n{}",
                cluster.log_tails()
            );
        }
        cluster
    }

    /// The seed URLs, comma-separated, as `[cache] redis` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `redis-cli -c` (follows redirections) against the first node.
    pub fn cmd(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        self.nodes[0].cmd(&all)
    }

    fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.log_tail())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis of its own, for a test that flushes, pauses, stops or restarts it (doing that to the
/// shared lab's Redis would disturb every test running meanwhile). Stopped and removed when
/// dropped (and reaped with the test process in any case).
pub struct Redis {
    server: RedisServer,
    dir: PathBuf,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = super::reaper::new_subdir("redis");
        Redis {
            server: RedisServer::create(&dir),
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.server.port)
    }

    /// Runs one command through `redis-cli`; Ok(reply) or Err.
    pub fn cmd(&self, args: &[&str]) -> Result<String, String> {
        self.server.cmd(args)
    }

    /// SIGTERM, waited for: the port is free when this returns.
    pub fn stop(&self) {
        self.server.stop();
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn start_again(&self) {
        self.server.start();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.server.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

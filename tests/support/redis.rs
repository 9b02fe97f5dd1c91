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
    log_path: PathBuf,
    /// `*.proc` record for the reaper while the server runs.
    proc_file: PathBuf,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts Redis in `lab_dir/redis`; retries on another port if taken.
    pub fn create(lab_dir: &Path) -> RedisServer {
        let dir = lab_dir.join("redis");
        std::fs::create_dir_all(&dir).expect("lab: create redis dir");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            log_path: lab_dir.join("redis.log"),
            proc_file: lab_dir.join("redis.proc"),
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

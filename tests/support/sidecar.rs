//! Runs the `pgsidecar` binary under test as a child process.
//!
//! Each sidecar gets a dir under the per-process lab root holding its
//! config, its log (stdout+stderr) and a `*.proc` record, so the reaper
//! kills it even if the test binary dies without running Drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::net::wait_tcp;
use super::process::{poll, record_process, tail};
use super::reaper::new_subdir;
use super::url;

/// How long a sidecar may take to accept TCP on its listen address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Sidecar {
    child: Mutex<Child>,
    pid: u32,
    addr: SocketAddr,
    /// The HTTP endpoint's port, when the config sets `[admin] http_addr`.
    http: Option<u16>,
    dir: PathBuf,
    log_path: PathBuf,
}

impl Sidecar {
    /// `pgsidecar run --config FILE` with `config_toml` written to FILE.
    /// The TOML must say where it listens, as `[listen] addr = "127.0.0.1:PORT"`
    /// (or a `listen = "..."` string, at any depth); take the port from
    /// [`super::free_port`]. Returns once that address accepts TCP, and the HTTP endpoint
    /// (`[admin] http_addr`, if set) too. [`super::SidecarConfig`] writes such TOML.
    pub fn start(config_toml: &str) -> Sidecar {
        let addr = listen_in_toml(config_toml);
        let dir = new_subdir("sidecar");
        let config = dir.join("pgsidecar.toml");
        std::fs::write(&config, config_toml).expect("sidecar: write config file");
        let args = vec![
            "run".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        let mut sidecar = Sidecar::spawn_in(dir, &args, addr, &[]);
        if let Some(http) = http_in_toml(config_toml) {
            sidecar.wait_http(http);
            sidecar.http = Some(http);
        }
        sidecar
    }

    /// `pgsidecar run FLAGS...` (flags only, e.g. `--listen`, `--primary`);
    /// the flags must include `--listen ADDR`.
    pub fn start_args<S: AsRef<str>>(flags: &[S]) -> Sidecar {
        let flags: Vec<String> = flags.iter().map(|f| f.as_ref().to_owned()).collect();
        let addr = listen_in_flags(&flags);
        let mut args = vec!["run".to_owned()];
        args.extend(flags);
        Sidecar::spawn_in(new_subdir("sidecar"), &args, addr, &[])
    }

    /// Most general form: `pgsidecar ARGS...` verbatim with extra env vars
    /// (e.g. `RUST_LOG`), waiting for `listen` to accept TCP.
    pub fn spawn<S: AsRef<str>>(args: &[S], listen: SocketAddr, env: &[(&str, &str)]) -> Sidecar {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_owned()).collect();
        Sidecar::spawn_in(new_subdir("sidecar"), &args, listen, env)
    }

    fn spawn_in(dir: PathBuf, args: &[String], addr: SocketAddr, env: &[(&str, &str)]) -> Sidecar {
        let log_path = dir.join("sidecar.log");
        let log = std::fs::File::create(&log_path).expect("sidecar: create log file");
        let log_err = log.try_clone().expect("sidecar: dup log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
        // Hermetic: settings come from the test, not the developer's shell.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PGSIDECAR_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .args(args)
            // Plain log text, so tests can search it.
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("sidecar: spawn the pgsidecar binary");
        let pid = child.id();
        record_process(&dir.join("sidecar.proc"), pid);
        let sidecar = Sidecar {
            child: Mutex::new(child),
            pid,
            addr,
            http: None,
            dir,
            log_path,
        };
        sidecar.wait_listening(args);
        sidecar
    }

    fn wait_listening(&self, args: &[String]) {
        let up = poll(START_TIMEOUT, Duration::from_millis(50), || {
            if let Some(status) = self.try_status() {
                return Some(Err(format!("exited early with {status}")));
            }
            wait_tcp(self.addr, Duration::ZERO).then_some(Ok(()))
        });
        let outcome = up.unwrap_or_else(|| {
            Err(format!(
                "not listening on {} after {START_TIMEOUT:?}",
                self.addr
            ))
        });
        if let Err(why) = outcome {
            self.kill();
            panic!(
                "sidecar `pgsidecar {}` {why}\n--- sidecar log ---\n{}",
                args.join(" "),
                self.log()
            );
        }
    }

    fn lock_child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_status(&self) -> Option<ExitStatus> {
        self.lock_child().try_wait().ok().flatten()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `postgres://` URL pointing at the sidecar.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        url(self.port(), user, password, db)
    }

    /// Everything the sidecar printed so far (stdout + stderr).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Waits until the sidecar's HTTP endpoint (`admin.http_addr` on loopback `port`) accepts
    /// connections; its address.
    pub fn wait_http(&self, port: u16) -> SocketAddr {
        let http: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(
            wait_tcp(http, Duration::from_secs(10)),
            "HTTP endpoint not listening\n{}",
            self.log()
        );
        http
    }

    /// The HTTP endpoint's port; panics unless the config set `[admin] http_addr`.
    pub fn http_port(&self) -> u16 {
        self.http
            .expect("this sidecar has no HTTP endpoint (SidecarConfig::http)")
    }

    /// [`super::metric`] of this sidecar's `/metrics`.
    pub fn metric(&self, series: &str) -> f64 {
        super::metric(self.http_port(), series)
    }

    /// [`super::counter`] of this sidecar's `/metrics` (0 while not exported).
    pub fn counter(&self, series: &str) -> f64 {
        super::counter(self.http_port(), series)
    }

    /// A superuser session of this sidecar's admin console.
    pub async fn console(&self) -> super::Console {
        super::Console::connect(self).await
    }

    /// Waits (up to 10 s) until the result cache's invalidation listener has started: it
    /// starts by invalidating everything (it cannot know what it missed), so fills that race
    /// its start are rightly rejected, and tests that count on a hit wait for it.
    pub fn wait_for_invalidation_listener(&self) {
        let listening = poll(Duration::from_secs(10), Duration::from_millis(20), || {
            self.log()
                .contains("listening for invalidations")
                .then_some(())
        });
        assert!(
            listening.is_some(),
            "invalidation listener never started\n{}",
            self.log()
        );
    }

    /// Holds the config file (`pgsidecar.toml`) and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// SIGKILL and reap. No-op if it already exited.
    pub fn kill(&self) {
        let mut child = self.lock_child();
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("sidecar.proc"));
    }

    /// Sends SIGTERM (graceful shutdown) without waiting; see [`Self::wait_exit`].
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends any signal (e.g. SIGHUP for a config reload). No-op if it
    /// already exited.
    pub fn signal(&self, signal: libc::c_int) {
        let mut child = self.lock_child();
        // Unreaped and locked: the pid cannot have been reused.
        if child.try_wait().ok().flatten().is_none() {
            // SAFETY: plain kill(2) on our own unreaped child.
            unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        }
    }

    /// Waits up to `timeout` for the process to exit; None if still running.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, Duration::from_millis(20), || self.try_status())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- sidecar on {} (pid {}) log tail ---\n{}",
                self.addr,
                self.pid,
                tail(&self.log_path, 60)
            );
        }
        self.kill();
    }
}

fn parse_addr(s: &str, from: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("sidecar: {from} `{s}` is not an IP:PORT socket address: {e}"))
}

/// The listen address in a config: `[listen] addr = "..."` or a string
/// under a key named `listen`, searched breadth-first (top level first).
fn listen_in_toml(config: &str) -> SocketAddr {
    let value: toml::Value = config
        .parse()
        .unwrap_or_else(|e| panic!("sidecar: config is not valid TOML: {e}\n{config}"));
    let mut queue = vec![&value];
    while !queue.is_empty() {
        let mut next = Vec::new();
        for v in queue {
            if let toml::Value::Table(table) = v {
                match table.get("listen") {
                    Some(toml::Value::String(addr)) => return parse_addr(addr, "config `listen`"),
                    Some(toml::Value::Table(listen)) => {
                        if let Some(toml::Value::String(addr)) = listen.get("addr") {
                            return parse_addr(addr, "config `[listen] addr`");
                        }
                    }
                    _ => {}
                }
                next.extend(table.values());
            }
        }
        queue = next;
    }
    panic!(
        "sidecar: config has no `[listen] addr = \"127.0.0.1:PORT\"` (use support::free_port())\n{config}"
    )
}

/// The port of `[admin] http_addr`, if the config sets it.
fn http_in_toml(config: &str) -> Option<u16> {
    let value: toml::Value = config.parse().ok()?;
    let addr = value.get("admin")?.get("http_addr")?.as_str()?;
    Some(parse_addr(addr, "config `[admin] http_addr`").port())
}

fn listen_in_flags(flags: &[String]) -> SocketAddr {
    let value = flags.iter().enumerate().find_map(|(i, f)| {
        f.strip_prefix("--listen=").map(str::to_owned).or_else(|| {
            (f == "--listen")
                .then(|| flags.get(i + 1).cloned())
                .flatten()
        })
    });
    match value {
        Some(addr) => parse_addr(&addr, "--listen"),
        None => {
            panic!("sidecar: start_args needs `--listen 127.0.0.1:PORT` (use support::free_port())")
        }
    }
}

//! Small process helpers: privilege drop for Postgres, command running with
//! useful errors, log tails, and polling with a deadline.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid/gid of the `postgres` account, looked up once (Postgres refuses to
/// run as root, so as root we run every Postgres tool as that user).
fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let name = CString::new("postgres").expect("static name has no NUL");
        // SAFETY: called once under OnceLock; the returned record is copied
        // out before any other getpw* call can overwrite it.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            panic!(
                "lab: running as root but there is no `postgres` user to run Postgres as; \
                 run scripts/install-deps.sh (the postgresql package creates it)"
            );
        }
        // SAFETY: pw is non-null and points to a valid passwd record.
        unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
    })
}

/// Makes `cmd` run as the `postgres` user when we are root (no-op
/// otherwise), with HOME and cwd set to `home` so tools never touch the
/// invoking user's files.
pub fn as_postgres<'a>(cmd: &'a mut Command, home: &Path) -> &'a mut Command {
    if is_root() {
        let (uid, gid) = postgres_ids();
        cmd.uid(uid).gid(gid);
    }
    cmd.env("HOME", home).current_dir(home)
}

/// Gives `path` to the `postgres` user when we are root.
pub fn chown_to_postgres(path: &Path) {
    if is_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("lab: chown {} to postgres: {e}", path.display()));
    }
}

/// Runs `cmd` to completion. Ok(stdout) on success; Err with the exit
/// status, stderr and stdout otherwise. `what` names it in errors.
pub fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: could not start {:?}: {e}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        ))
    }
}

/// Last `lines` lines of a (log) file, or a note that it is unreadable.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Start time of `pid` in clock ticks since boot (field 22 of
/// /proc/PID/stat); with the pid it identifies a process uniquely, so the
/// reaper never kills a stranger that reused a pid.
pub fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may contain spaces: count fields after its ')'.
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(19).map(str::to_owned)
}

/// Records a process we spawned in `file` ("PID STARTTIME") for the reaper.
pub fn record_process(file: &Path, pid: u32) {
    let start = start_time(pid).unwrap_or_default();
    std::fs::write(file, format!("{pid} {start}\n"))
        .unwrap_or_else(|e| panic!("lab: write {}: {e}", file.display()));
}

/// Calls `check` every `every` until it returns Some or `timeout` passes.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Makes this process the reaper of its orphaned descendants. Postgres
/// daemonizes (pg_ctl exits, the postmaster is orphaned); without this it
/// would be reparented to PID 1, which in some containers never reaps, so
/// stopped postmasters would linger as zombies.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Reaps `pid` once it exits, waiting up to `timeout`. Only specific pids,
/// never -1: a wildcard wait could steal the exit status that a test is
/// waiting for. Returns immediately if `pid` is not our child.
pub fn reap_child(pid: u32, timeout: Duration) {
    let _ = poll(timeout, Duration::from_millis(10), || {
        let mut status = 0;
        // SAFETY: waitpid on a specific pid with a valid status pointer.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        (r != 0).then_some(())
    });
}

/// Pid of the postmaster running in `data_dir`, if any.
pub fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Runs `cmd` (stdin closed), streaming its stdout line by line to ours as it comes (visible
/// with `--nocapture`, so a long third-party suite shows progress) and keeping it; stderr is
/// read aside so a full pipe cannot stall the child. Returns the exit status, stdout, stderr.
pub fn run_streaming(cmd: &mut Command, what: &str) -> (std::process::ExitStatus, String, String) {
    use std::io::{BufRead, BufReader, Read};
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let mut stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut output = String::new();
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.unwrap_or_else(|e| format!("<unreadable output: {e}>"));
        println!("{line}");
        output.push_str(&line);
        output.push('\n');
    }
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("wait for {what}: {e}"));
    let errors = err_reader.join().unwrap_or_default();
    if !errors.trim().is_empty() {
        println!("--- {what} stderr ---\n{errors}");
    }
    (status, output, errors)
}

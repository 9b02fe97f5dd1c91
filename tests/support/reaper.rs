//! Guarantees that no lab process outlives the test binary.
//!
//! Everything the lab starts lives under one root per test process,
//! `$PGSIDECAR_LAB_TMP` (default `/tmp`) `/pgsidecar-lab-<pid>-<random>/`:
//! Postgres data dirs (found through their `postmaster.pid`) and `*.proc`
//! files ("PID STARTTIME") for processes we spawn ourselves (Redis,
//! sidecars). [`REAP_SH`] stops all of them and deletes the root. It runs:
//! 1. from `libc::atexit`, so a normal exit (also after failed tests) is
//!    clean before `cargo test` moves on;
//! 2. from a watchdog `sh` in its own process group that polls our pid and
//!    reaps once we are gone: covers SIGKILL, abort, Ctrl-C. (Not
//!    PR_SET_PDEATHSIG: it fires when the spawning *thread* exits.)
//! 3. from `LabDir`'s Drop, for one private lab's subdirectory.
//!
//! The test process is also made a child subreaper, so stopped postmasters
//! are reaped by us instead of lingering as zombies under a PID 1 that does
//! not reap (as in some containers). The `scripts/test.sh` end-of-run sweep
//! is a last line of defence.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::process::{become_subreaper, postmaster_pid, reap_child};

/// Name prefix of every lab temp root; `scripts/test.sh` sweeps it.
pub const ROOT_PREFIX: &str = "pgsidecar-lab-";

/// `reap DIR`: immediate-shutdown every live postmaster whose data dir is
/// under DIR (verified through /proc/PID/cwd), SIGKILL every recorded
/// `*.proc` process still matching its start time, wait until they are all
/// gone (zombies count as gone), then delete DIR. Idempotent; a missing DIR
/// is a no-op.
const REAP_SH: &str = r#"
alive() { s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1); [ -n "$s" ] && [ "$s" != Z ]; }
started() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
reap() {
  dir=$1
  [ -d "$dir" ] || return 0
  pms=""
  for f in $(find "$dir" -maxdepth 3 -name postmaster.pid 2>/dev/null); do
    pid=$(head -n 1 "$f" 2>/dev/null)
    case "$pid" in ''|*[!0-9]*) continue ;; esac
    data=$(cd "$(dirname "$f")" 2>/dev/null && pwd -P)
    if alive "$pid" && [ "$(readlink "/proc/$pid/cwd")" = "$data" ]; then
      kill -QUIT "$pid" 2>/dev/null && pms="$pms $pid"
    fi
  done
  for f in $(find "$dir" -maxdepth 2 -name '*.proc' 2>/dev/null); do
    read -r pid start < "$f" || continue
    if [ -n "$pid" ] && alive "$pid" && [ "$(started "$pid")" = "$start" ]; then
      kill -KILL "$pid" 2>/dev/null && pms="$pms $pid"
    fi
  done
  left=$pms
  i=0
  while [ -n "$left" ] && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
    still=""
    for p in $left; do alive "$p" && still="$still $p"; done
    left=$still
  done
  for p in $left; do
    pkill -KILL -P "$p" 2>/dev/null
    kill -KILL "$p" 2>/dev/null
  done
  rm -rf "$dir"
}
"#;

/// Watchdog: `sh -c WATCHDOG sh TEST_PID ROOT`.
const WATCHDOG_SH: &str = r#"
trap '' HUP INT PIPE
while alive "$1"; do sleep 0.2; done
reap "$2"
"#;

/// The per-process temp root; the first call creates it and arms the
/// atexit hook and the watchdog.
pub fn proc_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::var_os("PGSIDECAR_LAB_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let root = base.join(format!("{ROOT_PREFIX}{pid}-{nanos:08x}"));
        std::fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("lab: create temp root {}: {e}", root.display()));
        // Postgres runs as another user and must traverse into its dirs.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("lab: chmod {}: {e}", root.display()));
        spawn_watchdog(pid, &root);
        become_subreaper();
        // SAFETY: registering a plain extern "C" fn with no captured state.
        if unsafe { libc::atexit(reap_at_exit) } != 0 {
            eprintln!("lab: atexit registration failed; relying on the watchdog");
        }
        root
    })
}

/// A fresh, uniquely named subdirectory of the per-process root.
pub fn new_subdir(kind: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = proc_root().join(format!("{kind}-{n}"));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("lab: create {}: {e}", dir.display()));
    dir
}

/// Stops everything recorded under `dir`, deletes it (synchronously) and
/// reaps the postmasters that were orphaned to us (see `become_subreaper`).
pub fn reap(dir: &Path) {
    let postmasters: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| postmaster_pid(&e.ok()?.path()))
        .collect();
    run_reap_script(dir);
    for pid in postmasters {
        reap_child(pid, Duration::from_secs(2));
    }
}

fn run_reap_script(dir: &Path) {
    let script = format!("{REAP_SH}\nreap \"$1\"\n");
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    if let Err(e) = status {
        eprintln!("lab: reaping {} failed: {e}", dir.display());
    }
}

extern "C" fn reap_at_exit() {
    // No panics may cross this FFI boundary.
    let _ = std::panic::catch_unwind(|| {
        run_reap_script(proc_root());
        // Everything is stopped; collect every zombie child (postmasters
        // orphaned to us, Redis, sidecars). The watchdog is still running,
        // so WNOHANG stops the loop once only it is left.
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid status pointer.
            if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
                break;
            }
        }
    });
}

fn spawn_watchdog(pid: u32, root: &Path) {
    let script = format!("{REAP_SH}\n{WATCHDOG_SH}");
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(pid.to_string())
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        // Own process group: a Ctrl-C aimed at the test must not kill it.
        .process_group(0)
        .spawn();
    match spawned {
        // Never waited for: it must outlive us. It is reparented on exit.
        Ok(child) => std::mem::forget(child),
        Err(e) => panic!("lab: could not spawn the teardown watchdog: {e}"),
    }
}

//! Finds the server binaries the lab runs.
//!
//! Debian keeps Postgres server tools in `/usr/lib/postgresql/<ver>/bin`,
//! which is not on PATH, and `/usr/bin/pg_config` may belong to libpq-dev
//! (whose bindir lacks `initdb`). So we look in that order: `$PG_BINDIR`,
//! the newest `/usr/lib/postgresql/*/bin`, `pg_config --bindir`, PATH.
//! When something is missing and we are root, `scripts/install-deps.sh
//! --minimal` is run once, so a bare `cargo test` works on a fresh machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::process::is_root;

pub struct Bins {
    pub pg_bindir: PathBuf,
    pub redis_server: PathBuf,
    pub redis_cli: PathBuf,
}

impl Bins {
    /// Path of a Postgres tool (`initdb`, `pg_ctl`, `psql`, ...).
    pub fn pg(&self, tool: &str) -> PathBuf {
        self.pg_bindir.join(tool)
    }
}

/// The located binaries; installs missing packages first when root.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        if let Some(found) = locate() {
            return found;
        }
        install_deps();
        locate().unwrap_or_else(|| {
            panic!(
                "lab: Postgres server binaries (initdb) or redis-server/redis-cli not found; \
                 run scripts/install-deps.sh as root, or set PG_BINDIR"
            )
        })
    })
}

fn locate() -> Option<Bins> {
    Some(Bins {
        pg_bindir: pg_bindir()?,
        redis_server: on_path("redis-server")?,
        redis_cli: on_path("redis-cli")?,
    })
}

fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

fn pg_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        if has_initdb(&dir) {
            return Some(dir);
        }
    }
    if let Some(dir) = newest_debian_bindir() {
        return Some(dir);
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| has_initdb(d)) {
        return Some(dir);
    }
    on_path("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
}

/// `/usr/lib/postgresql/<version>/bin`, highest version first.
fn newest_debian_bindir() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            Some((key?, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_initdb(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn install_deps() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps.sh");
    if !is_root() || !script.is_file() {
        return;
    }
    eprintln!(
        "lab: server binaries missing, running {} --minimal",
        script.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .arg("--minimal")
        .status()
        .expect("lab: could not run scripts/install-deps.sh");
    if !status.success() {
        panic!("lab: scripts/install-deps.sh --minimal failed with {status}");
    }
}

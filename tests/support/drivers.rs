//! The driver venv (`tests/drivers/.venv`: psycopg 3, asyncpg), shared by the driver matrix
//! (`tests/drivers.rs`, through `tests/drivers/run.sh`) and the driver regression cases
//! (`tests/it/nohang.rs`).

use std::process::Command;
use std::sync::OnceLock;

/// The venv's python, made (or found up to date) once per test process by
/// `tests/drivers/run.sh --setup-python`, before any test runs a driver in it: a venv rebuilt
/// while another test ran in it fails that test (`ModuleNotFoundError`).
pub fn driver_python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let root = env!("CARGO_MANIFEST_DIR");
        super::process::run(
            Command::new("bash")
                .arg(format!("{root}/tests/drivers/run.sh"))
                .arg("--setup-python"),
            "tests/drivers/run.sh --setup-python",
        )
        .unwrap_or_else(|e| panic!("could not make tests/drivers/.venv: {e}"));
        format!("{root}/tests/drivers/.venv/bin/python")
    })
}

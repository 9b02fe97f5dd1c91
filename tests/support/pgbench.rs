//! pgbench: which binary, and what its report says.

use std::path::PathBuf;

/// pgbench of the newest Debian server bindir (as the lab's servers), else PATH.
pub fn pgbench() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        if dir.join("pgbench").is_file() {
            return dir.join("pgbench");
        }
    }
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: Option<Vec<u32>> = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .map(|p| p.parse().ok())
                .collect();
            Some((version?, e.path().join("bin/pgbench")))
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .unwrap_or_else(|| PathBuf::from("pgbench"))
}

/// Checks that a finished pgbench run exited 0, failed no transaction and completed at least
/// one; returns its report (stdout and stderr) and the transactions it processed.
pub fn completed(out: &std::process::Output, what: &str) -> (String, u64) {
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "pgbench {what} failed ({}):\n{report}",
        out.status
    );
    assert!(
        report.contains("number of failed transactions: 0"),
        "pgbench {what}:\n{report}"
    );
    let processed = processed(&report).unwrap_or(0);
    assert!(
        processed > 0,
        "pgbench {what}: no transaction completed:\n{report}"
    );
    (report, processed)
}

/// "number of transactions actually processed: N" of a pgbench report.
pub fn processed(report: &str) -> Option<u64> {
    report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
}

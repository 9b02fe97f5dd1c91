//! `[[locks]]`: which tables take advisory locks, by which key columns (how: `locks/`).
//! Beside the rest of the configuration, so that `config` imports nothing above it.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Undeterminable {
    /// Take one table-wide advisory key.
    #[default]
    Table,
    /// Take no lock (logged and counted).
    Pass,
    /// Refuse the statement with a clear error.
    Reject,
}

/// One `[[locks]]` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRule {
    pub table: String,
    pub key: Vec<String>,
    #[serde(default)]
    pub undeterminable: Undeterminable,
    /// How long a statement waits for its locks before SQLSTATE 55P03 (its transaction aborts).
    #[serde(default = "default_timeout", with = "crate::config::duration")]
    pub lock_timeout: Duration,
    /// Inside explicit transactions, SELECTs on the table by key take the lock too, so a
    /// read-check-write sequence is serialized per item.
    #[serde(default = "yes")]
    pub lock_reads_in_transactions: bool,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn yes() -> bool {
    true
}

impl LockRule {
    pub fn problems(&self, i: usize) -> Vec<String> {
        let mut p = Vec::new();
        if self.table.trim().is_empty() {
            p.push(format!("locks[{i}]: table is empty"));
        }
        if self.key.is_empty() {
            p.push(format!("locks[{i}]: key must name at least one column"));
        }
        p
    }
}

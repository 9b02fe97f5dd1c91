//! Inventory advisory locks: writes (and, inside explicit transactions, reads by key) on
//! configured tables take `pg_advisory_xact_lock` on the primary, on the statement's own
//! backend and transaction, just before it runs, keys de-duplicated and in ascending order, so
//! concurrent read-check-write checkouts of one item are serialized and cannot oversell.
//!
//! The advisory key of a row is, in SQL a DBA can run by hand:
//!
//! ```sql
//! SELECT pg_advisory_xact_lock(hashtextextended('inventory|' || sku_id || '|' || warehouse_id, 0));
//! ```
//!
//! i.e. `hashtextextended(table || '|' || v1 || '|' || v2 …, 0)` over the key columns in the
//! configured order, each value in its canonical text form (`42`, `W1`). A table-wide key (for
//! statements whose keys cannot be determined) is `hashtextextended(table, 0)`. The hash is
//! computed by Postgres itself, so the formula cannot drift from what the proxy does.

mod registry;

use std::time::Duration;

use crate::analyze::{Analysis, KeyExtraction, StatementKind, TableRef};
use crate::wire::msg::BindParams;

pub use crate::config::{LockRule, Undeterminable};
pub use registry::{LockEntry, LockGuard, LockRegistry, LockState};

/// What a request must lock, or why it may not run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Key texts (`inventory|1|2`), sorted and de-duplicated.
    pub keys: Vec<String>,
    pub timeout: Option<Duration>,
    /// Statements that touched a lock table without determinable keys under `pass`.
    pub passed: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("pgsidecar: statement on lock table \"{table}\" has no determinable key ({reason}); this table's lock rule rejects such statements")]
pub struct Rejected {
    pub table: String,
    pub reason: String,
}

/// Text value of a bound parameter: text format as sent; binary integers decoded.
fn param_text(p: &BindParams<'_>, n: usize) -> Option<String> {
    let i = n.checked_sub(1)?;
    let v = (*p.values.get(i)?)?;
    if p.format_of(i) == 0 {
        return std::str::from_utf8(v).ok().map(str::to_string);
    }
    match v.len() {
        2 => Some(i16::from_be_bytes(v.try_into().ok()?).to_string()),
        4 => Some(i32::from_be_bytes(v.try_into().ok()?).to_string()),
        8 => Some(i64::from_be_bytes(v.try_into().ok()?).to_string()),
        _ => None,
    }
}

/// Elements of a text-format array parameter (`{1,2,3}`), for `col = ANY($n)`.
fn param_array(p: &BindParams<'_>, n: usize) -> Option<Vec<String>> {
    let text = param_text(p, n)?;
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    if inner.contains(['"', '{']) {
        return None; // quoted or nested elements: not worth guessing
    }
    Some(
        inner
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// For a statement no lock can be placed around (its keys are known, but it shares a simple
/// query string with BEGIN/COMMIT): an error when a rule it touches rejects what it cannot lock.
pub fn refuse_unlockable(rules: &[LockRule], a: &Analysis, why: &str) -> Result<(), Rejected> {
    for rule in rules
        .iter()
        .filter(|r| r.undeterminable == Undeterminable::Reject)
    {
        let table = TableRef::parse(&rule.table);
        if a.writes(&table) || (rule.lock_reads_in_transactions && a.reads(&table)) {
            return Err(Rejected {
                table: table.name.clone(),
                reason: why.to_string(),
            });
        }
    }
    Ok(())
}

/// The locks one statement needs.
pub fn plan(
    rules: &[LockRule],
    a: &Analysis,
    params: Option<&BindParams<'_>>,
    in_txn: bool,
    plan: &mut Plan,
) -> Result<(), Rejected> {
    if a.hints.lock == Some(false) {
        return Ok(());
    }
    for rule in rules {
        let table = TableRef::parse(&rule.table);
        // A statement the analyser could not read (unparseable, ambiguous under the session's
        // lexing settings, too long to analyse) that may name the lock table may write it: its
        // keys cannot be known, so the rule's undeterminable path applies (by default the table
        // lock), never "no lock".
        let opaque = a.kind == StatementKind::Unknown && may_name(a.sql(), &table.name);
        let writes = a.writes(&table) || opaque;
        let reads = in_txn
            && rule.lock_reads_in_transactions
            && a.kind == StatementKind::Read
            && a.reads(&table);
        if !writes && !reads {
            continue;
        }
        let cols: Vec<&str> = rule.key.iter().map(String::as_str).collect();
        let bound = if opaque {
            Err(crate::analyze::KeyError::Unanalysed)
        } else {
            let extraction = a.lock_keys(&table, &cols);
            match &extraction {
                KeyExtraction::NotTouched => continue,
                _ => extraction.bind(
                    |n| params.and_then(|p| param_text(p, n)),
                    |n| params.and_then(|p| param_array(p, n)),
                ),
            }
        };
        match bound {
            Ok(rows) => {
                for row in rows {
                    let mut k = table.name.clone();
                    for v in row {
                        k.push('|');
                        k.push_str(&v);
                    }
                    plan.keys.push(k);
                }
            }
            Err(reason) => match rule.undeterminable {
                Undeterminable::Table => plan.keys.push(table.name.clone()),
                Undeterminable::Pass => {
                    tracing::info!(table = %table.name, %reason, "lock table written without determinable keys; no lock taken");
                    plan.passed += 1;
                }
                Undeterminable::Reject => {
                    return Err(Rejected {
                        table: table.name.clone(),
                        reason: reason.to_string(),
                    })
                }
            },
        }
        plan.timeout = Some(
            plan.timeout
                .map_or(rule.lock_timeout, |t| t.min(rule.lock_timeout)),
        );
    }
    Ok(())
}

/// Whether `sql` may name the table `name`: its name appears in the text in any letter case,
/// or the text has a Unicode-escaped identifier (`U&"…"`), which can spell any name. Cheap
/// and conservative, for statements the analyser could not read.
fn may_name(sql: &str, name: &str) -> bool {
    let (text, name) = (sql.as_bytes(), name.as_bytes());
    let contains = |needle: &[u8]| {
        !needle.is_empty()
            && text
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
    };
    contains(name) || contains(b"u&\"")
}

impl Plan {
    pub fn finish(&mut self, held: &std::collections::HashSet<String>) {
        self.keys.sort();
        self.keys.dedup();
        self.keys.retain(|k| !held.contains(k));
    }

    /// One statement taking every lock in order, under the rule's lock_timeout, restoring the
    /// transaction's own lock_timeout afterwards.
    pub fn sql(&self) -> String {
        let timeout = self.timeout.unwrap_or(Duration::from_secs(5)).as_millis();
        let mut sql = String::from(
            "SELECT pg_catalog.set_config('lock_timeout', s.prev, true) FROM (SELECT pg_catalog.current_setting('lock_timeout') AS prev, ",
        );
        sql.push_str(&format!(
            "pg_catalog.set_config('lock_timeout', '{timeout}ms', true) AS t"
        ));
        for (i, k) in self.keys.iter().enumerate() {
            sql.push_str(&format!(
                ", pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended({}, 0)) AS l{i}",
                crate::settings::quote_literal(k)
            ));
        }
        sql.push_str(" OFFSET 0) s");
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::{analyze, FunctionCatalog};

    fn rule() -> LockRule {
        toml::from_str("table = \"inventory\"\nkey = [\"sku_id\", \"warehouse_id\"]").unwrap()
    }

    fn keys(sql: &str, in_txn: bool) -> Result<Vec<String>, Rejected> {
        let a = analyze(sql, &FunctionCatalog::builtin());
        let mut p = Plan::default();
        plan(&[rule()], &a, None, in_txn, &mut p)?;
        p.finish(&Default::default());
        Ok(p.keys)
    }

    #[test]
    fn multi_row_update_keys_are_sorted_and_deduplicated() {
        let k = keys("UPDATE inventory SET on_hand = on_hand - 1 WHERE (sku_id, warehouse_id) IN ((5, 1), (2, 1), (5, 1))", false).unwrap();
        assert_eq!(k, vec!["inventory|2|1", "inventory|5|1"]);
    }

    #[test]
    fn undeterminable_keys_take_the_table_lock_by_default() {
        assert_eq!(
            keys("UPDATE inventory SET on_hand = 0 WHERE on_hand < 5", false).unwrap(),
            vec!["inventory"]
        );
    }

    #[test]
    fn a_statement_too_long_to_analyse_that_names_a_lock_table_takes_the_table_lock() {
        let analyzer = crate::analyze::Analyzer::new(FunctionCatalog::builtin());
        analyzer.set_max_analyzed(64);
        let sql = format!(
            "UPDATE Inventory SET on_hand = on_hand - 1 WHERE sku_id = 1 AND warehouse_id = 1 /* {} */",
            "x".repeat(100)
        );
        let a = analyzer.analyze(&sql);
        assert_eq!(a.kind, StatementKind::Unknown, "not analysed");
        let mut p = Plan::default();
        plan(&[rule()], &a, None, false, &mut p).unwrap();
        p.finish(&Default::default());
        assert_eq!(p.keys, vec!["inventory"]);
        // One that cannot name it takes none; a Unicode-escaped identifier might.
        for (sql, locked) in [
            (
                format!("UPDATE prices SET amount = 1 /* {} */", "x".repeat(100)),
                false,
            ),
            (
                format!(
                    "UPDATE U&\"inv\\0065ntory\" SET on_hand = 0 /* {} */",
                    "x".repeat(100)
                ),
                true,
            ),
        ] {
            let mut p = Plan::default();
            plan(&[rule()], &analyzer.analyze(&sql), None, false, &mut p).unwrap();
            assert_eq!(!p.keys.is_empty(), locked, "{sql}");
        }
    }

    #[test]
    fn reads_lock_only_inside_transactions() {
        let sql = "SELECT on_hand FROM inventory WHERE sku_id = 1 AND warehouse_id = 1";
        assert!(keys(sql, false).unwrap().is_empty());
        assert_eq!(keys(sql, true).unwrap(), vec!["inventory|1|1"]);
    }

    #[test]
    fn reject_mode_refuses_undeterminable_statements() {
        let mut r = rule();
        r.undeterminable = Undeterminable::Reject;
        let a = analyze(
            "DELETE FROM inventory WHERE on_hand = 0",
            &FunctionCatalog::builtin(),
        );
        let err = plan(&[r], &a, None, false, &mut Plan::default()).unwrap_err();
        assert_eq!(err.table, "inventory");
    }

    #[test]
    fn other_tables_take_no_lock() {
        assert!(keys("UPDATE prices SET amount = 1 WHERE sku_id = 1", false)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn lock_sql_restores_the_transactions_lock_timeout() {
        let p = Plan {
            keys: vec!["inventory|1|1".into()],
            timeout: Some(Duration::from_millis(250)),
            passed: 0,
        };
        let sql = p.sql();
        assert!(
            sql.contains("'250ms'") && sql.contains("hashtextextended('inventory|1|1', 0)"),
            "{sql}"
        );
    }
}

//! `SHOW LOCKS`: the inventory advisory keys sidecar sessions wait for or hold, who holds
//! them, and what the primary's `pg_locks` says about the same keys.
//!
//! The sidecar's own view comes from the live registry. The advisory key (a bigint) is
//! computed by Postgres (`hashtextextended`), never re-implemented here, so the console asks
//! the primary once per command, with the monitor's login and a short timeout; the same query
//! reads `pg_locks`, which also shows holders outside this sidecar (another sidecar, a DBA's
//! session). If the primary cannot answer in time, those columns are NULL and the rest stands.

use std::collections::HashMap;
use std::time::Duration;

use super::show::Table;
use crate::analyze::TableRef;
use crate::backend::Server;
use crate::context::Context;
use crate::locks::{LockEntry, LockRule};
use crate::settings::quote_literal;

/// How long SHOW LOCKS waits for the primary's side of the answer.
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(2);

pub const COLUMNS: &[&str] = &[
    "client_id",
    "user",
    "database",
    "client_addr",
    "application_name",
    "lock_table",
    "key_columns",
    "key_values",
    "lock_key",
    "advisory_key",
    "state",
    "since",
    "backend_pid",
    "primary_pg_locks",
];

/// The primary's answer for one entry: advisory key and `pg_locks` summary.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OnPrimary {
    advisory_key: String,
    pg_locks: String,
}

pub async fn locks(ctx: &Context) -> Table {
    let entries = ctx.lock_registry.snapshot();
    let clients: HashMap<u64, _> = ctx
        .sessions
        .snapshot()
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let db_of = |e: &LockEntry| clients.get(&e.client).map(|c| c.database.clone());
    let primary = if entries.is_empty() {
        Vec::new()
    } else {
        let pairs: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e.key.clone(), db_of(e).unwrap_or_default()))
            .collect();
        ask_primary(ctx, &pairs).await.unwrap_or_else(|e| {
            tracing::info!(error = %e, "SHOW LOCKS: the primary's view is unavailable");
            Vec::new()
        })
    };
    let rules = ctx.config.load().locks.clone();
    let mut t = Table::new(COLUMNS);
    for (i, e) in entries.iter().enumerate() {
        let c = clients.get(&e.client);
        let (table, columns, values) = describe_key(&rules, &e.key);
        let p = primary.get(i).and_then(Option::as_ref);
        t.row([
            Some(e.client.to_string()),
            c.map(|c| c.user.clone()),
            c.map(|c| c.database.clone()),
            c.map(|c| c.peer.to_string()),
            c.map(|c| c.application_name.clone()),
            Some(table),
            Some(columns),
            values,
            Some(e.key.clone()),
            p.map(|p| p.advisory_key.clone()),
            Some(e.state.as_str().to_string()),
            Some(humantime::format_rfc3339_millis(e.since).to_string()),
            Some(e.backend_pid.to_string()),
            p.map(|p| p.pg_locks.clone()),
        ]);
    }
    t
}

/// Table, key columns and key values (`NULL` for a table-wide key) of a key text.
fn describe_key(rules: &[LockRule], key: &str) -> (String, String, Option<String>) {
    for rule in rules {
        let name = TableRef::parse(&rule.table).name;
        let Some(rest) = key.strip_prefix(name.as_str()) else {
            continue;
        };
        let columns = rule.key.join(", ");
        if rest.is_empty() {
            return (name, columns, None);
        }
        if let Some(values) = rest.strip_prefix('|') {
            // Values may contain '|': the last column takes whatever remains.
            let values: Vec<&str> = values.splitn(rule.key.len(), '|').collect();
            return (name, columns, Some(values.join(", ")));
        }
    }
    // A rule removed by a reload while its lock is held: show the raw key.
    let table = key.split('|').next().unwrap_or(key).to_string();
    (table, String::new(), None)
}

/// One query on the primary: for each (key, database), `hashtextextended(key, 0)` and the
/// `pg_locks` rows of that advisory key in that database, as `pid granted|waiting` pairs.
fn primary_sql(pairs: &[(String, String)]) -> String {
    let list = |f: fn(&(String, String)) -> &String| {
        pairs
            .iter()
            .map(|p| quote_literal(f(p)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "SELECT k.i || ' ' || pg_catalog.hashtextextended(k.key, 0) || ' ' || COALESCE((\
           SELECT pg_catalog.string_agg(l.pid || CASE WHEN l.granted THEN ' granted' ELSE ' waiting' END, ', ' ORDER BY l.granted DESC, l.pid) \
           FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_database d ON d.oid = l.database \
           WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND d.datname = k.db \
             AND ((l.classid::int8 << 32) | l.objid::int8) = pg_catalog.hashtextextended(k.key, 0)), 'none') \
         FROM ROWS FROM (pg_catalog.unnest(ARRAY[{}]::text[]), pg_catalog.unnest(ARRAY[{}]::text[])) WITH ORDINALITY AS k(key, db, i) ORDER BY k.i",
        list(|p| &p.0),
        list(|p| &p.1)
    )
}

/// Why `SHOW LOCKS` shows no `pg_locks` column (logged; the sidecar's own view still shows).
#[derive(Debug, thiserror::Error)]
enum PrimaryView {
    #[error("no login to reach the primary with yet")]
    NoLogin,
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

async fn ask_primary(
    ctx: &Context,
    pairs: &[(String, String)],
) -> Result<Vec<Option<OnPrimary>>, PrimaryView> {
    let primary = ctx.topology.load().primary().addr.clone();
    let spec = ctx
        .monitor_spec(primary, "pgsidecar-admin-locks")
        .ok_or(PrimaryView::NoLogin)?;
    let sql = primary_sql(pairs);
    let rows = tokio::time::timeout(PRIMARY_TIMEOUT, async {
        let mut server = Server::connect(&spec).await?;
        let rows = server.query_column(&sql).await;
        tokio::spawn(server.terminate());
        rows
    })
    .await
    .map_err(|_| PrimaryView::Timeout(PRIMARY_TIMEOUT))??;
    Ok(parse_rows(pairs.len(), rows))
}

/// Rows `i key pg_locks` back into entry order; a missing or malformed row stays `None`.
fn parse_rows(n: usize, rows: Vec<Option<String>>) -> Vec<Option<OnPrimary>> {
    let mut out = vec![None; n];
    for row in rows.into_iter().flatten() {
        let mut parts = row.splitn(3, ' ');
        let (Some(i), Some(key), Some(locks)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let Some(slot) = i
            .parse::<usize>()
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| out.get_mut(i))
        {
            *slot = Some(OnPrimary {
                advisory_key: key.to_string(),
                pg_locks: locks.to_string(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(table: &str, key: &[&str]) -> LockRule {
        let keys: Vec<String> = key.iter().map(|k| format!("\"{k}\"")).collect();
        toml::from_str(&format!("table = \"{table}\"\nkey = [{}]", keys.join(", "))).unwrap()
    }

    #[test]
    fn key_text_splits_into_the_rules_columns() {
        let rules = [rule("public.inventory", &["sku_id", "warehouse_id"])];
        assert_eq!(
            describe_key(&rules, "inventory|42|W|1"),
            (
                "inventory".into(),
                "sku_id, warehouse_id".into(),
                Some("42, W|1".into())
            )
        );
        assert_eq!(
            describe_key(&rules, "inventory"),
            ("inventory".into(), "sku_id, warehouse_id".into(), None)
        );
        assert_eq!(describe_key(&[], "gone|1").0, "gone");
    }

    #[test]
    fn primary_rows_return_to_entry_order() {
        let rows = vec![
            Some("2 -17 4242 granted".to_string()),
            Some("1 99 none".to_string()),
            Some("garbage".to_string()),
        ];
        let p = parse_rows(3, rows);
        assert_eq!(p[0].as_ref().map(|p| p.advisory_key.as_str()), Some("99"));
        assert_eq!(
            p[1].as_ref().map(|p| p.pg_locks.as_str()),
            Some("4242 granted")
        );
        assert_eq!(p[2], None);
    }

    #[test]
    fn primary_query_quotes_keys() {
        let sql = primary_sql(&[("inventory|o'brien".into(), "shop".into())]);
        assert!(sql.contains("'inventory|o''brien'"), "{sql}");
    }
}

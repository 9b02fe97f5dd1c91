//! Loads function volatility (with argument counts) and view names from `pg_proc` and
//! `pg_class` of every database on the primary, so user functions are classified by what they
//! declare (a STABLE lookup function may run on a replica; a VOLATILE one may not, and a user's
//! `public.upper(int)` is not taken for the built-in) and reads of views are not cached.
//! Until it has loaded, unknown functions count as volatile: routing errs towards the primary.
//!
//! The catalog changes with DDL: a database is read again right after a DDL statement through
//! this sidecar commits there, and every database every `routing.catalog_refresh` (DDL run
//! elsewhere). Between a change and its reload, a new function is unknown (primary, uncached);
//! a changed one keeps its old volatility.
//!
//! The task that loads them is `tasks::catalog`; this file holds what it reads and how.

use std::collections::HashSet;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::analyze::FunctionCatalog;

pub(crate) const DATABASES: &str = "SELECT datname FROM pg_catalog.pg_database \
    WHERE datallowconn AND NOT datistemplate ORDER BY 1";

/// One row per function (`f`, schema, name, provolatile, pronargs, pronargdefaults, variadic)
/// and per view (`v`, schema, name), tab-separated.
pub(crate) const QUERY: &str =
    "SELECT 'f' || chr(9) || n.nspname || chr(9) || p.proname || chr(9) || \
    p.provolatile::text || chr(9) || p.pronargs || chr(9) || p.pronargdefaults || chr(9) || \
    (p.provariadic <> 0)::int \
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
    UNION ALL SELECT 'v' || chr(9) || n.nspname || chr(9) || c.relname \
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.relkind = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// Requests to read databases' catalogs again (DDL committed through this sidecar).
#[derive(Default)]
pub struct Reload {
    databases: Mutex<HashSet<String>>,
    pub(crate) wake: Notify,
}

impl Reload {
    /// DDL committed in `database`: read its catalog again soon.
    pub fn request(&self, database: &str) {
        self.databases.lock().insert(database.to_owned());
        self.wake.notify_one();
    }

    pub(crate) fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.databases.lock())
    }
}

/// The built-in catalog with every database's merged in.
pub(crate) fn merged<'a>(dbs: impl Iterator<Item = &'a FunctionCatalog>) -> FunctionCatalog {
    let mut catalog = FunctionCatalog::builtin();
    for c in dbs {
        catalog.merge(c);
    }
    catalog
}

pub(crate) fn parse_rows<'a>(rows: impl Iterator<Item = &'a str>) -> FunctionCatalog {
    let mut catalog = FunctionCatalog::empty();
    for r in rows {
        let p: Vec<&str> = r.split('\t').collect();
        match p.as_slice() {
            ["f", schema, name, vol, nargs, ndefaults, variadic] => {
                let (Some(v), Ok(n), Ok(d)) = (
                    vol.chars().next(),
                    nargs.parse::<u16>(),
                    ndefaults.parse::<u16>(),
                ) else {
                    continue;
                };
                catalog.insert_proc(
                    schema,
                    name,
                    n,
                    d,
                    *variadic == "1",
                    crate::analyze::Volatility::from_provolatile(v),
                );
            }
            ["v", schema, name] => catalog.insert_view(schema, name),
            _ => {}
        }
    }
    catalog
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::{TableRef, Volatility};

    #[test]
    fn rows_give_arity_aware_functions_and_views() {
        let c = parse_rows(
            [
                "f\tpg_catalog\tupper\ti\t1\t0\t0",
                "f\tpublic\tupper\tv\t1\t0\t0",
                "f\tpublic\tlog_hit\tv\t2\t1\t0",
                "f\tpublic\tconcat_all\ts\t1\t0\t1",
                "v\tpublic\tprice_list",
            ]
            .into_iter(),
        );
        assert_eq!(c.resolve(None, "upper", Some(1)), None, "ambiguous");
        assert_eq!(
            c.resolve(Some("pg_catalog"), "upper", Some(1)),
            Some(Volatility::Immutable)
        );
        assert_eq!(
            c.resolve(None, "log_hit", Some(1)),
            Some(Volatility::Volatile)
        );
        assert_eq!(c.resolve(None, "log_hit", Some(3)), None, "too many args");
        assert_eq!(
            c.resolve(None, "concat_all", Some(5)),
            Some(Volatility::Stable)
        );
        assert!(c.is_view(&TableRef::parse("price_list")));
        assert!(c.is_view(&TableRef::parse("public.price_list")));
        assert!(!c.is_view(&TableRef::parse("other.price_list")));
    }
}

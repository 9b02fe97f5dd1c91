//! Read-your-writes bookkeeping: the WAL position after each write transaction committed
//! through this sidecar, per table, so a later read can demand a replica that has replayed it.
//! The result cache adds the positions that travel with other sidecars' (and NOTIFY's) cache
//! tokens ([`crate::cache::CommitPositions`]), so cache fills and `sidecar`-scope reads demand
//! those too.

use std::collections::HashMap;

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use super::topology::Lsn;
use crate::analyze::TableRef;

/// Asks the primary for a position at or after the end of every commit record it has made so
/// far: the WAL *insert* position. Whatever `synchronous_commit` a transaction ran with
/// (postgresql.conf, role, database, session, `SET LOCAL`), its commit record is inserted before
/// the commit returns. Not `pg_current_wal_lsn()`: that is the *write* position, and an
/// asynchronous commit (`synchronous_commit = off`) returns before its record is written, so a
/// replica that has replayed up to that position may not have the commit (issue #13). The WAL
/// between the two reaches replicas once the primary flushes it: [`super::flush`] asks for that
/// when a read would otherwise wait for the WAL writer.
pub const COMMIT_POSITION_SQL: &str = "SELECT pg_current_wal_insert_lsn()";

/// Latest commit position per table written through this sidecar.
#[derive(Default)]
pub struct WriteLog {
    tables: RwLock<HashMap<String, Lsn>>,
    /// The active environment's primary position when it became active: positions of another
    /// environment mean nothing here, and its replicas must at least have replayed what its
    /// primary had when traffic arrived (the data migrated before the switch).
    floor: AtomicU64,
    /// A write to tables nobody could name (`*` tokens): every table's position.
    everything: AtomicU64,
    /// The latest fleet join whose catch-up position is recorded in `everything`
    /// (`super::flush::Flusher::catch_up`).
    caught_up: AtomicU64,
}

fn key(t: &TableRef) -> String {
    key_str(t).to_string()
}

/// Unqualified and qualified references to one table must meet: key by bare name. Two schemas
/// with a table of the same name then share a position, which only makes a read wait for a
/// little more than it must. (Borrowed: a read's lookup allocates nothing.)
fn key_str(t: &TableRef) -> &str {
    &t.name
}

impl WriteLog {
    pub fn record<'a>(&self, tables: impl IntoIterator<Item = &'a TableRef>, lsn: Lsn) {
        let mut map = self.tables.write();
        for t in tables {
            let e = map.entry(key(t)).or_insert(0);
            if lsn > *e {
                *e = lsn;
            }
        }
    }

    /// Records a position for every table (a write whose tables are unknown).
    pub fn record_everything(&self, lsn: Lsn) {
        self.everything.fetch_max(lsn, Ordering::Relaxed);
    }

    /// The position a replica must have replayed before reading `tables`.
    pub fn required<'a>(&self, tables: impl IntoIterator<Item = &'a TableRef>) -> Lsn {
        let floor = self.floor().max(self.everything.load(Ordering::Relaxed));
        let map = self.tables.read();
        if map.is_empty() {
            return floor;
        }
        tables
            .into_iter()
            .filter_map(|t| map.get(key_str(t)).copied())
            .max()
            .unwrap_or(0)
            .max(floor)
    }

    /// The newest position this sidecar knows for any table: what a read must have seen when
    /// its tables are not known yet (a read-only transaction routed at its `BEGIN`).
    pub fn latest(&self) -> Lsn {
        let floor = self.floor().max(self.everything.load(Ordering::Relaxed));
        self.tables
            .read()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
            .max(floor)
    }

    /// The latest fleet join caught up with (see [`super::flush::Flusher::catch_up`]).
    pub fn caught_up(&self) -> u64 {
        self.caught_up.load(Ordering::Acquire)
    }

    pub fn set_caught_up(&self, join: u64) {
        self.caught_up.fetch_max(join, Ordering::AcqRel);
    }

    /// No read may be served by a replica behind this position.
    pub fn floor(&self) -> Lsn {
        self.floor.load(Ordering::Relaxed)
    }

    /// Forgets every position (they belong to another environment) and starts over from
    /// `floor`. Called by SWITCH while no transaction runs.
    pub fn reset(&self, floor: Lsn) {
        let mut map = self.tables.write();
        map.clear();
        self.everything.store(0, Ordering::Relaxed);
        self.floor.store(floor, Ordering::Relaxed);
    }

    /// Records `lsn` under every name a cache token name can stand for. Token names are
    /// `{database}.{table}` ([`crate::cache::table_key`]) and either part may contain a dot, so
    /// the bare table name is one of the suffixes after a dot: record them all (a spurious
    /// name only makes reads of a table so named wait a little longer than they must).
    fn record_token_name(&self, name: &str, lsn: Lsn) {
        let mut map = self.tables.write();
        for (i, _) in name.match_indices('.') {
            let bare = &name[i + 1..];
            if bare.is_empty() {
                continue;
            }
            match map.get_mut(bare) {
                Some(e) => *e = (*e).max(lsn),
                None => {
                    map.insert(bare.to_owned(), lsn);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.tables.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::cache::CommitPositions for WriteLog {
    fn learned(&self, table: &str, lsn: u64) {
        if table == "*" {
            self.record_everything(lsn);
        } else {
            self.record_token_name(table, lsn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TableRef {
        TableRef {
            schema: None,
            name: name.into(),
        }
    }

    #[test]
    fn a_reset_forgets_other_positions_and_keeps_the_floor() {
        let log = WriteLog::default();
        log.record([&t("a")], 500);
        assert_eq!(log.required([&t("a")]), 500);
        log.reset(100);
        assert_eq!(
            log.required([&t("a")]),
            100,
            "blue's position means nothing on green"
        );
        assert_eq!(log.required([&t("b")]), 100);
        log.record([&t("a")], 150);
        assert_eq!(log.required([&t("a")]), 150);
    }

    #[test]
    fn a_position_learned_with_a_cache_token_is_required_by_reads_of_that_table() {
        use crate::cache::{table_key, CommitPositions};
        let log = WriteLog::default();
        log.learned(&table_key("shop", "prices"), 700);
        // Reads name the table bare or schema-qualified; the write log keys by the bare name.
        assert_eq!(log.required([&t("prices")]), 700);
        let qualified = TableRef {
            schema: Some("public".into()),
            name: "prices".into(),
        };
        assert_eq!(log.required([&qualified]), 700);
        assert_eq!(log.required([&t("products")]), 0);
        // Dots in the database or the table name: the real table is still covered.
        log.learned(&table_key("my.shop", "stock"), 800);
        assert_eq!(log.required([&t("stock")]), 800);
        log.learned(&table_key("shop", "odd.name"), 900);
        assert_eq!(log.required([&t("odd.name")]), 900);
        // Positions only move forward.
        log.learned(&table_key("shop", "prices"), 600);
        assert_eq!(log.required([&t("prices")]), 700);
    }

    #[test]
    fn a_position_learned_for_every_table_is_required_by_every_read_until_a_reset() {
        use crate::cache::CommitPositions;
        let log = WriteLog::default();
        log.learned("*", 900);
        assert_eq!(log.required([&t("anything")]), 900);
        log.reset(100);
        assert_eq!(log.required([&t("anything")]), 100);
    }
}

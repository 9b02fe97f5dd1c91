//! Read-your-writes bookkeeping: the WAL position after each write transaction committed
//! through this sidecar, per table, so a later read can demand a replica that has replayed it.

use std::collections::HashMap;

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use super::topology::Lsn;
use crate::analyze::TableRef;

/// Latest commit position per table written through this sidecar.
#[derive(Default)]
pub struct WriteLog {
    tables: RwLock<HashMap<String, Lsn>>,
    /// The active environment's primary position when it became active: positions of another
    /// environment mean nothing here, and its replicas must at least have replayed what its
    /// primary had when traffic arrived (the data migrated before the switch).
    floor: AtomicU64,
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

    /// The position a replica must have replayed before reading `tables`.
    pub fn required<'a>(&self, tables: impl IntoIterator<Item = &'a TableRef>) -> Lsn {
        let floor = self.floor();
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

    /// No read may be served by a replica behind this position.
    pub fn floor(&self) -> Lsn {
        self.floor.load(Ordering::Relaxed)
    }

    /// Forgets every position (they belong to another environment) and starts over from
    /// `floor`. Called by SWITCH while no transaction runs.
    pub fn reset(&self, floor: Lsn) {
        let mut map = self.tables.write();
        map.clear();
        self.floor.store(floor, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.tables.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
}

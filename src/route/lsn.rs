//! Read-your-writes bookkeeping: the WAL position after each write transaction committed
//! through this sidecar, per table, so a later read can demand a replica that has replayed it.

use std::collections::HashMap;

use parking_lot::RwLock;

use super::topology::Lsn;
use crate::analyze::TableRef;

/// Latest commit position per table written through this sidecar.
#[derive(Default)]
pub struct WriteLog {
    tables: RwLock<HashMap<String, Lsn>>,
}

fn key(t: &TableRef) -> String {
    // Unqualified and qualified references to one table must meet: key by bare name. Two
    // schemas with a table of the same name then share a position, which only makes a read
    // wait for a little more than it must.
    t.name.clone()
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
        let map = self.tables.read();
        if map.is_empty() {
            return 0;
        }
        tables
            .into_iter()
            .filter_map(|t| map.get(&key(t)).copied())
            .max()
            .unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.tables.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

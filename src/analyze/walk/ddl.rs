//! DDL: the tables it changes (they invalidate cached results) and temporary objects (they pin).

use sqlparser::ast::{ObjectType, Statement};

use super::{push_unique, table_ref, Class, Walker};
use crate::analyze::types::{PinReason, SessionEffect, StatementKind};

impl Walker<'_> {
    /// DDL statements; `None` for any other statement.
    pub(super) fn ddl(&mut self, st: &Statement) -> Option<Class> {
        use StatementKind as K;
        Some(match st {
            Statement::CreateTable(ct) => {
                if ct.temporary {
                    self.session(SessionEffect::Pin(PinReason::TempObject));
                }
                if let Some(q) = &ct.query {
                    self.query(q);
                }
                push_unique(&mut self.out.tables_written, table_ref(&ct.name));
                (K::Ddl, "CREATE", false)
            }
            Statement::CreateView {
                name,
                query,
                temporary,
                ..
            } => {
                if *temporary {
                    self.session(SessionEffect::Pin(PinReason::TempObject));
                }
                self.query(query);
                push_unique(&mut self.out.tables_written, table_ref(name));
                (K::Ddl, "CREATE", false)
            }
            Statement::CreateSequence { temporary, .. } => {
                if *temporary {
                    self.session(SessionEffect::Pin(PinReason::TempObject));
                }
                (K::Ddl, "CREATE", false)
            }
            Statement::AlterTable { name, .. } => {
                push_unique(&mut self.out.tables_written, table_ref(name));
                (K::Ddl, "ALTER", false)
            }
            Statement::AlterView { name, query, .. } => {
                self.query(query);
                push_unique(&mut self.out.tables_written, table_ref(name));
                (K::Ddl, "ALTER", false)
            }
            Statement::Drop {
                object_type, names, ..
            } => {
                if matches!(object_type, ObjectType::Table | ObjectType::View) {
                    for n in names {
                        push_unique(&mut self.out.tables_written, table_ref(n));
                    }
                }
                (K::Ddl, "DROP", false)
            }
            Statement::CreateIndex(_)
            | Statement::CreateRole { .. }
            | Statement::CreateSchema { .. }
            | Statement::CreateDatabase { .. }
            | Statement::CreateFunction(_)
            | Statement::CreateTrigger { .. }
            | Statement::CreateProcedure { .. }
            | Statement::CreateExtension { .. }
            | Statement::CreateType { .. }
            | Statement::CreatePolicy { .. }
            | Statement::CreateVirtualTable { .. }
            | Statement::CreateMacro { .. }
            | Statement::CreateStage { .. }
            | Statement::CreateSecret { .. }
            | Statement::CreateConnector(_) => (K::Ddl, "CREATE", false),
            Statement::AlterIndex { .. }
            | Statement::AlterType(_)
            | Statement::AlterRole { .. }
            | Statement::AlterPolicy { .. }
            | Statement::AlterConnector { .. } => (K::Ddl, "ALTER", false),
            Statement::DropFunction { .. }
            | Statement::DropProcedure { .. }
            | Statement::DropSecret { .. }
            | Statement::DropPolicy { .. }
            | Statement::DropConnector { .. }
            | Statement::DropExtension { .. }
            | Statement::DropTrigger { .. } => (K::Ddl, "DROP", false),
            Statement::Grant { .. } => (K::Ddl, "GRANT", false),
            Statement::Revoke { .. } => (K::Ddl, "REVOKE", false),
            Statement::Comment { .. } => (K::Ddl, "COMMENT", false),
            Statement::RenameTable(_) => (K::Ddl, "RENAME", false),
            _ => return None,
        })
    }
}

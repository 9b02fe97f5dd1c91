//! Top-level classification: what kind of statement this is and whether it may go to a replica.

use sqlparser::ast::{CopySource, CopyTarget, Expr, Query, SetExpr, Statement, Value};

use super::{push_unique, table_ref, Class, Walker};
use crate::analyze::keys::KeySource;
use crate::analyze::types::{PinReason, SessionEffect, StatementKind};

impl Walker<'_> {
    /// Walks one top-level statement and classifies it.
    pub(crate) fn statement(&mut self, st: &Statement) {
        let (kind, verb, base_ro) = self.classify(st);
        self.out.summary.kind = kind;
        self.out.summary.verb = verb;
        self.base_ro = base_ro;
    }

    fn classify(&mut self, st: &Statement) -> Class {
        use StatementKind as K;
        if let Some(class) = self.transaction_or_session(st) {
            return class;
        }
        if let Some(class) = self.ddl(st) {
            return class;
        }
        match st {
            Statement::Query(q) => {
                self.query(q);
                let verb = query_verb(q);
                if self.select_into || self.dml_in_query {
                    (K::Write, verb, true)
                } else {
                    (K::Read, verb, true)
                }
            }
            Statement::Insert(_)
            | Statement::Update { .. }
            | Statement::Delete(_)
            | Statement::Merge { .. } => {
                self.statement_body(st);
                let verb = match st {
                    Statement::Insert(_) => "INSERT",
                    Statement::Update { .. } => "UPDATE",
                    Statement::Delete(_) => "DELETE",
                    _ => "MERGE",
                };
                (K::Write, verb, false)
            }
            Statement::Explain {
                analyze,
                statement,
                options,
                ..
            } => {
                let analyze = *analyze
                    || options.as_ref().is_some_and(|opts| {
                        opts.iter().any(|o| {
                            o.name.value.eq_ignore_ascii_case("analyze")
                                && match &o.arg {
                                    None => true,
                                    Some(Expr::Value(v)) => match &v.value {
                                        Value::Boolean(b) => *b,
                                        Value::Number(n, _) => n != "0",
                                        Value::SingleQuotedString(s) => !matches!(
                                            s.to_ascii_lowercase().as_str(),
                                            "off" | "false" | "0" | "no"
                                        ),
                                        _ => true,
                                    },
                                    Some(Expr::Identifier(id)) => !matches!(
                                        id.value.to_ascii_lowercase().as_str(),
                                        "off" | "false" | "no"
                                    ),
                                    Some(_) => true,
                                }
                        })
                    });
                let (inner_kind, _inner_verb, inner_ro) = self.classify(statement);
                let plannable = matches!(
                    **statement,
                    Statement::Query(_)
                        | Statement::Insert(_)
                        | Statement::Update { .. }
                        | Statement::Delete(_)
                        | Statement::Merge { .. }
                );
                if analyze {
                    // Executes the statement.
                    (inner_kind, "EXPLAIN", inner_ro)
                } else {
                    // Plans only: nothing is written, locked, or pinned.
                    let written = std::mem::take(&mut self.out.tables_written);
                    for t in written {
                        push_unique(&mut self.out.tables_read, t);
                    }
                    self.out.accesses.clear();
                    self.sessions.clear();
                    self.out.locking = false;
                    self.select_into = false;
                    self.dml_in_query = false;
                    self.unsafe_volatile.clear();
                    self.out.hidden_writes = None;
                    (K::Read, "EXPLAIN", plannable)
                }
            }
            Statement::NOTIFY { .. } => (K::Write, "NOTIFY", false),
            Statement::Declare { stmts } => {
                for d in stmts {
                    if d.hold == Some(true) {
                        self.session(SessionEffect::Pin(PinReason::HoldCursor));
                    }
                    if let Some(q) = &d.for_query {
                        self.query(q);
                    }
                }
                (K::Utility, "DECLARE", false)
            }
            Statement::Fetch { .. } => (K::Utility, "FETCH", false),
            Statement::Close { .. } => (K::Utility, "CLOSE", false),
            Statement::Call(f) => {
                self.function(f);
                self.hidden_write("CALL of a procedure");
                (K::Write, "CALL", false)
            }
            Statement::Copy {
                source, to, target, ..
            } => {
                match source {
                    CopySource::Table { table_name, .. } => {
                        let t = table_ref(table_name);
                        if *to {
                            self.add_access(
                                t,
                                false,
                                KeySource::Undeterminable("COPY reads every row".to_owned()),
                            );
                        } else {
                            self.add_access(
                                t,
                                true,
                                KeySource::Undeterminable("COPY FROM".to_owned()),
                            );
                        }
                    }
                    CopySource::Query(q) => self.query(q),
                }
                if !*to {
                    (K::Write, "COPY", false)
                } else if matches!(target, CopyTarget::Stdout) {
                    let ro = !self.dml_in_query;
                    (if ro { K::Read } else { K::Write }, "COPY", ro)
                } else {
                    (K::Utility, "COPY", false)
                }
            }
            Statement::Truncate { table_names, .. } => {
                for t in table_names {
                    self.add_access(
                        table_ref(&t.name),
                        true,
                        KeySource::Undeterminable("TRUNCATE".to_owned()),
                    );
                }
                (K::Write, "TRUNCATE", false)
            }
            Statement::ShowVariable { variable } => {
                let name = variable
                    .iter()
                    .map(|i| i.value.to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(" ");
                if super::functions::PRIMARY_STATE_SETTINGS.contains(&name.as_str()) {
                    self.asks_primary(format!("SHOW {name}"));
                }
                (K::Read, "SHOW", true)
            }
            Statement::ShowFunctions { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowVariables { .. }
            | Statement::ShowCreate { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowDatabases { .. }
            | Statement::ShowSchemas { .. }
            | Statement::ShowObjects(_)
            | Statement::ShowTables { .. }
            | Statement::ShowViews { .. }
            | Statement::ShowCollation { .. } => (K::Read, "SHOW", true),
            Statement::Analyze { .. } => (K::Utility, "ANALYZE", false),
            Statement::LockTables { .. } => {
                self.out.locking = true;
                (K::Write, "LOCK", false)
            }
            _ => (K::Utility, "UTILITY", false),
        }
    }
}

fn query_verb(q: &Query) -> &'static str {
    fn body(s: &SetExpr) -> &'static str {
        match s {
            SetExpr::Select(_) | SetExpr::SetOperation { .. } => "SELECT",
            SetExpr::Query(q) => body(&q.body),
            SetExpr::Values(_) => "VALUES",
            SetExpr::Table(_) => "TABLE",
            SetExpr::Insert(_) => "INSERT",
            SetExpr::Update(_) => "UPDATE",
        }
    }
    body(&q.body)
}

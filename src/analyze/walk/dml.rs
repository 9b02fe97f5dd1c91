//! Data-modifying statements (top level or inside WITH): written tables and their key sources.

use sqlparser::ast::{
    Assignment, AssignmentTarget, Delete, Expr, FromTable, Insert, MergeAction, MergeInsertKind,
    OnConflictAction, OnInsert, SelectItem, SetExpr, Statement, TableFactor, TableObject,
    TableWithJoins, UpdateTableFromKind,
};

use super::query::Rel;
use super::{is_pending, name_parts, norm_ident, table_ref, Walker};
use crate::analyze::keys::{Atom, KeySource, MAX_KEYS};

impl Walker<'_> {
    /// Walks a CTE body parsed on its own (see `rescue_with`); `false` if unsupported.
    pub(crate) fn cte_body(&mut self, st: &Statement) -> bool {
        match st {
            Statement::Insert(_)
            | Statement::Update { .. }
            | Statement::Delete(_)
            | Statement::Merge { .. } => {
                self.dml_in_query = true;
                self.statement_body(st);
                true
            }
            Statement::Query(q) => {
                self.query(q);
                true
            }
            _ => false,
        }
    }

    /// Walks a DML statement embedded in a query (data-modifying CTE) or at top level.
    pub(super) fn statement_body(&mut self, st: &Statement) {
        match st {
            Statement::Insert(ins) => self.insert(ins),
            Statement::Update {
                table,
                assignments,
                from,
                selection,
                returning,
                ..
            } => self.update(
                table,
                assignments,
                from.as_ref(),
                selection.as_ref(),
                returning.as_deref(),
            ),
            Statement::Delete(d) => self.delete(d),
            Statement::Merge {
                table,
                source,
                on,
                clauses,
                ..
            } => self.merge(table, source, on, clauses),
            Statement::Query(q) => self.query(q),
            _ => {
                self.hidden_write("unsupported statement inside WITH");
            }
        }
    }

    fn insert(&mut self, ins: &Insert) {
        let target = match &ins.table {
            TableObject::TableName(n) => table_ref(n),
            TableObject::TableFunction(f) => {
                self.function(f);
                self.hidden_write("INSERT INTO a table function");
                return;
            }
        };
        let columns: Vec<String> = ins.columns.iter().map(norm_ident).collect();
        let mut source = match &ins.source {
            None => KeySource::Undeterminable("INSERT … DEFAULT VALUES".to_owned()),
            Some(q) => match (&q.with, &*q.body) {
                (None, SetExpr::Values(v)) => {
                    if columns.is_empty() {
                        KeySource::Undeterminable("INSERT without a column list".to_owned())
                    } else if v.rows.len() > MAX_KEYS {
                        KeySource::Undeterminable(format!(
                            "INSERT of {} rows (more than {MAX_KEYS})",
                            v.rows.len()
                        ))
                    } else {
                        let mut rows = Vec::with_capacity(v.rows.len());
                        for r in &v.rows {
                            let row: Vec<Option<Atom>> = r.iter().map(|e| self.atom(e)).collect();
                            rows.push(row);
                        }
                        KeySource::Rows {
                            columns: columns.clone(),
                            rows,
                            assigned: Vec::new(),
                        }
                    }
                }
                _ => KeySource::Undeterminable("INSERT … SELECT".to_owned()),
            },
        };
        if let Some(q) = &ins.source {
            self.query(q);
        }
        if let Some(OnInsert::OnConflict(oc)) = &ins.on {
            if let OnConflictAction::DoUpdate(du) = &oc.action {
                let mut assigned_cols = Vec::new();
                for a in &du.assignments {
                    self.expr(&a.value);
                    assigned_cols.extend(assignment_columns(a));
                }
                if let Some(s) = &du.selection {
                    self.expr(s);
                }
                if let KeySource::Rows { assigned, .. } = &mut source {
                    *assigned = assigned_cols;
                }
            }
        } else if let Some(OnInsert::DuplicateKeyUpdate(assignments)) = &ins.on {
            for a in assignments {
                self.expr(&a.value);
            }
        }
        if let Some(r) = &ins.returning {
            self.select_items(r);
        }
        self.add_access(target, true, source);
    }

    /// Walks the written relation of UPDATE / MERGE; its access index, unless it is no table
    /// (a CTE name).
    fn write_target<'q>(
        &mut self,
        target: &'q TableFactor,
        rels: &mut Vec<Rel>,
        preds: &mut Vec<&'q Expr>,
    ) -> Option<usize> {
        let first_access = self.out.accesses.len();
        self.table_factor(target, rels, preds, true);
        (self.out.accesses.len() > first_access).then_some(first_access)
    }

    /// Walks SET assignments, collecting each assigned column with its new value when that is
    /// a single literal or parameter (an UPDATE that moves a row to a new key locks both keys).
    fn assignments(
        &mut self,
        assignments: &[Assignment],
        assigned: &mut Vec<(String, Option<Atom>)>,
    ) {
        for a in assignments {
            self.expr(&a.value);
            let cols = assignment_columns(a);
            let atom = if cols.len() == 1 {
                self.atom(&a.value)
            } else {
                None
            };
            for c in cols {
                assigned.push((c, atom.clone()));
            }
        }
    }

    /// Hands the assigned columns to the target's predicate key source.
    fn set_assigned(&mut self, target: Option<usize>, assigned: Vec<(String, Option<Atom>)>) {
        if let Some(KeySource::Predicate { assigned: slot, .. }) = target
            .and_then(|ai| self.out.accesses.get_mut(ai))
            .map(|a| &mut a.source)
        {
            *slot = assigned;
        }
    }

    fn update<'q>(
        &mut self,
        table: &'q TableWithJoins,
        assignments: &[Assignment],
        from: Option<&'q UpdateTableFromKind>,
        selection: Option<&'q Expr>,
        returning: Option<&[SelectItem]>,
    ) {
        let mut rels = Vec::new();
        let mut preds: Vec<&'q Expr> = Vec::new();
        let target_access = self.write_target(&table.relation, &mut rels, &mut preds);
        for j in &table.joins {
            self.table_factor(&j.relation, &mut rels, &mut preds, false);
        }
        if let Some(UpdateTableFromKind::BeforeSet(v) | UpdateTableFromKind::AfterSet(v)) = from {
            for twj in v {
                self.table_with_joins(twj, &mut rels, &mut preds, false);
            }
        }
        let mut assigned = Vec::new();
        self.assignments(assignments, &mut assigned);
        if let Some(e) = selection {
            self.expr(e);
            preds.push(e);
        }
        if let Some(r) = returning {
            self.select_items(r);
        }
        self.assign_predicates(&rels, &preds);
        self.set_assigned(target_access, assigned);
    }

    fn delete<'q>(&mut self, d: &'q Delete) {
        let mut rels = Vec::new();
        let mut preds: Vec<&'q Expr> = Vec::new();
        let froms = match &d.from {
            FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => v,
        };
        for (i, twj) in froms.iter().enumerate() {
            self.table_with_joins(twj, &mut rels, &mut preds, i == 0);
        }
        if let Some(using) = &d.using {
            for twj in using {
                self.table_with_joins(twj, &mut rels, &mut preds, false);
            }
        }
        if let Some(e) = &d.selection {
            self.expr(e);
            preds.push(e);
        }
        if let Some(r) = &d.returning {
            self.select_items(r);
        }
        for o in &d.order_by {
            self.expr(&o.expr);
        }
        if let Some(l) = &d.limit {
            self.expr(l);
        }
        self.assign_predicates(&rels, &preds);
    }

    fn merge<'q>(
        &mut self,
        table: &'q TableFactor,
        source: &'q TableFactor,
        on: &'q Expr,
        clauses: &[sqlparser::ast::MergeClause],
    ) {
        let mut rels = Vec::new();
        let mut preds: Vec<&'q Expr> = Vec::new();
        let first_access = self.out.accesses.len();
        let target_access = self.write_target(table, &mut rels, &mut preds);
        // Only the target's constraints matter; keep the source out of attribution.
        let mut src_rels = Vec::new();
        self.table_factor(source, &mut src_rels, &mut preds, false);
        self.expr(on);
        let mut has_insert = false;
        let mut assigned = Vec::new();
        for c in clauses {
            if let Some(p) = &c.predicate {
                self.expr(p);
            }
            match &c.action {
                MergeAction::Insert(ins) => {
                    has_insert = true;
                    if let MergeInsertKind::Values(v) = &ins.kind {
                        self.values(v);
                    }
                }
                MergeAction::Update { assignments } => self.assignments(assignments, &mut assigned),
                MergeAction::Delete => {}
            }
        }
        // Attribute ON constraints to the target: qualified refs only (two relations in scope).
        rels.push(Rel::derived(String::from("\u{0}source")));
        self.assign_predicates(&rels, &[on]);
        // Source-table read accesses keep an undeterminable source.
        for a in self.out.accesses.iter_mut().skip(first_access) {
            if is_pending(&a.source) {
                a.source = KeySource::Undeterminable("MERGE source".to_owned());
            }
        }
        if has_insert {
            if let Some(a) = target_access.and_then(|ai| self.out.accesses.get_mut(ai)) {
                a.source =
                    KeySource::Undeterminable("MERGE … WHEN NOT MATCHED THEN INSERT".to_owned());
            }
        } else {
            self.set_assigned(target_access, assigned);
        }
    }
}

fn assignment_columns(a: &Assignment) -> Vec<String> {
    match &a.target {
        AssignmentTarget::ColumnName(n) => name_parts(n).pop().into_iter().collect(),
        AssignmentTarget::Tuple(v) => v.iter().filter_map(|n| name_parts(n).pop()).collect(),
    }
}

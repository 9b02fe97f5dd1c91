//! Query blocks: WITH, set operations, SELECT, and the relations of FROM / JOIN.

use sqlparser::ast::{
    Cte, Expr, FunctionArg, GroupByExpr, JoinConstraint, JoinOperator, ObjectName, OrderByKind,
    Query, Select, SelectItem, SetExpr, TableAlias, TableFactor, TableWithJoins, Values,
};

use super::predicates::RawCol;
use super::{name_parts, norm_ident, push_unique, table_ref, Walker, PENDING};
use crate::analyze::keys::{KeySource, TableAccess};
use crate::analyze::types::{PinReason, SessionEffect, TableRef};

/// A relation visible in one query block.
#[derive(Debug, Clone)]
pub(super) struct Rel {
    /// Alias, or the table's own name.
    pub(super) visible: String,
    pub(super) schema: Option<String>,
    pub(super) aliased: bool,
    pub(super) access: Option<usize>,
}

impl Rel {
    /// A relation with no table access of its own (subquery, function, UNNEST): it is only
    /// ever referred to by its alias and is never a lock-key target.
    pub(super) fn derived(visible: String) -> Rel {
        Rel {
            visible,
            schema: None,
            aliased: true,
            access: None,
        }
    }

    pub(super) fn owns(&self, col: &RawCol, unqualified_ok: bool) -> bool {
        match col.qual.len() {
            0 => unqualified_ok,
            1 => col.qual[0] == self.visible,
            n => {
                !self.aliased
                    && col.qual[n - 1] == self.visible
                    && self.schema.as_deref().is_none_or(|s| s == col.qual[n - 2])
            }
        }
    }
}

fn alias_name(alias: &Option<TableAlias>) -> Option<String> {
    alias.as_ref().map(|a| norm_ident(&a.name))
}

impl Walker<'_> {
    /// A set-returning function in FROM: `FROM generate_series(1, 3)`.
    fn table_function(&mut self, name: &ObjectName, args: &[FunctionArg]) {
        self.record_function_name(name);
        for a in args {
            self.function_arg(a);
        }
    }

    pub(super) fn add_access(&mut self, table: TableRef, write: bool, source: KeySource) -> usize {
        if write {
            push_unique(&mut self.out.tables_written, table.clone());
        } else {
            push_unique(&mut self.out.tables_read, table.clone());
        }
        self.out.accesses.push(TableAccess {
            table,
            write,
            source,
        });
        self.out.accesses.len() - 1
    }

    pub(super) fn table_factor<'q>(
        &mut self,
        tf: &'q TableFactor,
        rels: &mut Vec<Rel>,
        preds: &mut Vec<&'q Expr>,
        write: bool,
    ) {
        match tf {
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                ..
            } => {
                let alias_name = alias_name(alias);
                if let Some(args) = args {
                    self.table_function(name, &args.args);
                    let parts = name_parts(name);
                    rels.push(Rel {
                        visible: alias_name
                            .unwrap_or_else(|| parts.last().cloned().unwrap_or_default()),
                        schema: None,
                        aliased: alias.is_some(),
                        access: None,
                    });
                    return;
                }
                for h in with_hints {
                    self.expr(h);
                }
                let tref = table_ref(name);
                let is_cte =
                    tref.schema.is_none() && name.0.len() == 1 && self.ctes.contains(&tref.name);
                let access = if is_cte {
                    None
                } else {
                    Some(self.add_access(
                        tref.clone(),
                        write,
                        KeySource::Undeterminable(PENDING.to_owned()),
                    ))
                };
                rels.push(Rel {
                    visible: alias_name.unwrap_or_else(|| tref.name.clone()),
                    schema: tref.schema.clone(),
                    aliased: alias.is_some(),
                    access,
                });
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
            } => {
                let saved = self.outer_scope;
                if *lateral {
                    self.outer_scope = true;
                }
                self.query(subquery);
                self.outer_scope = saved;
                rels.push(Rel::derived(alias_name(alias).unwrap_or_default()));
            }
            TableFactor::TableFunction { expr, alias } => {
                self.expr(expr);
                rels.push(Rel::derived(alias_name(alias).unwrap_or_default()));
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                self.table_function(name, args);
                rels.push(Rel::derived(alias_name(alias).unwrap_or_default()));
            }
            TableFactor::UNNEST {
                array_exprs, alias, ..
            } => {
                self.record_function("unnest".to_owned(), None, "unnest", None);
                for e in array_exprs {
                    self.expr(e);
                }
                rels.push(Rel::derived(
                    alias_name(alias).unwrap_or_else(|| "unnest".to_owned()),
                ));
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => {
                self.table_with_joins(table_with_joins, rels, preds, write);
            }
            TableFactor::JsonTable { json_expr, .. } => self.expr(json_expr),
            TableFactor::OpenJsonTable { json_expr, .. } => self.expr(json_expr),
            TableFactor::Pivot {
                table,
                aggregate_functions,
                default_on_null,
                ..
            } => {
                self.table_factor(table, rels, preds, write);
                for a in aggregate_functions {
                    self.expr(&a.expr);
                }
                if let Some(d) = default_on_null {
                    self.expr(d);
                }
            }
            TableFactor::Unpivot { table, .. } => self.table_factor(table, rels, preds, write),
            TableFactor::MatchRecognize {
                table,
                partition_by,
                ..
            } => {
                self.table_factor(table, rels, preds, write);
                for e in partition_by {
                    self.expr(e);
                }
            }
        }
    }

    pub(super) fn table_with_joins<'q>(
        &mut self,
        twj: &'q TableWithJoins,
        rels: &mut Vec<Rel>,
        preds: &mut Vec<&'q Expr>,
        write: bool,
    ) {
        self.table_factor(&twj.relation, rels, preds, write);
        for j in &twj.joins {
            self.table_factor(&j.relation, rels, preds, false);
            let (constraint, inner) = match &j.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) => (Some(c), true),
                JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::Semi(c)
                | JoinOperator::LeftSemi(c)
                | JoinOperator::RightSemi(c)
                | JoinOperator::Anti(c)
                | JoinOperator::LeftAnti(c)
                | JoinOperator::RightAnti(c) => (Some(c), false),
                JoinOperator::AsOf {
                    match_condition,
                    constraint,
                } => {
                    self.expr(match_condition);
                    (Some(constraint), false)
                }
                JoinOperator::CrossJoin | JoinOperator::CrossApply | JoinOperator::OuterApply => {
                    (None, false)
                }
            };
            if let Some(JoinConstraint::On(e)) = constraint {
                self.expr(e);
                if inner {
                    preds.push(e);
                }
            }
        }
    }

    // ---------------------------------------------------------------- queries

    pub(crate) fn query(&mut self, q: &Query) {
        if !self.enter() {
            return;
        }
        let saved_ctes = self.ctes.len();
        if let Some(with) = &q.with {
            if with.recursive {
                for cte in &with.cte_tables {
                    self.ctes.push(norm_ident(&cte.alias.name));
                }
                for cte in &with.cte_tables {
                    self.cte(cte);
                }
            } else {
                for cte in &with.cte_tables {
                    self.cte(cte);
                    self.ctes.push(norm_ident(&cte.alias.name));
                }
            }
        }
        self.set_expr(&q.body);
        if let Some(ob) = &q.order_by {
            if let OrderByKind::Expressions(v) = &ob.kind {
                for o in v {
                    self.expr(&o.expr);
                }
            }
        }
        if let Some(l) = &q.limit {
            self.expr(l);
        }
        for e in &q.limit_by {
            self.expr(e);
        }
        if let Some(o) = &q.offset {
            self.expr(&o.value);
        }
        if let Some(f) = &q.fetch {
            if let Some(x) = &f.quantity {
                self.expr(x);
            }
        }
        if !q.locks.is_empty() {
            self.out.locking = true;
        }
        self.ctes.truncate(saved_ctes);
        self.leave();
    }

    fn cte(&mut self, cte: &Cte) {
        self.query(&cte.query);
    }

    fn set_expr(&mut self, s: &SetExpr) {
        match s {
            SetExpr::Select(sel) => self.select(sel),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            SetExpr::Values(v) => self.values(v),
            SetExpr::Insert(st) | SetExpr::Update(st) => {
                self.dml_in_query = true;
                self.statement_body(st);
            }
            SetExpr::Table(t) => {
                if let Some(name) = &t.table_name {
                    let tref = TableRef {
                        schema: t.schema_name.clone(),
                        name: name.clone(),
                    };
                    let is_cte = tref.schema.is_none() && self.ctes.contains(&tref.name);
                    if !is_cte {
                        self.add_access(
                            tref,
                            false,
                            KeySource::Undeterminable("TABLE reads every row".to_owned()),
                        );
                    }
                }
            }
        }
    }

    fn select<'q>(&mut self, s: &'q Select) {
        let mut rels = Vec::new();
        let mut preds: Vec<&'q Expr> = Vec::new();
        for twj in &s.from {
            self.table_with_joins(twj, &mut rels, &mut preds, false);
        }
        if let Some(into) = &s.into {
            self.select_into = true;
            let t = table_ref(&into.name);
            self.add_access(
                t,
                true,
                KeySource::Undeterminable("SELECT INTO creates a table".to_owned()),
            );
            if into.temporary {
                self.session(SessionEffect::Pin(PinReason::TempObject));
            }
        }
        if let Some(sqlparser::ast::Distinct::On(v)) = &s.distinct {
            for e in v {
                self.expr(e);
            }
        }
        self.select_items(&s.projection);
        for lv in &s.lateral_views {
            self.expr(&lv.lateral_view);
        }
        if let Some(e) = &s.prewhere {
            self.expr(e);
        }
        if let Some(e) = &s.selection {
            self.expr(e);
            preds.push(e);
        }
        match &s.group_by {
            GroupByExpr::Expressions(v, _) => {
                for e in v {
                    self.expr(e);
                }
            }
            GroupByExpr::All(_) => {}
        }
        for e in s
            .cluster_by
            .iter()
            .chain(&s.distribute_by)
            .chain(&s.sort_by)
        {
            self.expr(e);
        }
        if let Some(e) = &s.having {
            self.expr(e);
        }
        if let Some(e) = &s.qualify {
            self.expr(e);
        }
        for w in &s.named_window {
            if let sqlparser::ast::NamedWindowExpr::WindowSpec(spec) = &w.1 {
                self.window_spec(spec);
            }
        }
        if let Some(cb) = &s.connect_by {
            self.expr(&cb.condition);
            for e in &cb.relationships {
                self.expr(e);
            }
        }
        self.assign_predicates(&rels, &preds);
    }

    pub(super) fn values(&mut self, v: &Values) {
        for row in &v.rows {
            for e in row {
                self.expr(e);
            }
        }
    }

    /// A projection or RETURNING list.
    pub(super) fn select_items(&mut self, items: &[SelectItem]) {
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    self.expr(e)
                }
                SelectItem::QualifiedWildcard(..) | SelectItem::Wildcard(_) => {}
            }
        }
    }

    pub(super) fn window_spec(&mut self, spec: &sqlparser::ast::WindowSpec) {
        for e in &spec.partition_by {
            self.expr(e);
        }
        for o in &spec.order_by {
            self.expr(&o.expr);
        }
    }
}

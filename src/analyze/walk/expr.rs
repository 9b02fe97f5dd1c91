//! Expressions: every sub-expression is visited for functions and subqueries.

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArgumentClause, FunctionArguments, Query,
};

use super::functions::SQL_VALUE_FUNCTIONS;
use super::Walker;
use crate::analyze::types::Volatility;

impl Walker<'_> {
    pub(super) fn subquery(&mut self, q: &Query) {
        let saved = self.outer_scope;
        self.outer_scope = true;
        self.query(q);
        self.outer_scope = saved;
    }

    pub(crate) fn expr(&mut self, e: &Expr) {
        if !self.enter() {
            return;
        }
        // Walk left-deep binary chains iteratively (in source order).
        let mut cur = e;
        let mut rights: Vec<&Expr> = Vec::new();
        while let Expr::BinaryOp { left, right, .. } = cur {
            rights.push(right);
            cur = left;
        }
        self.expr_inner(cur);
        for r in rights.into_iter().rev() {
            self.expr(r);
        }
        self.leave();
    }

    fn expr_inner(&mut self, e: &Expr) {
        match e {
            Expr::Identifier(id) => {
                if id.quote_style.is_none() {
                    let lower = id.value.to_ascii_lowercase();
                    if SQL_VALUE_FUNCTIONS.contains(&lower.as_str()) {
                        self.record_function(lower.clone(), None, &lower, Some(Volatility::Stable));
                    }
                }
            }
            Expr::CompoundIdentifier(_) => {}
            Expr::CompoundFieldAccess { root, access_chain } => {
                self.expr(root);
                for a in access_chain {
                    match a {
                        sqlparser::ast::AccessExpr::Dot(x) => self.expr(x),
                        sqlparser::ast::AccessExpr::Subscript(s) => self.subscript(s),
                    }
                }
            }
            Expr::JsonAccess { value, .. } => self.expr(value),
            Expr::IsFalse(x)
            | Expr::IsNotFalse(x)
            | Expr::IsTrue(x)
            | Expr::IsNotTrue(x)
            | Expr::IsNull(x)
            | Expr::IsNotNull(x)
            | Expr::IsUnknown(x)
            | Expr::IsNotUnknown(x)
            | Expr::Nested(x)
            | Expr::OuterJoin(x)
            | Expr::Prior(x) => self.expr(x),
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                self.expr(a);
                self.expr(b);
            }
            Expr::IsNormalized { expr, .. } => self.expr(expr),
            Expr::InList { expr, list, .. } => {
                self.expr(expr);
                for x in list {
                    self.expr(x);
                }
            }
            Expr::InSubquery { expr, subquery, .. } => {
                self.expr(expr);
                self.subquery(subquery);
            }
            Expr::InUnnest {
                expr, array_expr, ..
            } => {
                self.expr(expr);
                self.expr(array_expr);
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                self.expr(expr);
                self.expr(low);
                self.expr(high);
            }
            Expr::BinaryOp { left, right, .. } => {
                self.expr(left);
                self.expr(right);
            }
            Expr::Like { expr, pattern, .. }
            | Expr::ILike { expr, pattern, .. }
            | Expr::SimilarTo { expr, pattern, .. }
            | Expr::RLike { expr, pattern, .. } => {
                self.expr(expr);
                self.expr(pattern);
            }
            Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } => {
                self.expr(left);
                self.expr(right);
            }
            Expr::UnaryOp { expr, .. } => self.expr(expr),
            Expr::Convert { expr, styles, .. } => {
                self.expr(expr);
                for s in styles {
                    self.expr(s);
                }
            }
            Expr::Cast { expr, .. } => self.expr(expr),
            Expr::AtTimeZone {
                timestamp,
                time_zone,
            } => {
                self.expr(timestamp);
                self.expr(time_zone);
            }
            Expr::Extract { expr, .. } => {
                // date_part on timestamptz depends on the TimeZone setting.
                self.record_function(
                    "extract".to_owned(),
                    None,
                    "extract",
                    Some(Volatility::Stable),
                );
                self.expr(expr);
            }
            Expr::Ceil { expr, .. } | Expr::Floor { expr, .. } => self.expr(expr),
            Expr::Position { expr, r#in } => {
                self.expr(expr);
                self.expr(r#in);
            }
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                self.expr(expr);
                if let Some(x) = substring_from {
                    self.expr(x);
                }
                if let Some(x) = substring_for {
                    self.expr(x);
                }
            }
            Expr::Trim {
                expr,
                trim_what,
                trim_characters,
                ..
            } => {
                self.expr(expr);
                if let Some(x) = trim_what {
                    self.expr(x);
                }
                if let Some(v) = trim_characters {
                    for x in v {
                        self.expr(x);
                    }
                }
            }
            Expr::Overlay {
                expr,
                overlay_what,
                overlay_from,
                overlay_for,
            } => {
                self.expr(expr);
                self.expr(overlay_what);
                self.expr(overlay_from);
                if let Some(x) = overlay_for {
                    self.expr(x);
                }
            }
            Expr::Collate { expr, .. } => self.expr(expr),
            Expr::Value(_) | Expr::IntroducedString { .. } | Expr::TypedString { .. } => {}
            Expr::Function(f) => self.function(f),
            Expr::Case {
                operand,
                conditions,
                else_result,
            } => {
                if let Some(x) = operand {
                    self.expr(x);
                }
                for c in conditions {
                    self.expr(&c.condition);
                    self.expr(&c.result);
                }
                if let Some(x) = else_result {
                    self.expr(x);
                }
            }
            Expr::Exists { subquery, .. } | Expr::Subquery(subquery) => self.subquery(subquery),
            Expr::GroupingSets(vv) | Expr::Cube(vv) | Expr::Rollup(vv) => {
                for v in vv {
                    for x in v {
                        self.expr(x);
                    }
                }
            }
            Expr::Tuple(v) => {
                for x in v {
                    self.expr(x);
                }
            }
            Expr::Struct { values, .. } => {
                for x in values {
                    self.expr(x);
                }
            }
            Expr::Named { expr, .. } => self.expr(expr),
            Expr::Dictionary(fields) => {
                for f in fields {
                    self.expr(&f.value);
                }
            }
            Expr::Map(m) => {
                for en in &m.entries {
                    self.expr(&en.key);
                    self.expr(&en.value);
                }
            }
            Expr::Array(a) => {
                for x in &a.elem {
                    self.expr(x);
                }
            }
            Expr::Interval(i) => self.expr(&i.value),
            Expr::MatchAgainst { .. } | Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => {}
            Expr::Lambda(l) => self.expr(&l.body),
        }
    }

    fn subscript(&mut self, s: &sqlparser::ast::Subscript) {
        match s {
            sqlparser::ast::Subscript::Index { index } => self.expr(index),
            sqlparser::ast::Subscript::Slice {
                lower_bound,
                upper_bound,
                stride,
            } => {
                for x in [lower_bound, upper_bound, stride].into_iter().flatten() {
                    self.expr(x);
                }
            }
        }
    }

    pub(super) fn function_arg(&mut self, a: &FunctionArg) {
        let arg = match a {
            FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg) => arg,
        };
        if let FunctionArgExpr::Expr(e) = arg {
            self.expr(e);
        }
    }

    pub(super) fn function_arguments(&mut self, args: &FunctionArguments) {
        match args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(q) => self.subquery(q),
            FunctionArguments::List(list) => {
                for a in &list.args {
                    self.function_arg(a);
                }
                for c in &list.clauses {
                    match c {
                        FunctionArgumentClause::OrderBy(v) => {
                            for o in v {
                                self.expr(&o.expr);
                            }
                        }
                        FunctionArgumentClause::Limit(e) => self.expr(e),
                        FunctionArgumentClause::Having(h) => self.expr(&h.1),
                        _ => {}
                    }
                }
            }
        }
    }
}

//! Key predicates: WHERE / ON equalities turned into a bounded DNF of column constraints,
//! attributed to the relations of a query block (what lock keys are built from).

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};
use sqlparser::tokenizer::Span;

use super::query::Rel;
use super::{is_pending, norm_ident, Walker};
use crate::analyze::keys::{Atom, Conj, Constraint, KeySource, ValueSet, MAX_DISJUNCTS, MAX_KEYS};
use crate::analyze::normalize::canonical_key_text;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawCol {
    pub(super) qual: Vec<String>,
    pub(super) name: String,
}

#[derive(Debug, Clone)]
struct RawConstraint {
    cols: Vec<RawCol>,
    values: ValueSet,
}

/// One conjunction: value constraints plus column = column equalities (used to carry a
/// constraint across a join: `pr.sku_id = p.sku_id AND p.sku_id = $1`).
#[derive(Debug, Clone, Default)]
struct RawConj {
    cons: Vec<RawConstraint>,
    eqs: Vec<(RawCol, RawCol)>,
}

impl RawConj {
    fn is_true(&self) -> bool {
        self.cons.is_empty()
    }

    fn of(cons: Vec<RawConstraint>) -> RawConj {
        RawConj {
            cons,
            eqs: Vec::new(),
        }
    }

    /// Copies single-column constraints across column equalities (to a fixpoint, bounded).
    fn propagate(&mut self) {
        if self.eqs.is_empty() {
            return;
        }
        let RawConj { cons, eqs } = self;
        for _ in 0..4 {
            let mut added = false;
            for (a, b) in eqs.iter() {
                for (from, to) in [(a, b), (b, a)] {
                    // Indices, not copies: `cons` grows while it is scanned (each constraint
                    // copied at most once per pass, as before).
                    let n = cons.len();
                    for k in 0..n {
                        let c = &cons[k];
                        if c.cols.len() != 1 || c.cols[0] != *from {
                            continue;
                        }
                        let dup = cons
                            .iter()
                            .any(|x| x.cols.len() == 1 && x.cols[0] == *to && x.values == c.values);
                        if !dup {
                            let copy = RawConstraint {
                                cols: vec![to.clone()],
                                values: c.values.clone(),
                            };
                            cons.push(copy);
                            added = true;
                        }
                    }
                }
            }
            if !added {
                break;
            }
        }
    }
}

type RawDnf = Vec<RawConj>;

fn truth() -> RawDnf {
    vec![RawConj::default()]
}

/// A DNF of one conjunction holding one constraint.
fn constraint(cols: Vec<RawCol>, values: ValueSet) -> RawDnf {
    vec![RawConj::of(vec![RawConstraint { cols, values }])]
}

fn and_dnf(a: RawDnf, b: RawDnf) -> RawDnf {
    if a.len() * b.len() > MAX_DISJUNCTS {
        // Widen the side with more disjuncts to TRUE (sound).
        return if a.len() <= b.len() { a } else { b };
    }
    // TRUE AND x = x, without copying x (every predicate list starts from TRUE).
    let is_empty = |d: &RawDnf| d.len() == 1 && d[0].cons.is_empty() && d[0].eqs.is_empty();
    if is_empty(&a) {
        return b;
    }
    if is_empty(&b) {
        return a;
    }
    // One conjunction on each side (every plain AND chain): append, no copies.
    if a.len() == 1 && b.len() == 1 {
        let mut a = a;
        let (ca, cb) = (&mut a[0], b.into_iter().next().unwrap_or_default());
        ca.cons.extend(cb.cons);
        ca.eqs.extend(cb.eqs);
        return a;
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for ca in &a {
        for cb in &b {
            let mut c = ca.clone();
            c.cons.extend(cb.cons.iter().cloned());
            c.eqs.extend(cb.eqs.iter().cloned());
            out.push(c);
        }
    }
    out
}

fn or_dnf(mut a: RawDnf, b: RawDnf) -> RawDnf {
    if a.iter().any(RawConj::is_true)
        || b.iter().any(RawConj::is_true)
        || a.len() + b.len() > MAX_DISJUNCTS
    {
        return truth();
    }
    a.extend(b);
    a
}

fn value_text(v: &Value) -> Option<String> {
    let s = match v {
        Value::Number(s, _) => s.clone(),
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::NationalStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::HexStringLiteral(s)
        | Value::SingleQuotedByteStringLiteral(s) => s.clone(),
        Value::DollarQuotedString(d) => d.value.clone(),
        Value::Boolean(b) => b.to_string(),
        _ => return None,
    };
    Some(canonical_key_text(&s).into_owned())
}

fn is_integer_number(v: &Value) -> bool {
    matches!(v, Value::Number(s, _) if s.bytes().all(|c| c.is_ascii_digit() || c == b'_'))
}

fn is_string_value(v: &Value) -> bool {
    matches!(
        v,
        Value::SingleQuotedString(_)
            | Value::EscapedStringLiteral(_)
            | Value::NationalStringLiteral(_)
            | Value::UnicodeStringLiteral(_)
            | Value::DollarQuotedString(_)
    )
}

impl Walker<'_> {
    fn slot(&self, span: &Span) -> Option<u32> {
        let l = span.start.line as u32;
        let c = span.start.column as u32;
        if l == 0 || c == 0 {
            return None;
        }
        let (gl, gc) = if l == 1 {
            (self.origin.0, self.origin.1 + c - 1)
        } else {
            (self.origin.0 + l - 1, c)
        };
        self.lits
            .binary_search_by(|x| (x.line, x.col).cmp(&(gl, gc)))
            .ok()
            .map(|i| i as u32)
    }

    pub(super) fn atom(&mut self, e: &Expr) -> Option<Atom> {
        match e {
            Expr::Value(v) => match &v.value {
                Value::Placeholder(p) => p
                    .strip_prefix('$')
                    .and_then(|n| n.parse().ok())
                    .map(Atom::Param),
                Value::Null => None,
                Value::Boolean(b) => Some(Atom::Fixed(b.to_string())),
                other => match self.slot(&v.span) {
                    Some(i) => Some(Atom::Slot { lit: i, neg: false }),
                    None => {
                        self.out.template_ok = false;
                        value_text(other).map(Atom::Fixed)
                    }
                },
            },
            // Casts are stripped from parameters, strings and integer literals only
            // (`5.7::int` is 6, not 5.7).
            Expr::Cast { expr, .. } => match &**expr {
                Expr::Value(v)
                    if matches!(v.value, Value::Placeholder(_))
                        || is_string_value(&v.value)
                        || is_integer_number(&v.value) =>
                {
                    self.atom(expr)
                }
                Expr::Cast { .. } | Expr::Nested(_) => self.atom(expr),
                _ => None,
            },
            Expr::Nested(x) => self.atom(x),
            Expr::UnaryOp {
                op: UnaryOperator::Plus,
                expr,
            } => match self.atom(expr)? {
                a @ (Atom::Slot { .. } | Atom::Fixed(_)) => Some(a),
                _ => None,
            },
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => match self.atom(expr)? {
                Atom::Slot { lit, neg } => Some(Atom::Slot { lit, neg: !neg }),
                Atom::Fixed(s) => Some(Atom::Fixed(match s.strip_prefix('-') {
                    Some(x) => x.to_owned(),
                    None => format!("-{s}"),
                })),
                _ => None,
            },
            Expr::TypedString { value, .. } => {
                self.out.template_ok = false;
                value_text(value).map(Atom::Fixed)
            }
            _ => None,
        }
    }

    // ---------------------------------------------------------------- key predicates

    fn column(e: &Expr) -> Option<RawCol> {
        match e {
            Expr::Identifier(id) => Some(RawCol {
                qual: Vec::new(),
                name: norm_ident(id),
            }),
            Expr::CompoundIdentifier(ids) if ids.len() >= 2 => Some(RawCol {
                qual: ids[..ids.len() - 1].iter().map(norm_ident).collect(),
                name: norm_ident(&ids[ids.len() - 1]),
            }),
            Expr::Nested(x) => Self::column(x),
            _ => None,
        }
    }

    fn eq_conj(&mut self, l: &Expr, r: &Expr) -> Vec<RawConstraint> {
        let (l, r) = (strip_nested(l), strip_nested(r));
        if let (Expr::Tuple(ls), Expr::Tuple(rs)) = (l, r) {
            if ls.len() != rs.len() {
                return Vec::new();
            }
            let mut pairs = Vec::new();
            for (a, b) in ls.iter().zip(rs) {
                if let Some(p) = self.col_atom(a, b) {
                    pairs.push(p);
                }
            }
            if pairs.len() == ls.len() && pairs.len() > 1 {
                let (cols, vals): (Vec<RawCol>, Vec<Atom>) = pairs.into_iter().unzip();
                return vec![RawConstraint {
                    cols,
                    values: ValueSet::Tuples(vec![vals]),
                }];
            }
            return pairs
                .into_iter()
                .map(|(c, a)| RawConstraint {
                    cols: vec![c],
                    values: ValueSet::Tuples(vec![vec![a]]),
                })
                .collect();
        }
        match self.col_atom(l, r) {
            Some((c, a)) => vec![RawConstraint {
                cols: vec![c],
                values: ValueSet::Tuples(vec![vec![a]]),
            }],
            None => Vec::new(),
        }
    }

    fn col_atom(&mut self, a: &Expr, b: &Expr) -> Option<(RawCol, Atom)> {
        if let Some(c) = Self::column(a) {
            if let Some(v) = self.atom(b) {
                return Some((c, v));
            }
        }
        if let Some(c) = Self::column(b) {
            if let Some(v) = self.atom(a) {
                return Some((c, v));
            }
        }
        None
    }

    fn atom_row(&mut self, e: &Expr, arity: usize) -> Option<Vec<Atom>> {
        match strip_nested(e) {
            Expr::Tuple(items) if items.len() == arity => {
                items.iter().map(|x| self.atom(x)).collect()
            }
            _ => None,
        }
    }

    fn leaf_dnf(&mut self, e: &Expr) -> RawDnf {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            }
            | Expr::IsNotDistinctFrom(left, right) => {
                if let (Some(a), Some(b)) = (Self::column(left), Self::column(right)) {
                    return vec![RawConj {
                        cons: Vec::new(),
                        eqs: vec![(a, b)],
                    }];
                }
                let c = self.eq_conj(left, right);
                vec![RawConj::of(c)]
            }
            Expr::InList {
                expr,
                list,
                negated: false,
            } => {
                let target = strip_nested(expr);
                if let Expr::Tuple(cols) = target {
                    let cols: Option<Vec<RawCol>> = cols.iter().map(Self::column).collect();
                    let Some(cols) = cols else { return truth() };
                    return self.value_list(cols, true, list);
                }
                let Some(col) = Self::column(target) else {
                    return truth();
                };
                self.value_list(vec![col], false, list)
            }
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => {
                let Some(col) = Self::column(left) else {
                    return truth();
                };
                let mut r: &Expr = right;
                loop {
                    match r {
                        Expr::Nested(x) => r = x,
                        Expr::Cast { expr, .. } => r = expr,
                        _ => break,
                    }
                }
                match r {
                    Expr::Value(v) => match &v.value {
                        Value::Placeholder(p) => {
                            match p.strip_prefix('$').and_then(|n| n.parse().ok()) {
                                Some(n) => constraint(
                                    vec![col],
                                    ValueSet::Tuples(vec![vec![Atom::ParamArray(n)]]),
                                ),
                                None => truth(),
                            }
                        }
                        _ => truth(),
                    },
                    // An empty `ARRAY[]` matches no row; it is left unconstrained (TRUE).
                    Expr::Array(arr) if arr.elem.is_empty() => truth(),
                    Expr::Array(arr) => self.value_list(vec![col], false, &arr.elem),
                    _ => truth(),
                }
            }
            _ => truth(),
        }
    }

    /// `cols IN (items…)`: one constraint listing every row (`TooMany` past `MAX_KEYS`), or
    /// TRUE when an item is not a literal or parameter. `tuples`: the items are row
    /// constructors of `cols.len()` values, else single values.
    fn value_list(&mut self, cols: Vec<RawCol>, tuples: bool, items: &[Expr]) -> RawDnf {
        if items.len() > MAX_KEYS {
            return constraint(cols, ValueSet::TooMany(items.len()));
        }
        let mut rows = Vec::with_capacity(items.len());
        for item in items {
            let row = if tuples {
                self.atom_row(item, cols.len())
            } else {
                self.atom(item).map(|a| vec![a])
            };
            match row {
                Some(r) => rows.push(r),
                None => return truth(),
            }
        }
        constraint(cols, ValueSet::Tuples(rows))
    }

    /// DNF of a boolean expression over equality-style constraints (iterative over AND/OR
    /// chains, so long left-deep chains do not recurse).
    fn dnf(&mut self, e: &Expr) -> RawDnf {
        enum Frame<'e> {
            Visit(&'e Expr),
            And,
            Or,
        }
        let mut stack = vec![Frame::Visit(e)];
        let mut vals: Vec<RawDnf> = Vec::new();
        while let Some(f) = stack.pop() {
            match f {
                Frame::Visit(x) => match x {
                    Expr::Nested(inner) => stack.push(Frame::Visit(inner)),
                    Expr::BinaryOp {
                        left,
                        op: BinaryOperator::And,
                        right,
                    } => {
                        stack.push(Frame::And);
                        stack.push(Frame::Visit(right));
                        stack.push(Frame::Visit(left));
                    }
                    Expr::BinaryOp {
                        left,
                        op: BinaryOperator::Or,
                        right,
                    } => {
                        stack.push(Frame::Or);
                        stack.push(Frame::Visit(right));
                        stack.push(Frame::Visit(left));
                    }
                    leaf => {
                        let d = self.leaf_dnf(leaf);
                        vals.push(d);
                    }
                },
                Frame::And => {
                    let b = vals.pop().unwrap_or_else(truth);
                    let a = vals.pop().unwrap_or_else(truth);
                    vals.push(and_dnf(a, b));
                }
                Frame::Or => {
                    let b = vals.pop().unwrap_or_else(truth);
                    let a = vals.pop().unwrap_or_else(truth);
                    vals.push(or_dnf(a, b));
                }
            }
        }
        vals.pop().unwrap_or_else(truth)
    }

    /// Gives every table relation of a block its key source from the block's predicates.
    pub(super) fn assign_predicates(&mut self, rels: &[Rel], preds: &[&Expr]) {
        if !rels.iter().any(|r| r.access.is_some()) {
            return;
        }
        let mut dnf = truth();
        for p in preds {
            let d = self.dnf(p);
            dnf = and_dnf(dnf, d);
        }
        for conj in &mut dnf {
            conj.propagate();
        }
        let single = rels.len() == 1 && !self.outer_scope;
        for rel in rels {
            let Some(ai) = rel.access else { continue };
            let conjs: Vec<Conj> = dnf
                .iter()
                .map(|conj| {
                    conj.cons
                        .iter()
                        .filter(|c| c.cols.iter().all(|col| rel.owns(col, single)))
                        .map(|c| Constraint {
                            cols: c.cols.iter().map(|x| x.name.clone()).collect(),
                            values: c.values.clone(),
                        })
                        .collect()
                })
                .collect();
            if let Some(a) = self.out.accesses.get_mut(ai) {
                if is_pending(&a.source) {
                    a.source = KeySource::Predicate {
                        dnf: conjs,
                        assigned: Vec::new(),
                    };
                }
            }
        }
    }
}

fn strip_nested(e: &Expr) -> &Expr {
    let mut e = e;
    while let Expr::Nested(x) = e {
        e = x;
    }
    e
}

//! Walks a sqlparser AST and collects the facts of one statement.

use sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, CopySource, CopyTarget, Cte, Delete,
    DiscardObject, Expr, FromTable, Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArguments, GroupByExpr, Ident, Insert, JoinConstraint, JoinOperator, MergeAction,
    MergeInsertKind, ObjectName, ObjectNamePart, ObjectType, OnConflictAction, OnInsert,
    OneOrManyWithParens, OrderByKind, Query, Select, SelectItem, SetExpr, Statement, TableFactor,
    TableObject, TableWithJoins, TransactionAccessMode, TransactionMode, UnaryOperator,
    UpdateTableFromKind, Value, WindowType,
};
use sqlparser::tokenizer::Span;

use super::catalog::FunctionCatalog;
use super::keys::{
    Atom, Conj, Constraint, KeySource, TableAccess, ValueSet, MAX_DISJUNCTS, MAX_KEYS,
};
use super::lexer::{canonical_key_text, LitSpan};
use super::types::{
    ParseMode, PinReason, SessionEffect, StatementKind, StatementSummary, TableRef, TxnControl,
    Volatility,
};

/// Facts of one statement.
#[derive(Debug, Clone)]
pub(crate) struct StmtOut {
    pub summary: StatementSummary,
    pub tables_read: Vec<TableRef>,
    pub tables_written: Vec<TableRef>,
    pub functions: Vec<String>,
    pub unknown_functions: Vec<String>,
    pub volatility: Volatility,
    pub locking: bool,
    pub reasons: Vec<String>,
    pub accesses: Vec<TableAccess>,
    pub hidden_writes: Option<String>,
    pub template_ok: bool,
    pub parse_error: Option<String>,
}

impl StmtOut {
    pub(crate) fn new(kind: StatementKind, verb: &'static str, parse: ParseMode) -> StmtOut {
        StmtOut {
            summary: StatementSummary {
                kind,
                verb,
                read_only: false,
                parse,
                txn: None,
                session: None,
            },
            tables_read: Vec::new(),
            tables_written: Vec::new(),
            functions: Vec::new(),
            unknown_functions: Vec::new(),
            volatility: Volatility::Immutable,
            locking: false,
            reasons: Vec::new(),
            accesses: Vec::new(),
            hidden_writes: None,
            template_ok: true,
            parse_error: None,
        }
    }
}

/// Volatile functions that neither write nor need a transaction id, hence run fine on a hot
/// standby: they keep a statement `read_only` (but still make it non-cacheable).
pub const REPLICA_SAFE_VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    // Read-only introspection that pg_proc marks volatile; answers on a standby by design.
    "pg_is_in_recovery",
    "pg_last_wal_replay_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_is_wal_replay_paused",
    "pg_get_wal_replay_pause_state",
];

/// SQL value functions (not in pg_proc): all stable.
const SQL_VALUE_FUNCTIONS: &[&str] = &[
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "current_user",
    "session_user",
    "user",
    "current_role",
    "current_catalog",
    "current_schema",
    "system_user",
];

/// Syntax-level functions (not in pg_proc): immutable.
const SYNTAX_FUNCTIONS: &[&str] = &["coalesce", "nullif", "greatest", "least"];

const SESSION_ADVISORY_FUNCTIONS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];
// The pg_advisory_unlock* functions only release what a session holds: pooled drivers (asyncpg)
// call pg_advisory_unlock_all() on every release, so they must not pin.

/// Built-ins that can write arbitrary tables.
const WRITING_BUILTINS: &[&str] = &["dblink", "dblink_exec"];

const MAX_WALK_DEPTH: u32 = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
struct RawCol {
    qual: Vec<String>,
    name: String,
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
        for _ in 0..4 {
            let mut added = false;
            for (a, b) in self.eqs.clone() {
                for (from, to) in [(&a, &b), (&b, &a)] {
                    let copies: Vec<RawConstraint> = self
                        .cons
                        .iter()
                        .filter(|c| c.cols.len() == 1 && c.cols[0] == *from)
                        .map(|c| RawConstraint {
                            cols: vec![to.clone()],
                            values: c.values.clone(),
                        })
                        .collect();
                    for c in copies {
                        if !self
                            .cons
                            .iter()
                            .any(|x| x.cols.len() == 1 && x.cols[0] == *to && x.values == c.values)
                        {
                            self.cons.push(c);
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

fn and_dnf(a: RawDnf, b: RawDnf) -> RawDnf {
    if a.len() * b.len() > MAX_DISJUNCTS {
        // Widen the side with more disjuncts to TRUE (sound).
        return if a.len() <= b.len() { a } else { b };
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

/// A relation visible in one query block.
#[derive(Debug, Clone)]
struct Rel {
    /// Alias, or the table's own name.
    visible: String,
    schema: Option<String>,
    aliased: bool,
    access: Option<usize>,
}

impl Rel {
    fn owns(&self, col: &RawCol, unqualified_ok: bool) -> bool {
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

pub(crate) fn norm_ident(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

fn name_parts(n: &ObjectName) -> Vec<String> {
    n.0.iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(id) => norm_ident(id),
        })
        .collect()
}

fn table_ref(n: &ObjectName) -> TableRef {
    let mut parts = name_parts(n);
    let name = parts.pop().unwrap_or_default();
    let schema = parts.pop();
    TableRef { schema, name }
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
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

/// Walker state for one statement (the pieces of a split WITH statement share one walker).
pub(crate) struct Walker<'a> {
    catalog: &'a FunctionCatalog,
    lits: &'a [LitSpan],
    /// Global (line, col) of the parsed text's first character.
    pub origin: (u32, u32),
    ctes: Vec<String>,
    depth: u32,
    /// Inside a subquery that may reference outer columns: unqualified columns are not
    /// attributed to this block's relation.
    outer_scope: bool,
    pub out: StmtOut,
    unsafe_volatile: Vec<String>,
    select_into: bool,
    pub dml_in_query: bool,
    sessions: Vec<SessionEffect>,
    too_deep: bool,
    base_ro: bool,
}

impl<'a> Walker<'a> {
    pub(crate) fn new(
        catalog: &'a FunctionCatalog,
        lits: &'a [LitSpan],
        origin: (u32, u32),
    ) -> Walker<'a> {
        Walker {
            catalog,
            lits,
            origin,
            ctes: Vec::new(),
            depth: 0,
            outer_scope: false,
            out: StmtOut::new(StatementKind::Read, "SELECT", ParseMode::Parsed),
            unsafe_volatile: Vec::new(),
            select_into: false,
            dml_in_query: false,
            sessions: Vec::new(),
            too_deep: false,
            base_ro: false,
        }
    }

    pub(crate) fn push_cte(&mut self, name: String) {
        self.ctes.push(name);
    }

    // ---------------------------------------------------------------- literal slots

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

    fn atom(&mut self, e: &Expr) -> Option<Atom> {
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
                    if list.len() > MAX_KEYS {
                        return vec![RawConj::of(vec![RawConstraint {
                            cols,
                            values: ValueSet::TooMany(list.len()),
                        }])];
                    }
                    let mut rows = Vec::with_capacity(list.len());
                    for item in list {
                        match self.atom_row(item, cols.len()) {
                            Some(r) => rows.push(r),
                            None => return truth(),
                        }
                    }
                    return vec![RawConj::of(vec![RawConstraint {
                        cols,
                        values: ValueSet::Tuples(rows),
                    }])];
                }
                let Some(col) = Self::column(target) else {
                    return truth();
                };
                if list.len() > MAX_KEYS {
                    return vec![RawConj::of(vec![RawConstraint {
                        cols: vec![col],
                        values: ValueSet::TooMany(list.len()),
                    }])];
                }
                let mut rows = Vec::with_capacity(list.len());
                for item in list {
                    match self.atom(item) {
                        Some(a) => rows.push(vec![a]),
                        None => return truth(),
                    }
                }
                vec![RawConj::of(vec![RawConstraint {
                    cols: vec![col],
                    values: ValueSet::Tuples(rows),
                }])]
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
                                Some(n) => vec![RawConj::of(vec![RawConstraint {
                                    cols: vec![col],
                                    values: ValueSet::Tuples(vec![vec![Atom::ParamArray(n)]]),
                                }])],
                                None => truth(),
                            }
                        }
                        _ => truth(),
                    },
                    Expr::Array(arr) => {
                        if arr.elem.len() > MAX_KEYS {
                            return vec![RawConj::of(vec![RawConstraint {
                                cols: vec![col],
                                values: ValueSet::TooMany(arr.elem.len()),
                            }])];
                        }
                        let mut rows = Vec::with_capacity(arr.elem.len());
                        for item in &arr.elem {
                            match self.atom(item) {
                                Some(a) => rows.push(vec![a]),
                                None => return truth(),
                            }
                        }
                        if rows.is_empty() {
                            return truth();
                        }
                        vec![RawConj::of(vec![RawConstraint {
                            cols: vec![col],
                            values: ValueSet::Tuples(rows),
                        }])]
                    }
                    _ => truth(),
                }
            }
            _ => truth(),
        }
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
    fn assign_predicates(&mut self, rels: &[Rel], preds: &[&Expr]) {
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
                if matches!(&a.source, KeySource::Undeterminable(r) if r == PENDING) {
                    a.source = KeySource::Predicate {
                        dnf: conjs,
                        assigned: Vec::new(),
                    };
                }
            }
        }
    }

    // ---------------------------------------------------------------- relations

    fn add_access(&mut self, table: TableRef, write: bool, source: KeySource) -> usize {
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

    fn table_factor<'q>(
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
                let alias_name = alias.as_ref().map(|a| norm_ident(&a.name));
                if let Some(args) = args {
                    // A set-returning function written like a table: `FROM generate_series(1, 3)`.
                    self.record_function_name(name, &args.args);
                    for a in &args.args {
                        self.function_arg(a);
                    }
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
                rels.push(Rel {
                    visible: alias
                        .as_ref()
                        .map(|a| norm_ident(&a.name))
                        .unwrap_or_default(),
                    schema: None,
                    aliased: true,
                    access: None,
                });
            }
            TableFactor::TableFunction { expr, alias } => {
                self.expr(expr);
                rels.push(Rel {
                    visible: alias
                        .as_ref()
                        .map(|a| norm_ident(&a.name))
                        .unwrap_or_default(),
                    schema: None,
                    aliased: true,
                    access: None,
                });
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                self.record_function_name(name, args);
                for a in args {
                    self.function_arg(a);
                }
                rels.push(Rel {
                    visible: alias
                        .as_ref()
                        .map(|a| norm_ident(&a.name))
                        .unwrap_or_default(),
                    schema: None,
                    aliased: true,
                    access: None,
                });
            }
            TableFactor::UNNEST {
                array_exprs, alias, ..
            } => {
                self.record_function("unnest".to_owned(), None, "unnest", None);
                for e in array_exprs {
                    self.expr(e);
                }
                rels.push(Rel {
                    visible: alias
                        .as_ref()
                        .map(|a| norm_ident(&a.name))
                        .unwrap_or_else(|| "unnest".to_owned()),
                    schema: None,
                    aliased: true,
                    access: None,
                });
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

    fn table_with_joins<'q>(
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
            SetExpr::Values(v) => {
                for row in &v.rows {
                    for e in row {
                        self.expr(e);
                    }
                }
            }
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
        for item in &s.projection {
            self.select_item(item);
        }
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

    fn select_item(&mut self, item: &SelectItem) {
        match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => self.expr(e),
            SelectItem::QualifiedWildcard(..) | SelectItem::Wildcard(_) => {}
        }
    }

    fn window_spec(&mut self, spec: &sqlparser::ast::WindowSpec) {
        for e in &spec.partition_by {
            self.expr(e);
        }
        for o in &spec.order_by {
            self.expr(&o.expr);
        }
    }

    // ---------------------------------------------------------------- expressions

    fn enter(&mut self) -> bool {
        self.depth += 1;
        if self.depth > MAX_WALK_DEPTH {
            self.too_deep = true;
            self.depth -= 1;
            return false;
        }
        true
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn subquery(&mut self, q: &Query) {
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

    fn function_arg(&mut self, a: &FunctionArg) {
        let arg = match a {
            FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg) => arg,
        };
        if let FunctionArgExpr::Expr(e) = arg {
            self.expr(e);
        }
    }

    fn function_arguments(&mut self, args: &FunctionArguments) {
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

    fn function(&mut self, f: &Function) {
        let args: &[FunctionArg] = match &f.args {
            FunctionArguments::List(l) => &l.args,
            _ => &[],
        };
        let parts = name_parts(&f.name);
        let fixed = if parts.len() == 1 {
            let n = parts[0].as_str();
            if SQL_VALUE_FUNCTIONS.contains(&n) && args.is_empty() {
                Some(Volatility::Stable)
            } else if SYNTAX_FUNCTIONS.contains(&n) {
                Some(Volatility::Immutable)
            } else {
                None
            }
        } else {
            None
        };
        let display = parts.join(".");
        let (schema, name) = match parts.len() {
            1 => (None, parts[0].as_str()),
            n => (Some(parts[n - 2].as_str()), parts[n - 1].as_str()),
        };
        self.record_function(display.clone(), schema, name, fixed);
        let builtin_scope = schema.is_none() || schema == Some("pg_catalog");
        if builtin_scope && SESSION_ADVISORY_FUNCTIONS.contains(&name) {
            self.session(SessionEffect::Pin(PinReason::AdvisoryLock));
        }
        if builtin_scope && name == "set_config" {
            let effect = self.set_config_effect(args);
            self.session(effect);
        }
        self.function_arguments(&f.parameters);
        self.function_arguments(&f.args);
        if let Some(x) = &f.filter {
            self.expr(x);
        }
        if let Some(WindowType::WindowSpec(spec)) = &f.over {
            self.window_spec(spec);
        }
        for o in &f.within_group {
            self.expr(&o.expr);
        }
    }

    /// `set_config(name, value, is_local)` with literal arguments is an ordinary SET.
    fn set_config_effect(&mut self, args: &[FunctionArg]) -> SessionEffect {
        let lit = |a: &FunctionArg| -> Option<Value> {
            if let FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) = a {
                let mut e = e;
                while let Expr::Cast { expr, .. } | Expr::Nested(expr) = e {
                    e = expr;
                }
                if let Expr::Value(v) = e {
                    return Some(v.value.clone());
                }
            }
            None
        };
        if args.len() == 3 {
            if let (Some(n), Some(v), Some(l)) = (lit(&args[0]), lit(&args[1]), lit(&args[2])) {
                let name = match &n {
                    Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                        Some(s.to_ascii_lowercase())
                    }
                    _ => None,
                };
                let value = match &v {
                    Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                        Some(quote_literal(s))
                    }
                    _ => None,
                };
                let local = match &l {
                    Value::Boolean(b) => Some(*b),
                    Value::SingleQuotedString(s) => match s.to_ascii_lowercase().as_str() {
                        "t" | "true" | "on" | "yes" | "1" => Some(true),
                        "f" | "false" | "off" | "no" | "0" => Some(false),
                        _ => None,
                    },
                    _ => None,
                };
                if let (Some(name), Some(value), Some(local)) = (name, value, local) {
                    return SessionEffect::Set { name, value, local };
                }
            }
        }
        SessionEffect::Pin(PinReason::UntrackedSetting)
    }

    fn record_function_name(&mut self, name: &ObjectName, _args: &[FunctionArg]) {
        let parts = name_parts(name);
        let display = parts.join(".");
        let (schema, n) = match parts.len() {
            1 => (None, parts[0].as_str()),
            k => (Some(parts[k - 2].as_str()), parts[k - 1].as_str()),
        };
        self.record_function(display.clone(), schema, n, None);
    }

    fn record_function(
        &mut self,
        display: String,
        schema: Option<&str>,
        name: &str,
        fixed: Option<Volatility>,
    ) {
        let (vol, known) = match fixed {
            Some(v) => (v, true),
            None => match self.catalog.lookup(schema, name) {
                Some(v) => (v, true),
                None => (Volatility::Volatile, false),
            },
        };
        self.out.volatility = self.out.volatility.max(vol);
        if !known {
            push_unique(&mut self.out.unknown_functions, display.clone());
        }
        let builtin_scope = schema.is_none() || schema == Some("pg_catalog");
        if vol == Volatility::Volatile && !(builtin_scope && REPLICA_SAFE_VOLATILE.contains(&name))
        {
            push_unique(&mut self.unsafe_volatile, display.clone());
            let in_pg_catalog =
                builtin_scope && self.catalog.lookup(Some("pg_catalog"), name).is_some();
            if (!known || !in_pg_catalog || WRITING_BUILTINS.contains(&name))
                && self.out.hidden_writes.is_none()
            {
                self.out.hidden_writes = Some(format!(
                    "{} function {display} may write tables the analyzer cannot see",
                    if known { "volatile" } else { "unknown" }
                ));
            }
        }
        push_unique(&mut self.out.functions, display);
    }

    fn session(&mut self, e: SessionEffect) {
        self.sessions.push(e);
    }

    // ---------------------------------------------------------------- DML

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
    fn statement_body(&mut self, st: &Statement) {
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
                self.out
                    .hidden_writes
                    .get_or_insert_with(|| "unsupported statement inside WITH".to_owned());
            }
        }
    }

    fn insert(&mut self, ins: &Insert) {
        let target = match &ins.table {
            TableObject::TableName(n) => table_ref(n),
            TableObject::TableFunction(f) => {
                self.function(f);
                self.out
                    .hidden_writes
                    .get_or_insert_with(|| "INSERT INTO a table function".to_owned());
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
            for i in r {
                self.select_item(i);
            }
        }
        self.add_access(target, true, source);
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
        let first_access = self.out.accesses.len();
        self.table_factor(&table.relation, &mut rels, &mut preds, true);
        let target_access = if self.out.accesses.len() > first_access {
            Some(first_access)
        } else {
            None
        };
        for j in &table.joins {
            self.table_factor(&j.relation, &mut rels, &mut preds, false);
        }
        if let Some(UpdateTableFromKind::BeforeSet(v) | UpdateTableFromKind::AfterSet(v)) = from {
            for twj in v {
                self.table_with_joins(twj, &mut rels, &mut preds, false);
            }
        }
        let mut assigned = Vec::new();
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
        if let Some(e) = selection {
            self.expr(e);
            preds.push(e);
        }
        if let Some(r) = returning {
            for i in r {
                self.select_item(i);
            }
        }
        self.assign_predicates(&rels, &preds);
        if let Some(ai) = target_access {
            if let Some(KeySource::Predicate { assigned: slot, .. }) =
                self.out.accesses.get_mut(ai).map(|a| &mut a.source)
            {
                *slot = assigned;
            }
        }
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
            for i in r {
                self.select_item(i);
            }
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
        self.table_factor(table, &mut rels, &mut preds, true);
        let target_access = if self.out.accesses.len() > first_access {
            Some(first_access)
        } else {
            None
        };
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
                        for row in &v.rows {
                            for e in row {
                                self.expr(e);
                            }
                        }
                    }
                }
                MergeAction::Update { assignments } => {
                    for a in assignments {
                        self.expr(&a.value);
                        let cols = assignment_columns(a);
                        let atom = if cols.len() == 1 {
                            self.atom(&a.value)
                        } else {
                            None
                        };
                        for col in cols {
                            assigned.push((col, atom.clone()));
                        }
                    }
                }
                MergeAction::Delete => {}
            }
        }
        // Attribute ON constraints to the target: qualified refs only (two relations in scope).
        rels.push(Rel {
            visible: String::from("\u{0}source"),
            schema: None,
            aliased: true,
            access: None,
        });
        self.assign_predicates(&rels, &[on]);
        // Source-table read accesses keep an undeterminable source.
        for a in self.out.accesses.iter_mut().skip(first_access) {
            if matches!(&a.source, KeySource::Undeterminable(r) if r == PENDING) {
                a.source = KeySource::Undeterminable("MERGE source".to_owned());
            }
        }
        if let Some(ai) = target_access {
            if let Some(a) = self.out.accesses.get_mut(ai) {
                if has_insert {
                    a.source = KeySource::Undeterminable(
                        "MERGE … WHEN NOT MATCHED THEN INSERT".to_owned(),
                    );
                } else if let KeySource::Predicate { assigned: slot, .. } = &mut a.source {
                    *slot = assigned;
                }
            }
        }
    }

    // ---------------------------------------------------------------- statements

    /// Walks one top-level statement and classifies it.
    pub(crate) fn statement(&mut self, st: &Statement) {
        let (kind, verb, base_ro) = self.classify(st);
        self.out.summary.kind = kind;
        self.out.summary.verb = verb;
        self.base_ro = base_ro;
    }

    fn classify(&mut self, st: &Statement) -> (StatementKind, &'static str, bool) {
        use StatementKind as K;
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
            Statement::StartTransaction { modes, .. } => {
                let t = TxnControl::Begin {
                    read_only: access_mode(modes),
                };
                self.out.summary.txn = Some(t.clone());
                (K::Transaction(t), "BEGIN", false)
            }
            Statement::SetTransaction { modes, session, .. } => {
                if *session {
                    let effect = match modes.as_slice() {
                        [TransactionMode::AccessMode(m)] => SessionEffect::Set {
                            name: "default_transaction_read_only".to_owned(),
                            value: if *m == TransactionAccessMode::ReadOnly {
                                "on"
                            } else {
                                "off"
                            }
                            .to_owned(),
                            local: false,
                        },
                        [TransactionMode::IsolationLevel(l)] => SessionEffect::Set {
                            name: "default_transaction_isolation".to_owned(),
                            value: quote_literal(&l.to_string().to_ascii_lowercase()),
                            local: false,
                        },
                        _ => SessionEffect::Pin(PinReason::UntrackedSetting),
                    };
                    self.session(effect.clone());
                    (K::Session(effect), "SET", false)
                } else {
                    let t = TxnControl::SetTransaction {
                        read_only: access_mode(modes),
                    };
                    self.out.summary.txn = Some(t.clone());
                    (K::Transaction(t), "SET", false)
                }
            }
            Statement::Commit { .. } => self.txn(TxnControl::Commit, "COMMIT"),
            Statement::Rollback { savepoint, .. } => {
                if savepoint.is_some() {
                    self.txn(TxnControl::RollbackTo, "ROLLBACK")
                } else {
                    self.txn(TxnControl::Rollback, "ROLLBACK")
                }
            }
            Statement::Savepoint { .. } => self.txn(TxnControl::Savepoint, "SAVEPOINT"),
            Statement::ReleaseSavepoint { .. } => self.txn(TxnControl::Release, "RELEASE"),
            Statement::SetVariable {
                local,
                variables,
                value,
                ..
            } => {
                let effect = match variables {
                    OneOrManyWithParens::One(name) => {
                        let name = name_parts(name).join(".").to_ascii_lowercase();
                        set_effect(name, value, *local)
                    }
                    OneOrManyWithParens::Many(_) => SessionEffect::Pin(PinReason::UntrackedSetting),
                };
                self.session_stmt(effect, "SET")
            }
            Statement::SetTimeZone { local, value } => {
                let effect = set_effect("timezone".to_owned(), std::slice::from_ref(value), *local);
                self.session_stmt(effect, "SET")
            }
            Statement::SetNames { charset_name, .. } => {
                let effect = SessionEffect::Set {
                    name: "client_encoding".to_owned(),
                    value: quote_literal(charset_name),
                    local: false,
                };
                self.session_stmt(effect, "SET")
            }
            Statement::SetNamesDefault {} => self.session_stmt(
                SessionEffect::Reset {
                    name: "client_encoding".to_owned(),
                },
                "SET",
            ),
            Statement::SetRole {
                context_modifier,
                role_name,
            } => {
                let effect = match (context_modifier, role_name) {
                    (sqlparser::ast::ContextModifier::Local, r) => SessionEffect::Set {
                        name: "role".to_owned(),
                        value: r.as_ref().map_or("none".to_owned(), |r| r.to_string()),
                        local: true,
                    },
                    (_, None) => SessionEffect::Reset {
                        name: "role".to_owned(),
                    },
                    (_, Some(_)) => SessionEffect::Pin(PinReason::Role),
                };
                self.session_stmt(effect, "SET")
            }
            Statement::Discard { object_type } => {
                let effect = match object_type {
                    DiscardObject::ALL => SessionEffect::ResetAll,
                    DiscardObject::PLANS => SessionEffect::Discard("plans".to_owned()),
                    DiscardObject::SEQUENCES => SessionEffect::Discard("sequences".to_owned()),
                    DiscardObject::TEMP => SessionEffect::Discard("temp".to_owned()),
                };
                self.session_stmt(effect, "DISCARD")
            }
            Statement::LISTEN { .. } => {
                self.session_stmt(SessionEffect::Pin(PinReason::Listen), "LISTEN")
            }
            // Only drops subscriptions (asyncpg runs `UNLISTEN *` on every pool release): no pin.
            Statement::UNLISTEN { .. } => {
                self.session_stmt(SessionEffect::Discard("listen".to_owned()), "UNLISTEN")
            }
            Statement::NOTIFY { .. } => (K::Write, "NOTIFY", false),
            Statement::Load { .. } => {
                self.session_stmt(SessionEffect::Pin(PinReason::Load), "LOAD")
            }
            Statement::Prepare { .. } => {
                self.session_stmt(SessionEffect::Pin(PinReason::PreparedStatement), "PREPARE")
            }
            Statement::Execute {
                parameters, using, ..
            } => {
                for p in parameters {
                    self.expr(p);
                }
                for u in using {
                    self.expr(&u.expr);
                }
                self.out
                    .hidden_writes
                    .get_or_insert_with(|| "EXECUTE of an SQL prepared statement".to_owned());
                self.session_stmt(SessionEffect::Pin(PinReason::PreparedStatement), "EXECUTE")
            }
            Statement::Deallocate { .. } => self.session_stmt(
                SessionEffect::Pin(PinReason::PreparedStatement),
                "DEALLOCATE",
            ),
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
                self.out
                    .hidden_writes
                    .get_or_insert_with(|| "CALL of a procedure".to_owned());
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
            Statement::ShowFunctions { .. }
            | Statement::ShowVariable { .. }
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

    fn txn(&mut self, t: TxnControl, verb: &'static str) -> (StatementKind, &'static str, bool) {
        self.out.summary.txn = Some(t.clone());
        (StatementKind::Transaction(t), verb, false)
    }

    fn session_stmt(
        &mut self,
        e: SessionEffect,
        verb: &'static str,
    ) -> (StatementKind, &'static str, bool) {
        self.session(e.clone());
        (StatementKind::Session(e), verb, false)
    }

    /// Finishes the statement: read-only decision, reasons, session summary.
    pub(crate) fn finish(mut self) -> StmtOut {
        let mut reasons = Vec::new();
        let kind = self.out.summary.kind.clone();
        if !self.base_ro {
            reasons.push(format!(
                "{} is {}",
                self.out.summary.verb,
                describe_kind(&kind)
            ));
        }
        if self.out.locking {
            reasons.push("locking clause (FOR UPDATE / FOR SHARE) or LOCK".to_owned());
        }
        if self.select_into {
            reasons.push("SELECT INTO creates a table".to_owned());
        }
        if self.dml_in_query {
            reasons.push("data-modifying statement inside WITH".to_owned());
        }
        for f in &self.unsafe_volatile {
            reasons.push(format!("volatile function {f}"));
        }
        if !self.sessions.is_empty() && self.base_ro {
            for s in &self.sessions {
                reasons.push(format!("session effect: {s}"));
            }
        }
        if self.too_deep {
            reasons.push("expression nesting too deep to analyze".to_owned());
            self.out.template_ok = false;
            self.out
                .hidden_writes
                .get_or_insert_with(|| "statement too deeply nested to analyze".to_owned());
        }
        self.out.summary.read_only = reasons.is_empty();
        self.out.reasons = reasons;
        // Pending key sources that were never resolved (should not happen) become undeterminable.
        for a in &mut self.out.accesses {
            if matches!(&a.source, KeySource::Undeterminable(r) if r == PENDING) {
                a.source =
                    KeySource::Undeterminable("relation without predicate analysis".to_owned());
            }
        }
        let first_pin = self.sessions.iter().position(SessionEffect::is_pin);
        self.out.summary.session = match first_pin {
            Some(i) => Some(self.sessions[i].clone()),
            None => self.sessions.first().cloned(),
        };
        if self
            .sessions
            .iter()
            .any(|s| matches!(s, SessionEffect::Set { .. } | SessionEffect::Reset { .. }))
        {
            self.out.template_ok = false;
        }
        self.out
    }
}

const PENDING: &str = "\u{0}pending";

fn describe_kind(k: &StatementKind) -> &'static str {
    match k {
        StatementKind::Read => "a read that is not plannable here",
        StatementKind::Write => "a write",
        StatementKind::Ddl => "DDL",
        StatementKind::Transaction(_) => "transaction control",
        StatementKind::Session(_) => "a session command",
        StatementKind::Utility => "a utility command",
        StatementKind::Unknown => "not understood",
    }
}

fn strip_nested(e: &Expr) -> &Expr {
    let mut e = e;
    while let Expr::Nested(x) = e {
        e = x;
    }
    e
}

fn assignment_columns(a: &Assignment) -> Vec<String> {
    match &a.target {
        AssignmentTarget::ColumnName(n) => name_parts(n).pop().into_iter().collect(),
        AssignmentTarget::Tuple(v) => v.iter().filter_map(|n| name_parts(n).pop()).collect(),
    }
}

fn access_mode(modes: &[TransactionMode]) -> Option<bool> {
    let mut ro = None;
    for m in modes {
        if let TransactionMode::AccessMode(a) = m {
            ro = Some(*a == TransactionAccessMode::ReadOnly);
        }
    }
    ro
}

pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `SET name = value…` → the session effect (DEFAULT / LOCAL time zone → reset).
fn set_effect(name: String, value: &[Expr], local: bool) -> SessionEffect {
    // `SET TIME ZONE INTERVAL '…' HOUR TO MINUTE` has no `SET timezone TO …` equivalent.
    if value.iter().any(|v| matches!(v, Expr::Interval(_))) {
        return SessionEffect::Pin(PinReason::UntrackedSetting);
    }
    if let [Expr::Identifier(id)] = value {
        if id.quote_style.is_none()
            && (id.value.eq_ignore_ascii_case("default")
                || (name == "timezone" && id.value.eq_ignore_ascii_case("local")))
        {
            // `SET LOCAL x TO DEFAULT` only lasts until the end of the transaction.
            if local {
                return SessionEffect::Set {
                    name,
                    value: "DEFAULT".to_owned(),
                    local,
                };
            }
            return SessionEffect::Reset { name };
        }
    }
    if !local {
        match name.as_str() {
            "role" => return SessionEffect::Pin(PinReason::Role),
            "session_authorization" => return SessionEffect::Pin(PinReason::SessionAuthorization),
            _ => {}
        }
    }
    let value = value
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    SessionEffect::Set { name, value, local }
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

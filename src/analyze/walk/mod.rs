//! Walks a sqlparser AST and collects the facts of one statement.
//!
//! One `Walker` per statement; its methods are spread over one file per concern:
//! `statement` (top-level classification), `session` (transaction control and session
//! commands), `ddl`, `dml` (INSERT / UPDATE / DELETE / MERGE), `query` (query blocks and the
//! relations they see), `expr` (expressions), `functions` (volatility and session effects of
//! calls) and `predicates` (the equality constraints lock keys are built from).

mod ddl;
mod dml;
mod expr;
mod functions;
mod predicates;
mod query;
mod session;
mod statement;

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

use super::catalog::FunctionCatalog;
use super::keys::{KeySource, TableAccess};
use super::lexer::LitSpan;
use super::types::{
    ParseMode, SessionEffect, StatementKind, StatementSummary, TableRef, Volatility,
};

pub use functions::REPLICA_SAFE_VOLATILE;
pub(crate) use session::quote_literal;

/// What classifying a statement yields: its kind, its command verb, and whether it is
/// read-only before the walk's findings (volatile functions, locking, ...) are counted.
type Class = (StatementKind, &'static str, bool);

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

const MAX_WALK_DEPTH: u32 = 256;

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
    /// Questions whose answer differs on a hot standby (`pg_is_in_recovery()`, `SHOW
    /// transaction_read_only`, …): applications ask them to check that they reach the primary.
    asks_primary: Vec<String>,
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
            asks_primary: Vec::new(),
        }
    }

    pub(crate) fn push_cte(&mut self, name: String) {
        self.ctes.push(name);
    }

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

    /// Records why the statement may write tables the analyzer cannot see (the first reason
    /// is the one reported).
    fn hidden_write(&mut self, why: &str) {
        self.out.hidden_writes.get_or_insert_with(|| why.to_owned());
    }

    /// The statement asks something a hot standby answers differently (see `asks_primary`).
    fn asks_primary(&mut self, what: String) {
        push_unique(&mut self.asks_primary, what);
    }

    fn session(&mut self, e: SessionEffect) {
        self.sessions.push(e);
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
        for q in &self.asks_primary {
            reasons.push(format!("{q} is answered as the primary would"));
        }
        if self.too_deep {
            reasons.push("expression nesting too deep to analyze".to_owned());
            self.out.template_ok = false;
            self.hidden_write("statement too deeply nested to analyze");
        }
        self.out.summary.read_only = reasons.is_empty();
        self.out.reasons = reasons;
        // Pending key sources that were never resolved (should not happen) become undeterminable.
        for a in &mut self.out.accesses {
            if is_pending(&a.source) {
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

/// Marks a table access whose key source its query block has yet to assign.
const PENDING: &str = "\u{0}pending";

fn is_pending(source: &KeySource) -> bool {
    matches!(source, KeySource::Undeterminable(r) if r == PENDING)
}

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

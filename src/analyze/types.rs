//! Public result types of statement analysis.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::hints::Hints;
use super::keys::TableAccess;
use super::lexer::LitSpan;

/// Function volatility, ordered like Postgres' `provolatile`: `Immutable < Stable < Volatile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Default)]
pub enum Volatility {
    /// Same result for the same arguments, forever (`provolatile = 'i'`).
    #[default]
    Immutable,
    /// Same result within one statement (`provolatile = 's'`): `now()`, `current_user`, …
    Stable,
    /// Anything else (`provolatile = 'v'`), and every function unknown to the catalog.
    Volatile,
}

impl Volatility {
    /// Maps `pg_proc.provolatile` (`'i'`, `'s'`, `'v'`); anything else is `Volatile`.
    pub fn from_provolatile(c: char) -> Volatility {
        match c {
            'i' | 'I' => Volatility::Immutable,
            's' | 'S' => Volatility::Stable,
            _ => Volatility::Volatile,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Volatility::Immutable => "immutable",
            Volatility::Stable => "stable",
            Volatility::Volatile => "volatile",
        }
    }
}

/// A table (or view, matview, …) reference normalized like Postgres does: unquoted identifiers
/// are lower-cased, quoted identifiers are kept verbatim (without the quotes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TableRef {
    pub schema: Option<String>,
    pub name: String,
}

impl TableRef {
    pub fn new(schema: Option<&str>, name: &str) -> TableRef {
        TableRef {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    /// Parses `name`, `schema.name`, `"Quoted"."Name"` the way Postgres would read it in SQL text
    /// (unquoted parts lower-cased). A three-part `db.schema.name` keeps the last two parts.
    pub fn parse(text: &str) -> TableRef {
        let parts = split_qualified(text);
        match parts.len() {
            0 => TableRef {
                schema: None,
                name: String::new(),
            },
            1 => TableRef {
                schema: None,
                name: parts.into_iter().next().unwrap(),
            },
            n => {
                let mut it = parts.into_iter().skip(n - 2);
                let schema = it.next();
                let name = it.next().unwrap_or_default();
                TableRef { schema, name }
            }
        }
    }

    /// True when `self` and `other` may denote the same relation: names equal and, when both
    /// carry a schema, schemas equal. An unqualified reference matches any schema (the search
    /// path is not known to the analyzer).
    pub fn matches(&self, other: &TableRef) -> bool {
        self.name == other.name
            && match (&self.schema, &other.schema) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// `pg_catalog`, `information_schema`, any `pg_*` schema (`pg_toast`, `pg_temp_3`, …) or
    /// an unqualified `pg_*` relation (which resolves to `pg_catalog` first).
    pub fn is_system_catalog(&self) -> bool {
        match &self.schema {
            Some(s) => s == "information_schema" || s.starts_with("pg_"),
            None => self.name.starts_with("pg_"),
        }
    }
}

fn split_qualified(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = text.trim().chars().peekable();
    let mut quoted_part = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted_part = true;
                while let Some(q) = chars.next() {
                    if q == '"' {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            cur.push('"');
                        } else {
                            break;
                        }
                    } else {
                        cur.push(q);
                    }
                }
            }
            '.' => {
                parts.push(std::mem::take(&mut cur));
                quoted_part = false;
            }
            c if c.is_whitespace() => {}
            c => {
                if quoted_part {
                    cur.push(c);
                } else {
                    cur.extend(c.to_lowercase());
                }
            }
        }
    }
    parts.push(cur);
    parts
}

fn needs_quotes(ident: &str) -> bool {
    let mut chars = ident.chars();
    match chars.next() {
        None => true,
        Some(c) if !(c.is_ascii_lowercase() || c == '_' || !c.is_ascii()) => true,
        _ => !ident.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$' || !c.is_ascii()
        }),
    }
}

fn write_ident(f: &mut fmt::Formatter<'_>, ident: &str) -> fmt::Result {
    if needs_quotes(ident) {
        write!(f, "\"{}\"", ident.replace('"', "\"\""))
    } else {
        f.write_str(ident)
    }
}

impl fmt::Display for TableRef {
    /// Renders as SQL would need it: `schema.name`, quoting parts that are not plain lower-case.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.schema {
            write_ident(f, s)?;
            f.write_str(".")?;
        }
        write_ident(f, &self.name)
    }
}

/// Transaction-control statements.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum TxnControl {
    /// `BEGIN`, `START TRANSACTION`, with `READ ONLY` → `Some(true)`, `READ WRITE` → `Some(false)`.
    Begin {
        read_only: Option<bool>,
        /// `ISOLATION LEVEL SERIALIZABLE`: hot standbys refuse it, so it runs on the primary
        /// even when read-only.
        serializable: bool,
    },
    /// `SET TRANSACTION …` (inside a transaction).
    SetTransaction {
        read_only: Option<bool>,
    },
    /// `COMMIT`, `END`, `COMMIT AND CHAIN`.
    Commit,
    /// `ROLLBACK`, `ABORT`, `ROLLBACK AND CHAIN`.
    Rollback,
    Savepoint,
    /// `RELEASE [SAVEPOINT] x`.
    Release,
    /// `ROLLBACK TO [SAVEPOINT] x`.
    RollbackTo,
    /// `PREPARE TRANSACTION 'gid'` (two-phase commit: primary only).
    PrepareTransaction,
    /// `COMMIT PREPARED 'gid'` (primary only).
    CommitPrepared,
    /// `ROLLBACK PREPARED 'gid'` (primary only).
    RollbackPrepared,
}

impl TxnControl {
    /// Two-phase-commit statements, which must always run on the primary.
    pub fn is_two_phase(&self) -> bool {
        matches!(
            self,
            TxnControl::PrepareTransaction
                | TxnControl::CommitPrepared
                | TxnControl::RollbackPrepared
        )
    }
}

impl fmt::Display for TxnControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ro = |r: &Option<bool>| match r {
            Some(true) => " read only",
            Some(false) => " read write",
            None => "",
        };
        match self {
            TxnControl::Begin {
                read_only,
                serializable,
            } => write!(
                f,
                "begin{}{}",
                if *serializable { " serializable" } else { "" },
                ro(read_only)
            ),
            TxnControl::SetTransaction { read_only } => {
                write!(f, "set transaction{}", ro(read_only))
            }
            TxnControl::Commit => f.write_str("commit"),
            TxnControl::Rollback => f.write_str("rollback"),
            TxnControl::Savepoint => f.write_str("savepoint"),
            TxnControl::Release => f.write_str("release savepoint"),
            TxnControl::RollbackTo => f.write_str("rollback to savepoint"),
            TxnControl::PrepareTransaction => f.write_str("prepare transaction"),
            TxnControl::CommitPrepared => f.write_str("commit prepared"),
            TxnControl::RollbackPrepared => f.write_str("rollback prepared"),
        }
    }
}

/// Why a client session must stay on one backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum PinReason {
    /// `CREATE TEMP TABLE/VIEW/SEQUENCE`, `SELECT … INTO TEMP`.
    TempObject,
    /// `LISTEN` / `UNLISTEN`.
    Listen,
    /// Session-level advisory locks: `pg_advisory_lock[_shared]`, `pg_try_advisory_lock[_shared]`,
    /// `pg_advisory_unlock*` (not the `_xact_` variants).
    AdvisoryLock,
    /// `DECLARE … CURSOR WITH HOLD`.
    HoldCursor,
    /// SQL-level `PREPARE` / `EXECUTE` / `DEALLOCATE`.
    PreparedStatement,
    /// `LOAD 'library'`.
    Load,
    /// `SET [SESSION] ROLE …` (not `SET LOCAL ROLE`).
    Role,
    /// `SET [SESSION] SESSION AUTHORIZATION …`.
    SessionAuthorization,
    /// `set_config(…)` whose arguments are not all literals, or a SET form the analyzer could
    /// not turn into a name/value pair.
    UntrackedSetting,
}

impl PinReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PinReason::TempObject => "temp object",
            PinReason::Listen => "listen",
            PinReason::AdvisoryLock => "session advisory lock",
            PinReason::HoldCursor => "cursor with hold",
            PinReason::PreparedStatement => "sql prepared statement",
            PinReason::Load => "load",
            PinReason::Role => "set role",
            PinReason::SessionAuthorization => "set session authorization",
            PinReason::UntrackedSetting => "untracked setting",
        }
    }
}

/// Session state a pooler must track (and replay) or pin on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum SessionEffect {
    /// `SET [SESSION|LOCAL] name {TO|=} value`. `name` is lower-cased (`SET TIME ZONE` →
    /// `timezone`, `SET NAMES` → `client_encoding`); `value` is SQL text Postgres accepts back
    /// after `SET name TO ` (quotes kept, e.g. `'UTC'`, `"$user", public`).
    /// `local` = `SET LOCAL` (transaction-scoped).
    Set {
        name: String,
        value: String,
        local: bool,
    },
    /// `RESET name`, `SET name TO DEFAULT`, `SET TIME ZONE LOCAL|DEFAULT`, `SET ROLE NONE`.
    Reset { name: String },
    /// `RESET ALL`, `DISCARD ALL`.
    ResetAll,
    /// `DISCARD PLANS | SEQUENCES | TEMP` (the lower-cased object word).
    Discard(String),
    /// Session state that cannot be carried across backends.
    Pin(PinReason),
}

impl SessionEffect {
    pub fn is_pin(&self) -> bool {
        matches!(self, SessionEffect::Pin(_))
    }
}

impl fmt::Display for SessionEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEffect::Set { name, value, local } => {
                write!(
                    f,
                    "set{} {} = {}",
                    if *local { " local" } else { "" },
                    name,
                    value
                )
            }
            SessionEffect::Reset { name } => write!(f, "reset {name}"),
            SessionEffect::ResetAll => f.write_str("reset all"),
            SessionEffect::Discard(what) => write!(f, "discard {what}"),
            SessionEffect::Pin(r) => write!(f, "pin ({})", r.as_str()),
        }
    }
}

/// What a statement (or a whole query string) is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum StatementKind {
    /// SELECT / VALUES / TABLE / SHOW / EXPLAIN (without ANALYZE), `COPY … TO STDOUT`.
    /// Note that a `Read` may still be `read_only == false` (locking clause, volatile function).
    Read,
    /// INSERT / UPDATE / DELETE / MERGE / TRUNCATE / COPY FROM / CALL / DO / LOCK / NOTIFY /
    /// REFRESH MATERIALIZED VIEW / `SELECT … INTO` / data-modifying CTE / EXPLAIN ANALYZE of those.
    Write,
    /// CREATE / ALTER / DROP / GRANT / REVOKE / COMMENT …
    Ddl,
    Transaction(TxnControl),
    Session(SessionEffect),
    /// VACUUM, ANALYZE, CHECKPOINT, DECLARE, FETCH, CLOSE, COPY TO a file, …
    Utility,
    /// Could not be parsed nor recognized: route to the primary, never cache.
    Unknown,
}

impl StatementKind {
    /// Rank used to combine statements of one query string: the strongest wins.
    /// `Read < Utility < Transaction < Session < Write < Ddl < Unknown`.
    pub fn strength(&self) -> u8 {
        match self {
            StatementKind::Read => 0,
            StatementKind::Utility => 1,
            StatementKind::Transaction(_) => 2,
            StatementKind::Session(_) => 3,
            StatementKind::Write => 4,
            StatementKind::Ddl => 5,
            StatementKind::Unknown => 6,
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(self, StatementKind::Write | StatementKind::Ddl)
    }
}

impl fmt::Display for StatementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatementKind::Read => f.write_str("read"),
            StatementKind::Write => f.write_str("write"),
            StatementKind::Ddl => f.write_str("ddl"),
            StatementKind::Transaction(t) => write!(f, "transaction ({t})"),
            StatementKind::Session(s) => write!(f, "session ({s})"),
            StatementKind::Utility => f.write_str("utility"),
            StatementKind::Unknown => f.write_str("unknown"),
        }
    }
}

/// How a statement was understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ParseMode {
    /// Fully parsed by sqlparser and walked.
    Parsed,
    /// sqlparser rejected it (Postgres syntax it lacks: `LOCK`, `DO`, `RESET`, `VACUUM`,
    /// `COPY … FROM STDIN`, `ABORT`, …); classified from its leading keywords instead. Such a
    /// statement is never `read_only` (except the plain `TABLE name` form) and never cached
    /// as a template.
    Keywords,
    /// Not understood at all: `StatementKind::Unknown`.
    Failed,
}

/// One statement of a (possibly multi-statement) query string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementSummary {
    pub kind: StatementKind,
    /// Upper-case leading verb: `SELECT`, `INSERT`, `SET`, `EXPLAIN`, `WITH` …
    pub verb: &'static str,
    pub read_only: bool,
    pub parse: ParseMode,
    pub txn: Option<TxnControl>,
    pub session: Option<SessionEffect>,
}

/// Result of analyzing one query string. Produced by [`super::analyze`] or
/// [`super::Analyzer::analyze`]; immutable once built and shared as `Arc<Analysis>`.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    /// The strongest kind over all statements (see [`StatementKind::strength`]). A string
    /// containing a write is a write; an empty string is `Utility`.
    pub kind: StatementKind,
    /// True only when every statement is provably safe on a hot-standby replica.
    pub read_only: bool,
    pub statements: Vec<StatementSummary>,
    /// Relations read (deduplicated; in discovery order: per query block the FROM items come
    /// before subqueries of the select list and WHERE). CTE names and aliases are not
    /// relations; table functions are listed in `functions`.
    pub tables_read: Vec<TableRef>,
    /// Relations written: INSERT/UPDATE/DELETE/MERGE targets, TRUNCATE, COPY FROM, `SELECT INTO`,
    /// REFRESH MATERIALIZED VIEW and the relation of CREATE/ALTER/DROP TABLE|VIEW.
    pub tables_written: Vec<TableRef>,
    /// Functions called (lower-cased unless quoted, schema-qualified as written), deduplicated.
    /// SQL value functions such as `CURRENT_TIMESTAMP` appear lower-cased.
    pub functions: Vec<String>,
    /// Max volatility over `functions` (unknown functions are volatile).
    pub volatility: Volatility,
    /// A locking clause (`FOR UPDATE|NO KEY UPDATE|SHARE|KEY SHARE`) or a `LOCK` statement.
    pub locking: bool,
    /// The first transaction-control statement of the string (per-statement values are in
    /// `statements`).
    pub txn: Option<TxnControl>,
    /// The first session pin of the string if any, else its first other session effect.
    /// Use [`Analysis::session_effects`] for all of them, in order.
    pub session: Option<SessionEffect>,
    pub hints: Hints,
    /// Text with literals replaced by `?`, comments dropped, whitespace collapsed, unquoted
    /// identifiers and keywords lower-cased. Statements joined with `; `.
    pub normalized: String,
    /// sqlparser's message for the first statement it could not parse (also set for
    /// statements classified by keywords).
    pub parse_error: Option<String>,
    /// Why the string is not read-only (human-readable, for `explain`).
    pub reasons: Vec<String>,
    /// Functions that were not found in the catalog (treated as volatile).
    pub unknown_functions: Vec<String>,
    #[serde(skip)]
    pub(crate) sql: Arc<str>,
    #[serde(skip)]
    pub(crate) literals: Vec<LitSpan>,
    #[serde(skip)]
    pub(crate) accesses: Arc<[TableAccess]>,
    /// Set when a statement may write tables the analyzer cannot see (DO, CALL, EXECUTE, an
    /// unparsable statement, a user-defined or unknown volatile function): the reason.
    pub hidden_writes: Option<String>,
    /// Whether this analysis may be reused for another text with the same `normalized` form.
    #[serde(skip)]
    pub(crate) template_ok: bool,
    /// False when the lexer failed and `normalized` is the raw text (literals included).
    #[serde(skip)]
    pub(crate) literal_free: bool,
    /// How long this statement last took on a backend, shared by every text of the same
    /// shape (one cell per template), so a simple query with a new literal is known too.
    #[serde(skip)]
    pub(crate) observed: Arc<Observed>,
}

/// The last execution time seen for a statement shape, in µs + 1 (0: never seen). The
/// pipelined path takes only statements seen to be fast, so one slow statement cannot hold
/// other clients' answers behind it.
#[derive(Debug, Default)]
pub struct Observed(std::sync::atomic::AtomicU32);

impl Analysis {
    /// Records how long the statement took (request sent → its ReadyForQuery).
    pub fn observe(&self, took: std::time::Duration) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX - 1);
        self.observed
            .0
            .store(us.saturating_add(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the statement was seen to take less than `limit` the last time it ran.
    pub fn seen_faster_than(&self, limit: std::time::Duration) -> bool {
        let v = self.observed.0.load(std::sync::atomic::Ordering::Relaxed);
        v != 0 && u128::from(v - 1) < limit.as_micros()
    }
}

impl Analysis {
    /// The analyzed text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The text safe to write to logs: the normalized form (no literal values, so no data or
    /// secrets), or a placeholder when the text could not be lexed into tokens.
    pub fn loggable_text(&self) -> &str {
        if self.literal_free {
            &self.normalized
        } else {
            "(statement that could not be tokenized; text withheld)"
        }
    }

    /// True when any relation read or written is a system catalog (see
    /// [`TableRef::is_system_catalog`]).
    pub fn touches_system_catalog(&self) -> bool {
        self.tables_read
            .iter()
            .chain(self.tables_written.iter())
            .any(TableRef::is_system_catalog)
    }

    /// Safe to serve from a result cache: read-only plain queries (SELECT / VALUES / TABLE; no
    /// SHOW or EXPLAIN) of immutable functions only, no system catalog, no locking clause, every
    /// statement parsed. Hints are *not* taken into account (`hints.cache` is the caller's).
    pub fn cacheable(&self) -> bool {
        self.read_only
            && self.kind == StatementKind::Read
            && self.volatility == Volatility::Immutable
            && !self.locking
            && !self.statements.is_empty()
            && self.statements.iter().all(|s| {
                s.parse == ParseMode::Parsed
                    && matches!(s.verb, "SELECT" | "VALUES" | "TABLE" | "WITH")
            })
            && !self.touches_system_catalog()
    }

    /// All session effects of the string, in statement order.
    pub fn session_effects(&self) -> impl Iterator<Item = &SessionEffect> {
        self.statements.iter().filter_map(|s| s.session.as_ref())
    }

    /// All transaction-control statements of the string, in order.
    pub fn txn_controls(&self) -> impl Iterator<Item = &TxnControl> {
        self.statements.iter().filter_map(|s| s.txn.as_ref())
    }

    /// Whether any statement pins the session to its backend.
    pub fn pins_session(&self) -> bool {
        self.session_effects().any(SessionEffect::is_pin)
    }

    /// Whether the string writes `table` (see [`TableRef::matches`]).
    pub fn writes(&self, table: &TableRef) -> bool {
        self.tables_written.iter().any(|t| t.matches(table))
    }

    /// Whether the string reads `table` (see [`TableRef::matches`]).
    pub fn reads(&self, table: &TableRef) -> bool {
        self.tables_read.iter().any(|t| t.matches(table))
    }

    /// Human-readable, one fact per line (`key: value`), for the `explain` admin command and
    /// golden tests.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(512);
        let list = |v: &[TableRef]| -> String {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(out, "kind: {}", self.kind);
        let _ = writeln!(out, "read_only: {}", self.read_only);
        let _ = writeln!(out, "cacheable: {}", self.cacheable());
        for (i, s) in self.statements.iter().enumerate() {
            let mut line = format!("statement {}: {} {}", i + 1, s.verb, s.kind);
            if !s.read_only {
                line.push_str(" (not read-only)");
            }
            match s.parse {
                ParseMode::Parsed => {}
                ParseMode::Keywords => line.push_str(" [classified by keywords]"),
                ParseMode::Failed => line.push_str(" [unparsed]"),
            }
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "tables_read: {}", list(&self.tables_read));
        let _ = writeln!(out, "tables_written: {}", list(&self.tables_written));
        if self.touches_system_catalog() {
            let _ = writeln!(out, "system_catalog: true");
        }
        let _ = writeln!(
            out,
            "functions: {}",
            if self.functions.is_empty() {
                "-".to_owned()
            } else {
                self.functions.join(", ")
            }
        );
        if !self.unknown_functions.is_empty() {
            let _ = writeln!(
                out,
                "unknown_functions: {}",
                self.unknown_functions.join(", ")
            );
        }
        let _ = writeln!(out, "volatility: {}", self.volatility.as_str());
        let _ = writeln!(out, "locking: {}", self.locking);
        if let Some(t) = &self.txn {
            let _ = writeln!(out, "txn: {t}");
        }
        for e in self.session_effects() {
            let _ = writeln!(out, "session: {e}");
        }
        let h = self.hints.describe();
        if !h.is_empty() {
            let _ = writeln!(out, "hints: {h}");
        }
        for w in &self.hints.warnings {
            let _ = writeln!(out, "hint_warning: {w}");
        }
        for a in self.accesses.iter() {
            let _ = writeln!(out, "key_source: {}", a.describe(self));
        }
        if let Some(h) = &self.hidden_writes {
            let _ = writeln!(out, "hidden_writes: {h}");
        }
        for r in &self.reasons {
            let _ = writeln!(out, "not_read_only: {r}");
        }
        if let Some(e) = &self.parse_error {
            let _ = writeln!(out, "parse_error: {e}");
        }
        let _ = writeln!(out, "normalized: {}", self.normalized);
        out
    }

    pub(crate) fn empty(sql: Arc<str>) -> Analysis {
        Analysis {
            kind: StatementKind::Utility,
            read_only: true,
            statements: Vec::new(),
            tables_read: Vec::new(),
            tables_written: Vec::new(),
            functions: Vec::new(),
            volatility: Volatility::Immutable,
            locking: false,
            txn: None,
            session: None,
            hints: Hints::default(),
            normalized: String::new(),
            parse_error: None,
            reasons: Vec::new(),
            unknown_functions: Vec::new(),
            sql,
            literals: Vec::new(),
            accesses: Arc::from(Vec::new()),
            hidden_writes: None,
            template_ok: true,
            literal_free: true,
            observed: Arc::default(),
        }
    }
}

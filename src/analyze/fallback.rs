//! Keyword classification of statements sqlparser 0.55 cannot parse (Postgres syntax it lacks:
//! `LOCK`, `DO`, `RESET`, `VACUUM`, `REFRESH MATERIALIZED VIEW`, `COPY … FROM STDIN`,
//! `ABORT`, `PREPARE TRANSACTION`, `SET SESSION AUTHORIZATION`, `SET NAMES`, `TABLE t`,
//! `CREATE UNLOGGED TABLE`, …). Conservative by construction: nothing classified here is
//! read-only except the plain `TABLE name` form, and nothing is reused as a template.

use super::keys::KeySource;
use super::keys::TableAccess;
use super::lexer::{Tk, Tok};
use super::types::{ParseMode, PinReason, SessionEffect, StatementKind, TableRef, TxnControl};
use super::walk::{quote_literal, StmtOut};

struct Toks<'a> {
    src: &'a str,
    t: &'a [Tok],
    i: usize,
}

impl<'a> Toks<'a> {
    fn peek_kw(&self, kw: &str) -> bool {
        self.t.get(self.i).is_some_and(|t| t.is_kw(self.src, kw))
    }
    fn kw_at(&self, i: usize, kw: &str) -> bool {
        self.t.get(i).is_some_and(|t| t.is_kw(self.src, kw))
    }
    fn eat(&mut self, kw: &str) -> bool {
        if self.peek_kw(kw) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn has_kw(&self, kw: &str) -> bool {
        self.t.iter().any(|t| t.is_kw(self.src, kw))
    }
    fn rest_text(&self) -> &'a str {
        match (self.t.get(self.i), self.t.last()) {
            (Some(a), Some(b)) => &self.src[a.start as usize..b.end as usize],
            _ => "",
        }
    }
    /// Parses `[ONLY] name[.name…] [*]` as a table reference.
    fn table_name(&mut self) -> Option<TableRef> {
        self.eat("only");
        let mut parts = Vec::new();
        loop {
            let t = self.t.get(self.i)?;
            let part = match t.kind {
                Tk::Word => t.text(self.src).to_ascii_lowercase(),
                Tk::QIdent => {
                    let raw = t.text(self.src);
                    let raw = raw
                        .strip_prefix("U&")
                        .or_else(|| raw.strip_prefix("u&"))
                        .unwrap_or(raw);
                    raw[1..raw.len() - 1].replace("\"\"", "\"")
                }
                _ => return None,
            };
            parts.push(part);
            self.i += 1;
            if self.t.get(self.i).is_some_and(|t| t.kind == Tk::Dot) {
                self.i += 1;
                continue;
            }
            break;
        }
        if self
            .t
            .get(self.i)
            .is_some_and(|t| t.kind == Tk::Op && t.text(self.src) == "*")
        {
            self.i += 1;
        }
        let name = parts.pop()?;
        let schema = parts.pop();
        Some(TableRef { schema, name })
    }
}

fn out(kind: StatementKind, verb: &'static str) -> StmtOut {
    StmtOut::new(kind, verb, ParseMode::Keywords)
}

fn txn(t: TxnControl, verb: &'static str) -> StmtOut {
    let mut o = out(StatementKind::Transaction(t.clone()), verb);
    o.summary.txn = Some(t);
    o
}

fn session(e: SessionEffect, verb: &'static str) -> StmtOut {
    let mut o = out(StatementKind::Session(e.clone()), verb);
    o.summary.session = Some(e);
    o
}

fn write_to(o: &mut StmtOut, t: TableRef, reason: &str) {
    if !o.tables_written.contains(&t) {
        o.tables_written.push(t.clone());
    }
    o.accesses.push(TableAccess {
        table: t,
        write: true,
        source: KeySource::Undeterminable(reason.to_owned()),
    });
}

fn read_only_mode(k: &Toks) -> Option<bool> {
    let mut ro = None;
    for i in 0..k.t.len() {
        if k.kw_at(i, "read") {
            if k.kw_at(i + 1, "only") {
                ro = Some(true);
            } else if k.kw_at(i + 1, "write") {
                ro = Some(false);
            }
        }
    }
    ro
}

/// Classifies one statement from its tokens; `None` when the leading keywords say nothing
/// useful (the statement is then `Unknown`).
pub(crate) fn classify(src: &str, toks: &[Tok]) -> Option<StmtOut> {
    let first = toks.first()?;
    if first.kind != Tk::Word {
        return None;
    }
    let mut k = Toks { src, t: toks, i: 1 };
    let w = first.text(src).to_ascii_lowercase();
    let mut o = match w.as_str() {
        "abort" => txn(TxnControl::Rollback, "ROLLBACK"),
        "begin" | "start" => txn(
            TxnControl::Begin {
                read_only: read_only_mode(&k),
                serializable: (0..k.t.len())
                    .any(|i| k.kw_at(i, "level") && k.kw_at(i + 1, "serializable")),
            },
            "BEGIN",
        ),
        "end" => txn(TxnControl::Commit, "COMMIT"),
        "commit" => {
            if k.peek_kw("prepared") {
                txn(TxnControl::CommitPrepared, "COMMIT")
            } else {
                txn(TxnControl::Commit, "COMMIT")
            }
        }
        "rollback" => {
            if k.peek_kw("prepared") {
                txn(TxnControl::RollbackPrepared, "ROLLBACK")
            } else if k.has_kw("to") {
                txn(TxnControl::RollbackTo, "ROLLBACK")
            } else {
                txn(TxnControl::Rollback, "ROLLBACK")
            }
        }
        "savepoint" => txn(TxnControl::Savepoint, "SAVEPOINT"),
        "release" => txn(TxnControl::Release, "RELEASE"),
        "prepare" => {
            if k.peek_kw("transaction") {
                txn(TxnControl::PrepareTransaction, "PREPARE")
            } else {
                session(SessionEffect::Pin(PinReason::PreparedStatement), "PREPARE")
            }
        }
        "execute" => {
            let mut o = session(SessionEffect::Pin(PinReason::PreparedStatement), "EXECUTE");
            o.hidden_writes = Some("EXECUTE of an SQL prepared statement".to_owned());
            o
        }
        "deallocate" => session(
            SessionEffect::Pin(PinReason::PreparedStatement),
            "DEALLOCATE",
        ),
        "set" => classify_set(&mut k)?,
        "reset" => {
            let e = if k.peek_kw("all") {
                SessionEffect::ResetAll
            } else if k.peek_kw("session") && k.kw_at(k.i + 1, "authorization") {
                SessionEffect::Reset {
                    name: "session_authorization".to_owned(),
                }
            } else if k.peek_kw("time") && k.kw_at(k.i + 1, "zone") {
                SessionEffect::Reset {
                    name: "timezone".to_owned(),
                }
            } else {
                let name = k.rest_text().trim().to_ascii_lowercase();
                if name.is_empty() {
                    return None;
                }
                SessionEffect::Reset { name }
            };
            session(e, "RESET")
        }
        "discard" => {
            let what =
                k.t.get(1)
                    .map(|t| t.text(src).to_ascii_lowercase())
                    .unwrap_or_default();
            let e = match what.as_str() {
                "all" => SessionEffect::ResetAll,
                "temporary" | "temp" => SessionEffect::Discard("temp".to_owned()),
                "plans" | "sequences" => SessionEffect::Discard(what),
                _ => return None,
            };
            session(e, "DISCARD")
        }
        "listen" => session(SessionEffect::Pin(PinReason::Listen), "LISTEN"),
        "unlisten" => session(SessionEffect::Discard("listen".to_owned()), "UNLISTEN"),
        "notify" => out(StatementKind::Write, "NOTIFY"),
        "load" => session(SessionEffect::Pin(PinReason::Load), "LOAD"),
        "do" => {
            let mut o = out(StatementKind::Write, "DO");
            o.hidden_writes = Some("DO block".to_owned());
            o.volatility = super::types::Volatility::Volatile;
            o
        }
        "call" => {
            let mut o = out(StatementKind::Write, "CALL");
            o.hidden_writes = Some("CALL of a procedure".to_owned());
            o.volatility = super::types::Volatility::Volatile;
            o
        }
        "lock" => {
            let mut o = out(StatementKind::Write, "LOCK");
            o.locking = true;
            k.eat("table");
            while let Some(t) = k.table_name() {
                if !o.tables_read.contains(&t) {
                    o.tables_read.push(t.clone());
                }
                o.accesses.push(TableAccess {
                    table: t,
                    write: false,
                    source: KeySource::Undeterminable(
                        "LOCK TABLE locks the whole table".to_owned(),
                    ),
                });
                if k.t.get(k.i).is_some_and(|t| t.kind == Tk::Comma) {
                    k.i += 1;
                    continue;
                }
                break;
            }
            o
        }
        "refresh" => {
            let mut o = out(StatementKind::Write, "REFRESH");
            if k.eat("materialized") && k.eat("view") {
                k.eat("concurrently");
                if let Some(t) = k.table_name() {
                    write_to(&mut o, t, "REFRESH MATERIALIZED VIEW");
                }
            }
            o
        }
        "vacuum" | "analyze" | "analyse" | "cluster" | "reindex" | "checkpoint" => out(
            StatementKind::Utility,
            match w.as_str() {
                "vacuum" => "VACUUM",
                "cluster" => "CLUSTER",
                "reindex" => "REINDEX",
                "checkpoint" => "CHECKPOINT",
                _ => "ANALYZE",
            },
        ),
        "fetch" => out(StatementKind::Utility, "FETCH"),
        "move" => out(StatementKind::Utility, "MOVE"),
        "close" => out(StatementKind::Utility, "CLOSE"),
        "declare" => {
            let mut o = out(StatementKind::Utility, "DECLARE");
            let hold = (0..toks.len()).any(|i| k.kw_at(i, "with") && k.kw_at(i + 1, "hold"));
            if hold {
                o.summary.session = Some(SessionEffect::Pin(PinReason::HoldCursor));
            }
            o
        }
        "copy" => {
            let mut o;
            // COPY name [(cols)] FROM|TO …  /  COPY (query) TO …
            let table = if toks.get(1).is_some_and(|t| t.kind == Tk::LParen) {
                None
            } else {
                k.table_name()
            };
            let mut depth = 0i32;
            let mut dir = None;
            for t in &toks[1..] {
                match t.kind {
                    Tk::LParen => depth += 1,
                    Tk::RParen => depth -= 1,
                    Tk::Word if depth == 0 => {
                        if t.is_kw(src, "from") {
                            dir = Some(false);
                            break;
                        } else if t.is_kw(src, "to") {
                            dir = Some(true);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            match dir {
                Some(false) => {
                    o = out(StatementKind::Write, "COPY");
                    if let Some(t) = table {
                        write_to(&mut o, t, "COPY FROM");
                    }
                }
                Some(true) => {
                    o = out(StatementKind::Read, "COPY");
                    if let Some(t) = table {
                        o.tables_read.push(t.clone());
                        o.accesses.push(TableAccess {
                            table: t,
                            write: false,
                            source: KeySource::Undeterminable("COPY reads every row".to_owned()),
                        });
                    }
                }
                None => return None,
            }
            o
        }
        "table" => {
            // TABLE name [ORDER BY … | LIMIT … | OFFSET … | FETCH …]: a plain read.
            let t = k.table_name()?;
            let tail_ok = toks[k.i..].iter().all(|t| {
                !(t.is_kw(src, "for")
                    || t.is_kw(src, "into")
                    || t.kind == Tk::LParen
                    || t.kind == Tk::Semi)
            }) && toks.get(k.i).is_none_or(|t| {
                ["order", "limit", "offset", "fetch"]
                    .iter()
                    .any(|kw| t.is_kw(src, kw))
            });
            if !tail_ok {
                return None;
            }
            let mut o = out(StatementKind::Read, "TABLE");
            o.tables_read.push(t.clone());
            o.accesses.push(TableAccess {
                table: t,
                write: false,
                source: KeySource::Undeterminable("TABLE reads every row".to_owned()),
            });
            o.summary.read_only = true;
            return Some(o);
        }
        "truncate" => {
            let mut o = out(StatementKind::Write, "TRUNCATE");
            k.eat("table");
            while let Some(t) = k.table_name() {
                write_to(&mut o, t, "TRUNCATE");
                if k.t.get(k.i).is_some_and(|t| t.kind == Tk::Comma) {
                    k.i += 1;
                } else {
                    break;
                }
            }
            o
        }
        "insert" | "update" | "delete" | "merge" => {
            let verb = match w.as_str() {
                "insert" => "INSERT",
                "update" => "UPDATE",
                "delete" => "DELETE",
                _ => "MERGE",
            };
            let mut o = out(StatementKind::Write, verb);
            match w.as_str() {
                "insert" | "merge" => {
                    k.eat("into");
                }
                "delete" => {
                    k.eat("from");
                }
                _ => {}
            }
            match k.table_name() {
                Some(t) => write_to(&mut o, t, "statement not fully parsed"),
                None => o.hidden_writes = Some(format!("{verb} not parsed")),
            }
            o
        }
        "with" => {
            // A WITH sqlparser could not parse and that could not be split: find DML targets.
            let mut o = out(StatementKind::Write, "WITH");
            let mut found = false;
            for i in 0..toks.len() {
                let target = if (k.kw_at(i, "insert") && k.kw_at(i + 1, "into"))
                    || (k.kw_at(i, "delete") && k.kw_at(i + 1, "from"))
                    || (k.kw_at(i, "merge") && k.kw_at(i + 1, "into"))
                {
                    Some(i + 2)
                } else if k.kw_at(i, "update")
                    && !(i > 0
                        && (k.kw_at(i - 1, "for") || k.kw_at(i - 1, "do") || k.kw_at(i - 1, "key")))
                {
                    Some(i + 1)
                } else {
                    None
                };
                if let Some(j) = target {
                    let mut kk = Toks { src, t: toks, i: j };
                    if let Some(t) = kk.table_name() {
                        write_to(&mut o, t, "statement not fully parsed");
                        found = true;
                    }
                }
            }
            if !found {
                return None;
            }
            o.hidden_writes = Some("WITH statement not fully parsed".to_owned());
            o
        }
        "create" => {
            let mut o = out(StatementKind::Ddl, "CREATE");
            let mut temp = false;
            for t in &toks[1..] {
                if t.is_kw(src, "temp") || t.is_kw(src, "temporary") {
                    temp = true;
                    break;
                }
                if !["or", "replace", "global", "local", "unlogged", "recursive"]
                    .iter()
                    .any(|kw| t.is_kw(src, kw))
                {
                    break;
                }
            }
            if temp {
                o.summary.session = Some(SessionEffect::Pin(PinReason::TempObject));
            }
            o
        }
        "alter" => out(StatementKind::Ddl, "ALTER"),
        "drop" => {
            let mut o = out(StatementKind::Ddl, "DROP");
            // DROP [MATERIALIZED] VIEW | [FOREIGN] TABLE [IF EXISTS] name [, …]
            k.eat("materialized");
            k.eat("foreign");
            if k.eat("view") || k.eat("table") {
                if k.peek_kw("if") && k.kw_at(k.i + 1, "exists") {
                    k.i += 2;
                }
                while let Some(t) = k.table_name() {
                    if !o.tables_written.contains(&t) {
                        o.tables_written.push(t);
                    }
                    if k.t.get(k.i).is_some_and(|t| t.kind == Tk::Comma) {
                        k.i += 1;
                    } else {
                        break;
                    }
                }
            }
            o
        }
        "comment" => out(StatementKind::Ddl, "COMMENT"),
        "grant" => out(StatementKind::Ddl, "GRANT"),
        "revoke" => out(StatementKind::Ddl, "REVOKE"),
        "security" | "import" | "reassign" => out(StatementKind::Ddl, "DDL"),
        _ => return None,
    };
    o.summary.read_only = false;
    o.reasons.push(format!(
        "{} not fully parsed (classified by keywords)",
        o.summary.verb
    ));
    o.template_ok = false;
    Some(o)
}

/// `SET` forms sqlparser rejects for Postgres.
fn classify_set(k: &mut Toks) -> Option<StmtOut> {
    let local = k.eat("local");
    if !(local || k.peek_kw("session") && k.kw_at(k.i + 1, "authorization")) {
        k.eat("session");
    }
    if k.peek_kw("session") && k.kw_at(k.i + 1, "authorization") {
        k.i += 2;
        let default = k.peek_kw("default");
        let e = if default && !local {
            SessionEffect::Reset {
                name: "session_authorization".to_owned(),
            }
        } else if local {
            SessionEffect::Set {
                name: "session_authorization".to_owned(),
                value: k.rest_text().trim().to_owned(),
                local,
            }
        } else {
            SessionEffect::Pin(PinReason::SessionAuthorization)
        };
        return Some(session(e, "SET"));
    }
    if k.eat("role") {
        let v = k.rest_text().trim().to_owned();
        let e = if local {
            SessionEffect::Set {
                name: "role".to_owned(),
                value: v,
                local,
            }
        } else if v.eq_ignore_ascii_case("none") {
            SessionEffect::Reset {
                name: "role".to_owned(),
            }
        } else {
            SessionEffect::Pin(PinReason::Role)
        };
        return Some(session(e, "SET"));
    }
    if k.eat("names") {
        let v = k.rest_text().trim().to_owned();
        let e = if v.eq_ignore_ascii_case("default") && !local {
            SessionEffect::Reset {
                name: "client_encoding".to_owned(),
            }
        } else {
            SessionEffect::Set {
                name: "client_encoding".to_owned(),
                value: normalize_value(&v),
                local,
            }
        };
        return Some(session(e, "SET"));
    }
    if k.peek_kw("time") && k.kw_at(k.i + 1, "zone") {
        k.i += 2;
        let v = k.rest_text().trim().to_owned();
        let e = if (v.eq_ignore_ascii_case("default") || v.eq_ignore_ascii_case("local")) && !local
        {
            SessionEffect::Reset {
                name: "timezone".to_owned(),
            }
        } else {
            SessionEffect::Set {
                name: "timezone".to_owned(),
                value: v,
                local,
            }
        };
        return Some(session(e, "SET"));
    }
    if k.peek_kw("xml") && k.kw_at(k.i + 1, "option") {
        k.i += 2;
        let v = k.rest_text().trim().to_ascii_lowercase();
        return Some(session(
            SessionEffect::Set {
                name: "xmloption".to_owned(),
                value: v,
                local,
            },
            "SET",
        ));
    }
    if k.peek_kw("constraints") || k.peek_kw("transaction") {
        return Some(out(StatementKind::Utility, "SET"));
    }
    // SET name[.name] {TO | =} value
    let start = k.i;
    let mut name = String::new();
    while let Some(t) = k.t.get(k.i) {
        match t.kind {
            Tk::Word | Tk::QIdent | Tk::Dot => {
                name.push_str(&t.text(k.src).trim_matches('"').to_ascii_lowercase());
                k.i += 1;
            }
            _ => break,
        }
        if k.peek_kw("to") {
            break;
        }
    }
    if k.i == start || name.is_empty() {
        return None;
    }
    let sep_ok = k.eat("to")
        || k.t
            .get(k.i)
            .is_some_and(|t| t.kind == Tk::Op && t.text(k.src) == "=")
            && {
                k.i += 1;
                true
            };
    if !sep_ok {
        return None;
    }
    let v = k.rest_text().trim().to_owned();
    if v.is_empty() {
        return None;
    }
    let e = if v.eq_ignore_ascii_case("default") && !local {
        SessionEffect::Reset { name }
    } else if !local && name == "role" {
        SessionEffect::Pin(PinReason::Role)
    } else if !local && name == "session_authorization" {
        SessionEffect::Pin(PinReason::SessionAuthorization)
    } else {
        SessionEffect::Set {
            name,
            value: v,
            local,
        }
    };
    Some(session(e, "SET"))
}

/// `UTF8` → `'UTF8'`; quoted values are kept.
fn normalize_value(v: &str) -> String {
    if v.starts_with('\'') {
        v.to_owned()
    } else {
        quote_literal(v)
    }
}

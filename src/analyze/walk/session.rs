//! Transaction control and session commands (SET, RESET, DISCARD, LISTEN, PREPARE, ...):
//! what they change in the server session, so the pool knows when a client must stay pinned.

use sqlparser::ast::{
    DiscardObject, Expr, OneOrManyWithParens, Statement, TransactionAccessMode,
    TransactionIsolationLevel, TransactionMode,
};

use super::{name_parts, Class, Walker};
use crate::analyze::types::{PinReason, SessionEffect, StatementKind, TxnControl};

impl Walker<'_> {
    /// Transaction control and session commands; `None` for any other statement.
    pub(super) fn transaction_or_session(&mut self, st: &Statement) -> Option<Class> {
        use StatementKind as K;
        Some(match st {
            Statement::StartTransaction { modes, .. } => {
                let t = TxnControl::Begin {
                    read_only: access_mode(modes),
                    serializable: modes.iter().any(|m| {
                        matches!(
                            m,
                            TransactionMode::IsolationLevel(
                                TransactionIsolationLevel::Serializable
                            )
                        )
                    }),
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
                self.hidden_write("EXECUTE of an SQL prepared statement");
                self.session_stmt(SessionEffect::Pin(PinReason::PreparedStatement), "EXECUTE")
            }
            Statement::Deallocate { .. } => self.session_stmt(
                SessionEffect::Pin(PinReason::PreparedStatement),
                "DEALLOCATE",
            ),
            _ => return None,
        })
    }

    fn txn(&mut self, t: TxnControl, verb: &'static str) -> Class {
        self.out.summary.txn = Some(t.clone());
        (StatementKind::Transaction(t), verb, false)
    }

    fn session_stmt(&mut self, e: SessionEffect, verb: &'static str) -> Class {
        self.session(e.clone());
        (StatementKind::Session(e), verb, false)
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

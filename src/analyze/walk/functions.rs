//! Function calls: volatility from the catalog, and the session effects some built-ins have.

use sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, Value, WindowType,
};

use super::{name_parts, push_unique, quote_literal, Walker};
use crate::analyze::types::{PinReason, SessionEffect, Volatility};

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
    // Read-only introspection that pg_proc marks volatile; answers on a standby by design
    // (`pg_is_in_recovery()` too, but it goes to the primary: `PRIMARY_STATE_FUNCTIONS`).
    "pg_is_in_recovery",
    "pg_last_wal_replay_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_is_wal_replay_paused",
    "pg_get_wal_replay_pause_state",
];

/// Functions applications call to check that they reach the primary: they run there, so they
/// answer as the primary would.
const PRIMARY_STATE_FUNCTIONS: &[&str] = &["pg_is_in_recovery"];

/// Settings that differ on a hot standby (read by `SHOW` or `current_setting`): they are read
/// on the primary.
pub(super) const PRIMARY_STATE_SETTINGS: &[&str] = &[
    "transaction_read_only",
    "default_transaction_read_only",
    "in_hot_standby",
];

/// SQL value functions (not in pg_proc): all stable.
pub(super) const SQL_VALUE_FUNCTIONS: &[&str] = &[
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

impl Walker<'_> {
    pub(super) fn function(&mut self, f: &Function) {
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
        let (schema, name) = schema_and_name(&parts);
        self.record_function(parts.join("."), schema, name, fixed);
        let builtin_scope = builtin_scope(schema);
        if builtin_scope && SESSION_ADVISORY_FUNCTIONS.contains(&name) {
            self.session(SessionEffect::Pin(PinReason::AdvisoryLock));
        }
        if builtin_scope && name == "set_config" {
            let effect = self.set_config_effect(args);
            self.session(effect);
        }
        if builtin_scope && PRIMARY_STATE_FUNCTIONS.contains(&name) {
            self.asks_primary(format!("{name}()"));
        }
        if builtin_scope && name == "current_setting" {
            if let Some(setting) = args.first().and_then(literal_text) {
                let setting = setting.to_ascii_lowercase();
                if PRIMARY_STATE_SETTINGS.contains(&setting.as_str()) {
                    self.asks_primary(format!("current_setting('{setting}')"));
                }
            }
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

    pub(super) fn record_function_name(&mut self, name: &ObjectName) {
        let parts = name_parts(name);
        let (schema, n) = schema_and_name(&parts);
        self.record_function(parts.join("."), schema, n, None);
    }

    pub(super) fn record_function(
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
        let builtin_scope = builtin_scope(schema);
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
}

/// A string literal argument's text (through casts and parentheses).
fn literal_text(a: &FunctionArg) -> Option<&str> {
    let FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) = a else {
        return None;
    };
    let mut e = e;
    while let Expr::Cast { expr, .. } | Expr::Nested(expr) = e {
        e = expr;
    }
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// The schema (when qualified) and the function's own name: what the catalog is asked about.
fn schema_and_name(parts: &[String]) -> (Option<&str>, &str) {
    match parts {
        [.., schema, name] => (Some(schema), name),
        [name] => (None, name),
        [] => (None, ""),
    }
}

/// Unqualified or `pg_catalog.`: a name that can mean the built-in.
fn builtin_scope(schema: Option<&str>) -> bool {
    schema.is_none() || schema == Some("pg_catalog")
}

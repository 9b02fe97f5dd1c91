//! A client's named prepared statements, mapped to proxy-wide names.
//!
//! Under transaction pooling a client's statements must exist on whichever backend serves it
//! next. The proxy-wide name is a hash of everything that determines the statement's meaning
//! (text, parameter types, the settings it was parsed under — search_path changes what a name
//! refers to), so clients running the same statement share one server-side statement.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::wire::msg::Parse;

/// The client's statements as the proxy must keep them. It exists because under pooling a
/// client's prepared statements outlive any one backend: the named ones, the unnamed one (its
/// analysis for the Binds that follow, its Parse to send again), and what recent statements
/// meant (`memo`).
#[derive(Default)]
pub(super) struct ClientStatements {
    pub named: Statements,
    /// Analysis of the unnamed statement, for the Binds that follow its Parse.
    pub unnamed: Option<Arc<crate::analyze::Analysis>>,
    /// The client's last Parse of the unnamed statement, re-sent to a backend that lacks it (it
    /// lives until the next unnamed Parse or simple Query, across backends under pooling).
    pub unnamed_parse: Option<Bytes>,
    /// Intents and cache table names of recent statements.
    pub memo: super::memo::Memo,
}

#[derive(Debug)]
pub struct Statement {
    /// Proxy-wide name as sent to backends.
    pub global: Bytes,
    /// The client's Parse, renamed to `global`, ready to send to a backend that lacks it.
    pub parse: Bytes,
    pub query: Arc<str>,
    /// Analysed once, at Parse: every Bind of the statement reuses it.
    pub analysis: Arc<crate::analyze::Analysis>,
    /// What the client was told about the statement's shape, and as of which schema epoch
    /// (`session::revalidate`).
    pub shape: parking_lot::Mutex<Shape>,
}

/// The result and parameter types a client was told when it described its statement. Postgres
/// fixes both when a statement is prepared: after DDL it re-plans the statement but refuses one
/// whose result type changed (0A000) and keeps binding the parameter types it reported (a type
/// dropped since then: `cache lookup failed for type`). The proxy, which parses statements
/// again after DDL, compares against this to give the client the same answer.
#[derive(Debug, Default, Clone)]
pub struct Shape {
    /// Schema epoch (`backend::prepared`) as of which the client's statement is known to have
    /// this shape: its Parse, or the last revalidation.
    pub epoch: u64,
    /// ParameterDescription body (count and type OIDs: also the layout of Parse's types).
    pub params: Option<Bytes>,
    /// RowDescription's meaningful part (`revalidate::row_shape`); NoData has its own value.
    pub rows: Option<u64>,
}

impl Statement {
    /// Its Parse gives exactly these parameter types (a ParameterDescription body).
    pub fn has_param_types(&self, params: &[u8]) -> bool {
        self.parse
            .get(5..)
            .and_then(Parse::decode)
            .is_some_and(|p| p.param_types == params)
    }

    /// The same statement with its parameter types fixed to `params` (a ParameterDescription
    /// body), under a proxy-wide name of its own: what Postgres keeps for a prepared statement
    /// whose types were inferred, and what the proxy parses again after DDL.
    pub fn with_param_types(&self, params: &Bytes) -> Option<Statement> {
        let p = Parse::decode(self.parse.get(5..)?)?;
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.global);
        h.update(&[0]);
        h.update(params);
        let global = Bytes::from(format!("pgsc_{:032x}", h.digest128()));
        let fixed = Parse {
            name: &global,
            query: p.query,
            param_types: params,
        };
        let mut parse = BytesMut::with_capacity(self.parse.len() + params.len());
        fixed.encode_renamed(&mut parse, &global);
        let shape = self.shape.lock().clone();
        Some(Statement {
            global,
            parse: parse.freeze(),
            query: self.query.clone(),
            analysis: self.analysis.clone(),
            shape: parking_lot::Mutex::new(shape),
        })
    }
}

#[derive(Default)]
pub struct Statements {
    by_client_name: HashMap<Bytes, Arc<Statement>>,
}

impl Statements {
    pub fn register(
        &mut self,
        p: &Parse<'_>,
        settings_fingerprint: u64,
        analysis: Arc<crate::analyze::Analysis>,
    ) -> Arc<Statement> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(p.query);
        h.update(&[0]);
        h.update(p.param_types);
        h.update(&settings_fingerprint.to_le_bytes());
        let global = Bytes::from(format!("pgsc_{:032x}", h.digest128()));
        let mut parse = BytesMut::with_capacity(p.query.len() + 64);
        p.encode_renamed(&mut parse, &global);
        let stmt = Arc::new(Statement {
            global,
            parse: parse.freeze(),
            query: String::from_utf8_lossy(p.query).into(),
            analysis,
            shape: parking_lot::Mutex::new(Shape {
                epoch: crate::backend::prepared::current_epoch(),
                ..Shape::default()
            }),
        });
        self.by_client_name
            .insert(Bytes::copy_from_slice(p.name), stmt.clone());
        stmt
    }

    pub fn get(&self, client_name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_client_name.get(client_name)
    }

    /// Points every client name for `old` at `new` (the statement revalidated after DDL).
    pub fn replace(&mut self, old: &Arc<Statement>, new: &Arc<Statement>) {
        for s in self.by_client_name.values_mut() {
            if Arc::ptr_eq(s, old) {
                *s = new.clone();
            }
        }
    }

    pub fn remove(&mut self, client_name: &[u8]) -> Option<Arc<Statement>> {
        self.by_client_name.remove(client_name)
    }

    pub fn clear(&mut self) {
        self.by_client_name.clear();
    }

    pub fn len(&self) -> usize {
        self.by_client_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client_name.is_empty()
    }
}

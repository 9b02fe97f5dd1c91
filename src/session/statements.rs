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

#[derive(Debug)]
pub struct Statement {
    /// Proxy-wide name as sent to backends.
    pub global: Bytes,
    /// The client's Parse, renamed to `global`, ready to send to a backend that lacks it.
    pub parse: Bytes,
    pub query: Arc<str>,
    /// Analysed once, at Parse: every Bind of the statement reuses it.
    pub analysis: Arc<crate::analyze::Analysis>,
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
        });
        self.by_client_name
            .insert(Bytes::copy_from_slice(p.name), stmt.clone());
        stmt
    }

    pub fn get(&self, client_name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_client_name.get(client_name)
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

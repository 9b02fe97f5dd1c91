//! Shape templates: the literal-independent analysis of a statement shape (its
//! [normalized](super::normalize) text), reused for every new text of that shape without
//! parsing it again. A template keeps no literal values: lock keys read them lazily from each
//! text, and [`finalize`] adds a text's own literals, hints and date/time strings. Shapes whose
//! analysis depends on literal values are never stored (`Analysis::template_ok`). Bounded by
//! weight in a [`HashCache`] keyed by the hash of the normalized text.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_128;

use super::cache::HashCache;
use super::lexer::Lexed;
use super::{finalize, literal_volatility, Analysis, Hints};

/// The templates of the shapes analysed so far.
pub(super) struct Templates(HashCache<Arc<Analysis>>);

/// Where a shape without a template stores one ([`Templates::store`]): its hash.
pub(super) struct Shape(u128);

impl Templates {
    pub(super) fn new(max_bytes: usize) -> Templates {
        Templates(HashCache::new(max_bytes))
    }

    /// The template of the shape `normalized`, or where to store one.
    pub(super) fn get(&self, normalized: &str) -> Result<Arc<Analysis>, Shape> {
        let key = xxh3_128(normalized.as_bytes());
        match self.0.get(key) {
            Some(t) if t.normalized == normalized => Ok(t),
            _ => Err(Shape(key)),
        }
    }

    /// The analysis of `sql` from `core`, the analysis of its brand-new shape, which becomes
    /// that shape's template when it may be reused.
    pub(super) fn store(
        &self,
        shape: Shape,
        core: Analysis,
        sql: Arc<str>,
        lexed: &Lexed,
    ) -> Arc<Analysis> {
        if !core.template_ok {
            Arc::new(finalize(core, sql, lexed))
        } else if literal_volatility(&sql, lexed) <= core.volatility {
            // What `finalize` adds (literals, hints, the text) is what `instantiate` ignores:
            // the result itself is the template, one allocation and one eviction fewer than a
            // copy.
            let w = weight(&core);
            let a = Arc::new(finalize(core, sql, lexed));
            self.0.insert(shape.0, a.clone(), w);
            a
        } else {
            // A 'now'-style literal raised this text's volatility: the template keeps the
            // literal-independent one.
            let w = weight(&core);
            self.0.insert(shape.0, Arc::new(core.clone()), w);
            Arc::new(finalize(core, sql, lexed))
        }
    }

    pub(super) fn clear(&self) {
        self.0.clear();
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// The analysis of `sql`, a new text of template `t`'s shape (`normalized` moved in, not
/// cloned).
pub(super) fn instantiate(
    t: &Analysis,
    normalized: String,
    sql: Arc<str>,
    lexed: &Lexed,
) -> Arc<Analysis> {
    let a = Analysis {
        kind: t.kind.clone(),
        read_only: t.read_only,
        statements: t.statements.clone(),
        tables_read: t.tables_read.clone(),
        tables_written: t.tables_written.clone(),
        functions: t.functions.clone(),
        volatility: t.volatility,
        locking: t.locking,
        txn: t.txn.clone(),
        session: t.session.clone(),
        hints: Hints::default(),
        normalized,
        parse_error: t.parse_error.clone(),
        reasons: t.reasons.clone(),
        unknown_functions: t.unknown_functions.clone(),
        hidden_writes: t.hidden_writes.clone(),
        sql: t.sql.clone(),
        literals: Vec::new(),
        accesses: t.accesses.clone(),
        template_ok: t.template_ok,
        literal_free: t.literal_free,
        observed: t.observed.clone(),
    };
    Arc::new(finalize(a, sql, lexed))
}

/// Approximate bytes a template holds.
fn weight(a: &Analysis) -> usize {
    a.normalized.len() * 2 + 512 + a.accesses.len() * 128
}

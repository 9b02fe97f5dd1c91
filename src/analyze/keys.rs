//! Lock-key extraction: which key tuples of a table a statement may touch.
//!
//! At analysis time every access to a table gets a [`KeySource`]: the rows of an
//! `INSERT … VALUES`, or the WHERE/ON predicate reduced to a disjunction of conjunctions of
//! equality-style constraints (`col = v`, `col IN (…)`, `col = ANY($n)`, `(a, b) IN ((…), …)`,
//! `(a, b) = (…)`) on that table's columns. Anything else in a predicate is widened to TRUE,
//! which is always sound: the extracted key set is a superset of the keys of the rows touched.
//! At call time ([`super::Analysis::lock_keys`]) the constraints are projected onto the key
//! columns and expanded (cartesian product, bounded by [`MAX_KEYS`]).

use std::collections::HashSet;

use serde::Serialize;

use super::normalize::literal_value;
use super::types::{Analysis, TableRef};

/// Most key tuples `lock_keys` will return; beyond that it answers `Undeterminable`.
pub const MAX_KEYS: usize = 1000;
/// Most disjuncts kept for one predicate; beyond that the predicate is widened (sound).
pub(crate) const MAX_DISJUNCTS: usize = 64;

/// One value of a lock key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum KeyValue {
    /// A literal's value in canonical text form (`42`, `'W1'` → `W1`, see
    /// [`super::canonical_key_text`]).
    Literal(String),
    /// Bound parameter `$n` (1-based).
    Param(usize),
    /// Bound array parameter `$n` from `col = ANY($n)`: the row stands for one row per element
    /// of the array (cartesian product when a row holds several).
    ParamArray(usize),
}

impl std::fmt::Display for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyValue::Literal(s) => write!(f, "{s}"),
            KeyValue::Param(n) => write!(f, "${n}"),
            KeyValue::ParamArray(n) => write!(f, "any(${n})"),
        }
    }
}

/// Result of [`super::Analysis::lock_keys`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum KeyExtraction {
    /// One inner `Vec` per key tuple, values in `key_columns` order; deduplicated, in order of
    /// appearance. Never empty.
    Keys(Vec<Vec<KeyValue>>),
    /// The table is touched but the keys cannot be bounded (reason for logs / `explain`).
    Undeterminable(String),
    /// The string neither reads nor writes the table (and has no opaque statement that could).
    NotTouched,
}

/// Why a statement's advisory-lock keys cannot be told (its lock rule's `undeterminable`
/// decides what happens then; the text is logged or sent with the rejection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// What the analysis found ([`KeySource::Undeterminable`]'s reason).
    #[error("{0}")]
    Analysis(String),
    #[error("parameter ${0} has no value")]
    NoParameter(usize),
    #[error("array parameter ${0} has no value")]
    NoArray(usize),
    #[error("more than {MAX_KEYS} keys after binding parameters")]
    TooManyBound,
    #[error("IN list on {cols} has {n} values (more than {MAX_KEYS})")]
    LongInList { cols: String, n: usize },
    #[error("key column {0} is not pinned by =, IN or = ANY")]
    NotPinned(String),
    #[error("{0} key combinations (more than {MAX_KEYS})")]
    TooManyCombinations(usize),
    #[error("ON CONFLICT DO UPDATE assigns key column {0}")]
    ConflictAssigns(String),
    #[error("INSERT column list lacks key column {0}")]
    ColumnMissing(String),
    #[error("row {row}: key column {column} is not a literal or parameter")]
    NotAValue { row: usize, column: String },
    #[error("no predicate")]
    NoPredicate,
    #[error("UPDATE sets key column {0} to an expression")]
    SetToExpression(String),
    /// The statement's text could not be analysed at all (`locks` decides without keys).
    #[error("the statement could not be analysed")]
    Unanalysed,
}

impl KeyExtraction {
    /// Substitutes bound parameters into the extracted keys: `param(n)` gives the text value of
    /// `$n`, `array(n)` the elements of array parameter `$n` (for [`KeyValue::ParamArray`],
    /// expanded as a cartesian product). Every value is passed through
    /// [`super::canonical_key_text`]. Result rows are deduplicated.
    ///
    /// `Ok(vec![])` for `NotTouched`; `Err(reason)` for `Undeterminable`, for a parameter the
    /// callbacks cannot provide (e.g. NULL), or when the expansion exceeds [`MAX_KEYS`].
    pub fn bind(
        &self,
        param: impl Fn(usize) -> Option<String>,
        array: impl Fn(usize) -> Option<Vec<String>>,
    ) -> Result<Vec<Vec<String>>, KeyError> {
        let rows = match self {
            KeyExtraction::NotTouched => return Ok(Vec::new()),
            KeyExtraction::Undeterminable(r) => return Err(KeyError::Analysis(r.clone())),
            KeyExtraction::Keys(rows) => rows,
        };
        let canon = |s: String| match super::normalize::canonical_key_text(&s) {
            std::borrow::Cow::Borrowed(_) => s,
            std::borrow::Cow::Owned(c) => c,
        };
        let mut out: Vec<Vec<String>> = Vec::new();
        for row in rows {
            let mut partial: Vec<Vec<String>> = vec![Vec::with_capacity(row.len())];
            for v in row {
                let choices: Vec<String> = match v {
                    KeyValue::Literal(s) => vec![s.clone()],
                    KeyValue::Param(n) => vec![canon(param(*n).ok_or(KeyError::NoParameter(*n))?)],
                    KeyValue::ParamArray(n) => {
                        let elems = array(*n).ok_or(KeyError::NoArray(*n))?;
                        elems.into_iter().map(canon).collect()
                    }
                };
                if partial.len().saturating_mul(choices.len()) > MAX_KEYS {
                    return Err(KeyError::TooManyBound);
                }
                let mut next = Vec::with_capacity(partial.len() * choices.len());
                for p in &partial {
                    for c in &choices {
                        let mut r = p.clone();
                        r.push(c.clone());
                        next.push(r);
                    }
                }
                partial = next;
            }
            for r in partial {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
            if out.len() > MAX_KEYS {
                return Err(KeyError::TooManyBound);
            }
        }
        Ok(out)
    }
}

/// A literal, parameter or fixed value found in a key position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Atom {
    /// The n-th literal of the text (decoded lazily from the text, so a template can be reused
    /// for another text with different literal values). `neg` = unary minus in front.
    Slot {
        lit: u32,
        neg: bool,
    },
    /// A value that is part of the statement shape (`true`) or had no position (typed string).
    Fixed(String),
    Param(usize),
    ParamArray(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ValueSet {
    /// Allowed tuples over `Constraint::cols`.
    Tuples(Vec<Vec<Atom>>),
    /// An IN list longer than [`MAX_KEYS`].
    TooMany(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Constraint {
    pub cols: Vec<String>,
    pub values: ValueSet,
}

/// Conjunction of constraints; empty = TRUE (no constraint).
pub(crate) type Conj = Vec<Constraint>;

#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// `INSERT (columns) VALUES rows`; `None` = an expression that is not a literal/param
    /// (including `DEFAULT`). `assigned` = columns set by `ON CONFLICT DO UPDATE`.
    Rows {
        columns: Vec<String>,
        rows: Vec<Vec<Option<Atom>>>,
        assigned: Vec<String>,
    },
    /// Every touched row satisfies at least one conjunction. `assigned` = columns an UPDATE
    /// sets, with the new value when it is a literal/param.
    Predicate {
        dnf: Vec<Conj>,
        assigned: Vec<(String, Option<Atom>)>,
    },
    Undeterminable(String),
}

#[derive(Debug, Clone)]
pub(crate) struct TableAccess {
    pub table: TableRef,
    pub write: bool,
    pub source: KeySource,
}

fn atom_text(a: &Atom, an: &Analysis) -> String {
    match a {
        Atom::Slot { lit, neg } => {
            let v = an
                .literals
                .get(*lit as usize)
                .map(|l| literal_value(&an.sql, l))
                .unwrap_or_default();
            if *neg {
                if let Some(stripped) = v.strip_prefix('-') {
                    stripped.to_owned()
                } else if v == "0" {
                    v
                } else {
                    format!("-{v}")
                }
            } else {
                v
            }
        }
        Atom::Fixed(s) => s.clone(),
        Atom::Param(n) => format!("${n}"),
        Atom::ParamArray(n) => format!("any(${n})"),
    }
}

fn atom_value(a: &Atom, an: &Analysis) -> KeyValue {
    match a {
        Atom::Param(n) => KeyValue::Param(*n),
        Atom::ParamArray(n) => KeyValue::ParamArray(*n),
        other => KeyValue::Literal(atom_text(other, an)),
    }
}

impl TableAccess {
    pub(crate) fn describe(&self, an: &Analysis) -> String {
        let mode = if self.write { "write" } else { "read" };
        let body = match &self.source {
            KeySource::Undeterminable(r) => format!("undeterminable ({r})"),
            KeySource::Rows {
                columns,
                rows,
                assigned,
            } => {
                let rows_txt: Vec<String> = rows
                    .iter()
                    .take(8)
                    .map(|r| {
                        let vals: Vec<String> = r
                            .iter()
                            .map(|v| v.as_ref().map_or("<expr>".to_owned(), |a| atom_text(a, an)))
                            .collect();
                        format!("({})", vals.join(", "))
                    })
                    .collect();
                let more = if rows.len() > 8 {
                    format!(" … {} rows", rows.len())
                } else {
                    String::new()
                };
                let upd = if assigned.is_empty() {
                    String::new()
                } else {
                    format!(" on conflict sets {}", assigned.join(", "))
                };
                format!(
                    "rows ({}) = {}{}{}",
                    columns.join(", "),
                    rows_txt.join(", "),
                    more,
                    upd
                )
            }
            KeySource::Predicate { dnf, assigned } => {
                let d: Vec<String> = dnf
                    .iter()
                    .map(|c| {
                        if c.is_empty() {
                            "true".to_owned()
                        } else {
                            c.iter()
                                .map(|k| describe_constraint(k, an))
                                .collect::<Vec<_>>()
                                .join(" and ")
                        }
                    })
                    .collect();
                let mut s = format!(
                    "where {}",
                    if d.len() > 1 {
                        d.iter()
                            .map(|x| format!("({x})"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    } else {
                        d.join("")
                    }
                );
                if !assigned.is_empty() {
                    let a: Vec<String> = assigned
                        .iter()
                        .map(|(c, v)| {
                            format!(
                                "{c} = {}",
                                v.as_ref().map_or("<expr>".to_owned(), |a| atom_text(a, an))
                            )
                        })
                        .collect();
                    s.push_str(&format!(" set {}", a.join(", ")));
                }
                s
            }
        };
        format!("{mode} {}: {body}", self.table)
    }
}

fn describe_constraint(c: &Constraint, an: &Analysis) -> String {
    let cols = if c.cols.len() == 1 {
        c.cols[0].clone()
    } else {
        format!("({})", c.cols.join(", "))
    };
    match &c.values {
        ValueSet::TooMany(n) => format!("{cols} in (…{n} values)"),
        ValueSet::Tuples(ts) => {
            let tup = |t: &Vec<Atom>| {
                if t.len() == 1 {
                    atom_text(&t[0], an)
                } else {
                    format!(
                        "({})",
                        t.iter()
                            .map(|a| atom_text(a, an))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            };
            if ts.len() == 1 {
                format!("{cols} = {}", tup(&ts[0]))
            } else {
                format!(
                    "{cols} in ({})",
                    ts.iter().map(tup).collect::<Vec<_>>().join(", ")
                )
            }
        }
    }
}

/// Fast path: every key column pinned by a single-value, single-column constraint.
fn conj_single_row(conj: &Conj, keys: &[&str], an: &Analysis) -> Option<Vec<KeyValue>> {
    if conj.iter().any(|c| {
        c.cols.len() > 1
            && c.cols
                .iter()
                .filter(|col| keys.contains(&col.as_str()))
                .count()
                > 1
    }) {
        return None;
    }
    let mut row = Vec::with_capacity(keys.len());
    for key in keys {
        let c = conj.iter().find(|c| {
            c.cols.len() == 1
                && c.cols[0] == *key
                && matches!(&c.values, ValueSet::Tuples(ts) if ts.len() == 1)
        })?;
        match &c.values {
            ValueSet::Tuples(ts) => row.push(atom_value(&ts[0][0], an)),
            ValueSet::TooMany(_) => return None,
        }
    }
    Some(row)
}

/// Keys of one conjunction projected on `keys`, or an error reason.
fn conj_keys(conj: &Conj, keys: &[&str], an: &Analysis) -> Result<Vec<Vec<KeyValue>>, KeyError> {
    if let Some(row) = conj_single_row(conj, keys, an) {
        return Ok(vec![row]);
    }
    // Partial rows: each factor covers some key positions.
    let mut factors: Vec<(Vec<usize>, Vec<Vec<KeyValue>>)> = Vec::new();
    let mut covered = vec![false; keys.len()];
    let mut too_many: Option<(String, usize)> = None;
    // Multi-column constraints covering ≥ 2 uncovered key columns first.
    for c in conj.iter().filter(|c| c.cols.len() > 1) {
        let positions: Vec<(usize, usize)> = c
            .cols
            .iter()
            .enumerate()
            .filter_map(|(ci, col)| {
                keys.iter()
                    .position(|k| k == col)
                    .filter(|&ki| !covered[ki])
                    .map(|ki| (ci, ki))
            })
            .collect();
        if positions.len() < 2 {
            continue;
        }
        match &c.values {
            ValueSet::TooMany(n) => {
                too_many = Some((c.cols.join(", "), *n));
                continue;
            }
            ValueSet::Tuples(ts) => {
                let mut rows: Vec<Vec<KeyValue>> = Vec::with_capacity(ts.len());
                let mut seen = HashSet::new();
                for t in ts {
                    let r: Vec<KeyValue> = positions
                        .iter()
                        .map(|&(ci, _)| atom_value(&t[ci], an))
                        .collect();
                    if seen.insert(r.clone()) {
                        rows.push(r);
                    }
                }
                for &(_, ki) in &positions {
                    covered[ki] = true;
                }
                factors.push((positions.iter().map(|&(_, ki)| ki).collect(), rows));
            }
        }
    }
    // Then the smallest single-column constraint per remaining key column.
    for (ki, key) in keys.iter().enumerate() {
        if covered[ki] {
            continue;
        }
        let mut chosen: Option<(usize, &Vec<Vec<Atom>>)> = None;
        for c in conj.iter() {
            let Some(ci) = c.cols.iter().position(|col| col == key) else {
                continue;
            };
            match &c.values {
                ValueSet::TooMany(n) => {
                    too_many.get_or_insert((key.to_string(), *n));
                }
                ValueSet::Tuples(ts) => {
                    if chosen.is_none_or(|(_, b)| ts.len() < b.len()) {
                        chosen = Some((ci, ts));
                    }
                }
            }
        }
        let Some((ci, ts)) = chosen else {
            if let Some((cols, n)) = too_many {
                return Err(KeyError::LongInList { cols, n });
            }
            return Err(KeyError::NotPinned(key.to_string()));
        };
        let mut rows = Vec::with_capacity(ts.len());
        let mut seen = HashSet::new();
        for t in ts {
            let v = atom_value(&t[ci], an);
            if seen.insert(v.clone()) {
                rows.push(vec![v]);
            }
        }
        covered[ki] = true;
        factors.push((vec![ki], rows));
    }
    // Cartesian product.
    let total: usize = factors
        .iter()
        .try_fold(1usize, |acc, (_, r)| acc.checked_mul(r.len()))
        .unwrap_or(usize::MAX);
    if total > MAX_KEYS {
        return Err(KeyError::TooManyCombinations(total));
    }
    let mut out: Vec<Vec<Option<KeyValue>>> = vec![vec![None; keys.len()]];
    for (positions, rows) in &factors {
        let mut next = Vec::with_capacity(out.len() * rows.len());
        for partial in &out {
            for r in rows {
                let mut p = partial.clone();
                for (i, &ki) in positions.iter().enumerate() {
                    p[ki] = Some(r[i].clone());
                }
                next.push(p);
            }
        }
        out = next;
    }
    Ok(out
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| v.expect("every key column covered"))
                .collect()
        })
        .collect())
}

fn source_keys(
    src: &KeySource,
    keys: &[&str],
    an: &Analysis,
) -> Result<Vec<Vec<KeyValue>>, KeyError> {
    match src {
        KeySource::Undeterminable(r) => Err(KeyError::Analysis(r.clone())),
        KeySource::Rows {
            columns,
            rows,
            assigned,
        } => {
            if let Some(k) = keys.iter().find(|k| assigned.iter().any(|a| a == *k)) {
                return Err(KeyError::ConflictAssigns(k.to_string()));
            }
            let mut idx = Vec::with_capacity(keys.len());
            for k in keys {
                match columns.iter().position(|c| c == k) {
                    Some(i) => idx.push(i),
                    None => return Err(KeyError::ColumnMissing(k.to_string())),
                }
            }
            let mut out = Vec::with_capacity(rows.len());
            for (ri, r) in rows.iter().enumerate() {
                let mut row = Vec::with_capacity(keys.len());
                for (ki, &i) in idx.iter().enumerate() {
                    match r.get(i).and_then(|v| v.as_ref()) {
                        Some(a) => row.push(atom_value(a, an)),
                        None => {
                            return Err(KeyError::NotAValue {
                                row: ri + 1,
                                column: keys[ki].to_string(),
                            })
                        }
                    }
                }
                out.push(row);
            }
            Ok(out)
        }
        KeySource::Predicate { dnf, assigned } => {
            if dnf.is_empty() {
                return Err(KeyError::NoPredicate);
            }
            let mut out = Vec::new();
            for conj in dnf {
                out.extend(conj_keys(conj, keys, an)?);
            }
            // An UPDATE moving a row to another key touches the new key too.
            let moved: Vec<(usize, &Option<Atom>)> = assigned
                .iter()
                .filter_map(|(c, v)| keys.iter().position(|k| k == c).map(|ki| (ki, v)))
                .collect();
            if !moved.is_empty() {
                let mut extra = Vec::new();
                for row in &out {
                    let mut r = row.clone();
                    for (ki, v) in &moved {
                        match v {
                            Some(a) => r[*ki] = atom_value(a, an),
                            None => return Err(KeyError::SetToExpression(keys[*ki].to_string())),
                        }
                    }
                    extra.push(r);
                }
                out.extend(extra);
            }
            Ok(out)
        }
    }
}

impl Analysis {
    /// Key tuples of `table` (over `key_columns`, given as stored in Postgres: lower-case
    /// unless created quoted) that this string may touch.
    ///
    /// * If the string writes the table, only the writing accesses count (INSERT incl.
    ///   `ON CONFLICT`, UPDATE, DELETE, MERGE); otherwise the reading ones (e.g. `SELECT … FOR
    ///   UPDATE`). All accesses of that mode must be determinable; their keys are united.
    /// * If some statement could write tables the analyzer cannot see (`DO`, `CALL`, `EXECUTE`,
    ///   an unparsable statement, a volatile function outside `pg_catalog` or unknown to the
    ///   catalog), the answer is `Undeterminable` even for tables not visibly touched.
    /// * `NotTouched` when the table does not appear at all.
    pub fn lock_keys(&self, table: &TableRef, key_columns: &[&str]) -> KeyExtraction {
        if key_columns.is_empty() {
            return KeyExtraction::Undeterminable("no key columns given".to_owned());
        }
        if let Some(r) = &self.hidden_writes {
            return KeyExtraction::Undeterminable(r.clone());
        }
        let writes = self
            .accesses
            .iter()
            .any(|a| a.write && a.table.matches(table));
        let mut out: Vec<Vec<KeyValue>> = Vec::new();
        let mut any = false;
        for a in self
            .accesses
            .iter()
            .filter(|a| a.write == writes && a.table.matches(table))
        {
            any = true;
            match source_keys(&a.source, key_columns, self) {
                Ok(rows) if out.is_empty() => out = rows,
                Ok(rows) => out.extend(rows),
                Err(reason) => return KeyExtraction::Undeterminable(reason.to_string()),
            }
        }
        if !any {
            return KeyExtraction::NotTouched;
        }
        // Deduplicate, keeping the first occurrence.
        if out.len() > 1 {
            if out.len() <= 16 {
                let mut i = 1;
                while i < out.len() {
                    if out[..i].contains(&out[i]) {
                        out.remove(i);
                    } else {
                        i += 1;
                    }
                }
            } else {
                let mut seen: HashSet<Vec<KeyValue>> = HashSet::with_capacity(out.len());
                out.retain(|r| seen.insert(r.clone()));
            }
        }
        if out.len() > MAX_KEYS {
            return KeyExtraction::Undeterminable(format!(
                "{} keys (more than {MAX_KEYS})",
                out.len()
            ));
        }
        KeyExtraction::Keys(out)
    }
}

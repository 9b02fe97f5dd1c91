//! A Jepsen/Elle-style checker for histories of reads and writes on versioned keys.
//!
//! The workload (tests/it/consistency.rs) writes unique values with
//! `UPDATE kv SET ver = ver + 1, val = $u WHERE k = $1 RETURNING ver`: the row lock orders the
//! writes to one key, so the version a write returns names its place in that order, and the
//! version a read returns says exactly which write it saw. That makes the checks exact and
//! linear in the history (no search over possible orders):
//!
//! - **stale read**: a read returned a version older than a write acknowledged before the read
//!   was invoked. Reported in the narrowest scope it breaks: the same session, another session
//!   of the same sidecar, or a session of another sidecar sharing the cache's Redis.
//! - **non-monotonic read**: a session read an older version of a key than it had already read.
//! - **lost write**: an acknowledged write that the final state (read from the primary) does not
//!   contain: its version is past the final one, or another acknowledged write got the same
//!   version (one of the two was overwritten or rolled back after its acknowledgement).
//! - **wrong value**: a read's (version, value) pair that no write produced.
//!
//! An operation that failed or timed out has an *unknown* outcome: an errored write may have
//! committed (its value may be read, and it consumes a version), but it never makes a read
//! stale and is never lost; an errored read checks nothing. Errors are counted and listed.
//!
//! Times are nanoseconds of one monotonic clock in one process (`Instant` since the run began):
//! a write acknowledged before a read was invoked is ordered before it in real time.

use std::collections::HashMap;
use std::fmt;

/// Nanoseconds since the run began (monotonic clock of the test process).
pub type Nanos = u64;

/// The version and value every key starts with.
pub const INITIAL_VERSION: i64 = 0;
pub const INITIAL_VALUE: &str = "init";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

/// What an operation ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A write acknowledged with the version it got, or a read that returned this row.
    Ok { ver: i64, val: String },
    /// Failed or timed out: a write may or may not have committed; a read saw nothing usable.
    Unknown(String),
}

/// One client operation, from invocation to completion.
#[derive(Debug, Clone)]
pub struct Op {
    /// Which sidecar the client is connected through (0, 1, …).
    pub sidecar: usize,
    /// Client session (connection) id, unique in the run; a client that reconnects after an
    /// error gets a new one.
    pub session: usize,
    /// Table and row, e.g. `kv_cached/3`.
    pub key: String,
    pub kind: Kind,
    /// How it was sent: protocol and transaction form (`simple`, `prepared`, `txn` …).
    pub how: &'static str,
    /// Anything else about how it ran (e.g. a session setting), printed with it.
    pub note: &'static str,
    pub invoke: Nanos,
    pub complete: Nanos,
    /// The value a write wrote (unique in the run); empty for reads.
    pub value: String,
    pub outcome: Outcome,
    /// Where the proxy sent it, when the answer tells (the server's port), else None.
    pub route: Option<String>,
}

impl Op {
    fn ok_ver(&self) -> Option<i64> {
        match &self.outcome {
            Outcome::Ok { ver, .. } => Some(*ver),
            Outcome::Unknown(_) => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |n: Nanos| n as f64 / 1e6;
        let kind = match self.kind {
            Kind::Read => "read ",
            Kind::Write => "write",
        };
        write!(
            f,
            "{kind} {key:<13} sidecar {sc} session {s:<4} {how:<9} invoked {i:>10.3} ms, completed {c:>10.3} ms",
            key = self.key,
            sc = self.sidecar,
            s = self.session,
            how = self.how,
            i = ms(self.invoke),
            c = ms(self.complete)
        )?;
        if self.kind == Kind::Write {
            write!(f, ", wrote {:?}", self.value)?;
        }
        match &self.outcome {
            Outcome::Ok { ver, val } if self.kind == Kind::Read => {
                write!(f, " -> ver {ver} {val:?}")?
            }
            Outcome::Ok { ver, .. } => write!(f, " -> acknowledged as ver {ver}")?,
            Outcome::Unknown(e) => write!(f, " -> unknown ({e})")?,
        }
        if let Some(r) = &self.route {
            write!(f, " [route: {r}]")?;
        }
        if !self.note.is_empty() {
            write!(f, " [{}]", self.note)?;
        }
        Ok(())
    }
}

/// How far from the reader the write it missed was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    SameSession,
    SameSidecar,
    OtherSidecar,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::SameSession => "same session",
            Scope::SameSidecar => "another session of the same sidecar",
            Scope::OtherSidecar => "a session of another sidecar",
        })
    }
}

/// One violation, with the smallest history that shows it.
#[derive(Debug, Clone)]
pub enum Anomaly {
    /// `read` returned an older version than `missed`, acknowledged before `read` was invoked.
    /// `seen` is the write whose version the read returned, when known.
    StaleRead {
        scope: Scope,
        read: Op,
        missed: Op,
        seen: Option<Op>,
    },
    /// The session read `later` after `earlier`, and `later` is older.
    NonMonotonic { earlier: Op, later: Op },
    /// An acknowledged write missing from the final state.
    LostWrite {
        write: Op,
        why: String,
        other: Option<Op>,
    },
    /// A read returned a pair no write produced.
    WrongValue {
        read: Op,
        why: String,
        write: Option<Op>,
    },
}

impl Anomaly {
    pub fn name(&self) -> String {
        match self {
            Anomaly::StaleRead { scope, .. } => format!("stale read ({scope})"),
            Anomaly::NonMonotonic { .. } => "non-monotonic read".into(),
            Anomaly::LostWrite { .. } => "lost write".into(),
            Anomaly::WrongValue { .. } => "wrong value".into(),
        }
    }

    /// The operation that shows it: the stale, non-monotonic or wrong read, or the lost write.
    pub fn offending(&self) -> &Op {
        match self {
            Anomaly::StaleRead { read, .. } | Anomaly::WrongValue { read, .. } => read,
            Anomaly::NonMonotonic { later, .. } => later,
            Anomaly::LostWrite { write, .. } => write,
        }
    }

    /// When it was observed: the offending read's invocation, or the lost write's
    /// acknowledgement (to tell which fault, if any, was in effect).
    pub fn at(&self) -> Nanos {
        let op = self.offending();
        match self {
            Anomaly::LostWrite { .. } => op.complete,
            _ => op.invoke,
        }
    }

    /// Time the history spans, to pick the smallest example of each kind.
    fn span(&self) -> Nanos {
        let (a, b) = match self {
            Anomaly::StaleRead { read, missed, .. } => (missed.invoke, read.complete),
            Anomaly::NonMonotonic { earlier, later } => (earlier.invoke, later.complete),
            Anomaly::LostWrite { write, .. } => (write.invoke, write.complete),
            Anomaly::WrongValue { read, .. } => (read.invoke, read.complete),
        };
        b.saturating_sub(a)
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |n: Nanos| n as f64 / 1e6;
        match self {
            Anomaly::StaleRead {
                scope,
                read,
                missed,
                seen,
            } => {
                writeln!(
                    f,
                    "STALE READ ({scope}): ver {} was acknowledged at {:.3} ms, {:.3} ms before \
                     the read was invoked, which returned ver {}",
                    missed.ok_ver().unwrap_or_default(),
                    ms(missed.complete),
                    ms(read.invoke.saturating_sub(missed.complete)),
                    read.ok_ver().unwrap_or_default()
                )?;
                writeln!(f, "  {missed}")?;
                writeln!(f, "  {read}")?;
                match seen {
                    Some(w) => write!(f, "  (the read's version came from) {w}"),
                    None => write!(
                        f,
                        "  (the read's version is the initial row or an unknown write)"
                    ),
                }
            }
            Anomaly::NonMonotonic { earlier, later } => {
                writeln!(
                    f,
                    "NON-MONOTONIC READ: session {} read ver {} and then ver {}",
                    later.session,
                    earlier.ok_ver().unwrap_or_default(),
                    later.ok_ver().unwrap_or_default()
                )?;
                writeln!(f, "  {earlier}")?;
                write!(f, "  {later}")
            }
            Anomaly::LostWrite { write, why, other } => {
                writeln!(f, "LOST WRITE: {why}")?;
                write!(f, "  {write}")?;
                if let Some(o) = other {
                    write!(f, "\n  {o}")?;
                }
                Ok(())
            }
            Anomaly::WrongValue { read, why, write } => {
                writeln!(f, "WRONG VALUE: {why}")?;
                write!(f, "  {read}")?;
                if let Some(w) = write {
                    write!(f, "\n  {w}")?;
                }
                Ok(())
            }
        }
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub ops: usize,
    pub reads_ok: usize,
    pub writes_acked: usize,
    /// Operations with an unknown outcome (errors and timeouts).
    pub unknown: Vec<Op>,
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    /// Anomalies counted by kind, in a stable order.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for a in &self.anomalies {
            match counts.iter_mut().find(|(n, _)| *n == a.name()) {
                Some((_, c)) => *c += 1,
                None => counts.push((a.name(), 1)),
            }
        }
        counts.sort();
        counts
    }

    /// The smallest (shortest in time) history of each kind of anomaly.
    pub fn smallest(&self) -> Vec<&Anomaly> {
        let mut best: Vec<&Anomaly> = Vec::new();
        for a in &self.anomalies {
            match best.iter_mut().find(|b| b.name() == a.name()) {
                Some(b) if a.span() < b.span() => *b = a,
                Some(_) => {}
                None => best.push(a),
            }
        }
        best.sort_by_key(|a| a.name());
        best
    }

    /// Unknown outcomes counted by their message (errors of a fault repeat).
    pub fn error_counts(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for op in &self.unknown {
            if let Outcome::Unknown(e) = &op.outcome {
                let kind = match op.kind {
                    Kind::Read => "read",
                    Kind::Write => "write",
                };
                *counts.entry(format!("{kind}: {e}")).or_default() += 1;
            }
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "operations checked: {} ({} reads returned a row, {} writes acknowledged, {} unknown)",
            self.ops,
            self.reads_ok,
            self.writes_acked,
            self.unknown.len()
        )?;
        if !self.unknown.is_empty() {
            writeln!(
                f,
                "errors (outcome unknown: checked as maybe-committed writes / nothing-seen reads):"
            )?;
            for (e, n) in self.error_counts().iter().take(15) {
                writeln!(f, "  {n:>6} × {e}")?;
            }
        }
        writeln!(f, "anomalies: {}", self.anomalies.len())?;
        for (name, n) in self.counts() {
            writeln!(f, "  {n:>6} × {name}")?;
        }
        for a in self.smallest() {
            writeln!(f, "smallest history showing a {}:\n{a}", a.name())?;
        }
        Ok(())
    }
}

/// Writes acknowledged to one key (in one scope), ordered by acknowledgement time, with the
/// highest version acknowledged so far at each point.
struct AckIndex {
    /// (ack time, op index of the highest version acknowledged up to then)
    prefix_max: Vec<(Nanos, usize)>,
}

impl AckIndex {
    fn new(history: &[Op], mut writes: Vec<usize>) -> AckIndex {
        writes.sort_by_key(|&i| history[i].complete);
        let mut prefix_max: Vec<(Nanos, usize)> = Vec::with_capacity(writes.len());
        for i in writes {
            let best = match prefix_max.last() {
                Some(&(_, b)) if history[b].ok_ver() >= history[i].ok_ver() => b,
                _ => i,
            };
            prefix_max.push((history[i].complete, best));
        }
        AckIndex { prefix_max }
    }

    /// The highest-versioned write acknowledged strictly before `t`.
    fn latest_before(&self, t: Nanos) -> Option<usize> {
        let n = self.prefix_max.partition_point(|&(ack, _)| ack < t);
        n.checked_sub(1).map(|i| self.prefix_max[i].1)
    }
}

/// Checks `history` against `final_state` (key → (version, value) read from the primary after
/// every client finished). Every key the history names must be in `final_state`.
pub fn check(history: &[Op], final_state: &HashMap<String, (i64, String)>) -> Report {
    let mut report = Report {
        ops: history.len(),
        ..Report::default()
    };
    // Acknowledged writes per key, per (key, sidecar), per (key, session).
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_sidecar: HashMap<(&str, usize), Vec<usize>> = HashMap::new();
    let mut by_session: HashMap<(&str, usize), Vec<usize>> = HashMap::new();
    // Every write (acknowledged or not) by the value it wrote: values are unique.
    let mut by_value: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        match (&op.kind, &op.outcome) {
            (_, Outcome::Unknown(_)) => report.unknown.push(op.clone()),
            (Kind::Read, Outcome::Ok { .. }) => report.reads_ok += 1,
            (Kind::Write, Outcome::Ok { .. }) => {
                report.writes_acked += 1;
                by_key.entry(&op.key).or_default().push(i);
                by_sidecar.entry((&op.key, op.sidecar)).or_default().push(i);
                by_session.entry((&op.key, op.session)).or_default().push(i);
            }
        }
        if op.kind == Kind::Write {
            by_value.insert((&op.key, &op.value), i);
        }
    }
    fn index<K: std::hash::Hash + Eq>(
        history: &[Op],
        m: HashMap<K, Vec<usize>>,
    ) -> HashMap<K, AckIndex> {
        m.into_iter()
            .map(|(k, v)| (k, AckIndex::new(history, v)))
            .collect()
    }
    let acked_by_key = by_key.clone();
    let key_index: HashMap<&str, AckIndex> = index(history, by_key);
    let sidecar_index: HashMap<(&str, usize), AckIndex> = index(history, by_sidecar);
    let session_index: HashMap<(&str, usize), AckIndex> = index(history, by_session);

    // (a) stale reads and wrong values.
    for read in history.iter().filter(|op| op.kind == Kind::Read) {
        let Outcome::Ok { ver, val } = &read.outcome else {
            continue;
        };
        let producer = by_value.get(&(read.key.as_str(), val.as_str())).copied();
        if let Some(why) = wrong_value(history, read, *ver, val, producer) {
            report.anomalies.push(Anomaly::WrongValue {
                read: read.clone(),
                why,
                write: producer.map(|i| history[i].clone()),
            });
        }
        let stale = |idx: Option<&AckIndex>| -> Option<usize> {
            let w = idx?.latest_before(read.invoke)?;
            (history[w].ok_ver()? > *ver).then_some(w)
        };
        let key = read.key.as_str();
        let found = stale(session_index.get(&(key, read.session)))
            .map(|w| (Scope::SameSession, w))
            .or_else(|| {
                stale(sidecar_index.get(&(key, read.sidecar))).map(|w| (Scope::SameSidecar, w))
            })
            .or_else(|| stale(key_index.get(key)).map(|w| (Scope::OtherSidecar, w)));
        if let Some((scope, w)) = found {
            report.anomalies.push(Anomaly::StaleRead {
                scope,
                read: read.clone(),
                missed: history[w].clone(),
                seen: producer.map(|i| history[i].clone()),
            });
        }
    }

    // (b) monotonic reads per session, in the session's order (a session runs one op at a time).
    let mut sessions: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        if op.kind == Kind::Read && op.ok_ver().is_some() {
            sessions.entry(op.session).or_default().push(i);
        }
    }
    for reads in sessions.values_mut() {
        reads.sort_by_key(|&i| history[i].invoke);
        let mut highest: HashMap<&str, usize> = HashMap::new();
        for &i in reads.iter() {
            let op = &history[i];
            match highest.get(op.key.as_str()) {
                Some(&h) if history[h].ok_ver() > op.ok_ver() => {
                    report.anomalies.push(Anomaly::NonMonotonic {
                        earlier: history[h].clone(),
                        later: op.clone(),
                    });
                }
                _ => {
                    highest.insert(&op.key, i);
                }
            }
        }
    }

    // (c) no acknowledged write lost.
    let mut keys: Vec<&str> = acked_by_key.keys().copied().collect();
    keys.sort_unstable();
    for key in keys {
        let Some((final_ver, final_val)) = final_state.get(key) else {
            panic!("history checker: no final state for key {key}");
        };
        let mut acked = acked_by_key[key].clone();
        acked.sort_by_key(|&i| history[i].complete);
        let mut by_ver: HashMap<i64, usize> = HashMap::new();
        let mut claims: HashMap<i64, usize> = HashMap::new();
        for &i in &acked {
            *claims
                .entry(history[i].ok_ver().unwrap_or_default())
                .or_default() += 1;
        }
        for i in acked {
            let w = &history[i];
            let ver = w.ok_ver().unwrap_or_default();
            if ver > *final_ver {
                report.anomalies.push(Anomaly::LostWrite {
                    write: w.clone(),
                    why: format!(
                        "acknowledged as ver {ver}, but the primary's final row of {key} is ver \
                         {final_ver} {final_val:?}"
                    ),
                    other: None,
                });
            } else if ver == *final_ver && w.value != *final_val && claims[&ver] == 1 {
                // (Two acknowledgements of the final version are reported below, once.)
                report.anomalies.push(Anomaly::LostWrite {
                    write: w.clone(),
                    why: format!(
                        "acknowledged as ver {ver}, but the primary's final row of {key} has that \
                         version with value {final_val:?}"
                    ),
                    other: None,
                });
            }
            if let Some(&first) = by_ver.get(&ver) {
                report.anomalies.push(Anomaly::LostWrite {
                    write: history[first].clone(),
                    why: format!(
                        "two writes to {key} were both acknowledged as ver {ver}: one of them was \
                         undone"
                    ),
                    other: Some(w.clone()),
                });
            } else {
                by_ver.insert(ver, i);
            }
        }
    }
    report
}

/// Why a read's (version, value) pair cannot have come from any write, if it cannot.
fn wrong_value(
    history: &[Op],
    read: &Op,
    ver: i64,
    val: &str,
    producer: Option<usize>,
) -> Option<String> {
    if ver == INITIAL_VERSION {
        return (val != INITIAL_VALUE).then(|| {
            format!("ver {INITIAL_VERSION} should be the initial value {INITIAL_VALUE:?}")
        });
    }
    let Some(p) = producer else {
        return Some(format!("no write to {} wrote {val:?}", read.key));
    };
    let w = &history[p];
    if w.invoke > read.complete {
        return Some("the value was written by a write invoked after the read completed".into());
    }
    match w.ok_ver() {
        Some(v) if v != ver => Some(format!(
            "the read returned {val:?} as ver {ver}, but its write was acknowledged as ver {v}"
        )),
        _ => None,
    }
}

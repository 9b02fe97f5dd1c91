//! Generation tokens: one random u64 per table (plus the pseudo-table [`GLOBAL`], which every
//! entry depends on, so `INVALIDATE ALL` is one token change). An entry records the tokens of
//! its tables at fill time and is served only while all of them are still the current ones.
//!
//! With Redis, the shared token of a table lives in `{prefix}:tok:{table}` as
//! `"{version}:{token:016x}:{lsn:x}"` (`lsn`: the commit position of the write that set it, see
//! `invalidate.rs`; this module keeps only version and token), where `version` comes from the Redis server clock (µs, and
//! always above the previous version of that key). Randomness makes a token impossible to
//! recreate: after a Redis restart, flush or eviction a new token is created and no old entry
//! can match it. Versions make the in-memory copy move only forward: messages and reads can
//! arrive in any order (pub/sub and commands use different connections), and a table adopts a
//! token only if its version is newer than every version it has seen, so a late, older message
//! can never bring back a token that an invalidation already retired.
//!
//! Local invalidation ("pending" mode): when this sidecar invalidates a table it cannot know
//! the version its Redis update will get, and in-flight older messages must not undo it. So it
//! switches the table to a fresh *local* token (never published: entries filled with it stay
//! in L1) and remembers the token it is publishing. Until every one of its own published
//! tokens has come back (as the script's reply or as a pub/sub message), newer observations
//! only rotate the local token; when the last one is back, the table adopts the newest shared
//! token seen since the invalidation. If a publish is lost (Redis down), the table stays local
//! until the next resync (pub/sub reconnect), which clears everything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

/// Pseudo-table every entry depends on; changing its token invalidates everything.
pub(crate) const GLOBAL: &str = "*";

/// Own publishes remembered per table; past this the table stays local until a resync.
const MAX_PENDING: usize = 16;

/// How long an announced write (a bump marked `Intent`, see `super::stored::Mark`) keeps its
/// table from being filled when its end is not heard of: the writer died, or its message was
/// lost. Also how long a sidecar stores nothing after it forgot its tokens (a join or a
/// resync): announcements made before that moment were not sent to it, and each of them is
/// over within this bound. A commit that takes longer than this (e.g. `remote_apply` with
/// every synchronous standby stopped) reopens the window the announcement closes.
pub const INTENT_HOLD: Duration = Duration::from_secs(5);

/// Upper bound on the announcements remembered per table: a hostile or broken publisher
/// cannot grow memory; past it the table is simply held for [`INTENT_HOLD`] from the last one.
const MAX_INTENTS: usize = 256;

/// Upper bound on the tables with announcements remembered (they come from Redis, which other
/// processes can write): past it, every fill is held for [`INTENT_HOLD`] instead of growing.
const MAX_INTENT_TABLES: usize = 16 * 1024;

/// One table's token as recorded in an entry or a fill ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snap {
    pub table: Arc<str>,
    pub token: u64,
    /// Redis version of `token`; meaningless when `!shared`.
    pub version: u64,
    /// The token is the table's shared (Redis) token, so an entry may go to L2.
    pub shared: bool,
}

#[derive(Debug)]
struct Tok {
    token: u64,
    version: u64,
    shared: bool,
    /// Tokens this sidecar published for the table and has not seen come back yet.
    pending: Vec<u64>,
    /// Lost track of an own publish: stay local until the next reset.
    stuck: bool,
    /// Newest shared (version, token) observed since the last local invalidation.
    best: Option<(u64, u64)>,
}

impl Tok {
    fn local(version: u64) -> Tok {
        Tok {
            token: rand::random(),
            version,
            shared: false,
            pending: Vec::new(),
            stuck: false,
            best: None,
        }
    }

    fn pending_mode(&self) -> bool {
        !self.pending.is_empty() || self.stuck
    }

    /// Applies an observed shared token; true when the effective token changed.
    fn observe(&mut self, version: u64, token: u64) -> bool {
        if !self.pending_mode() {
            if version > self.version {
                self.token = token;
                self.version = version;
                self.shared = true;
                return true;
            }
            return false;
        }
        let own = match self.pending.iter().position(|p| *p == token) {
            Some(i) => {
                self.pending.remove(i);
                true
            }
            None => false,
        };
        let mut changed = false;
        if version > self.version {
            self.version = version;
            self.best = Some((version, token));
            if !own {
                // Someone else invalidated after our write: entries filled with the current
                // local token may predate that write.
                self.token = rand::random();
                changed = true;
            }
        }
        if self.pending.is_empty() && !self.stuck {
            if let Some((v, t)) = self.best.take() {
                self.token = t;
                self.version = v;
                self.shared = true;
                changed = true;
            }
        }
        changed
    }
}

struct State {
    /// Bumped by every reset; results of Redis calls started before a reset are discarded.
    epoch: u64,
    map: HashMap<Arc<str>, Tok>,
    /// Writes announced and not yet ended, per table: (intent token, hold deadline). Kept
    /// across resets: forgetting one would let a fill store what the write is about to change.
    intents: HashMap<Arc<str>, Vec<(u64, Instant)>>,
    /// The ids among `intents` that are this sidecar's own announcements (it ends them itself).
    own_intents: std::collections::HashSet<u64>,
    /// After a reset, nothing is stored until then (see [`INTENT_HOLD`]).
    blind_until: Option<Instant>,
}

pub(crate) struct Tokens {
    state: RwLock<State>,
    /// Woken whenever an announcement ends (see [`Tokens::outstanding`]).
    pub(crate) ended: tokio::sync::Notify,
}

impl Tokens {
    pub(crate) fn new() -> Tokens {
        Tokens {
            state: RwLock::new(State {
                epoch: 0,
                map: HashMap::new(),
                intents: HashMap::new(),
                own_intents: Default::default(),
                blind_until: None,
            }),
            ended: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.state.read().epoch
    }

    /// The hit check: every token the entry recorded is still current, and the entry covers
    /// every requested table.
    pub(crate) fn entry_current(&self, entry: &[Snap], requested: &[&str]) -> bool {
        {
            let st = self.state.read();
            for s in entry {
                match st.map.get(&*s.table) {
                    Some(t) if t.token == s.token => {}
                    _ => return false,
                }
            }
        }
        requested
            .iter()
            .all(|r| entry.iter().any(|s| &*s.table == *r))
    }

    /// Tokens of `tables` now (creating unshared local tokens for unknown tables), with the
    /// epoch they belong to.
    pub(crate) fn snapshot(&self, tables: &[&str]) -> (u64, Vec<Snap>) {
        {
            let st = self.state.read();
            if let Some(snap) = Self::collect(&st, tables) {
                return (st.epoch, snap);
            }
        }
        let mut st = self.state.write();
        for t in tables {
            if !st.map.contains_key(*t) {
                st.map.insert(Arc::from(*t), Tok::local(0));
            }
        }
        let snap = Self::collect(&st, tables).expect("every table was just inserted");
        (st.epoch, snap)
    }

    fn collect(st: &State, tables: &[&str]) -> Option<Vec<Snap>> {
        tables
            .iter()
            .map(|t| {
                st.map.get_key_value(*t).map(|(name, tok)| Snap {
                    table: name.clone(),
                    token: tok.token,
                    version: tok.version,
                    shared: tok.shared,
                })
            })
            .collect()
    }

    /// The fill check: same epoch, and every token of the ticket is still current.
    pub(crate) fn still_current(&self, epoch: u64, snap: &[Snap]) -> bool {
        let st = self.state.read();
        st.epoch == epoch
            && snap
                .iter()
                .all(|s| st.map.get(&*s.table).is_some_and(|t| t.token == s.token))
    }

    /// Applies a shared token seen in Redis (a read, a script reply or a pub/sub message).
    /// `epoch`: the epoch when the Redis call started (None for pub/sub messages, which belong
    /// to the live subscription); a stale epoch means the call may predate missed messages, so
    /// its result is dropped. True when the table's effective token changed.
    pub(crate) fn observe(
        &self,
        epoch: Option<u64>,
        table: &str,
        version: u64,
        token: u64,
    ) -> bool {
        let mut st = self.state.write();
        if epoch.is_some_and(|e| e != st.epoch) {
            return false;
        }
        match st.map.get_mut(table) {
            Some(t) => t.observe(version, token),
            None => {
                st.map.insert(
                    Arc::from(table),
                    Tok {
                        token,
                        version,
                        shared: true,
                        pending: Vec::new(),
                        stuck: false,
                        best: None,
                    },
                );
                false
            }
        }
    }

    /// Replaces the tables' tokens with fresh local ones. With `publish`, also returns, per
    /// table, the token to publish, which the table waits for (see the module doc).
    pub(crate) fn local_invalidate(&self, tables: &[&str], publish: bool) -> Vec<(Arc<str>, u64)> {
        let mut st = self.state.write();
        let mut out = Vec::new();
        for t in tables {
            let name: Arc<str> = match st.map.get_key_value(*t) {
                Some((k, _)) => k.clone(),
                None => {
                    let k: Arc<str> = Arc::from(*t);
                    st.map.insert(k.clone(), Tok::local(0));
                    k
                }
            };
            let tok = st.map.get_mut(&*name).expect("just ensured");
            tok.token = rand::random();
            tok.shared = false;
            if publish {
                let p: u64 = rand::random();
                tok.pending.push(p);
                if tok.pending.len() > MAX_PENDING {
                    tok.pending.remove(0);
                    tok.stuck = true;
                }
                tok.best = None;
                out.push((name, p));
            }
        }
        out
    }

    /// Forgets every token (pub/sub (re)connected or lost: messages may have been missed).
    /// `announcements_missed`: writes may have been announced unheard, so nothing is stored
    /// until [`Tokens::caught_up`] (or for [`INTENT_HOLD`]). Announcements heard are kept.
    pub(crate) fn reset(&self, announcements_missed: bool) {
        let mut st = self.state.write();
        st.epoch += 1;
        st.map.clear();
        if announcements_missed {
            st.blind_until = Some(Instant::now() + INTENT_HOLD);
        }
    }

    /// The writes announced while this sidecar was not listening are known again (read from
    /// Redis and noted): fills may be stored again.
    pub(crate) fn caught_up(&self) {
        self.state.write().blind_until = None;
    }

    /// On joining the fleet: the other sidecars' announcements are those Redis lists as not
    /// ended (`unended`: table, id, hold left); any other one heard before was ended while
    /// this sidecar was not listening (its end message is lost), or Redis lost it with the
    /// rest. Kept otherwise, such an announcement would hold its table for the whole
    /// [`INTENT_HOLD`] after every Redis restart. This sidecar's own stay until it ends them.
    /// Then fills may be stored again.
    pub(crate) fn rejoined(&self, unended: &[(String, u64, Duration)]) {
        let now = Instant::now();
        let mut st = self.state.write();
        let State {
            intents,
            own_intents,
            ..
        } = &mut *st;
        intents.retain(|_, l| {
            l.retain(|(id, until)| own_intents.contains(id) && *until > now);
            !l.is_empty()
        });
        own_intents.retain(|id| intents.values().any(|l| l.iter().any(|(i, _)| i == id)));
        drop(st);
        for (table, id, left) in unended {
            self.note_intent(table, *id, *left);
        }
        self.caught_up();
    }

    /// [`Tokens::note_intent`] of an announcement of this sidecar's.
    pub(crate) fn note_own_intent(&self, table: &str, id: u64) {
        self.state.write().own_intents.insert(id);
        self.note_intent(table, id, INTENT_HOLD);
    }

    /// A write to `table` was announced (`id`: its intent token): no fill of the table is
    /// stored until [`Tokens::end_intent`] with the same id, or `hold` (at most
    /// [`INTENT_HOLD`]) passes.
    pub(crate) fn note_intent(&self, table: &str, id: u64, hold: Duration) {
        let now = Instant::now();
        let mut st = self.state.write();
        if !st.intents.contains_key(table) && st.intents.len() >= MAX_INTENT_TABLES {
            st.intents
                .retain(|_, l| l.iter().any(|(_, until)| *until > now));
            if st.intents.len() >= MAX_INTENT_TABLES {
                let until = now + hold.min(INTENT_HOLD);
                st.blind_until = Some(st.blind_until.map_or(until, |b| b.max(until)));
                return;
            }
        }
        let list = match st.intents.get_mut(table) {
            Some(l) => l,
            None => st.intents.entry(Arc::from(table)).or_default(),
        };
        list.retain(|(_, until)| *until > now);
        let until = now + hold.min(INTENT_HOLD);
        if let Some(held) = list.iter_mut().find(|(i, _)| *i == id) {
            held.1 = held.1.max(until); // renewed
            return;
        }
        if list.len() >= MAX_INTENTS {
            list.remove(0);
        }
        list.push((id, until));
    }

    /// The announced write `id` to `table` is over (committed and bumped again, or given up).
    pub(crate) fn end_intent(&self, table: &str, id: u64) {
        {
            let mut st = self.state.write();
            st.own_intents.remove(&id);
            if let Some(list) = st.intents.get_mut(table) {
                list.retain(|(i, _)| *i != id);
                if list.is_empty() {
                    st.intents.remove(table);
                }
            }
        }
        self.ended.notify_waiters();
    }

    /// The announcements not yet ended nor expired on `tables` (and on every table), or on
    /// any table when `tables` is None: (table, id).
    pub(crate) fn outstanding(&self, tables: Option<&[&str]>) -> Vec<(Arc<str>, u64)> {
        let now = Instant::now();
        let st = self.state.read();
        st.intents
            .iter()
            .filter(|(t, _)| {
                tables.is_none_or(|want| &***t == GLOBAL || want.iter().any(|w| *w == &***t))
            })
            .flat_map(|(t, l)| {
                l.iter()
                    .filter(|(_, until)| *until > now)
                    .map(move |(id, _)| (t.clone(), *id))
            })
            .collect()
    }

    /// Whether any of these announcements is still outstanding.
    pub(crate) fn any_outstanding(&self, of: &[(Arc<str>, u64)]) -> bool {
        let now = Instant::now();
        let st = self.state.read();
        of.iter().any(|(t, id)| {
            st.intents
                .get(t)
                .is_some_and(|l| l.iter().any(|(i, until)| i == id && *until > now))
        })
    }

    /// Whether a fill of these tables must not be stored now: a write to one of them (or to
    /// every table) is announced and not over, or the tokens were forgotten less than
    /// [`INTENT_HOLD`] ago. The data such a fill read may be what that write is changing.
    pub(crate) fn fills_held(&self, snap: &[Snap]) -> bool {
        let now = Instant::now();
        let st = self.state.read();
        if st.blind_until.is_some_and(|b| b > now) {
            return true;
        }
        if st.intents.is_empty() {
            return false;
        }
        let held = |t: &str| {
            st.intents
                .get(t)
                .is_some_and(|l| l.iter().any(|(_, until)| *until > now))
        };
        held(GLOBAL) || snap.iter().any(|s| held(&s.table))
    }

    /// (token, version, shared) of a table.
    #[cfg(test)]
    pub(crate) fn current(&self, table: &str) -> Option<(u64, u64, bool)> {
        self.state
            .read()
            .map
            .get(table)
            .map(|t| (t.token, t.version, t.shared))
    }

    /// Number of tables known.
    pub(crate) fn len(&self) -> usize {
        self.state.read().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_only_move_forward() {
        let t = Tokens::new();
        assert!(!t.observe(None, "a", 10, 100));
        assert_eq!(t.current("a"), Some((100, 10, true)));
        assert!(!t.observe(None, "a", 9, 99), "older version ignored");
        assert!(t.observe(None, "a", 11, 101));
        assert_eq!(t.current("a"), Some((101, 11, true)));
        // A stale epoch is dropped.
        let e = t.epoch();
        t.reset(false);
        assert!(!t.observe(Some(e), "a", 12, 102));
        assert_eq!(t.current("a"), None);
    }

    #[test]
    fn local_invalidation_ignores_older_messages_until_own_token_returns() {
        let t = Tokens::new();
        t.observe(None, "a", 10, 100);
        let pubs = t.local_invalidate(&["a"], true);
        let own = pubs[0].1;
        let (tok_local, _, shared) = t.current("a").unwrap();
        assert!(!shared);
        // An older message (another sidecar's invalidation that ran before ours) arrives late.
        assert!(t.observe(None, "a", 11, 111), "rotates the local token");
        let (tok2, _, shared) = t.current("a").unwrap();
        assert!(!shared && tok2 != tok_local && tok2 != 111);
        // Our own publish comes back, newer: adopt it.
        assert!(t.observe(None, "a", 12, own));
        assert_eq!(t.current("a"), Some((own, 12, true)));
    }

    #[test]
    fn own_publish_older_than_a_later_message_adopts_the_newest() {
        let t = Tokens::new();
        t.observe(None, "a", 10, 100);
        let own = t.local_invalidate(&["a"], true)[0].1;
        // Someone else's newer invalidation (after ours) arrives first.
        t.observe(None, "a", 13, 130);
        assert!(!t.current("a").unwrap().2);
        // Then our own (version 12 < 13): done waiting, adopt the newest seen.
        t.observe(None, "a", 12, own);
        assert_eq!(t.current("a"), Some((130, 13, true)));
    }

    #[test]
    fn lost_publish_keeps_the_table_local_until_reset() {
        let t = Tokens::new();
        t.observe(None, "a", 10, 100);
        t.local_invalidate(&["a"], true); // its publish never reaches Redis
        t.observe(None, "a", 20, 200);
        t.observe(None, "a", 30, 300);
        assert!(
            !t.current("a").unwrap().2,
            "never adopts while its own publish is missing"
        );
        t.reset(false);
        t.observe(None, "a", 30, 300);
        assert_eq!(t.current("a"), Some((300, 30, true)));
    }

    fn snap(table: &str) -> Vec<Snap> {
        vec![Snap {
            table: table.into(),
            token: 1,
            version: 1,
            shared: true,
        }]
    }

    #[test]
    fn announcements_hold_their_tables_until_ended_or_expired_and_survive_a_reset() {
        let t = Tokens::new();
        assert!(!t.fills_held(&snap("a")));
        t.note_intent("a", 7, INTENT_HOLD);
        t.note_intent("a", 8, INTENT_HOLD);
        assert!(t.fills_held(&snap("a")) && !t.fills_held(&snap("b")));
        t.reset(false);
        assert!(
            t.fills_held(&snap("a")),
            "a reset forgets tokens, not announcements"
        );
        t.end_intent("a", 7);
        assert!(
            t.fills_held(&snap("a")),
            "the other announcement still holds"
        );
        t.end_intent("a", 8);
        assert!(!t.fills_held(&snap("a")));
        // Never ended (the writer died): held only for the hold given.
        t.note_intent("a", 9, Duration::ZERO);
        assert!(!t.fills_held(&snap("a")));
        // Renewed (its write still in flight): held again, and one end ends it.
        t.note_intent("a", 9, INTENT_HOLD);
        t.note_intent("a", 9, Duration::ZERO);
        assert!(t.fills_held(&snap("a")), "a shorter renewal cut the hold");
        t.end_intent("a", 9);
        assert!(!t.fills_held(&snap("a")));
        // Everything announced holds every table.
        t.note_intent(GLOBAL, 10, INTENT_HOLD);
        assert!(t.fills_held(&snap("b")));
        t.end_intent(GLOBAL, 10);
        assert!(!t.fills_held(&snap("b")));
    }

    #[test]
    fn on_rejoining_only_own_and_still_unended_announcements_are_kept() {
        let t = Tokens::new();
        t.note_intent("a", 1, INTENT_HOLD); // another sidecar's, ended while we were away
        t.note_own_intent("b", 2);
        t.reset(true);
        t.rejoined(&[("c".into(), 3, INTENT_HOLD)]);
        assert!(
            !t.fills_held(&snap("a")),
            "a lost end no longer holds the table"
        );
        assert!(
            t.fills_held(&snap("b")),
            "own announcements stay until ended"
        );
        assert!(
            t.fills_held(&snap("c")),
            "what Redis lists as unended holds"
        );
        t.end_intent("b", 2);
        assert!(!t.fills_held(&snap("b")));
    }

    #[test]
    fn after_missing_announcements_nothing_is_stored_until_caught_up() {
        let t = Tokens::new();
        t.reset(true);
        assert!(t.fills_held(&snap("a")));
        t.caught_up();
        assert!(!t.fills_held(&snap("a")));
    }

    #[test]
    fn a_flood_of_announcements_stays_bounded() {
        let t = Tokens::new();
        for id in 0..10_000 {
            t.note_intent("a", id, INTENT_HOLD);
        }
        assert!(t.state.read().intents["a"].len() <= MAX_INTENTS);
        for n in 0..MAX_INTENT_TABLES + 10 {
            t.note_intent(&format!("t{n}"), 1, INTENT_HOLD);
        }
        assert!(t.state.read().intents.len() <= MAX_INTENT_TABLES);
        assert!(
            t.fills_held(&snap("never announced")),
            "past the bound, everything is held rather than forgotten"
        );
    }
}

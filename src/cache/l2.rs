//! L2: Redis (single server through `ConnectionManager`, or Redis Cluster).
//!
//! In a cluster, entries and tokens spread over the masters by key slot; one GET per key
//! replaces MGET (keys of one lookup live in different slots). The token-bump script's PUBLISH
//! is broadcast by the cluster bus to every node, so the invalidation subscriber may listen on
//! any node: it takes the seed nodes in turn, moving on when one cannot be reached.
//!
//! Every call goes through [`L2::run`]: the circuit breaker first, then one `redis_timeout` for
//! the whole call (connecting included). Failures never reach clients: the caller falls back
//! to L1 and local tokens. Keys:
//! - `{prefix}:e:{key hex}`: an entry, `SET … PX ttl`, value = [`super::stored::encode_entry`].
//! - `{prefix}:tok:{table}`: a table's shared token, `"{version}:{token:016x}:{lsn:x}"` (see
//!   `stored`; the `:{lsn:x}` part is left out when no commit position is known).
//! - `{prefix}:fleet`: the members and their leases; `{prefix}:ack:{table}:{version}`: the
//!   members that applied a token's message (see `fleet`).

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use redis::{Cmd, RedisResult, Value};
use tokio::sync::Notify;

use super::breaker::{Breaker, BreakerState};
use super::fleet::{Fleet, FENCE_SCRIPT, LEASE, LEASE_SCRIPT, MEMBERS_SCRIPT};
use super::key::CacheKey;
use super::stats::CacheStats;
use crate::config::CacheConfig;
use crate::metrics::round_trips::{self, Trip};

use super::stored::{
    parse_token, sign_entry, token_suffix, verify_entry, Mark, SharedToken, BUMP_ALL, BUMP_TOKEN,
    CREATE_TOKEN, INTENTS_SCRIPT, INTENTS_UPDATE,
};
use super::tokens::INTENT_HOLD;
use conn::{Conn, Slot, Target};

mod conn;

#[derive(Debug, thiserror::Error)]
pub(crate) enum L2Error {
    #[error("circuit breaker open")]
    Open,
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("malformed value in Redis: {0}")]
    Malformed(String),
}

/// How long an acknowledgement set lives: far longer than any writer waits for it.
const ACK_TTL_MS: u64 = 10_000;

/// A member of the set of announced writes: what [`BUMP_ALL`] writes.
fn intent_member(table: &str, id: u64) -> String {
    format!("{table}\t{id:016x}")
}

/// At most this many announced writes are read on joining the fleet (see `L2::intents`).
const MAX_INTENTS_READ: usize = 4096;

pub(crate) struct L2 {
    /// One command connection per session worker (and one for everything else): a connection's
    /// I/O runs on the runtime that opened it, so a worker using another's connection would
    /// wake that thread for every reply.
    slots: Box<[Arc<Slot>]>,
    /// One client per seed URL, for the invalidation subscriber.
    pubsub: Vec<redis::Client>,
    timeout: Duration,
    breaker: Breaker,
    prefix: String,
    channel: String,
    cluster: bool,
    stats: Arc<CacheStats>,
    /// This sidecar's membership of the fleet sharing this Redis.
    pub(crate) fleet: Fleet,
    /// `cache.signing_key`: entries are signed on write and verified on read.
    signing_key: Option<Box<[u8]>>,
}

/// `EVAL script 1 key args…` (the crate's `script` feature is not enabled; Redis caches the
/// compiled script by its SHA, so EVAL costs only the script's bytes on the wire).
fn eval(script: &str, key: &str, args: &[&str]) -> Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(script).arg(1).arg(key);
    for a in args {
        c.arg(*a);
    }
    c
}

/// What a write's token bump did: per table the stored token and how many subscribers received
/// its message; the fleet's other current members right after, and whether this sidecar was
/// one of them.
pub(crate) struct Bumped {
    pub stored: Vec<(SharedToken, u64)>,
    pub others: Vec<String>,
    pub me: bool,
}

/// What one lookup read from Redis: the entry, and per table its shared token if any.
pub(crate) struct L2Read {
    pub entry: Option<Bytes>,
    pub tokens: Vec<Option<SharedToken>>,
}

/// Why Redis is not used (the cache runs on L1 alone; logged at start).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("{url}: {source}")]
    Url {
        url: String,
        source: redis::RedisError,
    },
    #[error("no Redis URL")]
    NoUrl,
    #[error("redis cluster {urls:?}: {source}")]
    Cluster {
        urls: Vec<String>,
        source: redis::RedisError,
    },
}

impl L2 {
    pub(crate) fn new(cfg: &CacheConfig, stats: Arc<CacheStats>) -> Result<L2, SetupError> {
        let urls = cfg.redis_urls();
        let pubsub = urls
            .iter()
            .map(|u| {
                redis::Client::open(u.as_str()).map_err(|source| SetupError::Url {
                    url: u.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let first = pubsub.first().ok_or(SetupError::NoUrl)?.clone();
        let cluster = cfg.is_cluster();
        let connect_budget = (cfg.redis_timeout * 20).max(Duration::from_secs(1));
        let target = if cluster {
            let client = redis::cluster::ClusterClient::builder(urls.clone())
                .connection_timeout(connect_budget)
                .response_timeout(cfg.redis_timeout.max(Duration::from_millis(1)))
                .build()
                .map_err(|source| SetupError::Cluster {
                    urls: urls.clone(),
                    source,
                })?;
            Target::Cluster(client)
        } else {
            Target::Single(first)
        };
        let slots = (0..=crate::workers::count())
            .map(|_| {
                Arc::new(Slot {
                    target: target.clone(),
                    conn: Mutex::new(None),
                    connecting: AtomicBool::new(false),
                    connected: Notify::new(),
                    connect_budget,
                })
            })
            .collect();
        Ok(L2 {
            slots,
            pubsub,
            timeout: cfg.redis_timeout,
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
            prefix: cfg.key_prefix.clone(),
            channel: cfg.invalidation_channel.clone(),
            cluster,
            stats,
            fleet: Fleet::new(),
            signing_key: cfg
                .signing_key
                .as_ref()
                .map(|k| k.as_bytes().to_vec().into_boxed_slice()),
        })
    }

    /// This worker's command connection (the last slot serves every other thread).
    fn slot(&self) -> &Arc<Slot> {
        let last = self.slots.len() - 1;
        &self.slots[crate::workers::current().min(last)]
    }

    /// Where the invalidation subscriber may subscribe: every seed node (a single server: it).
    pub(crate) fn pubsub_clients(&self) -> &[redis::Client] {
        &self.pubsub
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    fn entry_key(&self, key: &CacheKey) -> String {
        format!("{}:e:{:032x}", self.prefix, key.0)
    }

    fn token_key(&self, table: &str) -> String {
        format!("{}:tok:{}", self.prefix, table)
    }

    /// One bounded Redis call behind the breaker.
    async fn run<T, F, Fut>(&self, what: Trip, f: F) -> Result<T, L2Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        round_trips::count(what);
        let what = what.why();
        let Some(permit) = self.breaker.acquire() else {
            self.fleet.redis_answered(false);
            return Err(L2Error::Open);
        };
        let res = self.bounded(self.timeout, f).await;
        match res {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                CacheStats::inc(&self.stats.redis_errors);
                if permit.failure() {
                    CacheStats::inc(&self.stats.breaker_opens);
                    *self.slot().conn.lock() = None;
                    tracing::warn!(error = %e, op = what, "cache: Redis failing, bypassing it for a while");
                } else {
                    tracing::debug!(error = %e, op = what, "cache: Redis call failed");
                }
                Err(e)
            }
        }
    }

    /// A call that tells other sidecars of a write (bumps, the fleet's members, acknowledgement
    /// polls, fencing): not behind the breaker. An open breaker says Redis failed recently, not
    /// that it is unreachable now, and meanwhile other sidecars may have joined the fleet on a
    /// Redis that is back: a write not announced to them could be read old through them (found
    /// by the consistency short pass: a writer whose breaker was still open after a Redis
    /// restart acknowledged a write the rejoined sidecar never heard of). Bounded by the same
    /// timeout; it neither consults nor moves the breaker. Cost while Redis is down: a write
    /// that is refused at once pays nothing more; one to a Redis that does not answer waits
    /// up to `redis_timeout` per call.
    async fn run_announcing<T, F, Fut>(&self, what: Trip, f: F) -> Result<T, L2Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        round_trips::count(what);
        let res = self.bounded(self.timeout, f).await;
        if let Err(e) = &res {
            CacheStats::inc(&self.stats.redis_errors);
            tracing::debug!(error = %e, op = what.why(), "cache: Redis call failed");
        }
        res
    }

    /// A call of the fleet's membership (join, renew, leave): not on any client's path, so not
    /// behind the breaker (renewals go on while it is open, and a slow one does not open it,
    /// nor count as a client-visible Redis error), and allowed half a lease.
    async fn run_membership<T, F, Fut>(&self, what: Trip, f: F) -> Result<T, L2Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        round_trips::count(what);
        let what = what.why();
        let res = self.bounded(LEASE / 2, f).await;
        if let Err(e) = &res {
            tracing::debug!(error = %e, op = what, "cache: fleet membership call failed");
        }
        res
    }

    /// One Redis call on this worker's connection, within `limit`; tells the fleet whether
    /// Redis answered (see `Fleet::unannounced_wait`).
    async fn bounded<T, F, Fut>(&self, limit: Duration, f: F) -> Result<T, L2Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let res = tokio::time::timeout(limit, async {
            let conn = self.slot().get().await?;
            f(conn).await.map_err(L2Error::from)
        })
        .await
        .unwrap_or(Err(L2Error::Timeout));
        self.fleet.redis_answered(res.is_ok());
        res
    }

    /// The entry and the tables' shared tokens, in one round trip on a single server.
    pub(crate) async fn read(&self, key: &CacheKey, tables: &[&str]) -> Result<L2Read, L2Error> {
        let mut keys = Vec::with_capacity(tables.len() + 1);
        keys.push(self.entry_key(key));
        keys.extend(tables.iter().map(|t| self.token_key(t)));
        let cluster = self.cluster;
        let vals: Vec<Option<Vec<u8>>> = self
            .run(Trip::RedisLookup, |mut conn| async move {
                if cluster {
                    // Keys live in different slots: one GET each, concurrently.
                    get_each(&conn, &keys).await
                } else {
                    redis::cmd("MGET").arg(&keys).query_async(&mut conn).await
                }
            })
            .await?;
        let mut it = vals.into_iter();
        let entry = it.next().flatten().and_then(|raw| match &self.signing_key {
            None => Some(Bytes::from(raw)),
            Some(secret) => {
                let e = verify_entry(secret, &self.entry_key(key), &raw);
                if e.is_none() {
                    CacheStats::inc(&self.stats.l2_bad_signatures);
                }
                e
            }
        });
        let tokens = it.map(|v| v.and_then(|v| parse_token(&v))).collect();
        Ok(L2Read { entry, tokens })
    }

    /// Creates the shared tokens of tables that have none; returns every table's token.
    pub(crate) async fn create_tokens(&self, tables: &[&str]) -> Result<Vec<SharedToken>, L2Error> {
        let keys: Vec<String> = tables.iter().map(|t| self.token_key(t)).collect();
        let vals: Vec<String> = self
            .run(Trip::RedisCreateTokens, |conn| async move {
                let calls = keys.iter().map(|k| {
                    let mut c = conn.clone();
                    let cmd = eval(
                        CREATE_TOKEN,
                        k,
                        &[&token_suffix(rand::random::<u64>(), 0, Mark::None)],
                    );
                    async move { cmd.query_async::<String>(&mut c).await }
                });
                futures::future::try_join_all(calls).await
            })
            .await?;
        vals.iter()
            .map(|v| parse_token(v.as_bytes()).ok_or_else(|| L2Error::Malformed(v.clone())))
            .collect()
    }

    /// Sets each table's shared token to the given one, with the commit position `lsn` of the
    /// write that retired the old one, and publishes it (atomically per table); returns what
    /// was stored, how many subscribers received each message, and the fleet's current members
    /// as of right after the messages ([`Bumped`]). On a single server that is one script, one
    /// round trip ([`BUMP_ALL`]); in a cluster, one script per table and the members' read,
    /// all concurrently.
    pub(crate) async fn bump(
        &self,
        env: &str,
        items: &[(Arc<str>, u64, Mark)],
        lsn: u64,
    ) -> Result<Bumped, L2Error> {
        let trip = if items.iter().any(|i| i.2.holds(i.1).is_some()) {
            Trip::RedisAnnounce
        } else {
            Trip::RedisInvalidate
        };
        if self.cluster {
            return self.bump_each(env, items, lsn, trip).await;
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(BUMP_ALL)
            .arg(items.len() + 2)
            .arg(self.fleet_key())
            .arg(self.intents_key());
        for (table, _, _) in items {
            cmd.arg(self.token_key(table));
        }
        cmd.arg(&self.channel)
            .arg(env)
            .arg(INTENT_HOLD.as_millis() as u64);
        for (table, token, mark) in items {
            cmd.arg(token_suffix(*token, lsn, *mark)).arg(&**table);
        }
        let mut v: Vec<Value> = self
            .run_announcing(
                trip,
                |mut conn| async move { cmd.query_async(&mut conn).await },
            )
            .await?;
        let members = v
            .pop()
            .ok_or_else(|| L2Error::Malformed("empty bump reply".into()))?;
        let members: Vec<String> = redis::from_redis_value(&members)?;
        let mut stored = Vec::with_capacity(v.len());
        for item in &v {
            let (val, n): (String, u64) = redis::from_redis_value(item)?;
            let tok = parse_token(val.as_bytes()).ok_or(L2Error::Malformed(val))?;
            stored.push((tok, n));
        }
        if stored.len() != items.len() {
            return Err(L2Error::Malformed(format!(
                "bump replied for {} of {} tables",
                stored.len(),
                items.len()
            )));
        }
        Ok(self.bumped(stored, members))
    }

    /// [`L2::bump`] in a cluster: the token keys and the fleet's set live in different slots.
    async fn bump_each(
        &self,
        env: &str,
        items: &[(Arc<str>, u64, Mark)],
        lsn: u64,
        trip: Trip,
    ) -> Result<Bumped, L2Error> {
        let channel = &self.channel;
        // The set of announced writes lives in its own slot: recorded before the messages go
        // out (a sidecar joining meanwhile reads it), ended alongside them.
        // `want`: the announcement a bump (mark, token) adds or removes, if any.
        let registry = |op: &'static str, want: fn(&Mark, u64) -> Option<u64>| {
            let members: Vec<String> = items
                .iter()
                .filter_map(|(t, token, m)| want(m, *token).map(|id| intent_member(t, id)))
                .collect();
            let mut args = vec![INTENT_HOLD.as_millis().to_string(), op.to_owned()];
            args.extend(members);
            (args.len() > 2).then(|| {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                eval(INTENTS_UPDATE, &self.intents_key(), &refs)
            })
        };
        if let Some(cmd) = registry("add", |m, token| m.holds(token)) {
            self.run_announcing(Trip::RedisAnnounce, |mut conn| async move {
                cmd.query_async::<()>(&mut conn).await
            })
            .await?;
        }
        if let Some(cmd) = registry("remove", |m, _| match m {
            Mark::Ends(id) => Some(*id),
            _ => None,
        }) {
            let _ = self
                .run_announcing(Trip::RedisInvalidate, |mut conn| async move {
                    cmd.query_async::<()>(&mut conn).await
                })
                .await;
        }
        let bumps = self.run_announcing(trip, |conn| async move {
            let calls = items.iter().map(|(table, token, mark)| {
                let mut c = conn.clone();
                let cmd = eval(
                    BUMP_TOKEN,
                    &self.token_key(table),
                    &[&token_suffix(*token, lsn, *mark), channel, env, table],
                );
                async move { cmd.query_async::<(String, u64)>(&mut c).await }
            });
            futures::future::try_join_all(calls).await
        });
        let (vals, members) = futures::future::join(bumps, self.members()).await;
        let stored = vals?
            .into_iter()
            .map(|(v, n)| {
                parse_token(v.as_bytes())
                    .map(|t| (t, n))
                    .ok_or(L2Error::Malformed(v))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.bumped(stored, members?))
    }

    /// `{prefix}:intents`: the writes announced and not yet ended.
    fn intents_key(&self) -> String {
        format!("{}:intents", self.prefix)
    }

    /// The writes announced and not yet ended, as (table, intent token, hold left). At most
    /// `MAX_INTENTS_READ`; what Redis holds is not trusted: unreadable members are skipped,
    /// holds are capped.
    pub(crate) async fn intents(&self) -> Result<Vec<(String, u64, Duration)>, L2Error> {
        let cmd = eval(
            INTENTS_SCRIPT,
            &self.intents_key(),
            &[&MAX_INTENTS_READ.to_string()],
        );
        let v: Vec<String> = self
            .run_membership(Trip::RedisIntents, |mut conn| async move {
                cmd.query_async(&mut conn).await
            })
            .await?;
        let mut it = v.into_iter();
        let now: u64 = it
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| L2Error::Malformed("intents reply without a clock".into()))?;
        let mut out = Vec::new();
        while let (Some(member), Some(end)) = (it.next(), it.next()) {
            let Some((table, id)) = member.rsplit_once('\t') else {
                continue;
            };
            let (Ok(id), Ok(end)) = (u64::from_str_radix(id, 16), end.parse::<f64>()) else {
                continue;
            };
            let left = Duration::from_millis((end as u64).saturating_sub(now)).min(INTENT_HOLD);
            out.push((table.to_owned(), id, left));
        }
        Ok(out)
    }

    fn bumped(&self, stored: Vec<(SharedToken, u64)>, members: Vec<String>) -> Bumped {
        let mut me = false;
        let others = members
            .into_iter()
            .filter(|m| {
                let mine = *m == self.fleet.id;
                me |= mine;
                !mine
            })
            .collect();
        Bumped { stored, others, me }
    }

    /// `{prefix}:ack:{table}:{version}`: the members that applied that token's message.
    fn ack_key(&self, table: &str, version: u64) -> String {
        format!("{}:ack:{}:{}", self.prefix, table, version)
    }

    fn fleet_key(&self) -> String {
        format!("{}:fleet", self.prefix)
    }

    /// Records that this sidecar applied the message for `table` at `version`.
    pub(crate) async fn ack(&self, table: &str, version: u64) -> Result<(), L2Error> {
        let k = self.ack_key(table, version);
        let id = &self.fleet.id;
        self.run_membership(Trip::RedisAck, |mut conn| async move {
            redis::pipe()
                .cmd("SADD")
                .arg(&k)
                .arg(id)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&k)
                .arg(ACK_TTL_MS)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// Which members have applied each of these messages so far.
    pub(crate) async fn acked(&self, items: &[(&str, u64)]) -> Result<Vec<Vec<String>>, L2Error> {
        let keys: Vec<String> = items.iter().map(|(t, v)| self.ack_key(t, *v)).collect();
        self.run_announcing(Trip::RedisAcks, |conn| async move {
            let calls = keys.iter().map(|k| {
                let mut c = conn.clone();
                async move {
                    redis::cmd("SMEMBERS")
                        .arg(k)
                        .query_async::<Vec<String>>(&mut c)
                        .await
                }
            });
            futures::future::try_join_all(calls).await
        })
        .await
    }

    /// Joins the fleet (`join`) or renews this sidecar's lease; `Ok(None)` when the renewal
    /// was refused (no longer a member: resync, then join), else the number of members.
    pub(crate) async fn lease(&self, join: bool) -> Result<Option<u64>, L2Error> {
        let cmd = eval(
            LEASE_SCRIPT,
            &self.fleet_key(),
            &[
                &self.fleet.id,
                &LEASE.as_millis().to_string(),
                if join { "join" } else { "renew" },
            ],
        );
        let n: i64 = self
            .run_membership(Trip::RedisLease, |mut conn| async move {
                cmd.query_async(&mut conn).await
            })
            .await?;
        Ok(u64::try_from(n).ok())
    }

    /// Leaves the fleet (shutdown, subscription lost): writers stop waiting for this sidecar.
    pub(crate) async fn leave(&self) -> Result<(), L2Error> {
        let (k, id) = (self.fleet_key(), &self.fleet.id);
        self.run_membership(Trip::RedisLeave, |mut conn| async move {
            redis::cmd("ZREM")
                .arg(k)
                .arg(id)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// The current members (this sidecar included if it is one).
    async fn members(&self) -> Result<Vec<String>, L2Error> {
        let cmd = eval(MEMBERS_SCRIPT, &self.fleet_key(), &[]);
        let v: Vec<String> = self
            .run_announcing(Trip::RedisMembers, |mut conn| async move {
                cmd.query_async(&mut conn).await
            })
            .await?;
        // {now, member, end, member, end, …}
        Ok(v.into_iter().skip(1).step_by(2).collect())
    }

    /// Fences `members` (see `fleet`); returns how long their last lease still runs.
    pub(crate) async fn fence(&self, members: &[String]) -> Result<Duration, L2Error> {
        let args: Vec<&str> = members.iter().map(String::as_str).collect();
        let cmd = eval(FENCE_SCRIPT, &self.fleet_key(), &args);
        let ms: i64 = self
            .run_announcing(Trip::RedisFence, |mut conn| async move {
                cmd.query_async(&mut conn).await
            })
            .await?;
        // A legitimate lease never runs longer than LEASE from now.
        Ok(Duration::from_millis(ms.max(0) as u64).min(LEASE))
    }

    pub(crate) async fn write(
        &self,
        key: &CacheKey,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), L2Error> {
        let k = self.entry_key(key);
        let value = match &self.signing_key {
            Some(secret) => sign_entry(secret, &k, value),
            None => value,
        };
        let px = ttl.as_millis().max(1) as u64;
        self.run(Trip::RedisFill, |mut conn| async move {
            redis::cmd("SET")
                .arg(k)
                .arg(value)
                .arg("PX")
                .arg(px)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }
}

/// One GET per key, concurrently: for keys that may live in different cluster slots.
async fn get_each<T: redis::FromRedisValue>(
    conn: &Conn,
    keys: &[String],
) -> RedisResult<Vec<Option<T>>> {
    let gets = keys.iter().map(|k| {
        let mut c = conn.clone();
        async move {
            redis::cmd("GET")
                .arg(k)
                .query_async::<Option<T>>(&mut c)
                .await
        }
    });
    futures::future::try_join_all(gets).await
}

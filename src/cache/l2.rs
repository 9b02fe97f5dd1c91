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
//! - `{prefix}:e:{key hex}`: an entry, `SET … PX ttl`, value = [`encode_entry`].
//! - `{prefix}:tok:{table}`: a table's shared token, `"{version}:{token:016x}:{lsn:x}"` (see
//!   [`format_token`]; the `:{lsn:x}` part is left out when no commit position is known).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::Notify;

use super::breaker::{Breaker, BreakerState};
use super::config::CacheConfig;
use super::key::CacheKey;
use super::stats::CacheStats;
use super::tokens::Snap;

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

/// Creates the token if missing (a creation needs no message: no entry can carry it yet).
const CREATE_TOKEN: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
local t = redis.call('TIME')
local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
local val = string.format('%.0f', v) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], val)
return val
";

/// Replaces the token and publishes it in one atomic step, so the order of messages on the
/// channel is the order of the token changes; the version is the server clock in µs, and
/// always above the previous version (also across a flush: the clock does not restart).
const BUMP_TOKEN: &str = r"
local t = redis.call('TIME')
local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = redis.call('GET', KEYS[1])
if cur then
  local cv = tonumber(string.match(cur, '^(%d+):'))
  if cv and cv >= v then v = cv + 1 end
end
local val = string.format('%.0f', v) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], val)
redis.call('PUBLISH', ARGV[2], ARGV[3] .. '\t' .. ARGV[4] .. '\t' .. val)
return val
";

/// A shared token as stored in Redis and published: its version, the random token, and the
/// commit position (primary WAL LSN) of the write that produced it, 0 when unknown (a creation,
/// `INVALIDATE ALL`, a sidecar of an older release).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedToken {
    pub version: u64,
    pub token: u64,
    pub lsn: u64,
}

/// What the token scripts store after the version: `{token:016x}` or `{token:016x}:{lsn:x}`.
/// The commit position is left out when unknown, so a token without one still reads as the
/// two-part form older releases understand (a rolling upgrade keeps working; an older sidecar
/// that meets the three-part form treats it as unreadable: it flushes its L1 and keeps local
/// tokens, so it loses hits, never correctness).
pub(crate) fn token_suffix(token: u64, lsn: u64) -> String {
    if lsn == 0 {
        format!("{token:016x}")
    } else {
        format!("{token:016x}:{lsn:x}")
    }
}

#[cfg(test)]
pub(crate) fn format_token(version: u64, token: u64, lsn: u64) -> String {
    format!("{version}:{}", token_suffix(token, lsn))
}

/// `"{version}:{token hex}"` (older releases, LSN 0) or `"{version}:{token hex}:{lsn hex}"`.
pub(crate) fn parse_token(s: &[u8]) -> Option<SharedToken> {
    let s = std::str::from_utf8(s).ok()?;
    let (v, rest) = s.split_once(':')?;
    let (t, lsn) = match rest.split_once(':') {
        Some((t, l)) => (t, u64::from_str_radix(l, 16).ok()?),
        None => (rest, 0),
    };
    Some(SharedToken {
        version: v.parse().ok()?,
        token: u64::from_str_radix(t, 16).ok()?,
        lsn,
    })
}

const ENTRY_MAGIC: &[u8; 4] = b"PSC1";

/// Entry value in Redis: `PSC1`, expiry (unix ms, u64 LE), table count (u16 LE), then per
/// table its name (u16 LE length + UTF-8), version (u64 LE) and token (u64 LE), then the
/// response bytes. The tokens let every sidecar check the entry against its own tokens.
/// None when a table name or the table count does not fit the format (then: L1 only).
pub(crate) fn encode_entry(tables: &[Snap], ttl: Duration, bytes: &[u8]) -> Option<Vec<u8>> {
    if tables.len() > u16::MAX as usize || tables.iter().any(|s| s.table.len() > u16::MAX as usize)
    {
        return None;
    }
    let names: usize = tables.iter().map(|s| s.table.len() + 18).sum();
    let mut out = BytesMut::with_capacity(4 + 8 + 2 + names + bytes.len());
    out.put_slice(ENTRY_MAGIC);
    out.put_u64_le(unix_ms().saturating_add(ttl.as_millis() as u64));
    out.put_u16_le(tables.len() as u16);
    for s in tables {
        out.put_u16_le(s.table.len() as u16);
        out.put_slice(s.table.as_bytes());
        out.put_u64_le(s.version);
        out.put_u64_le(s.token);
    }
    out.put_slice(bytes);
    Some(out.to_vec())
}

#[derive(Debug)]
pub(crate) struct DecodedEntry {
    pub expires_at_ms: u64,
    /// (table, version, token)
    pub tables: Vec<(String, u64, u64)>,
    pub bytes: Bytes,
}

pub(crate) fn decode_entry(raw: Bytes) -> Option<DecodedEntry> {
    let mut b = &raw[..];
    if b.len() < 14 || &b[..4] != ENTRY_MAGIC {
        return None;
    }
    b.advance(4);
    let expires_at_ms = b.get_u64_le();
    let n = b.get_u16_le() as usize;
    let mut tables = Vec::with_capacity(n);
    for _ in 0..n {
        if b.remaining() < 2 {
            return None;
        }
        let len = b.get_u16_le() as usize;
        if b.remaining() < len + 16 {
            return None;
        }
        let name = std::str::from_utf8(&b[..len]).ok()?.to_owned();
        b.advance(len);
        let version = b.get_u64_le();
        let token = b.get_u64_le();
        tables.push((name, version, token));
    }
    let start = raw.len() - b.remaining();
    Some(DecodedEntry {
        expires_at_ms,
        tables,
        bytes: raw.slice(start..),
    })
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Clone)]
enum Conn {
    Single(Box<ConnectionManager>),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// The command connection, established in the background on first use (so a slow connect is
/// not cancelled by the per-call timeout and retried forever) and dropped when the breaker
/// opens (the probe then starts from a fresh connection).
struct Slot {
    target: Target,
    conn: Mutex<Option<Conn>>,
    connecting: AtomicBool,
    connected: Notify,
    connect_budget: Duration,
}

impl Slot {
    async fn get(self: &Arc<Self>) -> Result<Conn, L2Error> {
        if let Some(c) = self.conn.lock().clone() {
            return Ok(c);
        }
        let notified = self.connected.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(c) = self.conn.lock().clone() {
            return Ok(c);
        }
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let slot = self.clone();
            tokio::spawn(async move {
                let res = tokio::time::timeout(slot.connect_budget, slot.connect()).await;
                match res {
                    Ok(Ok(c)) => *slot.conn.lock() = Some(c),
                    Ok(Err(e)) => tracing::debug!(error = %e, "cache: redis connect failed"),
                    Err(_) => tracing::debug!("cache: redis connect timed out"),
                }
                slot.connecting.store(false, Ordering::Release);
                slot.connected.notify_waiters();
            });
        }
        notified.await;
        self.conn.lock().clone().ok_or_else(|| {
            L2Error::Redis(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "not connected",
            )))
        })
    }

    async fn connect(&self) -> RedisResult<Conn> {
        match &self.target {
            Target::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(self.connect_budget)
                    .set_number_of_retries(0);
                Ok(Conn::Single(Box::new(
                    ConnectionManager::new_with_config(client.clone(), cfg).await?,
                )))
            }
            Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }
}

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

/// What one lookup read from Redis: the entry, and per table its shared token if any.
pub(crate) struct L2Read {
    pub entry: Option<Bytes>,
    pub tokens: Vec<Option<SharedToken>>,
}

impl L2 {
    pub(crate) fn new(cfg: &CacheConfig, stats: Arc<CacheStats>) -> Result<L2, String> {
        let urls = cfg.redis_urls();
        let pubsub = urls
            .iter()
            .map(|u| redis::Client::open(u.as_str()).map_err(|e| format!("{u}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let first = pubsub.first().ok_or("no Redis URL")?.clone();
        let cluster = cfg.is_cluster();
        let connect_budget = (cfg.redis_timeout * 20).max(Duration::from_secs(1));
        let target = if cluster {
            let client = redis::cluster::ClusterClient::builder(urls.clone())
                .connection_timeout(connect_budget)
                .response_timeout(cfg.redis_timeout.max(Duration::from_millis(1)))
                .build()
                .map_err(|e| format!("redis cluster {urls:?}: {e}"))?;
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
    async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, L2Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let permit = self.breaker.acquire().ok_or(L2Error::Open)?;
        let res = tokio::time::timeout(self.timeout, async {
            let conn = self.slot().get().await?;
            f(conn).await.map_err(L2Error::from)
        })
        .await
        .unwrap_or(Err(L2Error::Timeout));
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

    /// The entry and the tables' shared tokens, in one round trip on a single server.
    pub(crate) async fn read(&self, key: &CacheKey, tables: &[&str]) -> Result<L2Read, L2Error> {
        let mut keys = Vec::with_capacity(tables.len() + 1);
        keys.push(self.entry_key(key));
        keys.extend(tables.iter().map(|t| self.token_key(t)));
        let cluster = self.cluster;
        let vals: Vec<Option<Vec<u8>>> = self
            .run("read", |mut conn| async move {
                if cluster {
                    // Keys live in different slots: one GET each, concurrently.
                    let gets = keys.iter().map(|k| {
                        let mut c = conn.clone();
                        let k = k.clone();
                        async move {
                            redis::cmd("GET")
                                .arg(k)
                                .query_async::<Option<Vec<u8>>>(&mut c)
                                .await
                        }
                    });
                    futures::future::try_join_all(gets).await
                } else {
                    redis::cmd("MGET").arg(&keys).query_async(&mut conn).await
                }
            })
            .await?;
        let mut it = vals.into_iter();
        let entry = it.next().flatten().map(Bytes::from);
        let tokens = it.map(|v| v.and_then(|v| parse_token(&v))).collect();
        Ok(L2Read { entry, tokens })
    }

    /// Creates the shared tokens of tables that have none; returns every table's token.
    pub(crate) async fn create_tokens(&self, tables: &[&str]) -> Result<Vec<SharedToken>, L2Error> {
        let keys: Vec<String> = tables.iter().map(|t| self.token_key(t)).collect();
        let vals: Vec<String> = self
            .run("create_tokens", |conn| async move {
                let calls = keys.iter().map(|k| {
                    let mut c = conn.clone();
                    let cmd = eval(CREATE_TOKEN, k, &[&token_suffix(rand::random::<u64>(), 0)]);
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
    /// was stored.
    pub(crate) async fn bump(
        &self,
        env: &str,
        items: &[(Arc<str>, u64)],
        lsn: u64,
    ) -> Result<Vec<SharedToken>, L2Error> {
        let channel = &self.channel;
        let vals: Vec<String> = self
            .run("invalidate", |conn| async move {
                let calls = items.iter().map(|(table, token)| {
                    let mut c = conn.clone();
                    let cmd = eval(
                        BUMP_TOKEN,
                        &self.token_key(table),
                        &[&token_suffix(*token, lsn), channel, env, table],
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

    pub(crate) async fn write(
        &self,
        key: &CacheKey,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), L2Error> {
        let k = self.entry_key(key);
        let px = ttl.as_millis().max(1) as u64;
        self.run("write", |mut conn| async move {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_roundtrip_and_garbage() {
        let tables = vec![
            Snap {
                table: "public.a".into(),
                token: 7,
                version: 3,
                shared: true,
            },
            Snap {
                table: "*".into(),
                token: 9,
                version: 4,
                shared: true,
            },
        ];
        let raw = encode_entry(&tables, Duration::from_secs(10), b"hello").unwrap();
        let d = decode_entry(Bytes::from(raw.clone())).unwrap();
        assert_eq!(&d.bytes[..], b"hello");
        assert_eq!(
            d.tables,
            vec![("public.a".into(), 3, 7), ("*".into(), 4, 9)]
        );
        assert!(d.expires_at_ms > unix_ms());
        for cut in 0..20 {
            assert!(decode_entry(Bytes::from(raw[..cut].to_vec())).is_none());
        }
        assert!(decode_entry(Bytes::from_static(b"PSC2xxxxxxxxxxxxxxxx")).is_none());
    }

    #[test]
    fn token_format_carries_the_commit_position() {
        let t = parse_token(format_token(1718000000123456, 0xabc, 0x3000060).as_bytes());
        assert_eq!(
            t,
            Some(SharedToken {
                version: 1718000000123456,
                token: 0xabc,
                lsn: 0x3000060
            })
        );
        assert_eq!(
            format_token(5, 0xff, 0x16b3748),
            "5:00000000000000ff:16b3748"
        );
        assert_eq!(parse_token(b"garbage"), None);
        assert_eq!(parse_token(b"5:zz:10"), None);
        assert_eq!(parse_token(b"5:0a:not-hex"), None);
    }

    #[test]
    fn token_without_a_position_keeps_the_older_two_part_form() {
        assert_eq!(format_token(5, 0xff, 0), "5:00000000000000ff");
        assert_eq!(
            parse_token(b"1718000000123456:00000000000000ff"),
            Some(SharedToken {
                version: 1718000000123456,
                token: 255,
                lsn: 0
            })
        );
    }
}

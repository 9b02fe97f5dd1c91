//! What pgsidecar stores in Redis, and the scripts that change it: the shared token of a
//! table (`{version}:{token:016x}:{lsn:x}`) and the encoding of a cached entry. Kept apart from
//! the Redis client in `l2` because every sidecar of a fleet, old releases included, must read
//! these formats: changes here are protocol changes (see [`token_suffix`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::tokens::Snap;

/// Creates the token if missing (a creation needs no message: no entry can carry it yet).
pub(crate) const CREATE_TOKEN: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
local t = redis.call('TIME')
local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
local val = string.format('%.0f', v) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], val)
return val
";

/// Replaces the token and publishes it in one atomic step, so the order of messages on the
/// channel is the order of the token changes; returns the stored value and how many
/// subscribers received the message (each acknowledges it: see `Inner::await_acks`); the version is the server clock in µs, and
/// always above the previous version (also across a flush: the clock does not restart).
pub(crate) const BUMP_TOKEN: &str = r"
local t = redis.call('TIME')
local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = redis.call('GET', KEYS[1])
if cur then
  local cv = tonumber(string.match(cur, '^(%d+):'))
  if cv and cv >= v then v = cv + 1 end
end
local val = string.format('%.0f', v) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], val)
local n = redis.call('PUBLISH', ARGV[2], ARGV[3] .. '\t' .. ARGV[4] .. '\t' .. val)
return {val, n}
";

/// [`BUMP_TOKEN`] for every table of a write, and the fleet's current members read in the same
/// atomic step ([`super::fleet::MEMBERS_SCRIPT`]'s selection: lease end after the Redis clock),
/// so a write pays one Redis round trip for its tables and for knowing whom to wait for.
/// `KEYS[1]` is the fleet's set, `KEYS[2]` the set of announced writes ([`Mark`]: a suffix
/// ending in `:i` adds `{table}\t{token}` scored by the end of its hold, `ARGV[3]` ms from now;
/// one ending in `:r{token}` scores that one anew; one ending in `:e{token}` removes it;
/// expired ones are dropped), `KEYS[3..]` the tables'
/// token keys; `ARGV[1]` the channel, `ARGV[2]` the environment, then per table its token
/// suffix and its name. Returns `{{value, receivers}…, {member…}}`. Single server only: in a
/// cluster the keys live in different slots (`L2::bump` falls back to one [`BUMP_TOKEN`] per
/// table there, after [`INTENTS_UPDATE`] for an announcement).
pub(crate) const BUMP_ALL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local intents = false
for i = 3, #KEYS do
  local v = us
  local cur = redis.call('GET', KEYS[i])
  if cur then
    local cv = tonumber(string.match(cur, '^(%d+):'))
    if cv and cv >= v then v = cv + 1 end
  end
  local suffix = ARGV[2 * i - 2]
  local name = ARGV[2 * i - 1]
  local val = string.format('%.0f', v) .. ':' .. suffix
  redis.call('SET', KEYS[i], val)
  local renewed = string.match(suffix, ':r(%x+)$')
  if string.sub(suffix, -2) == ':i' then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), name .. '\t' .. string.sub(suffix, 1, 16))
    intents = true
  elseif renewed then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), name .. '\t' .. renewed)
    intents = true
  else
    local ended = string.match(suffix, ':e(%x+)$')
    if ended then redis.call('ZREM', KEYS[2], name .. '\t' .. ended) end
  end
  local n = redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\t' .. name .. '\t' .. val)
  out[#out + 1] = {val, n}
end
if intents then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) * 2)
end
out[#out + 1] = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
return out
";

/// In a cluster, [`BUMP_ALL`]'s bookkeeping of announced writes, as its own step: `KEYS[1]`
/// the set, `ARGV[1]` the hold in ms, `ARGV[2]` "add" or "remove", then the members.
pub(crate) const INTENTS_UPDATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 3, #ARGV do
  if ARGV[2] == 'add' then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
if ARGV[2] == 'add' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
end
return 1
";

/// The writes announced and not yet ended (see [`BUMP_ALL`]), with the ms left of their hold:
/// `{now, member, end, member, end, …}`, at most `ARGV[1]` of them.
pub(crate) const INTENTS_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {tostring(now)}
local r = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
for i = 1, #r do out[#out + 1] = r[i] end
return out
";

/// A shared token as stored in Redis and published: its version, the random token, and the
/// commit position (primary WAL LSN) of the write that produced it, 0 when unknown (a creation,
/// `INVALIDATE ALL`, a sidecar of an older release).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedToken {
    pub version: u64,
    pub token: u64,
    pub lsn: u64,
    /// What the bump says about a write in flight (see [`Mark`]).
    pub mark: Mark,
}

/// A bump's part in the two-step invalidation of a write (module doc of `super`, step 8):
/// before the commit, a bump *announces* the write (`Intent`: every sidecar retires its
/// entries of the table and stores nothing for it while the write is in flight); after it, a
/// bump with the commit position *ends* that announcement (`Ends(intent token)`). A write
/// still in flight half a hold later *renews* it (`Renews(intent token)`: held anew).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Mark {
    #[default]
    None,
    Intent,
    Ends(u64),
    Renews(u64),
}

impl Mark {
    /// The announcement this bump (with its own `token`) opens or holds anew, if any.
    pub(crate) fn holds(&self, token: u64) -> Option<u64> {
        match self {
            Mark::Intent => Some(token),
            Mark::Renews(of) => Some(*of),
            Mark::None | Mark::Ends(_) => None,
        }
    }
}

/// What the token scripts store after the version: `{token:016x}`, `{token:016x}:{lsn:x}`,
/// or with a [`Mark`] `{token:016x}:{lsn:x}:i` (an announced write) /
/// `{token:016x}:{lsn:x}:e{intent token:x}` (its end). The commit position is left out when
/// unknown and there is no mark, so such a token still reads as the two-part form older
/// releases understand (a rolling upgrade keeps working; an older sidecar that meets a longer
/// form treats it as unreadable: it flushes its L1 and keeps local tokens, so it loses hits,
/// never correctness).
pub(crate) fn token_suffix(token: u64, lsn: u64, mark: Mark) -> String {
    match mark {
        Mark::None if lsn == 0 => format!("{token:016x}"),
        Mark::None => format!("{token:016x}:{lsn:x}"),
        Mark::Intent => format!("{token:016x}:{lsn:x}:i"),
        Mark::Ends(of) => format!("{token:016x}:{lsn:x}:e{of:016x}"),
        Mark::Renews(of) => format!("{token:016x}:{lsn:x}:r{of:016x}"),
    }
}

#[cfg(test)]
pub(crate) fn format_token(version: u64, token: u64, lsn: u64) -> String {
    format!("{version}:{}", token_suffix(token, lsn, Mark::None))
}

/// `"{version}:{token hex}"` (older releases, LSN 0), `"{version}:{token hex}:{lsn hex}"`, or
/// either of the marked forms of [`token_suffix`].
pub(crate) fn parse_token(s: &[u8]) -> Option<SharedToken> {
    let s = std::str::from_utf8(s).ok()?;
    let mut parts = s.splitn(4, ':');
    let version = parts.next()?.parse().ok()?;
    let token = u64::from_str_radix(parts.next()?, 16).ok()?;
    let lsn = match parts.next() {
        Some(l) => u64::from_str_radix(l, 16).ok()?,
        None => 0,
    };
    let mark = match parts.next() {
        None => Mark::None,
        Some("i") => Mark::Intent,
        Some(m) => {
            let (kind, of) = m.split_at_checked(1)?;
            let of = u64::from_str_radix(of, 16).ok()?;
            match kind {
                "e" => Mark::Ends(of),
                "r" => Mark::Renews(of),
                _ => return None,
            }
        }
    };
    Some(SharedToken {
        version,
        token,
        lsn,
        mark,
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

/// Magic of an entry signed with `cache.signing_key` ([`sign_entry`]).
const SIGNED_MAGIC: &[u8; 4] = b"PSS1";
const MAC_LEN: usize = 32;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn entry_mac(secret: &[u8], redis_key: &str, signed_part: &[u8]) -> HmacSha256 {
    use hmac::Mac;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(&(redis_key.len() as u64).to_le_bytes());
    mac.update(redis_key.as_bytes());
    mac.update(signed_part);
    mac
}

/// An entry ([`encode_entry`]) signed for `redis_key`: `PSS1`, the entry after its magic, then
/// HMAC-SHA256(secret, key length ‖ key ‖ all that precedes the MAC). The key is signed too, so
/// a valid entry copied under another key (another statement's result) does not verify. A
/// sidecar without the secret reads the other magic as a malformed entry: a miss, never bytes
/// taken for a result.
pub(crate) fn sign_entry(secret: &[u8], redis_key: &str, mut entry: Vec<u8>) -> Vec<u8> {
    use hmac::Mac;
    if entry.len() < ENTRY_MAGIC.len() {
        return entry;
    }
    entry[..SIGNED_MAGIC.len()].copy_from_slice(SIGNED_MAGIC);
    let mac = entry_mac(secret, redis_key, &entry).finalize().into_bytes();
    entry.extend_from_slice(&mac);
    entry
}

/// The entry inside a value read from `redis_key`, if it carries a valid signature (compared in
/// constant time); in [`encode_entry`]'s form, ready for [`decode_entry`].
pub(crate) fn verify_entry(secret: &[u8], redis_key: &str, raw: &[u8]) -> Option<Bytes> {
    use hmac::Mac;
    if raw.len() < SIGNED_MAGIC.len() + MAC_LEN || &raw[..SIGNED_MAGIC.len()] != SIGNED_MAGIC {
        return None;
    }
    let (signed, mac) = raw.split_at(raw.len() - MAC_LEN);
    entry_mac(secret, redis_key, signed)
        .verify_slice(mac)
        .ok()?;
    let mut entry = BytesMut::with_capacity(signed.len());
    entry.put_slice(ENTRY_MAGIC);
    entry.put_slice(&signed[ENTRY_MAGIC.len()..]);
    Some(entry.freeze())
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
                lsn: 0x3000060,
                mark: Mark::None,
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
                lsn: 0,
                mark: Mark::None,
            })
        );
    }

    #[test]
    fn a_signed_entry_verifies_only_unchanged_under_its_key_with_its_secret() {
        let tables = vec![Snap {
            table: "db.public.prices".into(),
            version: 3,
            token: 0xabc,
            shared: true,
        }];
        let entry = encode_entry(&tables, Duration::from_secs(10), b"rows").unwrap();
        let secret = b"0123456789abcdef0123456789abcdef";
        let signed = sign_entry(secret, "p:e:01", entry.clone());
        assert_eq!(
            verify_entry(secret, "p:e:01", &signed).as_deref(),
            Some(&entry[..])
        );
        assert!(
            decode_entry(Bytes::from(signed.clone())).is_none(),
            "a sidecar without the secret must not take a signed entry for a plain one"
        );
        assert!(verify_entry(secret, "p:e:02", &signed).is_none(), "moved");
        assert!(verify_entry(b"another secret, just as long....", "p:e:01", &signed).is_none());
        assert!(verify_entry(secret, "p:e:01", &entry).is_none(), "unsigned");
        for i in 0..signed.len() {
            let mut forged = signed.clone();
            forged[i] ^= 1;
            assert!(
                verify_entry(secret, "p:e:01", &forged).is_none(),
                "byte {i}"
            );
        }
        assert!(verify_entry(secret, "p:e:01", &signed[..signed.len() - 1]).is_none());
        assert!(verify_entry(secret, "p:e:01", b"PSS1").is_none());
    }

    #[test]
    fn announced_writes_and_their_ends_round_trip_through_the_token_format() {
        for (lsn, mark) in [
            (0, Mark::Intent),
            (0x16b3748, Mark::Ends(0xdead)),
            (0, Mark::Ends(u64::MAX)),
            (0x10, Mark::Renews(0xbeef)),
        ] {
            let s = format!("7:{}", token_suffix(0xff, lsn, mark));
            assert_eq!(
                parse_token(s.as_bytes()),
                Some(SharedToken {
                    version: 7,
                    token: 0xff,
                    lsn,
                    mark
                }),
                "{s}"
            );
        }
        assert_eq!(token_suffix(0xff, 0, Mark::Intent), "00000000000000ff:0:i");
        assert_eq!(parse_token(b"7:ff:0:x"), None);
        assert_eq!(parse_token(b"7:ff:0:e"), None);
        assert_eq!(parse_token(b"7:ff:0:ezz"), None);
        assert_eq!(parse_token(b"7:ff:0:r"), None);
        assert_eq!(parse_token(b"7:ff:0:q1"), None);
        assert_eq!(Mark::Renews(3).holds(9), Some(3));
        assert_eq!(Mark::Intent.holds(9), Some(9));
        assert_eq!(Mark::Ends(3).holds(9), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
            failure_persistence: None,
            ..Default::default()
        })]

        /// Entries and tokens come from Redis, which other processes can write: any bytes decode
        /// to None or to an entry within the input, never a panic.
        #[test]
        fn redis_entries_tokens_and_messages_never_panic(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let mut with_magic = ENTRY_MAGIC.to_vec();
            with_magic.extend_from_slice(&raw);
            for bytes in [raw.clone(), with_magic] {
                if let Some(e) = decode_entry(Bytes::from(bytes.clone())) {
                    proptest::prop_assert!(e.bytes.len() <= bytes.len());
                    proptest::prop_assert!(e.tables.len() <= bytes.len());
                }
            }
            let _ = parse_token(&raw);
            let _ = crate::cache::invalidate::parse_message(&raw);
        }
    }
}

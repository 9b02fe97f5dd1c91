//! The invalidation subscriber: applies other sidecars' invalidations to this L1.
//!
//! Channel payload (one message per table, published by the token-bump script in the same
//! atomic step as the token change): `{environment}\t{table}\t{version}:{token:016x}:{lsn:x}`,
//! e.g. `prod\tshop.prices\t1718000000123456:9f3a0c5e11d2b7a4:3000060`. `lsn` is the primary's
//! WAL position at or after the commit of the write that retired the old token; it is left out
//! (`…:{token:016x}`, the form of older releases, read as LSN 0) when unknown. A sidecar records
//! it in its write log *before* adopting the token, so that no result of a replica that has not
//! replayed the write can be stored under the new token, and reads are routed past such
//! replicas (`read_your_writes = "sidecar"`). The table `*` means "everything"
//! (`INVALIDATE ALL`, or a write whose tables the analyser could not name). The environment is informational: tokens are shared by every sidecar
//! using the same Redis and `key_prefix` (use distinct prefixes to separate environments).
//! Environment names must not contain a tab; table names may.
//!
//! Each applied message of another sidecar is acknowledged by adding this sidecar to `{prefix}:ack:{table}:{version}`:
//! the writing sidecar holds its client until every member of the fleet has done so, or has
//! been fenced and its lease has run out (`Inner::await_acks`, `super::fleet`). This task also
//! joins the fleet once subscribed and renews the lease while it keeps up with the channel.
//!
//! While disconnected, messages may be missed: on losing the subscription and again once it is
//! re-established, the cache resyncs (flushes L1 and forgets every token), so nothing filled
//! before or during the gap can be served. Reconnects use exponential backoff with jitter; a
//! periodic re-SUBSCRIBE detects a dead connection that never closed. With several seed nodes
//! (Redis Cluster) each attempt after a failure or loss goes to the next seed, so one node down
//! does not silence invalidations that the cluster bus still delivers to the others.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use super::fleet::RENEW_EVERY;
use super::l2::L2;
use super::stats::CacheStats;
use super::stored::{parse_token, Mark, SharedToken};
use super::tokens::INTENT_HOLD;
use super::Inner;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// (environment, table, token)
pub(crate) fn parse_message(payload: &[u8]) -> Option<(&str, &str, SharedToken)> {
    let s = std::str::from_utf8(payload).ok()?;
    let (env, rest) = s.split_once('\t')?;
    let (table, tok) = rest.rsplit_once('\t')?;
    Some((env, table, parse_token(tok.as_bytes())?))
}

/// Applies one message; unreadable messages flush everything (something was invalidated).
/// Counted once applied, so a counter that moved means the tokens have (tests wait on it).
pub(crate) async fn apply_message(inner: &Inner, payload: &[u8]) {
    let parsed = parse_message(payload);
    match parsed {
        Some((_env, table, tok)) => {
            // The position first: a fill checked after the token moved must already demand it.
            inner.learned(table, tok.lsn);
            // An announced write: nothing of the table is stored until its end (or the hold)
            // — noted before the token moves, so no fill slips between the two.
            if let Some(id) = tok.mark.holds(tok.token) {
                inner.tokens.note_intent(table, id, INTENT_HOLD);
            }
            if inner.tokens.observe(None, table, tok.version, tok.token) {
                inner.l1.drop_table(table).await;
            }
            if let Mark::Ends(id) = tok.mark {
                inner.tokens.end_intent(table, id);
            }
        }
        None => {
            tracing::warn!(payload = %String::from_utf8_lossy(payload), "cache: unreadable invalidation message; flushing L1");
            inner.resync();
        }
    }
    CacheStats::inc(&inner.stats.invalidation_messages);
    // Applied (and counted): the writer may now release its client (`Inner::await_acks`).
    // This sidecar's own messages need none: a writer waits only for the other members.
    if let (Some(l2), Some((_, table, tok))) = (&inner.l2, parsed) {
        if !inner.own_token(tok.token) {
            let _ = l2.ack(table, tok.version).await;
        }
    }
}

/// Joins the fleet, or renews the lease (see `super::fleet`). A refused renewal means this
/// sidecar was fenced (or Redis forgot it): a writer went on without its acknowledgement, so
/// it flushes everything it learnt and joins afresh. A failed call leaves the lease to run out.
async fn renew_lease(inner: &Inner, l2: &L2, joined: &mut bool) {
    for _ in 0..2 {
        let sent = tokio::time::Instant::now();
        let joining = !*joined;
        match l2.lease(joining).await {
            Ok(Some(members)) => {
                if joining {
                    // Writers that bumped before this join did not wait for us, and their
                    // messages may still be unread on the subscription while this grant is
                    // already here: what L1 holds and the tokens it knows may predate them.
                    // Start clean before trusting anything (tokens are read again from Redis,
                    // which has them; the catch-up with the primary's position covers
                    // routing). Found by the consistency short pass: a sidecar fenced and
                    // rejoined under load served a cached row older than an acknowledged
                    // write through the other sidecar.
                    inner.resync();
                    // Writes announced before this join were not sent to us: read those not
                    // yet ended (their ends will come on the subscription). Until then (or for
                    // a hold, if Redis does not answer) nothing is stored.
                    if let Ok(intents) = l2.intents().await {
                        inner.tokens.rejoined(&intents);
                    }
                    *joined = true;
                    CacheStats::inc(&inner.stats.fleet_joins);
                    tracing::info!(members, "cache: joined the fleet sharing Redis");
                }
                l2.fleet.granted(sent, joining, members);
                return;
            }
            Ok(None) => {
                l2.fleet.lost();
                tracing::warn!("cache: fenced by a writer (an invalidation was not acknowledged in time) or forgotten by Redis; flushing L1 and joining again");
                inner.resync();
                *joined = false; // and join at once
            }
            Err(e) => {
                tracing::debug!(error = %e, "cache: lease renewal failed");
                return;
            }
        }
    }
}

/// Resolves when shutdown is requested (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await.map(|_| ());
}

async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(shutdown) => true,
    }
}

pub(crate) async fn run(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let Some(l2) = inner.l2.as_ref() else { return };
    let clients = l2.pubsub_clients().to_vec();
    if clients.is_empty() {
        return;
    }
    let mut attempt = 0usize;
    let channel = l2.channel().to_owned();
    let connect_timeout = (inner.cfg.redis_timeout * 20).max(Duration::from_secs(1));
    let mut backoff = BACKOFF_MIN;
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        let client = &clients[attempt % clients.len()];
        attempt = attempt.wrapping_add(1);
        let connected = tokio::time::timeout(connect_timeout, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        let pubsub = match connected {
            Ok(Ok(ps)) => ps,
            failed => {
                let err = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                tracing::debug!(error = %err, node = ?client.get_connection_info().addr, "cache: invalidation subscriber cannot connect");
                let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
                if sleep_or_shutdown(backoff + jitter, &mut shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        // Subscribed: anything published from now on reaches us. What was published before
        // (while we were not subscribed) may be lost, so start from a clean slate.
        inner.resync();
        // Stay on this node next time, unless it fails (the next attempt moves on).
        attempt = attempt.wrapping_sub(1);
        inner.stats.pubsub_connected.store(true, Ordering::Relaxed);
        tracing::info!(channel = %channel, "cache: invalidation subscriber connected");
        backoff = BACKOFF_MIN;

        let (mut sink, mut stream) = pubsub.split();
        let mut keepalive = tokio::time::interval(KEEPALIVE_EVERY);
        keepalive.reset();
        // Renewals come first (`biased`): a backlog of messages must not starve them; but they
        // are made from this loop, so a subscriber that stops reading stops renewing.
        let mut renew = tokio::time::interval(RENEW_EVERY);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut joined = false;
        let stop = loop {
            tokio::select! {
                biased;
                _ = renew.tick() => renew_lease(&inner, l2, &mut joined).await,
                msg = stream.next() => match msg {
                    Some(m) => apply_message(&inner, m.get_payload_bytes()).await,
                    None => break false,
                },
                _ = keepalive.tick() => {
                    let alive = tokio::time::timeout(KEEPALIVE_TIMEOUT, sink.subscribe(&channel)).await;
                    if !matches!(alive, Ok(Ok(()))) {
                        break false;
                    }
                }
                _ = stopped(&mut shutdown) => break true,
            }
        };
        inner.stats.pubsub_connected.store(false, Ordering::Relaxed);
        // Out of the fleet at once: writers stop waiting for us, and we stop trusting L1.
        l2.fleet.lost();
        let _ = l2.leave().await;
        if stop {
            return;
        }
        tracing::warn!(channel = %channel, "cache: invalidation subscriber lost; flushing L1");
        inner.resync();
        if sleep_or_shutdown(BACKOFF_MIN, &mut shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(version: u64, token: u64, lsn: u64) -> SharedToken {
        SharedToken {
            version,
            token,
            lsn,
            mark: Mark::None,
        }
    }

    #[test]
    fn message_carries_the_commit_position() {
        assert_eq!(
            parse_message(b"prod\tshop.prices\t1718000000123456:00000000000000ff:3000060"),
            Some(("prod", "shop.prices", tok(1718000000123456, 255, 0x3000060)))
        );
        assert_eq!(
            parse_message(b"prod\tweird\ttable\t5:0a:1"),
            Some(("prod", "weird\ttable", tok(5, 10, 1)))
        );
        assert_eq!(parse_message(b"prod\tt\t5:0a:zz"), None);
    }

    #[test]
    fn message_of_an_older_release_reads_as_position_zero() {
        assert_eq!(
            parse_message(b"prod\tpublic.prices\t1718000000123456:00000000000000ff"),
            Some(("prod", "public.prices", tok(1718000000123456, 255, 0)))
        );
        assert_eq!(
            parse_message(b"prod\tweird\ttable\t5:0a"),
            Some(("prod", "weird\ttable", tok(5, 10, 0)))
        );
        assert_eq!(
            parse_message(b"prod\t*\t5:0a"),
            Some(("prod", "*", tok(5, 10, 0)))
        );
        assert_eq!(parse_message(b"nonsense"), None);
        assert_eq!(parse_message(b"a\tb\tc"), None);
    }
}

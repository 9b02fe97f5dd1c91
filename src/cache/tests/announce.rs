//! Writes announced before their commit, renewed, ended, waited for (without Redis).

use super::*;

/// Step 8 of the module doc without Redis: a write announced before its commit retires the
/// entries of its tables and keeps any fill of them from being stored until the commit's
/// invalidation ends it; tables it does not write keep theirs.
#[tokio::test]
async fn nothing_of_a_table_is_stored_while_a_write_to_it_is_announced() {
    let c = cache();
    let prices = key(1);
    let products = key(2);
    for (k, t) in [(prices, "public.prices"), (products, "public.products")] {
        let f = miss(&c, &k, &[t]).await;
        assert_eq!(
            c.fill(f, Bytes::from_static(b"v1"), TTL).await,
            FillOutcome::Stored
        );
    }
    // A fill begun before the announcement and offered during it: it may have read what
    // the write is about to change.
    let early = miss(&c, &key(3), &["public.prices"]).await;

    let announced = c.announce(&["public.prices"]).await;
    assert!(announced.covers("public.prices") && !announced.covers("public.products"));
    miss(&c, &prices, &["public.prices"]).await;
    assert_eq!(&hit(&c, &products, &["public.products"]).await[..], b"v1");
    assert_eq!(
        c.fill(early, Bytes::from_static(b"old"), TTL).await,
        FillOutcome::Rejected(Reason::Invalidated)
    );
    let during = miss(&c, &prices, &["public.prices"]).await;
    assert_eq!(
        c.fill(during, Bytes::from_static(b"old"), TTL).await,
        FillOutcome::Rejected(Reason::Invalidated),
        "a fill during the announcement is not stored"
    );
    // Begun during the announcement, offered after the commit's invalidation: the commit's
    // new token rejects it.
    let straddling = miss(&c, &prices, &["public.prices"]).await;
    c.invalidate_announced(&["public.prices"], 0, announced)
        .await;
    assert_eq!(
        c.fill(straddling, Bytes::from_static(b"old"), TTL).await,
        FillOutcome::Rejected(Reason::Invalidated)
    );
    let after = miss(&c, &prices, &["public.prices"]).await;
    assert_eq!(
        c.fill(after, Bytes::from_static(b"v2"), TTL).await,
        FillOutcome::Stored
    );
    assert_eq!(&hit(&c, &prices, &["public.prices"]).await[..], b"v2");
}

/// A write announced for every table (its tables unknown) holds every fill; abandoning an
/// announcement (the transaction rolled back, or its outcome is unknown) ends it too.
#[tokio::test]
async fn an_abandoned_or_global_announcement_ends_and_holds_what_it_must() {
    let c = cache();
    let announced = c.announce(&[ALL_TABLES]).await;
    assert!(announced.covers("public.anything"));
    let f = miss(&c, &key(7), &["public.anything"]).await;
    assert_eq!(
        c.fill(f, Bytes::from_static(b"old"), TTL).await,
        FillOutcome::Rejected(Reason::Invalidated)
    );
    c.abandon(announced);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let f = miss(&c, &key(7), &["public.anything"]).await;
        if c.fill(f, Bytes::from_static(b"new"), TTL).await == FillOutcome::Stored {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned announcement never ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `INVALIDATE ALL` (and a committed write whose tables are unknown) invalidates every
/// table; it announces nothing. Before, it went out as an announcement nobody ended: every
/// fill of every table was refused for the 5 s of its hold.
#[tokio::test]
async fn invalidating_everything_holds_no_fill_after_it() {
    let c = cache();
    let k = key(11);
    let f = miss(&c, &k, &["public.prices"]).await;
    assert_eq!(
        c.fill(f, Bytes::from_static(b"v1"), TTL).await,
        FillOutcome::Stored
    );
    c.invalidate_all(0).await;
    let f = miss(&c, &k, &["public.prices"]).await;
    assert_eq!(
        c.fill(f, Bytes::from_static(b"v2"), TTL).await,
        FillOutcome::Stored
    );
    assert!(!c.await_writes_in_flight(None).await);
}

/// A transaction's announcement renewed (its write still in flight) keeps one announcement
/// per table, so the commit's invalidation ends all of it at once.
#[tokio::test]
async fn a_renewed_announcement_ends_with_its_commit() {
    let c = cache();
    let mut announced = c.announce(&["public.prices"]).await;
    c.renew(&mut announced).await;
    c.renew(&mut announced).await;
    assert!(announced.is_fresh() && announced.covers("public.prices"));
    let f = miss(&c, &key(12), &["public.prices"]).await;
    assert_eq!(
        c.fill(f, Bytes::from_static(b"old"), TTL).await,
        FillOutcome::Rejected(Reason::Invalidated)
    );
    c.invalidate_announced(&["public.prices"], 0, announced)
        .await;
    let f = miss(&c, &key(12), &["public.prices"]).await;
    assert_eq!(
        c.fill(f, Bytes::from_static(b"new"), TTL).await,
        FillOutcome::Stored
    );
    assert!(!c.await_writes_in_flight(None).await);
}

/// A read on the primary after a replica (under synchronous replication) waits for the
/// writes announced on its tables to end: their commits are then visible on the primary.
/// Writes to other tables do not hold it; none in flight, it does not wait at all.
#[tokio::test]
async fn waiting_for_writes_in_flight_ends_when_their_commit_is_invalidated() {
    let c = cache();
    assert!(!c.await_writes_in_flight(Some(&["public.prices"])).await);
    let announced = c.announce(&["public.prices"]).await;
    assert!(!c.await_writes_in_flight(Some(&["public.products"])).await);
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.await_writes_in_flight(Some(&["public.prices"])).await })
    };
    let any = {
        let c = c.clone();
        tokio::spawn(async move { c.await_writes_in_flight(None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiter.is_finished() && !any.is_finished(),
        "returned while the write was in flight"
    );
    c.invalidate_announced(&["public.prices"], 0, announced)
        .await;
    assert!(tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap());
    assert!(tokio::time::timeout(Duration::from_secs(5), any)
        .await
        .unwrap()
        .unwrap());
}

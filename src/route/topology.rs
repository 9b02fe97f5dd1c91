//! The servers behind the sidecar and what is known about each: verified role, health,
//! replication position and lag, and how busy the sidecar keeps it.
//!
//! Roles are verified, not trusted: a monitor asks every node `pg_is_in_recovery()`, so a
//! replica never gets a write and a promoted replica is followed as the new primary.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::NodeAddr;

/// A WAL position (`pg_lsn`) as a number, so positions compare with `<`.
pub type Lsn = u64;

/// Parses Postgres' `XXXXXXXX/XXXXXXXX` text form.
pub fn parse_lsn(s: &str) -> Option<Lsn> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format_lsn(l: Lsn) -> String {
    format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

pub struct Node {
    pub addr: Arc<NodeAddr>,
    /// As listed in the configuration.
    pub configured: Role,
    pub weight: u32,
    /// Last verified `pg_is_in_recovery()`; a node never checked counts as unknown.
    pub in_recovery: AtomicBool,
    pub checked: AtomicBool,
    pub healthy: AtomicBool,
    /// Replicas: last replayed position. Primary: current WAL position.
    pub lsn: AtomicU64,
    /// Replicas: bytes behind the primary, and microseconds since the last replayed commit
    /// while replay is behind receive.
    pub lag_bytes: AtomicU64,
    pub lag_micros: AtomicU64,
    /// Primary: verified to have no synchronous standbys (`synchronous_standby_names` empty),
    /// so nothing it commits is visible on a replica before it is on the primary. False until
    /// verified.
    pub no_sync_standbys: AtomicBool,
    /// Requests the sidecar has in flight on this node (least-outstanding balancing).
    pub outstanding: AtomicUsize,
    pub served: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    pub last_check: Mutex<Option<Instant>>,
    /// The latest position read from the node (replicas: replayed; primary: WAL insert), with
    /// when the query that read it was *sent*: any position observed by a query sent after a
    /// moment is at or beyond what the node showed at that moment (monotonic reads,
    /// [`super::Seen`]).
    observed: Mutex<Option<(Instant, Lsn)>>,
}

impl Node {
    pub fn new(addr: NodeAddr, configured: Role, weight: u32) -> Self {
        Self {
            addr: Arc::new(addr),
            configured,
            weight: weight.max(1),
            in_recovery: AtomicBool::new(configured == Role::Replica),
            checked: AtomicBool::new(false),
            healthy: AtomicBool::new(configured == Role::Primary),
            lsn: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            lag_micros: AtomicU64::new(0),
            no_sync_standbys: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_check: Mutex::new(None),
            observed: Mutex::new(None),
        }
    }

    /// Records a position read by a query sent at `sent`.
    pub fn observe(&self, sent: Instant, lsn: Lsn) {
        let mut o = self.observed.lock();
        if o.is_none_or(|(at, _)| sent > at) {
            *o = Some((sent, lsn));
        }
    }

    /// A position read by a query sent after `moment`, if any: an upper bound of what the node
    /// had replayed (or, the primary, committed) at that moment.
    pub fn observed_after(&self, moment: Instant) -> Option<Lsn> {
        self.observed
            .lock()
            .and_then(|(at, lsn)| (at > moment).then_some(lsn))
    }

    /// What the node is now, as far as the monitor knows.
    pub fn role(&self) -> Role {
        if self.in_recovery.load(Ordering::Relaxed) {
            Role::Replica
        } else {
            Role::Primary
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn lag(&self) -> (u64, Duration) {
        (
            self.lag_bytes.load(Ordering::Relaxed),
            Duration::from_micros(self.lag_micros.load(Ordering::Relaxed)),
        )
    }

    pub fn replayed(&self) -> Lsn {
        self.lsn.load(Ordering::Relaxed)
    }

    /// A replica's connection died or it is shutting down: probably a restart. A standby comes
    /// back consistent at its minimum recovery point, which can be behind what it had replayed
    /// and shown before, so its last known position no longer counts until the monitor's next
    /// probe (or a session's poll) reads the real one; meanwhile reads that need a position
    /// wait for it or go elsewhere.
    pub fn forget_position(&self) {
        self.lsn.store(0, Ordering::Relaxed);
    }

    /// Counts a request for least-outstanding balancing until the guard drops.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

pub struct InFlight(Arc<Node>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All nodes of one environment; index 0 is the configured primary.
pub struct Topology {
    pub nodes: Vec<Arc<Node>>,
    /// The environment these servers make up (`config::DEFAULT_ENVIRONMENT` without any).
    pub environment: String,
    /// Set when nothing will route here again (replaced by a reload, or closed after its
    /// rollback window): its monitors stop.
    pub retired: AtomicBool,
    rr: AtomicUsize,
}

impl Topology {
    pub fn new(primary: NodeAddr, replicas: Vec<NodeAddr>) -> Self {
        Self::for_environment(crate::config::DEFAULT_ENVIRONMENT, primary, replicas)
    }

    pub fn for_environment(name: &str, primary: NodeAddr, replicas: Vec<NodeAddr>) -> Self {
        let mut nodes = vec![Arc::new(Node::new(primary, Role::Primary, 1))];
        nodes.extend(replicas.into_iter().map(|a| {
            let w = a.weight;
            Arc::new(Node::new(a, Role::Replica, w))
        }));
        Self {
            nodes,
            environment: name.to_string(),
            retired: AtomicBool::new(false),
            rr: AtomicUsize::new(0),
        }
    }

    /// The node writes go to: the configured primary while it is healthy and not in recovery;
    /// otherwise a listed node that has verifiably left recovery (a promoted replica). A
    /// configured primary that is back and still a primary wins again, so an operator's
    /// failback needs no reconfiguration (and two primaries never both get writes at once).
    pub fn primary(&self) -> &Arc<Node> {
        let configured = &self.nodes[0];
        let checked = configured.checked.load(Ordering::Relaxed);
        if !checked || (configured.role() == Role::Primary && configured.is_healthy()) {
            return configured;
        }
        self.nodes
            .iter()
            .skip(1)
            .find(|n| {
                n.checked.load(Ordering::Relaxed) && n.is_healthy() && n.role() == Role::Primary
            })
            .unwrap_or(configured)
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Verified, healthy replicas within the lag limits that have replayed `min_lsn`.
    pub fn eligible_replicas(
        &self,
        max_lag_bytes: u64,
        max_lag: Duration,
        min_lsn: Lsn,
    ) -> Vec<&Arc<Node>> {
        let primary = self.primary();
        self.nodes
            .iter()
            .filter(|n| !Arc::ptr_eq(n, primary))
            .filter(|n| {
                n.checked.load(Ordering::Relaxed) && n.is_healthy() && n.role() == Role::Replica
            })
            .filter(|n| {
                let (bytes, time) = n.lag();
                bytes <= max_lag_bytes && time <= max_lag
            })
            .filter(|n| n.replayed() >= min_lsn)
            .collect()
    }

    /// Least outstanding requests first, weights breaking ties; or weighted round robin.
    pub fn pick<'a>(
        &self,
        candidates: &[&'a Arc<Node>],
        strategy: crate::config::Balance,
    ) -> Option<&'a Arc<Node>> {
        match strategy {
            crate::config::Balance::LeastOutstanding => {
                // Equally loaded nodes take turns: on a quiet sidecar every replica is at 0,
                // and always taking the first would leave the others cold (their caches, pools
                // and the monitor's view of them untested by real reads).
                let load = |n: &Node| {
                    (n.outstanding.load(Ordering::Relaxed) as u64 * 1000) / n.weight as u64
                };
                let best = candidates.iter().map(|n| load(n)).min()?;
                self.weighted_turn(candidates, |n| load(n) == best)
            }
            crate::config::Balance::RoundRobin => self.weighted_turn(candidates, |_| true),
        }
    }

    /// Weighted round robin over the candidates `take` accepts (no allocation: this runs for
    /// every replica read). Loads move concurrently, so the second pass may find fewer; then
    /// the first candidate serves.
    fn weighted_turn<'a>(
        &self,
        candidates: &[&'a Arc<Node>],
        take: impl Fn(&Node) -> bool,
    ) -> Option<&'a Arc<Node>> {
        let total: u32 = candidates
            .iter()
            .filter(|n| take(n))
            .map(|n| n.weight)
            .sum();
        if total == 0 {
            return None;
        }
        let mut slot = (self.rr.fetch_add(1, Ordering::Relaxed) % total as usize) as u32;
        for n in candidates.iter().filter(|n| take(n)) {
            if slot < n.weight {
                return Some(n);
            }
            slot -= n.weight;
        }
        candidates.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> NodeAddr {
        NodeAddr {
            host: "127.0.0.1".into(),
            port,
            user: None,
            password: None,
            database: None,
            weight: 1,
        }
    }

    #[test]
    fn lsn_text_round_trips_and_orders() {
        let a = parse_lsn("16/B374D848").unwrap();
        assert_eq!(format_lsn(a), "16/B374D848");
        assert!(parse_lsn("0/1").unwrap() < parse_lsn("1/0").unwrap());
        assert!(parse_lsn("nope").is_none());
    }

    fn checked_replica(t: &Topology, i: usize, lsn: Lsn) {
        let n = &t.nodes[i];
        n.checked.store(true, Ordering::Relaxed);
        n.healthy.store(true, Ordering::Relaxed);
        n.in_recovery.store(true, Ordering::Relaxed);
        n.lsn.store(lsn, Ordering::Relaxed);
    }

    #[test]
    fn unchecked_or_lagging_replicas_are_not_eligible() {
        let t = Topology::new(addr(1), vec![addr(2), addr(3)]);
        assert!(t.eligible_replicas(u64::MAX, Duration::MAX, 0).is_empty());
        checked_replica(&t, 1, 100);
        checked_replica(&t, 2, 50);
        assert_eq!(t.eligible_replicas(u64::MAX, Duration::MAX, 60).len(), 1);
        t.nodes[2].lag_bytes.store(10_000, Ordering::Relaxed);
        assert_eq!(t.eligible_replicas(1_000, Duration::MAX, 0).len(), 1);
    }

    #[test]
    fn promoted_replica_is_followed_as_primary() {
        let t = Topology::new(addr(1), vec![addr(2)]);
        let p = &t.nodes[0];
        p.checked.store(true, Ordering::Relaxed);
        p.in_recovery.store(true, Ordering::Relaxed);
        let r = &t.nodes[1];
        r.checked.store(true, Ordering::Relaxed);
        r.healthy.store(true, Ordering::Relaxed);
        r.in_recovery.store(false, Ordering::Relaxed);
        assert_eq!(t.primary().addr.port, 2);
    }

    #[test]
    fn a_dead_primary_is_replaced_by_a_promoted_replica_but_not_by_a_replica() {
        let t = Topology::new(addr(1), vec![addr(2)]);
        let p = &t.nodes[0];
        p.checked.store(true, Ordering::Relaxed);
        p.in_recovery.store(false, Ordering::Relaxed);
        p.healthy.store(false, Ordering::Relaxed);
        checked_replica(&t, 1, 0);
        assert_eq!(
            t.primary().addr.port,
            1,
            "a replica still in recovery is no primary"
        );
        t.nodes[1].in_recovery.store(false, Ordering::Relaxed);
        assert_eq!(t.primary().addr.port, 2);
        p.healthy.store(true, Ordering::Relaxed);
        assert_eq!(t.primary().addr.port, 1);
    }

    #[test]
    fn equally_loaded_replicas_take_turns() {
        let t = Topology::new(addr(1), vec![addr(2), addr(3)]);
        checked_replica(&t, 1, 0);
        checked_replica(&t, 2, 0);
        let c = t.eligible_replicas(u64::MAX, Duration::MAX, 0);
        let ports: Vec<u16> = (0..4)
            .map(|_| {
                t.pick(&c, crate::config::Balance::LeastOutstanding)
                    .unwrap()
                    .addr
                    .port
            })
            .collect();
        assert_eq!(ports.iter().filter(|&&p| p == 2).count(), 2, "{ports:?}");
        assert_eq!(ports.iter().filter(|&&p| p == 3).count(), 2, "{ports:?}");
    }

    #[test]
    fn least_outstanding_prefers_the_idle_replica() {
        let t = Topology::new(addr(1), vec![addr(2), addr(3)]);
        checked_replica(&t, 1, 0);
        checked_replica(&t, 2, 0);
        let _busy = t.nodes[1].begin_request();
        let c = t.eligible_replicas(u64::MAX, Duration::MAX, 0);
        assert_eq!(
            t.pick(&c, crate::config::Balance::LeastOutstanding)
                .unwrap()
                .addr
                .port,
            3
        );
    }
}

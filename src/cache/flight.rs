//! Single flight: at most one task per key runs the database query for a miss; the others wait
//! (bounded) for its fill and then re-check L1.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::key::CacheKey;

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<CacheKey, Arc<Flight>>>,
}

#[derive(Default)]
pub(crate) struct Flight {
    done: AtomicBool,
    notify: Notify,
}

pub(crate) enum Role {
    /// This task runs the query; the guard releases the waiters when dropped.
    Leader(FlightGuard),
    /// Another task runs it.
    Waiter(Arc<Flight>),
}

/// Held by the leader (inside its `Fill`). Dropping it, whether after a fill, a rejected fill
/// or a failed query, removes the flight and wakes every waiter.
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: CacheKey,
    flight: Arc<Flight>,
}

impl Flights {
    pub(crate) fn join_or_lead(self: &Arc<Self>, key: CacheKey) -> Role {
        let mut map = self.map.lock();
        if let Some(f) = map.get(&key) {
            return Role::Waiter(f.clone());
        }
        let flight = Arc::new(Flight::default());
        map.insert(key, flight.clone());
        Role::Leader(FlightGuard {
            flights: self.clone(),
            key,
            flight,
        })
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.map.lock().len()
    }
}

impl Flight {
    /// Waits until the leader is done or `deadline`; true when the leader is done.
    pub(crate) async fn wait(&self, deadline: Instant) -> bool {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Register before checking `done`, so a release between the check and the await is seen.
        notified.as_mut().enable();
        if self.done.load(Ordering::Acquire) {
            return true;
        }
        tokio::time::timeout_at(deadline, notified).await.is_ok()
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        {
            let mut map = self.flights.map.lock();
            if map
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(&self.key);
            }
        }
        self.flight.done.store(true, Ordering::Release);
        self.flight.notify.notify_waiters();
    }
}

//! Circuit breaker in front of Redis: after `threshold` consecutive failures, Redis is bypassed
//! for `cooldown`; then exactly one call (the probe) goes through, and its outcome closes or
//! re-opens the breaker. A bypassed call costs nothing, so a dead Redis adds no latency.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// What the breaker currently does with Redis calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go to Redis.
    Closed,
    /// Calls are bypassed until the cooldown ends.
    Open,
    /// One probe call is in flight; the others are bypassed.
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// Leave to make one call. Report its outcome with [`Permit::success`] or [`Permit::failure`];
/// a probe permit dropped without an outcome (its call was cancelled) re-opens the breaker with
/// no cooldown, so the next call probes again instead of the breaker staying half-open forever.
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// None: bypass Redis for this call.
    pub(crate) fn acquire(&self) -> Option<Permit<'_>> {
        let mut st = self.state.lock();
        let probe = match *st {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= until => {
                *st = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => return None,
        };
        Some(Permit {
            breaker: self,
            probe,
            settled: false,
        })
    }

    pub(crate) fn state(&self) -> BreakerState {
        match *self.state.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

impl Permit<'_> {
    pub(crate) fn success(mut self) {
        self.settled = true;
        *self.breaker.state.lock() = State::Closed { failures: 0 };
    }

    /// Records a failure; true when this failure opened the breaker.
    pub(crate) fn failure(mut self) -> bool {
        self.settled = true;
        let b = self.breaker;
        let mut st = b.state.lock();
        match *st {
            State::Closed { failures } if failures + 1 < b.threshold => {
                *st = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Closed { .. } | State::HalfOpen => {
                *st = State::Open {
                    until: Instant::now() + b.cooldown,
                };
                true
            }
            // Already opened by a concurrent call.
            State::Open { .. } => false,
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut st = self.breaker.state.lock();
            if matches!(*st, State::HalfOpen) {
                *st = State::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let b = Breaker::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            assert!(!b.acquire().unwrap().failure());
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.acquire().unwrap().failure());
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire().is_none());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.acquire().expect("probe after cooldown");
        assert!(b.acquire().is_none(), "only one probe at a time");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn success_resets_the_count_and_cancelled_probe_reopens() {
        let b = Breaker::new(2, Duration::from_millis(10));
        assert!(!b.acquire().unwrap().failure());
        b.acquire().unwrap().success();
        assert!(!b.acquire().unwrap().failure());
        assert!(b.acquire().unwrap().failure());
        std::thread::sleep(Duration::from_millis(15));
        drop(b.acquire().expect("probe"));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(
            b.acquire().is_some(),
            "a cancelled probe allows another probe at once"
        );
    }
}

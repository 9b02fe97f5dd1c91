//! Idle spin for the session workers (`[workers] idle_spin`): after serving something, a worker
//! keeps polling its sockets (`epoll_wait` with a zero timeout) for a short, bounded time instead
//! of sleeping, so a request that arrives right after the previous answer is read without a
//! wake-up.
//!
//! Why: on a virtual machine an idle vCPU halts, and waking it (an IPI through the hypervisor,
//! then a context switch) costs tens of microseconds — more than a cache hit's whole work. A
//! client that sends its next query a few microseconds after our answer pays that on every
//! request: measured on a 2-vCPU VM, one client's cache-hit p50 went from 70 µs to 28 µs
//! (BENCHMARKS.md). Spinning spends CPU time to save that latency, so it is bounded three ways:
//!   * the window: a worker spins at most `idle_spin` after its last activity;
//!   * adaptive: it spins only if its previous idle gap was shorter than the window, so an
//!     application with think time between queries costs at most one wasted window per change
//!     of pace, not one per request;
//!   * contention: a spinning worker calls `sched_yield` on every turn, so any thread waiting
//!     for its CPU runs first; if it was kept off the CPU for longer than [`PREEMPTED`] while
//!     spinning, the machine is busy and it does not spin for [`BACKOFF`]. On a small machine
//!     shared with the application and the databases, a spinning proxy must not take their CPU.
//!   * saturation: a spinning CPU is never idle, so the kernel does not move waiting threads
//!     to it — `sched_yield` only helps threads already queued on that CPU. So a worker does
//!     not spin while the machine has more runnable threads than CPUs (`/proc/loadavg`, read
//!     at most every [`LOAD_SAMPLE`]). Measured on 2 vCPUs, 16-client cached point lookups:
//!     without this check spinning cost 28 % of the throughput (BENCHMARKS.md).
//!
//! How: the worker's `block_on` future ([`IdleSpin`]) wakes itself while spinning. A woken
//! `block_on` future makes tokio's current-thread scheduler poll its I/O driver with a zero
//! timeout (`park_yield`) instead of parking, run what became ready, then poll the future again;
//! waking it from its own thread costs no syscall. Activity is the worker's busy time (tokio's
//! stable `worker_total_busy_duration`: time spent running tasks) growing between two turns.
//! When it stops spinning the future leaves its waker where the runtime's `on_thread_unpark`
//! hook ([`after_unpark`]) finds it, so the next real wake-up starts a new spin. Hand-written
//! because tokio has no spin-before-park option and a busy-polling crate would replace tokio's
//! reactor, which every socket and timer here is registered with.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Busy time growth between two turns this much above an empty turn's means a task ran. An
/// empty turn (the scheduler timing its own pass, and the spinner's `sched_yield`) adds well
/// under a microsecond on most machines, but not everywhere: in a small VM it was above one
/// microsecond, every turn looked like work, and an idle worker never stopped spinning (unit
/// test `a_worker_parks_again_after_its_spin_runs_out`, on an idle 2-vCPU Firecracker VM). So
/// each spin measures its own floor (the least growth of its turns) and counts growth above it.
const ACTIVITY: Duration = Duration::from_micros(1);

/// Off the CPU this long during one spinning turn (with no task of ours running) means another
/// thread needed the CPU: a context switch and a slice of someone else's work, not a syscall.
pub const PREEMPTED: Duration = Duration::from_micros(50);

/// How often a worker re-reads the machine's count of runnable threads.
pub const LOAD_SAMPLE: Duration = Duration::from_millis(1);

/// How long a worker that found its CPU contended does not spin.
pub const BACKOFF: Duration = Duration::from_millis(10);

/// The longest `idle_spin` the configuration accepts (defined with the configuration, which
/// checks it).
pub use crate::config::MAX_IDLE_SPIN as MAX_WINDOW;

thread_local! {
    /// The spinner's waker while it is not spinning: the next wake-up from a park resumes it.
    static PARKED: RefCell<Option<Waker>> = const { RefCell::new(None) };
    /// When this worker last went to sleep in `epoll_wait` (for the adaptive rule).
    static PARK_START: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The runtime's `on_thread_park` hook: about to sleep in `epoll_wait`. The runtime never parks
/// while the spinner spins, so this is where an idle gap without a spin begins.
pub fn before_park() {
    PARK_START.with(|p| p.set(Some(Instant::now())));
}

/// The runtime's `on_thread_unpark` hook: the worker woke from `epoll_wait`; resume the spinner.
pub fn after_unpark() {
    if let Some(w) = PARKED.with(|p| p.borrow_mut().take()) {
        w.wake();
    }
}

/// The `block_on` future of a session worker: never completes; spins as described above.
pub struct IdleSpin {
    window: Duration,
    metrics: tokio::runtime::RuntimeMetrics,
    /// Busy time at the previous turn, and when that turn was.
    last_busy: Duration,
    last_turn: Instant,
    /// Last turn that saw activity (or the wake-up that started this spin).
    last_activity: Instant,
    /// When the current spin began (for the spin-time metric).
    spin_start: Instant,
    /// When the idle gap began, if the last spin ran out (else `PARK_START` has it).
    idle_since: Option<Instant>,
    /// The last idle gap (end of activity to the next wake-up) was shorter than the window.
    last_gap_short: bool,
    spinning: bool,
    /// The least busy-time growth of a turn in this spin: what a turn with nothing to do costs
    /// here.
    empty_turn: Duration,
    backoff_until: Option<Instant>,
    load: MachineLoad,
}

/// Whether every CPU of the machine has a runnable thread: then a spin takes a CPU from one.
struct MachineLoad {
    /// `/proc/loadavg`, kept open (re-read with `pread`); `None` where it cannot be read, and
    /// then the machine never counts as saturated (the preemption check still applies).
    file: Option<std::fs::File>,
    /// Online CPUs of the machine: `/proc/loadavg` counts the whole machine's threads, also
    /// from inside a container, so it is compared with the machine's CPUs, not a CPU quota.
    cpus: usize,
    checked: Option<Instant>,
    saturated: bool,
}

impl MachineLoad {
    /// `spins`: whether this worker spins at all (else nothing is opened, nor warned about).
    fn new(spins: bool) -> Self {
        // SAFETY: sysconf reads a system constant.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let file = if spins { open_loadavg() } else { None };
        Self {
            file,
            cpus: usize::try_from(cpus).unwrap_or(1).max(1),
            checked: None,
            saturated: false,
        }
    }

    fn saturated(&mut self, now: Instant) -> bool {
        if self
            .checked
            .is_some_and(|t| now.saturating_duration_since(t) < LOAD_SAMPLE)
        {
            return self.saturated;
        }
        self.checked = Some(now);
        let Some(file) = &self.file else {
            return false;
        };
        let mut buf = [0u8; 128];
        let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, 0).unwrap_or(0);
        // "0.52 0.58 0.59 3/467 12345": the fourth field is runnable/existing threads; the
        // reader itself is one of the runnable ones.
        self.saturated = runnable_threads(&buf[..n]).is_some_and(|r| r > self.cpus);
        self.saturated
    }
}

fn open_loadavg() -> Option<std::fs::File> {
    match std::fs::File::open("/proc/loadavg") {
        Ok(f) => Some(f),
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    error = %e,
                    "workers.idle_spin: cannot read /proc/loadavg (systemd ProcSubset=pid?); \
                     spinning will not yield to a saturated machine"
                )
            });
            None
        }
    }
}

fn runnable_threads(loadavg: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(loadavg).ok()?;
    let field = text.split_ascii_whitespace().nth(3)?;
    field.split('/').next()?.parse().ok()
}

impl IdleSpin {
    /// Must be created inside the worker's runtime (it reads that runtime's metrics).
    /// A zero `window` never spins: the future is then `std::future::pending()`.
    pub fn new(window: Duration) -> Self {
        let metrics = tokio::runtime::Handle::current().metrics();
        let now = Instant::now();
        Self {
            window: window.min(MAX_WINDOW),
            last_busy: metrics.worker_total_busy_duration(0),
            metrics,
            last_turn: now,
            last_activity: now,
            spin_start: now,
            idle_since: None,
            last_gap_short: true,
            spinning: false,
            empty_turn: Duration::MAX,
            backoff_until: None,
            load: MachineLoad::new(!window.is_zero()),
        }
    }

    /// Stops spinning until the runtime's next wake-up.
    fn stop(&mut self, cx: &mut Context<'_>, now: Instant) -> Poll<()> {
        if self.spinning {
            crate::metrics::idle_spin(now.saturating_duration_since(self.spin_start));
        }
        // After a spin the idle gap began at the last activity; without one, when the runtime
        // parks (`before_park`).
        self.idle_since = self.spinning.then_some(self.last_activity);
        self.spinning = false;
        PARKED.with(|p| *p.borrow_mut() = Some(cx.waker().clone()));
        Poll::Pending
    }

    /// One turn: whether to keep spinning (`true`) or stop until the next wake-up.
    fn turn(&mut self, now: Instant) -> bool {
        let busy = self.metrics.worker_total_busy_duration(0);
        let worked = busy.saturating_sub(self.last_busy);
        let away = now.saturating_duration_since(self.last_turn);
        self.last_busy = busy;
        self.last_turn = now;
        if !self.spinning {
            // Polled after a real wake-up (the unpark hook): an event arrived.
            let since = self
                .idle_since
                .take()
                .or_else(|| PARK_START.with(Cell::take));
            if let Some(since) = since {
                self.last_gap_short = now.saturating_duration_since(since) < self.window;
            }
            self.last_activity = now;
            if self.backoff_until.is_some_and(|t| now < t) || !self.last_gap_short {
                return false;
            }
            if self.load.saturated(now) {
                self.backoff_until = Some(now + BACKOFF);
                crate::metrics::idle_spin_backoff();
                return false;
            }
            self.spinning = true;
            self.spin_start = now;
            self.empty_turn = Duration::MAX;
            return true;
        }
        self.empty_turn = self.empty_turn.min(worked);
        if worked >= self.empty_turn.saturating_add(ACTIVITY) {
            // Served something since the last turn: the gap that ended was short.
            self.last_activity = now;
            self.last_gap_short = true;
        } else if away.saturating_sub(worked) > PREEMPTED || self.load.saturated(now) {
            // Kept off the CPU while spinning: someone else wants it.
            self.backoff_until = Some(now + BACKOFF);
            crate::metrics::idle_spin_backoff();
            return false;
        }
        now.saturating_duration_since(self.last_activity) < self.window
    }
}

impl Future for IdleSpin {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.window.is_zero() {
            return Poll::Pending; // never woken
        }
        let now = Instant::now();
        if !this.turn(now) {
            return this.stop(cx, now);
        }
        // SAFETY: sched_yield takes no arguments and touches no memory of ours.
        unsafe { libc::sched_yield() };
        // From the runtime's own thread this only sets its "woken" flag: no syscall.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A runtime built like a session worker's, driven by the spinner on its own thread.
    fn worker(window: Duration) -> tokio::runtime::Handle {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(before_park)
            .on_thread_unpark(after_unpark)
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        std::thread::spawn(move || rt.block_on(async move { IdleSpin::new(window).await }));
        handle
    }

    /// Request/response over a socket registered with the spinning worker's reactor, and a
    /// timer on it: both must keep working while the worker spins and after it went to sleep.
    async fn echo_rounds_on(handle: &tokio::runtime::Handle) -> Vec<u8> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = listener.accept();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (srv, _) = server.await.unwrap();
        let srv = srv.into_std().unwrap();
        handle.spawn(async move {
            let mut srv = tokio::net::TcpStream::from_std(srv).unwrap();
            let mut b = [0u8; 1];
            while srv.read_exact(&mut b).await.is_ok() {
                // A timer on the spinning runtime must fire too.
                tokio::time::sleep(Duration::from_millis(1)).await;
                if srv.write_all(&[b[0] + 1]).await.is_err() {
                    break;
                }
            }
        });
        let mut got = Vec::new();
        for i in 0..20u8 {
            client.write_all(&[i]).await.unwrap();
            let mut b = [0u8; 1];
            client.read_exact(&mut b).await.unwrap();
            got.push(b[0]);
            if i % 5 == 4 {
                // Long enough for the spin to run out and the worker to park.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        got
    }

    #[test]
    fn runnable_threads_are_the_fourth_loadavg_field() {
        assert_eq!(runnable_threads(b"0.52 0.58 0.59 3/467 12345\n"), Some(3));
        assert_eq!(runnable_threads(b"garbage"), None);
        // The live file parses, and counts at least this test's own running thread.
        let live = std::fs::read("/proc/loadavg").unwrap();
        assert!(runnable_threads(&live).is_some_and(|n| n >= 1), "{live:?}");
    }

    #[tokio::test]
    async fn a_spinning_worker_serves_sockets_and_timers() {
        let handle = worker(Duration::from_micros(200));
        let got = echo_rounds_on(&handle).await;
        assert_eq!(got, (1..=20).collect::<Vec<u8>>());
    }

    #[tokio::test]
    async fn a_worker_without_spin_serves_sockets_and_timers() {
        let handle = worker(Duration::ZERO);
        let got = echo_rounds_on(&handle).await;
        assert_eq!(got, (1..=20).collect::<Vec<u8>>());
    }

    /// After activity the worker spins (its busy time keeps the runtime from parking), and once
    /// the window has passed without activity it parks again: it does not spin forever.
    #[tokio::test]
    async fn a_worker_parks_again_after_its_spin_runs_out() {
        let handle = worker(Duration::from_micros(200));
        echo_rounds_on(&handle).await;
        let parks = handle.metrics().worker_park_count(0);
        // Idle now: after a wake-up we cause with a task, it must park once more; a worker stuck
        // spinning never would (the 30 s bound only keeps a broken build from hanging).
        handle.spawn(async {}).await.unwrap();
        let mut waited = 0;
        while handle.metrics().worker_park_count(0) == parks {
            assert!(
                waited < 30_000,
                "the worker never parked after its spin window"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += 1;
        }
    }
}

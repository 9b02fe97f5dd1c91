//! Pipelined backends: several clients' autocommit reads in flight on one backend connection,
//! so one `send` and one `recv` carry many transactions instead of one each.
//!
//! Why this is correct: Postgres answers requests strictly in the order received, and each
//! Sync-terminated group (or simple Query) is its own implicit transaction; an error skips
//! only to that group's Sync. So requests of different clients, queued back to back on one
//! connection, are answered one after the other, each ending at its own ReadyForQuery, and one
//! client's error leaves the next client's request untouched. The session decides what may be
//! pipelined (`session::pipelined`: single-statement plain reads seen to be fast, no session
//! state); this module only moves bytes.
//!
//! Each session worker keeps, per pool, up to `pipeline_backends_per_worker` such connections
//! (checked out from the pool, so they count against `max_size`), each driven by one task on
//! that worker: it writes everything submitted since its last write in one `write` (so the
//! submissions of one event-loop tick share a system call), reads, frames responses by their
//! 5-byte header and hands each request its messages up to and including its ReadyForQuery.
//! Hand-written rather than a channel crate because a submission must see and extend the
//! connection's prepared set atomically with queuing its bytes.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::{Checkout, Pool};
use crate::backend::{PreparedSet, MAX_BACKEND_MESSAGE};
use crate::settings::Settings;
use crate::wire::frame::check;
use crate::wire::msg;
use crate::wire::tag::{back, txn};

/// Requests in flight on one connection at most: bounds how much is written ahead of what
/// the backend has answered (a backend that stops reading while its answers are not read
/// would otherwise block both sides).
const MAX_DEPTH: usize = 32;
/// Bytes of one response held for its client at most; beyond that the connection stops
/// reading until the client has been sent them (a big result streams, it is not buffered).
const MAX_BUFFERED: usize = 256 * 1024;
/// A pipelining connection with nothing to do for this long goes back to the pool.
const IDLE_RETIRE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Lost(String),
    #[error("pipelined server sent a malformed message: {0}")]
    Frame(#[from] crate::wire::frame::FrameError),
    #[error("pipelined server sent a message nobody waits for (type {0})")]
    Unexpected(u8),
}

/// One client request on a pipelining connection.
pub struct Request {
    state: Mutex<ReqState>,
    /// The client's session waits here for its answer.
    ready: Notify,
    /// The connection waits here when this answer is [`MAX_BUFFERED`] ahead of the client.
    drained: Notify,
    submitted: Instant,
}

#[derive(Default)]
struct ReqState {
    buf: BytesMut,
    done: bool,
    lost: Option<String>,
    /// Its client stopped waiting (it ran elsewhere): the answer is read and dropped.
    abandoned: bool,
}

/// The next part of an answer.
pub enum Chunk {
    /// Whole messages; `true` when they end with the request's ReadyForQuery.
    Bytes(BytesMut, bool),
    /// The connection died before the answer was complete.
    Lost(String),
}

impl Request {
    pub async fn next(&self) -> Chunk {
        loop {
            {
                let mut st = self.state.lock();
                if !st.buf.is_empty() || st.done {
                    let bytes = st.buf.split();
                    let done = st.done;
                    drop(st);
                    self.drained.notify_one();
                    return Chunk::Bytes(bytes, done);
                }
                if let Some(why) = st.lost.take() {
                    return Chunk::Lost(why);
                }
            }
            self.ready.notified().await;
        }
    }

    /// When it was queued: its answer's latency includes the wait behind earlier requests.
    pub fn submitted(&self) -> Instant {
        self.submitted
    }
}

/// A backend connection shared by pipelined requests.
pub struct Conn {
    state: Mutex<ConnState>,
    wake: Notify,
    /// What the connection was set to when it was opened: only clients with the same settings
    /// use it (nothing is ever SET on a connection others share).
    settings: Settings,
}

struct ConnState {
    /// Submitted, not yet written.
    out: BytesMut,
    queue: VecDeque<Arc<Request>>,
    /// Statements this connection holds (it becomes the checkout's again when it retires).
    prepared: PreparedSet,
    /// Requests whose bytes are in `out`.
    unwritten: usize,
    /// Dead or retiring: takes nothing new.
    closed: bool,
}

impl Conn {
    /// Whether a new request may join: open, not too deep, and its oldest request is younger
    /// than `fast` (else something slow runs there and a newcomer would wait behind it).
    fn accepts(st: &ConnState, fast: Duration) -> bool {
        !st.closed
            && st.queue.len() < MAX_DEPTH
            && st
                .queue
                .front()
                .is_none_or(|r| r.submitted.elapsed() < fast)
    }

    /// Queues a request whose bytes `build` writes, given the statements this connection
    /// holds; `build` returns the statements its bytes prepare here (None: not here).
    fn submit<F>(&self, fast: Duration, build: F) -> Option<Arc<Request>>
    where
        F: FnOnce(&PreparedSet, &mut BytesMut) -> Option<Vec<Bytes>>,
    {
        let mut st = self.state.lock();
        if !Self::accepts(&st, fast) {
            return None;
        }
        let mark = st.out.len();
        let st = &mut *st;
        let Some(added) = build(&st.prepared, &mut st.out) else {
            st.out.truncate(mark);
            return None;
        };
        for name in added {
            st.prepared.touch(&name);
        }
        let req = Arc::new(Request {
            state: Mutex::default(),
            ready: Notify::new(),
            drained: Notify::new(),
            submitted: Instant::now(),
        });
        st.queue.push_back(req.clone());
        st.unwritten += 1;
        self.wake.notify_one();
        Some(req)
    }

    /// `req` has waited longer than it should behind a slow request: unless it is the one
    /// running (the queue's head), it is given up here — its answer will be dropped — and its
    /// client may run it elsewhere (a plain read: running it twice changes nothing).
    pub fn abandon(&self, req: &Arc<Request>) -> bool {
        let st = self.state.lock();
        if st.queue.front().is_none_or(|h| Arc::ptr_eq(h, req)) {
            return false;
        }
        let mut r = req.state.lock();
        if r.done || r.lost.is_some() || !r.buf.is_empty() {
            return false;
        }
        r.abandoned = true;
        true
    }

    /// A statement prepared with a request turned out not to exist there (its Parse failed).
    pub fn forget_prepared(&self, name: &[u8]) {
        self.state.lock().prepared.remove(name);
    }

    /// Hands complete messages to the requests they answer, oldest first.
    fn deliver(&self, server: &mut Checkout) -> Result<(), PipelineError> {
        let mut st = self.state.lock();
        let mut head_has_bytes = false;
        while let Some(total) = check(&server.rbuf, MAX_BACKEND_MESSAGE)? {
            let tag = server.rbuf[0];
            if tag == back::ERROR_RESPONSE {
                let f = msg::ErrorFields::decode(&server.rbuf[5..total]);
                if f.severity == "FATAL" || f.severity == "PANIC" {
                    // The backend session ends: nothing after this point was answered.
                    return Err(PipelineError::Lost(format!(
                        "server ended the connection: {} ({})",
                        f.message, f.code
                    )));
                }
            }
            let Some(head) = st.queue.front().cloned() else {
                if matches!(
                    tag,
                    back::NOTICE_RESPONSE | back::PARAMETER_STATUS | back::NOTIFICATION
                ) {
                    drop(server.rbuf.split_to(total)); // between requests: nobody's
                    continue;
                }
                return Err(PipelineError::Unexpected(tag));
            };
            let mut h = head.state.lock();
            if h.buf.len() >= MAX_BUFFERED {
                break; // the rest waits until its client has been sent this much
            }
            let frame = server.rbuf.split_to(total);
            if tag == back::PARAMETER_STATUS {
                if let Some((k, v)) = msg::decode_parameter_status(&frame[5..]) {
                    server.set_param(k, v);
                }
            }
            if !h.abandoned {
                h.buf.extend_from_slice(&frame);
            }
            head_has_bytes = true;
            if tag == back::READY_FOR_QUERY {
                let status = frame.get(5).copied().unwrap_or(txn::IDLE);
                server.txn_status = status;
                h.done = true;
                drop(h);
                st.queue.pop_front();
                head.ready.notify_one();
                head_has_bytes = false;
                if status != txn::IDLE {
                    // Only autocommit reads come here; anything else makes it unusable.
                    return Err(PipelineError::Lost(
                        "a pipelined request left a transaction open".into(),
                    ));
                }
            }
        }
        if head_has_bytes {
            if let Some(head) = st.queue.front() {
                head.ready.notify_one(); // a big answer streams as it arrives
            }
        }
        Ok(())
    }

    /// The head request's answer is buffered to its limit: wait until its client took some.
    fn head_full(&self) -> Option<Arc<Request>> {
        let st = self.state.lock();
        let head = st.queue.front()?;
        let full = head.state.lock().buf.len() >= MAX_BUFFERED;
        full.then(|| head.clone())
    }

    /// Every request not answered yet gets `why`; nothing new is taken.
    fn fail_all(&self, why: &str) {
        let mut st = self.state.lock();
        st.closed = true;
        st.out.clear();
        st.unwritten = 0;
        for req in st.queue.drain(..) {
            req.state.lock().lost = Some(why.to_string());
            req.ready.notify_one();
        }
    }

    /// Stops taking requests if none is in flight (then the connection may go).
    fn retire_if_idle(&self) -> bool {
        let mut st = self.state.lock();
        if st.queue.is_empty() && st.out.is_empty() {
            st.closed = true;
        }
        st.closed && st.queue.is_empty()
    }
}

/// The pipelining connections of one pool on this thread.
struct Group {
    pool: Arc<Pool>,
    conns: Vec<Arc<Conn>>,
    /// Connections being opened (they count against the cap already).
    opening: usize,
}

thread_local! {
    /// Per thread, hence per session worker: a worker's sessions share its connections and
    /// their driver tasks run on the same thread, so no submission wakes another thread.
    static GROUPS: RefCell<Vec<Group>> = const { RefCell::new(Vec::new()) };
}

/// What a submission may use on this thread.
enum Pick {
    Conn(Arc<Conn>),
    Open,
    Full,
}

fn pick(pool: &Arc<Pool>, settings: &Settings, fast: Duration, cap: usize) -> Pick {
    GROUPS.with(|g| {
        let mut groups = g.borrow_mut();
        let at = match groups.iter().position(|g| Arc::ptr_eq(&g.pool, pool)) {
            Some(at) => at,
            None => {
                groups.push(Group {
                    pool: pool.clone(),
                    conns: Vec::new(),
                    opening: 0,
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[at];
        group.conns.retain(|c| !c.state.lock().closed);
        // Join a batch still being gathered (its bytes go out in the same `write`, and the
        // backend reads them in one go), else the shortest queue. Spreading one tick's requests
        // over every connection instead would cost a write, a backend wake-up and a read each.
        let mut best: Option<((bool, usize), &Arc<Conn>)> = None;
        for c in &group.conns {
            if settings.diff_from(&c.settings).is_some() {
                continue;
            }
            let st = c.state.lock();
            let rank = (st.unwritten == 0, st.queue.len());
            if Conn::accepts(&st, fast) && best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, c));
            }
        }
        if let Some((_, c)) = best {
            return Pick::Conn(c.clone());
        }
        if group.conns.len() + group.opening < cap {
            group.opening += 1;
            return Pick::Open;
        }
        Pick::Full
    })
}

fn opened(pool: &Arc<Pool>, conn: Option<Arc<Conn>>) {
    GROUPS.with(|g| {
        if let Some(group) = g
            .borrow_mut()
            .iter_mut()
            .find(|g| Arc::ptr_eq(&g.pool, pool))
        {
            group.opening = group.opening.saturating_sub(1);
            group.conns.extend(conn);
        }
    });
}

/// Queues a request on one of this thread's pipelining connections of `pool` with the
/// client's `settings`, opening one if there is room. None: take the normal path.
pub async fn submit<F>(
    pool: &Arc<Pool>,
    settings: &Settings,
    fast: Duration,
    cap: usize,
    build: F,
) -> Option<(Arc<Conn>, Arc<Request>)>
where
    F: FnOnce(&PreparedSet, &mut BytesMut) -> Option<Vec<Bytes>>,
{
    let conn = match pick(pool, settings, fast, cap) {
        Pick::Conn(c) => c,
        Pick::Full => return None,
        Pick::Open => {
            let conn = open(pool, settings).await;
            opened(pool, conn.clone());
            conn?
        }
    };
    let req = conn.submit(fast, build)?;
    Some((conn, req))
}

/// Opens a pipelining connection with `settings` and starts its task.
async fn open(pool: &Arc<Pool>, settings: &Settings) -> Option<Arc<Conn>> {
    let mut server = pool.checkout_for_pipeline().await.ok()?;
    let lent = Lent(pool.clone());
    if let Some(sql) = settings.diff_from(&server.settings) {
        let ok = matches!(server.simple(&sql).await, Ok(None)) && server.txn_status == txn::IDLE;
        if !ok {
            return None; // dropping the checkout closes it
        }
        server.settings = settings.as_applied();
    }
    let conn = Arc::new(Conn {
        state: Mutex::new(ConnState {
            out: BytesMut::with_capacity(8 * 1024),
            queue: VecDeque::new(),
            prepared: std::mem::take(&mut server.prepared),
            unwritten: 0,
            closed: false,
        }),
        wake: Notify::new(),
        settings: settings.as_applied(),
    });
    tokio::spawn(drive(conn.clone(), server, lent));
    Some(conn)
}

/// The connection's task: writes what was submitted, reads and hands out answers; on
/// failure every waiting request hears so and the connection is closed, never reused.
async fn drive(conn: Arc<Conn>, mut server: Checkout, _lent: Lent) {
    let max_lifetime = server.pool().shared.cfg.load().max_lifetime;
    let why = loop {
        if let Some(head) = conn.head_full() {
            head.drained.notified().await;
            if let Err(e) = conn.deliver(&mut server) {
                break e.to_string();
            }
            continue;
        }
        let idle = conn.state.lock().queue.is_empty();
        let event = tokio::select! {
            biased;
            _ = conn.wake.notified() => None,
            r = read_more(&mut server), if !idle => Some(r),
            _ = tokio::time::sleep(IDLE_RETIRE), if idle => {
                if conn.retire_if_idle() {
                    break String::new();
                }
                continue;
            }
        };
        match event {
            None => {
                let (out, n) = {
                    let mut st = conn.state.lock();
                    (st.out.split(), std::mem::take(&mut st.unwritten))
                };
                if !out.is_empty() {
                    if let Err(e) = server.stream.write_all(&out).await {
                        break format!("write to the server failed: {e}");
                    }
                    crate::metrics::pipeline_write(n);
                }
            }
            Some(Ok(true)) => {
                if let Err(e) = conn.deliver(&mut server) {
                    break e.to_string();
                }
                // Past its lifetime, or another request waits for a connection of its own:
                // take nothing new, finish what is queued, then go back to the pool.
                if server.created.elapsed() > max_lifetime || server.pool().take_reclaim() {
                    conn.state.lock().closed = true;
                }
            }
            Some(Ok(false)) => break "the server closed the connection".into(),
            Some(Err(e)) => break format!("read from the server failed: {e}"),
        }
        let st = conn.state.lock();
        if st.closed && st.queue.is_empty() {
            break String::new();
        }
    };
    if why.is_empty() {
        // Retired clean: its statements are the checkout's again.
        server.prepared = std::mem::take(&mut conn.state.lock().prepared);
        server.release();
        return;
    }
    tracing::warn!(node = %server.node.display(), %why, "pipelined server connection lost");
    conn.fail_all(&why);
    server.broken = true;
    drop(server);
}

/// Counts a connection as pipelining's (see [`Pool::checkout_for_pipeline`]) until dropped.
struct Lent(Arc<Pool>);

impl Drop for Lent {
    fn drop(&mut self) {
        self.0.pipeline_returned();
    }
}

async fn read_more(server: &mut Checkout) -> std::io::Result<bool> {
    let s = &mut **server;
    if s.rbuf.capacity() - s.rbuf.len() < 4096 {
        s.rbuf.reserve(32 * 1024);
    }
    Ok(s.stream.read_buf(&mut s.rbuf).await? > 0)
}

//! Mirroring reads to another environment before a switch (`[switch] mirror_to`,
//! `mirror_sample`): a sample of the deterministic reads clients run on the active environment
//! is run again on the target's primary and the two answers are compared by row count and an
//! order-independent checksum of the rows, so a blue-green cutover can be rehearsed on real
//! traffic: differences (data missing on green, a migration that changed results) show up in
//! `SHOW MIRROR`, `pgsidecar_mirror_differences_total` and the log before `SWITCH`.
//!
//! Fire and forget: the client's answer is never delayed or changed. A sampled request is
//! handed to one background task through a bounded queue (`mirror_queue`); when the queue is
//! full the copy is dropped and counted, never waited for. The task runs the copies one at a
//! time on its own connection per (database, user), so green sees at most one mirrored
//! statement per pair at once, and each copy is bounded by `mirror_timeout`.
//!
//! Only reads whose answer must not depend on where or when they run are mirrored: what the
//! result cache could cache (plain SELECTs of immutable functions, no system catalogs, no
//! locking clause), outside transactions, from clients with their startup settings only.
//!
//! This file holds the queue, the counters and the encoding; the task is `tasks::mirror`.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::backend::Login;
pub use crate::config::MirrorConfig;
use crate::wire::tag::{back, front};

/// An answer reduced to what is compared: how many rows, and the sum of a hash of each row
/// (DataRow bytes), which does not depend on the order rows came in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub rows: u64,
    pub checksum: u64,
}

impl Summary {
    /// One DataRow message (its body, after the 5-byte header).
    pub fn add_row(&mut self, body: &[u8]) {
        self.rows += 1;
        self.checksum = self.checksum.wrapping_add(xxhash_rust::xxh3::xxh3_64(body));
    }

    /// The rows of whole messages in `bytes`; None if one is an ErrorResponse.
    pub fn of_messages(mut bytes: &[u8]) -> Option<Summary> {
        let mut s = Summary::default();
        while bytes.len() >= 5 {
            let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            let total = 1 + len;
            if len < 4 || bytes.len() < total {
                return None;
            }
            match bytes[0] {
                back::DATA_ROW => s.add_row(&bytes[5..total]),
                back::ERROR_RESPONSE => return None,
                _ => {}
            }
            bytes = &bytes[total..];
        }
        Some(s)
    }
}

/// One read to run again on the target.
pub struct Job {
    pub environment: String,
    pub database: String,
    pub user: String,
    pub login: Login,
    /// The client's request re-encoded for a fresh connection (unnamed statement and portal).
    pub request: Bytes,
    /// The normalized statement, for the log.
    pub statement: String,
    pub blue: Summary,
}

/// Counters for `SHOW MIRROR` and `pgsidecar_mirror_*`.
#[derive(Default)]
pub struct MirrorStats {
    pub requests: AtomicU64,
    pub differences: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
    pub last_difference: Mutex<Option<String>>,
}

pub struct Mirror {
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    pub stats: MirrorStats,
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror::new(MirrorConfig::default().mirror_queue)
    }
}

impl Mirror {
    pub fn new(queue: usize) -> Mirror {
        let (tx, rx) = mpsc::channel(queue.max(1));
        Mirror {
            tx,
            rx: Mutex::new(Some(rx)),
            stats: MirrorStats::default(),
        }
    }

    /// Whether to copy this eligible request: the sampling decision, made per request.
    pub fn sample(cfg: &MirrorConfig) -> bool {
        if cfg.mirror_to.is_none() || cfg.mirror_sample <= 0.0 {
            return false;
        }
        cfg.mirror_sample >= 1.0 || rand::random::<f64>() < cfg.mirror_sample
    }

    /// Hands a copy to the mirroring task without waiting: a full queue drops it.
    pub fn submit(&self, job: Job) {
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::mirror_event("dropped");
            }
        }
    }

    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The queue's receiving end, for the mirroring task (`tasks::mirror`); once.
    pub(crate) fn take_queue(&self) -> Option<mpsc::Receiver<Job>> {
        self.rx.lock().take()
    }
}

/// The client's request as a fresh connection can run it: a simple Query as it is; an
/// extended-protocol execution as unnamed Parse, Bind, Execute, Sync with the client's text,
/// parameter types, values and formats. None for anything else (several executions, Close,
/// Flush, an unnamed statement parsed in an earlier request).
pub fn replayable(
    msgs: &[(u8, &[u8])],
    named_parse: impl Fn(&[u8]) -> Option<Bytes>,
) -> Option<Bytes> {
    use crate::wire::msg::{self, Bind, Parse};
    let mut out = BytesMut::new();
    match msgs {
        [(front::QUERY, body)] => {
            let s = msg::begin(&mut out, front::QUERY);
            out.extend_from_slice(body);
            msg::finish(&mut out, s);
            return Some(out.freeze());
        }
        [.., (front::SYNC, _)] => {}
        _ => return None,
    }
    let mut parsed = false;
    let mut executed = false;
    for (tag, body) in msgs {
        match *tag {
            front::PARSE => {
                Parse::decode(body)?.encode_renamed(&mut out, b"");
                parsed = true;
            }
            front::BIND => {
                let b = Bind::decode(body)?;
                if !parsed {
                    let p = named_parse(b.statement)?;
                    Parse::decode(p.get(5..)?)?.encode_renamed(&mut out, b"");
                    parsed = true;
                }
                Bind {
                    portal: b"",
                    statement: b"",
                    rest: b.rest,
                }
                .encode_renamed(&mut out, b"");
            }
            front::DESCRIBE => {}
            front::EXECUTE if !executed => {
                executed = true;
                msg::execute(&mut out, b"");
            }
            front::SYNC => {
                let s = msg::begin(&mut out, front::SYNC);
                msg::finish(&mut out, s);
            }
            _ => return None,
        }
    }
    executed.then(|| out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn the_checksum_ignores_row_order_and_sees_a_changed_row() {
        let (a, b, c) = (
            frame(back::DATA_ROW, b"\0\x01\0\0\0\x01a"),
            frame(back::DATA_ROW, b"\0\x01\0\0\0\x01b"),
            frame(back::DATA_ROW, b"\0\x01\0\0\0\x01c"),
        );
        let one = Summary::of_messages(
            &[
                a.clone(),
                b.clone(),
                frame(back::COMMAND_COMPLETE, b"SELECT 2\0"),
            ]
            .concat(),
        )
        .unwrap();
        let other = Summary::of_messages(&[b.clone(), a.clone()].concat()).unwrap();
        assert_eq!(one, other);
        assert_eq!(one.rows, 2);
        let changed = Summary::of_messages(&[a, c].concat()).unwrap();
        assert_eq!(changed.rows, 2);
        assert_ne!(changed, one);
        assert!(Summary::of_messages(&frame(back::ERROR_RESPONSE, b"SERROR\0\0")).is_none());
    }

    #[test]
    fn an_extended_execution_is_replayed_unnamed_with_its_parameters() {
        let mut parse = BytesMut::new();
        crate::wire::msg::Parse {
            name: b"pgsc_x",
            query: b"SELECT $1::int",
            param_types: &[0, 1, 0, 0, 0, 23],
        }
        .encode_renamed(&mut parse, b"pgsc_x");
        let parse = parse.freeze();
        let bind_body = b"\0s1\0\0\0\0\x01\0\0\0\x0142\0\0".to_vec();
        let exec_body = b"\0\0\0\0\0".to_vec();
        let msgs: Vec<(u8, &[u8])> = vec![
            (front::BIND, &bind_body),
            (front::EXECUTE, &exec_body),
            (front::SYNC, &[]),
        ];
        let out = replayable(&msgs, |name| (name == b"s1").then(|| parse.clone())).unwrap();
        let tags: Vec<u8> = {
            let mut t = Vec::new();
            let mut b = &out[..];
            while !b.is_empty() {
                t.push(b[0]);
                let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
                b = &b[1 + len..];
            }
            t
        };
        assert_eq!(
            tags,
            [front::PARSE, front::BIND, front::EXECUTE, front::SYNC]
        );
        assert!(out.windows(14).any(|w| w == b"SELECT $1::int"));
        assert!(replayable(&msgs, |_| None).is_none(), "unknown statement");
        let flush: Vec<(u8, &[u8])> = vec![
            (front::BIND, &bind_body),
            (front::EXECUTE, &exec_body),
            (front::FLUSH, &[]),
        ];
        assert!(replayable(&flush, |_| Some(parse.clone())).is_none());
    }
}

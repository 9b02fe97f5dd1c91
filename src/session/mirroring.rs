//! The session's side of mirroring reads to another environment (`switch::mirror`): at
//! dispatch a sample of the eligible reads is chosen and re-encoded for a fresh connection;
//! the rows the client receives are summed up as they pass; at the request's ReadyForQuery the
//! copy goes to the mirroring queue with that summary. Nothing here waits or can fail the
//! client's request.

use std::sync::Arc;

use super::relay::Session;
use super::slowlog::Timings;
use crate::analyze::Analysis;
use crate::switch::mirror::{self, Job, Mirror, Summary};
use crate::wire::tag::back;

/// A request chosen for mirroring, while its answer passes.
pub(super) struct Capture {
    job: Job,
    failed: bool,
}

impl Capture {
    /// Its request is being sent again elsewhere (replica retry): the answer starts over.
    pub(super) fn restart(&mut self) {
        self.job.blue = Summary::default();
        self.failed = false;
    }
}

impl Timings {
    /// The mirrored request's ReadyForQuery reached the client: the copy goes to the queue.
    pub fn mirror_answered(&mut self, queue: &Mirror) {
        if let Some(c) = self.mirror.take() {
            if !c.failed {
                queue.submit(c.job);
            }
        }
    }

    /// The mirrored request was answered from the result cache with `answer`.
    pub fn mirror_cached(&mut self, answer: &[u8], queue: &Mirror) {
        let Some(mut c) = self.mirror.take() else {
            return;
        };
        if let Some(s) = Summary::of_messages(answer) {
            c.job.blue = s;
            queue.submit(c.job);
        }
    }

    /// A message on its way to the client (`emit`).
    pub fn mirror_saw(&mut self, bytes: &[u8], tag: u8) {
        let Some(c) = self.mirror.as_mut() else {
            return;
        };
        match tag {
            back::DATA_ROW => c.job.blue.add_row(bytes.get(5..).unwrap_or_default()),
            back::ERROR_RESPONSE => c.failed = true,
            _ => {}
        }
    }
}

impl Session {
    /// At dispatch, before anything is sent: chooses whether the pending request is mirrored.
    pub(super) fn mirror_plan(&mut self, analyses: &[Arc<Analysis>]) {
        self.time.timings.mirror = None;
        let cfg = self.ctx.config.load();
        if !Mirror::sample(&cfg.switch) {
            return;
        }
        let Some(to) = cfg.switch.mirror_to.clone() else {
            return;
        };
        drop(cfg);
        // Deterministic reads only, outside transactions, with the settings a fresh
        // connection has: anything else may rightly answer differently there.
        let eligible = self.backend.attached.is_none()
            && self.backend.pinned.is_none()
            && matches!(analyses, [a] if a.cacheable())
            && self.vars.settings.only_startup()
            && self.ctx.topology.load().environment != to;
        if !eligible {
            return;
        }
        let msgs: Vec<(u8, &[u8])> = self
            .request
            .pending
            .iter()
            .map(|m| (m.frame.tag, m.frame.body()))
            .collect();
        let Some(request) = mirror::replayable(&msgs, |name| {
            self.stmts.named.get(name).map(|s| s.parse.clone())
        }) else {
            return;
        };
        self.time.timings.mirror = Some(Capture {
            job: Job {
                environment: to,
                database: self.identity.database.clone(),
                user: self.identity.user.clone(),
                login: self.identity.login.clone(),
                request,
                statement: analyses[0].loggable_text().to_string(),
                blue: Summary::default(),
            },
            failed: false,
        });
    }
}

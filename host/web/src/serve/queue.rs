//! The queue: at most one waiting push per repository, and the recent runs that
//! `GET /deploys` lists. A newer push replaces the waiting one (which is recorded as
//! `superseded`); at shutdown the waiting ones are cancelled. It holds no lock itself
//! (the server keeps it behind one mutex) and never runs anything.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde::Serialize;

use super::push::Push;
use super::replay::delivery_key;

/// How many finished runs `GET /deploys` keeps.
pub const MAX_RUNS: usize = 100;

/// Where an accepted push is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Waiting for the repository's running deploy to end.
    Queued,
    /// Replaced by a newer push while it waited; never ran.
    Superseded,
    /// Dropped at shutdown before it ran.
    Cancelled,
    /// Its deploy is running.
    Running,
    /// Its deploy ended (see `outcome`).
    Finished,
}

/// One accepted push and what became of it: an element of `GET /deploys`.
#[derive(Debug, Clone, Serialize)]
pub struct DeployRun {
    /// The delivery id (`X-GitHub-Delivery`, or the trigger's `delivery`).
    pub delivery: String,
    /// The repository (`owner/name`).
    pub repository: String,
    /// The pushed ref (`refs/heads/main`, `refs/tags/v1-cicd`).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The pushed sha (for an annotated tag, GitHub sends the tag object's sha).
    pub sha: String,
    /// The commit checked out and deployed, once fetched.
    pub commit: Option<String>,
    /// Who pushed, when the event says.
    pub actor: Option<String>,
    /// Where it is.
    pub state: RunState,
    /// When the push was accepted (RFC 3339).
    pub received_at: String,
    /// When its deploy ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Milliseconds from acceptance to the worker taking it (time spent queued).
    pub queued_ms: Option<u64>,
    /// Milliseconds from acceptance to `cutover deploy` reporting its start (lock
    /// held, gate next): the webhook-to-deploy latency.
    pub start_latency_ms: Option<u64>,
    /// The deploy id `cutover deploy` gave it (the key of the audit log entry).
    pub deploy_id: Option<String>,
    /// `cutover deploy`'s exit code (0 deployed, 3 gate denied; see the README).
    pub exit_code: Option<i32>,
    /// `succeeded`, `denied`, `failed`, `rolled-back`, or `cancelled`.
    pub outcome: Option<String>,
    /// Why it did not succeed (the gate's reason when denied).
    pub reason: Option<String>,
    /// When it was accepted, for the latencies above.
    #[serde(skip)]
    pub(super) received: Instant,
    /// The replay key of its body (see `replay::body_key`): forgotten with the
    /// delivery id when the push does not run, so that a redelivery of it (same
    /// body, same or new delivery id) is accepted.
    #[serde(skip)]
    pub(super) body_key: String,
}

impl DeployRun {
    /// A push just accepted for `repository` (its configured name) with the body
    /// remembered under `body_key`, queued.
    pub(super) fn accepted(push: Push, repository: String, body_key: String) -> DeployRun {
        DeployRun {
            delivery: push.delivery,
            repository,
            git_ref: push.git_ref,
            sha: push.sha,
            commit: None,
            actor: push.actor,
            state: RunState::Queued,
            received_at: crate::state::now_rfc3339(),
            finished_at: None,
            queued_ms: None,
            start_latency_ms: None,
            deploy_id: None,
            exit_code: None,
            outcome: None,
            reason: None,
            received: Instant::now(),
            body_key,
        }
    }

    /// The keys replay memory holds for this push: its delivery id and its body.
    pub(super) fn replay_keys(&self) -> [String; 2] {
        [delivery_key(&self.delivery), self.body_key.clone()]
    }
}

/// The deploys of `GET /deploys` and the one waiting push per repository, behind one
/// lock so every snapshot shows at most one queued and one running per repository.
#[derive(Default)]
pub(super) struct Queue {
    pending: HashMap<String, DeployRun>,
    runs: VecDeque<DeployRun>,
}

impl Queue {
    /// Inserts or updates (by delivery) a run in the recent list.
    pub(super) fn record(&mut self, run: DeployRun) {
        if let Some(existing) = self.runs.iter_mut().find(|r| r.delivery == run.delivery) {
            *existing = run;
            return;
        }
        self.runs.push_back(run);
        if self.runs.len() > MAX_RUNS {
            self.runs.pop_front();
        }
    }

    /// Makes `run` the waiting push of the repository `key`; the delivery of the push
    /// it replaced, if one was waiting.
    pub(super) fn enqueue(&mut self, key: &str, run: DeployRun) -> Option<String> {
        let old = self.pending.insert(key.to_owned(), run.clone());
        if let Some(old) = &old {
            self.record(DeployRun {
                state: RunState::Superseded,
                reason: Some(format!("replaced by the newer push {}", run.delivery)),
                ..old.clone()
            });
        }
        self.record(run);
        old.map(|o| o.delivery)
    }

    /// Takes the waiting push of the repository `key`, now running.
    pub(super) fn take(&mut self, key: &str) -> Option<DeployRun> {
        let mut run = self.pending.remove(key)?;
        run.state = RunState::Running;
        run.queued_ms = Some(crate::operation::millis(run.received.elapsed()));
        self.record(run.clone());
        Some(run)
    }

    /// Drops every waiting push, recording it as cancelled; returns them.
    pub(super) fn cancel_pending(&mut self) -> Vec<DeployRun> {
        let dropped: Vec<DeployRun> = self.pending.drain().map(|(_, run)| run).collect();
        for run in &dropped {
            self.record(DeployRun {
                state: RunState::Cancelled,
                outcome: Some("cancelled".to_owned()),
                reason: Some("the server shut down before this push ran".to_owned()),
                ..run.clone()
            });
        }
        dropped
    }

    /// What the server is doing for `repository` now: `running`, `queued`, both, or
    /// nothing.
    pub(super) fn activity(&self, repository: &str) -> Option<String> {
        let has = |state| {
            self.runs
                .iter()
                .any(|r| r.repository == repository && r.state == state)
        };
        match (has(RunState::Running), has(RunState::Queued)) {
            (true, true) => Some("running, one queued".to_owned()),
            (true, false) => Some("running".to_owned()),
            (false, true) => Some("queued".to_owned()),
            (false, false) => None,
        }
    }

    /// The recent runs, oldest first.
    pub(super) fn runs(&self) -> Vec<DeployRun> {
        self.runs.iter().cloned().collect()
    }
}

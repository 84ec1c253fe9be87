//! One running deploy or rollback: the lock it holds, its journal in the state file,
//! its step timings, and how it ends (recorded, undone, or rolled back).
//!
//! [`Run::step`] is the one way a step runs: journal it as started, run it, time it,
//! emit its events. How a failure is undone depends on where it happened
//! ([`Failure`]); this module owns that too, so the step list in `steps` stays a list.

use std::future::Future;
use std::time::{Duration, Instant};

use super::DeployReport;
use crate::Color;
use crate::context::Context;
use crate::error::{DeployError, ErrorClass};
use crate::events::Event;
use crate::events::Level;
use crate::fault;
use crate::git::GitFacts;
use crate::hold::{self, Hold};
use crate::operation::{OperationKind, Outcome, Step, StepTiming, millis};
use crate::plugin::types;
use crate::recover::Undo;
use crate::state::{Journal, State, now_rfc3339};

/// A fresh deploy id: a ULID, so ids sort by time and two runners started in the
/// same millisecond still differ (80 random bits).
pub fn new_deploy_id() -> String {
    ulid::Ulid::generate().to_string().to_lowercase()
}

/// Where a failure happened decides how it is undone.
pub(super) enum Failure {
    /// Nothing user-visible changed; undo what this run started.
    BeforeSwitch(DeployError),
    /// The previous proxy config was restored.
    RolledBack(DeployError),
    /// Could not undo: surfaced as is, the journal kept for `recover`.
    Fatal(DeployError),
}

/// One running deploy or rollback.
pub(super) struct Run<'a> {
    pub(super) ctx: &'a Context,
    /// Held for the whole run; released when it finishes (or, failing that, on drop).
    lock: Hold,
    /// The copies of the target that passed the health step: the proxy's servers.
    pub(super) healthy: Vec<types::Instance>,
    pub(super) state: State,
    pub(super) journal: Journal,
    /// What git says about the checkout, for the hooks' environment.
    pub(super) git: GitFacts,
    started: Instant,
}

impl<'a> Run<'a> {
    /// Takes the lock, reconciles an interrupted run, and opens a journal.
    pub(super) async fn start(
        ctx: &'a Context,
        kind: OperationKind,
        lock_wait: Duration,
        run_url: Option<String>,
    ) -> Result<Run<'a>, DeployError> {
        let operation = match kind {
            OperationKind::Deploy => "deploy",
            OperationKind::Rollback => "rollback",
        };
        let lock = hold::take(ctx, operation, lock_wait, run_url).await?;
        let mut state = ctx.store.load()?;
        crate::recover::reconcile_or_drop(ctx, &mut state).await?;
        let followed = crate::recover::follow_recorded(ctx, &mut state).await?;
        if let Some(note) = &followed.note {
            ctx.reporter.log(Level::Warn, note);
            ctx.store.save(&state)?;
        }
        let engine_serial = followed.serial;
        let id = new_deploy_id();
        ctx.reporter.emit(&Event::Started {
            id: id.clone(),
            service: ctx.service().to_owned(),
            operation: operation.to_owned(),
        });
        let journal = Journal {
            deploy_id: id,
            kind,
            started_at: now_rfc3339(),
            owner: format!("{} pid {}", lock.owner().host, lock.owner().pid),
            step: Step::Gate,
            from: state.live.as_ref().map(|s| s.color),
            target: None,
            container: None,
            image_id: None,
            image_ref: None,
            saved_files: None,
            written_files: None,
            canary: None,
            engine_serial,
            steps: Vec::new(),
        };
        Ok(Run {
            ctx,
            lock,
            healthy: Vec::new(),
            state,
            journal,
            git: GitFacts::default(),
            started: Instant::now(),
        })
    }

    /// The colour live when the run started.
    pub(super) fn live(&self) -> Option<Color> {
        self.journal.from
    }

    /// Runs one step: journals it as started (saved, so a killed runner's successor
    /// knows it may have happened), runs `work`, and emits its timing with `detail`
    /// of the result, or its failure.
    pub(super) async fn step<T>(
        &mut self,
        step: Step,
        work: impl Future<Output = Result<T, DeployError>>,
        detail: impl FnOnce(&T) -> String,
    ) -> Result<T, DeployError> {
        // A runner whose cluster lock was taken over stops here, at a step boundary,
        // before it writes anything more.
        self.lock.check()?;
        self.journal.step = step.clone();
        self.save()?;
        fault::point(fault::When::Before, &step);
        self.ctx
            .reporter
            .emit(&Event::StepStarted { step: step.clone() });
        let began = Instant::now();
        let result = work.await;
        let ms = millis(began.elapsed());
        self.journal.steps.push(StepTiming {
            step: step.clone(),
            ms,
        });
        match result {
            Ok(value) => {
                // Not saved here: the next step's start (or the final record) saves
                // it. Recovery treats a step saved as started as possibly done, so
                // this saves an fsync pair per step at no risk.
                fault::point(fault::When::After, &step);
                self.ctx.reporter.emit(&Event::StepFinished {
                    step,
                    ms,
                    detail: detail(&value),
                });
                Ok(value)
            }
            Err(error) => {
                self.ctx.reporter.emit(&Event::StepFailed {
                    step,
                    ms,
                    error: error.to_string(),
                });
                Err(error)
            }
        }
    }

    /// Saves the state with this run's journal in it.
    pub(super) fn save(&mut self) -> Result<(), DeployError> {
        self.state.in_progress = Some(self.journal.clone());
        self.ctx.store.save(&self.state)?;
        Ok(())
    }

    /// Closes the journal with a record and emits the final event.
    pub(super) async fn finish(
        mut self,
        outcome: Outcome,
        reason: Option<String>,
        error_class: Option<ErrorClass>,
    ) -> Result<DeployReport, DeployError> {
        self.state.in_progress = None;
        self.state.push_record(
            self.journal.record(outcome, reason.clone()),
            self.ctx.config.history.deploys,
        );
        self.ctx.store.save(&self.state)?;
        let live = self.state.live.as_ref().map(|s| s.color);
        self.lock.release_or_warn(&*self.ctx.reporter).await;
        self.ctx.reporter.emit(&Event::Finished {
            id: self.journal.deploy_id.clone(),
            outcome,
            ms: millis(self.started.elapsed()),
            live,
            reason: reason.clone(),
        });
        Ok(DeployReport {
            id: self.journal.deploy_id.clone(),
            outcome,
            target: self.journal.target,
            live,
            image_ref: self.journal.image_ref.clone(),
            image_digest: self
                .state
                .live
                .as_ref()
                .filter(|live| live.deploy_id == self.journal.deploy_id)
                .and_then(|live| live.image_digest.clone()),
            reason,
            error_class,
            steps: self.journal.steps.clone(),
        })
    }

    async fn finish_failed(
        self,
        outcome: Outcome,
        error: &DeployError,
    ) -> Result<DeployReport, DeployError> {
        self.finish(outcome, Some(error.to_string()), Some(error.class()))
            .await
    }

    /// Ends a failed run according to where it failed. Before the switch, what it
    /// started is undone exactly as `recover` would undo it; the live colour and the
    /// proxy files were never touched on that path.
    pub(super) async fn fail(self, failure: Failure) -> Result<DeployReport, DeployError> {
        match failure {
            // The lock is another runner's now: it owns the service, and its run
            // clears what this one started; this one must not write any more.
            Failure::BeforeSwitch(error) if error.is_lock_lost() => {
                self.finish_failed(Outcome::Failed, &error).await
            }
            Failure::BeforeSwitch(error) => {
                if let Err(cleanup) = Undo::for_run(&self.journal).run(self.ctx).await {
                    self.lock.release_or_warn(&*self.ctx.reporter).await;
                    return Err(error.then_cleanup_failed(cleanup));
                }
                self.finish_failed(Outcome::Failed, &error).await
            }
            Failure::RolledBack(error) => self.finish_failed(Outcome::RolledBack, &error).await,
            Failure::Fatal(error) => {
                self.lock.release_or_warn(&*self.ctx.reporter).await;
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_ids_keep_the_pid_apart_and_sort_by_time() {
        // The old id salted the time with `pid.rotate_left(16) & 0xffff`, which kept
        // only the pid's high bits: two runners in the same second collided.
        let ids: Vec<String> = (0..1000).map(|_| new_deploy_id()).collect();
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let first = new_deploy_id();
        std::thread::sleep(Duration::from_millis(2));
        let later = new_deploy_id();
        assert!(first < later, "{first} !< {later}");
        assert!(
            first
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{first}: must be usable in an image tag"
        );
    }
}

//! Reconciling what a killed runner left behind, and rebuilding the record from
//! reality when the state file was lost.
//!
//! [`decide`] is the whole policy, a pure function of the journal, the state file
//! and two observations (is the target healthy, had it been promoted):
//! - the target had been promoted to live: finish retiring the old colour;
//! - traffic may already have moved (the switch had started): if the target is
//!   healthy, make sure the proxy serves it and promote it; otherwise put the saved
//!   proxy files back and reload;
//! - before the switch: put back any proxy files it rewrote (nginx never loaded
//!   them) and undo its start.
//!
//! "Undo the start" is the same as when a run fails by itself: a deploy's new
//! container is removed; a rollback's restarted colour is stopped again (it stays
//! for the next attempt). Recovery runs under the deploy lock, first thing in every
//! deploy and rollback, or on its own as `cutover recover`. It never stops the
//! colour that serves traffic.

use std::time::{Duration, Instant};

use crate::Color;
use crate::ci::CiFacts;
use crate::context::Context;
use crate::engine::{PreparedImage, RecordedLive};
use crate::error::DeployError;
use crate::events::{Event, Level};
use crate::health;
use crate::operation::{OperationKind, Outcome, Step};
use crate::plugin::types;
use crate::state::{Journal, SavedFile, State};

/// How to undo a run's start step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// It started nothing.
    Nothing,
    /// A deploy's new instance: remove it.
    Remove(Color),
    /// A rollback's restarted colour: stop it again, keeping it for the next try.
    Stop(Color),
}

impl Undo {
    /// What undoes the start step of `journal`'s run.
    pub fn for_run(journal: &Journal) -> Undo {
        match (journal.container.is_some(), journal.target, journal.kind) {
            (true, Some(color), OperationKind::Deploy) => Undo::Remove(color),
            (true, Some(color), OperationKind::Rollback) => Undo::Stop(color),
            _ => Undo::Nothing,
        }
    }

    /// Does it.
    ///
    /// # Errors
    /// [`DeployError`] when the engine refuses.
    pub async fn run(self, ctx: &Context) -> Result<(), DeployError> {
        if crate::fault::fails("undo") {
            return Err(crate::engine::injected_failure(ctx.engine.as_ref(), "undo").into());
        }
        match self {
            Undo::Nothing => {}
            Undo::Remove(color) => ctx.engine.clear(color).await?,
            Undo::Stop(color) => ctx.engine.stop(color).await?,
        }
        Ok(())
    }
}

/// What is true now that the journal cannot say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The run's target runs and one probe of it is healthy.
    pub target_healthy: bool,
}

/// What recovery does about an interrupted run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The target had been promoted: stop the colour that served before, if any.
    RetireOld(Option<Color>),
    /// The switch had started and the target is healthy: write the run's files,
    /// test, reload, verify, promote it, drain and stop the old colour.
    FinishSwitch(Color),
    /// The switch had started but the target is not healthy: restore the saved
    /// files (when there are any), reload, and undo the start.
    SwitchBack {
        /// Whether there are saved files to put back.
        restore: bool,
        /// How to undo the start.
        undo: Undo,
    },
    /// It had not switched: rewrite the saved files if it wrote any (nginx never
    /// loaded them), and undo the start.
    Undo {
        /// Whether the saved files must be written back.
        rewrite: bool,
        /// How to undo the start.
        undo: Undo,
    },
}

/// The recovery policy: see the module docs.
pub fn decide(journal: &Journal, state: &State, observed: Observed) -> Action {
    let promoted = state
        .live
        .as_ref()
        .is_some_and(|live| live.deploy_id == journal.deploy_id);
    if promoted {
        let old = state
            .previous
            .as_ref()
            .map(|s| s.color)
            .filter(|c| Some(*c) != journal.target);
        return Action::RetireOld(old);
    }
    let undo = Undo::for_run(journal);
    // A canary that had not reached its final switch split traffic on a weight the
    // run never confirmed: take it back to the live colour (a canary is only ever
    // finished by the runner that judged it).
    if journal.reached(Step::Canary) && !journal.reached(Step::Switch) {
        return Action::SwitchBack {
            restore: journal.saved_files.is_some(),
            undo,
        };
    }
    if journal.reached(Step::Switch) {
        return match journal.target {
            Some(color) if observed.target_healthy && journal.written_files.is_some() => {
                Action::FinishSwitch(color)
            }
            _ => Action::SwitchBack {
                restore: journal.saved_files.is_some(),
                undo,
            },
        };
    }
    Action::Undo {
        rewrite: journal.reached(Step::Validate) && journal.saved_files.is_some(),
        undo,
    }
}

/// What [`follow_recorded`] found and did.
#[derive(Debug, Default)]
pub struct Followed {
    /// What changed in the state, for a warning.
    pub note: Option<String>,
    /// The number of the engine's record now (none for an engine that keeps none),
    /// so a run need not read the record again to journal it.
    pub serial: Option<u64>,
}

/// Brings `state` in line with the engine's record of the live colour (see
/// [`crate::observe::engine_record`]), first rewriting a record the proxy proves
/// stale.
///
/// # Errors
/// [`DeployError`] when the engine cannot be asked or written.
pub async fn follow_recorded(ctx: &Context, state: &mut State) -> Result<Followed, DeployError> {
    let Some((recorded, lags)) = crate::observe::engine_record(ctx).await? else {
        return Ok(Followed::default());
    };
    if lags {
        ctx.engine
            .record_live(recorded.live, recorded.previous)
            .await?;
    }
    Ok(Followed {
        note: ctx.follow(state, &recorded).await?,
        serial: Some(recorded.serial),
    })
}

/// Reconciles the deploy recorded in `state.in_progress`, if any, unless the
/// engine's record of the live colour moved on since it started (another runner
/// deployed meanwhile): then undoing or finishing it would act on a world that no
/// longer exists, so it is closed as `interrupted` untouched. The caller holds the
/// lock. Returns whether there was a journal.
///
/// # Errors
/// As [`reconcile`].
pub async fn reconcile_or_drop(ctx: &Context, state: &mut State) -> Result<bool, DeployError> {
    let Some(journal) = state.in_progress.clone() else {
        return Ok(false);
    };
    let recorded = ctx.engine.recorded_live().await?;
    if let (Some(started), Some(now)) = (journal.engine_serial, recorded)
        && superseded(&journal, started, &now)
    {
        let reason = format!(
            "interrupted at `{}`; superseded: another runner recorded {} live since, so nothing of it was undone or finished",
            journal.step, now.live
        );
        ctx.reporter.log(
            Level::Warn,
            &format!("deploy {}: {reason}", journal.deploy_id),
        );
        state.in_progress = None;
        state.push_record(
            journal.record(Outcome::Interrupted, Some(reason)),
            ctx.config.history.deploys,
        );
        ctx.store.save(state)?;
        return Ok(true);
    }
    reconcile(ctx, state).await?;
    Ok(true)
}

/// Whether the engine's record `now` shows another runner's deploy since the run
/// of `journal` started at record number `started`. The run writes one record itself,
/// after its verify step and before its drain step is journaled: so a record one
/// above its start that names its target is its own even when the journal does not
/// show the drain yet.
fn superseded(journal: &Journal, started: u64, now: &RecordedLive) -> bool {
    let own = journal.reached(Step::Drain)
        || (journal.reached(Step::Switch)
            && now.serial == started + 1
            && journal.target == Some(now.live));
    now.serial > started + u64::from(own)
}

/// Reconciles the deploy recorded in `state.in_progress`, if any; the caller holds
/// the lock. The state is saved with the journal closed as `interrupted`.
///
/// # Errors
/// [`DeployError`] when the engine or the proxy fail while putting things right; the
/// journal then stays, so the next run tries again.
pub async fn reconcile(ctx: &Context, state: &mut State) -> Result<(), DeployError> {
    let Some(journal) = state.in_progress.clone() else {
        return Ok(());
    };
    let began = Instant::now();
    ctx.reporter.emit(&Event::StepStarted {
        step: Step::Recover,
    });
    ctx.reporter.log(
        Level::Warn,
        &format!(
            "deploy {} (run by {}) was interrupted at `{}`; reconciling",
            journal.deploy_id, journal.owner, journal.step
        ),
    );
    let one_offs = remove_hook_runs(ctx, &journal).await?;
    let observed = Observed {
        target_healthy: match journal.target {
            Some(color) if journal.reached(Step::Switch) => target_healthy(ctx, color).await?,
            _ => false,
        },
    };
    let summary = act(ctx, state, &journal, decide(&journal, state, observed)).await? + &one_offs;
    if let Some(live) = &state.live {
        // The engine's record (a Swarm's labels) may lag the state file when the
        // runner died between the two.
        let previous = state.previous.as_ref().map(|s| s.color);
        ctx.engine.record_live(live.color, previous).await?;
    }
    let record = journal.record(
        Outcome::Interrupted,
        Some(format!("interrupted at `{}`; {summary}", journal.step)),
    );
    state.in_progress = None;
    state.push_record(record, ctx.config.history.deploys);
    ctx.store.save(state)?;
    ctx.reporter.emit(&Event::StepFinished {
        step: Step::Recover,
        ms: crate::operation::millis(began.elapsed()),
        detail: summary,
    });
    Ok(())
}

/// Removes what a hook the run was in left running (its one-off container), and
/// says so for the record. A hook is never run again by recovery: a migration cut
/// short is the user's to look at.
async fn remove_hook_runs(ctx: &Context, journal: &Journal) -> Result<String, DeployError> {
    if !journal.step.is_hook() {
        return Ok(String::new());
    }
    let removed = ctx.engine.remove_one_offs(&journal.deploy_id).await?;
    let what = if removed.is_empty() {
        String::new()
    } else {
        format!(" (removed {})", removed.join(", "))
    };
    Ok(format!(
        "; the hook `{}` was cut short and not run again{what}: check what it had done",
        journal.step
    ))
}

async fn target_healthy(ctx: &Context, color: Color) -> Result<bool, DeployError> {
    let running = ctx.engine.inspect(color).await?.is_some_and(|i| i.running);
    Ok(running && ctx.probe_once(color).await == types::ProbeVerdict::Healthy)
}

/// Carries out `action`; returns what was done, for the record.
async fn act(
    ctx: &Context,
    state: &mut State,
    journal: &Journal,
    action: Action,
) -> Result<String, DeployError> {
    let saved = || journal.saved_files.as_deref().unwrap_or_default();
    match action {
        Action::RetireOld(old) => {
            if let Some(old) = old {
                ctx.engine.stop(old).await?;
            }
            Ok("the switch had completed; retired the old colour".to_owned())
        }
        Action::FinishSwitch(color) => {
            let written = journal.written_files.as_deref().unwrap_or_default();
            finish_switch(ctx, state, journal, color, written).await?;
            Ok(format!(
                "the target {color} was healthy; finished the switch to it"
            ))
        }
        Action::SwitchBack { restore, undo } => {
            if restore {
                ctx.proxy.restore(saved()).await?;
            }
            undo.run(ctx).await?;
            Ok(format!(
                "the target {} was not healthy; restored the previous proxy config",
                journal
                    .target
                    .map_or_else(|| "-".to_owned(), |c| c.to_string())
            ))
        }
        Action::Undo { rewrite, undo } => {
            if rewrite {
                ctx.proxy.write_saved(saved())?;
            }
            undo.run(ctx).await?;
            Ok("it had not switched traffic; undid what it started".to_owned())
        }
    }
}

/// Forward to a healthy target: its files, test, reload, verify, promote, drain,
/// retire the old colour.
async fn finish_switch(
    ctx: &Context,
    state: &mut State,
    journal: &Journal,
    color: Color,
    written: &[SavedFile],
) -> Result<(), DeployError> {
    ctx.proxy.write_saved(written)?;
    ctx.proxy.test().await?;
    let reload = ctx.proxy.switch().await?;
    health::verify_through_front_ends(&ctx.config, color).await?;
    let image_id = match &journal.image_id {
        Some(id) => id.clone(),
        None => ctx
            .engine
            .inspect(color)
            .await?
            .map(|i| i.image_id)
            .unwrap_or_default(),
    };
    let image = PreparedImage {
        id: image_id,
        reference: journal.image_ref.clone().unwrap_or_default(),
        digest: None,
    };
    let previous = state.live.take();
    state.live = Some(ctx.slot(color, image, &journal.deploy_id));
    state.previous = previous.clone();
    ctx.store.save(state)?;
    if let Some(old) = previous.filter(|old| old.color != color) {
        ctx.proxy
            .drain(&reload, ctx.config.drain.timeout.get())
            .await;
        ctx.engine.stop(old.color).await?;
    }
    Ok(())
}

/// What `cutover recover` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// There was nothing to do.
    Nothing,
    /// An interrupted deploy was reconciled.
    Interrupted,
    /// The state file recorded no live colour, but the proxy serves a running,
    /// healthy container: it was adopted as live.
    Adopted(Color),
    /// The engine records another live colour than the state file did (another
    /// runner deployed it): the state file now follows the engine.
    Followed(Color),
}

/// `cutover recover`: reconcile an interrupted deploy, and adopt what really serves
/// when the state file records nothing live (e.g. it was lost or moved aside).
///
/// # Errors
/// [`DeployError`] when the lock is held, the state file is unreadable, or
/// reconciling fails.
pub async fn recover(ctx: &Context, lock_wait: Duration) -> Result<Recovered, DeployError> {
    let lock = crate::hold::take(ctx, "recover", lock_wait, CiFacts::from_env().run_url()).await?;
    let outcome = recover_locked(ctx).await;
    lock.release_or_warn(&*ctx.reporter).await;
    outcome
}

async fn recover_locked(ctx: &Context) -> Result<Recovered, DeployError> {
    let mut state = ctx.store.load()?;
    let mut outcome = if reconcile_or_drop(ctx, &mut state).await? {
        Recovered::Interrupted
    } else {
        Recovered::Nothing
    };
    if let Some(note) = follow_recorded(ctx, &mut state).await?.note {
        ctx.reporter.log(Level::Warn, &note);
        ctx.store.save(&state)?;
        if let (Recovered::Nothing, Some(live)) = (&outcome, &state.live) {
            outcome = Recovered::Followed(live.color);
        }
    }
    if state.live.is_none()
        && let Some(color) = crate::observe::files_target(ctx)
        && let Some(instance) = ctx.engine.inspect(color).await?
        && instance.running
        && ctx.probe_once(color).await == types::ProbeVerdict::Healthy
    {
        let image = PreparedImage {
            id: instance.image_id,
            reference: instance.image,
            digest: None,
        };
        let deploy_id = instance.deploy_id.unwrap_or_default();
        state.live = Some(ctx.slot(color, image, &deploy_id));
        ctx.store.save(&state)?;
        ctx.reporter.log(
            Level::Warn,
            &format!(
                "the state file recorded nothing live; adopted {color}, which the proxy serves"
            ),
        );
        return Ok(Recovered::Adopted(color));
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operation::StepTiming;
    use crate::state::Slot;

    fn journal(kind: OperationKind, step: Step, done: &[Step]) -> Journal {
        Journal {
            deploy_id: "d2".to_owned(),
            kind,
            started_at: String::new(),
            owner: "ci pid 1".to_owned(),
            step,
            from: Some(Color::Blue),
            target: Some(Color::Green),
            container: Some("hello-green".to_owned()),
            image_id: Some("sha256:2".to_owned()),
            image_ref: Some("hello:2".to_owned()),
            saved_files: Some(vec![SavedFile {
                path: "service-url.inc".to_owned(),
                contents: Some("blue".to_owned()),
                front: None,
            }]),
            written_files: Some(vec![SavedFile {
                path: "service-url.inc".to_owned(),
                contents: Some("green".to_owned()),
                front: None,
            }]),
            steps: done
                .iter()
                .map(|step| StepTiming {
                    step: step.clone(),
                    ms: 1,
                })
                .collect(),
            canary: None,
            engine_serial: None,
        }
    }

    #[test]
    fn a_record_written_by_the_run_itself_before_its_drain_was_journaled_is_not_another_runners() {
        let record = |serial, live| RecordedLive {
            live,
            previous: Some(Color::Blue),
            serial,
        };
        // Killed between writing the live record and journaling the drain step.
        let verified = journal(OperationKind::Deploy, Step::Verify, &[Step::Switch]);
        assert!(!superseded(&verified, 7, &record(8, Color::Green)));
        // One record above, but naming the other colour: another runner wrote it.
        assert!(superseded(&verified, 7, &record(8, Color::Blue)));
        // Two records above: another runner deployed since, whatever it names.
        assert!(superseded(&verified, 7, &record(9, Color::Green)));
        // Before the switch the run has written no record.
        let health = journal(OperationKind::Deploy, Step::Health, &[Step::Start]);
        assert!(superseded(&health, 7, &record(8, Color::Green)));
        assert!(!superseded(&health, 7, &record(7, Color::Blue)));
        let drained = journal(OperationKind::Deploy, Step::Drain, &[Step::Verify]);
        assert!(!superseded(&drained, 7, &record(8, Color::Green)));
    }

    fn slot(color: Color, deploy_id: &str) -> Slot {
        Slot {
            color,
            image_id: String::new(),
            image_ref: String::new(),
            image_digest: None,
            container: format!("hello-{color}"),
            upstream: String::new(),
            deploy_id: deploy_id.to_owned(),
            since: String::new(),
        }
    }

    fn blue_live() -> State {
        let mut state = State::new("hello");
        state.live = Some(slot(Color::Blue, "d1"));
        state
    }

    const HEALTHY: Observed = Observed {
        target_healthy: true,
    };
    const UNHEALTHY: Observed = Observed {
        target_healthy: false,
    };

    #[test]
    fn killed_after_promote_retires_the_old_color() {
        let mut state = blue_live();
        state.previous = state.live.take();
        state.live = Some(slot(Color::Green, "d2"));
        let j = journal(OperationKind::Deploy, Step::Drain, &[Step::Verify]);
        assert_eq!(
            decide(&j, &state, UNHEALTHY),
            Action::RetireOld(Some(Color::Blue))
        );
    }

    #[test]
    fn killed_mid_canary_takes_the_split_back_even_with_a_healthy_target() {
        for (step, done) in [
            (Step::Canary, &[Step::Health][..]),
            (Step::Canary, &[Step::Health, Step::Canary][..]),
            (Step::Validate, &[Step::Canary, Step::Render][..]),
        ] {
            let j = journal(OperationKind::Deploy, step.clone(), done);
            assert_eq!(
                decide(&j, &blue_live(), HEALTHY),
                Action::SwitchBack {
                    restore: true,
                    undo: Undo::Remove(Color::Green)
                },
                "killed at {step} after {done:?}"
            );
        }
    }

    #[test]
    fn killed_during_switch_with_a_healthy_target_finishes_the_switch() {
        let j = journal(OperationKind::Deploy, Step::Switch, &[Step::Validate]);
        assert_eq!(
            decide(&j, &blue_live(), HEALTHY),
            Action::FinishSwitch(Color::Green)
        );
    }

    #[test]
    fn killed_during_verify_with_an_unhealthy_target_switches_back() {
        let j = journal(OperationKind::Deploy, Step::Verify, &[Step::Switch]);
        assert_eq!(
            decide(&j, &blue_live(), UNHEALTHY),
            Action::SwitchBack {
                restore: true,
                undo: Undo::Remove(Color::Green)
            }
        );
    }

    #[test]
    fn killed_after_validate_rewrites_the_saved_files_and_removes_the_container() {
        let j = journal(OperationKind::Deploy, Step::Validate, &[Step::Render]);
        assert_eq!(
            decide(&j, &blue_live(), HEALTHY),
            Action::Undo {
                rewrite: true,
                undo: Undo::Remove(Color::Green)
            }
        );
    }

    #[test]
    fn killed_before_validate_leaves_the_proxy_files_alone() {
        let mut j = journal(OperationKind::Deploy, Step::Health, &[Step::Start]);
        j.saved_files = None;
        j.written_files = None;
        assert_eq!(
            decide(&j, &blue_live(), UNHEALTHY),
            Action::Undo {
                rewrite: false,
                undo: Undo::Remove(Color::Green)
            }
        );
    }

    #[test]
    fn interrupted_rollback_stops_its_restarted_container() {
        let j = journal(OperationKind::Rollback, Step::Health, &[Step::Start]);
        assert_eq!(
            decide(&j, &blue_live(), UNHEALTHY),
            Action::Undo {
                rewrite: false,
                undo: Undo::Stop(Color::Green)
            }
        );
        let j = journal(OperationKind::Rollback, Step::Verify, &[Step::Switch]);
        assert_eq!(
            decide(&j, &blue_live(), UNHEALTHY),
            Action::SwitchBack {
                restore: true,
                undo: Undo::Stop(Color::Green)
            }
        );
    }

    #[test]
    fn killed_before_anything_started_undoes_nothing() {
        let mut j = journal(OperationKind::Deploy, Step::Gate, &[]);
        j.container = None;
        j.target = None;
        assert_eq!(
            decide(&j, &blue_live(), UNHEALTHY),
            Action::Undo {
                rewrite: false,
                undo: Undo::Nothing
            }
        );
    }
}

//! The steps of a deploy, one line each, in the order they run; and the shared tail
//! (render → validate → switch → verify → promote → drain → retire → prune →
//! after-switch hooks) that a rollback runs too. What each step does is in the small functions below the lists.

use super::DeployOptions;
use super::hooks;
use super::readiness::{self, Readiness};
use super::run::{Failure, Run};
use crate::Color;
use crate::choose;
use crate::ci::CiFacts;
use crate::config::HookWhen;
use crate::context::Context;
use crate::engine::{self, PreparedImage};
use crate::error::DeployError;
use crate::events::{Event, Level};
use crate::git::GitFacts;
use crate::health::{self, VerifyReport};
use crate::operation::Step;
use crate::plugin::types::{self, GateDecision};
use crate::proxy::{DrainReport, Reload};
use crate::state::{SavedFile, Slot};
use crate::strategy::StrategyKind;

/// How a deploy's steps ended when nothing failed.
pub(super) enum Flow {
    /// Traffic moved to the target.
    Done,
    /// The gate said no, with this reason.
    Denied(String),
}

#[rustfmt::skip] // one line per step: the list is the point
/// The deploy: gate → image → select → clear → start → health, then [`cut_over`].
pub(super) async fn deploy(
    run: &mut Run<'_>,
    git: &GitFacts,
    ci: &CiFacts,
    options: &DeployOptions,
) -> Result<Flow, Failure> {
    use Failure::BeforeSwitch as pre;
    let ctx = run.ctx;
    let id = run.journal.deploy_id.clone();
    run.git = git.clone();

    // A secret the containers need and the runner lacks stops the deploy here,
    // before anything is built or started.
    crate::app_secrets::resolve(&ctx.config).map_err(pre)?;
    let decision = run.step(Step::Gate, gate(ctx, git, ci), describe_gate).await.map_err(pre)?;
    if let GateDecision::Deny(reason) = decision {
        return Ok(Flow::Denied(reason));
    }
    let image = run.step(Step::Image, prepare_image(ctx, git, &id, options), |i| i.reference.clone()).await.map_err(pre)?;
    (run.journal.image_id, run.journal.image_ref) = (Some(image.id.clone()), Some(image.reference.clone()));
    let target = run.step(Step::Select, choose::target(ctx, run.live()), Color::to_string).await.map_err(pre)?;
    run.journal.target = Some(target);
    run.step(Step::Clear, clear(ctx, target), String::clone).await.map_err(pre)?;
    let facts = hooks::Facts { color: target, image: &image };
    hooks::run_all(run, HookWhen::BeforeStart, &facts).await.map_err(pre)?;
    run.journal.container = Some(ctx.engine.slot_name(target));
    run.step(Step::Start, start(ctx, target, &image, &id), String::clone).await.map_err(pre)?;
    hooks::run_all(run, HookWhen::BeforeSwitch, &facts).await.map_err(pre)?;
    run.healthy = run.step(Step::Health, readiness::wait_healthy(ctx, target), Readiness::describe).await.map_err(pre)?.healthy;
    if let (StrategyKind::Canary, Some(live)) = (ctx.config.strategy.kind, run.live()) {
        super::canary::canary(run, target, live).await?;
    }

    cut_over(run, ctx.slot(target, image, &id)).await?;
    Ok(Flow::Done)
}

#[rustfmt::skip] // one line per step: the list is the point
/// The shared tail of deploy and rollback: render → validate → switch → verify →
/// promote → drain → retire → prune. `target` is healthy when this is called.
pub(super) async fn cut_over(run: &mut Run<'_>, target: Slot) -> Result<(), Failure> {
    use Failure::BeforeSwitch as pre;
    use Failure::Fatal as fatal;
    let ctx = run.ctx;
    let color = target.color;
    let previous = run.state.live.clone();
    let image = PreparedImage { id: target.image_id.clone(), reference: target.image_ref.clone(), digest: target.image_digest.clone() };

    let healthy = run.healthy.clone();
    let files = run.step(Step::Render, render(ctx, &healthy, color, previous.as_ref()), |f| describe_files(f)).await;
    let files = undo_split(run, files).await?;
    let saved = journal_files(run, &files).map_err(pre)?;
    let validated = run.step(Step::Validate, validate(ctx, &files, &saved), |()| "config test passed".to_owned()).await;
    undo_split(run, validated).await?;
    let switched = run.step(Step::Switch, switch(ctx), |_| format!("traffic → {color}")).await;
    let reload = restore_on_error(run, &saved, switched).await?;
    let verified = run.step(Step::Verify, verify(ctx, color), ToString::to_string).await;
    restore_on_error(run, &saved, verified).await?;

    promote(run, target, previous.clone()).map_err(fatal)?;
    record_live_or_warn(ctx, record_live(ctx, color, previous.as_ref()).await).map_err(fatal)?;
    crate::fault::at("recorded-live");
    run.step(Step::Drain, drain(ctx, &reload, previous.is_some()), describe_drain).await.map_err(fatal)?;
    warn_on_error(ctx, run.step(Step::Retire, retire(ctx, previous.as_ref()), String::clone).await);
    warn_on_error(ctx, run.step(Step::Prune, prune(ctx, images_in_use(&run.state)), |n| format!("{n} old image(s) removed")).await);
    // Only `warn` hooks run here (the config allows no other after the switch).
    warn_on_error(ctx, hooks::run_all(run, HookWhen::AfterSwitch, &hooks::Facts { color, image: &image }).await);
    Ok(())
}

async fn gate(ctx: &Context, git: &GitFacts, ci: &CiFacts) -> Result<GateDecision, DeployError> {
    Ok(ctx.plugins.gate()?.decide(&ctx.gate_input(git, ci))?)
}

fn describe_gate(decision: &GateDecision) -> String {
    match decision {
        GateDecision::Allow(r) => format!("allowed: {r}"),
        GateDecision::Deny(r) => format!("denied: {r}"),
    }
}

async fn prepare_image(
    ctx: &Context,
    git: &GitFacts,
    deploy_id: &str,
    options: &DeployOptions,
) -> Result<PreparedImage, DeployError> {
    let source = choose::image_source(&ctx.config, git, deploy_id, options)?;
    let auth = ctx.registry_auth()?;
    let reporter = ctx.reporter.clone();
    let mut on_line = move |line: &str| {
        reporter.emit(&Event::Log {
            level: Level::Debug,
            source: crate::events::BUILD_OUTPUT.to_owned(),
            message: line.to_owned(),
        });
    };
    Ok(ctx
        .engine
        .prepare_image(&source, auth.as_ref(), &mut on_line)
        .await?)
}

async fn clear(ctx: &Context, color: Color) -> Result<String, DeployError> {
    ctx.engine.clear(color).await?;
    Ok(format!("{} removed", ctx.engine.slot_name(color)))
}

async fn start(
    ctx: &Context,
    color: Color,
    image: &PreparedImage,
    deploy_id: &str,
) -> Result<String, DeployError> {
    let auth = ctx.registry_auth()?;
    let secrets = crate::app_secrets::resolve(&ctx.config)?;
    let id = ctx
        .engine
        .start(color, image, deploy_id, auth.as_ref(), &secrets)
        .await?;
    Ok(format!(
        "{} ({})",
        ctx.engine.slot_name(color),
        &id[..id.len().min(12)]
    ))
}

/// Renders the proxy files sending all traffic to `healthy`, the copies of `color`
/// that passed the health step.
async fn render(
    ctx: &Context,
    healthy: &[types::Instance],
    color: Color,
    previous: Option<&Slot>,
) -> Result<Vec<types::ProxyFile>, DeployError> {
    ctx.render_to(
        healthy.to_vec(),
        color,
        previous.map(|s| s.color),
        100,
        None,
    )
    .await
}

fn describe_files(files: &[types::ProxyFile]) -> String {
    let names: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
    names.join(", ")
}

/// Records in the journal the files as they were before this run wrote any and as
/// they will be, before any is written, so recovery can put them back or finish the
/// switch. A canary writes several times: the first snapshot of a path is kept, so an
/// undo always goes back to before the run.
pub(super) fn journal_files(
    run: &mut Run<'_>,
    files: &[types::ProxyFile],
) -> Result<Vec<SavedFile>, DeployError> {
    let mut saved = run.journal.saved_files.clone().unwrap_or_default();
    let new: Vec<String> = files
        .iter()
        .map(|f| f.path.clone())
        .filter(|p| saved.iter().all(|s| &s.path != p))
        .collect();
    saved.extend(run.ctx.proxy.snapshot_all(&new)?);
    run.journal.saved_files = Some(saved.clone());
    // Every front end gets the same files.
    run.journal.written_files = Some(
        run.ctx
            .proxy
            .front_tags()
            .into_iter()
            .flat_map(|front| {
                files.iter().map(move |f| SavedFile {
                    path: f.path.clone(),
                    contents: Some(f.contents.clone()),
                    front: front.clone(),
                })
            })
            .collect(),
    );
    Ok(saved)
}

/// Writes the files and tests them; a failing test puts the old ones back.
async fn validate(
    ctx: &Context,
    files: &[types::ProxyFile],
    saved: &[SavedFile],
) -> Result<(), DeployError> {
    Ok(ctx.proxy.write_and_test(files, saved).await?)
}

async fn switch(ctx: &Context) -> Result<Reload, DeployError> {
    Ok(ctx.proxy.switch().await?)
}

async fn verify(ctx: &Context, color: Color) -> Result<VerifyReport, DeployError> {
    Ok(health::verify_through_front_ends(&ctx.config, color).await?)
}

/// From here on the target is live, whatever happens next.
fn promote(run: &mut Run<'_>, mut target: Slot, previous: Option<Slot>) -> Result<(), DeployError> {
    target.since = crate::state::now_rfc3339();
    run.state.previous = previous;
    run.state.live = Some(target);
    run.save()
}

/// Tells the engine which colour is live now, when it keeps a record that other
/// runners read (a Swarm's labels); the state file already says so.
async fn record_live(
    ctx: &Context,
    live: Color,
    previous: Option<&Slot>,
) -> Result<(), DeployError> {
    Ok(ctx
        .engine
        .record_live(live, previous.map(|s| s.color))
        .await?)
}

async fn drain(
    ctx: &Context,
    reload: &Reload,
    served_before: bool,
) -> Result<Option<DrainReport>, DeployError> {
    if !served_before {
        return Ok(None);
    }
    Ok(Some(
        ctx.proxy
            .drain(reload, ctx.config.drain.timeout.get())
            .await,
    ))
}

fn describe_drain(report: &Option<DrainReport>) -> String {
    report
        .as_ref()
        .map_or_else(|| "nothing served before".to_owned(), ToString::to_string)
}

async fn retire(ctx: &Context, previous: Option<&Slot>) -> Result<String, DeployError> {
    let Some(old) = previous else {
        return Ok("nothing to retire".to_owned());
    };
    ctx.engine.stop(old.color).await?;
    Ok(format!("{} stopped", old.container))
}

/// The images of the live and the rollback colour, which pruning never removes.
fn images_in_use(state: &crate::state::State) -> Vec<String> {
    [&state.live, &state.previous]
        .into_iter()
        .flatten()
        .map(|s| s.image_id.clone())
        .collect()
}

/// Removes images beyond the newest `image.keep`, never one in `in_use`.
async fn prune(ctx: &Context, in_use: Vec<String>) -> Result<usize, DeployError> {
    let in_use: Vec<&str> = in_use.iter().map(String::as_str).collect();
    let (removed, kept) =
        engine::prune_images(ctx.engine.as_ref(), ctx.config.image.keep, &in_use).await?;
    for why in kept {
        ctx.reporter.log(Level::Warn, &why);
    }
    Ok(removed)
}

/// After the switch, a step that fails no longer leaves things as they were.
/// The live record failing to reach the engine is a warning (the next run follows
/// what nginx serves), unless the lock was lost: then another runner owns the
/// service, and this one stops with its journal kept.
fn record_live_or_warn(ctx: &Context, result: Result<(), DeployError>) -> Result<(), DeployError> {
    match result {
        Err(error) if error.is_lock_lost() => Err(error),
        other => {
            warn_on_error(ctx, other);
            Ok(())
        }
    }
}

fn warn_on_error<T>(ctx: &Context, result: Result<T, DeployError>) {
    if let Err(error) = result {
        ctx.reporter.log(Level::Warn, &error.to_string());
    }
}

/// A failure before the final switch: nothing user-visible changed, unless a canary
/// already split traffic, which must then be taken back like a failed switch.
async fn undo_split<T>(run: &mut Run<'_>, result: Result<T, DeployError>) -> Result<T, Failure> {
    match result {
        Ok(value) => Ok(value),
        Err(error) if run.journal.reached(Step::Canary) => {
            let saved = run.journal.saved_files.clone().unwrap_or_default();
            restore_on_error(run, &saved, Err(error)).await
        }
        Err(error) => Err(Failure::BeforeSwitch(error)),
    }
}

/// A failed switch or verify: put the previous proxy files back, reload, and undo
/// what the run started.
pub(super) async fn restore_on_error<T>(
    run: &mut Run<'_>,
    saved: &[SavedFile],
    result: Result<T, DeployError>,
) -> Result<T, Failure> {
    let error = match result {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    let ctx = run.ctx;
    ctx.reporter.log(
        Level::Warn,
        "restoring the previous proxy config after the failure",
    );
    if let Err(cleanup) = ctx.proxy.restore(saved).await {
        // The previous files are back but nginx would not reload: when it still
        // serves the previous colour (the failed reload never took), the deploy is
        // rolled back all the same.
        let previous = run.state.live.as_ref().map(|s| s.color);
        let still_serving = match previous {
            Some(color) if cleanup.previous_files_restored() => verify(ctx, color).await.is_ok(),
            _ => false,
        };
        if !still_serving {
            return Err(Failure::Fatal(error.then_cleanup_failed(cleanup)));
        }
        ctx.reporter.log(
            Level::Warn,
            &format!(
                "{cleanup}; the proxy still serves {} from the previous files",
                previous.map_or_else(String::new, |c| c.to_string())
            ),
        );
    }
    if let Err(cleanup) = crate::recover::Undo::for_run(&run.journal).run(ctx).await {
        return Err(Failure::Fatal(error.then_cleanup_failed(cleanup)));
    }
    Err(Failure::RolledBack(error))
}

//! `cutover rollback`: traffic back to the previous colour, through the same tail
//! as a deploy. Its `before-*` hooks run only with `on_rollback = true`.

use std::time::Duration;

use super::hooks;
use super::readiness::{Readiness, wait_healthy};
use super::run::{Failure, Run};
use super::steps::cut_over;
use super::{DeployReport, audit, run_label};
use crate::Color;
use crate::ci::CiFacts;
use crate::config::HookWhen;
use crate::context::Context;
use crate::engine::PreparedImage;
use crate::error::DeployError;
use crate::git::GitFacts;
use crate::operation::{OperationKind, Outcome, Step};
use crate::state::Slot;

/// Switches traffic back to the previous colour: restarts its container if it is
/// stopped (or recreates it from the previous image if it is gone), waits for health,
/// then runs the same switch → verify → drain path as a deploy.
///
/// # Errors
/// As [`super::deploy`].
pub async fn rollback(
    ctx: &Context,
    lock_wait: Duration,
    ci: &CiFacts,
) -> Result<DeployReport, DeployError> {
    ctx.proxy.preflight()?;
    crate::pause::refuse_while_paused(ctx)?;
    // For the hooks' environment and the audit entry.
    let git = GitFacts::collect_hiding(ctx.config.base_dir(), &ctx.config.secret_env_vars())
        .unwrap_or_default();
    let mut run = Run::start(ctx, OperationKind::Rollback, lock_wait, run_label(ci)).await?;
    run.git = git.clone();
    let report = match run.state.previous.clone() {
        None => {
            run.fail(Failure::BeforeSwitch(DeployError::NothingToRollBack))
                .await?
        }
        Some(back) => match rollback_steps(&mut run, back).await {
            Ok(()) => run.finish(Outcome::Succeeded, None, None).await?,
            Err(failure) => run.fail(failure).await?,
        },
    };
    audit(ctx, &report.audit_entry(OperationKind::Rollback, &git, ci)).await;
    Ok(report)
}

#[rustfmt::skip] // one line per step: the list is the point
/// start (reuse the stopped colour) → health, then the deploy's [`cut_over`].
async fn rollback_steps(run: &mut Run<'_>, back: Slot) -> Result<(), Failure> {
    use Failure::BeforeSwitch as pre;
    let ctx = run.ctx;
    let color = back.color;
    let image = PreparedImage { id: back.image_id.clone(), reference: back.image_ref.clone(), digest: back.image_digest.clone() };
    (run.journal.target, run.journal.container) = (Some(color), Some(back.container.clone()));
    (run.journal.image_id, run.journal.image_ref) = (Some(image.id.clone()), Some(image.reference.clone()));
    let id = run.journal.deploy_id.clone();
    let facts = hooks::Facts { color, image: &image };

    // Only the hooks with `on_rollback = true`: a down-migration is the user's call.
    hooks::run_all(run, HookWhen::BeforeStart, &facts).await.map_err(pre)?;
    run.step(Step::Start, bring_back(ctx, color, &image, &id), String::clone).await.map_err(pre)?;
    hooks::run_all(run, HookWhen::BeforeSwitch, &facts).await.map_err(pre)?;
    run.healthy = run.step(Step::Health, wait_healthy(ctx, color), Readiness::describe).await.map_err(pre)?.healthy;

    cut_over(run, ctx.slot(color, image, &id)).await
}

/// Restarts the previous colour, or recreates it from its image when it is gone.
async fn bring_back(
    ctx: &Context,
    color: Color,
    image: &PreparedImage,
    deploy_id: &str,
) -> Result<String, DeployError> {
    let name = ctx.engine.slot_name(color);
    Ok(match ctx.engine.inspect(color).await? {
        Some(i) if i.running => format!("{name} already running"),
        Some(_) => {
            ctx.engine.resume(color).await?;
            format!("{name} restarted")
        }
        None => {
            // The previous deploy's image: on this engine already, or on the
            // registry, with credentials when the password is at hand.
            let auth = ctx.registry_auth().ok().flatten();
            let secrets = crate::app_secrets::resolve(&ctx.config)?;
            ctx.engine
                .start(color, image, deploy_id, auth.as_ref(), &secrets)
                .await?;
            format!("{name} recreated from {}", image.reference)
        }
    })
}

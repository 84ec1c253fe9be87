//! Reconciling what a killed runner left behind, and rebuilding the record from
//! reality when the state file was lost.
//!
//! The journal in the state file says which step an interrupted deploy had reached.
//! Recovery decides from that and from what Docker and the proxy show now:
//! - the target had been promoted to live: finish retiring the old colour;
//! - traffic may already have moved (the switch had started): if the target is
//!   healthy, make sure the proxy serves it and promote it; otherwise put the saved
//!   proxy files back and reload;
//! - before the switch: put back any proxy files it rewrote (nginx never loaded
//!   them) and remove the container it started.
//!
//! Recovery runs under the deploy lock, first thing in every deploy and rollback, or
//! on its own as `cutover recover`. It never stops the colour that serves traffic.

use std::time::{Duration, Instant};

use crate::Color;
use crate::ci::CiFacts;
use crate::deploy::{Context, DeployError};
use crate::events::{Event, Level};
use crate::health::{self, VerifySpec};
use crate::plugin::types;
use crate::state::{DeployRecord, Journal, OperationKind, Outcome, Slot, State, Step, now_rfc3339};

/// Reconciles the deploy recorded in `state.in_progress`, if any; the caller holds
/// the lock. The state is saved with the journal closed as `interrupted`.
///
/// # Errors
/// [`DeployError`] when Docker or the proxy fail while putting things right; the
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
    let promoted = state
        .live
        .as_ref()
        .is_some_and(|live| live.deploy_id == journal.deploy_id);
    let summary = if promoted {
        if let Some(old) = &state.previous {
            stop(ctx, &old.container).await?;
        }
        "the switch had completed; retired the old colour".to_owned()
    } else if reached(&journal, Step::Switch) {
        after_switch(ctx, state, &journal).await?
    } else {
        if reached(&journal, Step::Validate)
            && let Some(saved) = &journal.saved_files
        {
            // Written but never loaded: nginx still runs the previous config.
            ctx.proxy.write_saved(saved)?;
        }
        if journal.kind == OperationKind::Deploy
            && let Some(name) = &journal.container
        {
            ctx.docker.remove_container(name).await?;
        }
        "it had not switched traffic; removed what it started".to_owned()
    };
    let record = DeployRecord {
        id: journal.deploy_id.clone(),
        kind: journal.kind,
        started_at: journal.started_at.clone(),
        finished_at: now_rfc3339(),
        image_ref: journal.image_ref.clone(),
        from: None,
        to: journal.target,
        outcome: Outcome::Interrupted,
        reason: Some(format!("interrupted at `{}`; {summary}", journal.step)),
        steps: journal.steps.clone(),
    };
    state.in_progress = None;
    state.push_record(record, ctx.config.history.deploys);
    ctx.store.save(state)?;
    ctx.reporter.emit(&Event::StepFinished {
        step: Step::Recover,
        ms: began.elapsed().as_millis() as u64,
        detail: summary,
    });
    Ok(())
}

/// Whether the journal shows `step` as started (or done).
fn reached(journal: &Journal, step: Step) -> bool {
    journal.step == step || journal.steps.iter().any(|t| t.step == step)
}

async fn stop(ctx: &Context, container: &str) -> Result<(), DeployError> {
    ctx.docker
        .stop_container(container, ctx.config.container.stop_grace.get())
        .await?;
    Ok(())
}

/// The switch had started: move forward to a healthy target, else back.
async fn after_switch(
    ctx: &Context,
    state: &mut State,
    journal: &Journal,
) -> Result<String, DeployError> {
    let (Some(color), Some(container)) = (journal.target, journal.container.as_ref()) else {
        return Ok("nothing had been started".to_owned());
    };
    let running = ctx
        .docker
        .inspect_container(container)
        .await?
        .is_some_and(|c| c.running);
    let healthy = running && ctx.probe_once(color).await == types::ProbeVerdict::Healthy;
    if healthy && let Some(written) = &journal.written_files {
        ctx.proxy.write_saved(written)?;
        ctx.proxy.test().await?;
        let reload = ctx.proxy.switch().await?;
        health::verify_through_proxy(
            &VerifySpec::from_config(&ctx.config, color),
            ctx.config.verify.timeout.get(),
        )
        .await?;
        let image_id = match (
            &journal.image_id,
            ctx.docker.inspect_container(container).await?,
        ) {
            (Some(id), _) => id.clone(),
            (None, Some(info)) => info.image_id,
            (None, None) => String::new(),
        };
        let previous = state.live.take();
        state.live = Some(Slot {
            color,
            image_id,
            image_ref: journal.image_ref.clone().unwrap_or_default(),
            image_digest: None,
            container: container.clone(),
            upstream: ctx.config.upstream(color).to_string(),
            deploy_id: journal.deploy_id.clone(),
            since: now_rfc3339(),
        });
        state.previous = previous.clone();
        ctx.store.save(state)?;
        if let Some(old) = previous.filter(|old| old.color != color) {
            ctx.proxy
                .drain(&reload, ctx.config.drain.timeout.get())
                .await;
            stop(ctx, &old.container).await?;
        }
        return Ok(format!(
            "the target {color} was healthy; finished the switch to it"
        ));
    }
    if let Some(saved) = &journal.saved_files {
        ctx.proxy.restore(saved).await?;
    }
    if journal.kind == OperationKind::Deploy {
        ctx.docker.remove_container(container).await?;
    }
    Ok(format!(
        "the target {color} was not healthy; restored the previous proxy config"
    ))
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
}

/// `cutover recover`: reconcile an interrupted deploy, and adopt what really serves
/// when the state file records nothing live (e.g. it was lost or moved aside).
///
/// # Errors
/// [`DeployError`] when the lock is held, the state file is unreadable, or
/// reconciling fails.
pub async fn recover(ctx: &Context, lock_wait: Duration) -> Result<Recovered, DeployError> {
    let _lock = ctx
        .lock("recover", lock_wait, CiFacts::from_env().run_url())
        .await?;
    let mut state = ctx.store.load()?;
    let outcome = if state.in_progress.is_some() {
        reconcile(ctx, &mut state).await?;
        Recovered::Interrupted
    } else {
        Recovered::Nothing
    };
    if state.live.is_none()
        && let Some(color) = crate::status::proxy_target(ctx)
        && let Some(info) = ctx
            .docker
            .inspect_container(&crate::docker::container_name(&ctx.config.service, color))
            .await?
        && info.running
        && ctx.probe_once(color).await == types::ProbeVerdict::Healthy
    {
        state.live = Some(Slot {
            color,
            image_id: info.image_id.clone(),
            image_ref: info.image.clone(),
            image_digest: None,
            container: info.name.trim_start_matches('/').to_owned(),
            upstream: ctx.config.upstream(color).to_string(),
            deploy_id: info
                .labels
                .get(crate::docker::LABEL_DEPLOY)
                .cloned()
                .unwrap_or_default(),
            since: now_rfc3339(),
        });
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

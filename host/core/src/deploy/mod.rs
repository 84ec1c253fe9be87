//! The blue/green state machine: `deploy` and `rollback` (recovering what a killed
//! runner left half done is in [`crate::recover`]).
//!
//! A deploy runs `gate → image → select → clear → [before-start hooks] → start →
//! [before-switch hooks] → health → render → validate → switch → verify → drain →
//! retire → prune → [after-switch hooks]`, then records the outcome; the list is
//! [`steps`], one line per step. Every step is journaled in the state file as it
//! starts ([`run`]). Policy comes from the plugins; every side effect goes through
//! the [`crate::engine::Engine`], the [`crate::proxy::Proxy`] and the state store.
//! The invariants:
//! - before the switch, a failure undoes what this deploy started and leaves the live
//!   colour and the proxy files untouched;
//! - a proxy config that fails its test is never loaded;
//! - a failure at verify restores the previous proxy files, reloads, and reports the
//!   deploy as rolled back;
//! - the live colour is never stopped before traffic has moved off it and drained.

pub mod canary;
mod hooks;
pub mod readiness;
mod rollback;
mod run;
pub mod steps;

use crate::Color;
use crate::audit::{Actor, AuditLog, Entry};
use crate::ci::CiFacts;
use crate::context::Context;
use crate::error::{DeployError, ErrorClass};
use crate::events::Level;
use crate::git::GitFacts;
use crate::operation::{OperationKind, Outcome, StepTiming};
use crate::state::now_rfc3339;

pub use rollback::rollback;
use run::Run;
pub use run::new_deploy_id;
// `cutover exec` awaits its one-off job the way a hook is awaited.
pub(crate) use hooks::within;

pub use crate::choose::DeployOptions;

/// How a deploy or rollback ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployReport {
    /// The deploy id.
    pub id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The colour deployed to, once selected.
    pub target: Option<Color>,
    /// The colour serving afterwards.
    pub live: Option<Color>,
    /// The image deployed.
    pub image_ref: Option<String>,
    /// The registry digest of the image, when this run made it live.
    pub image_digest: Option<String>,
    /// Why it did not succeed.
    pub reason: Option<String>,
    /// The class of the failure, when it failed.
    pub error_class: Option<ErrorClass>,
    /// Step timings.
    pub steps: Vec<StepTiming>,
}

impl DeployReport {
    /// The audit log's entry for this run.
    pub fn audit_entry(&self, kind: OperationKind, git: &GitFacts, ci: &CiFacts) -> Entry {
        Entry {
            deploy_id: self.id.clone(),
            time: now_rfc3339(),
            kind,
            actor: Actor::from_facts(ci),
            git_sha: git.head_sha.clone(),
            image: self.image_ref.clone(),
            digest: self.image_digest.clone(),
            target: self.target,
            outcome: self.outcome,
            reason: self.reason.clone(),
            steps: self.steps.clone(),
        }
    }
}

/// Runs one deploy. A failed deploy is an `Ok` report with outcome `failed` or
/// `rolled-back`; `Err` means the deploy could not run at all (config, lock,
/// environment) or could not undo a failure.
///
/// # Errors
/// [`DeployError`] as above.
pub async fn deploy(
    ctx: &Context,
    git: &GitFacts,
    ci: &CiFacts,
    options: &DeployOptions,
) -> Result<DeployReport, DeployError> {
    // A missing nginx (or reload program) is found before anything is built or started.
    ctx.proxy.preflight()?;
    crate::pause::refuse_while_paused(ctx)?;
    let mut run = Run::start(ctx, OperationKind::Deploy, options.lock_wait, run_label(ci)).await?;
    let report = match steps::deploy(&mut run, git, ci, options).await {
        Ok(steps::Flow::Denied(reason)) => run.finish(Outcome::Denied, Some(reason), None).await?,
        Ok(steps::Flow::Done) => run.finish(Outcome::Succeeded, None, None).await?,
        Err(failure) => run.fail(failure).await?,
    };
    audit(ctx, &report.audit_entry(OperationKind::Deploy, git, ci)).await;
    Ok(report)
}

/// What names the CI run in the lock owner: its URL, else its id (a webhook
/// delivery for `cutover serve`).
fn run_label(ci: &CiFacts) -> Option<String> {
    ci.run_url().or_else(|| {
        ci.get("run-id")
            .map(|id| format!("{} run {id}", ci.system.unwrap_or("ci")))
    })
}

/// Appends the finished run to the audit log, adds its plugin calls to the metrics,
/// then sends the `[[notify]]` webhooks; a failure of any is a warning, never a reason to report a successful deploy as
/// failed.
async fn audit(ctx: &Context, entry: &Entry) {
    if let Err(e) = AuditLog::new(ctx.store.dir()).append(entry) {
        ctx.reporter.log(Level::Warn, &e.to_string());
    }
    crate::metrics::record_plugin_calls(ctx);
    crate::notify::after_outcome(ctx, entry).await;
}

//! `cutover plan`: what a deploy would do now, without doing any of it.
//!
//! Plan asks the same plugins a deploy would (gate, selector, template) and reads
//! Docker and the proxy files, but it builds nothing, starts nothing, writes nothing
//! and takes no lock.

use serde::Serialize;

use crate::Color;
use crate::ci::CiFacts;
use crate::deploy::{Context, DeployError};
use crate::git::GitFacts;
use crate::plugin::types;

/// What a deploy would do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The service.
    pub service: String,
    /// Whether the gate allows the deploy.
    pub allowed: bool,
    /// The gate's reason.
    pub gate_reason: String,
    /// The image that would be deployed (or built).
    pub image: String,
    /// The colour the selector picks (none when it refuses).
    pub target: Option<Color>,
    /// Why the selector refused, when it did.
    pub target_error: Option<String>,
    /// The colour live now.
    pub live: Option<Color>,
    /// A diff of the proxy files: current → what the deploy would write.
    pub proxy_diff: String,
}

/// Works out the plan.
///
/// # Errors
/// [`DeployError`] when Docker cannot be queried, the state file cannot be read or
/// a plugin fails.
pub async fn plan(ctx: &Context, git: &GitFacts, ci: &CiFacts) -> Result<Plan, DeployError> {
    let state = ctx.store.load()?;
    let live = state.live.as_ref().map(|s| s.color);
    let (allowed, gate_reason) = match ctx.plugins.gate()?.decide(&ctx.gate_input(git, ci))? {
        types::GateDecision::Allow(r) => (true, r),
        types::GateDecision::Deny(r) => (false, r),
    };
    let image = match (&ctx.config.image.reference, &ctx.config.image.build) {
        (Some(reference), _) => reference.clone(),
        (None, Some(build)) => format!(
            "build {} (Dockerfile {}) as {}:{}-<deploy id>",
            ctx.config.resolve(&build.context).display(),
            build.dockerfile,
            ctx.config.service,
            git.short_sha().unwrap_or_else(|| "<no git>".to_owned()),
        ),
        (None, None) => String::new(),
    };
    let slots = ctx.slot_statuses().await?;
    let (target, target_error) = match ctx.plugins.selector()?.select(&types::SelectorInput {
        service: ctx.config.service.clone(),
        live: live.map(Into::into),
        slots,
    }) {
        Ok(color) => (Some(color), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let proxy_diff = match target {
        Some(color) => {
            let files = ctx.render(color, live)?;
            let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
            let current = ctx.proxy.snapshot(&paths)?;
            ctx.proxy.diff(&current, &files)
        }
        None => String::new(),
    };
    Ok(Plan {
        service: ctx.config.service.clone(),
        allowed,
        gate_reason,
        image,
        target,
        target_error,
        live,
        proxy_diff,
    })
}

impl Plan {
    /// The plan as text for a terminal.
    pub fn to_text(&self) -> String {
        let gate = if self.allowed { "allow" } else { "deny" };
        let live = self.live.map_or("nothing".to_owned(), |c| c.to_string());
        let target = match (&self.target, &self.target_error) {
            (Some(c), _) => c.to_string(),
            (None, Some(e)) => format!("refused: {e}"),
            (None, None) => "-".to_owned(),
        };
        let mut out = format!(
            "service {}\ngate    {gate}: {}\nimage   {}\nlive    {live}\ntarget  {target}\n",
            self.service, self.gate_reason, self.image
        );
        if self.proxy_diff.is_empty() {
            out.push_str("proxy   no change\n");
        } else {
            out.push_str("proxy files:\n");
            out.push_str(&self.proxy_diff);
            if !self.proxy_diff.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

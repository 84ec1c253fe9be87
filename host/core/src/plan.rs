//! `cutover plan`: what a deploy would do now, without doing any of it.
//!
//! Plan asks the same plugins a deploy would (gate, selector, template) and reads
//! Docker and the proxy files, but it builds nothing, starts nothing, writes nothing
//! and takes no lock.

use serde::Serialize;

use crate::Color;
use crate::choose::{self, DeployOptions};
use crate::ci::CiFacts;
use crate::context::Context;
use crate::error::DeployError;
use crate::git::GitFacts;
use crate::plugin::types;

/// Stands for the deploy id in a planned image tag.
pub const PLANNED_ID: &str = "<deploy-id>";

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
    /// Where the target's copies would run, on an engine that places them (the
    /// nodes of a Swarm); empty on a single host.
    pub placement: Vec<String>,
    /// A diff of the proxy files: current → what the deploy would write.
    pub proxy_diff: String,
    /// How to let verify tell blue from green, when it cannot now.
    pub verify_hint: Option<&'static str>,
}

/// Works out the plan for a deploy with `options`.
///
/// # Errors
/// [`DeployError`] when Docker cannot be queried, the state file cannot be read or
/// a plugin fails.
pub async fn plan(
    ctx: &Context,
    git: &GitFacts,
    ci: &CiFacts,
    options: &DeployOptions,
) -> Result<Plan, DeployError> {
    let state = ctx.store.load()?;
    let live = state.live.as_ref().map(|s| s.color);
    let (allowed, gate_reason) = match ctx.plugins.gate()?.decide(&ctx.gate_input(git, ci))? {
        types::GateDecision::Allow(r) => (true, r),
        types::GateDecision::Deny(r) => (false, r),
    };
    // The same functions a deploy calls; only the deploy id is not known yet.
    let image = choose::image_source(&ctx.config, git, PLANNED_ID, options)?.to_string();
    let (target, target_error) = match choose::target(ctx, live).await {
        Ok(color) => (Some(color), None),
        Err(e) => (None, Some(e.to_string())),
    };
    // Rendered for where the deploy would start the target's copies (a Swarm's
    // placeable nodes), so the diff shows what the deploy writes after its start step.
    let placeable = match target {
        Some(color) => ctx.engine.placeable(color).await?,
        None => Vec::new(),
    };
    let placement: Vec<String> = placeable.iter().filter_map(|r| r.node.clone()).collect();
    let proxy_diff = match target {
        Some(color) => {
            let servers = if placeable.is_empty() {
                ctx.servers(color).await?
            } else {
                placeable.iter().map(crate::context::instance_of).collect()
            };
            let files = ctx.render_to(servers, color, live, 100, None).await?;
            let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
            let current = ctx.proxy.snapshot(&paths)?;
            ctx.proxy.diff(&current, &files)
        }
        None => String::new(),
    };
    let spec = crate::health::VerifySpec::from_config(&ctx.config, target.unwrap_or(Color::Blue));
    let verify_hint = crate::health::color_hint(&spec).await;
    Ok(Plan {
        service: ctx.config.service.clone(),
        allowed,
        gate_reason,
        image,
        target,
        target_error,
        live,
        placement,
        proxy_diff,
        verify_hint,
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
        if !self.placement.is_empty() {
            out.push_str(&format!(
                "tasks   {} on {}\n",
                self.placement.len(),
                self.placement.join(", ")
            ));
        }
        if self.proxy_diff.is_empty() {
            out.push_str("proxy   no change\n");
        } else {
            out.push_str("proxy files:\n");
            out.push_str(&self.proxy_diff);
            if !self.proxy_diff.ends_with('\n') {
                out.push('\n');
            }
        }
        if let Some(hint) = self.verify_hint {
            out.push_str(&format!("verify  cannot tell blue from green: {hint}\n"));
        }
        out
    }
}

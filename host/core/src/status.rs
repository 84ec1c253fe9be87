//! `cutover status`: what really runs, from Docker and the proxy files, next to what the
//! state file records, and what to do when the two disagree.
//!
//! Status only reads. It works with a corrupt or missing state file, because the user
//! needs it most when something went wrong.

use serde::Serialize;

use crate::Color;
use crate::context::Context;
use crate::error::DeployError;
use crate::lock::{self, Owner};
use crate::observe;
use crate::plugin::types;
use crate::state::{DeployRecord, Journal, Slot};

/// One colour as Docker and a probe see it now.
#[derive(Debug, Clone, Serialize)]
pub struct ColorStatus {
    /// The colour.
    pub color: Color,
    /// Its container's name.
    pub container: String,
    /// Docker's state string (`running`, `exited`, ...), or `absent`.
    pub state: String,
    /// The image the container runs.
    pub image: Option<String>,
    /// The image id.
    pub image_id: Option<String>,
    /// `healthy`, `unhealthy` or `not probed`.
    pub health: String,
    /// The address the proxy uses for this colour (`<any node>:PORT` on a Swarm).
    pub upstream: String,
    /// Whether it runs (on a Swarm: at least one task).
    pub running: bool,
}

/// What the proxy serves and what its files say.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    /// The directory the files live in.
    pub config_dir: String,
    /// The colour the proxy really sends traffic to: the backend it names in its
    /// `X-Cutover-Upstream` header when it adds one (the managed nginx does), else
    /// what its files say.
    pub target: Option<Color>,
    /// The colour whose upstream the files on disk name, when exactly one does.
    pub files_target: Option<Color>,
    /// For the managed proxy: whether nginx runs.
    pub running: Option<bool>,
    /// Whether `cutover pause` holds the front door (it answers 503).
    pub paused: bool,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The service.
    pub service: String,
    /// The live colour the state file records.
    pub live: Option<Slot>,
    /// The rollback target the state file records.
    pub previous: Option<Slot>,
    /// Each colour as it really is.
    pub colors: Vec<ColorStatus>,
    /// The proxy as it really is.
    pub proxy: ProxyStatus,
    /// A deploy that did not finish.
    pub interrupted: Option<Journal>,
    /// Who holds the deploy lock now.
    pub lock_owner: Option<Owner>,
    /// The last deploys, newest last.
    pub recent: Vec<DeployRecord>,
    /// Disagreements between the record and reality, each with what to do.
    pub problems: Vec<String>,
}

/// Builds the status report.
///
/// # Errors
/// [`DeployError`] only when Docker cannot be queried; a bad state file becomes a
/// problem in the report.
pub async fn status(ctx: &Context) -> Result<StatusReport, DeployError> {
    let mut problems = Vec::new();
    let mut state = match ctx.store.load() {
        Ok(state) => Some(state),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    if let Some(state) = &mut state
        && let Some((recorded, _)) = observe::engine_record(ctx).await?
        && let Some(note) = ctx.follow(state, &recorded).await?
    {
        // Shown, not saved: status only reads.
        problems.push(note);
    }
    let live = state.as_ref().and_then(|s| s.live.clone());

    let mut colors = Vec::new();
    for color in Color::BOTH {
        let instance = ctx.engine.inspect(color).await?;
        let health = match &instance {
            Some(i) if i.running => match ctx.probe_once(color).await {
                types::ProbeVerdict::Healthy => "healthy",
                _ => "unhealthy",
            },
            _ => "not probed",
        };
        colors.push(ColorStatus {
            color,
            container: ctx.engine.slot_name(color),
            state: instance
                .as_ref()
                .map_or("absent".to_owned(), |i| i.status.clone()),
            image: instance.as_ref().map(|i| i.image.clone()),
            image_id: instance.as_ref().map(|i| i.image_id.clone()),
            health: health.to_owned(),
            upstream: ctx.config.upstreams(color).to_string(),
            running: instance.as_ref().is_some_and(|i| i.running),
        });
    }

    let files_target = observe::files_target(ctx);
    let served = observe::served_color(ctx).await;
    if let (Some(served), Some(files)) = (served, files_target)
        && served != files
    {
        problems.push(format!(
            "the proxy files name {files}, but nginx still serves {served}: they were written and \
             never loaded (an interrupted deploy) or edited by hand; run `cutover recover`"
        ));
    }
    let proxy = ProxyStatus {
        config_dir: ctx.proxy.config_dir().display().to_string(),
        target: served.or(files_target),
        files_target,
        running: (ctx.config.proxy.mode == crate::config::ProxyMode::Managed)
            .then(|| ctx.proxy.is_running()),
        paused: ctx.proxy.is_paused(),
    };

    if let Some(slot) = &live {
        let real = colors.iter().find(|c| c.color == slot.color);
        if real.is_none_or(|c| !c.running) {
            problems.push(format!(
                "the state file says {} is live, but its container is not running; \
                 run `cutover rollback` or `cutover deploy` to bring up a healthy colour",
                slot.color
            ));
        }
        if proxy.target.is_some_and(|t| t != slot.color) {
            problems.push(format!(
                "the proxy sends traffic to {}, but the state file says {} is live; \
                 run `cutover recover` to reconcile",
                proxy.target.map_or("?".to_owned(), |c| c.to_string()),
                slot.color
            ));
        }
        if proxy.running == Some(false) {
            problems.push(
                "the managed nginx is not running, so nothing serves traffic; \
                 run `cutover rollback` or `cutover deploy` to start it again"
                    .to_owned(),
            );
        }
    } else if let Some(target) = proxy.target
        && state.is_some()
    {
        problems.push(format!(
            "the proxy sends traffic to {target}, but the state file records no live colour; \
             run `cutover recover` to reconcile"
        ));
    }
    let interrupted = state.as_ref().and_then(|s| s.in_progress.clone());
    // This machine's lock first; on a Swarm another machine's runner may hold the
    // cluster's lock, which this machine's file knows nothing of.
    let lock_owner = match lock::current_owner(ctx.store.dir()) {
        Some(owner) => Some(owner),
        None => ctx.engine.lock_holder().await?,
    };
    if let Some(journal) = &interrupted
        && lock_owner.is_none()
    {
        problems.push(format!(
            "deploy {} was interrupted at `{}`; run `cutover recover` (the next deploy also reconciles it first)",
            journal.deploy_id, journal.step
        ));
    }
    let recent = state
        .as_ref()
        .map(|s| s.deploys.iter().rev().take(5).rev().cloned().collect())
        .unwrap_or_default();
    Ok(StatusReport {
        service: ctx.config.service.clone(),
        previous: state.as_ref().and_then(|s| s.previous.clone()),
        live,
        colors,
        proxy,
        interrupted,
        lock_owner,
        recent,
        problems,
    })
}

impl StatusReport {
    /// The report as text for a terminal.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let live = self.live.as_ref().map_or("nothing".to_owned(), |s| {
            format!("{} ({})", s.color, s.image_ref)
        });
        let _ = writeln!(out, "service  {}", self.service);
        let _ = writeln!(out, "live     {live}");
        if let Some(prev) = &self.previous {
            let _ = writeln!(out, "previous {} ({})", prev.color, prev.image_ref);
        }
        let proxy_target = self
            .proxy
            .target
            .map_or("unknown".to_owned(), |c| c.to_string());
        let running = match self.proxy.running {
            Some(true) => ", nginx running",
            Some(false) => ", nginx NOT running",
            None => "",
        };
        let paused = if self.proxy.paused {
            ", PAUSED: answers 503 until `cutover resume`"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "proxy    → {proxy_target} ({}{running}{paused})",
            self.proxy.config_dir
        );
        for c in &self.colors {
            let _ = writeln!(
                out,
                "{:<8} {:<10} {:<11} {} {}",
                c.color,
                c.state,
                c.health,
                c.upstream,
                c.image.as_deref().unwrap_or("")
            );
        }
        if let Some(owner) = &self.lock_owner {
            let _ = writeln!(out, "lock     held: {}", owner.describe());
        }
        if let Some(journal) = &self.interrupted
            && let Some(canary) = &journal.canary
        {
            let target = journal.target.map_or("-".to_owned(), |c| c.to_string());
            let waiting = if canary.waiting_for_promote {
                "; waiting for `cutover promote` (or `cutover abort`)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "canary   {}% → {target} at step {}{waiting}",
                canary.weight,
                canary.step_index + 1
            );
        }
        if !self.recent.is_empty() {
            let _ = writeln!(out, "recent deploys:");
            for r in &self.recent {
                let to = r.to.map_or("-".to_owned(), |c| c.to_string());
                let _ = writeln!(
                    out,
                    "  {} {:<11} → {:<5} {}",
                    r.id,
                    r.outcome,
                    to,
                    r.reason.as_deref().unwrap_or("")
                );
            }
        }
        for p in &self.problems {
            let _ = writeln!(out, "PROBLEM: {p}");
        }
        out
    }
}

//! What the proxy really does now, found out without changing anything: the colour
//! nginx serves (asked through nginx itself) and the colour its files on disk name.
//!
//! `status`, `recover` and `deploy` all judge the state file against these answers.
//! This module only reads: it sends one request through the proxy, reads files and
//! asks the engine.

use crate::Color;
use crate::context::Context;
use crate::engine::RecordedLive;
use crate::error::DeployError;
use crate::health::{self, VerifySpec};

/// The colour nginx really sends traffic to, asked through nginx itself: the backend
/// it names in `X-Cutover-Upstream` (the managed nginx adds that header; an external
/// one may). None when the proxy does not answer or names neither colour.
pub async fn served_color(ctx: &Context) -> Option<Color> {
    let spec = VerifySpec::from_config(&ctx.config, Color::Blue);
    let upstream = health::serving_upstream(&spec).await?;
    Color::BOTH
        .into_iter()
        .find(|c| ctx.config.upstreams(*c).matches(&upstream))
}

/// The colour the proxy files point at: the files the template would write, read
/// from disk, searched for each colour's addresses. None when neither or both
/// are named, or the template plugin is not loaded.
pub fn files_target(ctx: &Context) -> Option<Color> {
    // Only the file names matter: rendered for the configured address of each colour.
    let files = ctx.render_configured(Color::Blue).ok()?;
    let paths: Vec<String> = files.into_iter().map(|f| f.path).collect();
    let current = ctx.proxy.snapshot(&paths).ok()?;
    let text: String = current.into_iter().filter_map(|f| f.contents).collect();
    let named: Vec<Color> = Color::BOTH
        .into_iter()
        .filter(|c| ctx.config.upstreams(*c).named_in(&text))
        .collect();
    match named.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// The engine's record of the live colour (a Swarm's labels), as the proxy proves it:
/// a runner killed between the switch and writing the record leaves nginx serving the
/// other colour, running — the switch happened, so that colour is live. The second
/// value says the record lags that way (it is for a writer to fix). `None` for an
/// engine that keeps no record.
///
/// # Errors
/// [`DeployError`] when the engine cannot be asked.
pub async fn engine_record(ctx: &Context) -> Result<Option<(RecordedLive, bool)>, DeployError> {
    let Some(recorded) = ctx.engine.recorded_live().await? else {
        return Ok(None);
    };
    if let Some(served) = served_color(ctx).await
        && served != recorded.live
        && ctx.engine.inspect(served).await?.is_some_and(|i| i.running)
    {
        let proven = RecordedLive {
            live: served,
            previous: Some(recorded.live),
            serial: recorded.serial + 1,
        };
        return Ok(Some((proven, true)));
    }
    Ok(Some((recorded, false)))
}

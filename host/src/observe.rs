//! What the proxy really does now, found out without changing anything: the colour
//! nginx serves (asked through nginx itself) and the colour its files on disk name.
//!
//! `status`, `recover` and `deploy` all judge the state file against these answers.
//! This module only reads: it sends one request through the proxy and reads files.

use crate::Color;
use crate::context::Context;
use crate::health::{self, VerifySpec};

/// The colour nginx really sends traffic to, asked through nginx itself: the backend
/// it names in `X-Cutover-Upstream` (the managed nginx adds that header; an external
/// one may). None when the proxy does not answer or names neither colour.
pub async fn served_color(ctx: &Context) -> Option<Color> {
    let spec = VerifySpec::from_config(&ctx.config, Color::Blue);
    let upstream = health::serving_upstream(&spec).await?;
    Color::BOTH
        .into_iter()
        .find(|c| ctx.config.upstream(*c).to_string() == upstream)
}

/// The colour the proxy files point at: the files the template would write, read
/// from disk, searched for each colour's `address:port`. None when neither or both
/// are named, or the template plugin is not loaded.
pub fn files_target(ctx: &Context) -> Option<Color> {
    let files = ctx.render(Color::Blue, None).ok()?;
    let paths: Vec<String> = files.into_iter().map(|f| f.path).collect();
    let current = ctx.proxy.snapshot(&paths).ok()?;
    let text: String = current.into_iter().filter_map(|f| f.contents).collect();
    let named: Vec<Color> = Color::BOTH
        .into_iter()
        .filter(|c| text.contains(&ctx.config.upstream(*c).to_string()))
        .collect();
    match named.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

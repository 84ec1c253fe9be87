//! `cutover exec -- <argv>`: a one-off container from the live colour's image, with
//! its env, secrets, volumes and network, for a manual task (a console, a one-time
//! script). It takes no deploy lock (it changes no colour and no proxy file) and its
//! container is removed when it ends.

use std::time::Duration;

use crate::context::Context;
use crate::engine::{OneOff, PreparedImage};
use crate::error::DeployError;

/// Runs `argv` in a one-off copy of the live colour; each output line goes to
/// `on_line`. Returns the exit code.
///
/// # Errors
/// [`DeployError::NothingLive`] when no colour is live; [`DeployError`] when the
/// engine cannot run it or `timeout` passed (the container is then removed).
pub async fn exec(
    ctx: &Context,
    argv: &[String],
    timeout: Duration,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<i64, DeployError> {
    let state = ctx.store.load()?;
    let live = state.live.ok_or(DeployError::NothingLive)?;
    let image = PreparedImage {
        id: live.image_id.clone(),
        reference: live.image_ref.clone(),
        digest: live.image_digest.clone(),
    };
    let secrets = crate::app_secrets::resolve(&ctx.config)?;
    let auth = ctx.registry_auth()?;
    // Its own id: two consoles at once get two containers.
    let id = crate::deploy::new_deploy_id();
    let job = OneOff {
        name: "exec",
        color: live.color,
        image: &image,
        deploy_id: &id,
        argv,
        secrets: &secrets,
        auth: auth.as_ref(),
        timeout,
    };
    match tokio::time::timeout(timeout, ctx.engine.run_one_off(&job, on_line)).await {
        Ok(code) => Ok(code?),
        Err(_) => {
            ctx.engine.remove_one_offs(&id).await?;
            Err(DeployError::Hook {
                name: "exec".to_owned(),
                why: format!(
                    "timed out after {} (--timeout) and was stopped",
                    humantime::format_duration(timeout)
                ),
                tail: Vec::new(),
            })
        }
    }
}

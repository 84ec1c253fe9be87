//! `cutover exec -- <argv>`: a one-off container from the live colour's image, with
//! its env, secrets, volumes and network, for a manual task (a console, a one-time
//! script). It takes no deploy lock (it changes no colour and no proxy file) and its
//! container is removed when it ends. On a terminal ([`Io::Terminal`]) it gets a TTY
//! and the keystrokes (a console); otherwise its output comes line by line.

use std::time::Duration;

use crate::context::Context;
use crate::deploy::within;
use crate::engine::{OneOff, PreparedImage};
use crate::error::DeployError;

/// Where a one-off's input comes from and its output goes.
pub enum Io<'a> {
    /// No stdin; each output line to the callback.
    Lines(&'a mut (dyn FnMut(&str) + Send)),
    /// A TTY of `size` (rows, columns), `input`'s bytes as its stdin, its output
    /// bytes to `output` as they come.
    Terminal {
        /// The terminal's size.
        size: Option<(u16, u16)>,
        /// Keystrokes.
        input: tokio::sync::mpsc::Receiver<Vec<u8>>,
        /// Where its output goes.
        output: &'a mut (dyn FnMut(&[u8]) + Send),
    },
}

/// Runs `argv` in a one-off copy of the live colour, its input and output through
/// `io`. Returns the exit code.
///
/// # Errors
/// [`DeployError::NothingLive`] when no colour is live; [`DeployError`] when the
/// engine cannot run it or `timeout` passed (the container is then removed).
pub async fn exec(
    ctx: &Context,
    argv: &[String],
    timeout: Duration,
    io: Io<'_>,
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
    let ran = match io {
        Io::Lines(on_line) => within(ctx, &job, ctx.engine.run_one_off(&job, on_line)).await?,
        Io::Terminal {
            size,
            input,
            output,
        } => {
            within(
                ctx,
                &job,
                ctx.engine.run_attached(&job, size, input, output),
            )
            .await?
        }
    };
    ran.ok_or(DeployError::ExecTimedOut { after: timeout })
}

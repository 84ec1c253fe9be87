//! `cutover down`: take the service off this machine — both colours' containers, the
//! managed nginx, the network cutover created, and (on request) its images.
//!
//! It takes the deploy lock, so it never races a deploy, and it leaves the state file
//! saying nothing is live, so the next deploy starts from blue.

use crate::Color;
use crate::config::ProxyMode;
use crate::context::Context;
use crate::engine;
use crate::error::DeployError;
use crate::events::Level;
use crate::state::State;

/// Stops and removes everything the service runs here.
///
/// # Errors
/// [`DeployError`] when the lock is held or Docker, nginx or the state file fail.
pub async fn down(ctx: &Context, images: bool) -> Result<(), DeployError> {
    let lock = crate::hold::take(ctx, "down", std::time::Duration::ZERO, None).await?;
    let result = down_locked(ctx, images).await;
    let released = lock.release().await;
    result.and(released)
}

async fn down_locked(ctx: &Context, images: bool) -> Result<(), DeployError> {
    let managed = ctx.config.proxy.mode == ProxyMode::Managed;
    if managed {
        ctx.proxy.stop().await?;
    }
    for color in Color::BOTH {
        ctx.engine.clear(color).await?;
    }
    ctx.engine.remove_extras().await?;
    if images {
        let (_, kept) = engine::prune_images(ctx.engine.as_ref(), 0, &[]).await?;
        for why in kept {
            ctx.reporter.log(Level::Warn, &why);
        }
    }
    let mut state = match ctx.store.load() {
        Ok(state) => state,
        Err(_) => State::new(&ctx.config.service),
    };
    state.live = None;
    state.previous = None;
    state.in_progress = None;
    ctx.store.save(&state)?;
    let service = &ctx.config.service;
    if managed {
        ctx.reporter.log(
            Level::Info,
            &format!(
                "{service} is down: both colours' containers removed, the managed nginx stopped"
            ),
        );
    } else {
        // cutover never starts or stops a proxy it does not own: say what is left.
        ctx.reporter.log(
            Level::Warn,
            &format!(
                "{service} is down: both colours' containers removed. Your nginx still runs and \
                 still routes to them through {} (nothing listens there now): remove that file \
                 or its `include`, and reload nginx",
                ctx.proxy.config_dir().display()
            ),
        );
    }
    Ok(())
}

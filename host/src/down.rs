//! `cutover down`: take the service off this machine — both colours' containers, the
//! managed nginx, the network cutover created, and (on request) its images.
//!
//! It takes the deploy lock, so it never races a deploy, and it leaves the state file
//! saying nothing is live, so the next deploy starts from blue.

use crate::Color;
use crate::deploy::{Context, DeployError};
use crate::events::Level;
use crate::state::State;

/// Stops and removes everything the service runs here.
///
/// # Errors
/// [`DeployError`] when the lock is held or Docker, nginx or the state file fail.
pub async fn down(ctx: &Context, images: bool) -> Result<(), DeployError> {
    let _lock = ctx.lock("down", std::time::Duration::ZERO, None).await?;
    if ctx.config.proxy.mode == crate::config::ProxyMode::Managed {
        ctx.proxy.stop().await?;
    }
    for color in Color::BOTH {
        let name = crate::docker::container_name(&ctx.config.service, color);
        ctx.docker.remove_container(&name).await?;
    }
    if let Some(network) = &ctx.config.container.network {
        ctx.docker.remove_network(&network.name).await?;
    }
    if images {
        for image in ctx.docker.list_service_images(&ctx.config.service).await? {
            if let Err(e) = ctx.docker.remove_image(&image.id).await {
                ctx.reporter
                    .log(Level::Warn, &format!("kept image {}: {e}", image.id));
            }
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
    ctx.reporter.log(
        Level::Info,
        &format!(
            "{} is down: containers removed, proxy stopped",
            ctx.config.service
        ),
    );
    Ok(())
}

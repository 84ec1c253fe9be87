//! `cutover pause` and `cutover resume`: the front door answers the service's
//! requests with 503 and a maintenance page, or proxies them again. Only nginx is
//! touched (a file, a config test, a graceful reload): the containers keep running,
//! so `cutover exec` and hooks can work on them meanwhile. Both take the deploy lock
//! for the moment they write; a deploy or rollback refuses to start while paused,
//! since its verification goes through the front door.

use std::time::Duration;

use crate::context::Context;
use crate::error::DeployError;
use crate::proxy::pause;

/// Pauses the service; says what it did.
///
/// # Errors
/// [`DeployError::NothingLive`] when nothing serves; a config error naming
/// `proxy.pause_page` when the page cannot be read or served; proxy errors.
pub async fn pause(ctx: &Context) -> Result<String, DeployError> {
    let hold = crate::hold::take(ctx, "pause", Duration::ZERO, None).await?;
    let result = pause_locked(ctx).await;
    let released = hold.release().await;
    result.and_then(|line| released.map(|()| line))
}

async fn pause_locked(ctx: &Context) -> Result<String, DeployError> {
    let service = ctx.service();
    if ctx.store.load()?.live.is_none() {
        return Err(DeployError::NothingLive);
    }
    let key = "proxy.pause_page";
    let page = match &ctx.config.proxy.pause_page {
        None => pause::DEFAULT_PAGE.to_owned(),
        Some(file) => {
            let path = ctx.config.resolve(file);
            std::fs::read_to_string(&path).map_err(|e| {
                ctx.config.invalid(
                    key,
                    format!("cannot read the maintenance page {}: {e}", path.display()),
                )
            })?
        }
    };
    let file = pause::file(service, &page, &crate::state::now_rfc3339()).map_err(|e| {
        ctx.config
            .invalid(key, format!("the maintenance page cannot be served: {e}"))
    })?;
    let again = ctx.proxy.is_paused();
    ctx.proxy.pause(file).await?;
    Ok(if again {
        format!("{service} was paused already; the maintenance page was written again")
    } else {
        format!(
            "{service} is paused: the front door answers 503 with the maintenance page, the containers keep running; `cutover resume` ends it"
        )
    })
}

/// Resumes the service; says what it did.
///
/// # Errors
/// Proxy errors (the service then stays paused).
pub async fn resume(ctx: &Context) -> Result<String, DeployError> {
    let hold = crate::hold::take(ctx, "resume", Duration::ZERO, None).await?;
    let service = ctx.service();
    let result = if ctx.proxy.is_paused() {
        ctx.proxy
            .resume(&pause::path(service))
            .await
            .map(|_| format!("{service} is resumed: the front door proxies its requests again"))
            .map_err(DeployError::from)
    } else {
        Ok(format!("{service} is not paused; nothing to do"))
    };
    let released = hold.release().await;
    result.and_then(|line| released.map(|()| line))
}

/// Refuses a deploy or rollback while the service is paused.
///
/// # Errors
/// [`DeployError::Paused`].
pub fn refuse_while_paused(ctx: &Context) -> Result<(), DeployError> {
    if ctx.proxy.is_paused() {
        return Err(DeployError::Paused {
            service: ctx.service().to_owned(),
        });
    }
    Ok(())
}

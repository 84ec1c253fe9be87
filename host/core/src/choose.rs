//! What a deploy will run and where: the image and the target colour, decided the
//! same way by `deploy`, which then acts on them, and by `plan`, which only shows
//! them. Nothing here changes anything: it reads the config, the git facts and the
//! engine, and asks the selector plugin.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Color;
use crate::config::Config;
use crate::context::Context;
use crate::engine::ImageSource;
use crate::error::DeployError;
use crate::git::GitFacts;
use crate::plugin::types;

/// Options of `cutover deploy`.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// How long to wait for another deploy's lock.
    pub lock_wait: Duration,
    /// Build arguments that override `image.build.args`.
    pub build_args: BTreeMap<String, String>,
    /// Deploy this image reference instead of what the config says.
    pub image: Option<String>,
}

/// Where the image of deploy `deploy_id` comes from.
///
/// # Errors
/// [`DeployError::NoImage`] when the config names neither a build nor a reference
/// and no `--image` was given.
pub fn image_source(
    config: &Config,
    git: &GitFacts,
    deploy_id: &str,
    options: &DeployOptions,
) -> Result<ImageSource, DeployError> {
    if let Some(reference) = options.image.as_ref().or(config.image.reference.as_ref()) {
        return Ok(ImageSource::Pull {
            reference: reference.clone(),
        });
    }
    let Some(build) = &config.image.build else {
        return Err(DeployError::NoImage {
            file: config.file.clone(),
        });
    };
    let tag = match git.short_sha() {
        Some(sha) => format!("{sha}-{deploy_id}"),
        None => deploy_id.to_owned(),
    }
    .to_lowercase();
    let repo = match &config.image.registry {
        Some(registry) => format!("{}/{}", registry.server, config.service),
        None => config.service.clone(),
    };
    let mut args = build.args.clone();
    args.extend(options.build_args.clone());
    Ok(ImageSource::Build {
        context: config.resolve(&build.context),
        dockerfile: build.dockerfile.clone(),
        args,
        reference: format!("{repo}:{tag}"),
    })
}

/// Asks the selector, then refuses a colour that serves traffic: checked against both
/// the record and nginx itself, so a state file that lost track of the live colour
/// cannot let a deploy replace the container serving traffic. `plan` calls this too.
///
/// # Errors
/// [`DeployError::SelectedLive`] for the colour that serves; the engine's or the
/// plugin's error.
pub async fn target(ctx: &Context, live: Option<Color>) -> Result<Color, DeployError> {
    let selector = ctx.plugins.selector()?;
    let target = selector.select(&types::SelectorInput {
        service: ctx.service().to_owned(),
        live: live.map(Into::into),
        slots: ctx.slot_statuses().await?,
    })?;
    let serving = crate::observe::served_color(ctx).await;
    if Some(target) == live || Some(target) == serving {
        return Err(DeployError::SelectedLive {
            plugin: selector.name().to_owned(),
            color: target,
        });
    }
    Ok(target)
}

//! Which image a deploy runs: the reference `--image` or `image.ref` names, or a
//! build of `image.build` tagged `<registry>/<service>:<sha>-<deploy id>`. `plan`
//! shows exactly what `deploy` would do because both call [`source`].

use crate::config::Config;
use crate::engine::ImageSource;
use crate::error::DeployError;
use crate::git::GitFacts;

use super::DeployOptions;

/// Where the image of deploy `deploy_id` comes from.
///
/// # Errors
/// [`DeployError::NoImage`] when the config names neither a build nor a reference
/// and no `--image` was given.
pub fn source(
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

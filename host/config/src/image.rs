//! `[image]`: what a deploy runs — a reference to pull or a build of the repository —
//! and the registry it is pushed to.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::{Config, ConfigError};

/// Where the image comes from: built from a local context, or an existing reference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Build the image through the Docker API from a local context.
    pub build: Option<BuildConfig>,
    /// Deploy an existing image reference instead of building.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Log in to this registry, push after build and pull before run.
    pub registry: Option<RegistryConfig>,
    /// How many images this tool built are kept for rollback (the live one included).
    #[serde(default = "default_keep_images")]
    pub keep: usize,
}

/// A `docker build` through the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    /// The build context directory, relative to the config file.
    pub context: PathBuf,
    /// The Dockerfile, relative to the context.
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    /// Build arguments (`ARG` values).
    #[serde(default)]
    pub args: BTreeMap<String, String>,
}

/// A registry to push to and pull from. The password only ever comes from the
/// environment variable named here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `host:port` of the registry.
    pub server: String,
    /// The user to log in as.
    pub username: String,
    /// The environment variable holding the password.
    pub password_env: String,
}

pub(crate) fn default_keep_images() -> usize {
    3
}

pub(crate) fn default_dockerfile() -> String {
    "Dockerfile".to_owned()
}

/// Checks an image reference (from the config or the command line) against the
/// characters Docker's reference grammar allows: letters, digits and `. _ - / : @`.
/// References are passed to Docker as data, never through a shell, but anything else
/// (whitespace, quotes, `$`, `;`, non-ASCII) can only be a mistake or an attack, and
/// is better refused with this message than with the engine's "invalid reference
/// format" after a build.
///
/// # Errors
/// A message naming the reference and what is wrong with it.
pub fn check_image_ref(reference: &str) -> Result<(), String> {
    const EXAMPLE: &str = "such as \"registry:5000/team/app:1.2\"";
    if reference.is_empty() || reference.len() > 255 {
        return Err(format!(
            "expected an image reference of 1 to 255 characters {EXAMPLE}, found {reference:?}"
        ));
    }
    if let Some(c) = reference
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@')))
    {
        return Err(format!(
            "expected an image reference {EXAMPLE} (letters, digits and `. _ - / : @`), found {reference:?}, which holds {c:?}"
        ));
    }
    Ok(())
}

impl Config {
    /// `[image]`: exactly one of `build` and `ref`, what is kept, the registry.
    pub(crate) fn check_image(&self) -> Result<(), ConfigError> {
        match (&self.image.build, &self.image.reference) {
            (None, None) => {
                return Err(self.invalid(
                    "image",
                    "expected either `build = { context = \"...\" }` or `ref = \"image:tag\"`",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    "image",
                    "`build` and `ref` are both set; keep the one cutover should deploy",
                ));
            }
            _ => {}
        }
        if let Some(reference) = &self.image.reference {
            check_image_ref(reference).map_err(|m| self.invalid("image.ref", m))?;
        }
        if self.image.keep == 0 {
            return Err(self.invalid(
                "image.keep",
                "expected at least 1 (the live image is always kept)",
            ));
        }
        if let Some(registry) = &self.image.registry {
            if registry.server.is_empty() || registry.server.contains(['/', ' ']) {
                return Err(self.invalid(
                    "image.registry.server",
                    "expected `host:port` of the registry, e.g. \"127.0.0.1:5000\"",
                ));
            }
            // Docker reads `name/app` as the Docker Hub repository `name/app` unless
            // `name` looks like a host; the credentials would never apply.
            let server = &registry.server;
            if !(server.contains(['.', ':'])
                || server == "localhost"
                || server.bytes().any(|b| b.is_ascii_uppercase()))
            {
                return Err(self.invalid(
                    "image.registry.server",
                    format!(
                        "Docker would read {server:?} as part of a Docker Hub repository name, not as a registry; write it as a host with a `.` or a port, e.g. \"{server}:5000\" or \"{server}.example.com\""
                    ),
                ));
            }
            if registry.password_env.is_empty() {
                return Err(self.invalid(
                    "image.registry.password_env",
                    "expected the name of the environment variable holding the password",
                ));
            }
        }
        Ok(())
    }
}

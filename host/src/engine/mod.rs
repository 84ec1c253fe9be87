//! The container engine as the state machine sees it: two colour slots of one
//! service, each of which can be inspected, started from an image, stopped and
//! cleared, plus the images the service's deploys make.
//!
//! The state machine (`deploy`, `recover`, `down`, `status`) talks only to
//! [`Engine`]; it never names a container or calls Docker itself. Today's one
//! implementation is [`DockerHost`]: one Docker engine, one container per colour. A
//! cluster engine (one service per colour, several tasks) is a second implementation
//! of the same interface; [`Swarm`] holds its primitives (services, tasks, the
//! cluster's state labels and lock). An engine performs exactly what it is asked; it never
//! decides which colour to touch.

mod docker_host;
pub mod swarm;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::Color;
use crate::docker::{DockerError, RegistryAuth};

pub use docker_host::DockerHost;
pub use swarm::{Swarm, SwarmError};

/// What an engine operation can fail with. Both engines cutover knows speak the
/// Docker API, so they share its error (which already says what to do next).
pub type EngineError = DockerError;

/// What runs in one colour's slot now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The name the engine knows it by (the container's name).
    pub name: String,
    /// Whether it is running.
    pub running: bool,
    /// The engine's word for its state (`running`, `exited`, ...).
    pub status: String,
    /// The image reference it was created from.
    pub image: String,
    /// The id of that image.
    pub image_id: String,
    /// The deploy that created it, from its label.
    pub deploy_id: Option<String>,
}

/// Where a deploy's image comes from: the one decision `deploy` and `plan` share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Use this reference: from the local engine when it has it and no registry is
    /// configured, else pulled.
    Pull {
        /// The image reference.
        reference: String,
    },
    /// Build the context and tag the result `reference` (pushed when a registry is
    /// configured).
    Build {
        /// The build context directory.
        context: PathBuf,
        /// The Dockerfile, relative to the context.
        dockerfile: String,
        /// Build arguments.
        args: BTreeMap<String, String>,
        /// The tag to give the image.
        reference: String,
    },
}

impl ImageSource {
    /// The reference the deploy runs.
    pub fn reference(&self) -> &str {
        match self {
            ImageSource::Pull { reference } | ImageSource::Build { reference, .. } => reference,
        }
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Pull { reference } => f.write_str(reference),
            ImageSource::Build {
                context,
                dockerfile,
                reference,
                ..
            } => write!(
                f,
                "build {} (Dockerfile {dockerfile}) as {reference}",
                context.display()
            ),
        }
    }
}

/// The image a deploy runs, once the engine has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedImage {
    /// The image id, `sha256:...`.
    pub id: String,
    /// The reference it was deployed as.
    pub reference: String,
    /// The registry digest, when it came from or went to a registry.
    pub digest: Option<String>,
}

/// Receives each line an image build prints.
pub type OnLine<'a> = dyn FnMut(&str) + Send + 'a;

/// The slots of one service on a container engine. See the module docs.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Where the engine is, for messages (`unix:///var/run/docker.sock`).
    fn describe(&self) -> String;

    /// The name `color`'s slot has in the engine (its container's name).
    fn slot_name(&self, color: Color) -> String;

    /// What runs in `color`'s slot, if anything.
    ///
    /// # Errors
    /// [`EngineError`] when the engine cannot be asked.
    async fn inspect(&self, color: Color) -> Result<Option<Instance>, EngineError>;

    /// Builds or pulls the image (pushing a build when `auth` is given). `auth` is
    /// sent only to the registry it names.
    ///
    /// # Errors
    /// [`EngineError`] when the build, pull or push fails.
    async fn prepare_image(
        &self,
        source: &ImageSource,
        auth: Option<&RegistryAuth>,
        on_line: &mut OnLine<'_>,
    ) -> Result<PreparedImage, EngineError>;

    /// Removes whatever occupies `color`'s slot; succeeds when it is empty.
    ///
    /// # Errors
    /// [`EngineError`] when the engine refuses.
    async fn clear(&self, color: Color) -> Result<(), EngineError>;

    /// Starts `image` in `color`'s (empty) slot, labelled with `deploy_id`; returns
    /// the engine's id for it.
    ///
    /// # Errors
    /// [`EngineError`] when it cannot be created or started (e.g. its port is taken).
    async fn start(
        &self,
        color: Color,
        image: &PreparedImage,
        deploy_id: &str,
    ) -> Result<String, EngineError>;

    /// Starts the stopped instance in `color`'s slot again.
    ///
    /// # Errors
    /// [`EngineError`] when it is gone or will not start.
    async fn resume(&self, color: Color) -> Result<(), EngineError>;

    /// Stops `color`'s slot gracefully, keeping it for a rollback; succeeds when it
    /// is already stopped or empty.
    ///
    /// # Errors
    /// [`EngineError`] when the engine refuses.
    async fn stop(&self, color: Color) -> Result<(), EngineError>;

    /// The last `lines` lines `color`'s instance printed.
    ///
    /// # Errors
    /// [`EngineError`] when they cannot be read.
    async fn logs(&self, color: Color, lines: usize) -> Result<String, EngineError>;

    /// The ids of the images this tool made for the service, newest first.
    ///
    /// # Errors
    /// [`EngineError`] when the engine cannot list them.
    async fn service_images(&self) -> Result<Vec<String>, EngineError>;

    /// Removes one image.
    ///
    /// # Errors
    /// [`EngineError`] when something still uses it.
    async fn remove_image(&self, id: &str) -> Result<(), EngineError>;

    /// Removes what the service created besides its slots and images (its network).
    ///
    /// # Errors
    /// [`EngineError`] when the engine refuses.
    async fn remove_extras(&self) -> Result<(), EngineError>;
}

/// Removes the service's images beyond the newest `keep`, never one in `in_use`;
/// returns how many went and why each kept one was kept. Deploy's prune step and
/// `down --images` both go through here.
///
/// # Errors
/// [`EngineError`] when the images cannot be listed.
pub async fn prune_images(
    engine: &dyn Engine,
    keep: usize,
    in_use: &[&str],
) -> Result<(usize, Vec<String>), EngineError> {
    let mut removed = 0;
    let mut kept = Vec::new();
    for id in engine.service_images().await?.iter().skip(keep) {
        if in_use.contains(&id.as_str()) {
            continue;
        }
        match engine.remove_image(id).await {
            Ok(()) => removed += 1,
            Err(e) => kept.push(format!("kept image {id}: {e}")),
        }
    }
    Ok((removed, kept))
}

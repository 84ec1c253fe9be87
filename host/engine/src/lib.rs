//! cutover-engine: the container engine as the state machine sees it: two colour slots of one
//! service, each of which can be inspected, started from an image, stopped and
//! cleared, plus the images the service's deploys make.
//!
//! The state machine (`deploy`, `recover`, `down`, `status`) talks only to
//! [`Engine`]; it never names a container or calls Docker itself. [`DockerHost`] is
//! one Docker engine, one container per colour; [`SwarmEngine`] is a Swarm cluster,
//! one service per colour with a task on each of several nodes, built on the
//! primitives of [`Swarm`] (services, tasks, the cluster's state labels and lock). A
//! colour's running copies are its [`Replica`]s. An engine performs exactly what it
//! is asked; it never decides which colour to touch.
//!
//! [`docker`] is the one place that speaks Docker's API (bollard, image builds and
//! pushes, the ssh and TLS transports). This crate knows the config and the shared
//! vocabulary only: it must not touch nginx, plugins, the state file or any deploy
//! logic (its `Cargo.toml` has no such dependency).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod docker;
mod docker_host;
pub mod swarm;
mod swarm_engine;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use cutover_base::{Color, lock, secret};
use cutover_config as config;

use crate::docker::{DockerError, RegistryAuth};
use crate::secret::Secret;

pub use docker_host::DockerHost;
pub use swarm::{Swarm, SwarmError};
pub use swarm_engine::SwarmEngine;

/// What an engine operation can fail with: the Docker API's error (which already
/// says what to do next), or a Swarm one (no manager, lock held, ...).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The Docker API failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// A Swarm operation failed.
    #[error(transparent)]
    Swarm(#[from] SwarmError),
    /// This engine cannot do what was asked.
    #[error("{engine} cannot give {what}; {instead}")]
    Unsupported {
        /// What was asked.
        what: String,
        /// The engine.
        engine: String,
        /// What to do instead.
        instead: String,
    },
}

/// The error of an operation a test made fail with `CUTOVER_FAULT=fail:<name>` (the
/// `fault` module): as if `engine` had stopped answering right then.
pub fn injected_failure(engine: &dyn Engine, name: &str) -> EngineError {
    EngineError::Docker(DockerError::Unreachable {
        host: engine.describe(),
        message: format!("fault injection: fail:{name}"),
    })
}

impl EngineError {
    /// Whether the engine is unreachable or unusable, rather than this deploy wrong.
    pub fn is_environment(&self) -> bool {
        match self {
            EngineError::Docker(e) => e.is_environment(),
            EngineError::Swarm(e) => e.is_environment(),
            EngineError::Unsupported { .. } => false,
        }
    }
}

/// One running copy of a colour, where the probes and the proxy reach it: the
/// container of a single host, or one task of a Swarm service at its node's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// The engine's id for it (container name, task id).
    pub id: String,
    /// The node it runs on, when the engine has nodes.
    pub node: Option<String>,
    /// Where it answers.
    pub addr: SocketAddr,
}

/// A machine of the engine that does not answer (a Swarm node that is not ready).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDown {
    /// Its host name, as [`Replica::node`] names it.
    pub hostname: String,
    /// Its address, when the engine knows it.
    pub addr: Option<std::net::IpAddr>,
}

impl std::fmt::Display for NodeDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(addr) => write!(f, "{} ({addr})", self.hostname),
            None => f.write_str(&self.hostname),
        }
    }
}

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
    /// How many copies the engine is asked to run (a stopped container: 0).
    pub desired: u32,
    /// How many copies run now.
    pub running_copies: u32,
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

/// Receives a terminal's output as it comes.
pub type OnBytes<'a> = dyn FnMut(&[u8]) + Send + 'a;

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

    /// The running copies of `color`, where probes and the proxy reach them; empty
    /// when none runs.
    ///
    /// # Errors
    /// [`EngineError`] when the engine cannot be asked.
    async fn replicas(&self, color: Color) -> Result<Vec<Replica>, EngineError>;

    /// Where copies of `color` would run if it were deployed now, for a plan: a
    /// Swarm's placeable nodes at the colour's port; empty when the engine cannot say
    /// before it starts them (a single host: the configured address is the answer).
    ///
    /// # Errors
    /// [`EngineError`] when the engine cannot be asked.
    async fn placeable(&self, _color: Color) -> Result<Vec<Replica>, EngineError> {
        Ok(Vec::new())
    }

    /// Why each copy of `color` that the engine wants but cannot place anywhere
    /// waits (a Swarm task pending with "no suitable node"); empty for a single host.
    ///
    /// # Errors
    /// [`EngineError`] when the engine cannot be asked.
    async fn unplaceable(&self, _color: Color) -> Result<Vec<String>, EngineError> {
        Ok(Vec::new())
    }

    /// The machines of the engine that do not answer (a Swarm's nodes that are not
    /// ready), for errors; empty for a single host.
    ///
    /// # Errors
    /// [`EngineError`] when the engine cannot be asked.
    async fn nodes_down(&self) -> Result<Vec<NodeDown>, EngineError> {
        Ok(Vec::new())
    }

    /// The live and previous colour as the engine itself records them, for a runner
    /// whose own state file does not know (another machine, another state
    /// directory); `None` when the engine records nothing (a single host: the state
    /// file is the record).
    ///
    /// # Errors
    /// [`EngineError`] when the engine cannot be asked.
    async fn recorded_live(&self) -> Result<Option<RecordedLive>, EngineError> {
        Ok(None)
    }

    /// Records `live` (and the colour live before it) in the engine, when it keeps a
    /// record ([`Engine::recorded_live`]); a single host does nothing.
    ///
    /// # Errors
    /// [`EngineError`] when the record cannot be written.
    async fn record_live(&self, live: Color, previous: Option<Color>) -> Result<(), EngineError> {
        let _ = (live, previous);
        Ok(())
    }

    /// Takes the service's deploy lock in the engine, for engines shared by runners on
    /// several machines (a Swarm); `None` when the local lock is enough. Waits up to
    /// `wait` for another holder.
    ///
    /// # Errors
    /// [`EngineError`] naming the holder when it is still held after `wait`.
    async fn take_lock(
        &self,
        owner: &crate::lock::Owner,
        wait: Duration,
    ) -> Result<Option<EngineHold>, EngineError> {
        let _ = (owner, wait);
        Ok(None)
    }

    /// Who holds the service's deploy lock in the engine (a runner on any machine),
    /// for `status`; `None` when nobody does or the engine keeps no lock. A holder
    /// whose lease ran out is not shown: any runner may take the lock from it.
    ///
    /// # Errors
    /// [`EngineError`] when the engine cannot be asked.
    async fn lock_holder(&self) -> Result<Option<crate::lock::Owner>, EngineError> {
        Ok(None)
    }

    /// Removes whatever occupies `color`'s slot; succeeds when it is empty.
    ///
    /// # Errors
    /// [`EngineError`] when the engine refuses.
    async fn clear(&self, color: Color) -> Result<(), EngineError>;

    /// Starts `image` in `color`'s (empty) slot, labelled with `deploy_id`, with the
    /// config's environment and `secrets` (what the `app_secrets` module read); returns the
    /// engine's id for it. `auth` goes with it when other machines must pull the
    /// image (a Swarm's nodes).
    ///
    /// # Errors
    /// [`EngineError`] when it cannot be created or started (e.g. its port is taken).
    async fn start(
        &self,
        color: Color,
        image: &PreparedImage,
        deploy_id: &str,
        auth: Option<&RegistryAuth>,
        secrets: &[(String, Secret)],
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

    /// Runs `job` once to its end (once in the cluster, not once per node), passing
    /// each line of its output to `on_line`, and returns its exit code; what it ran
    /// in is removed afterwards. The caller bounds how long it may take: when it gives
    /// up, [`Engine::remove_one_offs`] removes what is left.
    ///
    /// # Errors
    /// [`EngineError`] when it cannot be created, started or followed.
    async fn run_one_off(
        &self,
        job: &OneOff<'_>,
        on_line: &mut OnLine<'_>,
    ) -> Result<i64, EngineError>;

    /// Removes the one-off jobs `deploy_id` started (a killed runner's hook); succeeds
    /// when there are none. Returns their names.
    ///
    /// # Errors
    /// [`EngineError`] when the engine refuses.
    async fn remove_one_offs(&self, deploy_id: &str) -> Result<Vec<String>, EngineError>;

    /// Runs `job` on a terminal: a TTY of `size` (rows, columns), `input`'s bytes to
    /// its stdin, its output to `output` as it comes; returns its exit code.
    ///
    /// # Errors
    /// [`EngineError::Unsupported`] where the engine cannot attach a terminal to a
    /// one-off job (a Swarm runs it as a task on some node); else as
    /// [`Engine::run_one_off`].
    async fn run_attached(
        &self,
        job: &OneOff<'_>,
        _size: Option<(u16, u16)>,
        _input: tokio::sync::mpsc::Receiver<Vec<u8>>,
        _output: &mut OnBytes<'_>,
    ) -> Result<i64, EngineError> {
        Err(EngineError::Unsupported {
            what: format!("a terminal for `{}`", job.name),
            engine: self.describe(),
            instead: "on a Swarm, run it without a terminal (`cutover exec -- … < /dev/null`), or with `docker exec -it` in a running task".to_owned(),
        })
    }
}

/// A one-off job: a release hook, or `cutover exec`. It runs `argv` in a copy of a
/// colour's container from `image` (that colour's env, secrets, volumes and network)
/// with no published port and no fixed address.
#[derive(Debug, Clone, Copy)]
pub struct OneOff<'a> {
    /// The job's name (a hook's name, `exec`): it names the container.
    pub name: &'a str,
    /// The colour whose settings it runs with.
    pub color: Color,
    /// The image it runs.
    pub image: &'a PreparedImage,
    /// The deploy it belongs to (or the exec's own id): it labels the container.
    pub deploy_id: &'a str,
    /// What it runs, in place of the image's `CMD`.
    pub argv: &'a [String],
    /// The app's secret environment.
    pub secrets: &'a [(String, Secret)],
    /// Registry credentials, for engines whose nodes pull.
    pub auth: Option<&'a RegistryAuth>,
    /// How long the caller lets it run.
    pub timeout: Duration,
}

impl OneOff<'_> {
    /// The name of the container (or service) it runs as.
    pub fn container_name(&self, service: &str) -> String {
        let id = &self.deploy_id[self.deploy_id.len().saturating_sub(8)..];
        format!("{service}-run-{}-{id}", self.name)
    }
}

/// The live and previous colour as an engine records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedLive {
    /// The colour serving.
    pub live: Color,
    /// The colour that served before it, kept for a rollback.
    pub previous: Option<Color>,
    /// The record's number: each record is one above the one before.
    pub serial: u64,
}

/// A deploy lock held in the engine: renewed in the background while held, released
/// by [`EngineHold::release`] (or, best effort, when dropped). What the renewals
/// learn is kept in its [`LockStatus`], which the deploy checks at every step.
#[derive(Debug)]
pub struct EngineHold {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), EngineError>>,
    status: LockStatus,
}

impl EngineHold {
    /// A lock whose holder `task` renews it, recording a loss in `status`, until
    /// `stop` fires or is dropped; then it releases it and says how that went.
    pub fn new(
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<(), EngineError>>,
        status: LockStatus,
    ) -> Self {
        EngineHold {
            stop: Some(stop),
            task,
            status,
        }
    }

    /// Whether the lock is still this runner's, as the last renewal found.
    ///
    /// # Errors
    /// [`SwarmError::LockLost`] naming who holds it now.
    pub fn check(&self) -> Result<(), EngineError> {
        self.status.check()
    }

    /// Releases the lock and waits until the release is written.
    ///
    /// # Errors
    /// [`EngineError`] when it could not be released: it was lost, or the engine
    /// did not answer (then its lease runs out by itself).
    pub async fn release(mut self) -> Result<(), EngineError> {
        drop(self.stop.take());
        match (&mut self.task).await {
            Ok(released) => released,
            // The holder task never panics; a runtime shutting down cancels it, and
            // then the lease runs out by itself.
            Err(_) => Ok(()),
        }
    }
}

impl Drop for EngineHold {
    fn drop(&mut self) {
        // The holder task releases on its own once `stop` is gone; it only needs
        // the runtime to live long enough, which `release` guarantees.
        drop(self.stop.take());
    }
}

/// Whether a held engine lock is still this runner's: set by the task that renews
/// it, read by the deploy at every step boundary.
#[derive(Debug, Clone)]
pub struct LockStatus {
    service: String,
    /// Who holds it instead, once a renewal found it lost.
    lost_to: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl LockStatus {
    /// A lock of `service`, held so far.
    pub fn new(service: &str) -> LockStatus {
        LockStatus {
            service: service.to_owned(),
            lost_to: std::sync::Arc::default(),
        }
    }

    /// Records that the lock is no longer this runner's; `holder` says who has it.
    pub fn lose(&self, holder: String) {
        *self.lost_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(holder);
    }

    /// See [`EngineHold::check`].
    ///
    /// # Errors
    /// [`SwarmError::LockLost`] naming who holds it now.
    pub fn check(&self) -> Result<(), EngineError> {
        match &*self.lost_to.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(holder) => Err(SwarmError::LockLost {
                service: self.service.clone(),
                holder: holder.clone(),
            }
            .into()),
        }
    }
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

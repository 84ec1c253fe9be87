//! [`Swarm`]: the primitives a blue/green deploy needs from a Docker Swarm cluster,
//! reached through one of its managers with bollard's Swarm API (services, tasks,
//! nodes, configs).
//!
//! Each colour is a service `<service>-<colour>`: its tasks run the image by digest,
//! at most one per node, and publish the colour's port in host mode with
//! `endpoint_mode = dnsrr` (no routing mesh: nginx and the probes reach every task at
//! its node's address). The cluster also holds what a runner on another machine must
//! see: the live and previous colour and each colour's image as labels on the
//! services, and the deploy lock as a Swarm config whose labels are only ever written
//! with the version index Swarm gave when they were read (compare-and-swap).
//!
//! This module performs exactly what it is asked; it never decides which colour to
//! touch. It never logs, and a registry password goes only into the `X-Registry-Auth`
//! header of a service create or update (Swarm keeps it with the service so every
//! node can pull) and of a push.

mod job;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use bollard::models::{
    ConfigSpec, EndpointPortConfig, EndpointPortConfigProtocolEnum,
    EndpointPortConfigPublishModeEnum, EndpointSpec, EndpointSpecModeEnum, Mount, MountType,
    NodeSpecAvailabilityEnum, NodeState, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets, TaskSpecPlacement, TaskState,
};
use bollard::query_parameters::{
    InspectServiceOptions, ListNodesOptions, ListSecretsOptionsBuilder, ListTasksOptionsBuilder,
    UpdateConfigOptionsBuilder, UpdateServiceOptionsBuilder,
};
use cutover_base::retry::{self, Deadline, Retryable};

use crate::Color;
use crate::config::{Config, SwarmMode};
use crate::docker::error::{engine_message, status};
use crate::docker::{self, Docker, DockerError, RegistryAuth};
use crate::lock::Owner;
use crate::secret::Secret;

/// Label on a colour's service: the image reference it runs, `name@sha256:...`.
pub const LABEL_DIGEST: &str = "cutover.digest";
/// Label on the colour services: the live colour when the state was recorded.
pub const LABEL_LIVE: &str = "cutover.live";
/// Label on the colour services: the colour that was live before it.
pub const LABEL_PREVIOUS: &str = "cutover.previous";
/// Label on the colour services: a counter of recorded states, so a reader takes the
/// newest when a runner died between writing the two services.
pub const LABEL_STATE_SERIAL: &str = "cutover.state-serial";
/// Label on the lock config: its holder, as the JSON of a [`Owner`].
const LABEL_LOCK_OWNER: &str = "cutover.lock.owner";
/// Label on the lock config: a token only the holder knows, so a renew or release can
/// tell its own hold from a later holder's.
const LABEL_LOCK_TOKEN: &str = "cutover.lock.token";
/// A global service cannot be scaled; retiring one adds this constraint, which no
/// node matches, and resuming removes it.
const RETIRED_CONSTRAINT: &str = "node.id==cutover-retired";
/// The lock config's data (Swarm wants some; the labels carry the lock), base64 of
/// "cutover deploy lock".
const LOCK_DATA: &str = "Y3V0b3ZlciBkZXBsb3kgbG9jaw==";
/// Read-modify-write attempts on a service that Swarm itself updates meanwhile (its
/// update status bumps the version); the deploy lock keeps other runners out.
const UPDATE_ATTEMPTS: u32 = 5;

/// A Swarm operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// The Docker API failed (unreachable engine, refused request, registry).
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// The engine answers but is no Swarm manager.
    #[error(
        "the Docker engine at {host} is not a Swarm manager ({message}); point `engine.host` (or DOCKER_HOST) at a manager node, one where `docker node ls` works"
    )]
    NotManager {
        /// The engine, as the connection describes it.
        host: String,
        /// What the engine said.
        message: String,
    },
    /// The swarm has several nodes and nothing to pull the image from.
    #[error(
        "the swarm has {nodes} nodes and no registry is configured: each node pulls the image itself, so only a registry lets every node run the same bits by digest; set `image.registry` to a registry every node reaches (listed in each node's `insecure-registries` when it speaks plain HTTP)"
    )]
    NeedsRegistry {
        /// How many nodes the swarm has.
        nodes: usize,
    },
    /// A colour's service does not exist.
    #[error(
        "the swarm has no service `{name}`; deploy that colour first (`cutover status` shows what exists)"
    )]
    NoService {
        /// The service's name.
        name: String,
    },
    /// A Docker secret the config names (`container.secrets`) does not exist.
    #[error(
        "the swarm has no Docker secret `{name}` (named by `container.secrets`); create it on a manager with `printf %s \"$VALUE\" | docker secret create {name} -`, then deploy again"
    )]
    NoSecret {
        /// The secret's name.
        name: String,
    },
    /// A push finished without a digest, so the nodes could not be told which bits to run.
    #[error(
        "the registry reported no digest for {reference} and the engine knows none; check that the push reached the registry configured in `image.registry`"
    )]
    NoDigest {
        /// The pushed reference.
        reference: String,
    },
    /// An object kept changing under a read-modify-write.
    #[error(
        "{object} changed while cutover updated it ({attempts} attempts; Swarm said: {message}); something else is updating it: `docker service inspect {object}` shows what, then try again"
    )]
    Conflict {
        /// The service or config.
        object: String,
        /// How many times cutover read and wrote it.
        attempts: u32,
        /// Swarm's last answer.
        message: String,
    },
    /// Another runner holds the service's deploy lock in the cluster.
    #[error(
        "another deploy of {service} holds its lock in the swarm: {holder}; wait for it to finish (its lease ends at {lease_until} unless renewed), or run with --lock-wait"
    )]
    LockHeld {
        /// The service.
        service: String,
        /// Who holds it, as [`Owner::describe`] says.
        holder: String,
        /// When its lease ends (RFC 3339).
        lease_until: String,
    },
    /// Another runner took the lock in the same moment, and has already let it go.
    #[error(
        "another runner took the deploy lock of {service} in the swarm at the same moment as this one; run the command again, or with --lock-wait to queue"
    )]
    LockRace {
        /// The service.
        service: String,
    },
    /// A colour's tasks still ran after it was scaled to 0 and given its grace.
    #[error(
        "{alive} task(s) of {object} still run {} after it was scaled to 0 (container.stop_grace plus a margin); a task that ignores SIGTERM is killed only by its node: check `docker service ps {object}` and the node, then run the command again",
        humantime::format_duration(*.waited)
    )]
    StillRunning {
        /// The colour's service.
        object: String,
        /// How many of its tasks still run.
        alive: u32,
        /// How long cutover waited.
        waited: std::time::Duration,
    },
    /// This runner's hold on the lock was taken over after its lease expired.
    #[error(
        "the deploy lock of {service} in the swarm is no longer this runner's: {holder} holds it now (this runner's lease ran out); this run stopped without touching the cluster further: `cutover status` shows what is where"
    )]
    LockLost {
        /// The service.
        service: String,
        /// Who holds it now (or "nobody").
        holder: String,
    },
}

impl SwarmError {
    /// Whether this is an environment problem (the manager is unreachable or no
    /// manager) rather than a problem with this deploy.
    pub fn is_environment(&self) -> bool {
        match self {
            SwarmError::Docker(e) => e.is_environment(),
            SwarmError::NotManager { .. } => true,
            _ => false,
        }
    }
}

/// A node of the swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node id.
    pub id: String,
    /// Its host name.
    pub hostname: String,
    /// The address the node is reached at (its advertised address).
    pub addr: Option<IpAddr>,
    /// Whether Swarm sees it ready.
    pub ready: bool,
    /// Whether Swarm has given it up (down or disconnected, not merely unknown for a
    /// moment after a leader election): what its containers do is not known.
    pub down: bool,
    /// Whether it takes new tasks (availability `active`, not `pause` or `drain`).
    pub active: bool,
    /// `manager` or `worker`.
    pub role: String,
    /// Its node labels, for placement constraints.
    pub labels: HashMap<String, String>,
}

/// A running task of a colour, where nginx and the probes reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEndpoint {
    /// The task id.
    pub task_id: String,
    /// Its slot in a replicated service.
    pub slot: Option<i64>,
    /// The node it runs on.
    pub node_id: String,
    /// That node's host name.
    pub hostname: String,
    /// That node's address.
    pub node_addr: IpAddr,
    /// The host-mode port it publishes on that node.
    pub port: u16,
    /// The image reference it runs.
    pub image: String,
}

impl TaskEndpoint {
    /// `<node addr>:<port>`, where the task answers.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.node_addr, self.port)
    }
}

/// How many tasks of a colour Swarm wants and has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Tasks whose desired state is running.
    pub desired: u32,
    /// Of those, the ones running.
    pub running: u32,
    /// Containers running, including tasks being shut down, on nodes that are not
    /// down: a down node's tasks stay "running" in Swarm's view until it comes back
    /// (and then its agent stops the ones no longer wanted), so waiting for them
    /// would wait for a node, not for a container.
    pub alive: u32,
}

/// A service's labels and the version index they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLabels {
    /// The labels.
    pub labels: BTreeMap<String, String>,
    /// Swarm's version index of the service when they were read.
    pub version: u64,
}

/// What the cluster records about the service, read from its colour services' labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// The live colour.
    pub live: Option<Color>,
    /// The colour that was live before it.
    pub previous: Option<Color>,
    /// How many states were recorded (0: none).
    pub serial: u64,
    /// The image each existing colour service runs (`name@sha256:...`).
    pub images: BTreeMap<Color, String>,
}

/// The deploy lock as read from the cluster: who holds it, at which version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSnapshot {
    /// The lock config's id, once it exists.
    config_id: Option<String>,
    /// The version index it was read at.
    version: u64,
    /// Its labels then.
    labels: HashMap<String, String>,
    /// The holder then, if any (a holder whose lease expired included).
    pub holder: Option<Owner>,
}

/// This runner's hold on the service's deploy lock in the cluster. It ends with
/// [`Swarm::release`]; a runner that dies leaves it until its lease expires.
#[derive(Debug, Clone)]
pub struct ClusterLock {
    config_id: String,
    token: String,
    owner: Owner,
    /// The holder whose expired lease this hold replaced, if any.
    pub took_over: Option<Owner>,
}

impl ClusterLock {
    /// Who holds it: this runner.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// When its lease ends (RFC 3339), as last written.
    pub fn lease_until(&self) -> &str {
        &self.owner.lease_until
    }
}

/// One service's colours on a Docker Swarm cluster. See the module docs.
#[derive(Debug, Clone)]
pub struct Swarm {
    docker: Docker,
    config: Config,
}

impl Swarm {
    /// The cluster `docker` (a manager) runs, for `config`'s service.
    pub fn new(docker: Docker, config: Config) -> Swarm {
        Swarm { docker, config }
    }

    /// The service `color` runs as: `<service>-<colour>`.
    pub fn service_name(&self, color: Color) -> String {
        docker::container_name(&self.config.service, color)
    }

    /// How long a task is given to stop before it is killed (`container.stop_grace`).
    pub fn stop_grace(&self) -> std::time::Duration {
        self.config.container.stop_grace.get()
    }

    /// The service's name.
    pub fn service(&self) -> String {
        self.config.service.clone()
    }

    /// How long the cluster lock's lease runs (`engine.lock_lease`).
    pub fn lock_lease(&self) -> std::time::Duration {
        self.config.engine.lock_lease()
    }

    /// The name of the service's lock config.
    fn lock_name(&self) -> String {
        format!("{}-cutover-lock", self.config.service)
    }

    fn api(&self, op: &'static str, target: &str, e: bollard::errors::Error) -> SwarmError {
        // 503 is a Swarm endpoint asked of an engine that is no manager.
        if status(&e) == Some(503) {
            return SwarmError::NotManager {
                host: self.docker.host().to_owned(),
                message: engine_message(&e),
            };
        }
        SwarmError::Docker(self.docker.api(op, target, e))
    }

    /// The swarm's nodes.
    ///
    /// # Errors
    /// [`SwarmError::NotManager`] when the engine is no manager; [`SwarmError::Docker`].
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, SwarmError> {
        let nodes = through_election(|| self.docker.client().list_nodes(None::<ListNodesOptions>))
            .await
            .map_err(|e| self.api("list nodes of", "the swarm", e))?;
        Ok(nodes
            .into_iter()
            .map(|n| {
                let status = n.status.unwrap_or_default();
                let spec = n.spec.unwrap_or_default();
                NodeInfo {
                    active: matches!(
                        spec.availability,
                        None | Some(NodeSpecAvailabilityEnum::ACTIVE)
                    ),
                    role: spec.role.map(|r| r.to_string()).unwrap_or_default(),
                    labels: spec.labels.unwrap_or_default(),
                    id: n.id.unwrap_or_default(),
                    hostname: n.description.and_then(|d| d.hostname).unwrap_or_default(),
                    addr: status.addr.as_deref().and_then(|a| a.parse().ok()),
                    ready: matches!(status.state, Some(NodeState::READY)),
                    down: matches!(
                        status.state,
                        Some(NodeState::DOWN | NodeState::DISCONNECTED)
                    ),
                }
            })
            .collect())
    }

    /// Checks that the engine is a manager and that a swarm of several nodes has a
    /// registry to pull from; returns its nodes.
    ///
    /// # Errors
    /// [`SwarmError::NotManager`], [`SwarmError::NeedsRegistry`], [`SwarmError::Docker`].
    pub async fn check_cluster(&self) -> Result<Vec<NodeInfo>, SwarmError> {
        let nodes = self.nodes().await?;
        if nodes.len() > 1 && self.config.image.registry.is_none() {
            return Err(SwarmError::NeedsRegistry { nodes: nodes.len() });
        }
        Ok(nodes)
    }

    /// Pushes the locally built `reference` (`registry/repo:tag`, on the manager's
    /// engine) and returns what the nodes run: `registry/repo@sha256:...`.
    ///
    /// # Errors
    /// [`SwarmError::Docker`] when the push fails; [`SwarmError::NoDigest`] when
    /// neither the registry nor the engine reports a digest.
    pub async fn push_image(
        &self,
        reference: &str,
        auth: &RegistryAuth,
    ) -> Result<String, SwarmError> {
        let (name, _) = docker::split_tag(reference);
        let pushed = self.docker.push_image(reference, auth).await?;
        if let Some(digest) = pushed {
            return Ok(format!("{name}@{digest}"));
        }
        // Some registries leave the digest out of the push stream; the engine records
        // it among the image's repo digests.
        let image = self.docker.inspect_image(reference).await?;
        image
            .into_iter()
            .flat_map(|i| i.digests)
            .find(|d| d.split_once('@').is_some_and(|(repo, _)| repo == name))
            .ok_or_else(|| SwarmError::NoDigest {
                reference: reference.to_owned(),
            })
    }

    /// Creates `color`'s service running `image` (by digest, `name@sha256:...`), or
    /// updates the existing one to it, with the configured replicas or global mode,
    /// constraints, labels and host-mode port; returns the service's name. `auth` goes
    /// with the service when it applies to `image`, so every node can pull;
    /// `secrets` join the environment (Swarm keeps a service's environment in its
    /// spec: `container.secrets`, as Docker secrets, is the way to keep one out).
    ///
    /// # Errors
    /// [`SwarmError::Docker`] when Swarm refuses the spec; [`SwarmError::Conflict`].
    pub async fn deploy_color(
        &self,
        color: Color,
        image: &str,
        deploy_id: &str,
        auth: Option<&RegistryAuth>,
        secrets: &[(String, Secret)],
    ) -> Result<String, SwarmError> {
        let name = self.service_name(color);
        let credentials = auth.and_then(|a| a.credentials_for(image));
        let mut spec = self.service_spec(color, image, deploy_id, secrets);
        // Docker secrets by id, looked up first: a missing one stops the start before
        // the service is touched.
        let docker_secrets = self.docker_secrets().await?;
        if let Some(container) = spec
            .task_template
            .as_mut()
            .and_then(|t| t.container_spec.as_mut())
        {
            container.secrets = Some(docker_secrets);
        }
        match self.inspect(&name).await? {
            None => {
                self.docker
                    .client()
                    .create_service(spec, credentials)
                    .await
                    .map_err(|e| self.api("create service", &name, e))?;
                Ok(name)
            }
            Some(_) => {
                self.modify(&name, credentials, |current| {
                    // The state labels outlive a redeploy of the colour.
                    let kept = current.labels.take().unwrap_or_default();
                    let mut next = spec.clone();
                    let labels = next.labels.get_or_insert_with(HashMap::new);
                    for key in [LABEL_LIVE, LABEL_PREVIOUS, LABEL_STATE_SERIAL] {
                        if let Some(v) = kept.get(key) {
                            labels.insert(key.to_owned(), v.clone());
                        }
                    }
                    *current = next;
                })
                .await
            }
        }
    }

    /// `container.secrets` as the task's secret references: each Docker secret by its
    /// id, as the file `/run/secrets/<name>` (mode 0444, owned by root, Docker's
    /// default).
    ///
    /// # Errors
    /// [`SwarmError::NoSecret`] naming one that does not exist; [`SwarmError::Docker`].
    async fn docker_secrets(&self) -> Result<Vec<TaskSpecContainerSpecSecrets>, SwarmError> {
        let mut references = Vec::new();
        for name in &self.config.container.secrets {
            let filters = HashMap::from([("name", vec![name.as_str()])]);
            let found = through_election(|| {
                self.docker.client().list_secrets(Some(
                    ListSecretsOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                ))
            })
            .await
            .map_err(|e| self.api("list secrets of", "the swarm", e))?;
            // The filter matches name prefixes; only the exact name counts.
            let id = found
                .into_iter()
                .find(|s| s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(name))
                .and_then(|s| s.id)
                .ok_or_else(|| SwarmError::NoSecret { name: name.clone() })?;
            references.push(TaskSpecContainerSpecSecrets {
                file: Some(TaskSpecContainerSpecFile {
                    name: Some(name.clone()),
                    uid: Some("0".to_owned()),
                    gid: Some("0".to_owned()),
                    mode: Some(0o444),
                }),
                secret_id: Some(id),
                secret_name: Some(name.clone()),
            });
        }
        Ok(references)
    }

    /// The spec of `color`'s service running `image`.
    fn service_spec(
        &self,
        color: Color,
        image: &str,
        deploy_id: &str,
        secrets: &[(String, Secret)],
    ) -> ServiceSpec {
        let config = &self.config;
        let cutover_labels = docker::service_labels(&config.service, Some(color), deploy_id);
        let mut service_labels = config.engine.labels.clone();
        service_labels.extend(cutover_labels.clone());
        service_labels.insert(LABEL_DIGEST.to_owned(), image.to_owned());
        let mut container_labels = config.container.labels.clone();
        container_labels.extend(cutover_labels);
        let mut env: Vec<String> = config
            .container
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("CUTOVER_SERVICE={}", config.service));
        env.push(format!("CUTOVER_COLOR={color}"));
        env.push(format!("CUTOVER_DEPLOY_ID={deploy_id}"));
        env.extend(secrets.iter().map(|(k, v)| format!("{k}={}", v.expose())));
        let mode = match config.engine.swarm_replicas() {
            Some(n) => ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(i64::from(n)),
                }),
                ..Default::default()
            },
            None => ServiceSpecMode {
                global: Some(HashMap::new()),
                ..Default::default()
            },
        };
        let published = self.published_port(color);
        ServiceSpec {
            name: Some(self.service_name(color)),
            labels: Some(service_labels.into_iter().collect()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image.to_owned()),
                    labels: Some(container_labels.into_iter().collect()),
                    // `container.command` replaces the image's CMD, which Swarm calls args.
                    args: config.container.command.clone(),
                    env: Some(env),
                    mounts: Some(config.container.volumes.iter().map(|v| mount(v)).collect()),
                    stop_grace_period: Some(
                        i64::try_from(config.container.stop_grace.get().as_nanos())
                            .unwrap_or(i64::MAX),
                    ),
                    ..Default::default()
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: Some(config.engine.constraints.clone()),
                    // Two tasks of a colour on one node would fight over its host port.
                    max_replicas: (config.engine.mode != Some(SwarmMode::Global)).then_some(1),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(mode),
            // An idle colour is replaced whole; stop-first, since a new task cannot
            // bind the host port while the old one on that node holds it.
            update_config: Some(ServiceSpecUpdateConfig {
                parallelism: Some(0),
                order: Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                mode: Some(EndpointSpecModeEnum::DNSRR),
                ports: Some(vec![EndpointPortConfig {
                    protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                    target_port: Some(i64::from(config.container.port)),
                    published_port: Some(i64::from(published)),
                    publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        }
    }

    /// Scales `color` to 0 (retire; the service stays for a rollback).
    ///
    /// # Errors
    /// [`SwarmError::NoService`], [`SwarmError::Conflict`], [`SwarmError::Docker`].
    pub async fn retire(&self, color: Color) -> Result<(), SwarmError> {
        self.set_running(color, false).await
    }

    /// Scales `color` back to its configured replicas (global: every eligible node).
    ///
    /// # Errors
    /// As [`Swarm::retire`].
    pub async fn resume(&self, color: Color) -> Result<(), SwarmError> {
        self.set_running(color, true).await
    }

    async fn set_running(&self, color: Color, running: bool) -> Result<(), SwarmError> {
        let replicas = self.config.engine.swarm_replicas();
        self.modify(&self.service_name(color), None, |spec| match replicas {
            Some(n) => {
                spec.mode = Some(ServiceSpecMode {
                    replicated: Some(ServiceSpecModeReplicated {
                        replicas: Some(if running { i64::from(n) } else { 0 }),
                    }),
                    ..Default::default()
                });
            }
            None => {
                let placement = spec
                    .task_template
                    .get_or_insert_with(Default::default)
                    .placement
                    .get_or_insert_with(Default::default);
                let constraints = placement.constraints.get_or_insert_with(Vec::new);
                constraints.retain(|c| c != RETIRED_CONSTRAINT);
                if !running {
                    constraints.push(RETIRED_CONSTRAINT.to_owned());
                }
            }
        })
        .await
        .map(drop)
    }

    /// Removes `color`'s service; succeeds when it does not exist.
    ///
    /// # Errors
    /// [`SwarmError::Docker`] when Swarm refuses.
    pub async fn remove_color(&self, color: Color) -> Result<(), SwarmError> {
        let name = self.service_name(color);
        match self.docker.client().delete_service(&name).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.api("remove service", &name, e)),
        }
    }

    /// `color`'s tasks whose desired state is running; none when the colour was never
    /// deployed (no service, so no tasks).
    async fn wanted_tasks(&self, color: Color) -> Result<Vec<bollard::models::Task>, SwarmError> {
        let name = self.service_name(color);
        let filters = HashMap::from([
            ("service", vec![name.as_str()]),
            ("desired-state", vec!["running"]),
        ]);
        let tasks = through_election(|| {
            self.docker.client().list_tasks(Some(
                ListTasksOptionsBuilder::default().filters(&filters).build(),
            ))
        })
        .await;
        match tasks {
            Ok(tasks) => Ok(tasks),
            Err(e) if status(&e) == Some(404) => Ok(Vec::new()),
            Err(e) => Err(self.api("list tasks of service", &name, e)),
        }
    }

    /// The running tasks of `color`, each with its node and the host-mode port it
    /// publishes there, ordered by slot.
    ///
    /// # Errors
    /// [`SwarmError::Docker`] when the tasks or nodes cannot be listed.
    pub async fn running_tasks(&self, color: Color) -> Result<Vec<TaskEndpoint>, SwarmError> {
        let tasks = self.wanted_tasks(color).await?;
        let nodes: HashMap<String, NodeInfo> = self
            .nodes()
            .await?
            .into_iter()
            .map(|n| (n.id.clone(), n))
            .collect();
        let mut running: Vec<TaskEndpoint> = tasks
            .into_iter()
            .filter_map(|task| {
                let status = task.status?;
                if status.state != Some(TaskState::RUNNING) {
                    return None;
                }
                let node = nodes.get(task.node_id.as_deref()?)?;
                let port = status
                    .port_status?
                    .ports?
                    .into_iter()
                    .find_map(|p| u16::try_from(p.published_port?).ok())?;
                Some(TaskEndpoint {
                    task_id: task.id.unwrap_or_default(),
                    slot: task.slot,
                    node_id: node.id.clone(),
                    hostname: node.hostname.clone(),
                    node_addr: node.addr?,
                    port,
                    image: task
                        .spec
                        .and_then(|s| s.container_spec)
                        .and_then(|c| c.image)
                        .unwrap_or_default(),
                })
            })
            .collect();
        running.sort_by(|a, b| a.slot.cmp(&b.slot).then_with(|| a.node_id.cmp(&b.node_id)));
        Ok(running)
    }

    /// Why each of `color`'s wanted tasks that Swarm cannot place waits (state
    /// `pending` with "no suitable node …": after a node is lost, its replacement has
    /// nowhere to go while every other node already runs a task of the colour on its
    /// host port); empty when all are placed or the service does not exist.
    ///
    /// # Errors
    /// [`SwarmError::Docker`] when the tasks cannot be listed.
    pub async fn unplaceable(&self, color: Color) -> Result<Vec<String>, SwarmError> {
        Ok(self
            .wanted_tasks(color)
            .await?
            .into_iter()
            .filter_map(|task| {
                let status = task.status?;
                let why = status.err.or(status.message)?;
                (status.state == Some(TaskState::PENDING) && why.contains("no suitable node"))
                    .then_some(why)
            })
            .collect())
    }

    /// Where `color`'s tasks would run if it were deployed now, for `cutover plan`: the
    /// nodes that are ready, take new tasks and meet `engine.constraints`, sorted by
    /// host name, as many as the service has replicas (every one for a global
    /// service), each with the colour's published port. Swarm places the real tasks;
    /// a constraint on anything but a node's role, host name or labels is not judged
    /// here and lets every node through.
    ///
    /// # Errors
    /// [`SwarmError::Docker`] when the nodes cannot be listed.
    pub async fn placeable(&self, color: Color) -> Result<Vec<(String, SocketAddr)>, SwarmError> {
        let port = self.published_port(color);
        let mut nodes: Vec<NodeInfo> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.ready && n.active)
            .filter(|n| self.config.engine.constraints.iter().all(|c| meets(n, c)))
            .collect();
        nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        if let Some(replicas) = self.config.engine.swarm_replicas() {
            nodes.truncate(usize::try_from(replicas).unwrap_or(usize::MAX));
        }
        Ok(nodes
            .into_iter()
            .filter_map(|n| Some((n.hostname, SocketAddr::new(n.addr?, port))))
            .collect())
    }

    /// The host-mode port `color`'s tasks publish on their node.
    fn published_port(&self, color: Color) -> u16 {
        self.config
            .color(color)
            .host_port
            .unwrap_or(self.config.container.port)
    }

    /// How many of `color`'s tasks Swarm wants running and how many containers still
    /// run (a task being shut down counts until its container exits); `None` when the
    /// service does not exist.
    ///
    /// # Errors
    /// [`SwarmError::Docker`] when the service or its tasks cannot be read.
    pub async fn task_counts(&self, color: Color) -> Result<Option<TaskCounts>, SwarmError> {
        let name = self.service_name(color);
        if self.inspect(&name).await?.is_none() {
            return Ok(None);
        }
        let filters = HashMap::from([("service", vec![name.as_str()])]);
        let tasks = through_election(|| {
            self.docker.client().list_tasks(Some(
                ListTasksOptionsBuilder::default().filters(&filters).build(),
            ))
        })
        .await
        .map_err(|e| self.api("list tasks of service", &name, e))?;
        let down: HashSet<String> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.down)
            .map(|n| n.id)
            .collect();
        let mut counts = TaskCounts::default();
        for task in tasks {
            let wanted = task.desired_state == Some(TaskState::RUNNING);
            let running = task.status.and_then(|s| s.state) == Some(TaskState::RUNNING);
            let on_down_node = task.node_id.is_some_and(|id| down.contains(&id));
            counts.desired += u32::from(wanted);
            counts.running += u32::from(wanted && running);
            counts.alive += u32::from(running && !on_down_node);
        }
        Ok(Some(counts))
    }

    /// `color`'s service labels and the version they were read at; `None` when the
    /// service does not exist.
    ///
    /// # Errors
    /// [`SwarmError::Docker`] when the service cannot be inspected.
    pub async fn labels(&self, color: Color) -> Result<Option<ServiceLabels>, SwarmError> {
        Ok(self
            .inspect(&self.service_name(color))
            .await?
            .map(|(spec, version)| ServiceLabels {
                labels: spec.labels.unwrap_or_default().into_iter().collect(),
                version,
            }))
    }

    /// Sets `set` and removes `remove` among `color`'s service labels (a label-only
    /// change: no task restarts).
    ///
    /// # Errors
    /// [`SwarmError::NoService`], [`SwarmError::Conflict`], [`SwarmError::Docker`].
    pub async fn update_labels(
        &self,
        color: Color,
        set: &BTreeMap<String, String>,
        remove: &[&str],
    ) -> Result<(), SwarmError> {
        self.modify(&self.service_name(color), None, |spec| {
            let labels = spec.labels.get_or_insert_with(HashMap::new);
            for key in remove {
                labels.remove(*key);
            }
            labels.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        })
        .await
        .map(drop)
    }

    /// The live and previous colour and each colour's image, as the services' labels
    /// record them (the newest record when a runner died between the two services).
    ///
    /// # Errors
    /// [`SwarmError::Docker`] when a service cannot be inspected.
    pub async fn read_state(&self) -> Result<ClusterState, SwarmError> {
        let mut state = ClusterState::default();
        for color in Color::BOTH {
            if let Some(found) = self.labels(color).await? {
                state.merge(color, &found.labels);
            }
        }
        Ok(state)
    }

    /// Records `live` (and the colour live before it) on every colour service,
    /// `live`'s first, under a serial one above the newest recorded.
    ///
    /// # Errors
    /// [`SwarmError::NoService`] when `live`'s service does not exist;
    /// [`SwarmError::Conflict`], [`SwarmError::Docker`].
    pub async fn record_state(
        &self,
        live: Color,
        previous: Option<Color>,
    ) -> Result<ClusterState, SwarmError> {
        let serial = self.read_state().await?.serial + 1;
        let mut set = BTreeMap::from([
            (LABEL_LIVE.to_owned(), live.to_string()),
            (LABEL_STATE_SERIAL.to_owned(), serial.to_string()),
        ]);
        if let Some(previous) = previous {
            set.insert(LABEL_PREVIOUS.to_owned(), previous.to_string());
        }
        let remove: &[&str] = if previous.is_none() {
            &[LABEL_PREVIOUS]
        } else {
            &[]
        };
        self.update_labels(live, &set, remove).await?;
        match self.update_labels(live.other(), &set, remove).await {
            Ok(()) | Err(SwarmError::NoService { .. }) => {}
            Err(e) => return Err(e),
        }
        self.read_state().await
    }

    /// Reads the deploy lock: who holds it, at which version.
    ///
    /// # Errors
    /// [`SwarmError::NotManager`], [`SwarmError::Docker`].
    pub async fn read_lock(&self) -> Result<LockSnapshot, SwarmError> {
        let name = self.lock_name();
        match through_election(|| self.docker.client().inspect_config(&name)).await {
            Ok(config) => {
                let labels = config.spec.and_then(|s| s.labels).unwrap_or_default();
                Ok(LockSnapshot {
                    config_id: config.id,
                    version: config.version.and_then(|v| v.index).unwrap_or(0),
                    holder: holder_of(&labels),
                    labels,
                })
            }
            Err(e) if status(&e) == Some(404) => Ok(LockSnapshot {
                config_id: None,
                version: 0,
                labels: HashMap::new(),
                holder: None,
            }),
            Err(e) => Err(self.api("inspect config", &name, e)),
        }
    }

    /// Takes the deploy lock for `owner`: [`Swarm::read_lock`] then [`Swarm::take_lock`].
    ///
    /// # Errors
    /// As [`Swarm::take_lock`].
    pub async fn claim_lock(&self, owner: &Owner) -> Result<ClusterLock, SwarmError> {
        let seen = self.read_lock().await?;
        self.take_lock(&seen, owner).await
    }

    /// Takes the deploy lock for `owner` as it was `seen`: refused when `seen` shows a
    /// holder whose lease runs, and when the lock changed since `seen` (the write
    /// carries `seen`'s version, and Swarm refuses a stale one): then the error names
    /// whoever holds it now.
    ///
    /// # Errors
    /// [`SwarmError::LockHeld`] naming the holder; [`SwarmError::Docker`].
    pub async fn take_lock(
        &self,
        seen: &LockSnapshot,
        owner: &Owner,
    ) -> Result<ClusterLock, SwarmError> {
        // A holder whose lease ran out, or that died on this very machine, is taken
        // over (the write below still loses to any runner that took it meanwhile).
        if let Some(holder) = seen
            .holder
            .as_ref()
            .filter(|h| !h.lease_expired() && !h.gone_from_this_host())
        {
            return Err(self.held(holder));
        }
        // Stamped now, not when the owner was made: a runner that waited longer than
        // a lease must not write one that already ran out.
        let owner = owner.with_lease(self.config.engine.lock_lease());
        let token = ulid::Ulid::generate().to_string();
        let mut labels = seen.labels.clone();
        labels.insert(LABEL_LOCK_OWNER.to_owned(), owner_label(&owner));
        labels.insert(LABEL_LOCK_TOKEN.to_owned(), token.clone());
        let written = match &seen.config_id {
            None => {
                labels.insert(
                    docker::LABEL_SERVICE.to_owned(),
                    self.config.service.clone(),
                );
                self.create_lock(labels).await
            }
            Some(id) => self.write_lock(id, seen.version, labels).await,
        };
        let config_id = match written {
            Ok(config_id) => config_id,
            Err(Written::Stale) => {
                let now = self.read_lock().await?;
                // A write retried through a leader election may have landed the
                // first time: then the lock carries this runner's token.
                match now.config_id.clone() {
                    Some(id) if now.labels.get(LABEL_LOCK_TOKEN) == Some(&token) => id,
                    _ => return Err(self.lost_race(&now)),
                }
            }
            Err(Written::Failed(e)) => return Err(e),
        };
        Ok(ClusterLock {
            config_id,
            token,
            owner,
            took_over: seen.holder.clone(),
        })
    }

    /// Renews `lock`'s lease.
    ///
    /// # Errors
    /// [`SwarmError::LockLost`] when another runner holds it now; [`SwarmError::Docker`].
    pub async fn renew(&self, lock: &mut ClusterLock) -> Result<(), SwarmError> {
        let owner = lock.owner.with_lease(self.config.engine.lock_lease());
        let seen = self.own_lock(lock).await?;
        let mut labels = seen.labels.clone();
        labels.insert(LABEL_LOCK_OWNER.to_owned(), owner_label(&owner));
        self.rewrite_lock(lock, &seen, labels).await?;
        lock.owner = owner;
        Ok(())
    }

    /// Releases `lock`.
    ///
    /// # Errors
    /// [`SwarmError::LockLost`] when another runner took it over; [`SwarmError::Docker`].
    pub async fn release(&self, lock: ClusterLock) -> Result<(), SwarmError> {
        let seen = self.own_lock(&lock).await?;
        let mut labels = seen.labels.clone();
        labels.remove(LABEL_LOCK_OWNER);
        labels.remove(LABEL_LOCK_TOKEN);
        self.rewrite_lock(&lock, &seen, labels).await
    }

    /// Checks that `lock` still holds the lock: every write that changes a colour or
    /// the live record checks first, so a runner whose lock was taken over stops
    /// instead of writing over the new holder's deploy.
    ///
    /// # Errors
    /// [`SwarmError::LockLost`] naming who holds it now; [`SwarmError::Docker`].
    pub async fn check_lock(&self, lock: &ClusterLock) -> Result<(), SwarmError> {
        self.own_lock(lock).await.map(drop)
    }

    /// The lock as it is now, when `lock` still holds it.
    async fn own_lock(&self, lock: &ClusterLock) -> Result<LockSnapshot, SwarmError> {
        let seen = self.read_lock().await?;
        if seen.labels.get(LABEL_LOCK_TOKEN) != Some(&lock.token) {
            return Err(self.lost(seen.holder.as_ref()));
        }
        Ok(seen)
    }

    /// Writes `labels` at the version `seen` was read at; a stale version means
    /// another runner wrote the lock in between.
    async fn rewrite_lock(
        &self,
        lock: &ClusterLock,
        seen: &LockSnapshot,
        labels: HashMap<String, String>,
    ) -> Result<(), SwarmError> {
        match self
            .write_lock(&lock.config_id, seen.version, labels.clone())
            .await
        {
            Ok(_) => Ok(()),
            Err(Written::Stale) => {
                let now = self.read_lock().await?;
                // A write retried through a leader election may have landed the
                // first time.
                if now.labels == labels {
                    return Ok(());
                }
                Err(self.lost(now.holder.as_ref()))
            }
            Err(Written::Failed(e)) => Err(e),
        }
    }

    /// The lock config with `labels` (only labels may change once it exists).
    fn lock_spec(&self, labels: HashMap<String, String>) -> ConfigSpec {
        ConfigSpec {
            name: Some(self.lock_name()),
            labels: Some(labels),
            data: Some(LOCK_DATA.to_owned()),
            ..Default::default()
        }
    }

    async fn create_lock(&self, labels: HashMap<String, String>) -> Result<String, Written> {
        let name = self.lock_name();
        match self
            .docker
            .client()
            .create_config(self.lock_spec(labels))
            .await
        {
            Ok(created) => Ok(created.id),
            // Another runner created it first: as good as a stale version.
            Err(e) if status(&e) == Some(409) => Err(Written::Stale),
            Err(e) => Err(Written::Failed(self.api("create config", &name, e))),
        }
    }

    async fn write_lock(
        &self,
        id: &str,
        version: u64,
        labels: HashMap<String, String>,
    ) -> Result<String, Written> {
        let name = self.lock_name();
        let options = UpdateConfigOptionsBuilder::default()
            .version(i64::try_from(version).unwrap_or(i64::MAX))
            .build();
        let spec = self.lock_spec(labels);
        let write = || {
            self.docker
                .client()
                .update_config(id, spec.clone(), options.clone())
        };
        match versioned_write(write).await {
            Ok(()) => Ok(id.to_owned()),
            Err(Versioned::Stale) => Err(Written::Stale),
            Err(Versioned::Refused(e)) => Err(Written::Failed(self.api("update config", &name, e))),
        }
    }

    /// The error for a runner whose write lost to another's, as the lock is `now`:
    /// names the winner, or says it came and went.
    fn lost_race(&self, now: &LockSnapshot) -> SwarmError {
        match &now.holder {
            Some(holder) => self.held(holder),
            None => SwarmError::LockRace {
                service: self.config.service.clone(),
            },
        }
    }

    fn held(&self, holder: &Owner) -> SwarmError {
        SwarmError::LockHeld {
            service: self.config.service.clone(),
            holder: holder.describe(),
            lease_until: holder.lease_until.clone(),
        }
    }

    fn lost(&self, holder: Option<&Owner>) -> SwarmError {
        SwarmError::LockLost {
            service: self.config.service.clone(),
            holder: holder.map_or_else(|| "nobody".to_owned(), Owner::describe),
        }
    }

    /// The service `name`'s spec and version; `None` when it does not exist.
    async fn inspect(&self, name: &str) -> Result<Option<(ServiceSpec, u64)>, SwarmError> {
        match through_election(|| {
            self.docker
                .client()
                .inspect_service(name, None::<InspectServiceOptions>)
        })
        .await
        {
            Ok(service) => Ok(Some((
                service.spec.unwrap_or_default(),
                service.version.and_then(|v| v.index).unwrap_or(0),
            ))),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.api("inspect service", name, e)),
        }
    }

    /// Reads the service `name`, applies `change` to its spec and writes it back at
    /// the version read, again when Swarm updated it in between; returns its id.
    async fn modify(
        &self,
        name: &str,
        credentials: Option<bollard::auth::DockerCredentials>,
        change: impl Fn(&mut ServiceSpec),
    ) -> Result<String, SwarmError> {
        let attempt = || async {
            let Some((mut spec, version)) = self.inspect(name).await.map_err(Written::Failed)?
            else {
                return Err(Written::Failed(SwarmError::NoService {
                    name: name.to_owned(),
                }));
            };
            change(&mut spec);
            let options = UpdateServiceOptionsBuilder::default()
                .version(i32::try_from(version).unwrap_or(i32::MAX))
                // Without new credentials, keep those the service was given.
                .registry_auth_from("spec")
                .build();
            // If a try landed before an election hid its answer, the repeat is
            // refused as stale and the next attempt reads the service again.
            let write = || {
                self.docker.client().update_service(
                    name,
                    spec.clone(),
                    options.clone(),
                    credentials.clone(),
                )
            };
            match versioned_write(write).await {
                Ok(_) => Ok(name.to_owned()),
                Err(Versioned::Stale) => Err(Written::Stale),
                Err(Versioned::Refused(e)) => {
                    Err(Written::Failed(self.api("update service", name, e)))
                }
            }
        };
        match attempt
            .retry(retry::attempts(UPDATE_ATTEMPTS))
            .when(|e| matches!(e, Written::Stale))
            .await
        {
            Ok(id) => Ok(id),
            Err(Written::Stale) => Err(SwarmError::Conflict {
                object: name.to_owned(),
                attempts: UPDATE_ATTEMPTS,
                message: "update out of sequence".to_owned(),
            }),
            Err(Written::Failed(e)) => Err(e),
        }
    }
}

/// How a versioned write ended when it did not succeed.
enum Written {
    /// The version was stale: someone wrote the object since it was read.
    Stale,
    /// Anything else.
    Failed(SwarmError),
}

impl ClusterState {
    /// Takes `color`'s service labels into the state: its image, and the live and
    /// previous colour when its record is the newest seen.
    fn merge(&mut self, color: Color, labels: &BTreeMap<String, String>) {
        if let Some(image) = labels.get(LABEL_DIGEST) {
            self.images.insert(color, image.clone());
        }
        let serial = labels
            .get(LABEL_STATE_SERIAL)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        if serial > self.serial {
            self.serial = serial;
            self.live = labels.get(LABEL_LIVE).and_then(|c| c.parse().ok());
            self.previous = labels.get(LABEL_PREVIOUS).and_then(|c| c.parse().ok());
        }
    }
}

/// The holder a lock config's labels name, if any.
/// Whether `node` meets the placement constraint `constraint` (`node.role==manager`,
/// `node.hostname!=a`, `node.labels.zone==eu`); one this cannot judge counts as met.
fn meets(node: &NodeInfo, constraint: &str) -> bool {
    let (key, want, equal) = match constraint.split_once("!=") {
        Some((k, v)) => (k, v, false),
        None => match constraint.split_once("==") {
            Some((k, v)) => (k, v, true),
            None => return true,
        },
    };
    let (key, want) = (key.trim(), want.trim());
    let have = match key {
        "node.role" => Some(node.role.as_str()),
        "node.hostname" => Some(node.hostname.as_str()),
        _ => match key.strip_prefix("node.labels.") {
            Some(label) => node.labels.get(label).map(String::as_str),
            None => return true,
        },
    };
    (have == Some(want)) == equal
}

fn holder_of(labels: &HashMap<String, String>) -> Option<Owner> {
    labels
        .get(LABEL_LOCK_OWNER)
        .and_then(|json| serde_json::from_str(json).ok())
}

fn owner_label(owner: &Owner) -> String {
    // An Owner is plain strings and a number: it always serializes.
    serde_json::to_string(owner).unwrap_or_default()
}

/// How long a read or a versioned write waits out a leader election before its error
/// counts.
const ELECTION: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs a read (or a [`versioned_write`]), again while the managers have no leader:
/// Swarm answers 500 ("does
/// not have a leader", a raft deadline) during an election, which a manager that
/// rejoins after a network split can force. A deploy rides that out instead of
/// failing on it.
async fn through_election<T, F, Fut>(read: F) -> Result<T, bollard::errors::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, bollard::errors::Error>>,
{
    let deadline = Deadline::after(ELECTION);
    read.retry(retry::every(std::time::Duration::from_millis(500)))
        .when(|e| in_election(e) && deadline.open())
        .await
}

/// How a versioned write that did not succeed ended.
#[derive(Debug)]
enum Versioned {
    /// Its version was stale: the object changed since it was read (or an earlier
    /// try of this very write landed).
    Stale,
    /// Anything else Swarm answered.
    Refused(bollard::errors::Error),
}

/// Runs a versioned write (an update at the version index it was read at) through a
/// leader election, like a read: repeating it is safe, because a repeat of a write
/// that landed carries a version Swarm has moved past and comes back stale, which
/// the caller checks (it reads again, or compares what is there with what it wrote).
async fn versioned_write<T, F, Fut>(write: F) -> Result<T, Versioned>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, bollard::errors::Error>>,
{
    match through_election(write).await {
        Ok(value) => Ok(value),
        Err(e) if is_stale_version(&e) => Err(Versioned::Stale),
        Err(e) => Err(Versioned::Refused(e)),
    }
}

/// Whether Swarm refused because its managers are electing a leader.
fn in_election(e: &bollard::errors::Error) -> bool {
    let message = engine_message(e);
    status(e) == Some(500)
        && (message.contains("does not have a leader")
            || message.contains("DeadlineExceeded")
            || message.contains("context deadline exceeded"))
}

/// Swarm refuses a write carrying an old version index with "update out of sequence".
fn is_stale_version(e: &bollard::errors::Error) -> bool {
    engine_message(e).contains("out of sequence")
}

/// A `source:target[:ro]` volume as a Swarm mount: a bind mount for an absolute
/// source, else a named volume.
fn mount(volume: &str) -> Mount {
    let mut parts = volume.splitn(3, ':');
    let source = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let read_only = parts
        .next()
        .is_some_and(|options| options.split(',').any(|o| o == "ro"));
    Mount {
        source: Some(source.to_owned()),
        target: Some(target.to_owned()),
        typ: Some(if source.starts_with('/') {
            MountType::BIND
        } else {
            MountType::VOLUME
        }),
        read_only: Some(read_only),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swarm_said(status_code: u16, message: &str) -> bollard::errors::Error {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        }
    }

    #[test]
    fn placement_constraints_on_role_hostname_and_labels_are_judged_and_others_let_through() {
        let node = NodeInfo {
            id: "n1".to_owned(),
            hostname: "node-a".to_owned(),
            addr: None,
            ready: true,
            down: false,
            active: true,
            role: "worker".to_owned(),
            labels: HashMap::from([("zone".to_owned(), "eu".to_owned())]),
        };
        assert!(meets(&node, "node.role==worker"));
        assert!(!meets(&node, "node.role == manager"));
        assert!(meets(&node, "node.hostname!=node-b"));
        assert!(!meets(&node, "node.hostname!=node-a"));
        assert!(meets(&node, "node.labels.zone==eu"));
        assert!(!meets(&node, "node.labels.zone==us"));
        assert!(
            !meets(&node, "node.labels.rack==r1"),
            "a missing label is no match"
        );
        assert!(meets(&node, "node.labels.rack!=r1"));
        assert!(meets(&node, "engine.labels.os==linux"), "not judged here");
    }

    #[tokio::test]
    async fn a_versioned_write_rides_out_an_election_and_a_repeat_that_landed_comes_back_stale() {
        // Two answers hidden by an election, then the repeat of a write that had
        // landed the first time: stale, for the caller to check.
        let mut answers = vec![
            Err(swarm_said(
                500,
                "rpc error: code = Unknown desc = update out of sequence",
            )),
            Err(swarm_said(500, "The swarm does not have a leader")),
            Err(swarm_said(500, "context deadline exceeded")),
        ];
        let tries = std::cell::Cell::new(0);
        let written: Result<(), Versioned> = versioned_write(|| {
            tries.set(tries.get() + 1);
            std::future::ready(answers.pop().expect("no more tries than answers"))
        })
        .await;
        assert!(matches!(written, Err(Versioned::Stale)), "{written:?}");
        assert_eq!(tries.get(), 3);

        let mut answers = vec![Ok(()), Err(swarm_said(500, "does not have a leader"))];
        let written = versioned_write(|| std::future::ready(answers.pop().unwrap())).await;
        assert!(written.is_ok());

        // Anything else is not retried.
        let tries = std::cell::Cell::new(0);
        let written: Result<(), Versioned> = versioned_write(|| {
            tries.set(tries.get() + 1);
            std::future::ready(Err(swarm_said(400, "invalid spec")))
        })
        .await;
        assert!(matches!(written, Err(Versioned::Refused(_))));
        assert_eq!(tries.get(), 1);
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn cluster_state_takes_the_newest_record_of_the_two_services() {
        let mut state = ClusterState::default();
        // A runner died after writing green (serial 4) and before blue (still 3).
        state.merge(
            Color::Blue,
            &labels(&[
                (LABEL_DIGEST, "r:5000/hello@sha256:aa"),
                (LABEL_LIVE, "blue"),
                (LABEL_PREVIOUS, "green"),
                (LABEL_STATE_SERIAL, "3"),
            ]),
        );
        state.merge(
            Color::Green,
            &labels(&[
                (LABEL_DIGEST, "r:5000/hello@sha256:bb"),
                (LABEL_LIVE, "green"),
                (LABEL_PREVIOUS, "blue"),
                (LABEL_STATE_SERIAL, "4"),
            ]),
        );
        assert_eq!(state.live, Some(Color::Green));
        assert_eq!(state.previous, Some(Color::Blue));
        assert_eq!(state.serial, 4);
        assert_eq!(state.images[&Color::Blue], "r:5000/hello@sha256:aa");
    }

    #[test]
    fn no_labels_is_no_state() {
        let mut state = ClusterState::default();
        state.merge(Color::Blue, &BTreeMap::new());
        assert_eq!(state, ClusterState::default());
    }

    #[test]
    fn volumes_become_bind_mounts_or_named_volumes() {
        let bind = mount("/srv/data:/data:ro");
        assert_eq!(bind.typ, Some(MountType::BIND));
        assert_eq!(bind.read_only, Some(true));
        let named = mount("cache:/cache");
        assert_eq!(named.typ, Some(MountType::VOLUME));
        assert_eq!(named.target.as_deref(), Some("/cache"));
        assert_eq!(named.read_only, Some(false));
    }
}

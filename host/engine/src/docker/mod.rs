//! Docker through bollard: images (build, tag, push, pull, list, remove), networks, and
//! the containers of each colour.
//!
//! This module owns every call to the Docker engine and speaks the API version the
//! engine supports (negotiated at [`Docker::connect`]; Docker 20.10 is API 1.41, and
//! only calls that exist there are used), on the local socket or on a remote engine
//! over `tcp://` (with TLS) or `ssh://` (see [`Endpoint`]). It decides no policy:
//! which colour, which image and when to stop are the deploy's business. It never
//! logs, never puts a registry password anywhere but the `X-Registry-Auth` header
//! bollard sends, and never shells out to the local `docker` CLI (an `ssh://` engine
//! is reached through `ssh` and the remote's `docker system dial-stdio`).

mod build_context;
pub(crate) mod error;
mod ssh;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointIpamConfig, EndpointSettings,
    HostConfig, ImageInspect, ImageSummary, Ipam, IpamConfig, NetworkCreateRequest,
    NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, BuildImageOptionsBuilder, CreateContainerOptionsBuilder,
    CreateImageOptionsBuilder, InspectContainerOptions, InspectNetworkOptions,
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, LogsOptionsBuilder,
    PushImageOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;

pub use error::DockerError;

use crate::Color;
use crate::config::{EngineConfig, NetworkConfig, TlsFiles};
use crate::secret::Secret;

/// Label naming the service a container, image or network belongs to.
pub const LABEL_SERVICE: &str = "cutover.service";
/// Label naming a container's colour.
pub const LABEL_COLOR: &str = "cutover.color";
/// Label naming the deploy that created a container or image.
pub const LABEL_DEPLOY: &str = "cutover.deploy-id";
/// Label marking a one-off container (a release hook, `cutover exec`) with its job's name.
pub const LABEL_ONE_OFF: &str = "cutover.one-off";

/// The socket used when `DOCKER_HOST` is not set.
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
/// How long connecting may take before the engine counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// bollard's limit on waiting for a response's headers (streams are not limited).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How many of the builder's last output lines a build error carries.
const BUILD_TAIL: usize = 20;
/// Builds tried when a cached layer vanishes mid-build (see [`is_cache_race`]).
const BUILD_ATTEMPTS: u32 = 3;

/// The container name of `service`'s `color` slot: `<service>-<color>`.
pub fn container_name(service: &str, color: Color) -> String {
    format!("{service}-{color}")
}

/// The `cutover.*` labels of a container or image cutover makes for `service`.
pub fn service_labels(
    service: &str,
    color: Option<Color>,
    deploy_id: &str,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_SERVICE.to_owned(), service.to_owned()),
        (LABEL_DEPLOY.to_owned(), deploy_id.to_owned()),
    ]);
    if let Some(color) = color {
        labels.insert(LABEL_COLOR.to_owned(), color.to_string());
    }
    labels
}

/// An image build through the engine's (legacy) builder.
#[derive(Debug, Clone)]
pub struct BuildRequest<'a> {
    /// The context directory; its `.dockerignore` is honoured.
    pub context: &'a Path,
    /// The Dockerfile, relative to the context.
    pub dockerfile: &'a str,
    /// Build arguments.
    pub args: &'a BTreeMap<String, String>,
    /// The tag to give the image, e.g. `hello:3f2a9c1`.
    pub tag: &'a str,
    /// Labels to put on the image.
    pub labels: &'a BTreeMap<String, String>,
}

/// What cutover needs to know about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image id, `sha256:...`.
    pub id: String,
    /// Its tags, `repo:tag`.
    pub tags: Vec<String>,
    /// Its registry digests, `repo@sha256:...` (empty until pushed or pulled).
    pub digests: Vec<String>,
    /// Creation time, seconds since the Unix epoch (0 when the engine gave none).
    pub created: i64,
    /// The image's labels.
    pub labels: BTreeMap<String, String>,
}

/// Credentials for one registry. `Debug` shows the password as `***`. They are only
/// ever sent with a push or pull of an image on that registry (see
/// [`RegistryAuth::applies_to`]): the engine hands whatever credentials a pull carries
/// to the registry of the image, whichever that is.
#[derive(Debug, Clone)]
pub struct RegistryAuth {
    /// `host:port` of the registry.
    pub server: String,
    /// The user.
    pub username: String,
    /// The password (from the environment variable the config names).
    pub password: Secret,
}

impl RegistryAuth {
    /// Whether `reference` names an image on this registry, the registry host being
    /// read as Docker reads it (see [`registry_of`]).
    pub fn applies_to(&self, reference: &str) -> bool {
        normalize_registry(&self.server).eq_ignore_ascii_case(registry_of(reference))
    }

    /// The credentials to send with a push or pull of `reference`: none for an image
    /// on another registry.
    pub(crate) fn credentials_for(&self, reference: &str) -> Option<DockerCredentials> {
        self.applies_to(reference).then(|| self.credentials())
    }

    fn credentials(&self) -> DockerCredentials {
        DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.expose().to_owned()),
            serveraddress: Some(self.server.clone()),
            ..Default::default()
        }
    }
}

/// How to run one colour's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The container name (see [`container_name`]).
    pub name: String,
    /// The image reference or id.
    pub image: String,
    /// Labels (see [`service_labels`]); the caller includes the `cutover.*` ones.
    pub labels: BTreeMap<String, String>,
    /// Environment variables, in order.
    pub env: Vec<(String, String)>,
    /// Secret environment variables, after `env`: exposed only in the API request.
    pub secret_env: Vec<(String, Secret)>,
    /// Bind mounts and volumes, `source:target[:options]`.
    pub binds: Vec<String>,
    /// The TCP port the application listens on inside the container.
    pub port: u16,
    /// The host address and port `port` is published on; none to publish nothing.
    pub publish: Option<SocketAddr>,
    /// A user-defined network to attach to instead of the default bridge.
    pub network: Option<String>,
    /// A fixed IPv4 address on `network`.
    pub ip: Option<Ipv4Addr>,
    /// Replaces the image's CMD.
    pub command: Option<Vec<String>>,
    /// How long the application gets after SIGTERM before SIGKILL; also stored as
    /// the container's stop timeout (rounded up to whole seconds).
    pub stop_grace: Duration,
}

/// What cutover needs to know about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The container id.
    pub id: String,
    /// Its name, without Docker's leading `/`.
    pub name: String,
    /// The image reference it was created from.
    pub image: String,
    /// The id of that image.
    pub image_id: String,
    /// Whether it is running.
    pub running: bool,
    /// Docker's state: `created`, `running`, `exited`, `dead`, ...
    pub status: String,
    /// The exit code, once it has exited.
    pub exit_code: Option<i64>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its IP address on its first network by name (a user-defined network when it is
    /// on one), if any.
    pub ip: Option<String>,
}

/// A connection to the Docker engine. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Docker {
    client: bollard::Docker,
    /// Where the engine was found, for messages.
    host: String,
}

/// Where the engine is and how to reach it, once the environment has had its say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `unix:///path`, `tcp://host:port` or `ssh://[user@]host[:port]`.
    pub host: String,
    /// Client certificates, for a `tcp://` engine with `--tlsverify`.
    pub tls: Option<TlsFiles>,
    /// Where `host` came from, for messages: `DOCKER_HOST`, `engine.host`, ...
    pub origin: String,
}

impl Endpoint {
    /// The engine the docker CLI would use with `engine` as its context: `DOCKER_HOST`
    /// wins when set (with `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` for its TLS);
    /// else `engine.host` and `engine.tls`, or the env's certificates when the config
    /// has none and `DOCKER_TLS_VERIFY` is set; else the local socket. A `tcp://`
    /// address without a port gets the CLI's default, 2376 with TLS and 2375 without.
    /// `env` reads a variable (the process environment outside tests).
    pub fn resolve(engine: &EngineConfig, env: impl Fn(&str) -> Option<String>) -> Endpoint {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let env_tls = || {
            env("DOCKER_TLS_VERIFY")?;
            let dir = env("DOCKER_CERT_PATH")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|home| Path::new(&home).join(".docker")))?;
            Some(TlsFiles::in_dir(&dir))
        };
        let (host, tls, origin) = match (env("DOCKER_HOST"), &engine.host) {
            (Some(host), _) => (host, env_tls(), "DOCKER_HOST".to_owned()),
            (None, Some(host)) => (
                host.clone(),
                engine.tls.clone().or_else(env_tls),
                "engine.host".to_owned(),
            ),
            (None, None) => (
                DEFAULT_SOCKET.to_owned(),
                None,
                "the default socket; DOCKER_HOST and engine.host are not set".to_owned(),
            ),
        };
        let tls = tls.filter(|_| host.starts_with("tcp://"));
        let host = match host.strip_prefix("tcp://") {
            Some(rest) if !rest.trim_end_matches('/').contains(':') => format!(
                "tcp://{}:{}",
                rest.trim_end_matches('/'),
                if tls.is_some() { 2376 } else { 2375 }
            ),
            _ => host,
        };
        Endpoint { host, tls, origin }
    }

    /// The endpoint as messages show it: the address, how it is secured, its origin.
    fn describe(&self) -> String {
        match &self.tls {
            Some(tls) => format!(
                "{} with TLS (CA {}, certificate {}, key {}; from {})",
                self.host,
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display(),
                self.origin
            ),
            None => format!("{} (from {})", self.host, self.origin),
        }
    }
}

impl Docker {
    /// Connects to the engine `engine` names, or the one `DOCKER_HOST` names (see
    /// [`Endpoint::resolve`]), negotiates the API version down to what the engine
    /// supports, and checks that it answers.
    ///
    /// # Errors
    /// [`DockerError::Unreachable`] when the engine cannot be reached or does not
    /// answer within 15 s; the message names the address and what to check.
    pub async fn connect(engine: &EngineConfig) -> Result<Docker, DockerError> {
        Self::open(&Endpoint::resolve(engine, |name| std::env::var(name).ok())).await
    }

    /// As [`Docker::connect`], at `address` (`unix:///path` or `tcp://host:port`)
    /// whatever `DOCKER_HOST` says.
    ///
    /// # Errors
    /// As [`Docker::connect`].
    pub async fn connect_to(address: &str) -> Result<Docker, DockerError> {
        Self::open(&Endpoint {
            host: address.to_owned(),
            tls: None,
            origin: "the caller of Docker::connect_to".to_owned(),
        })
        .await
    }

    /// Connects to `endpoint`.
    ///
    /// # Errors
    /// As [`Docker::connect`].
    pub async fn open(endpoint: &Endpoint) -> Result<Docker, DockerError> {
        let host = endpoint.describe();
        let unreachable = |message: String| DockerError::Unreachable {
            host: host.clone(),
            message,
        };
        let address = endpoint.host.as_str();
        let ssh = if address.starts_with("ssh://") {
            Some(ssh::SshTarget::parse(address).map_err(unreachable)?)
        } else {
            None
        };
        let connecting = async {
            let bollard_error = |e: bollard::errors::Error| unreachable(error::with_causes(&e));
            let client = match (&ssh, &endpoint.tls) {
                (Some(target), _) => {
                    target.check().await.map_err(unreachable)?;
                    target.client(REQUEST_TIMEOUT).map_err(bollard_error)?
                }
                (None, Some(files)) => {
                    tls::client(address, files, REQUEST_TIMEOUT).map_err(unreachable)?
                }
                (None, None) => {
                    bollard::Docker::connect_with_host(address).map_err(bollard_error)?
                }
            }
            .with_timeout(REQUEST_TIMEOUT)
            .with_request_modifier(unversioned_version_endpoint);
            let negotiate = async {
                let client = client.negotiate_version().await?;
                client.ping().await?;
                Ok::<_, bollard::errors::Error>(client)
            };
            negotiate
                .await
                .map_err(|e| unreachable(error::engine_message(&e)))
        };
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(client) => client?,
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        Ok(Docker { client, host })
    }

    /// Where the engine was found: its address, TLS files and where the address came
    /// from.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The bollard client, for the other engine kinds' calls (the Swarm API).
    pub(crate) fn client(&self) -> &bollard::Docker {
        &self.client
    }

    /// Maps a bollard error: transport failures become [`DockerError::Unreachable`].
    pub(crate) fn api(
        &self,
        op: &'static str,
        target: &str,
        e: bollard::errors::Error,
    ) -> DockerError {
        if error::is_transport(&e) {
            DockerError::Unreachable {
                host: self.host.clone(),
                message: format!("{op} {target}: {}", error::with_causes(&e)),
            }
        } else {
            DockerError::Api {
                op,
                target: target.to_owned(),
                source: e,
            }
        }
    }

    /// Builds an image from `req.context` and tags it `req.tag`, passing each line the
    /// builder prints to `on_line`.
    ///
    /// # Errors
    /// [`DockerError::Context`] when the context or Dockerfile cannot be read;
    /// [`DockerError::Build`] with the builder's message and last output lines when
    /// the build fails; [`DockerError::Unreachable`] when the engine goes away.
    pub async fn build_image(
        &self,
        req: &BuildRequest<'_>,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ImageInfo, DockerError> {
        let context_dir = req.context.to_owned();
        let dockerfile = req.dockerfile.to_owned();
        let tar =
            tokio::task::spawn_blocking(move || build_context::archive(&context_dir, &dockerfile))
                .await
                .map_err(|e| DockerError::Context {
                    path: req.context.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                })??;
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(req.dockerfile)
            .t(req.tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&to_hash_map(req.args))
            .labels(&to_hash_map(req.labels))
            .build();
        let secrets = build_arg_values(req.args);
        let mut attempt = 1;
        loop {
            let result = self
                .build_once(options.clone(), tar.clone(), req.tag, &secrets, on_line)
                .await;
            match result {
                Err(DockerError::Build { message, .. })
                    if attempt < BUILD_ATTEMPTS && is_cache_race(&message) =>
                {
                    on_line(&format!(
                        "cutover: a cached layer was removed while this build used it ({message}); building again"
                    ));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn build_once(
        &self,
        options: bollard::query_parameters::BuildImageOptions,
        tar: Vec<u8>,
        tag: &str,
        secrets: &[String],
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ImageInfo, DockerError> {
        let mut output = Lines::new(on_line);
        output.secrets = secrets;
        let mut stream =
            self.client
                .build_image(options, None, Some(bollard::body_full(tar.into())));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                        output.push(text);
                    }
                }
                Err(e) if error::is_transport(&e) => {
                    return Err(self.api("build image", tag, e));
                }
                Err(e) => {
                    output.finish();
                    return Err(DockerError::Build {
                        tag: tag.to_owned(),
                        message: redact(&error::engine_message(&e), secrets),
                        last_lines: output.tail,
                    });
                }
            }
        }
        output.finish();
        self.inspect_image(tag)
            .await?
            .ok_or_else(|| DockerError::Build {
                tag: tag.to_owned(),
                message: "the builder finished but the image is not there".to_owned(),
                last_lines: output.tail,
            })
    }

    /// The image `reference` (a tag, `repo@digest` or id), if present.
    ///
    /// # Errors
    /// [`DockerError::Api`] or [`DockerError::Unreachable`] when the engine fails.
    pub async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, DockerError> {
        match self.client.inspect_image(reference).await {
            Ok(image) => Ok(Some(image_info(image))),
            Err(e) if error::status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.api("inspect image", reference, e)),
        }
    }

    /// Pushes `reference` (`registry/repo:tag`; `latest` when no tag), with `auth`'s
    /// credentials when the image is on `auth`'s registry, and returns the digest the
    /// registry reported, when it reported one.
    ///
    /// # Errors
    /// [`DockerError::NotFound`] when the image is not present locally;
    /// [`DockerError::Registry`] when the registry refuses (bad credentials, not
    /// reachable) — its text never contains the password.
    pub async fn push_image(
        &self,
        reference: &str,
        auth: &RegistryAuth,
    ) -> Result<Option<String>, DockerError> {
        // The engine reports a missing local tag only as a stream message ("tag does
        // not exist"), indistinguishable from registry failures; ask first.
        if self.inspect_image(reference).await?.is_none() {
            return Err(DockerError::NotFound {
                kind: "image",
                name: reference.to_owned(),
            });
        }
        let (name, tag) = split_tag(reference);
        let options = PushImageOptionsBuilder::default()
            .tag(tag.unwrap_or("latest"))
            .build();
        let mut stream =
            self.client
                .push_image(name, Some(options), auth.credentials_for(reference));
        let mut digest = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(d) = info.status.as_deref().and_then(digest_in_status) {
                        digest = Some(d.to_owned());
                    }
                }
                Err(e) => return Err(self.registry_error("push", reference, e, Some(auth))),
            }
        }
        Ok(digest)
    }

    /// Pulls `reference` and returns the pulled image; with `auth`'s credentials only
    /// when the image is on `auth`'s registry.
    ///
    /// # Errors
    /// [`DockerError::Registry`] when the registry refuses or lacks the image — its
    /// text never contains the password.
    pub async fn pull_image(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<ImageInfo, DockerError> {
        let (name, tag) = split_tag(reference);
        let mut options = CreateImageOptionsBuilder::default().from_image(name);
        if !reference.contains('@') {
            options = options.tag(tag.unwrap_or("latest"));
        }
        let credentials = auth.and_then(|a| a.credentials_for(reference));
        let mut stream = self
            .client
            .create_image(Some(options.build()), None, credentials);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                return Err(self.registry_error("pull", reference, e, auth));
            }
        }
        self.inspect_image(reference)
            .await?
            .ok_or_else(|| DockerError::Registry {
                op: "pull",
                reference: reference.to_owned(),
                message: "the pull finished but the image is not there".to_owned(),
            })
    }

    /// A push or pull failure as text only, with the password redacted.
    fn registry_error(
        &self,
        op: &'static str,
        reference: &str,
        e: bollard::errors::Error,
        auth: Option<&RegistryAuth>,
    ) -> DockerError {
        let redact = |text: String| match auth {
            Some(a) => a.password.redact_from(&text),
            None => text,
        };
        if error::is_transport(&e) {
            return DockerError::Unreachable {
                host: self.host.clone(),
                message: redact(format!("{op} {reference}: {}", error::with_causes(&e))),
            };
        }
        DockerError::Registry {
            op,
            reference: reference.to_owned(),
            message: redact(error::engine_message(&e)),
        }
    }

    /// Creates the bridge network `net` (with its subnet and gateway when given,
    /// labelled for `service`) unless it exists. Returns whether it was created.
    ///
    /// # Errors
    /// [`DockerError::NetworkMismatch`] when it exists with another subnet;
    /// [`DockerError::Api`] when the engine refuses (e.g. the subnet overlaps another
    /// network's).
    pub async fn ensure_network(
        &self,
        net: &NetworkConfig,
        service: &str,
    ) -> Result<bool, DockerError> {
        if self.check_existing_network(net).await? {
            return Ok(false);
        }
        let ipam_config = (net.subnet.is_some() || net.gateway.is_some()).then(|| IpamConfig {
            subnet: net.subnet.clone(),
            gateway: net.gateway.clone(),
            ..Default::default()
        });
        let request = NetworkCreateRequest {
            name: net.name.clone(),
            driver: Some("bridge".to_owned()),
            ipam: ipam_config.map(|c| Ipam {
                config: Some(vec![c]),
                ..Default::default()
            }),
            labels: Some(HashMap::from([(
                LABEL_SERVICE.to_owned(),
                service.to_owned(),
            )])),
            ..Default::default()
        };
        match self.client.create_network(request).await {
            Ok(_) => Ok(true),
            // Another deploy created it between the check and the create.
            Err(e) if error::status(&e) == Some(409) => {
                self.check_existing_network(net).await?;
                Ok(false)
            }
            Err(e) => Err(self.api("create network", &net.name, e)),
        }
    }

    /// Whether `net` exists; an error when it exists with another subnet.
    async fn check_existing_network(&self, net: &NetworkConfig) -> Result<bool, DockerError> {
        let existing = match self
            .client
            .inspect_network(&net.name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(n) => n,
            Err(e) if error::status(&e) == Some(404) => return Ok(false),
            Err(e) => return Err(self.api("inspect network", &net.name, e)),
        };
        if let Some(expected) = &net.subnet {
            let subnets: Vec<String> = existing
                .ipam
                .and_then(|i| i.config)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.subnet)
                .collect();
            if !subnets.contains(expected) {
                return Err(DockerError::NetworkMismatch {
                    name: net.name.clone(),
                    expected: expected.clone(),
                    found: if subnets.is_empty() {
                        "none".to_owned()
                    } else {
                        subnets.join(", ")
                    },
                });
            }
        }
        Ok(true)
    }

    /// Removes the network `name`; succeeds when it does not exist.
    ///
    /// # Errors
    /// [`DockerError::InUse`] when containers are still attached.
    pub async fn remove_network(&self, name: &str) -> Result<(), DockerError> {
        match self.client.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if error::status(&e) == Some(404) => Ok(()),
            Err(e) if matches!(error::status(&e), Some(403 | 409)) => Err(DockerError::InUse {
                op: "remove",
                kind: "network",
                name: name.to_owned(),
                message: error::engine_message(&e),
            }),
            Err(e) => Err(self.api("remove network", name, e)),
        }
    }

    /// Creates and starts a container from `spec` and returns its id. When the start
    /// fails, the created container is removed again.
    ///
    /// # Errors
    /// [`DockerError::PortInUse`] when the host port is taken;
    /// [`DockerError::NotFound`] when the image is missing; [`DockerError::InUse`] when
    /// a container of that name exists; [`DockerError::Api`] otherwise.
    pub async fn run_container(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = match self
            .client
            .create_container(Some(options), create_body(spec))
            .await
        {
            Ok(c) => c,
            Err(e) if error::status(&e) == Some(404) => {
                return Err(DockerError::NotFound {
                    kind: "image",
                    name: spec.image.clone(),
                });
            }
            Err(e) if error::status(&e) == Some(409) => {
                return Err(DockerError::InUse {
                    op: "create",
                    kind: "container",
                    name: spec.name.clone(),
                    message: error::engine_message(&e),
                });
            }
            Err(e) => return Err(self.api("create container", &spec.name, e)),
        };
        if let Err(e) = self.client.start_container(&created.id, None).await {
            // What this call created must not outlive its failure; a failure to clean
            // up is secondary to the start error the caller needs to see.
            let _ = self.remove_container(&created.id).await;
            let message = error::engine_message(&e);
            if let Some(publish) = spec.publish
                && is_port_conflict(&message, publish.port())
            {
                return Err(DockerError::PortInUse {
                    port: publish.port(),
                    address: publish.ip(),
                    container: spec.name.clone(),
                    message,
                });
            }
            return Err(self.api("start container", &spec.name, e));
        }
        Ok(created.id)
    }

    /// Starts the existing, stopped container `name` (rollback reuses the previous
    /// colour's container this way); succeeds when it already runs.
    ///
    /// # Errors
    /// [`DockerError::NotFound`] when it does not exist; [`DockerError::Api`] otherwise
    /// (e.g. its host port was taken meanwhile: the engine's message says so).
    pub async fn start_container(&self, name: &str) -> Result<(), DockerError> {
        match self.client.start_container(name, None).await {
            Ok(()) => Ok(()),
            // 304: already started.
            Err(e) if error::status(&e) == Some(304) => Ok(()),
            Err(e) if error::status(&e) == Some(404) => Err(DockerError::NotFound {
                kind: "container",
                name: name.to_owned(),
            }),
            Err(e) => Err(self.api("start container", name, e)),
        }
    }

    /// The container `name` (or id), if it exists.
    ///
    /// # Errors
    /// [`DockerError::Api`] or [`DockerError::Unreachable`] when the engine fails.
    pub async fn inspect_container(
        &self,
        name: &str,
    ) -> Result<Option<ContainerInfo>, DockerError> {
        match self
            .client
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(container_info(c))),
            Err(e) if error::status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.api("inspect container", name, e)),
        }
    }

    /// Sends SIGTERM to `name` and waits up to `grace` (rounded up to whole seconds)
    /// for it to exit before the engine kills it. Succeeds when the container does
    /// not exist or is not running.
    ///
    /// # Errors
    /// [`DockerError::Api`] or [`DockerError::Unreachable`] when the engine fails.
    pub async fn stop_container(&self, name: &str, grace: Duration) -> Result<(), DockerError> {
        let seconds = whole_seconds(grace);
        let options = StopContainerOptionsBuilder::default()
            .t(i32::try_from(seconds).unwrap_or(i32::MAX))
            .build();
        // The engine answers only once the container has stopped, so the request
        // must be allowed to outlast the grace period.
        let client = self
            .client
            .clone()
            .with_timeout(REQUEST_TIMEOUT + Duration::from_secs(seconds));
        match client.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if error::status(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.api("stop container", name, e)),
        }
    }

    /// Removes `name` (killing it if running) and its anonymous volumes; succeeds when
    /// it does not exist.
    ///
    /// # Errors
    /// [`DockerError::Api`] or [`DockerError::Unreachable`] when the engine fails.
    pub async fn remove_container(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.client.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if error::status(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.api("remove container", name, e)),
        }
    }

    /// Runs `spec` as a one-off container to its end: creates and starts it, passes
    /// each line of its output to `on_line` as it is written, waits for it to exit,
    /// removes it, and returns its exit code. `limit` bounds how long the engine's
    /// answers may take (the caller enforces the job's own timeout).
    ///
    /// # Errors
    /// As [`Docker::run_container`]; [`DockerError::Api`] when the output or the exit
    /// cannot be read (the container is removed all the same).
    pub async fn run_to_end(
        &self,
        spec: &ContainerSpec,
        limit: Duration,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<i64, DockerError> {
        // A container of this name is what a killed runner left: not a job to keep.
        self.remove_container(&spec.name).await?;
        self.run_container(spec).await?;
        let result = self.follow_to_exit(&spec.name, limit, on_line).await;
        let removed = self.remove_container(&spec.name).await;
        let code = result?;
        removed?;
        Ok(code)
    }

    /// Runs `spec` as a one-off container on a terminal: with a TTY of `size` (rows,
    /// columns) and stdin open, the bytes from `input` go to its stdin and its output
    /// to `output` as it comes. Returns its exit code once it has exited; it is removed
    /// afterwards.
    ///
    /// # Errors
    /// As [`Docker::run_to_end`].
    pub async fn run_attached(
        &self,
        spec: &ContainerSpec,
        size: Option<(u16, u16)>,
        limit: Duration,
        mut input: tokio::sync::mpsc::Receiver<Vec<u8>>,
        output: &mut crate::OnBytes<'_>,
    ) -> Result<i64, DockerError> {
        use tokio::io::AsyncWriteExt;
        self.remove_container(&spec.name).await?;
        let mut body = create_body(spec);
        (body.tty, body.open_stdin, body.stdin_once) = (Some(true), Some(true), Some(true));
        (body.attach_stdin, body.attach_stdout, body.attach_stderr) =
            (Some(true), Some(true), Some(true));
        if let (Some(host), Some((rows, cols))) = (body.host_config.as_mut(), size) {
            host.console_size = Some(vec![usize::from(rows), usize::from(cols)]);
        }
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        self.client
            .create_container(Some(options), body)
            .await
            .map_err(|e| self.api("create container", &spec.name, e))?;
        let client = self.client.clone().with_timeout(REQUEST_TIMEOUT + limit);
        let attached = async {
            let options = AttachContainerOptionsBuilder::default()
                .stdin(true)
                .stdout(true)
                .stderr(true)
                .stream(true)
                .build();
            let mut io = client
                .attach_container(&spec.name, Some(options))
                .await
                .map_err(|e| self.api("attach to container", &spec.name, e))?;
            self.start_container(&spec.name).await?;
            let mut container_in = io.input;
            // Keystrokes go in while the output comes out; the copy ends with it.
            let typing = tokio::spawn(async move {
                while let Some(bytes) = input.recv().await {
                    if container_in.write_all(&bytes).await.is_err() {
                        break;
                    }
                    let _ = container_in.flush().await;
                }
            });
            while let Some(chunk) = io.output.next().await {
                match chunk {
                    Ok(chunk) => output(chunk.as_ref()),
                    Err(_) => break,
                }
            }
            typing.abort();
            self.exit_code(&client, &spec.name).await
        };
        let result = attached.await;
        let removed = self.remove_container(&spec.name).await;
        let code = result?;
        removed?;
        Ok(code)
    }

    async fn follow_to_exit(
        &self,
        name: &str,
        limit: Duration,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<i64, DockerError> {
        let client = self.client.clone().with_timeout(REQUEST_TIMEOUT + limit);
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut lines = Lines::new(on_line);
        let mut stream = client.logs(name, Some(options));
        while let Some(item) = stream.next().await {
            let chunk = item.map_err(|e| self.api("read the output of container", name, e))?;
            lines.push(&String::from_utf8_lossy(chunk.as_ref()));
        }
        lines.finish();
        self.exit_code(&client, name).await
    }

    /// The exit code of `name` once it is no longer running.
    async fn exit_code(&self, client: &bollard::Docker, name: &str) -> Result<i64, DockerError> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut waits = client.wait_container(name, Some(options));
        match waits.next().await {
            Some(Ok(exit)) => Ok(exit.status_code),
            // bollard turns a non-zero exit into an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(self.api("wait for container", name, e)),
            None => Err(self.api(
                "wait for container",
                name,
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 500,
                    message: "the engine ended the wait without an exit code".to_owned(),
                },
            )),
        }
    }

    /// Removes every container of `service` whose label `key` is `value` (and, with
    /// `deploy`, that deploy's only); returns their names.
    ///
    /// # Errors
    /// [`DockerError::Api`] or [`DockerError::Unreachable`] when the engine fails.
    pub async fn remove_labelled(
        &self,
        service: &str,
        key: &str,
        deploy: Option<&str>,
    ) -> Result<Vec<String>, DockerError> {
        let mut labels = vec![format!("{LABEL_SERVICE}={service}"), key.to_owned()];
        labels.extend(deploy.map(|id| format!("{LABEL_DEPLOY}={id}")));
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([("label", labels)]))
            .build();
        let found = self
            .client
            .list_containers(Some(options))
            .await
            .map_err(|e| self.api("list containers labelled", key, e))?;
        let mut removed = Vec::new();
        for container in found {
            let Some(name) = container.names.as_ref().and_then(|n| n.first()) else {
                continue;
            };
            let name = name.trim_start_matches('/').to_owned();
            self.remove_container(&name).await?;
            removed.push(name);
        }
        Ok(removed)
    }

    /// The last `tail` lines of `name`'s stdout and stderr, interleaved as written.
    ///
    /// # Errors
    /// [`DockerError::NotFound`] when the container does not exist.
    pub async fn container_logs(&self, name: &str, tail: usize) -> Result<String, DockerError> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
            .build();
        let mut stream = self.client.logs(name, Some(options));
        let mut text = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => text.push_str(&String::from_utf8_lossy(chunk.as_ref())),
                Err(e) if error::status(&e) == Some(404) => {
                    return Err(DockerError::NotFound {
                        kind: "container",
                        name: name.to_owned(),
                    });
                }
                Err(e) => return Err(self.api("read logs of container", name, e)),
            }
        }
        Ok(text)
    }

    /// Every image labelled for `service`, newest first.
    ///
    /// # Errors
    /// [`DockerError::Api`] or [`DockerError::Unreachable`] when the engine fails.
    pub async fn list_service_images(&self, service: &str) -> Result<Vec<ImageInfo>, DockerError> {
        let options = ListImagesOptionsBuilder::default()
            .filters(&service_filter(service))
            .build();
        let summaries = self
            .client
            .list_images(Some(options))
            .await
            .map_err(|e| self.api("list images of service", service, e))?;
        let mut images: Vec<ImageInfo> = summaries.into_iter().map(summary_info).collect();
        images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(images)
    }

    /// Removes the image `id` (a reference or id) with all its tags; succeeds when it
    /// does not exist.
    ///
    /// # Errors
    /// [`DockerError::InUse`] when a container (running or stopped) uses it or another
    /// image is built on it; nothing is removed then.
    pub async fn remove_image(&self, id: &str) -> Result<(), DockerError> {
        let Some(image) = self.inspect_image(id).await? else {
            return Ok(());
        };
        // `force` is needed to drop an image with several tags in one call, but force
        // would also untag an image a container uses; so check users first.
        let users = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([("ancestor", vec![image.id.as_str()])]))
            .build();
        let users = self
            .client
            .list_containers(Some(users))
            .await
            .map_err(|e| self.api("list containers using image", id, e))?;
        if !users.is_empty() {
            let names: Vec<String> = users
                .iter()
                .filter_map(|c| c.names.as_ref()?.first().cloned())
                .map(|n| n.trim_start_matches('/').to_owned())
                .collect();
            return Err(DockerError::InUse {
                op: "remove",
                kind: "image",
                name: id.to_owned(),
                message: format!("used by container(s) {}", names.join(", ")),
            });
        }
        let options = RemoveImageOptionsBuilder::default().force(true).build();
        match self
            .client
            .remove_image(&image.id, Some(options), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if error::status(&e) == Some(404) => Ok(()),
            Err(e) if error::status(&e) == Some(409) => Err(DockerError::InUse {
                op: "remove",
                kind: "image",
                name: id.to_owned(),
                message: error::engine_message(&e),
            }),
            Err(e) => Err(self.api("remove image", id, e)),
        }
    }
}

/// A bollard client whose requests go through hyper's pooled client over `connector`
/// (the ssh and TLS transports), addressed as `client_addr` (`scheme://authority`).
/// Idle connections close after 30 s: over ssh each is a process on both machines.
fn pooled_client<C>(
    connector: C,
    client_addr: String,
    timeout: Duration,
) -> Result<bollard::Docker, bollard::errors::Error>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let client = std::sync::Arc::new(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            // The idle timeout takes effect only with a timer.
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
    );
    bollard::Docker::connect_with_custom_transport(
        move |req: bollard::BollardRequest| {
            let client = std::sync::Arc::clone(&client);
            async move {
                client
                    .request(req)
                    .await
                    .map_err(bollard::errors::Error::from)
            }
        },
        Some(client_addr),
        timeout.as_secs(),
        bollard::API_DEFAULT_VERSION,
    )
}

/// bollard's `negotiate_version` asks `/v<newest>/version`, which engines older than
/// bollard (Docker 20.10: "client version 1.53 is too new") refuse. The `/version`
/// endpoint means the same at every version, so it is sent unversioned, as the
/// Docker CLI does; every other request keeps its version prefix.
fn unversioned_version_endpoint(mut req: bollard::BollardRequest) -> bollard::BollardRequest {
    if let Some(uri) = strip_version_prefix(&req.uri().to_string())
        && let Ok(uri) = uri.parse()
    {
        *req.uri_mut() = uri;
    }
    req
}

/// `scheme://host/v1.53/version` → `scheme://host/version`; `None` for anything else.
fn strip_version_prefix(uri: &str) -> Option<String> {
    let path_start = uri.find("://").map(|i| i + 3)?;
    let slash = path_start + uri[path_start..].find('/')?;
    let (base, path) = uri.split_at(slash);
    let version = path.strip_prefix("/v")?.strip_suffix("/version")?;
    let (major, minor) = version.split_once('.')?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(major) && numeric(minor)).then(|| format!("{base}/version"))
}

fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let port_key = format!("{}/tcp", spec.port);
    let port_bindings = spec.publish.map(|addr| {
        HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some(addr.ip().to_string()),
                host_port: Some(addr.port().to_string()),
            }]),
        )])
    });
    let networking_config = spec.network.as_ref().map(|net| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            net.clone(),
            EndpointSettings {
                ipam_config: spec.ip.map(|ip| EndpointIpamConfig {
                    ipv4_address: Some(ip.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )])),
    });
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        labels: Some(to_hash_map(&spec.labels)),
        env: Some(
            spec.env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain(
                    spec.secret_env
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.expose())),
                )
                .collect(),
        ),
        cmd: spec.command.clone(),
        exposed_ports: Some(vec![port_key]),
        stop_timeout: Some(i64::try_from(whole_seconds(spec.stop_grace)).unwrap_or(i64::MAX)),
        host_config: Some(HostConfig {
            binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
            port_bindings,
            network_mode: spec.network.clone(),
            ..Default::default()
        }),
        networking_config,
        ..Default::default()
    }
}

/// The legacy builder reuses untagged intermediate images as its cache, and removing
/// an image also removes its untagged parents that no other image needs. When that
/// happens between the builder's cache hit and its next step (another service's
/// prune, or parallel tests), the build fails with a missing `sha256:` image; a new
/// attempt rebuilds the missing layer.
fn is_cache_race(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("sha256:")
        && (m.contains("failed to get digest")
            || m.contains("no such image")
            || m.contains("failed to get parent"))
}

/// Whether a start error is about the host port `port` being taken (by a process:
/// "address already in use"; by another container: "port is already allocated").
fn is_port_conflict(message: &str, port: u16) -> bool {
    let lower = message.to_ascii_lowercase();
    let names_port = lower.contains(&format!(":{port}:")) || lower.contains(&format!(":{port} "));
    names_port
        && (lower.contains("address already in use") || lower.contains("port is already allocated"))
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn to_hash_map(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn service_filter(service: &str) -> HashMap<&'static str, Vec<String>> {
    HashMap::from([("label", vec![format!("{LABEL_SERVICE}={service}")])])
}

/// The registry host of an image reference, as Docker's reference parser finds it:
/// the first path component when it contains `.` or `:`, is `localhost` or has an
/// upper-case letter; otherwise Docker Hub (`docker.io`), so `hello:1` and
/// `team/app:1` are Docker Hub images.
pub fn registry_of(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            normalize_registry(first)
        }
        _ => DOCKER_HUB,
    }
}

/// Docker Hub as [`registry_of`] names it.
const DOCKER_HUB: &str = "docker.io";

/// Docker Hub's legacy name, `index.docker.io`, is the same registry as `docker.io`.
fn normalize_registry(host: &str) -> &str {
    if host.eq_ignore_ascii_case("index.docker.io") {
        DOCKER_HUB
    } else {
        host
    }
}

/// Splits `registry:5000/repo:tag` into name and tag; a digest reference or one
/// without a tag has no tag.
pub(crate) fn split_tag(reference: &str) -> (&str, Option<&str>) {
    if reference.contains('@') {
        return (reference, None);
    }
    match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => (&reference[..i], Some(&reference[i + 1..])),
        _ => (reference, None),
    }
}

/// The digest in a push status line such as `v1: digest: sha256:ab.. size: 528`.
fn digest_in_status(status: &str) -> Option<&str> {
    let rest = &status[status.find("digest: ")? + "digest: ".len()..];
    let digest = rest.split_whitespace().next()?;
    digest.starts_with("sha256:").then_some(digest)
}

fn image_info(image: ImageInspect) -> ImageInfo {
    ImageInfo {
        id: image.id.unwrap_or_default(),
        tags: image.repo_tags.unwrap_or_default(),
        digests: image.repo_digests.unwrap_or_default(),
        created: image.created.as_deref().and_then(unix_seconds).unwrap_or(0),
        labels: image
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default()
            .into_iter()
            .collect(),
    }
}

fn summary_info(image: ImageSummary) -> ImageInfo {
    ImageInfo {
        id: image.id,
        tags: image
            .repo_tags
            .into_iter()
            .filter(|t| t != "<none>:<none>")
            .collect(),
        digests: image
            .repo_digests
            .into_iter()
            .filter(|d| d != "<none>@<none>")
            .collect(),
        created: image.created,
        labels: image.labels.into_iter().collect(),
    }
}

fn container_info(c: ContainerInspectResponse) -> ContainerInfo {
    let state = c.state.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let status = state
        .status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".to_owned());
    let exited = matches!(status.as_str(), "exited" | "dead");
    let mut networks: Vec<(String, EndpointSettings)> = c
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .collect();
    networks.sort_by(|a, b| a.0.cmp(&b.0));
    let config = c.config.unwrap_or_default();
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        image: config.image.unwrap_or_default(),
        image_id: c.image.unwrap_or_default(),
        running,
        status,
        exit_code: if exited { state.exit_code } else { None },
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        ip: networks
            .into_iter()
            .filter_map(|(_, n)| n.ip_address)
            .find(|ip| !ip.is_empty()),
    }
}

/// Seconds since the epoch of an RFC 3339 time as the engine writes it
/// (`2024-05-01T12:34:56.123456789Z`, or with a `+hh:mm` offset).
fn unix_seconds(text: &str) -> Option<i64> {
    // humantime reads UTC (`Z`) times only: move an offset into the arithmetic.
    let (utc, offset) = match text.get(19..)?.find(['+', '-']) {
        None => (text.to_owned(), 0),
        Some(at) => {
            let (local, zone) = text.split_at(19 + at);
            let (h, m) = zone[1..].split_once(':')?;
            let secs = h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60;
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            (format!("{local}Z"), sign * secs)
        }
    };
    let time = humantime::parse_rfc3339(&utc).ok()?;
    let secs = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(i64::try_from(secs).ok()? - offset)
}

/// Splits a program's output (the builder's, a one-off job's) into lines for
/// `on_line` and keeps the last few.
pub(crate) struct Lines<'a> {
    on_line: &'a mut (dyn FnMut(&str) + Send),
    partial: String,
    tail: Vec<String>,
    /// Build-argument values, replaced by `***` in every line.
    secrets: &'a [String],
}

/// Build-argument values shorter than this are not redacted: a secret is longer, and
/// replacing every `1` or `on` would make the output unreadable.
const REDACT_MIN_LEN: usize = 4;

/// The values of `args` to redact from build output, longest first (so a value that
/// contains another is replaced whole).
fn build_arg_values(args: &BTreeMap<String, String>) -> Vec<String> {
    let mut values: Vec<String> = args
        .values()
        .filter(|v| v.len() >= REDACT_MIN_LEN)
        .cloned()
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    values
}

/// `text` with every one of `secrets` replaced by `***`: a build argument may be a
/// secret, and the builder echoes arguments and whatever a `RUN` prints.
fn redact(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_owned(), |text, secret| {
        text.replace(secret.as_str(), "***")
    })
}

impl<'a> Lines<'a> {
    pub(crate) fn new(on_line: &'a mut (dyn FnMut(&str) + Send)) -> Self {
        Lines {
            on_line,
            partial: String::new(),
            tail: Vec::new(),
            secrets: &[],
        }
    }

    pub(crate) fn push(&mut self, text: &str) {
        self.partial.push_str(text);
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            self.emit(line.trim_end());
        }
    }

    pub(crate) fn finish(&mut self) {
        let rest = std::mem::take(&mut self.partial);
        self.emit(rest.trim_end());
    }

    fn emit(&mut self, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        let line = redact(line, self.secrets);
        (self.on_line)(&line);
        if self.tail.len() == BUILD_TAIL {
            self.tail.remove(0);
        }
        self.tail.push(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_engine_is_an_environment_error_naming_the_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let tcp = format!("tcp://127.0.0.1:{port}");
        for address in ["unix:///nonexistent/docker.sock", tcp.as_str()] {
            let err = Docker::connect_to(address).await.unwrap_err();
            eprintln!("{err}");
            assert!(err.is_environment(), "{err:?}");
            let message = err.to_string();
            assert!(message.contains(address), "{message}");
            assert!(message.contains("DOCKER_HOST"), "{message}");
        }
    }

    fn resolve(engine: &EngineConfig, vars: &[(&str, &str)]) -> Endpoint {
        Endpoint::resolve(engine, |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    fn engine(host: Option<&str>, tls: Option<TlsFiles>) -> EngineConfig {
        EngineConfig {
            host: host.map(str::to_owned),
            tls,
            ..Default::default()
        }
    }

    #[test]
    fn docker_host_wins_over_the_config_like_the_docker_cli() {
        let config_tls = TlsFiles::in_dir(Path::new("/repo/certs"));
        let configured = engine(Some("tcp://app1:2376"), Some(config_tls.clone()));
        let e = resolve(&configured, &[("DOCKER_HOST", "ssh://deploy@app2")]);
        assert_eq!(e.host, "ssh://deploy@app2");
        assert_eq!(
            e.tls, None,
            "the config's certificates are for its own host"
        );
        assert_eq!(e.origin, "DOCKER_HOST");

        // An empty DOCKER_HOST counts as unset, as for the CLI.
        let e = resolve(&configured, &[("DOCKER_HOST", "")]);
        assert_eq!(e.host, "tcp://app1:2376");
        assert_eq!(e.tls, Some(config_tls));
        assert_eq!(e.origin, "engine.host");

        let e = resolve(&EngineConfig::default(), &[]);
        assert_eq!(e.host, DEFAULT_SOCKET);
        assert_eq!(e.tls, None);
    }

    #[test]
    fn docker_tls_verify_takes_the_certificates_from_docker_cert_path_or_home() {
        let vars = [
            ("DOCKER_HOST", "tcp://app1"),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", "/certs"),
            ("HOME", "/home/ci"),
        ];
        let e = resolve(&EngineConfig::default(), &vars);
        assert_eq!(e.host, "tcp://app1:2376", "the CLI's TLS port");
        assert_eq!(e.tls, Some(TlsFiles::in_dir(Path::new("/certs"))));
        assert!(e.describe().contains("/certs/ca.pem"), "{}", e.describe());

        let e = resolve(&EngineConfig::default(), &[vars[0], vars[1], vars[3]]);
        assert_eq!(e.tls, Some(TlsFiles::in_dir(Path::new("/home/ci/.docker"))));

        // Without DOCKER_TLS_VERIFY there is no TLS, and the plain port.
        let e = resolve(&EngineConfig::default(), &[vars[0], vars[2]]);
        assert_eq!((e.host.as_str(), e.tls), ("tcp://app1:2375", None));

        // The env's TLS switch applies to a config host without its own `tls`...
        let e = resolve(&engine(Some("tcp://app1:2376"), None), &vars[1..]);
        assert_eq!(e.tls, Some(TlsFiles::in_dir(Path::new("/certs"))));
        // ... and never to a socket or ssh.
        for host in ["unix:///run/docker.sock", "ssh://app1"] {
            let e = resolve(&engine(Some(host), None), &vars[1..]);
            assert_eq!((e.host.as_str(), e.tls), (host, None));
        }
    }

    #[test]
    fn unreachable_errors_say_what_to_check_for_each_transport() {
        let error = |host: &str| {
            DockerError::Unreachable {
                host: host.to_owned(),
                message: "refused".to_owned(),
            }
            .to_string()
        };
        let ssh = error("ssh://deploy@app1:2222 (from engine.host)");
        for needle in [
            "ssh -o StrictHostKeyChecking=yes -p 2222 deploy@app1 docker version",
            "key",
            "known_hosts",
            "docker CLI",
        ] {
            assert!(ssh.contains(needle), "{needle:?}: {ssh}");
        }
        let tls = error(
            &Endpoint {
                host: "tcp://app1:2376".to_owned(),
                tls: Some(TlsFiles::in_dir(Path::new("/certs"))),
                origin: "engine.host".to_owned(),
            }
            .describe(),
        );
        for needle in ["/certs/key.pem", "certificate", "--tlsverify"] {
            assert!(tls.contains(needle), "{needle:?}: {tls}");
        }
    }

    /// The deploy spawns these futures on a multi-threaded runtime.
    #[allow(dead_code)]
    fn handles_and_futures_are_send(
        docker: &Docker,
        req: &BuildRequest<'_>,
        spec: &ContainerSpec,
        auth: &RegistryAuth,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) {
        fn send<T: Send>(_: &T) {}
        fn shared<T: Clone + Send + Sync + 'static>() {}
        shared::<Docker>();
        shared::<RegistryAuth>();
        fn anyhow_compatible<T: std::error::Error + Send + Sync + 'static>() {}
        anyhow_compatible::<DockerError>();
        send(&docker.push_image("r", auth));
        send(&docker.pull_image("r", Some(auth)));
        send(&docker.run_container(spec));
        send(&docker.stop_container("c", Duration::ZERO));
        send(&docker.remove_image("i"));
        send(&docker.build_image(req, on_line));
    }

    #[test]
    fn container_names() {
        assert_eq!(container_name("hello", Color::Blue), "hello-blue");
        assert_eq!(container_name("hello", Color::Green), "hello-green");
    }

    #[test]
    fn version_prefix_is_stripped_only_from_the_version_endpoint() {
        assert_eq!(
            strip_version_prefix("unix://2f7661722f72756e/v1.53/version").as_deref(),
            Some("unix://2f7661722f72756e/version")
        );
        assert_eq!(
            strip_version_prefix("http://localhost:2375/v1.41/version").as_deref(),
            Some("http://localhost:2375/version")
        );
        assert_eq!(strip_version_prefix("unix://x/v1.53/containers/json"), None);
        assert_eq!(strip_version_prefix("unix://x/v1.53/version?x=1"), None);
        assert_eq!(strip_version_prefix("unix://x/version"), None);
        assert_eq!(strip_version_prefix("unix://x/vA.B/version"), None);
    }

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(split_tag("hello:v1"), ("hello", Some("v1")));
        assert_eq!(
            split_tag("127.0.0.1:5000/hello:v1"),
            ("127.0.0.1:5000/hello", Some("v1"))
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/hello"),
            ("127.0.0.1:5000/hello", None)
        );
        assert_eq!(split_tag("hello"), ("hello", None));
        assert_eq!(
            split_tag("r:5000/h@sha256:ab"),
            ("r:5000/h@sha256:ab", None)
        );
    }

    #[test]
    fn push_digest_is_read_from_status() {
        assert_eq!(
            digest_in_status("v1: digest: sha256:abc123 size: 528"),
            Some("sha256:abc123")
        );
        assert_eq!(digest_in_status("Pushed"), None);
        assert_eq!(digest_in_status("digest: nonsense"), None);
    }

    #[test]
    fn engine_timestamps() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_seconds("2024-02-29T12:00:00.123456789Z"),
            Some(1_709_208_000)
        );
        assert_eq!(
            unix_seconds("2024-02-29T14:00:00+02:00"),
            Some(1_709_208_000)
        );
        assert_eq!(unix_seconds("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(unix_seconds("yesterday"), None);
        assert_eq!(unix_seconds("2024-02-29 12:00:00Z"), None);
    }

    #[test]
    fn port_conflicts_are_recognised() {
        let proxy = "driver failed programming external connectivity on endpoint x (abc): Error starting userland proxy: listen tcp4 127.0.0.1:18081: bind: address already in use";
        assert!(is_port_conflict(proxy, 18081));
        assert!(!is_port_conflict(proxy, 1808));
        let allocated = "driver failed programming external connectivity on endpoint x (abc): Bind for 127.0.0.1:18081 failed: port is already allocated";
        assert!(is_port_conflict(allocated, 18081));
        assert!(!is_port_conflict("Address already in use", 18081));
    }

    #[test]
    fn vanished_cache_layers_are_recognised() {
        assert!(is_cache_race(
            "failed to get digest sha256:60a9e2a7: open /var/lib/docker/image/fuse-overlayfs/imagedb/content/sha256/60a9e2a7: no such file or directory"
        ));
        assert!(is_cache_race("No such image: sha256:60a9e2a7"));
        assert!(!is_cache_race(
            "COPY failed: file not found in build context or excluded by .dockerignore: stat missing-file: file does not exist"
        ));
        assert!(!is_cache_race(
            "dockerfile parse error line 1: unknown instruction: FORM"
        ));
    }

    #[test]
    fn grace_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(0)), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(10)), 10);
    }

    #[test]
    fn create_body_publishes_on_the_given_address() {
        let spec = ContainerSpec {
            name: "svc-blue".into(),
            image: "svc:1".into(),
            labels: service_labels("svc", Some(Color::Blue), "d1"),
            env: vec![("A".into(), "1".into())],
            secret_env: vec![("S".into(), Secret::new("s3"))],
            binds: vec![],
            port: 8080,
            publish: Some("127.0.0.1:18081".parse().unwrap()),
            network: Some("net".into()),
            ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
            command: None,
            stop_grace: Duration::from_millis(2500),
        };
        let body = serde_json::to_value(create_body(&spec)).unwrap();
        assert_eq!(body["StopTimeout"], 3);
        assert_eq!(body["Env"][0], "A=1");
        assert_eq!(body["Env"][1], "S=s3", "secrets go last, exposed only here");
        assert!(
            !format!("{spec:?}").contains("s3"),
            "a spec's Debug hides them"
        );
        assert_eq!(body["Labels"]["cutover.color"], "blue");
        assert_eq!(
            body["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"],
            "127.0.0.1"
        );
        assert_eq!(
            body["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"],
            "18081"
        );
        assert_eq!(body["HostConfig"]["NetworkMode"], "net");
        assert_eq!(
            body["NetworkingConfig"]["EndpointsConfig"]["net"]["IPAMConfig"]["IPv4Address"],
            "10.0.0.5"
        );
        assert!(body["HostConfig"].get("Binds").is_none());
    }

    #[test]
    fn build_arg_values_never_reach_the_build_output_or_its_tail() {
        let args: BTreeMap<String, String> = [
            ("TOKEN".to_owned(), "s3cr3t-token".to_owned()),
            ("INNER".to_owned(), "s3cr3t".to_owned()),
            ("DEBUG".to_owned(), "1".to_owned()),
        ]
        .into();
        let secrets = build_arg_values(&args);
        let mut seen = Vec::new();
        let mut on_line = |line: &str| seen.push(line.to_owned());
        let mut lines = Lines::new(&mut on_line);
        lines.secrets = &secrets;
        lines.push("Step 2/3 : RUN echo s3cr3t-token and s3cr3t\nDEBUG=1 done\n");
        let tail = lines.tail.clone();
        assert_eq!(seen, ["Step 2/3 : RUN echo *** and ***", "DEBUG=1 done"]);
        assert_eq!(tail, seen);
    }

    #[test]
    fn build_output_is_split_into_lines_with_a_tail() {
        let mut seen = Vec::new();
        let mut on_line = |l: &str| seen.push(l.to_owned());
        let mut lines = Lines::new(&mut on_line);
        lines.push("Step 1/2 : FROM scratch\n ---> \n");
        lines.push("Step 2/2 : COPY a");
        lines.push(" /a\n");
        for i in 0..BUILD_TAIL {
            lines.push(&format!("line {i}\n"));
        }
        lines.push("no newline");
        lines.finish();
        let tail = lines.tail.clone();
        assert_eq!(seen[0], "Step 1/2 : FROM scratch");
        assert_eq!(seen[1], " --->");
        assert_eq!(seen[2], "Step 2/2 : COPY a /a");
        assert_eq!(seen.last().map(String::as_str), Some("no newline"));
        assert_eq!(tail.len(), BUILD_TAIL);
        assert_eq!(tail.last().map(String::as_str), Some("no newline"));
    }

    #[test]
    fn registry_auth_debug_hides_the_password() {
        let auth = RegistryAuth {
            server: "127.0.0.1:5000".into(),
            username: "ci".into(),
            password: Secret::new("s3cr3t-pw"),
        };
        let debug = format!("{auth:?}");
        assert!(!debug.contains("s3cr3t-pw"), "{debug}");
        assert!(debug.contains("***"), "{debug}");
    }

    #[test]
    fn registry_host_is_read_the_way_docker_reads_it() {
        for (reference, registry) in [
            ("hello:1", "docker.io"),
            ("hello", "docker.io"),
            ("team/app:1", "docker.io"),
            ("library/nginx@sha256:ab", "docker.io"),
            ("docker.io/team/app", "docker.io"),
            ("index.docker.io/team/app", "docker.io"),
            ("127.0.0.1:5000/app:v1", "127.0.0.1:5000"),
            ("registry:5000/team/app", "registry:5000"),
            ("registry.example.com/app", "registry.example.com"),
            ("localhost/app", "localhost"),
            ("localhost:5000/app:1", "localhost:5000"),
            ("Registry/app", "Registry"),
        ] {
            assert_eq!(registry_of(reference), registry, "{reference}");
        }
    }

    #[test]
    fn credentials_go_only_to_their_registry() {
        let auth = RegistryAuth {
            server: "127.0.0.1:5000".into(),
            username: "ci".into(),
            password: Secret::new("pw"),
        };
        assert!(auth.applies_to("127.0.0.1:5000/app:1"));
        assert!(
            auth.credentials_for("127.0.0.1:5000/team/app@sha256:ab")
                .is_some()
        );
        for other in [
            "127.0.0.1:5001/app:1",
            "127.0.0.1/app:1",
            "app:1",
            "127.0.0.1:5000",
            "evil.example/127.0.0.1:5000/app",
        ] {
            assert!(!auth.applies_to(other), "{other}");
            assert!(auth.credentials_for(other).is_none(), "{other}");
        }
        let hub = RegistryAuth {
            server: "index.docker.io".into(),
            ..auth
        };
        assert!(hub.applies_to("team/app:1"));
        assert!(hub.applies_to("docker.io/team/app:1"));
        assert!(!hub.applies_to("127.0.0.1:5000/app:1"));
    }
}

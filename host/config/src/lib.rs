//! cutover-config: reads and checks `cutover.toml`, the one file per repository that
//! says what to deploy and how.
//!
//! This crate owns the file's schema and every check that can be made without
//! touching Docker, nginx or a plugin. It never performs a side effect: loading a
//! config twice gives the same value and changes nothing. Every error names the file,
//! the key path and what was expected, so a user can fix the file without reading code.
//! Each section's types sit next to each other here; the `[plugins]` tables are the
//! plugin host's own types, and `[strategy]` is in [`strategy`]. It must not touch
//! Docker, nginx or the state machine.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod strategy;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use cutover_base::{Color, duration, lock, operation};
use cutover_plugin_host as plugin;

pub use crate::duration::Duration;
use crate::plugin::{PluginKind, PluginSettings, PluginSpec, PluginsConfig};

/// The default name of the config file, looked up in the current directory.
pub const DEFAULT_FILE: &str = "cutover.toml";

/// A config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {}: {source}; create it (`cutover init` writes one) or pass another file with --config", path.display())]
    Read {
        /// The file cutover tried to read.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}: line {line}: not valid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// What the parser expected.
        message: String,
    },
    /// A key is unknown, missing, of the wrong type, or has a value that cannot work.
    #[error("{}: key `{key}`: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key path, e.g. `health.interval`.
        key: String,
        /// What was expected.
        message: String,
    },
}

/// A validated deploy configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The service name: names containers, images, the lock and the state file.
    pub service: String,
    /// Where cutover keeps its state, lock, audit log and managed nginx; relative paths
    /// are resolved against the config file's directory.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How the image to deploy is obtained.
    pub image: ImageConfig,
    /// How each colour's container runs.
    pub container: ContainerConfig,
    /// Which container engine runs the colours, and where it is.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The blue slot.
    #[serde(default = "ColorConfig::default_blue")]
    pub blue: ColorConfig,
    /// The green slot.
    #[serde(default = "ColorConfig::default_green")]
    pub green: ColorConfig,
    /// How a new colour is judged ready.
    #[serde(default)]
    pub health: HealthConfig,
    /// How traffic is switched.
    pub proxy: ProxyConfig,
    /// How cutover checks, after the switch, that the proxy really serves the target.
    #[serde(default)]
    pub verify: VerifyConfig,
    /// How long in-flight requests get to finish before the old colour stops.
    #[serde(default)]
    pub drain: DrainConfig,
    /// How much history is kept.
    #[serde(default)]
    pub history: HistoryConfig,
    /// Which plugin decides each policy.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Webhooks told about finished deploys (`[[notify]]`).
    #[serde(default)]
    pub notify: Vec<NotifyConfig>,
    /// How traffic moves to the new colour: all at once, or in canary steps.
    #[serde(default)]
    pub strategy: crate::strategy::StrategyConfig,

    /// The file this config was read from (set by [`Config::load`]).
    #[serde(skip)]
    pub file: PathBuf,
}

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

/// The key naming the variables the containers take from the runner's environment.
pub const ENV_FROM_KEY: &str = "container.env_from";

/// Whether `name` is an environment variable name: letters, digits and `_`, not
/// starting with a digit.
pub fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// How each colour's container runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// The TCP port the application listens on inside the container.
    pub port: u16,
    /// Environment variables for the application.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables the application gets from the runner's environment (secrets kept out
    /// of the config file); as `app_secrets` reads them.
    #[serde(default)]
    pub env_from: Vec<String>,
    /// An env file on the runner (`KEY=VALUE` lines, mode 0600), relative to the
    /// config file; as `app_secrets` reads them.
    pub env_file: Option<PathBuf>,
    /// Swarm: Docker secrets each task gets as `/run/secrets/<name>`.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Bind mounts and volumes, in Docker's `source:target[:options]` form.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Extra container labels (cutover adds its own `cutover.*` labels).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Replaces the image's CMD when set.
    pub command: Option<Vec<String>>,
    /// How long the application gets to exit after SIGTERM before it is killed.
    #[serde(default = "default_stop_grace")]
    pub stop_grace: Duration,
    /// A user-defined bridge network, created when missing.
    pub network: Option<NetworkConfig>,
}

/// A user-defined Docker bridge network (the original script's `deploy` network).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The network's name.
    pub name: String,
    /// Its subnet in CIDR form, e.g. `172.20.0.0/16`; needed for fixed IPs.
    pub subnet: Option<String>,
    /// Its gateway, e.g. `172.20.0.1`.
    pub gateway: Option<String>,
}

/// Which container engine runs the colours, and how to reach it. `DOCKER_HOST`, when
/// set, overrides `host` and `tls` as it overrides a docker CLI context.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// The kind of engine.
    #[serde(default)]
    pub kind: EngineKind,
    /// Where it is: `unix:///path`, `tcp://host:port` or `ssh://[user@]host[:port]`;
    /// the local socket when unset.
    pub host: Option<String>,
    /// Client certificates for a `tcp://` engine that runs with `--tlsverify`.
    pub tls: Option<TlsFiles>,
    /// Swarm: how many tasks each colour runs, at most one per node (default 1).
    pub replicas: Option<u32>,
    /// Swarm: `replicated` (the default, `replicas` tasks) or `global` (one task on
    /// every node the constraints allow).
    pub mode: Option<SwarmMode>,
    /// Swarm: placement constraints, as `docker service create --constraint` takes
    /// them (`node.labels.web==true`, `node.role!=manager`).
    #[serde(default)]
    pub constraints: Vec<String>,
    /// Swarm: labels put on each colour's service (cutover adds its `cutover.*` ones).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Swarm: how long the cluster deploy lock's lease runs before its holder must
    /// renew it (a third of it), and so how long a dead runner's lock blocks others.
    pub lock_lease: Option<Duration>,
}

impl EngineConfig {
    /// Swarm: the tasks a colour runs, `None` in global mode (one per eligible node).
    pub fn swarm_replicas(&self) -> Option<u32> {
        match self.mode {
            Some(SwarmMode::Global) => None,
            _ => Some(self.replicas.unwrap_or(1)),
        }
    }

    /// Swarm: the cluster lock's lease (`lock_lease`, default 60 s).
    pub fn lock_lease(&self) -> std::time::Duration {
        self.lock_lease
            .map_or(crate::lock::LEASE, |lease| lease.get())
    }
}

/// Where a colour's copies answer, as a verifier matches nginx's `$upstream_addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstreams {
    /// Exactly this address (one container on one host).
    One(SocketAddr),
    /// Any address at this port (a Swarm colour's tasks, one per node).
    AnyOnPort(u16),
}

impl Upstreams {
    /// Whether `addr` (`address:port`, as nginx writes it) is one of these; of a
    /// list (`a:1, b:2`: nginx tried `a` first), the one that answered: the last.
    pub fn matches(&self, addr: &str) -> bool {
        let addr = addr.rsplit(", ").next().unwrap_or(addr).trim();
        match self {
            Upstreams::One(one) => addr == one.to_string(),
            Upstreams::AnyOnPort(port) => {
                addr.parse::<SocketAddr>().is_ok_and(|a| a.port() == *port)
            }
        }
    }

    /// Whether `text` (a proxy file) names one of these.
    pub fn named_in(&self, text: &str) -> bool {
        match self {
            Upstreams::One(one) => text.contains(&one.to_string()),
            Upstreams::AnyOnPort(port) => {
                let needle = format!(":{port}");
                text.match_indices(&needle).any(|(i, _)| {
                    !text[i + needle.len()..].starts_with(|c: char| c.is_ascii_digit())
                })
            }
        }
    }
}

impl std::fmt::Display for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstreams::One(one) => write!(f, "{one}"),
            Upstreams::AnyOnPort(port) => write!(f, "<any node>:{port}"),
        }
    }
}

/// The kinds of container engine cutover drives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// One Docker engine runs both colours as containers.
    #[default]
    Docker,
    /// A Docker Swarm cluster (reached through one of its managers) runs each colour
    /// as a service, `<service>-<colour>`.
    Swarm,
}

/// How a Swarm service places its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwarmMode {
    /// `replicas` tasks, at most one per node.
    Replicated,
    /// One task on every node the constraints allow.
    Global,
}

/// The PEM files of a TLS client, as the docker CLI's `--tlscacert`, `--tlscert` and
/// `--tlskey` take them; relative to the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA that signed the engine's certificate.
    pub ca: PathBuf,
    /// This client's certificate.
    pub cert: PathBuf,
    /// This client's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// `ca.pem`, `cert.pem` and `key.pem` in `dir`, the docker CLI's names in
    /// `DOCKER_CERT_PATH`.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}

/// One slot's addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColorConfig {
    /// The host port the container's port is published on; none to publish nothing.
    pub host_port: Option<u16>,
    /// The host address the port is bound to.
    #[serde(default = "default_host_ip")]
    pub host_ip: IpAddr,
    /// A fixed IP on `container.network`.
    pub ip: Option<Ipv4Addr>,
    /// The `address:port` the proxy and health probes use. Defaults to
    /// `host_ip:host_port`, else `ip:container.port`.
    pub upstream: Option<SocketAddr>,
}

impl ColorConfig {
    fn default_blue() -> Self {
        Self::on_port(18081)
    }

    fn default_green() -> Self {
        Self::on_port(18082)
    }

    fn on_port(port: u16) -> Self {
        Self {
            host_port: Some(port),
            host_ip: default_host_ip(),
            ip: None,
            upstream: None,
        }
    }
}

/// How a new colour is judged ready.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// The path probed on the target.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// The Host header sent with each probe.
    pub host: Option<String>,
    /// Per-probe timeout.
    #[serde(default = "default_probe_timeout")]
    pub timeout: Duration,
    /// Wait before the first probe.
    #[serde(default = "default_first_delay")]
    pub first_delay: Duration,
    /// Wait between probes.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Give up when the target is not healthy this long after it started.
    #[serde(default = "default_health_deadline")]
    pub deadline: Duration,
    /// Response headers passed to the health-policy plugin.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Swarm: how many of a colour's tasks must be healthy before traffic moves to
    /// them (default: all of its replicas).
    pub min_healthy: Option<u32>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            path: default_health_path(),
            host: None,
            timeout: default_probe_timeout(),
            first_delay: default_first_delay(),
            interval: default_interval(),
            deadline: default_health_deadline(),
            headers: Vec::new(),
            min_healthy: None,
        }
    }
}

/// Whether cutover runs its own nginx or drives one it does not own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// cutover starts and owns an nginx under its state directory.
    Managed,
    /// cutover writes files into an existing nginx's config and reloads it.
    External,
}

/// How traffic is switched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// `managed` or `external`.
    pub mode: ProxyMode,
    /// Managed mode: the address nginx listens on.
    pub listen: Option<SocketAddr>,
    /// The nginx binary used for the managed proxy and the default commands.
    #[serde(default = "default_nginx")]
    pub nginx: PathBuf,
    /// External mode: the directory the rendered files are written to (nginx's
    /// `conf.d`). Managed mode uses a directory under the state directory.
    pub config_dir: Option<PathBuf>,
    /// External mode: the command that checks the config (argv, no shell).
    pub test_command: Option<Vec<String>>,
    /// External mode: the command that reloads gracefully (argv, no shell).
    pub reload_command: Option<Vec<String>>,
    /// External mode: the pid file of an nginx on this host. With it, the drain ends
    /// as soon as the workers that served before the reload have exited, instead of
    /// always waiting `drain.timeout`. Managed mode keeps its own pid file.
    pub pid_file: Option<PathBuf>,
    /// The longest any proxy command (config test, reload, start, stop) may run.
    #[serde(default = "default_command_timeout")]
    pub command_timeout: Duration,
    /// Variables handed to the proxy-template plugin.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// External mode: nginx's access log in cutover's JSON format (see the README's
    /// `log_format cutover_json`), which a canary reads to judge each colour. Managed
    /// mode writes its own.
    pub access_log: Option<PathBuf>,
    /// More nginx front ends (`[[proxy.extra]]`), each external, switched together
    /// with this one: every step runs on all of them, and a failure on any restores
    /// all of them.
    #[serde(default)]
    pub extra: Vec<ExtraFrontEnd>,
}

/// One more nginx in front of the service (`[[proxy.extra]]`), driven like an
/// external `[proxy]`: its own config directory, test and reload commands (which may
/// go through `ssh`), and the URL that reaches the service through it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraFrontEnd {
    /// Names it in messages and in the journal (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// The directory the rendered files are written to.
    pub config_dir: PathBuf,
    /// The command that checks its config (default `<proxy.nginx> -t`).
    pub test_command: Option<Vec<String>>,
    /// The command that reloads it gracefully (default `<proxy.nginx> -s reload`).
    pub reload_command: Option<Vec<String>>,
    /// The pid file of this nginx when it runs on this host (lets the drain watch it).
    pub pid_file: Option<PathBuf>,
    /// The URL that reaches the service through this nginx; verified after each
    /// switch with `[verify]`'s host, expectations and timeout.
    pub verify_url: String,
}

/// The check, through the proxy, that the target really serves after the switch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// The URL requested through the proxy; defaults to the managed listen address
    /// and the health path. Must be given in external mode.
    pub url: Option<String>,
    /// The Host header to send.
    pub host: Option<String>,
    /// A PEM file of CA certificates to trust for an `https://` URL besides the
    /// system's roots (a private CA); relative to the config file.
    pub ca_file: Option<PathBuf>,
    /// A header the response must carry, as `Name: value`; `{color}` is replaced
    /// by the target colour.
    pub expect_header: Option<String>,
    /// A substring the body must contain; `{color}` is replaced.
    pub expect_body: Option<String>,
    /// How long the proxy gets to start serving the target.
    #[serde(default = "default_verify_timeout")]
    pub timeout: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            url: None,
            host: None,
            ca_file: None,
            expect_header: None,
            expect_body: None,
            timeout: default_verify_timeout(),
        }
    }
}

/// How long in-flight requests get after the switch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    /// The longest cutover waits before stopping the old colour. With the managed
    /// proxy the wait ends as soon as nginx's old workers have finished.
    #[serde(default = "default_drain_timeout")]
    pub timeout: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            timeout: default_drain_timeout(),
        }
    }
}

/// How much history is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Deploys kept in the state file.
    #[serde(default = "default_keep_deploys")]
    pub deploys: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            deploys: default_keep_deploys(),
        }
    }
}

/// One `[[notify]]` table: a webhook told when a deploy or rollback ends with one
/// of the outcomes in `on`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The environment variable holding the webhook URL (a chat webhook URL is a
    /// secret, so it is never written in the file).
    pub url_env: String,
    /// What is posted.
    #[serde(default)]
    pub format: NotifyFormat,
    /// The outcomes that are sent; failed and rolled back by default.
    #[serde(default = "default_notify_on")]
    pub on: Vec<crate::operation::Outcome>,
    /// How long one attempt may take.
    #[serde(default = "default_notify_timeout")]
    pub timeout: Duration,
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// `{"text": "..."}` for Slack-compatible incoming webhooks.
    #[default]
    Slack,
    /// The audit log's entry for the run, with the service's name.
    Json,
}

fn default_notify_on() -> Vec<crate::operation::Outcome> {
    vec![
        crate::operation::Outcome::Failed,
        crate::operation::Outcome::RolledBack,
    ]
}
fn default_notify_timeout() -> Duration {
    Duration::from_millis(5_000)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(".cutover")
}
fn default_keep_images() -> usize {
    3
}
fn default_keep_deploys() -> usize {
    50
}
fn default_dockerfile() -> String {
    "Dockerfile".to_owned()
}
fn default_stop_grace() -> Duration {
    Duration::from_millis(10_000)
}
fn default_host_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn default_health_path() -> String {
    "/health".to_owned()
}
fn default_probe_timeout() -> Duration {
    Duration::from_millis(1_000)
}
fn default_first_delay() -> Duration {
    Duration::from_millis(20)
}
fn default_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_health_deadline() -> Duration {
    Duration::from_millis(60_000)
}
fn default_nginx() -> PathBuf {
    PathBuf::from("nginx")
}
fn default_command_timeout() -> Duration {
    Duration::from_millis(30_000)
}
fn default_verify_timeout() -> Duration {
    Duration::from_millis(5_000)
}
fn default_drain_timeout() -> Duration {
    Duration::from_millis(30_000)
}

impl Config {
    /// Reads, parses and checks the config file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read, is not TOML, has an unknown or
    /// missing key, a value of the wrong type, or values that cannot work together.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks config text; `path` is used in messages and to resolve
    /// relative paths.
    ///
    /// # Errors
    /// As [`Config::load`], without the read error.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = parse_toml(text, path)?;
        config.file = path.to_owned();
        config.check()?;
        if let Some(tls) = &mut config.engine.tls {
            let base = config.file.parent().unwrap_or(Path::new(""));
            for file in [&mut tls.ca, &mut tls.cert, &mut tls.key] {
                *file = base.join(&*file);
            }
        }
        Ok(config)
    }

    /// The directory relative paths in the file are resolved against.
    pub fn base_dir(&self) -> &Path {
        match self.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    /// The state directory, resolved against the config file's directory.
    pub fn state_dir(&self) -> PathBuf {
        self.base_dir().join(&self.state_dir)
    }

    /// A path from the file, resolved against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir().join(path)
    }

    /// The environment variables that hold secrets for this config (the registry
    /// password). Child processes that do not need them get them removed.
    pub fn secret_env_vars(&self) -> Vec<String> {
        self.image
            .registry
            .iter()
            .map(|r| r.password_env.clone())
            .chain(self.notify.iter().map(|n| n.url_env.clone()))
            .collect()
    }

    /// The slot config for `color`.
    pub fn color(&self, color: crate::Color) -> &ColorConfig {
        match color {
            crate::Color::Blue => &self.blue,
            crate::Color::Green => &self.green,
        }
    }

    /// The `address:port` the proxy and the probes use to reach `color`.
    pub fn upstream(&self, color: crate::Color) -> SocketAddr {
        let slot = self.color(color);
        if let Some(addr) = slot.upstream {
            return addr;
        }
        match (slot.host_port, slot.ip) {
            (Some(port), _) => SocketAddr::new(slot.host_ip, port),
            (None, Some(ip)) => SocketAddr::new(IpAddr::V4(ip), self.container.port),
            // check() refuses a slot with neither.
            (None, None) => SocketAddr::new(slot.host_ip, self.container.port),
        }
    }

    /// The addresses `color`'s copies answer at, as nginx names them in
    /// `$upstream_addr`: the one upstream of a single host, or any node's address at
    /// the colour's published port on a Swarm.
    pub fn upstreams(&self, color: crate::Color) -> Upstreams {
        match self.engine.kind {
            EngineKind::Docker => Upstreams::One(self.upstream(color)),
            EngineKind::Swarm => Upstreams::AnyOnPort(self.upstream(color).port()),
        }
    }

    /// How many of `color`'s copies must be healthy: `health.min_healthy`, else all
    /// of `wanted`.
    pub fn min_healthy(&self, wanted: usize) -> usize {
        self.health
            .min_healthy
            .map_or(wanted, |n| usize::try_from(n).unwrap_or(usize::MAX))
            .min(wanted)
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.file.clone(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// The Swarm keys go with `kind = "swarm"` and can work: a colour on more than one
    /// node needs a registry, each colour a published port, no container network.
    fn check_swarm(&self) -> Result<(), ConfigError> {
        let engine = &self.engine;
        if engine.kind != EngineKind::Swarm {
            if self.health.min_healthy.is_some() {
                return Err(self.invalid(
                    "health.min_healthy",
                    "one Docker host runs one copy of each colour, which must be healthy; this key is for a Swarm cluster (`kind = \"swarm\"` in [engine]): remove it",
                ));
            }
            let set = [
                ("engine.replicas", engine.replicas.is_some()),
                ("engine.mode", engine.mode.is_some()),
                ("engine.constraints", !engine.constraints.is_empty()),
                ("engine.labels", !engine.labels.is_empty()),
                ("engine.lock_lease", engine.lock_lease.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
                return Err(self.invalid(
                    key,
                    "this key is for a Swarm cluster: add `kind = \"swarm\"` to [engine], or remove it",
                ));
            }
            if !self.container.secrets.is_empty() {
                return Err(self.invalid(
                    "container.secrets",
                    "Docker secrets are a Swarm's: on one Docker host give the app its secrets with `container.env_file` or `container.env_from`",
                ));
            }
            return Ok(());
        }
        if let Some(bad) = self.container.secrets.iter().find(|name| {
            !name.starts_with(|c: char| c.is_ascii_alphanumeric())
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        }) {
            return Err(self.invalid(
                "container.secrets",
                format!(
                    "expected Docker secret names (letters, digits, `_`, `.`, `-`), found {bad:?}"
                ),
            ));
        }
        if engine.mode == Some(SwarmMode::Global) && engine.replicas.is_some() {
            return Err(self.invalid(
                "engine.replicas",
                "`mode = \"global\"` runs one task on every eligible node; remove `replicas`, or remove `mode` to run a fixed number",
            ));
        }
        if self.health.min_healthy == Some(0) {
            return Err(self.invalid(
                "health.min_healthy",
                "expected at least 1: traffic never moves to a colour with no healthy task",
            ));
        }
        if let (Some(min), Some(replicas)) = (self.health.min_healthy, engine.swarm_replicas())
            && min > replicas
        {
            return Err(self.invalid(
                "health.min_healthy",
                format!("expected at most `engine.replicas` ({replicas}): a colour never has more healthy tasks than it runs"),
            ));
        }
        if engine.lock_lease().as_secs() < 3 {
            return Err(self.invalid(
                "engine.lock_lease",
                "expected at least 3s: the holder renews it every third of the lease, and a renewal is a round trip to a manager",
            ));
        }
        if engine.replicas == Some(0) {
            return Err(self.invalid(
                "engine.replicas",
                "expected at least 1 (retiring a colour scales it to 0 by itself)",
            ));
        }
        let several_nodes = engine.swarm_replicas().is_none_or(|n| n > 1);
        if several_nodes && self.image.registry.is_none() {
            return Err(self.invalid(
                "image.registry",
                "a colour on more than one Swarm node needs a registry: each node pulls the image itself, and only a registry lets every node run the same bits by digest; set `registry = { server = \"HOST:PORT\", username = \"...\", password_env = \"...\" }` in [image] (a registry every node can reach), or `replicas = 1`",
            ));
        }
        for (i, constraint) in engine.constraints.iter().enumerate() {
            if !constraint.contains("==") && !constraint.contains("!=") {
                return Err(self.invalid(
                    &format!("engine.constraints[{i}]"),
                    format!(
                        "expected `ATTRIBUTE==VALUE` or `ATTRIBUTE!=VALUE` as `docker service create --constraint` takes it (e.g. \"node.labels.web==true\"), found {constraint:?}"
                    ),
                ));
            }
        }
        if let Some(key) = engine.labels.keys().find(|k| k.starts_with("cutover.")) {
            return Err(self.invalid(
                &format!("engine.labels.{key}"),
                "labels starting with `cutover.` are cutover's own (colour, deploy, cluster state); choose another name",
            ));
        }
        for (key, slot) in [("blue", &self.blue), ("green", &self.green)] {
            if slot.host_port.is_none() {
                return Err(self.invalid(
                    &format!("{key}.host_port"),
                    "a Swarm colour publishes its port in host mode on every node it runs on, where nginx and the probes reach it: set `host_port`",
                ));
            }
            if slot.ip.is_some() {
                return Err(self.invalid(
                    &format!("{key}.ip"),
                    "a Swarm colour has one task per node, each reached at its node's address: remove `ip`",
                ));
            }
        }
        if self.container.network.is_some() {
            return Err(self.invalid(
                "container.network",
                "a Swarm colour's tasks are reached through their host-mode port, not a bridge network: remove `network`",
            ));
        }
        Ok(())
    }

    /// Each `[[proxy.extra]]` has a unique plain name, usable commands and an
    /// http(s) URL; a canary (which reads one nginx's access log) takes none.
    fn check_extra_front_ends(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        for (i, front) in self.proxy.extra.iter().enumerate() {
            let key = |k: &str| format!("proxy.extra[{i}].{k}");
            let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
            if front.name.is_empty() || !front.name.chars().all(plain) {
                return Err(self.invalid(
                    &key("name"),
                    "expected a name of letters, digits, `-`, `_` or `.`, e.g. \"lb2\"",
                ));
            }
            if !names.insert(front.name.as_str()) {
                return Err(self.invalid(
                    &key("name"),
                    format!(
                        "`{}` names two front ends; give each its own name",
                        front.name
                    ),
                ));
            }
            for (k, cmd) in [
                ("test_command", &front.test_command),
                ("reload_command", &front.reload_command),
            ] {
                if cmd.as_ref().is_some_and(|c| c.is_empty()) {
                    return Err(self.invalid(
                        &key(k),
                        "expected a non-empty argv list, e.g. [\"ssh\", \"lb2\", \"sudo\", \"nginx\", \"-t\"]",
                    ));
                }
            }
            let url = &front.verify_url;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(self.invalid(
                    &key("verify_url"),
                    "expected an http:// or https:// URL that reaches the service through this nginx",
                ));
            }
        }
        if !self.proxy.extra.is_empty()
            && self.strategy.kind == crate::strategy::StrategyKind::Canary
        {
            return Err(self.invalid(
                "proxy.extra",
                "a canary judges the split from one nginx's access log, so it drives one front end: remove `[[proxy.extra]]` or use the blue/green strategy",
            ));
        }
        Ok(())
    }

    /// `engine.host` has a scheme cutover can reach, and `engine.tls` goes with `tcp://`.
    fn check_strategy(&self) -> Result<(), ConfigError> {
        self.strategy
            .check()
            .map_err(|(key, message)| self.invalid(&key, message))?;
        let canary = self.strategy.kind == crate::strategy::StrategyKind::Canary;
        if canary && self.proxy.mode == ProxyMode::External && self.proxy.access_log.is_none() {
            return Err(self.invalid(
                "proxy.access_log",
                "a canary judges each colour by its traffic: point `access_log` at nginx's access log written with cutover's `log_format cutover_json` (see the README)",
            ));
        }
        Ok(())
    }

    fn check_engine(&self) -> Result<(), ConfigError> {
        self.check_swarm()?;
        let Some(host) = &self.engine.host else {
            if self.engine.tls.is_some() {
                return Err(self.invalid(
                    "engine.tls",
                    "TLS needs a `host = \"tcp://HOST:2376\"` to connect to",
                ));
            }
            return Ok(());
        };
        let rest = ["unix://", "tcp://", "ssh://"]
            .iter()
            .find_map(|scheme| host.strip_prefix(scheme));
        match rest {
            None => Err(self.invalid(
                "engine.host",
                format!(
                    "expected \"unix:///path/docker.sock\", \"tcp://HOST:PORT\" or \"ssh://USER@HOST\", found {host:?}"
                ),
            )),
            Some("") => Err(self.invalid(
                "engine.host",
                format!("{host:?} names no socket or host"),
            )),
            Some(_) if self.engine.tls.is_some() && !host.starts_with("tcp://") => Err(
                self.invalid(
                    "engine.tls",
                    format!(
                        "TLS is for a `tcp://` engine; {host:?} is reached without it (ssh encrypts by itself)"
                    ),
                ),
            ),
            Some(_) => Ok(()),
        }
    }

    /// Cross-field checks that serde cannot express.
    fn check(&self) -> Result<(), ConfigError> {
        check_service_name(&self.service).map_err(|m| self.invalid("service", m))?;
        for name in &self.container.env_from {
            if !is_env_name(name) {
                return Err(self.invalid(
                    ENV_FROM_KEY,
                    format!(
                        "expected environment variable names (letters, digits, `_`), found {name:?}"
                    ),
                ));
            }
            if self.container.env.contains_key(name) {
                return Err(self.invalid(
                    ENV_FROM_KEY,
                    format!("`{name}` is also in `[container.env]`; keep one of them"),
                ));
            }
        }
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
        self.check_engine()?;
        self.check_strategy()?;
        if self.container.port == 0 {
            return Err(self.invalid("container.port", "expected a port between 1 and 65535"));
        }
        for (i, volume) in self.container.volumes.iter().enumerate() {
            if !volume.contains(':') {
                return Err(self.invalid(
                    &format!("container.volumes[{i}]"),
                    format!("expected `source:target[:options]`, found {volume:?}"),
                ));
            }
        }
        for (key, slot) in [("blue", &self.blue), ("green", &self.green)] {
            if slot.host_port == Some(0) {
                return Err(self.invalid(
                    &format!("{key}.host_port"),
                    "expected a port between 1 and 65535",
                ));
            }
            if slot.host_port.is_none() && slot.ip.is_none() && slot.upstream.is_none() {
                return Err(self.invalid(
                    key,
                    "expected `host_port`, `ip` or `upstream`: the proxy needs a way to reach this colour",
                ));
            }
            if slot.ip.is_some() && self.container.network.is_none() {
                return Err(self.invalid(
                    &format!("{key}.ip"),
                    "a fixed IP needs `container.network` with a `subnet`",
                ));
            }
        }
        if self.blue.host_port.is_some() && self.blue.host_port == self.green.host_port {
            return Err(self.invalid(
                "green.host_port",
                "blue and green publish the same host port; give each colour its own (the original script's bug)",
            ));
        }
        if self.upstream(crate::Color::Blue) == self.upstream(crate::Color::Green) {
            return Err(self.invalid(
                "green.upstream",
                "blue and green resolve to the same upstream address; give each colour its own",
            ));
        }
        if !self.health.path.starts_with('/') {
            return Err(self.invalid("health.path", "expected a path starting with `/`"));
        }
        if self.health.interval.get().is_zero() {
            return Err(self.invalid("health.interval", "expected a duration above zero"));
        }
        if self.health.deadline < self.health.timeout {
            return Err(self.invalid(
                "health.deadline",
                "expected a deadline at least as long as `health.timeout`",
            ));
        }
        match self.proxy.mode {
            ProxyMode::Managed => {
                let state_dir = self.state_dir();
                check_nginx_path(&std::path::absolute(&state_dir).unwrap_or(state_dir))
                    .map_err(|m| self.invalid("state_dir", m))?;
                if self.proxy.listen.is_none() {
                    return Err(self.invalid(
                        "proxy.listen",
                        "managed mode needs the address nginx listens on, e.g. \"127.0.0.1:8080\"",
                    ));
                }
                if self.proxy.pid_file.is_some() {
                    return Err(self.invalid(
                        "proxy.pid_file",
                        "managed mode keeps its pid file under the state directory; remove `pid_file` (it is for external mode)",
                    ));
                }
            }
            ProxyMode::External => {
                if self.proxy.config_dir.is_none() {
                    return Err(self.invalid(
                        "proxy.config_dir",
                        "external mode needs the nginx directory the rendered files go to, e.g. \"/etc/nginx/conf.d\"",
                    ));
                }
                if self.verify.url.is_none() {
                    return Err(self.invalid(
                        "verify.url",
                        "external mode needs the URL that reaches the service through nginx, e.g. \"http://127.0.0.1/health\"",
                    ));
                }
            }
        }
        if let Some(listen) = self.proxy.listen {
            self.check_listen_is_free(listen)?;
        }
        for (key, cmd) in [
            ("proxy.test_command", &self.proxy.test_command),
            ("proxy.reload_command", &self.proxy.reload_command),
        ] {
            if cmd.as_ref().is_some_and(|c| c.is_empty()) {
                return Err(self.invalid(
                    key,
                    "expected a non-empty argv list, e.g. [\"nginx\", \"-t\"]",
                ));
            }
        }
        self.check_extra_front_ends()?;
        if self.proxy.command_timeout.get().is_zero() {
            return Err(self.invalid(
                "proxy.command_timeout",
                "expected a duration above zero, e.g. \"30s\"",
            ));
        }
        if let Some(url) = &self.verify.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(self.invalid("verify.url", "expected an http:// or https:// URL"));
        }
        if let Some(ca_file) = &self.verify.ca_file {
            check_ca_file(&self.resolve(ca_file)).map_err(|m| self.invalid("verify.ca_file", m))?;
        }
        if let Some(header) = &self.verify.expect_header
            && !header.contains(':')
        {
            return Err(self.invalid(
                "verify.expect_header",
                "expected `Name: value`, e.g. \"X-Color: {color}\"",
            ));
        }
        if self.history.deploys == 0 {
            return Err(self.invalid("history.deploys", "expected at least 1"));
        }
        for (i, notify) in self.notify.iter().enumerate() {
            if !is_env_var_name(&notify.url_env) {
                return Err(self.invalid(
                    &format!("notify[{i}].url_env"),
                    "expected the name of the environment variable holding the webhook URL, e.g. \"SLACK_WEBHOOK_URL\"",
                ));
            }
            if notify.on.is_empty() {
                return Err(self.invalid(
                    &format!("notify[{i}].on"),
                    "expected at least one outcome, e.g. [\"failed\", \"rolled-back\"]; remove the table to send nothing",
                ));
            }
            if notify.timeout.get().is_zero() {
                return Err(self.invalid(
                    &format!("notify[{i}].timeout"),
                    "expected a duration above zero, e.g. \"5s\"",
                ));
            }
        }
        for kind in PluginKind::ALL {
            if let Some(spec) = self.plugins.get(kind) {
                self.check_plugin(kind, spec)?;
            }
        }
        Ok(())
    }

    /// nginx cannot listen where a colour is published or reached: one of the two
    /// would fail to bind, or nginx would proxy to itself.
    fn check_listen_is_free(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        let clash = |addr: SocketAddr| {
            addr.port() == listen.port()
                && (addr.ip() == listen.ip()
                    || addr.ip().is_unspecified()
                    || listen.ip().is_unspecified())
        };
        for color in crate::Color::BOTH {
            let slot = self.color(color);
            let published = slot
                .host_port
                .map(|port| SocketAddr::new(slot.host_ip, port));
            let (keys, addr) = match (published, slot.upstream) {
                (Some(addr), _) if clash(addr) => {
                    (format!("`{color}.host_ip`:`{color}.host_port`"), addr)
                }
                (_, Some(addr)) if clash(addr) => (format!("`{color}.upstream`"), addr),
                _ => continue,
            };
            return Err(self.invalid(
                "proxy.listen",
                format!(
                    "{listen} is also where {color} lives ({keys} = {addr}); nginx and the {color} container cannot share it: give `proxy.listen` or `{color}.host_port` another port"
                ),
            ));
        }
        Ok(())
    }

    fn check_plugin(&self, kind: PluginKind, spec: &PluginSpec) -> Result<(), ConfigError> {
        let key = format!("plugins.{kind}");
        if spec.source.starts_with("builtin:") {
            if spec.sha256.is_some() {
                return Err(self.invalid(
                    &format!("{key}.sha256"),
                    "built-in plugins are part of the binary and take no digest; remove `sha256`",
                ));
            }
        } else {
            match &spec.sha256 {
                None => {
                    return Err(self.invalid(
                        &format!("{key}.sha256"),
                        format!(
                            "a plugin file needs its digest pinned; run `cutover plugin sha256 {}` and paste the result",
                            spec.source
                        ),
                    ));
                }
                Some(d) if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    return Err(self.invalid(
                        &format!("{key}.sha256"),
                        "expected 64 hexadecimal characters",
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// An environment variable name: letters, digits and `_`, not starting with a digit.
fn is_env_var_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Deserializes TOML text into `T`, turning every serde error into a [`ConfigError`]
/// that names the file, the full key path and what was expected. Shared by every
/// TOML file cutover reads.
///
/// # Errors
/// [`ConfigError::Syntax`] for malformed TOML, [`ConfigError::Invalid`] for an
/// unknown or missing key or a value of the wrong type.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| syntax_error(path, text, &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        if inner.span().is_some() && key == "." && inner.message().contains("expected") {
            return syntax_error(path, text, &inner);
        }
        let message = inner.message().to_owned();
        ConfigError::Invalid {
            path: path.to_owned(),
            key: key_with_field(&key, &message),
            message,
        }
    })
}

/// Service names become container names, image names, label values and file names,
/// so only a conservative alphabet is accepted rather than escaping it everywhere.
fn check_service_name(name: &str) -> Result<(), String> {
    let ok_len = (1..=48).contains(&name.len());
    let mut chars = name.chars();
    let ok_first = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok_len && ok_first && ok_rest {
        Ok(())
    } else {
        Err(format!(
            "expected 1 to 48 characters of a-z, 0-9, `-` or `_`, starting with a letter or digit, found {name:?}"
        ))
    }
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

/// The first character of `text` that an nginx double-quoted string cannot hold
/// safely: `"` and `\\` would end or escape it, `$` would start a variable, control
/// characters cannot be written portably. Shared with the managed nginx's renderer.
pub fn nginx_unsafe_char(text: &str) -> Option<char> {
    text.chars()
        .find(|c| c.is_control() || matches!(c, '"' | '\\' | '$'))
}

/// The managed nginx's config names paths under the state directory in double-quoted
/// strings; refuses a directory such a string cannot hold.
fn check_nginx_path(path: &Path) -> Result<(), String> {
    let fix = "Choose a `state_dir` without quotes, backslashes, `$` or control characters \
               (an absolute path if the config's own directory has them)";
    match path.to_str() {
        None => Err(format!(
            "the managed nginx's files would live under {}, which is not UTF-8; nginx's config cannot name it. {fix}",
            path.display()
        )),
        Some(text) => match nginx_unsafe_char(text) {
            Some(c) => Err(format!(
                "the managed nginx's files would live under {text:?}, which holds {c:?}; nginx's config cannot name such a path safely. {fix}"
            )),
            None => Ok(()),
        },
    }
}

/// Refuses a CA file that could not serve when the deploy reaches verification (after
/// the switch): unreadable, not PEM, or without a certificate. Read here so the mistake
/// stops the deploy before anything starts.
fn check_ca_file(path: &Path) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let expected = "expected a PEM file of CA certificates (`-----BEGIN CERTIFICATE-----`)";
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read {}: {e}; {expected}", path.display()))?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| format!("{} is not valid PEM ({e}); {expected}", path.display()))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!(
            "{} holds no certificate; {expected}",
            path.display()
        ));
    }
    Ok(())
}

/// serde reports "unknown field `x`" and "missing field `x`" against the parent path;
/// users want the full key.
fn key_with_field(path: &str, message: &str) -> String {
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    match (path, field) {
        (".", Some(field)) => field.to_owned(),
        (".", None) => "(top level)".to_owned(),
        (path, Some(field)) if !path.ends_with(field) => format!("{path}.{field}"),
        (path, _) => path.to_owned(),
    }
}

fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
        .unwrap_or(1);
    ConfigError::Syntax {
        path: path.to_owned(),
        line,
        message: e.message().to_owned(),
    }
}

impl<'a> From<&'a Config> for PluginSettings<'a> {
    fn from(config: &'a Config) -> PluginSettings<'a> {
        PluginSettings {
            plugins: &config.plugins,
            base_dir: config.base_dir(),
            file: &config.file,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
service = "hello"
[image]
ref = "hello:1"
[container]
port = 8080
[proxy]
mode = "managed"
listen = "127.0.0.1:8080"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/repo/cutover.toml"))
    }

    fn error_of(text: &str) -> String {
        parse(text)
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn env_from_takes_variable_names_not_also_in_container_env() {
        let with = |extra: &str| MINIMAL.replace("port = 8080\n", &format!("port = 8080\n{extra}"));
        let config = parse(&with(
            "env_from = [\"DATABASE_URL\"]\nenv_file = \"app.env\"\n",
        ))
        .unwrap();
        assert_eq!(config.container.env_from, ["DATABASE_URL"]);
        let msg = error_of(&with("env_from = [\"DATABASE-URL\"]\n"));
        assert!(
            msg.contains("key `container.env_from`") && msg.contains("\"DATABASE-URL\""),
            "{msg}"
        );
        let msg = error_of(&with("env_from = [\"A\"]\n[container.env]\nA = \"1\"\n"));
        assert!(msg.contains("`A` is also in `[container.env]`"), "{msg}");
    }

    #[test]
    fn docker_secrets_are_for_a_swarm_and_named_as_docker_names_them() {
        let msg = error_of(&MINIMAL.replace("port = 8080\n", "port = 8080\nsecrets = [\"db\"]\n"));
        assert!(
            msg.contains("key `container.secrets`") && msg.contains("env_file"),
            "{msg}"
        );
        let swarm = MINIMAL.replace("port = 8080\n", "port = 8080\nsecrets = [\"../db\"]\n")
            + "[engine]\nkind = \"swarm\"\n[blue]\nhost_port = 18081\n[green]\nhost_port = 18082\n";
        let msg = error_of(&swarm);
        assert!(
            msg.contains("key `container.secrets`") && msg.contains("\"../db\""),
            "{msg}"
        );
    }

    #[test]
    fn a_sticky_cookie_name_with_a_dash_is_refused_in_config() {
        let canary = "\n[strategy]\nkind = \"canary\"\nsteps = [\"10%\", \"100%\"]\n";
        let msg = error_of(&format!(
            "{MINIMAL}{canary}sticky = {{ cookie = \"my-session\" }}\n"
        ));
        for part in [
            "/repo/cutover.toml",
            "key `strategy.sticky.cookie`",
            "letters, digits and `_`",
            "\"my-session\"",
        ] {
            assert!(msg.contains(part), "{part:?} in {msg}");
        }
        // A header may have `-`: nginx's `$http_` variable turns it into `_`.
        let config = parse(&format!(
            "{MINIMAL}{canary}sticky = {{ header = \"X-User-Id\" }}\n"
        ))
        .unwrap();
        assert!(config.strategy.sticky.is_some());
        let msg = error_of(&format!(
            "{MINIMAL}{canary}sticky = {{ header = \"a;b\" }}\n"
        ));
        assert!(msg.contains("key `strategy.sticky.header`"), "{msg}");
    }

    #[test]
    fn engine_section_reads_ssh_tcp_with_tls_and_defaults_to_docker() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.engine.kind, EngineKind::Docker);
        assert_eq!(c.engine.host, None);

        let c = parse(&format!(
            "{MINIMAL}[engine]\nkind = \"docker\"\nhost = \"ssh://deploy@app1\"\n"
        ))
        .unwrap();
        assert_eq!(c.engine.host.as_deref(), Some("ssh://deploy@app1"));

        let c = parse(&format!(
            "{MINIMAL}[engine]\nhost = \"tcp://app1:2376\"\n\
             tls = {{ ca = \"certs/ca.pem\", cert = \"certs/cert.pem\", key = \"/etc/k.pem\" }}\n"
        ))
        .unwrap();
        let tls = c.engine.tls.unwrap();
        assert_eq!(
            tls.ca,
            PathBuf::from("/repo/certs/ca.pem"),
            "relative to the file"
        );
        assert_eq!(tls.cert, PathBuf::from("/repo/certs/cert.pem"));
        assert_eq!(tls.key, PathBuf::from("/etc/k.pem"));
    }

    const REGISTRY: &str = "[image.registry]\nserver = \"10.0.0.1:5000\"\nusername = \"ci\"\npassword_env = \"REG_PW\"\n";

    #[test]
    fn swarm_engine_reads_replicas_global_constraints_and_labels() {
        let c = parse(&format!(
            "{MINIMAL}{REGISTRY}[engine]\nkind = \"swarm\"\nhost = \"ssh://deploy@manager1\"\n\
             replicas = 3\nconstraints = [\"node.labels.web==true\"]\nlabels = {{ team = \"web\" }}\n"
        ))
        .unwrap();
        assert_eq!(c.engine.kind, EngineKind::Swarm);
        assert_eq!(c.engine.swarm_replicas(), Some(3));
        assert_eq!(c.engine.constraints, ["node.labels.web==true"]);
        assert_eq!(c.engine.labels["team"], "web");

        let c = parse(&format!(
            "{MINIMAL}{REGISTRY}[engine]\nkind = \"swarm\"\nmode = \"global\"\n"
        ))
        .unwrap();
        assert_eq!(c.engine.swarm_replicas(), None, "global: one per node");

        // One replica may run from a local image: no registry needed at load time.
        let c = parse(&format!("{MINIMAL}[engine]\nkind = \"swarm\"\n")).unwrap();
        assert_eq!(c.engine.swarm_replicas(), Some(1));
    }

    #[test]
    fn swarm_engine_errors_name_the_key_and_say_why() {
        let swarm = "[engine]\nkind = \"swarm\"\n";
        for (text, key, needle) in [
            (
                format!("{MINIMAL}{swarm}replicas = 3\n"),
                "image.registry",
                "each node pulls the image itself",
            ),
            (
                format!("{MINIMAL}{swarm}mode = \"global\"\n"),
                "image.registry",
                "more than one Swarm node",
            ),
            (
                format!("{MINIMAL}{REGISTRY}{swarm}mode = \"global\"\nreplicas = 2\n"),
                "engine.replicas",
                "remove `replicas`",
            ),
            (
                format!("{MINIMAL}{swarm}replicas = 0\n"),
                "engine.replicas",
                "at least 1",
            ),
            (
                format!("{MINIMAL}{swarm}constraints = [\"node.role\"]\n"),
                "engine.constraints[0]",
                "ATTRIBUTE==VALUE",
            ),
            (
                format!("{MINIMAL}{swarm}labels = {{ \"cutover.color\" = \"x\" }}\n"),
                "engine.labels.cutover.color",
                "cutover's own",
            ),
            (
                format!("{MINIMAL}[engine]\nreplicas = 3\n"),
                "engine.replicas",
                "kind = \"swarm\"",
            ),
            (
                format!("{MINIMAL}[engine]\nconstraints = [\"node.role==manager\"]\n"),
                "engine.constraints",
                "kind = \"swarm\"",
            ),
            (
                format!("{MINIMAL}{swarm}mode = \"spread\"\n"),
                "engine.mode",
                "global",
            ),
            (
                format!("{MINIMAL}{swarm}[blue]\nupstream = \"10.0.0.5:80\"\n"),
                "blue.host_port",
                "host mode",
            ),
        ] {
            let message = error_of(&text);
            assert!(
                message.contains(&format!("key `{key}`")),
                "{text}: {message}"
            );
            assert!(message.contains(needle), "{text}: {message}");
        }
    }

    #[test]
    fn engine_section_errors_name_the_key() {
        for (engine, key, needle) in [
            ("hots = \"ssh://app1\"", "engine.hots", "unknown field"),
            ("kind = \"kubernetes\"", "engine.kind", "swarm"),
            ("host = \"app1:2376\"", "engine.host", "tcp://HOST:PORT"),
            (
                "host = \"ssh://\"",
                "engine.host",
                "names no socket or host",
            ),
            (
                "host = \"ssh://app1\"\ntls = { ca = \"a\", cert = \"b\", key = \"c\" }",
                "engine.tls",
                "ssh encrypts",
            ),
            (
                "tls = { ca = \"a\", cert = \"b\", key = \"c\" }",
                "engine.tls",
                "tcp://",
            ),
            (
                "host = \"tcp://app1\"\ntls = { ca = \"a\", cert = \"b\" }",
                "engine.tls",
                "key",
            ),
        ] {
            let message = error_of(&format!("{MINIMAL}[engine]\n{engine}\n"));
            assert!(
                message.contains(&format!("key `{key}")),
                "{engine}: {message}"
            );
            assert!(message.contains(needle), "{engine}: {message}");
        }
    }

    #[test]
    fn extra_front_ends_are_parsed_and_checked() {
        let lb2 = "\n[[proxy.extra]]\nname = \"lb2\"\nconfig_dir = \"lb2/conf.d\"\n\
                   reload_command = [\"ssh\", \"lb2\", \"sudo\", \"nginx\", \"-s\", \"reload\"]\n\
                   verify_url = \"http://10.0.0.12/health\"\n";
        let c = parse(&format!("{MINIMAL}{lb2}")).unwrap();
        assert_eq!(c.proxy.extra.len(), 1);
        assert_eq!(c.proxy.extra[0].name, "lb2");
        assert!(c.proxy.extra[0].test_command.is_none());
        let twice = error_of(&format!("{MINIMAL}{lb2}{lb2}"));
        assert!(
            twice.contains("proxy.extra[1].name") && twice.contains("`lb2` names two"),
            "{twice}"
        );
        let no_url = error_of(&format!("{MINIMAL}{}", lb2.replace("http://", "ftp://")));
        assert!(no_url.contains("proxy.extra[0].verify_url"), "{no_url}");
        let empty = error_of(&format!(
            "{MINIMAL}{}",
            lb2.replace("verify_url", "test_command = []\nverify_url")
        ));
        assert!(empty.contains("proxy.extra[0].test_command"), "{empty}");
        let missing = error_of(&format!("{MINIMAL}{}", lb2.replace("config_dir", "# ")));
        assert!(missing.contains("config_dir"), "{missing}");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.service, "hello");
        assert_eq!(c.state_dir(), PathBuf::from("/repo/.cutover"));
        assert_eq!(
            c.upstream(crate::Color::Blue).to_string(),
            "127.0.0.1:18081"
        );
        assert_eq!(
            c.upstream(crate::Color::Green).to_string(),
            "127.0.0.1:18082"
        );
        assert_eq!(
            c.health.interval.get(),
            std::time::Duration::from_millis(100)
        );
    }

    #[test]
    fn notify_tables_default_to_failures_and_name_bad_keys() {
        let c = parse(&format!(
            "{MINIMAL}\n[[notify]]\nurl_env = \"CHAT_HOOK\"\n\n[[notify]]\nurl_env = \"RAW\"\nformat = \"json\"\non = [\"succeeded\", \"denied\"]\n"
        ))
        .unwrap();
        use crate::operation::Outcome;
        assert_eq!(c.notify[0].format, NotifyFormat::Slack);
        assert_eq!(c.notify[0].on, [Outcome::Failed, Outcome::RolledBack]);
        assert_eq!(c.notify[1].on, [Outcome::Succeeded, Outcome::Denied]);
        assert!(c.secret_env_vars().contains(&"CHAT_HOOK".to_owned()));
        let msg = error_of(&format!(
            "{MINIMAL}\n[[notify]]\nurl_env = \"https://hooks\"\n"
        ));
        assert!(msg.contains("`notify[0].url_env`"), "{msg}");
        let msg = error_of(&format!(
            "{MINIMAL}\n[[notify]]\nurl_env = \"X\"\non = [\"exploded\"]\n"
        ));
        assert!(msg.contains("notify[0].on"), "{msg}");
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let msg = error_of(&MINIMAL.replace("port = 8080", "port = 8080\nprot = 1"));
        assert!(msg.contains("/repo/cutover.toml"), "{msg}");
        assert!(msg.contains("`container.prot`"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let msg = error_of(&MINIMAL.replace("port = 8080", ""));
        assert!(msg.contains("`container.port`"), "{msg}");
        assert!(msg.contains("missing field"), "{msg}");
        let msg = error_of(&MINIMAL.replace("service = \"hello\"", ""));
        assert!(msg.contains("`service`"), "{msg}");
    }

    #[test]
    fn wrong_type_names_key_and_expectation() {
        let msg = error_of(&MINIMAL.replace("port = 8080", "port = \"eighty\""));
        assert!(msg.contains("`container.port`"), "{msg}");
        assert!(msg.contains("u16") || msg.contains("integer"), "{msg}");
        let msg = error_of(&format!("{MINIMAL}\n[health]\ninterval = \"soon\"\n"));
        assert!(msg.contains("`health.interval`"), "{msg}");
        assert!(msg.contains("\"500ms\""), "{msg}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let msg = error_of("service = \"hello\"\n[image\n");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn both_colours_on_one_port_is_refused() {
        let msg = error_of(&format!(
            "{MINIMAL}\n[blue]\nhost_port = 9000\n[green]\nhost_port = 9000\n"
        ));
        assert!(msg.contains("`green.host_port`"), "{msg}");
    }

    #[test]
    fn service_names_with_shell_metacharacters_are_refused() {
        for bad in [
            "hello world",
            "a;rm -rf",
            "héllo",
            "$(x)",
            "",
            "-lead",
            "UPPER",
        ] {
            let msg = error_of(&MINIMAL.replace("\"hello\"", &format!("{bad:?}")));
            assert!(msg.contains("`service`"), "{bad}: {msg}");
        }
    }

    #[test]
    fn plugin_file_needs_a_digest() {
        let msg = error_of(&format!(
            "{MINIMAL}\n[plugins.deploy-gate]\nsource = \"gate.wasm\"\n"
        ));
        assert!(msg.contains("`plugins.deploy-gate.sha256`"), "{msg}");
        assert!(msg.contains("cutover plugin sha256"), "{msg}");
    }

    #[test]
    fn plugin_config_becomes_json() {
        let c = parse(&format!(
            "{MINIMAL}\n[plugins.deploy-gate]\nsource = \"builtin:tag-pattern\"\nconfig = {{ pattern = \"cicd\" }}\n"
        ))
        .unwrap();
        let spec = c.plugins.get(PluginKind::DeployGate).unwrap();
        assert_eq!(spec.config_json(), r#"{"pattern":"cicd"}"#);
    }

    #[test]
    fn external_mode_needs_config_dir_and_verify_url() {
        let text = MINIMAL.replace("mode = \"managed\"", "mode = \"external\"");
        assert!(error_of(&text).contains("`proxy.config_dir`"));
        let text = text.replace("listen", "config_dir = \"/etc/nginx/conf.d\"\n#");
        assert!(error_of(&text).contains("`verify.url`"));
    }

    #[test]
    fn pid_file_belongs_to_external_mode() {
        let msg = error_of(&MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\npid_file = \"/run/nginx.pid\"",
        ));
        assert!(msg.contains("`proxy.pid_file`"), "{msg}");
        let c = parse(&format!(
            "{}\n[verify]\nurl = \"http://127.0.0.1/health\"\n",
            MINIMAL
                .replace("mode = \"managed\"", "mode = \"external\"")
                .replace(
                    "listen = \"127.0.0.1:8080\"",
                    "config_dir = \"/etc/nginx/conf.d\"\npid_file = \"/run/nginx.pid\"",
                )
        ))
        .unwrap();
        assert_eq!(c.proxy.pid_file, Some(PathBuf::from("/run/nginx.pid")));
    }

    #[test]
    fn proxy_listen_on_a_colours_port_is_refused() {
        let msg = error_of(&MINIMAL.replace("127.0.0.1:8080", "127.0.0.1:18082"));
        assert!(msg.contains("/repo/cutover.toml"), "{msg}");
        assert!(msg.contains("key `proxy.listen`"), "{msg}");
        assert!(msg.contains("`green.host_ip`:`green.host_port`"), "{msg}");
        assert!(msg.contains("another port"), "{msg}");
        // A wildcard listen address takes the port on every address.
        let msg = error_of(&format!(
            "{}\n[blue]\nhost_port = 9000\n",
            MINIMAL.replace("127.0.0.1:8080", "0.0.0.0:9000")
        ));
        assert!(msg.contains("`blue.host_ip`:`blue.host_port`"), "{msg}");
        let msg = error_of(&format!(
            "{MINIMAL}\n[green]\nupstream = \"127.0.0.1:8080\"\n"
        ));
        assert!(msg.contains("`green.upstream`"), "{msg}");
        // Another address on the same port is fine.
        parse(&format!(
            "{MINIMAL}\n[blue]\nhost_ip = \"127.0.0.2\"\nhost_port = 8080\n"
        ))
        .unwrap();
    }

    #[test]
    fn missing_config_file_names_it_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        let msg = Config::load(&path).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "cannot read config file {}: No such file or directory (os error 2); \
                 create it (`cutover init` writes one) or pass another file with --config",
                path.display()
            )
        );
    }

    #[test]
    fn duration_written_as_a_number_says_what_to_write() {
        let msg = error_of(&format!("{MINIMAL}\n[verify]\ntimeout = 10\n"));
        assert!(msg.contains("/repo/cutover.toml"), "{msg}");
        assert!(msg.contains("key `verify.timeout`"), "{msg}");
        assert!(msg.contains("a duration such as \"10s\""), "{msg}");
        assert!(msg.contains("found the number 10"), "{msg}");
        let msg = error_of(&format!("{MINIMAL}\n[health]\ninterval = 0.5\n"));
        assert!(msg.contains("key `health.interval`"), "{msg}");
        assert!(msg.contains("a duration such as"), "{msg}");
        let msg = error_of(&format!("{MINIMAL}\n[health]\ninterval = true\n"));
        assert!(msg.contains("a duration such as \"500ms\""), "{msg}");
    }

    #[test]
    fn registry_server_must_read_as_a_host_to_docker() {
        let with = |server: &str| {
            format!(
                "{MINIMAL}\n[image.registry]\nserver = \"{server}\"\nusername = \"ci\"\npassword_env = \"PW\"\n"
            )
        };
        for ok in [
            "127.0.0.1:5000",
            "registry.example.com",
            "localhost",
            "registry:5000",
        ] {
            assert!(parse(&with(ok)).is_ok(), "{ok}");
        }
        let msg = error_of(&with("registry"));
        assert!(msg.contains("`image.registry.server`"), "{msg}");
        assert!(msg.contains("Docker Hub"), "{msg}");
    }

    #[test]
    fn ca_file_must_hold_pem_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let config = |extra: &str| {
            Config::parse(
                &format!("{MINIMAL}\n[verify]\nurl = \"https://127.0.0.1:8443/health\"\n{extra}"),
                &dir.path().join("cutover.toml"),
            )
        };
        let msg = config("ca_file = \"missing.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`verify.ca_file`"), "{msg}");
        assert!(msg.contains("missing.pem"), "{msg}");
        assert!(msg.contains("expected a PEM file"), "{msg}");
        std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
        let msg = config("ca_file = \"empty.pem\"\n").unwrap_err().to_string();
        assert!(msg.contains("holds no certificate"), "{msg}");
        let ca = rcgen::CertificateParams::new(Vec::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let c = config("ca_file = \"ca.pem\"\n").unwrap();
        assert_eq!(c.verify.ca_file, Some(PathBuf::from("ca.pem")));
        assert!(config("").is_ok(), "https:// needs no ca_file");
    }

    #[test]
    fn command_timeout_defaults_and_refuses_zero() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(
            c.proxy.command_timeout.get(),
            std::time::Duration::from_secs(30)
        );
        let msg = error_of(&MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\ncommand_timeout = \"0s\"",
        ));
        assert!(msg.contains("`proxy.command_timeout`"), "{msg}");
    }
}

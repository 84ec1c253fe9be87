//! `[container]`, `[blue]` and `[green]`: how each colour's container runs and where
//! the proxy reaches it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use crate::{Config, ConfigError, Duration};

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
    pub(crate) fn default_blue() -> Self {
        Self::on_port(18081)
    }

    pub(crate) fn default_green() -> Self {
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

pub(crate) fn default_stop_grace() -> Duration {
    Duration::from_millis(10_000)
}

pub(crate) fn default_host_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

impl Config {
    /// `container.env_from`: variable names, none also in `[container.env]`.
    pub(crate) fn check_env_from(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// `[container]`: the port and the volumes.
    pub(crate) fn check_container(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// `[blue]` and `[green]`: each reachable, and not the same place.
    pub(crate) fn check_colors(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }
}

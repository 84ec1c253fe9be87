//! `[engine]`: where the containers run — this Docker host, a remote one over ssh or
//! TLS, or a Swarm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Config, ConfigError, Duration};

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

impl Config {
    /// The Swarm keys go with `kind = "swarm"` and can work: a colour on more than one
    /// node needs a registry, each colour a published port, no container network.
    pub(crate) fn check_swarm(&self) -> Result<(), ConfigError> {
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

    pub(crate) fn check_engine(&self) -> Result<(), ConfigError> {
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
}

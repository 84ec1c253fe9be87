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

mod container;
mod engine;
mod health;
mod hook;
mod image;
mod notify;
mod proxy;
pub mod strategy;

pub use container::*;
pub use engine::*;
pub use health::*;
pub use hook::*;
pub use image::*;
pub use notify::*;
pub use proxy::*;

use std::net::{IpAddr, SocketAddr};
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
    /// Release hooks (`[[hook]]`), in the order written.
    #[serde(default)]
    pub hook: Vec<HookConfig>,

    /// The file this config was read from (set by [`Config::load`]).
    #[serde(skip)]
    pub file: PathBuf,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(".cutover")
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
        config.default_template_for_managed_mode();
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

    /// The error for `key` of this file: `message` says what was expected.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.file.clone(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// Cross-field checks that serde cannot express.
    fn check(&self) -> Result<(), ConfigError> {
        check_service_name(&self.service).map_err(|m| self.invalid("service", m))?;
        self.check_env_from()?;
        self.check_image()?;
        self.check_engine()?;
        self.check_strategy()?;
        self.check_container()?;
        self.check_colors()?;
        self.check_health()?;
        self.check_proxy()?;
        self.check_verify()?;
        self.check_notify()?;
        self.check_hooks()?;
        for kind in PluginKind::ALL {
            if let Some(spec) = self.plugins.get(kind) {
                self.check_plugin(kind, spec)?;
            }
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
    fn hooks_run_in_a_container_or_locally_and_abort_only_before_the_switch() {
        let with = |hooks: &str| format!("{MINIMAL}{hooks}");
        let config = parse(&with(
            "[[hook]]\nname = \"migrate\"\nwhen = \"before-switch\"\ncontainer = [\"migrate\", \"--to\", \"2\"]\ntimeout = \"30s\"\n\
             [[hook]]\nname = \"tell\"\nwhen = \"after-switch\"\nlocal = [\"./notify.sh\"]\n",
        ))
        .unwrap();
        let [migrate, tell] = &config.hook[..] else {
            panic!("{:?}", config.hook)
        };
        assert_eq!(
            migrate.run(),
            HookRun::Container(&["migrate".into(), "--to".into(), "2".into()])
        );
        assert_eq!(
            (migrate.on_failure(), migrate.on_rollback()),
            (OnFailure::Abort, false)
        );
        assert_eq!(migrate.timeout.get(), std::time::Duration::from_secs(30));
        assert_eq!(
            (tell.on_failure(), tell.on_rollback()),
            (OnFailure::Warn, true)
        );
        assert_eq!(tell.timeout.get(), std::time::Duration::from_secs(600));
        assert_eq!(config.hooks(HookWhen::BeforeSwitch).count(), 1);

        for (hooks, key, says) in [
            (
                "name = \"m\"\nwhen = \"before-start\"\n",
                "hook[0]",
                "exactly one of",
            ),
            (
                "name = \"m\"\nwhen = \"before-start\"\nlocal = [\"a\"]\ncontainer = [\"b\"]\n",
                "hook[0]",
                "exactly one of",
            ),
            (
                "name = \"m\"\nwhen = \"before-start\"\nlocal = []\n",
                "hook[0].local",
                "a program and its arguments",
            ),
            (
                "name = \"db migrate\"\nwhen = \"before-start\"\nlocal = [\"a\"]\n",
                "hook[0].name",
                "letters, digits",
            ),
            (
                "name = \"m\"\nwhen = \"after-switch\"\nlocal = [\"a\"]\non_failure = \"abort\"\n",
                "hook[0].on_failure",
                "only \"warn\"",
            ),
            (
                "name = \"m\"\nwhen = \"before-start\"\nlocal = [\"a\"]\ntimeout = \"0s\"\n",
                "hook[0].timeout",
                "above zero",
            ),
            (
                "name = \"m\"\nwhen = \"later\"\nlocal = [\"a\"]\n",
                "hook[0].when",
                "before-start",
            ),
        ] {
            let msg = error_of(&with(&format!("[[hook]]\n{hooks}")));
            assert!(
                msg.contains(&format!("key `{key}`")) && msg.contains(says),
                "{hooks}: {msg}"
            );
        }
        let twice = "[[hook]]\nname = \"m\"\nwhen = \"before-start\"\nlocal = [\"a\"]\n";
        let msg = error_of(&with(&format!("{twice}{twice}")));
        assert!(
            msg.contains("key `hook[1].name`") && msg.contains("also hook[0]'s name"),
            "{msg}"
        );
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
    fn both_colors_on_one_port_is_refused() {
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
    fn the_managed_nginx_pools_backend_connections_unless_told_otherwise() {
        let template = |text: &str| {
            parse(text)
                .unwrap()
                .plugins
                .get(PluginKind::ProxyTemplate)
                .map(PluginSpec::config_json)
        };
        assert_eq!(
            template(MINIMAL).as_deref(),
            Some(r#"{"file":"service-url.inc","keepalive":32}"#)
        );
        let own = format!(
            "{MINIMAL}\n[plugins.proxy-template]\nsource = \"builtin:nginx-service-url\"\nconfig = {{ keepalive = 0, file = \"a.inc\" }}\n"
        );
        assert_eq!(
            template(&own).as_deref(),
            Some(r#"{"file":"a.inc","keepalive":0}"#)
        );
        let extra = format!(
            "{MINIMAL}\n[[proxy.extra]]\nname = \"lb2\"\nconfig_dir = \"/etc/nginx/conf.d\"\nverify_url = \"http://10.0.0.2/\"\n"
        );
        assert_eq!(
            template(&extra).as_deref(),
            Some(r#"{"file":"service-url.inc"}"#)
        );
        let external = MINIMAL.replace(
            "mode = \"managed\"\nlisten = \"127.0.0.1:8080\"",
            "mode = \"external\"\nconfig_dir = \"/etc/nginx/conf.d\"\n[verify]\nurl = \"http://127.0.0.1/\"",
        );
        assert_eq!(template(&external), None);
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
    fn proxy_listen_on_a_colors_port_is_refused() {
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

//! `[proxy]`, `[[proxy.extra]]` and `[drain]`: the nginx that switches traffic, and how
//! it drains.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Config, ConfigError, Duration};

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
    /// The HTML page `cutover pause` serves with 503 (relative to the config file);
    /// none for a short built-in one.
    pub pause_page: Option<PathBuf>,
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

pub(crate) fn default_nginx() -> PathBuf {
    PathBuf::from("nginx")
}

pub(crate) fn default_command_timeout() -> Duration {
    Duration::from_millis(30_000)
}

pub(crate) fn default_drain_timeout() -> Duration {
    Duration::from_millis(30_000)
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
pub(crate) fn check_nginx_path(path: &Path) -> Result<(), String> {
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

/// The idle connections to each colour every worker of the managed nginx keeps.
pub const MANAGED_KEEPALIVE: i64 = 32;

impl Config {
    /// The managed nginx has its own config directory and loads upstream blocks, so
    /// its default template pools backend connections (`keepalive`) and keeps the
    /// include's historic name (`service-url.inc`: a state directory from before
    /// per-service names keeps one include). A key the config sets wins; an external
    /// nginx, and a managed one with `[[proxy.extra]]` front ends, gets no pool by
    /// default, since their `include` lines may not load upstream blocks; nor does
    /// a Swarm's (see below).
    pub(crate) fn default_template_for_managed_mode(&mut self) {
        if self.proxy.mode != ProxyMode::Managed {
            return;
        }
        let builtin = crate::plugin::builtin::default_for(crate::plugin::PluginKind::ProxyTemplate);
        let spec = self
            .plugins
            .proxy_template
            .get_or_insert_with(|| crate::plugin::PluginSpec {
                source: builtin.source(),
                sha256: None,
                limits: crate::plugin::LimitsConfig::default(),
                config: toml::Table::new(),
            });
        if spec.source != builtin.source() {
            return;
        }
        // `[[proxy.extra]]` nginxes get the same files, and theirs may load only the
        // include, as the original write-up's did: no pool then, unless asked for.
        // Nor on a Swarm: a node cut off the network leaves its pooled connections
        // open but silent, and a request sent on one would wait for the read
        // timeout instead of the 2 s connect timeout that lets nginx try the next.
        if self.proxy.extra.is_empty() && self.engine.kind == crate::EngineKind::Docker {
            spec.config
                .entry("keepalive")
                .or_insert(toml::Value::Integer(MANAGED_KEEPALIVE));
        }
        spec.config
            .entry("file")
            .or_insert_with(|| toml::Value::String("service-url.inc".to_owned()));
    }

    /// `[proxy]`: what each mode needs, the commands, the front ends.
    pub(crate) fn check_proxy(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// Each `[[proxy.extra]]` has a unique plain name, usable commands and an
    /// http(s) URL; a canary (which reads one nginx's access log) takes none.
    pub(crate) fn check_extra_front_ends(&self) -> Result<(), ConfigError> {
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

    /// nginx cannot listen where a colour is published or reached: one of the two
    /// would fail to bind, or nginx would proxy to itself.
    pub(crate) fn check_listen_is_free(&self, listen: SocketAddr) -> Result<(), ConfigError> {
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
}

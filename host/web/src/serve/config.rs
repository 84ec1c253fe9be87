//! `cutover-serve.toml`: what the server listens on, where its secret and state are,
//! and the repositories it deploys. Loading checks every key and names the one that is
//! wrong; it never reads the environment or touches a checkout (the server does that
//! when it binds).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{self, ConfigError};

/// `cutover-serve.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The address to listen on (plain HTTP: put TLS in front when it is not loopback).
    pub listen: SocketAddr,
    /// The environment variable holding the webhook secret.
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
    /// The environment variable holding a bearer token for `GET /deploys`. Unset:
    /// only loopback clients may read it. Set: every client must send
    /// `Authorization: Bearer <token>` (loopback too: behind a reverse proxy on the
    /// same host every client is loopback).
    #[serde(default)]
    pub deploys_token_env: Option<String>,
    /// Host names besides loopback's (`localhost`, `127.0.0.1`, `[::1]`) that requests
    /// for the views and `GET /deploys` may name when no token is configured (any
    /// other is refused with 421, against DNS rebinding). Webhooks are not checked.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Requests with a larger body are refused with 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Where delivery ids are remembered across restarts (relative to this file).
    #[serde(default = "default_serve_state")]
    pub state_dir: PathBuf,
    /// How long a deploy waits for the service's deploy lock (e.g. held by a CI run).
    #[serde(default = "default_lock_wait")]
    pub lock_wait: config::Duration,
    /// Open HTTP connections at most; at the cap the oldest one without a request in
    /// progress is closed to make room.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection that has not sent a whole request head within this is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: config::Duration,
    /// How long shutdown waits for running deploys before killing them.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: config::Duration,
    /// The repositories this server deploys.
    #[serde(rename = "repository")]
    pub repositories: Vec<RepoConfig>,
    /// The file this config was read from.
    #[serde(skip)]
    pub file: PathBuf,
}

/// One repository the server deploys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// The repository's full name as GitHub sends it (`owner/name`; compared
    /// without regard to case, as GitHub does).
    pub name: String,
    /// The working checkout deploys run in (relative to this file).
    pub checkout: PathBuf,
    /// The deploy config, relative to the checkout.
    #[serde(default = "default_deploy_config")]
    pub config: PathBuf,
    /// The git remote of the checkout to fetch from.
    #[serde(default = "default_remote")]
    pub remote: String,
    /// Only pushes to these refs deploy (`refs/heads/main`, or a prefix ending in
    /// `*` such as `refs/tags/*`); `["refs/heads/main"]` unless set, and never empty:
    /// whoever may push a listed ref chooses what runs. The deploy gate still decides
    /// after that.
    #[serde(default = "default_refs")]
    pub refs: Vec<String>,
    /// Dotted keys of the deploy config a push may not change (see `trust`); the
    /// default list covers every key that runs a command on this host, mounts its
    /// files, names its engine or loads a plugin.
    #[serde(default = "default_pinned")]
    pub pinned: Vec<String>,
    /// The trusted deploy config on this host (relative to this file) the pinned keys
    /// must match. Unset: the checkout's config as the server found it at start.
    #[serde(default)]
    pub trusted_config: Option<PathBuf>,
}

fn default_refs() -> Vec<String> {
    vec!["refs/heads/main".to_owned()]
}
fn default_pinned() -> Vec<String> {
    super::trust::DEFAULT_PINNED
        .iter()
        .map(|k| (*k).to_owned())
        .collect()
}

fn default_secret_env() -> String {
    "CUTOVER_WEBHOOK_SECRET".to_owned()
}
fn default_max_body() -> usize {
    // GitHub push payloads list up to 2048 commits; a few MiB covers them.
    5 * 1024 * 1024
}
fn default_serve_state() -> PathBuf {
    PathBuf::from(".cutover-serve")
}
fn default_max_connections() -> usize {
    // Webhooks arrive one at a time; this leaves room for a burst and for readers of
    // `GET /deploys`, far under a typical open-file limit.
    256
}
fn default_header_timeout() -> config::Duration {
    // GitHub sends a whole request at once; hyper's own default is 30 s.
    config::Duration(Duration::from_secs(10))
}
fn default_lock_wait() -> config::Duration {
    config::Duration(Duration::from_secs(600))
}
fn default_shutdown_grace() -> config::Duration {
    config::Duration(Duration::from_secs(600))
}
fn default_deploy_config() -> PathBuf {
    PathBuf::from(config::DEFAULT_FILE)
}
fn default_remote() -> String {
    "origin".to_owned()
}

impl RepoConfig {
    /// Whether a push to `git_ref` deploys.
    pub fn wants(&self, git_ref: &str) -> bool {
        self.refs
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => git_ref.starts_with(prefix),
                None => git_ref == pattern,
            })
    }
}

impl ServeConfig {
    /// Reads and checks the server's config.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and key.
    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: ServeConfig = config::parse_toml(&text, path)?;
        config.file = path.to_owned();
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: message.to_owned(),
        };
        if config.repositories.is_empty() {
            return Err(invalid(
                "repository".to_owned(),
                "no repository is listed; add a `[[repository]]` table per repository to deploy",
            ));
        }
        if config.secret_env.is_empty() {
            return Err(invalid(
                "secret_env".to_owned(),
                "name the environment variable that holds the webhook secret",
            ));
        }
        match config.deploys_token_env.as_deref() {
            Some("") => {
                return Err(invalid(
                    "deploys_token_env".to_owned(),
                    "name the environment variable that holds the bearer token, or remove the key",
                ));
            }
            Some(name) if name == config.secret_env => {
                return Err(invalid(
                    "deploys_token_env".to_owned(),
                    "must differ from `secret_env`: whoever reads the deploys must not be able to sign webhooks",
                ));
            }
            _ => {}
        }
        if let Some(bad) = config
            .allowed_hosts
            .iter()
            .find(|h| !crate::access::valid_host(h))
        {
            return Err(invalid(
                "allowed_hosts".to_owned(),
                &format!(
                    "`{bad}` is not a host name or address (no port, path or wildcard), e.g. \"deploy.example.com\""
                ),
            ));
        }
        if config.max_body_bytes == 0 {
            return Err(invalid(
                "max_body_bytes".to_owned(),
                "must be more than 0 (GitHub push payloads are up to a few MiB)",
            ));
        }
        if config.max_connections == 0 {
            return Err(invalid(
                "max_connections".to_owned(),
                "must be more than 0 (the default is 256)",
            ));
        }
        if config.header_timeout.get().is_zero() {
            return Err(invalid(
                "header_timeout".to_owned(),
                "must be more than 0, e.g. \"10s\"",
            ));
        }
        let mut seen = HashSet::new();
        for (i, repo) in config.repositories.iter().enumerate() {
            let key = |field: &str| format!("repository[{i}].{field}");
            if repo.name.split('/').count() != 2 || repo.name.split('/').any(str::is_empty) {
                return Err(invalid(
                    key("name"),
                    "expected the repository's full name, `owner/name`",
                ));
            }
            if !seen.insert(repo.name.to_lowercase()) {
                return Err(invalid(
                    key("name"),
                    "listed twice; give each repository one entry",
                ));
            }
            // The remote is passed to `git fetch` as an argument.
            if repo.remote.is_empty() || repo.remote.starts_with('-') {
                return Err(invalid(
                    key("remote"),
                    "expected a remote name such as `origin`",
                ));
            }
            if repo.config.is_absolute() {
                return Err(invalid(
                    key("config"),
                    "expected a path relative to the checkout, e.g. `cutover.toml`",
                ));
            }
            if repo.refs.is_empty() {
                return Err(invalid(
                    key("refs"),
                    "must list at least one ref, e.g. [\"refs/heads/main\"] (remove the key for that default; [\"refs/*\"] deploys every ref)",
                ));
            }
            if let Some(bad) = repo.pinned.iter().find(|k| !super::trust::valid_key(k)) {
                return Err(invalid(
                    key("pinned"),
                    &format!(
                        "`{bad}` is not a dotted key of the deploy config such as `proxy.test_command`"
                    ),
                ));
            }
            for pattern in &repo.refs {
                if !pattern.starts_with("refs/") || pattern[..pattern.len() - 1].contains('*') {
                    return Err(invalid(
                        key("refs"),
                        "expected full refs such as `refs/heads/main`, or a prefix ending in `*` such as `refs/tags/*`",
                    ));
                }
            }
        }
        Ok(config)
    }

    /// The directory relative paths in the config are resolved against.
    pub(super) fn base_dir(&self) -> &Path {
        self.file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_filter() {
        let repo = RepoConfig {
            name: "team/app".to_owned(),
            checkout: PathBuf::from("/srv/app"),
            config: default_deploy_config(),
            remote: default_remote(),
            refs: vec!["refs/heads/main".to_owned(), "refs/tags/*".to_owned()],
            pinned: default_pinned(),
            trusted_config: None,
        };
        assert!(repo.wants("refs/heads/main"));
        assert!(repo.wants("refs/tags/v1-cicd"));
        assert!(!repo.wants("refs/heads/main2"));
        assert!(!repo.wants("refs/heads/feature"));
        let all = RepoConfig {
            refs: vec!["refs/*".to_owned()],
            ..repo
        };
        assert!(all.wants("refs/heads/feature"));
    }

    /// Regression: `refs` defaulted to every ref, so whoever could push any branch
    /// deployed it; an empty list meant the same.
    #[test]
    fn refs_default_to_main_and_an_empty_list_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        let head =
            "listen = \"127.0.0.1:9000\"\n[[repository]]\nname = \"a/b\"\ncheckout = \"x\"\n";
        std::fs::write(&path, head).unwrap();
        let config = ServeConfig::load(&path).unwrap();
        let repo = &config.repositories[0];
        assert_eq!(repo.refs, ["refs/heads/main"]);
        assert!(!repo.wants("refs/heads/feature"));
        assert!(repo.pinned.iter().any(|k| k == "proxy.test_command"));
        std::fs::write(&path, format!("{head}refs = []\n")).unwrap();
        let err = ServeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("`repository[0].refs`"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, format!("{head}pinned = [\"proxy.\"]\n")).unwrap();
        let err = ServeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("`repository[0].pinned`"), "{err}");
    }

    #[test]
    fn config_names_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        let check = |text: &str, key: &str| {
            std::fs::write(&path, text).unwrap();
            let err = ServeConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        };
        let head = "listen = \"127.0.0.1:9000\"\n";
        check(
            &format!("{head}[[repository]]\nname = \"app\"\ncheckout = \"/srv/app\"\n"),
            "repository[0].name",
        );
        check(&format!("{head}port = 1\nrepository = []\n"), "port");
        check(&format!("{head}repository = []\n"), "repository");
        let repo = "[[repository]]\nname = \"a/b\"\ncheckout = \"x\"\n";
        check(
            &format!("{head}deploys_token_env = \"CUTOVER_WEBHOOK_SECRET\"\n{repo}"),
            "deploys_token_env",
        );
        check(
            &format!("{head}max_connections = 0\n{repo}"),
            "max_connections",
        );
        check(
            &format!("{head}header_timeout = \"0s\"\n{repo}"),
            "header_timeout",
        );
        check(
            &format!(
                "{head}[[repository]]\nname = \"a/b\"\ncheckout = \"x\"\nremote = \"--upload-pack=x\"\n"
            ),
            "repository[0].remote",
        );
        check(
            &format!("{head}[[repository]]\nname = \"a/b\"\ncheckout = \"x\"\nrefs = [\"main\"]\n"),
            "repository[0].refs",
        );
        check(
            &format!(
                "{head}[[repository]]\nname = \"a/b\"\ncheckout = \"x\"\n[[repository]]\nname = \"A/B\"\ncheckout = \"y\"\n"
            ),
            "repository[1].name",
        );
    }
}

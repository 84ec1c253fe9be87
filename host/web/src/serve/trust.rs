//! serve's trust boundary: which keys of a pushed `cutover.toml` a pusher may change.
//!
//! A push is code from whoever can push, and the deploy config names commands the
//! serve host runs (`proxy.test_command`, `proxy.reload_command`, the extra front
//! ends'), host paths a container mounts, the engine it talks to and the plugins that
//! decide policy. The repository's `pinned` keys must equal those of a trusted config
//! on the serve host (`trusted_config`, read at each push; without it, the checkout's
//! config as the server found it when it started). The pushed file is read with
//! `git show` before anything is checked out, so a refused push never touches the
//! checkout. This module only compares; it never runs or checks out anything.

use std::path::{Path, PathBuf};

/// The keys pinned when a repository lists none: every key that runs a command on
/// the serve host, reaches its files or its engine, or decides policy.
pub const DEFAULT_PINNED: &[&str] = &[
    "engine",
    "state_dir",
    "image.build.context",
    "image.registry",
    "container.volumes",
    "plugins",
    "proxy.nginx",
    "proxy.config_dir",
    "proxy.pid_file",
    "proxy.test_command",
    "proxy.reload_command",
    "proxy.extra",
];

/// Why a pushed config may not be deployed.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The trusted config cannot be read.
    #[error(
        "cannot read the trusted deploy config {}: {source}; fix `trusted_config` in the serve config",
        path.display()
    )]
    Unreadable {
        /// The trusted config.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A config is not TOML.
    #[error("{what} is not valid TOML: {message}")]
    Syntax {
        /// Which config.
        what: String,
        /// The parser's message.
        message: String,
    },
    /// The pushed config changes a pinned key.
    #[error(
        "the pushed deploy config changes the pinned key `{key}` (it differs from {trusted}); \
         a push may not change it: change it in the trusted config on the serve host, then redeliver"
    )]
    Pinned {
        /// The dotted key.
        key: String,
        /// Where the trusted value comes from.
        trusted: String,
    },
}

/// Where the trusted config comes from.
#[derive(Debug)]
enum Source {
    /// A file on the serve host, read at each push (an edit applies without a restart).
    File(PathBuf),
    /// The checkout's config as the server found it at start.
    Snapshot { path: PathBuf, table: toml::Table },
}

/// A repository's pinned keys and their trusted values.
#[derive(Debug)]
pub(super) struct Trust {
    source: Source,
    pinned: Vec<String>,
}

impl Trust {
    /// Pins `pinned` to `trusted_config`, or, without one, to the config at
    /// `checkout_config` as it is now.
    ///
    /// # Errors
    /// [`TrustError`] when the trusted config cannot be read or parsed.
    pub(super) fn new(
        pinned: Vec<String>,
        trusted_config: Option<PathBuf>,
        checkout_config: &Path,
    ) -> Result<Trust, TrustError> {
        let source = match trusted_config {
            Some(path) => {
                // Checked now, so a wrong path stops the server at start.
                read(&path)?;
                Source::File(path)
            }
            None => Source::Snapshot {
                table: read(checkout_config)?,
                path: checkout_config.to_owned(),
            },
        };
        Ok(Trust { source, pinned })
    }

    /// Whether the pushed config's text (`pushed`, from `what`) keeps every pinned key
    /// as trusted.
    ///
    /// # Errors
    /// [`TrustError::Pinned`] naming the first pinned key that differs, or why a
    /// config cannot be compared.
    pub(super) fn check(&self, pushed: &str, what: &str) -> Result<(), TrustError> {
        let pushed: toml::Table =
            pushed
                .parse()
                .map_err(|e: toml::de::Error| TrustError::Syntax {
                    what: what.to_owned(),
                    message: e.message().to_owned(),
                })?;
        let (trusted, described) = match &self.source {
            Source::File(path) => (
                read(path)?,
                format!("the trusted config {}", path.display()),
            ),
            Source::Snapshot { path, table } => (
                table.clone(),
                format!("{} as the server found it at start", path.display()),
            ),
        };
        match changed_pin(&trusted, &pushed, &self.pinned) {
            Some(key) => Err(TrustError::Pinned {
                key: key.to_owned(),
                trusted: described,
            }),
            None => Ok(()),
        }
    }
}

fn read(path: &Path) -> Result<toml::Table, TrustError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrustError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    text.parse()
        .map_err(|e: toml::de::Error| TrustError::Syntax {
            what: path.display().to_string(),
            message: e.message().to_owned(),
        })
}

/// The first of `pinned` (dotted keys) whose value differs between `trusted` and
/// `pushed`; a key present in one and absent in the other differs.
pub(super) fn changed_pin<'a>(
    trusted: &toml::Table,
    pushed: &toml::Table,
    pinned: &'a [String],
) -> Option<&'a str> {
    pinned
        .iter()
        .find(|key| lookup(trusted, key) != lookup(pushed, key))
        .map(String::as_str)
}

fn lookup<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    let mut parts = key.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Whether `key` is a dotted key of plain segments (`proxy.test_command`).
pub(super) fn valid_key(key: &str) -> bool {
    key.split('.').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned() -> Vec<String> {
        DEFAULT_PINNED.iter().map(|k| (*k).to_owned()).collect()
    }

    const TRUSTED: &str = "service = \"web\"\n[image]\nref = \"a:1\"\n[container]\nport = 80\n\
                           volumes = [\"/srv/data:/data\"]\n[proxy]\nmode = \"managed\"\n\
                           test_command = [\"nginx\", \"-t\"]\n[health]\npath = \"/\"\n";

    #[test]
    fn a_push_changing_a_command_or_volume_is_refused_naming_the_key() {
        let trusted: toml::Table = TRUSTED.parse().unwrap();
        let pins = pinned();
        for (pushed, key) in [
            (
                TRUSTED.replace("[\"nginx\", \"-t\"]", "[\"sh\", \"-c\", \"id\"]"),
                "proxy.test_command",
            ),
            (
                TRUSTED.replace("/srv/data:/data", "/:/host"),
                "container.volumes",
            ),
            (
                format!(
                    "{TRUSTED}[[proxy.extra]]\nname = \"x\"\nconfig_dir = \"/etc\"\n\
                     verify_url = \"http://x\"\nreload_command = [\"id\"]\n"
                ),
                "proxy.extra",
            ),
            (
                TRUSTED.replace("[proxy]\n", "[proxy]\nreload_command = [\"id\"]\n"),
                "proxy.reload_command",
            ),
            (format!("{TRUSTED}[engine]\nkind = \"swarm\"\n"), "engine"),
            (
                format!("{TRUSTED}[plugins.gate]\nsource = \"evil.wasm\"\n"),
                "plugins",
            ),
        ] {
            let pushed: toml::Table = pushed.parse().unwrap();
            assert_eq!(changed_pin(&trusted, &pushed, &pins), Some(key));
        }
    }

    #[test]
    fn a_push_may_change_what_is_not_pinned() {
        let trusted: toml::Table = TRUSTED.parse().unwrap();
        let pushed: toml::Table = TRUSTED
            .replace("a:1", "a:2")
            .replace("path = \"/\"", "path = \"/healthz\"")
            .parse()
            .unwrap();
        assert_eq!(changed_pin(&trusted, &pushed, &pinned()), None);
        // Formatting is not a change: values are compared, not text.
        let reformatted: toml::Table = TRUSTED
            .replace("[\"nginx\", \"-t\"]", "[ 'nginx',\n  '-t' ]")
            .parse()
            .unwrap();
        assert_eq!(changed_pin(&trusted, &reformatted, &pinned()), None);
    }

    #[test]
    fn check_reads_the_trusted_file_at_each_push() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trusted.toml");
        std::fs::write(&path, TRUSTED).unwrap();
        let trust = Trust::new(pinned(), Some(path.clone()), Path::new("/nonexistent")).unwrap();
        let pushed = TRUSTED.replace("/srv/data:/data", "/:/host");
        let err = trust.check(&pushed, "the push").unwrap_err().to_string();
        assert!(err.contains("`container.volumes`"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        // The operator accepts the change on the host: the same push now passes.
        std::fs::write(&path, &pushed).unwrap();
        trust.check(&pushed, "the push").unwrap();
        assert!(trust.check("not toml [", "the push").is_err());
    }

    #[test]
    fn pinned_keys_are_plain_dotted_names() {
        for good in DEFAULT_PINNED {
            assert!(valid_key(good), "{good}");
        }
        for bad in ["", "proxy.", ".proxy", "proxy..x", "a b", "proxy.*"] {
            assert!(!valid_key(bad), "{bad}");
        }
    }
}

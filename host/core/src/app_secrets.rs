//! The secrets a service's containers get besides `container.env`: variables taken
//! from the runner's environment (`container.env_from`) and an env file on the runner
//! (`container.env_file`, Docker's `--env-file` format, readable by its owner only).
//!
//! They are read when a deploy starts, before anything is built, so a missing one is
//! a config error that changed nothing; and again where a container is created, into
//! [`Secret`]s that print as `***`. The values go to the engine's API only: never to
//! events, logs, errors, the state file, the audit log or any program's argv.

use std::path::{Path, PathBuf};

use crate::config::{Config, ENV_FROM_KEY, is_env_name};
use crate::error::DeployError;
use crate::secret::Secret;

/// The secret variables for `config`'s containers, in order: `env_from`'s, then the
/// env file's.
///
/// # Errors
/// [`DeployError::MissingEnv`] naming a variable of `env_from` that is unset or
/// empty; [`DeployError::EnvFile`] when the env file cannot be read, is readable by
/// others than its owner, or has a line that is no `KEY=VALUE`.
pub fn resolve(config: &Config) -> Result<Vec<(String, Secret)>, DeployError> {
    let mut env = Vec::new();
    for name in &config.container.env_from {
        let value = std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| DeployError::MissingEnv {
                var: name.clone(),
                key: ENV_FROM_KEY.to_owned(),
                file: config.file.clone(),
            })?;
        env.push((name.clone(), Secret::new(value)));
    }
    if let Some(path) = &config.container.env_file {
        let path = config_relative(&config.file, path);
        env.extend(read_env_file(&path).map_err(|reason| DeployError::EnvFile {
            path,
            config: config.file.clone(),
            reason,
        })?);
    }
    Ok(env)
}

/// `path` as written in the config file `config`: relative to that file's directory.
fn config_relative(config: &Path, path: &Path) -> PathBuf {
    match config.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

/// Reads an env file: `KEY=VALUE` lines taken literally (no quotes, no expansion, as
/// `docker run --env-file`), blank lines and `#` comments skipped. The reason it was
/// refused never quotes a value.
fn read_env_file(path: &Path) -> Result<Vec<(String, Secret)>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "it is readable by others (mode {mode:o}); it holds secrets: `chmod 600` it"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut env = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if is_env_name(key) => {
                env.push((key.to_owned(), Secret::new(value.to_owned())));
            }
            _ => {
                return Err(format!(
                    "line {} is not `KEY=VALUE` with KEY of letters, digits and `_`",
                    i + 1
                ));
            }
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("env");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn an_env_file_is_read_literally_and_refused_when_others_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "# db\nDATABASE_URL=postgres://u:p@db/app?x=1\n\n  SECRET_KEY_BASE=\"quoted\"\n",
            0o600,
        );
        let env = read_env_file(&path).unwrap();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        assert_eq!(
            pairs,
            [
                ("DATABASE_URL", "postgres://u:p@db/app?x=1"),
                ("SECRET_KEY_BASE", "\"quoted\"")
            ]
        );

        let open = write(dir.path(), "A=supersecret\n", 0o644);
        let why = read_env_file(&open).unwrap_err();
        assert!(why.contains("chmod 600") && why.contains("644"), "{why}");

        let bad = write(dir.path(), "A=1\nexport B=supersecret\n", 0o600);
        let why = read_env_file(&bad).unwrap_err();
        assert!(why.contains("line 2"), "{why}");
        assert!(!why.contains("supersecret"), "never quotes a value: {why}");
    }

    #[test]
    fn variable_names_are_letters_digits_and_underscores_not_starting_with_a_digit() {
        assert!(is_env_name("DATABASE_URL") && is_env_name("_x1"));
        assert!(!is_env_name("") && !is_env_name("1A") && !is_env_name("A-B"));
        assert!(!is_env_name("A B"));
    }
}

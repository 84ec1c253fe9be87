//! `cutover promote` and `cutover abort`: a human steering a running canary from
//! another shell.
//!
//! The running deploy holds the lock, so the other process cannot touch its state;
//! it leaves a request in `<state_dir>/canary-control.json` (written atomically) and
//! the runner takes it at its next poll (about once a second). A request names who
//! made it, so the history says who promoted or aborted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the human wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Skip the remaining pauses (with `pause = "manual"`: go past this one).
    Promote,
    /// Send all traffic back to the live colour and stop the canary.
    Abort,
}

impl Command {
    /// The command's name, as the user typed it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Promote => "promote",
            Command::Abort => "abort",
        }
    }
}

/// One request from a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Who asked (`user@host pid N`).
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
    /// An optional reason for the history.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A request could not be left or read.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No canary is running for the service.
    #[error("no canary is running for `{service}`{detail}; `cutover status` shows what runs")]
    NoCanary {
        /// The service.
        service: String,
        /// What runs instead, if anything.
        detail: String,
    },
    /// The state file cannot be read.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The runner did not take the request in time.
    #[error("the request is left in {}, but the runner ({owner}) has not taken it after {waited:?}; is it still running? `cutover status` shows it, and `cutover recover` ends a run whose process died", path.display())]
    NotTaken {
        /// The request file.
        path: PathBuf,
        /// The run's owner as its journal names it.
        owner: String,
        /// How long this command waited.
        waited: std::time::Duration,
    },
    /// The request file could not be written.
    #[error("cannot write {}: {source}; check that the state directory is writable by this user", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::atomic_file::AtomicWriteError,
    },
}

/// The request file in a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("canary-control.json")
}

/// Leaves a request for the runner. A newer request replaces an older one that was
/// not taken yet (the last word wins).
///
/// # Errors
/// [`ControlError::Write`] when the file cannot be written.
pub fn send(state_dir: &Path, request: &Request) -> Result<(), ControlError> {
    let path = path(state_dir);
    let text = serde_json::to_vec_pretty(request).unwrap_or_default();
    crate::atomic_file::write(&path, &text, 0o600).map_err(|source| ControlError::Write {
        path: path.clone(),
        source,
    })
}

/// `cutover promote` / `cutover abort`: checks a canary runs for the config's
/// service, leaves the request, and waits (at most `wait`) for the runner to take it.
/// Returns a line saying what happened.
///
/// # Errors
/// [`ControlError::NoCanary`] when no canary runs; [`ControlError::NotTaken`] when the
/// runner did not take it in time; state and write errors.
pub async fn request(
    config: &crate::config::Config,
    command: Command,
    reason: Option<String>,
    wait: std::time::Duration,
) -> Result<String, ControlError> {
    let state_dir = config.state_dir();
    let state = crate::state::StateStore::new(&state_dir, &config.service).load()?;
    let journal = state.in_progress.as_ref();
    let Some(progress) = journal.and_then(|j| j.canary.as_ref()) else {
        let detail = match journal {
            Some(j) => format!(" (deploy {} is at step {})", j.deploy_id, j.step),
            None => String::new(),
        };
        return Err(ControlError::NoCanary {
            service: config.service.clone(),
            detail,
        });
    };
    let owner = journal.map(|j| j.owner.clone()).unwrap_or_default();
    let by = format!(
        "{}@{} pid {}",
        std::env::var("USER").unwrap_or_else(|_| "someone".to_owned()),
        crate::lock::hostname(),
        std::process::id()
    );
    send(
        &state_dir,
        &Request {
            command,
            by,
            at: crate::state::now_rfc3339(),
            reason,
        },
    )?;
    let began = std::time::Instant::now();
    while path(&state_dir).exists() {
        if began.elapsed() >= wait {
            return Err(ControlError::NotTaken {
                path: path(&state_dir),
                owner,
                waited: wait,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(format!(
        "{}: taken by the runner ({owner}) of the canary at {}%",
        command.as_str(),
        progress.weight
    ))
}

/// Takes the pending request, if any (removing it, so it acts once). A file that is
/// not a request is removed and ignored: it cannot be acted on, and leaving it would
/// make every poll fail the same way.
pub fn take(state_dir: &Path) -> Option<Request> {
    let path = path(state_dir);
    let text = std::fs::read(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    serde_json::from_slice(&text).ok()
}

/// Drops a request left from an earlier canary, so a stale `abort` cannot end the
/// next one: called when a canary starts.
pub fn clear(state_dir: &Path) {
    let _ = std::fs::remove_file(path(state_dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(take(dir.path()), None);
        let request = Request {
            command: Command::Abort,
            by: "ana@ci pid 7".into(),
            at: "2026-11-29T20:00:00Z".into(),
            reason: Some("error rate".into()),
        };
        send(dir.path(), &request).unwrap();
        assert_eq!(take(dir.path()), Some(request));
        assert_eq!(take(dir.path()), None);
        std::fs::write(path(dir.path()), "junk").unwrap();
        assert_eq!(take(dir.path()), None);
        assert!(!path(dir.path()).exists());
    }
}

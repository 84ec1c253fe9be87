//! Why a command could not do its job, and how that maps to advice and an exit code.
//!
//! Every library error a command can meet ends up as a [`DeployError`]; its
//! [`ErrorClass`] decides the exit code in `cli`. The variants stay typed all the way
//! up (a Docker outage during the health wait is still a Docker error, not a string),
//! so the class is decided by what failed, never by matching on message text.

use std::path::PathBuf;

use crate::Color;
use crate::config::ConfigError;
use crate::docker::DockerError;
use crate::engine::{EngineError, SwarmError};
use crate::git::GitError;
use crate::health::{HealthError, QuorumError, VerifyError};
use crate::lock::LockError;
use crate::plugin::PluginError;
use crate::proxy::ProxyError;
use crate::state::StateError;

/// How an error should be reported and which exit code it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The config file or a value derived from it is wrong: the user edits the config.
    Config,
    /// Another deploy holds the lock.
    LockHeld,
    /// Docker, nginx or git is missing or unreachable: the machine needs fixing.
    Environment,
    /// The deploy failed (app, plugin, health, verify) and the previous colour still
    /// serves.
    DeployFailed,
    /// Something failed and cutover could not put things back: a human must look.
    Critical,
}

/// Why a command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The config is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state file cannot be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// The lock is held or unusable.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A Docker operation failed.
    #[error(transparent)]
    Docker(Box<DockerError>),
    /// A Swarm operation failed (no manager, lock held in the cluster, ...).
    #[error(transparent)]
    Swarm(Box<SwarmError>),
    /// Too few of a colour's copies became healthy.
    #[error(transparent)]
    Quorum(Box<QuorumError>),
    /// A proxy operation failed.
    #[error(transparent)]
    Proxy(Box<ProxyError>),
    /// A plugin failed or refused.
    #[error(transparent)]
    Plugin(Box<PluginError>),
    /// The target never became healthy.
    #[error(transparent)]
    Health(Box<HealthError>),
    /// The proxy did not serve the target after the switch.
    #[error(transparent)]
    Verify(Box<VerifyError>),
    /// git could not be run.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A required environment variable (e.g. the registry password) is missing.
    #[error(
        "environment variable `{var}` (named by `{key}` in {}) is not set; export it before running cutover",
        file.display()
    )]
    MissingEnv {
        /// The variable.
        var: String,
        /// The config key naming it.
        key: String,
        /// The config file.
        file: PathBuf,
    },
    /// The containers' env file (`container.env_file`) cannot be used.
    #[error(
        "{}: `container.env_file` {}: {reason}",
        config.display(),
        path.display()
    )]
    EnvFile {
        /// The env file.
        path: PathBuf,
        /// The config file naming it.
        config: PathBuf,
        /// Why it was refused (never a value from it).
        reason: String,
    },
    /// A release hook (`[[hook]]`) failed, timed out or could not run.
    #[error(
        "release hook `{name}` {why}{}; fix the hook (or the image it runs) and deploy again",
        tail_lines(tail)
    )]
    Hook {
        /// The hook's name.
        name: String,
        /// What happened: `exited with code 1`, `timed out after 10s`, ...
        why: String,
        /// Its last output lines, oldest first.
        tail: Vec<String>,
    },
    /// The config says neither how to build the image nor which one to pull.
    #[error(
        "{}: `image` names neither `build` nor `ref`; add `[image.build]` with a `context`, or `image.ref`, or pass --image",
        file.display()
    )]
    NoImage {
        /// The config file.
        file: PathBuf,
    },
    /// The target-selector chose the colour that serves traffic now.
    #[error(
        "the target-selector plugin `{plugin}` chose `{color}`, the colour serving traffic now; \
         deploying there would take the service down. Fix the plugin or its config \
         (or run `cutover recover` if the state file lost track of the live colour)"
    )]
    SelectedLive {
        /// The selector plugin's name.
        plugin: String,
        /// The colour it chose.
        color: Color,
    },
    /// The engine cannot do what was asked (the message says what instead).
    #[error("{0}")]
    Unsupported(String),
    /// `exec` ran longer than its `--timeout`.
    #[error(
        "`cutover exec` timed out after {} (--timeout) and its container was removed; give it longer with --timeout",
        humantime::format_duration(*after)
    )]
    ExecTimedOut {
        /// The timeout.
        after: std::time::Duration,
    },
    /// `exec` or `pause` with no colour live.
    #[error(
        "no colour is live, so there is nothing to run a command from or to pause: deploy first (`cutover status` shows what runs)"
    )]
    NothingLive,
    /// A deploy or rollback while `cutover pause` holds the front door.
    #[error(
        "{service} is paused (`cutover pause`): the front door answers 503, so a switch could not be verified through it. Run `cutover resume` first, then deploy"
    )]
    Paused {
        /// The service.
        service: String,
    },
    /// `rollback` with no earlier colour recorded.
    #[error(
        "nothing to roll back to: no earlier colour is recorded in the state file; \
         `cutover status` shows what runs"
    )]
    NothingToRollBack,
    /// A canary was stopped: by the analysis plugin, a human, or a step held too long.
    #[error("canary aborted: {reason}; the live colour serves all traffic again")]
    CanaryAborted {
        /// Who stopped it and why.
        reason: String,
    },
    /// The access log a canary judges traffic from cannot be read.
    #[error("cannot read the access log {}: {source}; check `proxy.access_log` and that nginx writes it with cutover's `log_format cutover_json`", path.display())]
    AccessLog {
        /// The log.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A failure, plus a second failure while undoing it.
    #[error(
        "{error}; then, while putting things back: {cleanup}. Run `cutover status`, and `cutover recover` once the cause is fixed"
    )]
    CleanupFailed {
        /// The first failure.
        error: Box<DeployError>,
        /// What failed while undoing it.
        cleanup: Box<DeployError>,
    },
}

/// Boxed so that every `Result<_, DeployError>` stays small on the happy path.
macro_rules! boxed_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for DeployError {
            fn from(error: $ty) -> DeployError {
                DeployError::$variant(Box::new(error))
            }
        }
    )*};
}

boxed_from!(
    Docker(DockerError),
    Quorum(QuorumError),
    Proxy(ProxyError),
    Plugin(PluginError),
    Verify(VerifyError),
);

impl From<SwarmError> for DeployError {
    /// A Docker failure underneath a Swarm operation stays a Docker error.
    fn from(error: SwarmError) -> DeployError {
        match error {
            SwarmError::Docker(e) => DeployError::Docker(Box::new(e)),
            other => DeployError::Swarm(Box::new(other)),
        }
    }
}

impl From<EngineError> for DeployError {
    fn from(error: EngineError) -> DeployError {
        match error {
            EngineError::Docker(e) => e.into(),
            EngineError::Swarm(e) => e.into(),
            EngineError::Unsupported { .. } => DeployError::Unsupported(error.to_string()),
        }
    }
}

impl From<HealthError> for DeployError {
    /// The health wait passes through what failed underneath it (the engine, the
    /// plugin) as that error, so a Docker outage mid-wait is still an environment
    /// error and a plugin's config error still a config error.
    fn from(error: HealthError) -> DeployError {
        match error {
            HealthError::Engine(e) => (*e).into(),
            HealthError::Judge(e) => DeployError::Plugin(e),
            other => DeployError::Health(Box::new(other)),
        }
    }
}

/// A program's last output lines as an error shows them.
fn tail_lines(tail: &[String]) -> String {
    if tail.is_empty() {
        return "; it printed nothing".to_owned();
    }
    format!("; its last lines:\n    {}\n", tail.join("\n    "))
}

impl DeployError {
    /// The class that decides the exit code and the advice.
    pub fn class(&self) -> ErrorClass {
        match self {
            DeployError::Config(_)
            | DeployError::MissingEnv { .. }
            | DeployError::EnvFile { .. }
            | DeployError::NoImage { .. } => ErrorClass::Config,
            DeployError::Lock(LockError::Held { .. }) => ErrorClass::LockHeld,
            DeployError::Lock(_) | DeployError::State(_) | DeployError::Git(_) => {
                ErrorClass::Environment
            }
            DeployError::Docker(e) if e.is_environment() => ErrorClass::Environment,
            DeployError::Swarm(e)
                if matches!(
                    **e,
                    SwarmError::LockHeld { .. }
                        | SwarmError::LockRace { .. }
                        | SwarmError::LockLost { .. }
                ) =>
            {
                ErrorClass::LockHeld
            }
            DeployError::Swarm(e)
                if matches!(
                    **e,
                    SwarmError::NeedsRegistry { .. } | SwarmError::NoSecret { .. }
                ) =>
            {
                ErrorClass::Config
            }
            DeployError::Swarm(e) if e.is_environment() => ErrorClass::Environment,
            DeployError::Proxy(e) if e.is_environment() => ErrorClass::Environment,
            DeployError::Plugin(e) if e.is_config_error() => ErrorClass::Config,
            // The machine is unreachable, so undoing failed for the same reason the
            // deploy did: the live colour was never touched, and the journal stays
            // for `recover` once the machine answers again.
            DeployError::CleanupFailed { error, cleanup }
                if error.class() == ErrorClass::Environment
                    && cleanup.class() == ErrorClass::Environment =>
            {
                ErrorClass::Environment
            }
            // Undoing stopped because the lock is another runner's now: that runner
            // owns the service, and its run replaces what this one left.
            DeployError::CleanupFailed { cleanup, .. } if cleanup.is_lock_lost() => {
                ErrorClass::LockHeld
            }
            DeployError::CleanupFailed { .. } => ErrorClass::Critical,
            _ => ErrorClass::DeployFailed,
        }
    }

    /// Whether this runner lost the deploy lock to another (its lease ran out and
    /// another runner took it): then it must stop writing.
    pub fn is_lock_lost(&self) -> bool {
        matches!(self, DeployError::Swarm(e) if matches!(**e, SwarmError::LockLost { .. }))
    }

    /// `self`, then `cleanup` failing while undoing it.
    pub fn then_cleanup_failed(self, cleanup: impl Into<DeployError>) -> DeployError {
        DeployError::CleanupFailed {
            error: Box::new(self),
            cleanup: Box::new(cleanup.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable_docker() -> DockerError {
        DockerError::Unreachable {
            host: "unix:///nowhere.sock".to_owned(),
            message: "connection refused".to_owned(),
        }
    }

    #[test]
    fn docker_outage_during_the_health_wait_is_an_environment_error() {
        let error = DeployError::from(HealthError::Engine(Box::new(unreachable_docker().into())));
        assert!(matches!(error, DeployError::Docker(_)), "{error:?}");
        assert_eq!(error.class(), ErrorClass::Environment);
    }

    #[test]
    fn outage_that_also_stops_the_cleanup_stays_an_environment_error() {
        let error =
            DeployError::from(unreachable_docker()).then_cleanup_failed(unreachable_docker());
        assert_eq!(error.class(), ErrorClass::Environment);
        let error = DeployError::NothingToRollBack.then_cleanup_failed(unreachable_docker());
        assert_eq!(error.class(), ErrorClass::Critical);
    }

    #[test]
    fn losing_the_cluster_lock_or_its_race_exits_6_and_slow_tasks_are_not_a_conflict() {
        let service = "hello".to_owned();
        let race = DeployError::from(SwarmError::LockRace {
            service: service.clone(),
        });
        assert_eq!(race.class(), ErrorClass::LockHeld);
        let lost = DeployError::from(SwarmError::LockLost {
            service: service.clone(),
            holder: "`deploy` by pid 7 on ci-2".to_owned(),
        });
        assert!(lost.is_lock_lost());
        assert_eq!(lost.class(), ErrorClass::LockHeld);
        // Undoing stopped by the lost lock: the new holder owns the service.
        let undo_refused =
            DeployError::NothingToRollBack.then_cleanup_failed(SwarmError::LockLost {
                service: service.clone(),
                holder: "`deploy` by pid 7 on ci-2".to_owned(),
            });
        assert_eq!(undo_refused.class(), ErrorClass::LockHeld);
        let slow = DeployError::from(SwarmError::StillRunning {
            object: "hello-blue".to_owned(),
            alive: 2,
            waited: std::time::Duration::from_secs(40),
        });
        assert_eq!(slow.class(), ErrorClass::DeployFailed);
        let text = slow.to_string();
        assert!(!text.contains("something else is updating"), "{text}");
        assert!(
            text.contains("2 task(s) of hello-blue still run 40s"),
            "{text}"
        );
    }
}

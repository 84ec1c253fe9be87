//! The state file: which colour is live, the deploy in progress (the journal) and the
//! recent deploys, kept in `<state_dir>/state.json`.
//!
//! The file is replaced atomically on every write, so a runner killed at any moment
//! leaves either the previous or the next version, never a torn one. It records what
//! cutover did and intended; it is not the truth about what runs. `status` and
//! recovery compare it with Docker and the proxy files. It never holds a secret.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Color;
use crate::atomic_file;
use crate::operation::{OperationKind, Outcome, Step, StepTiming};

/// The name of the state file inside the state directory.
pub const FILE_NAME: &str = "state.json";

const FORMAT_VERSION: u32 = 1;

/// The state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading failed.
    #[error("cannot read state file {}: {source}", path.display())]
    Read {
        /// The state file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file exists but is not a state file this version understands.
    #[error(
        "state file {} is corrupt or truncated ({reason}); `cutover status` still reports what really runs. \
         Move the file aside and run `cutover recover` to rebuild it from Docker and the proxy files",
        path.display()
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file belongs to another service.
    #[error(
        "state directory {} belongs to service `{found}`, not `{expected}`; give each service its own `state_dir`",
        dir.display()
    )]
    OtherService {
        /// The state directory.
        dir: PathBuf,
        /// The service the config names.
        expected: String,
        /// The service the file names.
        found: String,
    },
    /// Writing failed; the previous file is intact.
    #[error(transparent)]
    Write(#[from] atomic_file::AtomicWriteError),
    /// The state directory could not be created.
    #[error("cannot create state directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A colour's deployment as cutover left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The colour.
    pub color: Color,
    /// The image's ID (`sha256:...`), stable even when its tag moves.
    pub image_id: String,
    /// The reference it was deployed as (`hello:3f2a...`).
    pub image_ref: String,
    /// The repository digest when the image came from or went to a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The container's name.
    pub container: String,
    /// The `address:port` the proxy sends traffic to.
    pub upstream: String,
    /// The deploy that put it there.
    pub deploy_id: String,
    /// When it started serving (RFC 3339).
    pub since: String,
}

/// A proxy file as it was before the switch (the proxy crate owns its shape).
pub use cutover_proxy::SavedFile;

/// The deploy in progress, saved as each step starts (so a step saved as started may
/// also have finished) so that a runner killed at any point can be reconciled by the
/// next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The deploy's id.
    pub deploy_id: String,
    /// Deploy or rollback.
    pub kind: OperationKind,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// The process that runs it (`host pid N`).
    pub owner: String,
    /// The last step journaled.
    pub step: Step,
    /// The colour that served when the run started.
    #[serde(default)]
    pub from: Option<Color>,
    /// The colour being deployed, once selected.
    pub target: Option<Color>,
    /// The container started for the target, once created.
    pub container: Option<String>,
    /// The image being deployed, once known.
    pub image_id: Option<String>,
    /// The image reference being deployed, once known.
    pub image_ref: Option<String>,
    /// The proxy files as they were before this deploy wrote any.
    pub saved_files: Option<Vec<SavedFile>>,
    /// The files this deploy wrote (so recovery can tell whether the switch happened).
    pub written_files: Option<Vec<SavedFile>>,
    /// Step timings so far.
    pub steps: Vec<StepTiming>,
    /// Where a canary is, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryProgress>,
    /// The number of the engine's record of the live colour when this run started,
    /// for engines that keep one (a Swarm): a newer record means another runner
    /// deployed since, and this journal is obsolete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_serial: Option<u64>,
}

/// Where a running canary is: `status` shows it, `recover` knows traffic was split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryProgress {
    /// 0-based index into `[strategy] steps`.
    pub step_index: usize,
    /// The target's share of traffic now, in percent.
    pub weight: u8,
    /// A manual pause waits for `cutover promote`.
    pub waiting_for_promote: bool,
}

impl Journal {
    /// The record of this run, ended now with `outcome`: the one place a
    /// [`DeployRecord`] is made.
    pub fn record(&self, outcome: Outcome, reason: Option<String>) -> DeployRecord {
        DeployRecord {
            id: self.deploy_id.clone(),
            kind: self.kind,
            started_at: self.started_at.clone(),
            finished_at: now_rfc3339(),
            image_ref: self.image_ref.clone(),
            from: self.from,
            to: self.target,
            outcome,
            reason,
            steps: self.steps.clone(),
        }
    }

    /// Whether the run had started `step` (or finished it) when it was last saved.
    pub fn reached(&self, step: Step) -> bool {
        self.step == step || self.steps.iter().any(|t| t.step == step)
    }
}

/// One finished deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    /// The deploy's id.
    pub id: String,
    /// Deploy or rollback.
    pub kind: OperationKind,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339).
    pub finished_at: String,
    /// The image deployed.
    pub image_ref: Option<String>,
    /// The colour serving before.
    pub from: Option<Color>,
    /// The colour deployed to.
    pub to: Option<Color>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed or was denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Step timings.
    pub steps: Vec<StepTiming>,
}

/// Everything in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The file format's version.
    pub version: u32,
    /// The service this directory belongs to.
    pub service: String,
    /// The colour serving traffic.
    pub live: Option<Slot>,
    /// The colour that served before the last switch: the rollback target.
    pub previous: Option<Slot>,
    /// The deploy in progress; present after a crash.
    pub in_progress: Option<Journal>,
    /// Finished deploys, oldest first.
    pub deploys: Vec<DeployRecord>,
}

impl State {
    /// The state of a service that was never deployed.
    pub fn new(service: &str) -> State {
        State {
            version: FORMAT_VERSION,
            service: service.to_owned(),
            live: None,
            previous: None,
            in_progress: None,
            deploys: Vec::new(),
        }
    }

    /// Appends a finished deploy, keeping the newest `keep`.
    pub fn push_record(&mut self, record: DeployRecord, keep: usize) {
        self.deploys.push(record);
        let excess = self.deploys.len().saturating_sub(keep);
        self.deploys.drain(..excess);
    }
}

/// Reads and writes one service's state file.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    service: String,
}

impl StateStore {
    /// A store for `service` in `dir`; nothing is touched until load or save.
    pub fn new(dir: &Path, service: &str) -> StateStore {
        StateStore {
            dir: dir.to_owned(),
            service: service.to_owned(),
        }
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the state; a missing file is a service never deployed.
    ///
    /// # Errors
    /// [`StateError::Corrupt`] when the file does not parse, [`StateError::OtherService`]
    /// when it names another service, [`StateError::Read`] when it cannot be read.
    pub fn load(&self) -> Result<State, StateError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State::new(&self.service));
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if state.version != FORMAT_VERSION {
            return Err(StateError::Corrupt {
                path,
                reason: format!(
                    "format version {} is not {FORMAT_VERSION}; was it written by another cutover version?",
                    state.version
                ),
            });
        }
        if state.service != self.service {
            return Err(StateError::OtherService {
                dir: self.dir.clone(),
                expected: self.service.clone(),
                found: state.service,
            });
        }
        Ok(state)
    }

    /// Replaces the state file atomically (mode 0600).
    ///
    /// # Errors
    /// [`StateError`] when the directory cannot be created or the file written; the
    /// previous file is then intact.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        self.ensure_dir()?;
        let json = serde_json::to_vec_pretty(state).expect("state always serializes");
        atomic_file::write(&self.path(), &json, 0o600)?;
        Ok(())
    }

    /// Creates the state directory (mode 0700) when missing.
    ///
    /// # Errors
    /// [`StateError::CreateDir`] when it cannot be created.
    pub fn ensure_dir(&self) -> Result<(), StateError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| StateError::CreateDir {
                path: self.dir.clone(),
                source,
            })
    }
}

pub use cutover_base::now_rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> DeployRecord {
        DeployRecord {
            id: id.to_owned(),
            kind: OperationKind::Deploy,
            started_at: now_rfc3339(),
            finished_at: now_rfc3339(),
            image_ref: Some("hello:1".to_owned()),
            from: None,
            to: Some(Color::Blue),
            outcome: Outcome::Succeeded,
            reason: None,
            steps: vec![StepTiming {
                step: Step::Gate,
                ms: 1,
            }],
        }
    }

    #[test]
    fn missing_file_is_a_new_service() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path(), "hello");
        assert_eq!(store.load().unwrap(), State::new("hello"));
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(&dir.path().join("nested"), "hello");
        let mut state = State::new("hello");
        state.push_record(record("d1"), 10);
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
    }

    #[test]
    fn keeps_only_the_newest_records() {
        let mut state = State::new("hello");
        for i in 0..5 {
            state.push_record(record(&format!("d{i}")), 3);
        }
        let ids: Vec<_> = state.deploys.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["d2", "d3", "d4"]);
    }

    #[test]
    fn truncated_file_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path(), "hello");
        let mut state = State::new("hello");
        state.push_record(record("d1"), 10);
        store.save(&state).unwrap();
        let bytes = std::fs::read(store.path()).unwrap();
        std::fs::write(store.path(), &bytes[..bytes.len() / 2]).unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("cutover status"), "{err}");
    }

    #[test]
    fn writer_killed_mid_write_leaves_the_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path(), "hello");
        let mut before = State::new("hello");
        before.push_record(record("d1"), 10);
        store.save(&before).unwrap();
        // A writer killed mid-write leaves only its half-written temporary file;
        // the rename that would publish it never happened.
        let mut after = before.clone();
        after.push_record(record("d2"), 10);
        let bytes = serde_json::to_vec_pretty(&after).unwrap();
        std::fs::write(
            dir.path().join(".state.json.tmp-999999"),
            &bytes[..bytes.len() / 3],
        )
        .unwrap();
        assert_eq!(store.load().unwrap(), before);
        // And the next writer is not disturbed by the leftover.
        store.save(&after).unwrap();
        assert_eq!(store.load().unwrap(), after);
    }

    #[test]
    fn other_service_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        StateStore::new(dir.path(), "a")
            .save(&State::new("a"))
            .unwrap();
        let err = StateStore::new(dir.path(), "b").load().unwrap_err();
        assert!(matches!(err, StateError::OtherService { .. }), "{err}");
    }
}

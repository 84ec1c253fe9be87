//! What the `deploy-gate` plugin sees: the git facts of the checkout beside the
//! config and the CI facts of the run, mapped to the WIT `gate-input` record.
//!
//! This is the one place that mapping is written, so `deploy`, `plan` and the tests
//! show a gate exactly the same input. It only copies facts; it never decides and
//! never reads git or the environment itself.

use crate::ci::CiFacts;
use crate::git::GitFacts;
use crate::plugin::types::{GateInput, KeyValue};

/// The gate's input for `service` from the collected facts.
pub fn gate_input(service: &str, git: &GitFacts, ci: &CiFacts) -> GateInput {
    GateInput {
        service: service.to_owned(),
        repository: git.repository.clone(),
        branch: git.branch.clone(),
        head_sha: git.head_sha.clone(),
        tags: git.tags.clone(),
        commit_subject: git.subject.clone(),
        dirty: git.dirty,
        ci_system: ci.system.map(str::to_owned),
        ci_variables: ci
            .variables
            .iter()
            .map(|(key, value)| KeyValue {
                key: (*key).to_owned(),
                value: value.clone(),
            })
            .collect(),
    }
}

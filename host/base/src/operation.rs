//! The vocabulary of one deploy or rollback that every module shares: what kind of
//! operation it is, its steps in the order the state machine runs them, how long each
//! took and how it ended.
//!
//! It owns names and their spelling in output, the state file and the audit log, and
//! nothing else: no I/O, no dependency on any other module of the crate.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What kind of operation a journal or record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationKind {
    /// `cutover deploy`.
    Deploy,
    /// `cutover rollback`.
    Rollback,
}

/// One step of a deploy, in the order the state machine runs them.
///
/// Written as its name (`"health"`, `"hook:migrate"`) in output, events, the state
/// file and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Step {
    /// Reconcile what an interrupted deploy left behind.
    Recover,
    /// Ask the deploy-gate plugin.
    Gate,
    /// Build or pull the image (and push it when a registry is configured).
    Image,
    /// Ask the target-selector plugin.
    Select,
    /// Stop and remove the target slot's old container.
    Clear,
    /// Create and start the target container.
    Start,
    /// Probe the target until the health-policy plugin says healthy.
    Health,
    /// A canary step: load a traffic split, or wait and ask the analysis plugin.
    Canary,
    /// Ask the proxy-template plugin for the files.
    Render,
    /// Write the files and run the proxy's config test.
    Validate,
    /// Reload the proxy gracefully.
    Switch,
    /// Check through the proxy that the target serves.
    Verify,
    /// Wait for in-flight requests on the old colour.
    Drain,
    /// Stop the old colour.
    Retire,
    /// Remove old images beyond those kept for rollback.
    Prune,
    /// A release hook (`[[hook]]`) of this name: a migration, a notification.
    Hook(String),
}

impl Step {
    /// The steps that have a fixed name, for parsing.
    const FIXED: [Step; 15] = [
        Step::Recover,
        Step::Gate,
        Step::Image,
        Step::Select,
        Step::Clear,
        Step::Start,
        Step::Health,
        Step::Canary,
        Step::Render,
        Step::Validate,
        Step::Switch,
        Step::Verify,
        Step::Drain,
        Step::Retire,
        Step::Prune,
    ];

    /// The prefix of a hook step's name.
    const HOOK_PREFIX: &'static str = "hook:";

    /// The step's name in output and in the state file.
    pub fn name(&self) -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed(match self {
            Step::Recover => "recover",
            Step::Gate => "gate",
            Step::Image => "image",
            Step::Select => "select",
            Step::Clear => "clear",
            Step::Start => "start",
            Step::Health => "health",
            Step::Canary => "canary",
            Step::Render => "render",
            Step::Validate => "validate",
            Step::Switch => "switch",
            Step::Verify => "verify",
            Step::Drain => "drain",
            Step::Retire => "retire",
            Step::Prune => "prune",
            Step::Hook(name) => return format!("{}{name}", Self::HOOK_PREFIX).into(),
        })
    }

    /// Whether this is a release hook's step.
    pub fn is_hook(&self) -> bool {
        matches!(self, Step::Hook(_))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl From<Step> for String {
    fn from(step: Step) -> String {
        step.name().into_owned()
    }
}

impl TryFrom<String> for Step {
    type Error = String;

    fn try_from(name: String) -> Result<Step, String> {
        if let Some(hook) = name.strip_prefix(Step::HOOK_PREFIX) {
            return Ok(Step::Hook(hook.to_owned()));
        }
        Step::FIXED
            .into_iter()
            .find(|step| step.name() == name)
            .ok_or_else(|| format!("unknown step `{name}`"))
    }
}

/// How a deploy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Traffic moved to the target.
    Succeeded,
    /// The gate said no; nothing changed.
    Denied,
    /// Failed before the switch; what it started was removed; nothing else changed.
    Failed,
    /// Switched, then verification failed and the previous proxy config was restored.
    RolledBack,
    /// The runner died mid-deploy; a later run reconciled it.
    Interrupted,
}

impl Outcome {
    /// The outcome's name in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled-back",
            Outcome::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long one step took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTiming {
    /// The step.
    pub step: Step,
    /// Its wall time in milliseconds.
    pub ms: u64,
}

/// A duration in whole milliseconds, as steps, events and reports record it
/// (saturating: nothing cutover times runs for 584 million years).
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_written_as_their_names_and_read_back() {
        for step in Step::FIXED
            .into_iter()
            .chain([Step::Hook("migrate".to_owned())])
        {
            let json = serde_json::to_string(&step).unwrap();
            assert_eq!(json, format!("\"{step}\""));
            assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), step);
        }
        assert_eq!(
            Step::Hook("db-migrate".to_owned()).to_string(),
            "hook:db-migrate"
        );
        assert_eq!(serde_json::to_string(&Step::Drain).unwrap(), "\"drain\"");
        let unknown = serde_json::from_str::<Step>("\"launch\"").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown step `launch`"),
            "{unknown}"
        );
    }
}

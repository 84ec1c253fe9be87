//! `[history]` and `[[notify]]`: what is kept of past deploys, and who is told about
//! them.

use serde::Deserialize;

use crate::{Config, ConfigError, Duration, is_env_name};

/// How much history is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Deploys kept in the state file.
    #[serde(default = "default_keep_deploys")]
    pub deploys: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            deploys: default_keep_deploys(),
        }
    }
}

/// One `[[notify]]` table: a webhook told when a deploy or rollback ends with one
/// of the outcomes in `on`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The environment variable holding the webhook URL (a chat webhook URL is a
    /// secret, so it is never written in the file).
    pub url_env: String,
    /// What is posted.
    #[serde(default)]
    pub format: NotifyFormat,
    /// The outcomes that are sent; failed and rolled back by default.
    #[serde(default = "default_notify_on")]
    pub on: Vec<crate::operation::Outcome>,
    /// How long one attempt may take.
    #[serde(default = "default_notify_timeout")]
    pub timeout: Duration,
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// `{"text": "..."}` for Slack-compatible incoming webhooks.
    #[default]
    Slack,
    /// The audit log's entry for the run, with the service's name.
    Json,
}

pub(crate) fn default_notify_on() -> Vec<crate::operation::Outcome> {
    vec![
        crate::operation::Outcome::Failed,
        crate::operation::Outcome::RolledBack,
    ]
}

pub(crate) fn default_notify_timeout() -> Duration {
    Duration::from_millis(5_000)
}

pub(crate) fn default_keep_deploys() -> usize {
    50
}

impl Config {
    /// `[history]` and every `[[notify]]`.
    pub(crate) fn check_notify(&self) -> Result<(), ConfigError> {
        if self.history.deploys == 0 {
            return Err(self.invalid("history.deploys", "expected at least 1"));
        }
        for (i, notify) in self.notify.iter().enumerate() {
            if !is_env_name(&notify.url_env) {
                return Err(self.invalid(
                    &format!("notify[{i}].url_env"),
                    "expected the name of the environment variable holding the webhook URL, e.g. \"SLACK_WEBHOOK_URL\"",
                ));
            }
            if notify.on.is_empty() {
                return Err(self.invalid(
                    &format!("notify[{i}].on"),
                    "expected at least one outcome, e.g. [\"failed\", \"rolled-back\"]; remove the table to send nothing",
                ));
            }
            if notify.timeout.get().is_zero() {
                return Err(self.invalid(
                    &format!("notify[{i}].timeout"),
                    "expected a duration above zero, e.g. \"5s\"",
                ));
            }
        }
        Ok(())
    }
}

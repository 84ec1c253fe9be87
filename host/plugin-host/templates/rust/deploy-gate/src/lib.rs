//! A cutover `deploy-gate` plugin: allow a deploy when a tag on HEAD contains
//! `pattern`, or every deploy when no pattern is configured.
//!
//! Config (`[plugins.deploy-gate].config`; `{}` when left out):
//! - `pattern` (string, optional): a substring some tag on HEAD must contain.

use cutover_plugin::{Config, DeployGate, GateDecision, GateInput, LogLevel, log};
use serde::Deserialize;

/// The plugin's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The substring a tag on HEAD must contain; none allows every deploy.
    pub pattern: Option<String>,
}

impl Config for Settings {
    fn validate(&self) -> Result<(), String> {
        match &self.pattern {
            Some(pattern) if pattern.is_empty() => {
                Err("`pattern` is empty; leave it out to allow every deploy".to_owned())
            }
            _ => Ok(()),
        }
    }
}

pub struct Policy;

impl DeployGate for Policy {
    type Config = Settings;

    fn decide(config: &Settings, input: GateInput) -> Result<GateDecision, String> {
        log(LogLevel::Debug, &format!("tags on HEAD: {:?}", input.tags));
        let Some(pattern) = &config.pattern else {
            return Ok(GateDecision::Allow(
                "no pattern is configured: every deploy is allowed".to_owned(),
            ));
        };
        Ok(match input.tags.iter().find(|tag| tag.contains(pattern.as_str())) {
            Some(tag) => GateDecision::Allow(format!("tag `{tag}` on HEAD matches `{pattern}`")),
            None => GateDecision::Deny(format!("no tag on HEAD contains `{pattern}`")),
        })
    }
}

cutover_plugin::export_deploy_gate!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(tags: &[&str]) -> GateInput {
        GateInput {
            service: "app".to_owned(),
            repository: None,
            branch: Some("main".to_owned()),
            head_sha: None,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            commit_subject: None,
            dirty: false,
            ci_system: None,
            ci_variables: Vec::new(),
        }
    }

    #[test]
    fn a_matching_tag_allows_and_none_denies() {
        let config: Settings = cutover_plugin::parse_config(r#"{"pattern":"cicd"}"#).unwrap();
        let allowed = Policy::decide(&config, input(&["v1-cicd"])).unwrap();
        assert!(matches!(allowed, GateDecision::Allow(_)), "{allowed:?}");
        let denied = Policy::decide(&config, input(&["v1"])).unwrap();
        assert!(matches!(denied, GateDecision::Deny(_)), "{denied:?}");
        assert!(!cutover_plugin::take_logs().is_empty());
        assert!(cutover_plugin::parse_config::<Settings>(r#"{"pattern":""}"#).is_err());
    }
}

//! The `[plugins.*]` tables of `cutover.toml` as the plugin host reads them: which
//! plugin serves each kind, its digest pin, its limits and its config.
//!
//! The config module parses the whole file; these types are the plugin host's own, so
//! the plugin host needs nothing else from the config ([`PluginSettings`]).

use std::path::Path;

use serde::Deserialize;

use super::PluginKind;

/// What [`super::Plugins::load`] reads: the `[plugins]` table, and the file it came
/// from (relative plugin paths resolve against its directory; errors name it).
#[derive(Debug, Clone, Copy)]
pub struct PluginSettings<'a> {
    /// The `[plugins]` table.
    pub plugins: &'a PluginsConfig,
    /// The directory relative paths resolve against.
    pub base_dir: &'a Path,
    /// The config file, for messages.
    pub file: &'a Path,
}

/// `[plugins]`: one optional entry per kind; a missing entry means the built-in default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// `[plugins.deploy-gate]`
    #[serde(rename = "deploy-gate")]
    pub deploy_gate: Option<PluginSpec>,
    /// `[plugins.target-selector]`
    #[serde(rename = "target-selector")]
    pub target_selector: Option<PluginSpec>,
    /// `[plugins.health-policy]`
    #[serde(rename = "health-policy")]
    pub health_policy: Option<PluginSpec>,
    /// `[plugins.proxy-template]`
    #[serde(rename = "proxy-template")]
    pub proxy_template: Option<PluginSpec>,
    /// `[plugins.rollout-analysis]`
    #[serde(rename = "rollout-analysis")]
    pub rollout_analysis: Option<PluginSpec>,
}

impl PluginsConfig {
    /// The entry for `kind`, if the config has one.
    pub fn get(&self, kind: PluginKind) -> Option<&PluginSpec> {
        match kind {
            PluginKind::DeployGate => self.deploy_gate.as_ref(),
            PluginKind::TargetSelector => self.target_selector.as_ref(),
            PluginKind::HealthPolicy => self.health_policy.as_ref(),
            PluginKind::ProxyTemplate => self.proxy_template.as_ref(),
            PluginKind::RolloutAnalysis => self.rollout_analysis.as_ref(),
        }
    }
}

/// Where one plugin comes from, its limits and its config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// `builtin:<name>` or a path to a `.wasm` component (relative to the config file).
    pub source: String,
    /// The lowercase hex sha256 of the `.wasm` file; required for files.
    pub sha256: Option<String>,
    /// Per-call limits; each one left out keeps its default.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Handed to the plugin as a JSON document.
    #[serde(default)]
    pub config: toml::Table,
}

impl PluginSpec {
    /// The plugin's config table as the JSON document the plugin receives.
    pub fn config_json(&self) -> String {
        // A toml table always serializes to JSON: keys are strings and every value
        // maps to a JSON value (datetimes become strings).
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// `[plugins.<kind>.limits]`: each field overrides one default limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Wall-clock deadline per call, in milliseconds.
    pub deadline_ms: Option<u64>,
    /// Fuel (roughly, wasm instructions) per call.
    pub fuel: Option<u64>,
    /// Linear memory cap, in MiB.
    pub memory_mib: Option<u64>,
    /// Cap on the size of the returned value, in KiB.
    pub output_kib: Option<u64>,
    /// Cap on what the plugin may log per call, in KiB.
    pub log_kib: Option<u64>,
}

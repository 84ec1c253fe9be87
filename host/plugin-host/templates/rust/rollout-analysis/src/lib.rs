//! A cutover `rollout-analysis` plugin: judges one step of a canary. Holds until the
//! canary served `min_requests` in this step, aborts when its share of 5xx
//! responses is over `max_5xx_percent`, else promotes.
//!
//! `analyze` is called during every step of a canary (`[strategy] kind = "canary"`)
//! with what the proxy's access log says each colour served. "hold" asks again
//! later (bounded by the step's deadline); "abort" sends all traffic back to the
//! live colour and stops the canary.
//!
//! Config (`[plugins.rollout-analysis].config`; `{}` when left out):
//! - `min_requests` (integer, default 20): canary requests before judging.
//! - `max_5xx_percent` (number, default 1.0): the canary's 5xx share that aborts.

use cutover_plugin::{AnalysisDecision, AnalysisInput, Config, LogLevel, RolloutAnalysis, log};
use serde::Deserialize;

/// The plugin's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Canary requests in a step before it is judged.
    pub min_requests: u64,
    /// The canary's share of 5xx responses, in percent, that aborts.
    pub max_5xx_percent: f64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { min_requests: 20, max_5xx_percent: 1.0 }
    }
}

impl Config for Settings {
    fn validate(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.max_5xx_percent) {
            return Err(format!("`max_5xx_percent` is {}; expected 0 to 100", self.max_5xx_percent));
        }
        Ok(())
    }
}

pub struct Policy;

impl RolloutAnalysis for Policy {
    type Config = Settings;

    fn analyze(config: &Settings, input: AnalysisInput) -> Result<AnalysisDecision, String> {
        let step = &input.canary.this_step;
        log(LogLevel::Debug, &format!("step {}: {} requests", input.step_index, step.requests));
        if step.requests < config.min_requests {
            return Ok(AnalysisDecision::Hold(format!(
                "{} of {} requests so far",
                step.requests, config.min_requests
            )));
        }
        let errors = step.server_error_percent().unwrap_or(0.0);
        if errors > config.max_5xx_percent {
            return Ok(AnalysisDecision::Abort(format!(
                "{errors:.1}% of the canary's responses were 5xx"
            )));
        }
        Ok(AnalysisDecision::Promote)
    }
}

cutover_plugin::export_rollout_analysis!(Policy);

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_plugin::{Color, ColorTraffic, TrafficMetrics};

    fn input(requests: u64, errors: u64) -> AnalysisInput {
        let traffic = |color, requests: u64, errors: u64| {
            let metrics = TrafficMetrics {
                requests,
                success: requests - errors,
                client_errors: 0,
                server_errors: errors,
                latency_p50_us: None,
                latency_p95_us: None,
                latency_p99_us: None,
            };
            ColorTraffic { color, this_step: metrics.clone(), whole_canary: metrics }
        };
        AnalysisInput {
            service: "app".to_owned(),
            step_index: 0,
            step_count: 2,
            weight: 10,
            step_elapsed_ms: 1_000,
            canary_elapsed_ms: 1_000,
            canary: traffic(Color::Green, requests, errors),
            baseline: traffic(Color::Blue, 10 * requests, 0),
            probes: Vec::new(),
        }
    }

    #[test]
    fn holds_then_promotes_or_aborts() {
        let config = Settings::default();
        assert!(matches!(Policy::analyze(&config, input(5, 0)), Ok(AnalysisDecision::Hold(_))));
        assert_eq!(Policy::analyze(&config, input(100, 1)), Ok(AnalysisDecision::Promote));
        assert!(matches!(Policy::analyze(&config, input(100, 20)), Ok(AnalysisDecision::Abort(_))));
        assert_eq!(cutover_plugin::take_logs().len(), 3);
        assert!(cutover_plugin::parse_config::<Settings>(r#"{"max_5xx_percent":-1}"#).is_err());
    }
}

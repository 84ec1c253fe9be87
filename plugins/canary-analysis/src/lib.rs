//! `builtin:canary-analysis`, the default `rollout-analysis` plugin: judges one step
//! of a canary from the traffic this step sent to the canary and to the baseline
//! (the live colour).
//!
//! 1. Fewer than `min_requests` canary requests in this step: hold (too little
//!    evidence; a judgement on three requests is noise).
//! 2. The canary's 5xx rate exceeds the baseline's by more than `max_5xx_margin`
//!    percentage points: abort. Compared with the baseline rather than with zero, so
//!    a backend both colours share failing does not blame the release.
//! 3. The canary's p95 latency is over `max_p95_ms`: abort.
//! 4. Otherwise: promote.
//!
//! # Config
//! ```toml
//! [plugins.rollout-analysis]
//! source = "builtin:canary-analysis"
//! config = { min_requests = 20, max_5xx_margin = 1.0, max_p95_ms = 500 }
//! ```

#![deny(unsafe_code)]

use cutover_plugin::{
    AnalysisDecision, AnalysisInput, LogLevel, RolloutAnalysis, TrafficMetrics, log,
};
use serde::Deserialize;

/// The plugin's config, every key optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Percentage points the canary's 5xx rate may exceed the baseline's.
    pub max_5xx_margin: f64,
    /// The canary's p95 latency bound, in milliseconds.
    pub max_p95_ms: u64,
    /// Canary requests needed in a step before it is judged.
    pub min_requests: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_5xx_margin: 1.0,
            max_p95_ms: 500,
            min_requests: 20,
        }
    }
}

impl cutover_plugin::Config for Config {
    fn validate(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.max_5xx_margin) {
            return Err(format!(
                "`max_5xx_margin` is {}; expected percentage points from 0 to 100, e.g. 1.0",
                self.max_5xx_margin
            ));
        }
        if self.max_p95_ms == 0 || self.max_p95_ms > 3_600_000 {
            return Err(format!(
                "`max_p95_ms` is {}; expected 1 to 3600000 milliseconds, e.g. 500",
                self.max_p95_ms
            ));
        }
        if self.min_requests == 0 {
            return Err(
                "`min_requests` is 0; expected at least 1 (a step judged on no request \
                 proves nothing)"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

fn percent(metrics: &TrafficMetrics) -> f64 {
    metrics.server_error_percent().unwrap_or(0.0)
}

/// Judges the step in `input`.
pub fn analyze(config: &Config, input: &AnalysisInput) -> AnalysisDecision {
    let canary = &input.canary.this_step;
    let baseline = &input.baseline.this_step;
    let (canary_name, baseline_name) = (input.canary.color.name(), input.baseline.color.name());
    let step = input.step_index.saturating_add(1);
    if canary.requests < config.min_requests {
        return AnalysisDecision::Hold(format!(
            "step {step}: {canary_name} served {} of the {} requests needed to judge it",
            canary.requests, config.min_requests
        ));
    }
    let (canary_5xx, baseline_5xx) = (percent(canary), percent(baseline));
    log(
        LogLevel::Debug,
        &format!(
            "step {step}: 5xx {canary_name} {canary_5xx:.2}% ({} of {}), {baseline_name} \
             {baseline_5xx:.2}% ({} of {}); p95 {canary_name} {:?} us",
            canary.server_errors,
            canary.requests,
            baseline.server_errors,
            baseline.requests,
            canary.latency_p95_us
        ),
    );
    if canary_5xx > baseline_5xx + config.max_5xx_margin {
        return AnalysisDecision::Abort(format!(
            "step {step}: {canary_name} answered {} of {} requests with a 5xx ({canary_5xx:.1}%), \
             {baseline_name} {baseline_5xx:.1}%: more than the {} point margin",
            canary.server_errors, canary.requests, config.max_5xx_margin
        ));
    }
    if let Some(p95) = canary.latency_p95_us
        && p95 > config.max_p95_ms.saturating_mul(1000)
    {
        return AnalysisDecision::Abort(format!(
            "step {step}: {canary_name}'s p95 latency is {} ms, over the {} ms bound",
            p95 / 1000,
            config.max_p95_ms
        ));
    }
    AnalysisDecision::Promote
}

struct CanaryAnalysis;

impl RolloutAnalysis for CanaryAnalysis {
    type Config = Config;

    fn analyze(config: &Config, input: AnalysisInput) -> Result<AnalysisDecision, String> {
        Ok(analyze(config, &input))
    }
}

cutover_plugin::export_rollout_analysis!(CanaryAnalysis);

#[cfg(test)]
mod tests {
    use super::*;

    use cutover_plugin::{Color, ColorTraffic};

    fn metrics(requests: u64, errors: u64, p95_ms: u64) -> TrafficMetrics {
        let latency = (requests > 0).then_some(p95_ms * 1000);
        TrafficMetrics {
            requests,
            success: requests - errors,
            client_errors: 0,
            server_errors: errors,
            latency_p50_us: latency,
            latency_p95_us: latency,
            latency_p99_us: latency,
        }
    }

    fn input(canary: TrafficMetrics, baseline: TrafficMetrics) -> AnalysisInput {
        AnalysisInput {
            service: "app".to_owned(),
            step_index: 0,
            step_count: 3,
            weight: 10,
            step_elapsed_ms: 30_000,
            canary_elapsed_ms: 30_000,
            canary: ColorTraffic {
                color: Color::Green,
                this_step: canary,
                whole_canary: canary,
            },
            baseline: ColorTraffic {
                color: Color::Blue,
                this_step: baseline,
                whole_canary: baseline,
            },
            probes: Vec::new(),
        }
    }

    fn judge(config: &str, canary: TrafficMetrics, baseline: TrafficMetrics) -> AnalysisDecision {
        analyze(
            &cutover_plugin::parse_config(config).unwrap(),
            &input(canary, baseline),
        )
    }

    #[test]
    fn holds_until_the_step_saw_min_requests() {
        let decision = judge("{}", metrics(19, 19, 900), metrics(500, 0, 10));
        let AnalysisDecision::Hold(why) = decision else {
            panic!("{decision:?}")
        };
        assert!(why.contains("19 of the 20 requests"), "{why}");
        assert_eq!(
            judge(
                "{\"min_requests\":5}",
                metrics(5, 0, 10),
                metrics(500, 0, 10)
            ),
            AnalysisDecision::Promote
        );
    }

    #[test]
    fn aborts_when_5xx_exceeds_the_baseline_by_the_margin() {
        // 20% against 0%: the bad release of the canary issue.
        let decision = judge("{}", metrics(100, 20, 10), metrics(900, 0, 10));
        let AnalysisDecision::Abort(why) = decision else {
            panic!("{decision:?}")
        };
        assert!(why.contains("20 of 100") && why.contains("20.0%"), "{why}");
        // 2% against 1.5%: within the default margin of one point.
        assert_eq!(
            judge("{}", metrics(200, 4, 10), metrics(200, 3, 10)),
            AnalysisDecision::Promote
        );
        // The same with no margin aborts.
        assert!(matches!(
            judge(
                "{\"max_5xx_margin\":0.0}",
                metrics(200, 4, 10),
                metrics(200, 3, 10)
            ),
            AnalysisDecision::Abort(_)
        ));
        // A baseline without requests counts as 0%.
        assert!(matches!(
            judge("{}", metrics(50, 1, 10), metrics(0, 0, 0)),
            AnalysisDecision::Abort(_)
        ));
    }

    #[test]
    fn aborts_when_p95_is_over_the_bound() {
        let decision = judge("{}", metrics(100, 0, 501), metrics(900, 0, 10));
        let AnalysisDecision::Abort(why) = decision else {
            panic!("{decision:?}")
        };
        assert!(why.contains("501 ms, over the 500 ms"), "{why}");
        assert_eq!(
            judge(
                "{\"max_p95_ms\":1000}",
                metrics(100, 0, 501),
                metrics(900, 0, 10)
            ),
            AnalysisDecision::Promote
        );
    }

    #[test]
    fn a_good_canary_is_promoted() {
        assert_eq!(
            judge("{}", metrics(120, 0, 42), metrics(1080, 1, 40)),
            AnalysisDecision::Promote
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        for (config, key) in [
            ("{\"max_5xx_margin\":-1}", "`max_5xx_margin`"),
            ("{\"max_p95_ms\":0}", "`max_p95_ms`"),
            ("{\"min_requests\":0}", "`min_requests`"),
            ("{\"min_request\":3}", "unknown field `min_request`"),
        ] {
            let err = cutover_plugin::parse_config::<Config>(config).unwrap_err();
            assert!(err.contains(key), "{config}: {err}");
        }
    }
}

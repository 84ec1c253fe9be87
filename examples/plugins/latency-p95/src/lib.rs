//! A `health-policy` plugin for cutover: the new colour is ready only when it is
//! *fast*, not merely up. It needs `window` consecutive successful probes (status
//! 200-399) whose 95th-percentile latency is at most `p95_ms`; a JVM that answers its
//! first requests in 800 ms while it warms up is "not yet", not "healthy".
//!
//! # Config
//! ```toml
//! [plugins.health-policy]
//! source = "plugins/latency_p95.wasm"
//! sha256 = "<output of `cutover plugin sha256 plugins/latency_p95.wasm`>"
//! config = { window = 5, p95_ms = 250, max_attempts = 100 }
//! ```
//! - `window` (2 to 33, default 5): probes the percentile is taken over (the host
//!   passes the current probe and up to 32 earlier ones).
//! - `p95_ms` (required): the bound on the 95th-percentile latency, in milliseconds.
//! - `max_attempts` (optional): give up ("failed") after this many probes.
//!
//! The policy itself is plain Rust below (`parse_config`, `evaluate`), unit-tested
//! natively with `cargo test`; the wit-bindgen glue at the bottom is a few lines.

// wit-bindgen's generated glue is the only `unsafe` here.
#![allow(unsafe_code)]

use serde::Deserialize;

/// The plugin's config document.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Probes in the window.
    #[serde(default = "default_window")]
    pub window: usize,
    /// The p95 latency bound, in milliseconds.
    pub p95_ms: u64,
    /// Give up after this many probes.
    pub max_attempts: Option<u32>,
}

fn default_window() -> usize {
    5
}

/// Parses and checks the config JSON.
///
/// # Errors
/// A message naming the key that is wrong.
pub fn parse_config(json: &str) -> Result<Config, String> {
    let config: Config = serde_json::from_str(json).map_err(|e| {
        format!("latency-p95 config: {e} (keys: `window`, `p95_ms`, `max_attempts`)")
    })?;
    if !(2..=33).contains(&config.window) {
        return Err(format!(
            "latency-p95 config: `window` is {}; expected 2 to 33",
            config.window
        ));
    }
    if config.p95_ms == 0 {
        return Err("latency-p95 config: `p95_ms` must be above 0".to_owned());
    }
    Ok(config)
}

/// A probe's latency in microseconds, or why it does not count.
fn success(probe: &ProbeResult) -> Result<u64, String> {
    match probe.status {
        Some(status) if (200..400).contains(&status) => Ok(probe.latency_us),
        Some(status) => Err(format!("status {status}")),
        None => Err(probe
            .error
            .clone()
            .unwrap_or_else(|| "no response".to_owned())),
    }
}

/// The nearest-rank 95th percentile of `samples` (not empty).
fn p95(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    let rank = (samples.len() * 95).div_ceil(100);
    samples[rank.saturating_sub(1)]
}

/// Judges the current probe, given the earlier ones.
pub fn evaluate(config: &Config, input: &HealthInput) -> HealthVerdict {
    if let Some(max) = config.max_attempts
        && input.attempt > max
    {
        return HealthVerdict::Failed(format!(
            "not fast enough after {max} probes (p95 must be at most {} ms)",
            config.p95_ms
        ));
    }
    // The window: the current probe and the most recent earlier ones.
    let earlier = input.history.len().min(config.window - 1);
    let window = input.history[input.history.len() - earlier..]
        .iter()
        .chain(std::iter::once(&input.probe));
    let mut latencies = Vec::with_capacity(config.window);
    for probe in window {
        match success(probe) {
            Ok(latency) => latencies.push(latency),
            Err(why) => {
                return HealthVerdict::NotYet(format!("a probe in the window failed: {why}"));
            }
        }
    }
    if latencies.len() < config.window {
        return HealthVerdict::NotYet(format!(
            "{} of {} probes so far",
            latencies.len(),
            config.window
        ));
    }
    let p95_us = p95(&mut latencies);
    if p95_us <= config.p95_ms * 1000 {
        HealthVerdict::Healthy
    } else {
        HealthVerdict::NotYet(format!(
            "p95 latency {:.1} ms over the last {} probes is above {} ms",
            p95_us as f64 / 1000.0,
            config.window,
            config.p95_ms
        ))
    }
}

// In your own crate, after `cutover plugin wit > wit/plugin.wit`, write `path: "wit"`.
wit_bindgen::generate!({
    world: "health-policy",
    path: "../../../wit/v0.1.0",
});

use cutover::plugin::host::log;
use cutover::plugin::types::{LogLevel, ProbeResult};

struct LatencyP95;

impl Guest for LatencyP95 {
    fn validate_config(config: String) -> Result<(), String> {
        parse_config(&config).map(drop)
    }

    fn evaluate(config: String, input: HealthInput) -> HealthVerdict {
        let config = match parse_config(&config) {
            Ok(config) => config,
            Err(e) => return HealthVerdict::Failed(e),
        };
        let verdict = evaluate(&config, &input);
        // Shows up in the deploy log as `[<plugin file>] ...`.
        log(
            LogLevel::Debug,
            &format!("attempt {}: {verdict:?}", input.attempt),
        );
        verdict
    }
}

export!(LatencyP95);

#[cfg(test)]
mod tests {
    use super::*;
    use cutover::plugin::types::Color;

    fn probe(status: u16, latency_ms: u64) -> ProbeResult {
        ProbeResult {
            status: Some(status),
            headers: Vec::new(),
            body_prefix: String::new(),
            latency_us: latency_ms * 1000,
            error: None,
        }
    }

    fn input(mut probes: Vec<ProbeResult>) -> HealthInput {
        let current = probes.pop().expect("at least one probe");
        HealthInput {
            service: "app".to_owned(),
            color: Color::Blue,
            attempt: u32::try_from(probes.len()).unwrap() + 1,
            elapsed_ms: 0,
            probe: current,
            history: probes,
        }
    }

    fn verdict(config: &str, probes: Vec<ProbeResult>) -> String {
        format!(
            "{:?}",
            evaluate(&parse_config(config).unwrap(), &input(probes))
        )
    }

    #[test]
    fn needs_a_full_window() {
        let v = verdict(
            r#"{"window":3,"p95_ms":100}"#,
            vec![probe(200, 10), probe(200, 10)],
        );
        assert!(v.contains("2 of 3 probes"), "{v}");
    }

    #[test]
    fn fast_window_is_healthy_slow_one_is_not_yet() {
        let config = r#"{"window":3,"p95_ms":100}"#;
        let slow_start = vec![
            probe(200, 900),
            probe(200, 20),
            probe(200, 30),
            probe(200, 40),
        ];
        assert_eq!(verdict(config, slow_start), "HealthVerdict::Healthy");
        let v = verdict(
            config,
            vec![probe(200, 20), probe(200, 150), probe(200, 30)],
        );
        assert!(v.contains("p95 latency 150.0 ms"), "{v}");
    }

    #[test]
    fn a_failed_probe_in_the_window_is_not_yet() {
        let v = verdict(
            r#"{"window":2,"p95_ms":100}"#,
            vec![probe(503, 1), probe(200, 1)],
        );
        assert!(v.contains("status 503"), "{v}");
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let probes = (0..4).map(|_| probe(200, 500)).collect();
        let v = verdict(r#"{"window":2,"p95_ms":100,"max_attempts":3}"#, probes);
        assert!(v.starts_with("HealthVerdict::Failed"), "{v}");
    }

    #[test]
    fn config_errors_name_the_key() {
        assert!(parse_config("{}").unwrap_err().contains("`p95_ms`"));
        assert!(
            parse_config(r#"{"p95_ms":1,"window":1}"#)
                .unwrap_err()
                .contains("`window`")
        );
        assert!(
            parse_config(r#"{"p95_ms":1,"windw":3}"#)
                .unwrap_err()
                .contains("unknown field")
        );
    }
}

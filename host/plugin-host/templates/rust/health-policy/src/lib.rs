//! A cutover `health-policy` plugin: healthy when the probe's status is 200-399;
//! "not yet" otherwise, until `max_attempts` (if set) makes it "failed".
//!
//! `evaluate` is called after every health probe of the colour being brought up.
//! "not yet" asks the host to probe again until its deadline; "failed" gives up at
//! once (the deploy fails and the live colour keeps serving).
//!
//! Config (`[plugins.health-policy].config`; `{}` when left out):
//! - `max_attempts` (integer, optional): give up after this many probes.

use cutover_plugin::{Config, HealthInput, HealthPolicy, HealthVerdict, LogLevel, log};
use serde::Deserialize;

/// The plugin's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Give up after this many probes; none waits for the host's deadline.
    pub max_attempts: Option<u32>,
}

impl Config for Settings {
    fn validate(&self) -> Result<(), String> {
        if self.max_attempts == Some(0) {
            return Err("`max_attempts` is 0; it must be at least 1".to_owned());
        }
        Ok(())
    }
}

pub struct Policy;

impl HealthPolicy for Policy {
    type Config = Settings;

    fn evaluate(config: &Settings, input: HealthInput) -> HealthVerdict {
        let probe = &input.probe;
        log(LogLevel::Debug, &format!("attempt {}: status {:?}", input.attempt, probe.status));
        match probe.status {
            Some(status) if (200..400).contains(&status) => return HealthVerdict::Healthy,
            _ => {}
        }
        let why = match (probe.status, &probe.error) {
            (Some(status), _) => format!("status {status}"),
            (None, Some(error)) => error.clone(),
            (None, None) => "no response".to_owned(),
        };
        match config.max_attempts {
            Some(max) if input.attempt >= max => {
                HealthVerdict::Failed(format!("{why} after {max} attempts"))
            }
            _ => HealthVerdict::NotYet(why),
        }
    }
}

cutover_plugin::export_health_policy!(Policy);

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_plugin::{Color, Instance, ProbeResult};

    fn input(attempt: u32, status: Option<u16>) -> HealthInput {
        HealthInput {
            service: "app".to_owned(),
            color: Color::Green,
            instance: Instance {
                id: "app-green".to_owned(),
                node: None,
                address: "127.0.0.1".to_owned(),
                port: 8082,
            },
            attempt,
            elapsed_ms: 100,
            probe: ProbeResult {
                status,
                headers: Vec::new(),
                body_prefix: String::new(),
                latency_us: 1_000,
                error: status.is_none().then(|| "connection refused".to_owned()),
            },
            history: Vec::new(),
        }
    }

    #[test]
    fn ok_is_healthy_and_errors_are_not_yet_until_max_attempts() {
        let config: Settings = cutover_plugin::parse_config(r#"{"max_attempts":3}"#).unwrap();
        assert_eq!(Policy::evaluate(&config, input(1, Some(204))), HealthVerdict::Healthy);
        assert_eq!(
            Policy::evaluate(&config, input(1, None)),
            HealthVerdict::NotYet("connection refused".to_owned())
        );
        assert!(matches!(Policy::evaluate(&config, input(3, Some(503))), HealthVerdict::Failed(_)));
        assert_eq!(cutover_plugin::take_logs().len(), 3);
        assert!(cutover_plugin::parse_config::<Settings>(r#"{"max_attempts":0}"#).is_err());
    }
}

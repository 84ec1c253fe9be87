//! `[health]` and `[verify]`: when a colour is ready, and how a switch is confirmed
//! through the proxy.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Config, ConfigError, Duration};

/// How a new colour is judged ready.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// The path probed on the target.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// The Host header sent with each probe.
    pub host: Option<String>,
    /// Per-probe timeout.
    #[serde(default = "default_probe_timeout")]
    pub timeout: Duration,
    /// Wait before the first probe.
    #[serde(default = "default_first_delay")]
    pub first_delay: Duration,
    /// Wait between probes.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Give up when the target is not healthy this long after it started.
    #[serde(default = "default_health_deadline")]
    pub deadline: Duration,
    /// Response headers passed to the health-policy plugin.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Swarm: how many of a colour's tasks must be healthy before traffic moves to
    /// them (default: all of its replicas).
    pub min_healthy: Option<u32>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            path: default_health_path(),
            host: None,
            timeout: default_probe_timeout(),
            first_delay: default_first_delay(),
            interval: default_interval(),
            deadline: default_health_deadline(),
            headers: Vec::new(),
            min_healthy: None,
        }
    }
}

/// The check, through the proxy, that the target really serves after the switch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// The URL requested through the proxy; defaults to the managed listen address
    /// and the health path. Must be given in external mode.
    pub url: Option<String>,
    /// The Host header to send.
    pub host: Option<String>,
    /// A PEM file of CA certificates to trust for an `https://` URL besides the
    /// system's roots (a private CA); relative to the config file.
    pub ca_file: Option<PathBuf>,
    /// A header the response must carry, as `Name: value`; `{color}` is replaced
    /// by the target colour.
    pub expect_header: Option<String>,
    /// A substring the body must contain; `{color}` is replaced.
    pub expect_body: Option<String>,
    /// How long the proxy gets to start serving the target.
    #[serde(default = "default_verify_timeout")]
    pub timeout: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            url: None,
            host: None,
            ca_file: None,
            expect_header: None,
            expect_body: None,
            timeout: default_verify_timeout(),
        }
    }
}

pub(crate) fn default_health_path() -> String {
    "/health".to_owned()
}

pub(crate) fn default_probe_timeout() -> Duration {
    Duration::from_millis(1_000)
}

pub(crate) fn default_first_delay() -> Duration {
    Duration::from_millis(20)
}

pub(crate) fn default_interval() -> Duration {
    Duration::from_millis(100)
}

pub(crate) fn default_health_deadline() -> Duration {
    Duration::from_millis(60_000)
}

pub(crate) fn default_verify_timeout() -> Duration {
    Duration::from_millis(5_000)
}

/// Refuses a CA file that could not serve when the deploy reaches verification (after
/// the switch): unreadable, not PEM, or without a certificate. Read here so the mistake
/// stops the deploy before anything starts.
pub(crate) fn check_ca_file(path: &Path) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let expected = "expected a PEM file of CA certificates (`-----BEGIN CERTIFICATE-----`)";
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read {}: {e}; {expected}", path.display()))?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| format!("{} is not valid PEM ({e}); {expected}", path.display()))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!(
            "{} holds no certificate; {expected}",
            path.display()
        ));
    }
    Ok(())
}

impl Config {
    /// `[health]`: the path, the interval and the deadline.
    pub(crate) fn check_health(&self) -> Result<(), ConfigError> {
        if !self.health.path.starts_with('/') {
            return Err(self.invalid("health.path", "expected a path starting with `/`"));
        }
        if self.health.interval.get().is_zero() {
            return Err(self.invalid("health.interval", "expected a duration above zero"));
        }
        if self.health.deadline < self.health.timeout {
            return Err(self.invalid(
                "health.deadline",
                "expected a deadline at least as long as `health.timeout`",
            ));
        }
        Ok(())
    }

    /// `[verify]`: the URL, its CA file and the expected header.
    pub(crate) fn check_verify(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.verify.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(self.invalid("verify.url", "expected an http:// or https:// URL"));
        }
        if let Some(ca_file) = &self.verify.ca_file {
            check_ca_file(&self.resolve(ca_file)).map_err(|m| self.invalid("verify.ca_file", m))?;
        }
        if let Some(header) = &self.verify.expect_header
            && !header.contains(':')
        {
            return Err(self.invalid(
                "verify.expect_header",
                "expected `Name: value`, e.g. \"X-Color: {color}\"",
            ));
        }
        Ok(())
    }
}

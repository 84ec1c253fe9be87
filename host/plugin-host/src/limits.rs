//! The per-call limits every plugin runs under, their defaults, and the hard bounds
//! within which `[plugins.<kind>.limits]` may move them.
//!
//! This module only computes numbers; the sandbox enforces them. A bound exists so a
//! config typo (`deadline_ms = 1000000`) cannot turn a sandboxed policy into a hang.

use std::time::Duration;

use super::PluginKind;
use super::settings::LimitsConfig;
use crate::PluginError;

/// The limits one plugin call runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline for instantiation plus the call.
    pub deadline: Duration,
    /// Fuel: roughly one unit per WebAssembly instruction.
    pub fuel: u64,
    /// Cap on the plugin's linear memory, in bytes.
    pub memory_bytes: u64,
    /// Cap on the size of the returned value (every string in it), in bytes.
    pub output_bytes: usize,
    /// Cap on what the plugin may log per call, in bytes; the rest is dropped.
    pub log_bytes: usize,
}

/// One limit's config key, default and hard bounds (in the key's unit).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The key in `[plugins.<kind>.limits]`.
    pub key: &'static str,
    /// The value used when the key is left out.
    pub default: u64,
    /// The smallest value accepted.
    pub min: u64,
    /// The largest value accepted.
    pub max: u64,
    /// What it limits, for `cutover plugin list` and the docs.
    pub what: &'static str,
}

/// Sized by measurement (`cutover plugin check` prints a call's fuel): a built-in's
/// decision or config check costs 3k to 15k fuel, so 50 million leaves over three
/// orders of magnitude for heavier custom policies, while a runaway plugin is stopped
/// after about 5 to 10 ms of CPU (bench `limits/`), deterministically and long before
/// the 100 ms deadline. A plugin that needs more raises `fuel` in its limits.
const DEFAULT_FUEL: u64 = 50_000_000;

/// The largest memory cap `memory_mib` accepts, in bytes: the size of each slot of
/// the host's instance pool.
pub(crate) const MAX_MEMORY_BYTES: usize = 1024 << 20;

/// Deadline, fuel, memory, output and log bounds, in that order.
pub const BOUNDS: [Bound; 5] = [
    Bound {
        key: "deadline_ms",
        default: 100,
        min: 1,
        max: 10_000,
        what: "wall-clock deadline per call, in milliseconds",
    },
    Bound {
        key: "fuel",
        default: DEFAULT_FUEL,
        min: 10_000,
        max: 10_000_000_000,
        what: "fuel per call (about one unit per WebAssembly instruction)",
    },
    Bound {
        key: "memory_mib",
        default: 32,
        // A Rust guest starts with about 1.1 MiB (its 1 MiB stack and data).
        min: 2,
        max: (MAX_MEMORY_BYTES >> 20) as u64,
        what: "linear memory cap, in MiB",
    },
    Bound {
        key: "output_kib",
        default: 64,
        min: 1,
        max: 16 * 1024,
        what: "cap on the returned value, in KiB",
    },
    Bound {
        key: "log_kib",
        default: 16,
        min: 0,
        max: 1024,
        what: "cap on log output per call, in KiB (the rest is dropped)",
    },
];

impl Default for Limits {
    fn default() -> Self {
        Limits::from_values(BOUNDS.map(|b| b.default))
    }
}

impl Limits {
    fn from_values([deadline_ms, fuel, memory_mib, output_kib, log_kib]: [u64; 5]) -> Limits {
        // Every value is within BOUNDS here, so the conversions cannot truncate.
        Limits {
            deadline: Duration::from_millis(deadline_ms),
            fuel,
            memory_bytes: memory_mib << 20,
            output_bytes: usize::try_from(output_kib << 10).unwrap_or(usize::MAX),
            log_bytes: usize::try_from(log_kib << 10).unwrap_or(usize::MAX),
        }
    }

    /// The defaults, overridden by whatever `config` sets.
    ///
    /// # Errors
    /// [`PluginError::InvalidLimit`] when a value is outside its hard bound.
    pub fn from_config(kind: PluginKind, config: &LimitsConfig) -> Result<Limits, PluginError> {
        let set = [
            config.deadline_ms,
            config.fuel,
            config.memory_mib,
            config.output_kib,
            config.log_kib,
        ];
        let mut values = [0; 5];
        for ((value, bound), configured) in values.iter_mut().zip(BOUNDS).zip(set) {
            let v = configured.unwrap_or(bound.default);
            if !(bound.min..=bound.max).contains(&v) {
                return Err(PluginError::InvalidLimit {
                    kind,
                    key: bound.key,
                    value: v,
                    min: bound.min,
                    max: bound.max,
                });
            }
            *value = v;
        }
        Ok(Limits::from_values(values))
    }

    /// The memory cap in whole MiB, for messages.
    pub fn memory_mib(&self) -> u64 {
        self.memory_bytes >> 20
    }

    /// The deadline in milliseconds, for messages.
    pub fn deadline_ms(&self) -> u64 {
        u64::try_from(self.deadline.as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let l = Limits::default();
        assert_eq!(l.deadline, Duration::from_millis(100));
        assert_eq!(l.memory_bytes, 32 << 20);
        assert_eq!(l.output_bytes, 64 << 10);
        assert_eq!(l.fuel, DEFAULT_FUEL);
        assert_eq!(
            Limits::from_config(PluginKind::DeployGate, &LimitsConfig::default()).unwrap(),
            l
        );
    }

    #[test]
    fn config_overrides_within_bounds() {
        let config = LimitsConfig {
            deadline_ms: Some(20),
            memory_mib: Some(4),
            ..LimitsConfig::default()
        };
        let l = Limits::from_config(PluginKind::HealthPolicy, &config).unwrap();
        assert_eq!(l.deadline, Duration::from_millis(20));
        assert_eq!(l.memory_mib(), 4);
    }

    #[test]
    fn out_of_bounds_names_the_key_and_range() {
        let config = LimitsConfig {
            deadline_ms: Some(1_000_000),
            ..LimitsConfig::default()
        };
        let err = Limits::from_config(PluginKind::HealthPolicy, &config)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "[plugins.health-policy.limits] deadline_ms = 1000000: expected 1 to 10000"
        );
    }
}

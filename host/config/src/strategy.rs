//! How traffic moves to the new colour: `[strategy]` in `cutover.toml`.
//!
//! `blue-green` (the default) switches all traffic at once after the target is
//! healthy. `canary` walks a list of steps: a weight gives the target that share of the
//! traffic (nginx weighted upstreams), a pause waits and then asks the analysis plugin
//! whether to go on. The last weight step must be `100%`: that is the switch, after
//! which the old colour drains and retires as in blue/green.
//!
//! This module only reads and checks the section; the deploy flow walks the steps.

use std::fmt;

use serde::Deserialize;

use crate::duration::Duration;

/// `[strategy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyConfig {
    /// `blue-green` or `canary`.
    #[serde(default)]
    pub kind: StrategyKind,
    /// The canary's steps, e.g. `["5%", "pause 30s", "25%", "pause 60s", "100%"]`.
    #[serde(default)]
    pub steps: Vec<CanaryStep>,
    /// `"manual"`: every pause waits for `cutover promote` instead of a timer (the
    /// analysis plugin is still asked, and can still abort).
    #[serde(default)]
    pub pause: PauseMode,
    /// The longest a step may wait for the analysis plugin to stop holding; after it
    /// the canary aborts (a hold is "not sure yet", never "go on anyway").
    #[serde(default = "default_step_deadline")]
    pub step_deadline: Duration,
    /// Keeps one client on one colour during the canary.
    #[serde(default)]
    pub sticky: Option<Sticky>,
}

impl Default for StrategyConfig {
    fn default() -> Self {
        StrategyConfig {
            kind: StrategyKind::default(),
            steps: Vec::new(),
            pause: PauseMode::default(),
            step_deadline: default_step_deadline(),
            sticky: None,
        }
    }
}

pub(crate) fn default_step_deadline() -> Duration {
    Duration(std::time::Duration::from_secs(300))
}

/// How traffic moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// All traffic at once.
    #[default]
    BlueGreen,
    /// Weighted steps judged by the analysis plugin.
    Canary,
}

/// What a pause waits for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PauseMode {
    /// The pause's own duration.
    #[default]
    Timed,
    /// `cutover promote` from another shell.
    Manual,
}

/// The key that pins a client to a colour: nginx hashes it with `split_clients`, so
/// the same key lands on the same colour for the whole canary.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Sticky {
    /// A cookie's value (`$cookie_<name>`).
    Cookie(String),
    /// A request header's value (`$http_<name>`).
    Header(String),
}

impl Sticky {
    /// The nginx variable that holds the key.
    pub fn nginx_variable(&self) -> String {
        match self {
            Sticky::Cookie(name) => format!("$cookie_{name}"),
            Sticky::Header(name) => {
                format!("$http_{}", name.to_ascii_lowercase().replace('-', "_"))
            }
        }
    }

    /// The name can become the nginx variable [`Sticky::nginx_variable`] gives: a
    /// cookie's name as it is (nginx ends a variable name at anything but a letter,
    /// digit or `_`, so `$cookie_my-session` would read `$cookie_my`, and the config
    /// would fail only mid-deploy), a header's with `-` turned into `_`. Returns the
    /// key (`cookie` or `header`) and the message.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let (key, name, allowed, extra): (_, _, &str, &[u8]) = match self {
            Sticky::Cookie(name) => ("cookie", name, "letters, digits and `_`", b"_"),
            Sticky::Header(name) => ("header", name, "letters, digits, `_` and `-`", b"_-"),
        };
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
        if ok {
            return Ok(());
        }
        let hint = match self {
            Sticky::Cookie(_) => {
                " (nginx reads it as `$cookie_<name>`, a variable whose name ends at any other character); a cookie whose name has `-` cannot be read by nginx: rename it, or key on a header"
            }
            Sticky::Header(_) => "",
        };
        Err((
            key,
            format!("expected a {key} name of 1 to 64 {allowed}{hint}, found {name:?}"),
        ))
    }
}

/// One step of a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryStep {
    /// Send this percentage (1..=100) of the traffic to the target.
    Weight(u8),
    /// Wait this long, then ask the analysis plugin.
    Pause(std::time::Duration),
}

impl fmt::Display for CanaryStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CanaryStep::Weight(w) => write!(f, "{w}%"),
            CanaryStep::Pause(d) => write!(f, "pause {}", humantime::format_duration(*d)),
        }
    }
}

impl std::str::FromStr for CanaryStep {
    type Err = String;

    fn from_str(text: &str) -> Result<CanaryStep, String> {
        let expected = "expected a weight such as \"5%\" or a pause such as \"pause 30s\"";
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            return match percent.trim().parse::<u8>() {
                Ok(w @ 1..=100) => Ok(CanaryStep::Weight(w)),
                _ => Err(format!(
                    "{expected}; a weight is a whole percentage from 1% to 100%, found {text:?}"
                )),
            };
        }
        if let Some(duration) = text.strip_prefix("pause") {
            return humantime::parse_duration(duration.trim())
                .map(CanaryStep::Pause)
                .map_err(|e| format!("{expected}; found {text:?} ({e})"));
        }
        Err(format!("{expected}, found {text:?}"))
    }
}

impl<'de> Deserialize<'de> for CanaryStep {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl StrategyConfig {
    /// Checks what serde cannot: a canary's steps make sense as a whole. Returns the
    /// key and the message for the config's `Invalid` error.
    pub fn check(&self) -> Result<(), (String, String)> {
        let err = |key: &str, message: String| Err((format!("strategy.{key}"), message));
        if let Some(sticky) = &self.sticky {
            sticky
                .check()
                .map_err(|(key, message)| (format!("strategy.sticky.{key}"), message))?;
        }
        if self.kind == StrategyKind::BlueGreen {
            if !self.steps.is_empty() || self.sticky.is_some() || self.pause == PauseMode::Manual {
                return err(
                    "kind",
                    "`steps`, `sticky` and `pause` only apply to `kind = \"canary\"`; set it, or remove them".into(),
                );
            }
            return Ok(());
        }
        let weights: Vec<u8> = self.weights().collect();
        if weights.is_empty() {
            return err(
                "steps",
                "a canary needs steps, e.g. [\"5%\", \"pause 30s\", \"25%\", \"pause 60s\", \"100%\"]".into(),
            );
        }
        if weights.last() != Some(&100)
            || !matches!(self.steps.last(), Some(CanaryStep::Weight(100)))
        {
            return err(
                "steps",
                "the last step must be \"100%\" (the switch to the new colour)".into(),
            );
        }
        if weights.windows(2).any(|w| w[1] <= w[0]) {
            return err(
                "steps",
                format!("weights must grow from step to step, found {weights:?}"),
            );
        }
        Ok(())
    }

    /// The weight steps, in order.
    pub fn weights(&self) -> impl Iterator<Item = u8> + '_ {
        self.steps.iter().filter_map(|s| match s {
            CanaryStep::Weight(w) => Some(*w),
            CanaryStep::Pause(_) => None,
        })
    }
}

use crate::{Config, ConfigError, ProxyMode};

impl Config {
    /// `engine.host` has a scheme cutover can reach, and `engine.tls` goes with `tcp://`.
    pub(crate) fn check_strategy(&self) -> Result<(), ConfigError> {
        self.strategy
            .check()
            .map_err(|(key, message)| self.invalid(&key, message))?;
        let canary = self.strategy.kind == crate::strategy::StrategyKind::Canary;
        if canary && self.proxy.mode == ProxyMode::External && self.proxy.access_log.is_none() {
            return Err(self.invalid(
                "proxy.access_log",
                "a canary judges each colour by its traffic: point `access_log` at nginx's access log written with cutover's `log_format cutover_json` (see the README)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StrategyConfig, String> {
        let config: StrategyConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check().map_err(|(k, m)| format!("{k}: {m}"))?;
        Ok(config)
    }

    #[test]
    fn blue_green_is_the_default() {
        let config = parse("").unwrap();
        assert_eq!(config.kind, StrategyKind::BlueGreen);
        assert!(config.steps.is_empty());
    }

    #[test]
    fn canary_steps_read_weights_and_pauses() {
        let config = parse(
            r#"kind = "canary"
               steps = ["5%", "pause 30s", "25%", "pause 1m", "100%"]
               sticky = { cookie = "session" }"#,
        )
        .unwrap();
        assert_eq!(
            config.steps,
            vec![
                CanaryStep::Weight(5),
                CanaryStep::Pause(std::time::Duration::from_secs(30)),
                CanaryStep::Weight(25),
                CanaryStep::Pause(std::time::Duration::from_secs(60)),
                CanaryStep::Weight(100),
            ]
        );
        assert_eq!(config.sticky.unwrap().nginx_variable(), "$cookie_session");
        let header = Sticky::Header("X-User-Id".into());
        assert_eq!(header.nginx_variable(), "$http_x_user_id");
    }

    #[test]
    fn bad_steps_say_what_was_expected() {
        let e = parse(
            r#"kind = "canary"
                         steps = ["5", "100%"]"#,
        )
        .unwrap_err();
        assert!(e.contains("\"5%\"") && e.contains("found \"5\""), "{e}");
        let e = parse(
            r#"kind = "canary"
                         steps = ["150%"]"#,
        )
        .unwrap_err();
        assert!(e.contains("1% to 100%"), "{e}");
        let e = parse(
            r#"kind = "canary"
                         steps = ["5%", "pause 30s"]"#,
        )
        .unwrap_err();
        assert!(
            e.contains("strategy.steps") && e.contains("\"100%\""),
            "{e}"
        );
        let e = parse(
            r#"kind = "canary"
                         steps = ["50%", "10%", "100%"]"#,
        )
        .unwrap_err();
        assert!(e.contains("grow"), "{e}");
        let e = parse(r#"kind = "canary""#).unwrap_err();
        assert!(e.contains("needs steps"), "{e}");
        let e = parse(r#"steps = ["100%"]"#).unwrap_err();
        assert!(e.contains("strategy.kind") && e.contains("canary"), "{e}");
        let e = parse(
            r#"kind = "canary"
                         steps = ["100%"]
                         sticky = { cookie = "a;b" }"#,
        )
        .unwrap_err();
        assert!(e.contains("strategy.sticky"), "{e}");
    }
}

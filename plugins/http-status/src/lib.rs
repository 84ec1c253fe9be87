//! `builtin:http-status`, the default `health-policy` plugin: healthy after N
//! consecutive successful probes, where success is a status in a configured set and,
//! optionally, a body assertion.
//!
//! # Config
//! ```toml
//! [plugins.health-policy]
//! source = "builtin:http-status"
//! # Spring Boot's /actuator/health answers {"status":"UP"} when ready.
//! config = { successes = 2, statuses = ["200-299"], json_pointer = "/status", equals = "UP" }
//! ```
//! - `successes` (1..=32, default 1): consecutive successful probes needed.
//! - `statuses` (list, default `["200-399"]`): the statuses that count as success,
//!   each a code (`204` or `"204"`) or an inclusive range (`"200-299"`).
//! - `body_contains` (string, optional): the body prefix (the first 4 KiB) must
//!   contain it.
//! - `json_pointer` and `equals` (optional, together): the body must be JSON whose
//!   value at the [RFC 6901](https://www.rfc-editor.org/rfc/rfc6901) pointer equals
//!   `equals` (any JSON value).
//!
//! A failed probe is "not yet", never "failed": giving up is the host's deadline
//! (`[health].deadline`), so a slow start is not mistaken for a broken one.

#![deny(unsafe_code)]

use std::fmt::Write as _;

use cutover_plugin::{HealthInput, HealthPolicy, HealthVerdict, ProbeResult};
use serde::Deserialize;
use serde_json::Value;

/// The most consecutive successes one can ask for: the host passes the last 32
/// earlier probes, plus the current one.
const MAX_SUCCESSES: u32 = 32;

/// The plugin's config document, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    successes: Option<u32>,
    statuses: Option<Vec<StatusSpec>>,
    body_contains: Option<String>,
    json_pointer: Option<String>,
    equals: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StatusSpec {
    Code(u16),
    Text(String),
}

/// A checked config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    /// Consecutive successes needed.
    pub successes: u32,
    /// Inclusive status ranges that count as success.
    pub statuses: Vec<(u16, u16)>,
    /// A substring the body prefix must contain.
    pub body_contains: Option<String>,
    /// A JSON pointer and the value it must point at.
    pub json: Option<(String, Value)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            successes: 1,
            statuses: vec![(200, 399)],
            body_contains: None,
            json: None,
        }
    }
}

fn parse_status(spec: &StatusSpec) -> Result<(u16, u16), String> {
    let range = match spec {
        StatusSpec::Code(code) => (*code, *code),
        StatusSpec::Text(text) => {
            let parse = |s: &str| {
                s.trim().parse::<u16>().map_err(|_| {
                    format!(
                        "`statuses`: {text:?} is not a status code or a range such as \"200-399\""
                    )
                })
            };
            match text.split_once('-') {
                Some((lo, hi)) => (parse(lo)?, parse(hi)?),
                None => {
                    let code = parse(text)?;
                    (code, code)
                }
            }
        }
    };
    if !(100..=599).contains(&range.0) || !(100..=599).contains(&range.1) || range.0 > range.1 {
        return Err(format!(
            "`statuses`: {}-{} is not a range of HTTP statuses (100 to 599, low to high)",
            range.0, range.1
        ));
    }
    Ok(range)
}

impl cutover_plugin::Config for Config {}

/// The checks serde's types cannot express; each message names the key.
impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Config, String> {
        let mut config = Config::default();
        if let Some(n) = raw.successes {
            if !(1..=MAX_SUCCESSES).contains(&n) {
                return Err(format!("`successes` is {n}; expected 1 to {MAX_SUCCESSES}"));
            }
            config.successes = n;
        }
        if let Some(specs) = raw.statuses {
            if specs.is_empty() {
                return Err(
                    "`statuses` is empty, so no probe could ever succeed; leave it out for 200-399"
                        .to_owned(),
                );
            }
            config.statuses = specs.iter().map(parse_status).collect::<Result<_, _>>()?;
        }
        if let Some(needle) = raw.body_contains {
            if needle.is_empty() {
                return Err("`body_contains` is empty".to_owned());
            }
            config.body_contains = Some(needle);
        }
        config.json = match (raw.json_pointer, raw.equals) {
            (None, None) => None,
            (Some(pointer), Some(value)) => {
                if !(pointer.is_empty() || pointer.starts_with('/')) {
                    return Err(format!(
                        "`json_pointer` {pointer:?} must start with `/`, e.g. \"/status\""
                    ));
                }
                Some((pointer, value))
            }
            (Some(_), None) => {
                return Err(
                    "`json_pointer` needs `equals`, the value it must point at (e.g. \"UP\")"
                        .to_owned(),
                );
            }
            (None, Some(_)) => {
                return Err("`equals` needs `json_pointer`, e.g. \"/status\"".to_owned());
            }
        };
        Ok(config)
    }
}

fn ranges_text(ranges: &[(u16, u16)]) -> String {
    let mut text = String::new();
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        if lo == hi {
            let _ = write!(text, "{lo}");
        } else {
            let _ = write!(text, "{lo}-{hi}");
        }
    }
    text
}

/// Why one probe does not count as a success; `None` when it does.
pub fn failure(config: &Config, probe: &ProbeResult) -> Option<String> {
    let Some(status) = probe.status else {
        let error = probe.error.as_deref().unwrap_or("no response");
        return Some(format!("no response: {error}"));
    };
    if !config
        .statuses
        .iter()
        .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    {
        return Some(format!(
            "status {status} is not in {}",
            ranges_text(&config.statuses)
        ));
    }
    if let Some(needle) = &config.body_contains
        && !probe.body_prefix.contains(needle.as_str())
    {
        return Some(format!("the body does not contain {needle:?}"));
    }
    if let Some((pointer, expected)) = &config.json {
        let body: Value = match serde_json::from_str(&probe.body_prefix) {
            Ok(body) => body,
            Err(e) => return Some(format!("the body is not JSON ({e})")),
        };
        match body.pointer(pointer) {
            Some(found) if found == expected => {}
            Some(found) => return Some(format!("{pointer} is {found}, expected {expected}")),
            None => return Some(format!("the body has no {pointer}")),
        }
    }
    None
}

/// Judges the current probe given the earlier ones.
pub fn evaluate(config: &Config, input: &HealthInput) -> HealthVerdict {
    if let Some(why) = failure(config, &input.probe) {
        return HealthVerdict::NotYet(why);
    }
    let earlier = input
        .history
        .iter()
        .rev()
        .take_while(|p| failure(config, p).is_none())
        .count();
    let streak = u32::try_from(earlier).unwrap_or(u32::MAX).saturating_add(1);
    if streak >= config.successes {
        HealthVerdict::Healthy
    } else {
        HealthVerdict::NotYet(format!(
            "{streak} of {} consecutive successful probes",
            config.successes
        ))
    }
}

struct HttpStatus;

impl HealthPolicy for HttpStatus {
    type Config = Config;

    fn evaluate(config: &Config, input: HealthInput) -> HealthVerdict {
        evaluate(config, &input)
    }
}

cutover_plugin::export_health_policy!(HttpStatus);

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_plugin::Color;

    fn parse_config(json: &str) -> Result<Config, String> {
        cutover_plugin::parse_config(json)
    }

    fn probe(status: Option<u16>, body: &str) -> ProbeResult {
        ProbeResult {
            status,
            headers: Vec::new(),
            body_prefix: body.to_owned(),
            latency_us: 1_000,
            error: status.is_none().then(|| "connection refused".to_owned()),
        }
    }

    fn input(current: ProbeResult, history: Vec<ProbeResult>) -> HealthInput {
        HealthInput {
            service: "app".to_owned(),
            color: Color::Blue,
            instance: cutover_plugin::Instance {
                id: "app-blue".to_owned(),
                node: None,
                address: "127.0.0.1".to_owned(),
                port: 8080,
            },
            attempt: u32::try_from(history.len()).unwrap() + 1,
            elapsed_ms: 100,
            probe: current,
            history,
        }
    }

    fn verdict(config: &str, current: ProbeResult, history: Vec<ProbeResult>) -> HealthVerdict {
        evaluate(&parse_config(config).unwrap(), &input(current, history))
    }

    #[test]
    fn default_is_one_success_in_200_to_399() {
        assert_eq!(
            verdict("{}", probe(Some(200), ""), vec![]),
            HealthVerdict::Healthy
        );
        assert_eq!(
            verdict("{}", probe(Some(302), ""), vec![]),
            HealthVerdict::Healthy
        );
        assert_eq!(
            verdict("{}", probe(Some(503), ""), vec![]),
            HealthVerdict::NotYet("status 503 is not in 200-399".to_owned())
        );
        assert_eq!(
            verdict("{}", probe(None, ""), vec![]),
            HealthVerdict::NotYet("no response: connection refused".to_owned())
        );
    }

    #[test]
    fn consecutive_successes_are_counted_from_the_end() {
        let c = r#"{"successes":3}"#;
        let ok = || probe(Some(200), "");
        let bad = || probe(Some(500), "");
        assert_eq!(
            verdict(c, ok(), vec![ok(), bad(), ok()]),
            HealthVerdict::NotYet("2 of 3 consecutive successful probes".to_owned())
        );
        assert_eq!(
            verdict(c, ok(), vec![bad(), ok(), ok()]),
            HealthVerdict::Healthy
        );
    }

    #[test]
    fn statuses_accept_codes_and_ranges() {
        let c = r#"{"statuses":[204, "200", "300-302"]}"#;
        assert_eq!(
            verdict(c, probe(Some(204), ""), vec![]),
            HealthVerdict::Healthy
        );
        assert_eq!(
            verdict(c, probe(Some(301), ""), vec![]),
            HealthVerdict::Healthy
        );
        assert_eq!(
            verdict(c, probe(Some(201), ""), vec![]),
            HealthVerdict::NotYet("status 201 is not in 204, 200, 300-302".to_owned())
        );
    }

    #[test]
    fn body_substring() {
        let c = r#"{"body_contains":"ready"}"#;
        assert_eq!(
            verdict(c, probe(Some(200), "all ready"), vec![]),
            HealthVerdict::Healthy
        );
        assert!(
            matches!(verdict(c, probe(Some(200), "starting"), vec![]), HealthVerdict::NotYet(r) if r.contains("\"ready\""))
        );
    }

    #[test]
    fn spring_boot_actuator_status_up() {
        let c = r#"{"json_pointer":"/status","equals":"UP"}"#;
        assert_eq!(
            verdict(
                c,
                probe(Some(200), r#"{"status":"UP","groups":["liveness"]}"#),
                vec![]
            ),
            HealthVerdict::Healthy
        );
        assert_eq!(
            verdict(c, probe(Some(200), r#"{"status":"DOWN"}"#), vec![]),
            HealthVerdict::NotYet(r#"/status is "DOWN", expected "UP""#.to_owned())
        );
        assert!(
            matches!(verdict(c, probe(Some(200), "<html>"), vec![]), HealthVerdict::NotYet(r) if r.contains("not JSON"))
        );
        assert_eq!(
            verdict(c, probe(Some(200), "{}"), vec![]),
            HealthVerdict::NotYet("the body has no /status".to_owned())
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        for (config, expected) in [
            (r#"{"successes":0}"#, "`successes` is 0"),
            (r#"{"successes":40}"#, "expected 1 to 32"),
            (r#"{"statuses":[]}"#, "`statuses` is empty"),
            (r#"{"statuses":["2xx"]}"#, "\"2xx\" is not a status code"),
            (r#"{"statuses":["399-200"]}"#, "399-200 is not a range"),
            (r#"{"statuses":[700]}"#, "700-700 is not a range"),
            (
                r#"{"json_pointer":"/status"}"#,
                "`json_pointer` needs `equals`",
            ),
            (r#"{"equals":"UP"}"#, "`equals` needs `json_pointer`"),
            (
                r#"{"json_pointer":"status","equals":"UP"}"#,
                "must start with `/`",
            ),
            (r#"{"body_contains":""}"#, "`body_contains` is empty"),
            (r#"{"sucesses":1}"#, "unknown field `sucesses`"),
        ] {
            let err = parse_config(config).unwrap_err();
            assert!(err.contains(expected), "{config}: {err}");
            // The JSON is the host's rendering of TOML: no line and column into it.
            assert!(!err.contains(" at line "), "{err}");
        }
    }
}

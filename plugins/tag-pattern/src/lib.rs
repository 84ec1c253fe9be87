//! `builtin:tag-pattern`, the default `deploy-gate` plugin: allow a deploy when a tag
//! on HEAD matches a pattern, as the original script did with "a tag containing
//! `cicd`".
//!
//! # Config
//! ```toml
//! [plugins.deploy-gate]
//! source = "builtin:tag-pattern"
//! config = { pattern = "cicd" }
//! ```
//! - `pattern` (string, optional): without `*` or `?` it matches any tag that
//!   *contains* it (`"cicd"` matches `cicd-42` and `v1-cicd`); with them it is a glob
//!   that must match the *whole* tag (`*` any run of characters, `?` one character:
//!   `"release-*"`). Left out, every deploy is allowed.
//!
//! The deny reason lists the tags it saw on HEAD, so a user can tell "no tag" from
//! "wrong tag". This crate only decides; it never reads git itself (the host does).

#![deny(unsafe_code)]

use cutover_plugin::{Config as PluginConfig, DeployGate, GateDecision, GateInput};
use serde::Deserialize;

/// The longest pattern accepted: a tag pattern is a few words, and matching cost
/// grows with its length.
const MAX_PATTERN_LEN: usize = 256;

/// The plugin's config document.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The tag pattern; none allows every deploy.
    pub pattern: Option<String>,
}

impl PluginConfig for Config {
    fn validate(&self) -> Result<(), String> {
        if let Some(pattern) = &self.pattern {
            if pattern.is_empty() {
                return Err("`pattern` is empty, which would match every \
                     tag; leave `pattern` out to allow every deploy"
                    .to_owned());
            }
            if pattern.len() > MAX_PATTERN_LEN {
                return Err(format!(
                    "`pattern` is {} bytes long; keep it under {MAX_PATTERN_LEN}",
                    pattern.len()
                ));
            }
        }
        Ok(())
    }
}

/// The gate's decision for the tags on HEAD.
pub fn decide(config: &Config, tags: &[String]) -> GateDecision {
    let Some(pattern) = &config.pattern else {
        return GateDecision::Allow("no tag pattern is configured: every deploy is allowed".into());
    };
    if let Some(tag) = tags.iter().find(|tag| matches(pattern, tag)) {
        return GateDecision::Allow(format!("tag `{tag}` on HEAD matches `{pattern}`"));
    }
    let seen = if tags.is_empty() {
        "HEAD has no tags".to_owned()
    } else {
        let list: Vec<String> = tags.iter().map(|t| format!("`{t}`")).collect();
        format!("tags on HEAD: {}", list.join(", "))
    };
    GateDecision::Deny(format!(
        "no tag on HEAD matches `{pattern}` ({seen}); tag the commit (e.g. `git tag {} && git push --tags`) to deploy it",
        example_tag(pattern)
    ))
}

/// A substring test for plain patterns, a whole-tag glob for patterns with `*`/`?`.
pub fn matches(pattern: &str, tag: &str) -> bool {
    if pattern.contains(['*', '?']) {
        glob(pattern, tag)
    } else {
        tag.contains(pattern)
    }
}

/// Iterative glob with single-star backtracking: linear in practice and never
/// exponential, whatever the pattern.
fn glob(pattern: &str, text: &str) -> bool {
    // Compare chars, not bytes, so `?` consumes a whole UTF-8 character.
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// A tag that would match, for the deny message's hint.
fn example_tag(pattern: &str) -> String {
    pattern.replace('*', "1").replace('?', "x")
}

struct TagPattern;

impl DeployGate for TagPattern {
    type Config = Config;

    fn decide(config: &Config, input: GateInput) -> Result<GateDecision, String> {
        Ok(decide(config, &input.tags))
    }
}

cutover_plugin::export_deploy_gate!(TagPattern);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_config(json: &str) -> Result<Config, String> {
        cutover_plugin::parse_config(json)
    }

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn with(pattern: &str) -> Config {
        Config {
            pattern: Some(pattern.to_owned()),
        }
    }

    #[test]
    fn no_pattern_allows_everything() {
        let config = parse_config("{}").unwrap();
        assert!(matches!(decide(&config, &[]), GateDecision::Allow(_)));
    }

    #[test]
    fn substring_matches_like_the_original_script() {
        let c = with("cicd");
        assert!(
            matches!(decide(&c, &tags(&["v1", "x-cicd-7"])), GateDecision::Allow(r) if r.contains("x-cicd-7"))
        );
        assert!(matches!(decide(&c, &tags(&["v1"])), GateDecision::Deny(_)));
    }

    #[test]
    fn deny_reason_names_the_tags_seen() {
        match decide(&with("cicd"), &tags(&["v1.2", "nightly"])) {
            GateDecision::Deny(reason) => {
                assert!(reason.contains("`v1.2`, `nightly`"), "{reason}");
                assert!(reason.contains("`cicd`"), "{reason}");
            }
            other => panic!("expected a denial, got {other:?}"),
        }
        match decide(&with("cicd"), &[]) {
            GateDecision::Deny(reason) => assert!(reason.contains("HEAD has no tags"), "{reason}"),
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn glob_matches_the_whole_tag() {
        assert!(matches("release-*", "release-1.2"));
        assert!(!matches("release-*", "pre-release-1.2"));
        assert!(matches("v?.?", "v1.2"));
        assert!(!matches("v?.?", "v10.2"));
        assert!(matches("*cicd*", "a-cicd-b"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("?", "é"));
    }

    #[test]
    fn glob_is_not_exponential() {
        let text = "a".repeat(200);
        let pattern = format!("{}b", "a*".repeat(100));
        assert!(!matches(&pattern, &text));
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = parse_config(r#"{"patern":"x"}"#).unwrap_err();
        assert!(err.contains("unknown field `patern`"), "{err}");
        let err = parse_config(r#"{"pattern":""}"#).unwrap_err();
        assert!(err.contains("`pattern` is empty"), "{err}");
        let err = parse_config(r#"{"pattern":7}"#).unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
        let err = parse_config(&format!(r#"{{"pattern":"{}"}}"#, "x".repeat(300))).unwrap_err();
        assert!(err.contains("300 bytes"), "{err}");
        assert!(parse_config("not json").is_err());
    }
}

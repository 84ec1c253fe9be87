//! `builtin:alternate`, the default `target-selector` plugin: deploy to the colour that
//! is not live, so the live one keeps serving until the switch.
//!
//! # Rules, in order
//! 1. Nothing live recorded:
//!    - neither slot is running and healthy: the `first` colour (blue by default);
//!    - exactly one slot is running and healthy (a lost or reset state file, or a
//!      service that was started by hand): the *other* one, so whatever is serving
//!      keeps serving;
//!    - both are running and healthy: refuse, because either choice would replace a
//!      working container that may be taking traffic.
//! 2. A live colour recorded and its container exists (running or not): the other
//!    colour.
//! 3. A live colour recorded but its container is gone:
//!    - the other colour is running and healthy: refuse by default. Someone removed
//!      the live container, and the proxy may already send traffic to the other
//!      colour; replacing it blindly could take the service down. With
//!      `live_missing = "redeploy"` deploy into the empty live slot instead, which
//!      replaces nothing;
//!    - otherwise: deploy into the empty live slot: the service is down there
//!      already, and this replaces nothing.
//!
//! # Config
//! ```toml
//! [plugins.target-selector]
//! source = "builtin:alternate"
//! config = { first = "blue", live_missing = "refuse" }
//! ```
//! - `first` (`"blue"` | `"green"`, default `"blue"`): the colour of the first deploy.
//! - `live_missing` (`"refuse"` | `"redeploy"`, default `"refuse"`): rule 3's choice
//!   when the other colour is running and healthy.

#![deny(unsafe_code)]

use cutover_plugin::{Color, ProbeVerdict, SelectorInput, SlotStatus, TargetSelector};
use serde::Deserialize;

/// The plugin's config document.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The colour of the first deploy.
    #[serde(default)]
    pub first: First,
    /// What to do when the live container is missing and the other colour serves.
    #[serde(default)]
    pub live_missing: LiveMissing,
}

/// `first`: the colour of the first deploy.
#[derive(Debug, Default, Deserialize, PartialEq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum First {
    /// Blue first.
    #[default]
    Blue,
    /// Green first.
    Green,
}

/// `live_missing`: rule 3's choice.
#[derive(Debug, Default, Deserialize, PartialEq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum LiveMissing {
    /// Refuse and let a human look.
    #[default]
    Refuse,
    /// Deploy into the empty live slot.
    Redeploy,
}

impl cutover_plugin::Config for Config {}

fn serving(slot: Option<&SlotStatus>) -> bool {
    slot.is_some_and(|s| s.running > 0 && s.last_probe == ProbeVerdict::Healthy)
}

/// Chooses the colour to deploy to, or refuses with a reason a human should act on.
///
/// # Errors
/// The refusal reason, in the cases the crate documentation lists.
pub fn select(config: &Config, input: &SelectorInput) -> Result<Color, String> {
    let slot = |color: Color| input.slots.iter().find(|s| s.color == color);
    let Some(live) = input.live else {
        return match (serving(slot(Color::Blue)), serving(slot(Color::Green))) {
            (false, false) => Ok(match config.first {
                First::Blue => Color::Blue,
                First::Green => Color::Green,
            }),
            (true, false) => Ok(Color::Green),
            (false, true) => Ok(Color::Blue),
            (true, true) => Err(format!(
                "no live colour is recorded for `{}`, but both blue and green are running and healthy; \
                 check which one nginx sends traffic to, remove the other container, and deploy again",
                input.service
            )),
        };
    };
    let target = live.other();
    if slot(live).is_some_and(|s| s.present) {
        return Ok(target);
    }
    if serving(slot(target)) && config.live_missing == LiveMissing::Refuse {
        return Err(format!(
            "the live colour {live} of `{}` has no container, but {target} is running and healthy \
             and may be serving traffic; check `cutover status`, then deploy again (or set \
             `live_missing = \"redeploy\"` to deploy into the empty {live} slot)",
            input.service,
            live = live.name(),
            target = target.name(),
        ));
    }
    Ok(live)
}

struct Alternate;

impl TargetSelector for Alternate {
    type Config = Config;

    fn select(config: &Config, input: SelectorInput) -> Result<Color, String> {
        select(config, &input)
    }
}

cutover_plugin::export_target_selector!(Alternate);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_config(json: &str) -> Result<Config, String> {
        cutover_plugin::parse_config(json)
    }

    /// A slot: `present`, `running`, `healthy`.
    fn slot(color: Color, present: bool, running: bool, healthy: bool) -> SlotStatus {
        SlotStatus {
            color,
            present,
            desired: u32::from(running),
            running: u32::from(running),
            image: present.then(|| "app:1".to_owned()),
            image_digest: None,
            last_probe: if healthy {
                ProbeVerdict::Healthy
            } else if running {
                ProbeVerdict::Unhealthy
            } else {
                ProbeVerdict::Unknown
            },
        }
    }

    fn input(
        live: Option<Color>,
        blue: (bool, bool, bool),
        green: (bool, bool, bool),
    ) -> SelectorInput {
        SelectorInput {
            service: "app".to_owned(),
            live,
            slots: vec![
                slot(Color::Blue, blue.0, blue.1, blue.2),
                slot(Color::Green, green.0, green.1, green.2),
            ],
        }
    }

    const EMPTY: (bool, bool, bool) = (false, false, false);
    const SERVING: (bool, bool, bool) = (true, true, true);
    const STOPPED: (bool, bool, bool) = (true, false, false);

    fn pick(config: &Config, input: &SelectorInput) -> Result<&'static str, String> {
        select(config, input).map(Color::name)
    }

    #[test]
    fn first_deploy_goes_to_blue_or_the_configured_color() {
        let d = Config::default();
        assert_eq!(pick(&d, &input(None, EMPTY, EMPTY)), Ok("blue"));
        let g = parse_config(r#"{"first":"green"}"#).unwrap();
        assert_eq!(pick(&g, &input(None, EMPTY, EMPTY)), Ok("green"));
    }

    #[test]
    fn deploys_to_the_color_that_is_not_live() {
        let d = Config::default();
        assert_eq!(
            pick(&d, &input(Some(Color::Blue), SERVING, EMPTY)),
            Ok("green")
        );
        assert_eq!(
            pick(&d, &input(Some(Color::Green), SERVING, SERVING)),
            Ok("blue")
        );
        // A stopped live container still counts as present: its slot is kept.
        assert_eq!(
            pick(&d, &input(Some(Color::Blue), STOPPED, SERVING)),
            Ok("green")
        );
    }

    #[test]
    fn nothing_recorded_but_one_serving_keeps_it_serving() {
        let d = Config::default();
        assert_eq!(pick(&d, &input(None, SERVING, EMPTY)), Ok("green"));
        assert_eq!(pick(&d, &input(None, EMPTY, SERVING)), Ok("blue"));
        let err = pick(&d, &input(None, SERVING, SERVING)).unwrap_err();
        assert!(err.contains("both blue and green are running"), "{err}");
    }

    #[test]
    fn missing_live_container_with_a_serving_other_is_refused() {
        let d = Config::default();
        let err = pick(&d, &input(Some(Color::Blue), EMPTY, SERVING)).unwrap_err();
        assert!(err.contains("live colour blue"), "{err}");
        assert!(err.contains("green is running and healthy"), "{err}");
        assert!(err.contains("live_missing"), "{err}");
        let r = parse_config(r#"{"live_missing":"redeploy"}"#).unwrap();
        assert_eq!(
            pick(&r, &input(Some(Color::Blue), EMPTY, SERVING)),
            Ok("blue")
        );
    }

    #[test]
    fn missing_live_container_with_nothing_serving_reuses_the_empty_slot() {
        let d = Config::default();
        assert_eq!(
            pick(&d, &input(Some(Color::Blue), EMPTY, STOPPED)),
            Ok("blue")
        );
        assert_eq!(
            pick(&d, &input(Some(Color::Green), EMPTY, EMPTY)),
            Ok("green")
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = parse_config(r#"{"first":"red"}"#).unwrap_err();
        assert!(err.contains("unknown variant `red`"), "{err}");
        let err = parse_config(r#"{"frist":"blue"}"#).unwrap_err();
        assert!(err.contains("unknown field `frist`"), "{err}");
        assert_eq!(parse_config("{}").unwrap(), Config::default());
    }
}

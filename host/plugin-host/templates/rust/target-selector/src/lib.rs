//! A cutover `target-selector` plugin: deploy to the colour that is not live, and to
//! `first` when nothing is live yet.
//!
//! Config (`[plugins.target-selector].config`; `{}` when left out):
//! - `first` (`"blue"` or `"green"`, default `"blue"`): the first deploy's colour.

use cutover_plugin::{Color, Config, LogLevel, SelectorInput, TargetSelector, log};
use serde::Deserialize;

/// The plugin's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The colour of the first deploy: "blue" (the default) or "green".
    pub first: Option<String>,
}

impl Config for Settings {
    fn validate(&self) -> Result<(), String> {
        match self.first.as_deref() {
            None | Some("blue") | Some("green") => Ok(()),
            Some(other) => Err(format!("`first` is {other:?}; expected \"blue\" or \"green\"")),
        }
    }
}

pub struct Policy;

impl TargetSelector for Policy {
    type Config = Settings;

    fn select(config: &Settings, input: SelectorInput) -> Result<Color, String> {
        let color = match input.live {
            Some(live) => live.other(),
            None if config.first.as_deref() == Some("green") => Color::Green,
            None => Color::Blue,
        };
        log(LogLevel::Debug, &format!("live: {:?}, deploying to {}", input.live, color.name()));
        Ok(color)
    }
}

cutover_plugin::export_target_selector!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(live: Option<Color>) -> SelectorInput {
        SelectorInput { service: "app".to_owned(), live, slots: Vec::new() }
    }

    #[test]
    fn deploys_to_the_colour_that_is_not_live() {
        let config = Settings::default();
        assert_eq!(Policy::select(&config, input(Some(Color::Blue))), Ok(Color::Green));
        assert_eq!(Policy::select(&config, input(None)), Ok(Color::Blue));
        let green: Settings = cutover_plugin::parse_config(r#"{"first":"green"}"#).unwrap();
        assert_eq!(Policy::select(&green, input(None)), Ok(Color::Green));
        assert!(cutover_plugin::parse_config::<Settings>(r#"{"first":"red"}"#).is_err());
    }
}

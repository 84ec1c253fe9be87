//! A `target-selector` plugin that misbehaves in the way its config names, so the tests
//! can prove a broken selector aborts a deploy before anything starts. The config is
//! the bare mode name or `{"mode":"<name>"}`.
//!
//! Modes: `blue`, `green`, `live` (picks the colour serving traffic), `error` (returns
//! an error), `trap` (panics).

// wit-bindgen's generated glue is the only `unsafe` here.
#![allow(unsafe_code)]
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "target-selector",
    path: "../../../wit/v0.1.0",
});

/// The mode named by `config`.
fn mode(config: &str) -> &str {
    config
        .strip_prefix("{\"mode\":\"")
        .and_then(|rest| rest.strip_suffix("\"}"))
        .unwrap_or(config)
}

struct Hostile;

impl Guest for Hostile {
    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn select(config: String, input: SelectorInput) -> Result<Color, String> {
        match mode(&config) {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            "live" => input.live.ok_or_else(|| "nothing is live yet".to_owned()),
            "error" => Err("hostile selector cannot choose on purpose".to_owned()),
            "trap" => panic!("hostile selector panicked on purpose"),
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

export!(Hostile);

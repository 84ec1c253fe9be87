//! A `deploy-gate` plugin that misbehaves in the way its config names, so the tests can
//! prove a broken gate never lets a deploy run. The config is the bare mode name or
//! `{"mode":"<name>"}` (what `config = { mode = "..." }` in cutover.toml becomes).
//!
//! Modes: `allow`, `deny`, `loop` (never returns), `error` (returns an error), `trap`
//! (panics).

// wit-bindgen's generated glue is the only `unsafe` here.
#![allow(unsafe_code)]
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "deploy-gate",
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

    fn decide(config: String, _input: GateInput) -> Result<GateDecision, String> {
        match mode(&config) {
            "allow" => Ok(GateDecision::Allow("hostile gate allows".to_owned())),
            "deny" => Ok(GateDecision::Deny("hostile gate denies".to_owned())),
            "loop" => loop {
                std::hint::black_box(0);
            },
            "error" => Err("hostile gate cannot decide on purpose".to_owned()),
            "trap" => panic!("hostile gate panicked on purpose"),
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

export!(Hostile);

//! A `rollout-analysis` plugin (cutover:plugin@0.2.0) that misbehaves in the way its
//! config names, so the tests can prove the sandbox contains the new world as it
//! contains the others. The config is the bare mode name, not JSON.
//!
//! Modes: `promote`, `reject` (refuses its config), `loop`, `alloc`, `huge`,
//! `empty-reason`, `forged` (control characters in the reason), `err`, `panic`,
//! `echo` (holds with what it was given).

// wit-bindgen's generated glue is the only `unsafe` here.
#![allow(unsafe_code)]
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "rollout-analysis",
    path: "../../../wit/v0.2.0",
});

struct Hostile;

impl Guest for Hostile {
    fn validate_config(config: String) -> Result<(), String> {
        match config.as_str() {
            "reject" => Err("mode `reject` refuses every config".to_owned()),
            _ => Ok(()),
        }
    }

    fn analyze(config: String, input: AnalysisInput) -> Result<AnalysisDecision, String> {
        Ok(match config.as_str() {
            "promote" => AnalysisDecision::Promote,
            "loop" => loop {
                std::hint::black_box(0);
            },
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1; 1 << 20]));
                }
            }
            "huge" => AnalysisDecision::Abort("x".repeat(5 << 20)),
            "empty-reason" => AnalysisDecision::Hold("  ".to_owned()),
            "forged" => AnalysisDecision::Abort("forged\nline \u{1b}[31mred".to_owned()),
            "err" => return Err("cannot judge on purpose".to_owned()),
            "panic" => panic!("hostile plugin panicked on purpose"),
            "echo" => AnalysisDecision::Hold(format!(
                "step {} of {} at {}%: canary {} requests, baseline {}, {} probes",
                input.step_index,
                input.step_count,
                input.weight,
                input.canary.this_step.requests,
                input.baseline.this_step.requests,
                input.probes.len()
            )),
            other => return Err(format!("unknown mode {other:?}")),
        })
    }
}

export!(Hostile);

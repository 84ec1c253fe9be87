//! Rust bindings generated from `wit/v0.2.0` (`cutover:plugin@0.2.0`, released and
//! frozen: `tests/plugins.rs` pins its digest, as it does 0.1.0's), one module per
//! world. The worlds share the `types` and `host` interfaces, generated once (in
//! `gate`) and reused by the others through `with`, so a `GateInput` or `Color` is one
//! Rust type everywhere.
//! These types are the host's internal model: guests built against an older version
//! are adapted to them (`super::adapt`).

/// The version of the WIT package these bindings are generated from.
pub const WIT_VERSION: &str = "0.2.0";

/// The WIT package's text, for `cutover plugin wit`.
pub const WIT: &str = include_str!("../../../../wit/v0.2.0/plugin.wit");

/// The `deploy-gate` world, and the shared `types` and `host` interfaces.
pub mod gate {
    wasmtime::component::bindgen!({
        world: "deploy-gate",
        path: "../../wit/v0.2.0",
        // Callers compare decisions and verdicts (`verdict == HealthVerdict::Healthy`).
        additional_derives: [PartialEq, Eq],
    });
}

/// The `target-selector` world.
pub mod selector {
    wasmtime::component::bindgen!({
        world: "target-selector",
        path: "../../wit/v0.2.0",
        with: {
            "cutover:plugin/types": super::gate::cutover::plugin::types,
            "cutover:plugin/host": super::gate::cutover::plugin::host,
        },
    });
}

/// The `health-policy` world.
pub mod health {
    wasmtime::component::bindgen!({
        world: "health-policy",
        path: "../../wit/v0.2.0",
        with: {
            "cutover:plugin/types": super::gate::cutover::plugin::types,
            "cutover:plugin/host": super::gate::cutover::plugin::host,
        },
    });
}

/// The `proxy-template` world.
pub mod template {
    wasmtime::component::bindgen!({
        world: "proxy-template",
        path: "../../wit/v0.2.0",
        with: {
            "cutover:plugin/types": super::gate::cutover::plugin::types,
            "cutover:plugin/host": super::gate::cutover::plugin::host,
        },
    });
}

/// The `rollout-analysis` world (new in 0.2.0).
pub mod analysis {
    wasmtime::component::bindgen!({
        world: "rollout-analysis",
        path: "../../wit/v0.2.0",
        with: {
            "cutover:plugin/types": super::gate::cutover::plugin::types,
            "cutover:plugin/host": super::gate::cutover::plugin::host,
        },
    });
}

/// The records and enums of the `types` interface, shared by every world.
pub use gate::cutover::plugin::types;

//! The host's bindings to the WIT contract: one module per released version of
//! `cutover:plugin` (as Zed keeps one per released extension API), each generated
//! from its frozen `wit/v<x.y.z>/` and never edited once released. The version this
//! host implements is re-exported here; adding v0.2.0 is adding `v0_2_0.rs` beside
//! `v0_1_0.rs`.

#[allow(missing_docs)]
pub mod v0_1_0;

pub use v0_1_0::{WIT, WIT_VERSION, gate, health, selector, template, types};

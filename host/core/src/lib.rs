//! cutover-core: the blue/green state machine and the commands built on it — deploy,
//! rollback, recover, down, status, plan, init, exec — with the state file, the journal,
//! the audit log, health checks, the deploy gate, notifications and metrics.
//!
//! It owns every decision of *when* to touch the world and asks the crates below for
//! the touching: [`engine`] for containers, [`proxy`] for nginx, [`plugin`] for every
//! policy. It must not name Docker (`engine::docker`) from the state machine, and the
//! read-only views (`status`, `observe`, `plan`) must not reach anything that mutates;
//! `tests/shape.rs` checks both. The web side (serve, dashboard) and the command line
//! sit above this crate.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod app_secrets;
pub mod audit;
pub mod choose;
pub mod ci;
pub mod context;
pub mod control;
pub mod deploy;
pub mod down;
pub mod error;
pub mod exec;
pub mod fault;
pub mod gate;
pub mod git;
pub mod health;
pub mod hold;
pub mod init;
pub mod metrics;
pub mod notify;
pub mod observe;
pub mod pause;
pub mod plan;
pub mod recover;
pub mod state;
pub mod status;

// The crates below, under the names the state machine has always used for them.
pub use cutover_base::{Color, atomic_file, duration, events, lock, operation, secret};
pub use cutover_config as config;
pub use cutover_config::strategy;
pub use cutover_engine as engine;
pub use cutover_engine::docker;
pub use cutover_plugin_host as plugin;
pub use cutover_plugin_host::rendered;
pub use cutover_proxy as proxy;
pub use cutover_proxy::traffic;

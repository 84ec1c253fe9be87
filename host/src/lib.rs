//! cutover: zero-downtime blue/green deploys of a containerized service behind nginx.
//!
//! This package is the binary and its command line ([`cli`]); `main.rs` only parses
//! arguments and calls [`cli::run`]. The work is done by the crates under `host/`:
//! `cutover-core` (the state machine and its commands) over `cutover-engine` (Docker,
//! Swarm), `cutover-proxy` (nginx), `cutover-plugin-host` (wasmtime) and
//! `cutover-config`, with `cutover-web` (serve, dashboard) beside the command line and
//! `cutover-base` under all. Their modules are re-exported here under the names they
//! have always had, so tests, benches and embedders use one path: `cutover::deploy`.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;

pub use cutover_core::*;
pub use cutover_web::{access, conns, dashboard, html, serve};

//! cutover-web: cutover's HTTP side — `cutover serve` (the webhook and API server that
//! queues deploys), the dashboard and its login, and the HTML pages — all on one
//! hardened HTTP/1 connection loop ([`conns`]: header deadline, connection cap).
//!
//! It reads the core's state and starts its operations; the core never imports it.
//! It must not talk to Docker or nginx itself: everything it changes goes through a
//! core operation under the deploy lock.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod conns;
pub mod dashboard;
pub mod html;
pub mod serve;
mod sync;

// The core's modules, under the names they have in the core.
use cutover_core::{
    Color, atomic_file, audit, ci, config, context, events, git, metrics, operation, plugin,
    secret, state, status,
};

//! cutover: zero-downtime blue/green deploys of a containerized service behind nginx.
//!
//! The library owns every side effect of a deploy (Docker, HTTP probes, nginx, the
//! state file and the lock) and asks WebAssembly plugins for every policy decision.
//! `main.rs` only parses arguments and calls [`cli::run`]; everything a test needs is
//! reachable from here.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod app_secrets;
pub mod atomic_file;
pub mod audit;
pub mod ci;
pub mod cli;
pub mod config;
pub mod conns;
pub mod context;
pub mod control;
pub mod dashboard;
pub mod deploy;
pub mod docker;
pub mod down;
pub mod duration;
pub mod engine;
pub mod error;
pub mod events;
pub mod fault;
pub mod gate;
pub mod git;
pub mod health;
pub mod html;
pub mod init;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod observe;
pub mod operation;
pub mod plan;
pub mod plugin;
pub mod proxy;
pub mod recover;
pub mod rendered;
pub mod secret;
pub mod serve;
pub mod state;
pub mod status;
pub mod strategy;
pub mod traffic;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the two slots a service is deployed into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// The first slot; the first deploy of a service goes here.
    Blue,
    /// The second slot.
    Green,
}

impl Color {
    /// Both colours, blue first.
    pub const BOTH: [Color; 2] = [Color::Blue, Color::Green];

    /// The other colour.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// The lowercase name used in labels, file names and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Color {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(format!("expected `blue` or `green`, found {other:?}")),
        }
    }
}

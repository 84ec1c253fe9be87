//! cutover-base: the vocabulary every other cutover crate shares — the two colours,
//! operations and their steps, the event stream, secrets that never print, atomic
//! file writes, following a growing file of lines, the retry policy, durations as
//! written in config, the time stamps, and the lock owner record that both the
//! host's file lock and the Swarm cluster lock carry.
//!
//! It must not touch Docker, nginx, wasmtime, the config file or any deploy logic:
//! it is the bottom of the dependency graph, and everything here is plain data or a
//! local file primitive.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod atomic_file;
pub mod duration;
pub mod events;
pub mod lock;
pub mod operation;
pub mod retry;
pub mod secret;
pub mod tail;

use std::time::SystemTime;

/// The current time in RFC 3339, UTC, to the second.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

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

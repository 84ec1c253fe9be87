//! The host's bindings to the WIT contract: one module per version of
//! `cutover:plugin` (as Zed keeps one per released extension API), each generated
//! from its `wit/v<x.y.z>/` and never edited once released.
//!
//! The newest version (v0.2.0) is the host's one internal model and is re-exported
//! here; guests built against an older version run through [`adapt`], which converts
//! the model's inputs down to their version and their answers back up.

pub mod adapt;
#[allow(missing_docs)]
pub mod v0_1_0;
#[allow(missing_docs)]
pub mod v0_2_0;

pub use v0_2_0::{WIT, WIT_VERSION, analysis, gate, health, selector, template, types};

/// A version of the contract a guest can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WitVersion {
    /// `cutover:plugin@0.1.0` (released, frozen), run through [`adapt`].
    V0_1_0,
    /// `cutover:plugin@0.2.0`, the host's own.
    V0_2_0,
}

impl WitVersion {
    /// Every version this host runs, newest first.
    pub const ALL: [WitVersion; 2] = [WitVersion::V0_2_0, WitVersion::V0_1_0];

    /// `"0.1.0"`, `"0.2.0"`.
    pub fn number(self) -> &'static str {
        match self {
            WitVersion::V0_1_0 => v0_1_0::WIT_VERSION,
            WitVersion::V0_2_0 => v0_2_0::WIT_VERSION,
        }
    }

    /// The version's WIT text, for `cutover plugin wit --version`.
    pub fn wit(self) -> &'static str {
        match self {
            WitVersion::V0_1_0 => v0_1_0::WIT,
            WitVersion::V0_2_0 => v0_2_0::WIT,
        }
    }

    /// The version named `number` (`0.1.0`, `v0.2.0`), if this host runs it.
    pub fn parse(number: &str) -> Option<WitVersion> {
        let number = number.strip_prefix('v').unwrap_or(number);
        WitVersion::ALL.into_iter().find(|v| v.number() == number)
    }

    /// The version a component targets, read from the cutover interfaces it imports
    /// (every world uses `cutover:plugin/types@<version>` in its exports' types, and
    /// `host@<version>` when it logs); none when it imports no cutover interface.
    pub fn of_imports<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<WitVersion> {
        names.into_iter().find_map(|name| {
            let rest = name.strip_prefix("cutover:plugin/")?;
            let (_, number) = rest.split_once('@')?;
            WitVersion::parse(number)
        })
    }
}

impl std::fmt::Display for WitVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cutover:plugin@{}", self.number())
    }
}

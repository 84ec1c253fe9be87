//! A duration in `cutover.toml`, written as `"500ms"`, `"10s"` or `"2m"`: one type for
//! every section, so every duration key reads and fails the same way.

use std::fmt;

use serde::Deserialize;

/// A duration written as `"500ms"`, `"10s"` or `"2m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The duration as the standard type.
    pub fn get(self) -> std::time::Duration {
        self.0
    }

    /// `ms` milliseconds.
    pub fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(DurationVisitor)
    }
}

/// Reads a duration string; a bare number gets its own message, since `timeout = 10`
/// is the likeliest slip and serde's "expected a string" does not say what to write.
struct DurationVisitor;

impl DurationVisitor {
    fn number<E: serde::de::Error>(n: impl fmt::Display) -> E {
        E::custom(format!(
            "expected a duration such as \"{n}s\" or \"{n}ms\" (a string with a unit), found the number {n}"
        ))
    }
}

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"500ms\", \"10s\" or \"2m\"")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text).map(Duration).map_err(|e| {
            E::custom(format!(
                "expected a duration such as \"500ms\", \"10s\" or \"2m\", found {text:?} ({e})"
            ))
        })
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Duration, E> {
        Err(Self::number(n))
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Duration, E> {
        Err(Self::number(n))
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Duration, E> {
        Err(Self::number(n))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

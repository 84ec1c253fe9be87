//! [`Secret`]: a string (a registry password) that cannot be printed by accident.
//!
//! `Debug` and `Display` print `***`, and the type implements no `Serialize`, so a
//! secret cannot reach a log line, an error message, an event or the state file unless
//! code asks for it with [`Secret::expose`]. This module never reads the environment or
//! a file itself; callers decide where a secret comes from.

use std::fmt;

/// What a secret looks like in any output.
pub const REDACTED: &str = "***";

/// A secret string; only [`Secret::expose`] reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it (an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every occurrence of the secret replaced by [`REDACTED`]: for
    /// messages that come from elsewhere (a daemon, a registry) and might echo it.
    pub fn redact_from(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_owned()
        } else {
            text.replace(&self.0, REDACTED)
        }
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{:#?}", Some(&s)), "Some(\n    Secret(***),\n)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn redacts_echoes() {
        let s = Secret::new("pw");
        assert_eq!(s.redact_from("user:pw@host pw"), "user:***@host ***");
        assert_eq!(Secret::new("").redact_from("text"), "text");
    }
}

//! `[[hook]]`: release hooks, programs a deploy runs at a fixed point of its steps —
//! a database migration before the new colour takes traffic, a notification after.
//!
//! A hook runs either in a one-off container from the image being deployed
//! (`container`) or as a program on the runner (`local`), both as argv without a
//! shell. The schema and its checks are here; running them is the core's.

use serde::Deserialize;

use crate::{Config, ConfigError, Duration};

/// One `[[hook]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Names the hook in messages, the journal and the step list (`hook:<name>`).
    pub name: String,
    /// When it runs.
    pub when: HookWhen,
    /// argv of a one-off container from the image being deployed, with the target
    /// colour's env, secrets, volumes and network but no published port. It replaces
    /// the image's `CMD` (an `ENTRYPOINT` stays), as `docker run IMAGE argv…` would.
    #[serde(default)]
    pub container: Option<Vec<String>>,
    /// argv of a program on the runner, resolved against the config's directory when
    /// it names a relative path.
    #[serde(default)]
    pub local: Option<Vec<String>>,
    /// How long it may run before it is killed and counts as failed.
    #[serde(default = "default_hook_timeout")]
    pub timeout: Duration,
    /// What its failure does: `abort` the deploy (the default before the switch) or
    /// `warn` and go on (the only choice after the switch).
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
    /// Whether `cutover rollback` runs it too: off by default for `before-*` hooks
    /// (a down-migration is the user's decision), on for `after-switch` ones.
    #[serde(default)]
    pub on_rollback: Option<bool>,
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookWhen {
    /// After the image is ready and before the target colour starts.
    BeforeStart,
    /// After the target started and before its health check, so before any traffic
    /// moves to it (and before a canary's first step). The live colour keeps serving
    /// while it runs; the health check after it judges the release on the new schema.
    BeforeSwitch,
    /// When traffic has moved, the old colour has drained and stopped.
    AfterSwitch,
}

/// What a failed hook does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Fail the deploy, like a failed health check.
    Abort,
    /// Log a warning and go on.
    Warn,
}

/// Where a hook runs and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookRun<'a> {
    /// In a one-off container.
    Container(&'a [String]),
    /// On the runner.
    Local(&'a [String]),
}

impl HookConfig {
    /// What its failure does, with the default for its `when`.
    pub fn on_failure(&self) -> OnFailure {
        self.on_failure.unwrap_or(match self.when {
            HookWhen::AfterSwitch => OnFailure::Warn,
            _ => OnFailure::Abort,
        })
    }

    /// Whether a rollback runs it.
    pub fn on_rollback(&self) -> bool {
        self.on_rollback
            .unwrap_or(self.when == HookWhen::AfterSwitch)
    }

    /// Where it runs and its argv (the config check made sure there is exactly one).
    pub fn run(&self) -> HookRun<'_> {
        match (&self.container, &self.local) {
            (Some(argv), _) => HookRun::Container(argv),
            (None, Some(argv)) => HookRun::Local(argv),
            (None, None) => HookRun::Local(&[]),
        }
    }
}

fn default_hook_timeout() -> Duration {
    Duration::from_millis(10 * 60 * 1000)
}

impl Config {
    /// The hooks that run at `when`, in the order written.
    pub fn hooks(&self, when: HookWhen) -> impl Iterator<Item = &HookConfig> {
        self.hook.iter().filter(move |h| h.when == when)
    }

    /// Every `[[hook]]`.
    pub(crate) fn check_hooks(&self) -> Result<(), ConfigError> {
        for (i, hook) in self.hook.iter().enumerate() {
            let key = |field: &str| format!("hook[{i}].{field}");
            let name_ok = !hook.name.is_empty()
                && hook.name.len() <= 40
                && hook
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(self.invalid(
                    &key("name"),
                    "expected 1 to 40 letters, digits, `-` or `_`, e.g. \"migrate\"",
                ));
            }
            if let Some(j) = self.hook[..i].iter().position(|h| h.name == hook.name) {
                return Err(self.invalid(
                    &key("name"),
                    format!(
                        "\"{}\" is also hook[{j}]'s name; give each hook its own",
                        hook.name
                    ),
                ));
            }
            match (&hook.container, &hook.local) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(self.invalid(
                        &format!("hook[{i}]"),
                        "expected exactly one of `container = [argv…]` (a one-off container from the image) or `local = [argv…]` (a program on the runner)",
                    ));
                }
                (Some(argv), None) | (None, Some(argv))
                    if argv.is_empty() || argv[0].is_empty() =>
                {
                    let field = if hook.container.is_some() {
                        "container"
                    } else {
                        "local"
                    };
                    return Err(self.invalid(
                        &key(field),
                        "expected a program and its arguments, e.g. [\"bin/rails\", \"db:migrate\"]",
                    ));
                }
                _ => {}
            }
            if hook.timeout.get().is_zero() {
                return Err(self.invalid(
                    &key("timeout"),
                    "expected a duration above zero, e.g. \"10m\"",
                ));
            }
            if hook.when == HookWhen::AfterSwitch && hook.on_failure == Some(OnFailure::Abort) {
                return Err(self.invalid(
                    &key("on_failure"),
                    "after the switch the new colour already serves and nothing is undone: only \"warn\" is allowed; move the hook to `before-switch` to make it abort the deploy",
                ));
            }
        }
        Ok(())
    }
}

//! Test-only fault injection: with the `fault-injection` feature, the environment
//! variable `CUTOVER_FAULT=before:<step>` or `after:<step>` makes the process kill
//! itself with SIGKILL at that point, the harshest way a CI runner can die. Only
//! `before:` comes right after a journal write; see [`When`] for what is on disk; `at:<name>`
//! names a point inside a step ([`at`]); `fail:<name>` makes one operation fail ([`fails`]). Without the feature every call compiles to nothing, so a
//! released binary cannot be made to crash this way.

use crate::operation::Step;

/// Where in a step the fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// After the step is journaled (and saved) as started, before it does anything.
    Before,
    /// After the step's work succeeded, before its "finished" event is emitted. The
    /// state file still says the step started: its finish is saved only by the next
    /// step's start or the final record, so a kill here leaves the same file as a
    /// kill in the last moment of the step's work, and recovery must treat a started
    /// step as possibly done.
    After,
}

/// Kills this process when `CUTOVER_FAULT` names this point.
#[cfg(feature = "fault-injection")]
pub fn point(when: When, step: &Step) {
    kill_at(&match when {
        When::Before => format!("before:{step}"),
        When::After => format!("after:{step}"),
    });
}

/// Kills this process when `CUTOVER_FAULT` is `at:<name>`: a point inside a step,
/// where a kill leaves what no step boundary shows (e.g. `at:recorded-live`, after
/// the engine's live record was written and before the drain step is journaled).
#[cfg(feature = "fault-injection")]
pub fn at(name: &str) {
    kill_at(&format!("at:{name}"));
}

#[cfg(feature = "fault-injection")]
fn kill_at(here: &str) {
    let Ok(spec) = std::env::var("CUTOVER_FAULT") else {
        return;
    };
    if spec == here {
        eprintln!("fault injection: SIGKILL at {here}");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; never continue past the point.
        loop {
            std::thread::park();
        }
    }
}

/// Kills this process when `CUTOVER_FAULT` names this point (compiled out).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_when: When, _step: &Step) {}

/// Kills this process when `CUTOVER_FAULT` is `at:<name>` (compiled out).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn at(_name: &str) {}

/// Whether `CUTOVER_FAULT` is `fail:<name>`: the caller then fails as if its engine
/// had stopped answering (e.g. `fail:undo`, the undo of a failed deploy), so a test
/// can reach the paths that follow a failed cleanup.
#[cfg(feature = "fault-injection")]
pub fn fails(name: &str) -> bool {
    std::env::var("CUTOVER_FAULT").is_ok_and(|spec| spec == format!("fail:{name}"))
}

/// Whether `CUTOVER_FAULT` is `fail:<name>` (compiled out: never).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fails(_name: &str) -> bool {
    false
}

//! Test-only fault injection: with the `fault-injection` feature, the environment
//! variable `CUTOVER_FAULT=before:<step>` or `after:<step>` makes the process kill
//! itself with SIGKILL right after the journal records that point, the harshest way
//! a CI runner can die. Without the feature every call compiles to nothing, so a
//! released binary cannot be made to crash this way.

use crate::operation::Step;

/// Where in a step the fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// After the step is journaled as started, before it does anything.
    Before,
    /// After the step is journaled as finished.
    After,
}

/// Kills this process when `CUTOVER_FAULT` names this point.
#[cfg(feature = "fault-injection")]
pub fn point(when: When, step: Step) {
    let Ok(spec) = std::env::var("CUTOVER_FAULT") else {
        return;
    };
    let here = match when {
        When::Before => format!("before:{step}"),
        When::After => format!("after:{step}"),
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
pub fn point(_when: When, _step: Step) {}

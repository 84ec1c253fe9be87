//! The command line: argument parsing and the mapping from outcomes to exit codes.

use std::process::ExitCode;

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}

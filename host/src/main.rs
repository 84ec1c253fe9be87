//! The `cutover` binary: parse arguments, run, exit with the documented code.

fn main() -> std::process::ExitCode {
    cutover::cli::main()
}

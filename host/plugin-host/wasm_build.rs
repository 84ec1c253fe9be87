//! Builds guest crates of this workspace for `wasm32-wasip2` with a nested `cargo build`.
//!
//! Shared by `host/build.rs` (the built-in plugins) and the test suite (hostile guests
//! and the example plugin), which include this file with `#[path]`. It only runs
//! cargo; it never decides which crates to build. The nested build gets its own
//! target directory so it never waits on the lock of the cargo that invoked it, and
//! a cleaned environment so the outer build's flags (coverage, clippy's wrapper, a
//! profile override) do not leak into a build for another target.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target every cutover plugin is built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Environment variables the invoking cargo sets for its own build (or a user sets
/// for theirs) that would change or break the nested build.
fn leaks_into_nested_build(key: &str) -> bool {
    // Settings about where and how to fetch crates are the user's and must be kept,
    // or an offline or proxied machine could not build.
    const KEEP: [&str; 6] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
    ];
    if key.starts_with("CARGO") {
        return !KEEP.iter().any(|keep| key.starts_with(keep));
    }
    matches!(
        key,
        "RUSTFLAGS"
            | "RUSTDOCFLAGS"
            | "RUSTC_WRAPPER"
            | "RUSTC_WORKSPACE_WRAPPER"
            | "MAKEFLAGS"
            | "MFLAGS"
    )
}

/// Fails with the fix when the standard library for [`WASM_TARGET`] is missing.
fn check_target_installed(rustc: &str) -> Result<(), String> {
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run `{rustc} --print sysroot`: {e}"))?;
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let std_dir = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .join("lib");
    if output.status.success() && std_dir.is_dir() {
        Ok(())
    } else {
        Err(format!(
            "the Rust target {WASM_TARGET} is not installed (no {}); cutover's plugins are built for it. \
             Run `rustup target add {WASM_TARGET}` and build again.",
            std_dir.display()
        ))
    }
}

/// Builds `packages` of the workspace at `workspace` with cargo profile `profile` into
/// `target_dir`, and returns the directory holding the `.wasm` files (named after the
/// crates, `-` replaced by `_`).
///
/// # Errors
/// A message saying what to do when the target is not installed or cargo fails; cargo's
/// own diagnostics go to this process's stderr.
pub fn build(
    workspace: &Path,
    packages: &[&str],
    profile: &str,
    target_dir: &Path,
) -> Result<PathBuf, String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    check_target_installed(&rustc)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(&cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args(["--target", WASM_TARGET, "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str()
            && leaks_into_nested_build(key)
        {
            command.env_remove(key);
        }
    }
    // A build script's stdout is read by cargo as directives: keep it clean.
    command.stdout(Stdio::from(std::io::stderr()));
    let status = command
        .status()
        .map_err(|e| format!("cannot run `{cargo} build` for {WASM_TARGET}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --target {WASM_TARGET} --profile {profile}` of {} failed ({status}); \
             see cargo's messages above",
            packages.join(", ")
        ));
    }
    Ok(target_dir.join(WASM_TARGET).join(profile))
}

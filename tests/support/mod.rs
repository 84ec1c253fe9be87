//! Helpers shared by the end-to-end tests: the hello app and its image context, HTTP
//! requests to it, Docker clean-up guards, a throwaway registry, unique names and free
//! ports.
//!
//! Helpers never skip a test: a missing tool fails it with the package to install.

// Each test module uses a different subset of these helpers.
#![allow(dead_code, unused_imports)]

pub mod docker;
pub mod docker_link;
pub mod git;
pub mod guests;
pub mod hello;
pub mod load;
pub mod nginx;
pub mod remote;
pub mod service;
pub mod swarm;

pub use docker::{DockerCleanup, TestRegistry, free_port, unique_service};
pub use hello::{
    HttpResponse, build_hello_image, hello_context, http_get, http_request, wait_for_http,
};

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the directory holding the top `Cargo.toml`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent directory")
}

/// Panics with the Debian package to install when `program` is not on `PATH`.
pub fn require_tool(program: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => path,
        None => panic!(
            "this test needs `{program}`, which is not on PATH; install it with `apt-get install -y {package}`"
        ),
    }
}

/// Runs `cmd` and returns its stdout; panics with its stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !output.status.success() {
        panic!(
            "{cmd:?} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

//! The test guests: plugin crates that misbehave on purpose (`tests/guests/*`) and the
//! example plugin (`examples/plugins/latency-p95`), built once per test process for
//! wasm32-wasip2 into `target/test-guests`, a target directory of their own, so the
//! build never waits on the lock of the cargo running the tests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[path = "../../host/plugin-host/wasm_build.rs"]
mod wasm_build;

/// Every guest crate the tests load.
const GUESTS: [&str; 6] = [
    "hostile-health",
    "hostile-analysis",
    "hostile-template",
    "hostile-gate",
    "hostile-selector",
    "latency-p95",
];

/// The directory holding the guests' `.wasm` files (named after the crates, `-`
/// replaced by `_`), built on first use.
pub fn guests() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = super::workspace_root();
        wasm_build::build(
            root,
            &GUESTS,
            "plugin",
            &root.join("target").join("test-guests"),
        )
    })
    .as_deref()
    .unwrap_or_else(|e| panic!("building the test guests failed: {e}"))
}

/// The bytes of guest `name` (e.g. `hostile_health`).
pub fn guest(name: &str) -> Vec<u8> {
    let path = guests().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `[plugins.<kind>]` table loading guest `name` by path, pinned to its digest, with
/// `mode` as its config (`config = { mode = "..." }`).
pub fn plugin_table(kind: &str, name: &str, mode: &str) -> String {
    let path = guests().join(format!("{name}.wasm"));
    let digest = cutover::plugin::sha256_hex(&guest(name));
    format!(
        "\n[plugins.{kind}]\nsource = {:?}\nsha256 = \"{digest}\"\nconfig = {{ mode = {mode:?} }}\n",
        path.display().to_string()
    )
}

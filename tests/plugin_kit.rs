//! The plugin authoring kit, walked through the way the README tells a new user:
//! `cutover plugin new` → `cargo test` → build → `plugin run` on the sample input →
//! `plugin check` → `plugin sha256`, for every kind in Rust and for a Python deploy
//! gate, which then decides a real deploy.
//!
//! Each Rust project is built after it is moved away from where `plugin new` wrote
//! it, and `cargo metadata` must find no local package outside it: it carries its
//! copy of the SDK and names no path on the machine that made it. The projects share
//! one target directory (`target/plugin-kit`), so serde and wit-bindgen compile once
//! per profile (each project's SDK copy is its own package). Python needs componentize-py, which `.ci/run`
//! installs into `target/componentize-py`; without it the test fails saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use cutover::plugin::PluginKind;
use cutover::plugin::scaffold::{COMPONENTIZE_PY_VERSION, Lang, wasm_path};

use crate::support::service::Service;

fn root() -> &'static Path {
    crate::support::workspace_root()
}

/// Runs the built `cutover` in `dir` (as a user in their project does).
fn cutover(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .current_dir(dir)
        .env(
            "CUTOVER_CACHE_DIR",
            crate::support::service::plugin_cache_dir(),
        )
        .env_remove(cutover::cli::PARSE_ONLY_ENV)
        .output()
        .expect("run the cutover binary");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`cutover {}` in {} failed: {output:?}",
        args.join(" "),
        dir.display()
    );
    stdout
}

/// `program args` in `dir` with the environment a user has, not the one cargo set
/// for this test (its `CARGO_*`, `RUSTFLAGS` would change the nested build).
fn run(dir: &Path, program: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut command = Command::new(program);
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str()
            && ((key.starts_with("CARGO") && !key.starts_with("CARGO_HOME"))
                || key.starts_with("RUSTC")
                || key == "RUSTFLAGS")
        {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "`{program} {}` in {} failed:\n{}\n{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What each kind's generated decision answers on `plugin sample`'s input.
fn expected_answer(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::DeployGate => {
            "answer:  decide -> allow: no pattern is configured: every deploy is allowed"
        }
        PluginKind::TargetSelector => "answer:  select -> green",
        PluginKind::HealthPolicy => "answer:  evaluate -> healthy",
        PluginKind::ProxyTemplate => {
            "answer:  render -> 1 file(s)\n  service-url.inc:\n    set $service_url http://127.0.0.1:18082;"
        }
        PluginKind::RolloutAnalysis => "answer:  analyze -> promote",
    }
}

/// `plugin run`, `plugin check` (both with `limits`, flags as the README gives them)
/// and `plugin sha256` on a built plugin; its digest.
fn run_check_and_pin(dir: &Path, kind: PluginKind, wasm: &Path, limits: &[&str]) -> String {
    let file = wasm.to_str().expect("UTF-8 path");
    fn with<'a>(args: &[&'a str], limits: &[&'a str]) -> Vec<&'a str> {
        [args, limits].concat()
    }
    let ran = cutover(
        dir,
        &with(&["plugin", "run", file, "--input", "sample.json"], limits),
    );
    assert!(ran.contains(expected_answer(kind)), "{kind}:\n{ran}");
    let checked = cutover(dir, &with(&["plugin", "check", file], limits));
    assert!(
        checked.contains(&format!("kind:    {kind}")),
        "{kind}:\n{checked}"
    );
    let sha = cutover(dir, &["plugin", "sha256", file]);
    let digest = sha.split_whitespace().next().unwrap_or_default().to_owned();
    assert!(
        checked.contains(&format!("sha256 = \"{digest}\"")),
        "{checked}"
    );
    digest
}

/// Every local package the project at `dir` builds (`cargo metadata`) lies inside it:
/// it carries its SDK and names no path on the machine that made it.
fn assert_self_contained(dir: &Path, env: &[(&str, &Path)]) {
    let metadata = run(
        dir,
        "cargo",
        &["metadata", "--format-version", "1", "--offline", "--quiet"],
        env,
    );
    let metadata: serde_json::Value = serde_json::from_str(&metadata).unwrap();
    let dir = dir.canonicalize().unwrap();
    let mut local = 0;
    for package in metadata["packages"].as_array().unwrap() {
        if package["source"].is_null() {
            let manifest = Path::new(package["manifest_path"].as_str().unwrap());
            assert!(
                manifest.starts_with(&dir),
                "{} is outside {}",
                manifest.display(),
                dir.display()
            );
            local += 1;
        }
    }
    // The plugin and its copy of the SDK.
    assert_eq!(local, 2, "{metadata}");
}

#[test]
fn plugin_new_in_rust_builds_tests_runs_checks_and_pins_for_every_kind() {
    let projects = tempfile::tempdir().unwrap();
    let target = root().join("target").join("plugin-kit");
    for kind in PluginKind::ALL {
        let name = format!("my-{kind}");
        let created_in = projects.path().join("created").join(&name);
        let created = cutover(
            projects.path(),
            &["plugin", "new", kind.name(), created_in.to_str().unwrap()],
        );
        assert!(
            created.contains("cutover-plugin/wit/plugin.wit"),
            "{created}"
        );
        // Built somewhere else than where it was made, as on another machine: a path
        // to the first place, or to this checkout, would show up below.
        let dir = projects.path().join("moved").join(&name);
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        std::fs::rename(&created_in, &dir).unwrap();
        // The next commands are printed, and in the README.
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        for next in [
            "cargo test",
            "cargo build --release --target wasm32-wasip2",
            "cutover plugin run",
        ] {
            assert!(created.contains(next), "{created}");
            assert!(readme.contains(next), "{readme}");
        }
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        for setting in [
            "opt-level = \"s\"",
            "lto = true",
            "strip = true",
            "panic = \"abort\"",
            "codegen-units = 1",
        ] {
            assert!(manifest.contains(setting), "{manifest}");
        }

        let env = [("CARGO_TARGET_DIR", target.as_path())];
        run(&dir, "cargo", &["test", "--quiet"], &env);
        assert_self_contained(&dir, &env);
        run(
            &dir,
            "cargo",
            &["build", "--release", "--target", "wasm32-wasip2", "--quiet"],
            &env,
        );
        // The README's path, under the shared target directory.
        let wasm = target.join(
            wasm_path(kind, &name, Lang::Rust)
                .strip_prefix("target")
                .unwrap(),
        );
        let size = std::fs::metadata(&wasm).unwrap().len();
        assert!(size < 200_000, "{kind}: {size} bytes");
        run_check_and_pin(&dir, kind, &wasm, &[]);
    }
}

/// componentize-py, as `.ci/run` installs it (or `$COMPONENTIZE_PY`).
fn componentize_py() -> PathBuf {
    let path = std::env::var_os("COMPONENTIZE_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/componentize-py/bin/componentize-py"));
    assert!(
        path.is_file(),
        "componentize-py {COMPONENTIZE_PY_VERSION} is not installed at {}; run .ci/run, or \
         `python3 -m venv target/componentize-py && target/componentize-py/bin/pip install \
         componentize-py=={COMPONENTIZE_PY_VERSION}`",
        path.display()
    );
    path
}

#[test]
fn plugin_new_in_python_builds_runs_checks_and_gates_a_real_deploy() {
    let projects = tempfile::tempdir().unwrap();
    let dir = projects.path().join("py-gate");
    let kind = PluginKind::DeployGate;
    let created = cutover(
        projects.path(),
        &[
            "plugin",
            "new",
            kind.name(),
            dir.to_str().unwrap(),
            "--lang",
            "python",
        ],
    );
    assert!(
        created
            .contains("componentize-py -d wit -w deploy-gate componentize app -o deploy_gate.wasm"),
        "{created}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("wit/plugin.wit")).unwrap(),
        cutover::plugin::WIT
    );
    let py = componentize_py();
    run(
        &dir,
        py.to_str().unwrap(),
        &[
            "-d",
            "wit",
            "-w",
            kind.name(),
            "componentize",
            "app",
            "-o",
            "deploy_gate.wasm",
        ],
        &[],
    );
    let wasm = dir.join("deploy_gate.wasm");
    // Python's limits, as the generated README gives them.
    let digest = run_check_and_pin(&dir, kind, &wasm, &["--deadline-ms", "1000"]);

    // Its config is checked by the Python code, through the binary.
    let denied = cutover(
        &dir,
        &[
            "plugin",
            "run",
            "deploy_gate.wasm",
            "--input",
            "sample.json",
            "--plugin-config",
            r#"{"pattern":"release"}"#,
            "--deadline-ms",
            "1000",
            "--output",
            "json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&denied).unwrap();
    assert_eq!(
        report["answer"]["deny"],
        "no tag on HEAD contains `release`"
    );
    assert_eq!(
        report["logs"][0]["message"],
        "tags on HEAD: ['v1.4.0-cicd']"
    );

    // Pinned in a real deploy, with the limits the README gives Python plugins.
    let svc = Service::new("e2e-py-gate");
    svc.append_config(&format!(
        "\n[plugins.deploy-gate]\nsource = {:?}\nsha256 = \"{digest}\"\n\
         config = {{ pattern = \"cicd\" }}\n[plugins.deploy-gate.limits]\nmemory_mib = 64\n\
         deadline_ms = 1000\n",
        wasm.display().to_string()
    ));
    // The service's directory is not a git checkout: no tags, so the gate denies.
    let out = svc.deploy("v1").code(3);
    assert!(
        out.stderr.contains("no tag on HEAD contains `cicd`"),
        "{}",
        out.stderr
    );
    svc.edit_config(|text| text.replace("config = { pattern = \"cicd\" }\n", ""));
    let out = svc.deploy("v1").success();
    assert!(
        out.stderr.contains("every deploy is allowed"),
        "{}",
        out.stderr
    );
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
}

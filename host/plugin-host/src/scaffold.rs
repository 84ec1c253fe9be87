//! `cutover plugin new`: writes a plugin project that builds as is, for one kind, in
//! Rust (on the `cutover-plugin` SDK) or Python (for componentize-py).
//!
//! Each project's decision is the kind's default behaviour, small enough to read in
//! one screen, with a config that shows the three things a config does (an optional
//! key, a checked value, an error naming the key), a `sample.json` input for
//! `cutover plugin run`, and a README with the next commands. The files are real
//! files under `templates/`, embedded at build time, with `{key}` placeholders only
//! where a project's name or kind goes. A Rust project carries a copy of the SDK (and
//! its WIT) in `cutover-plugin/`, so it names no path outside itself and builds on
//! any machine. This module only writes files into a new or empty directory; it never
//! builds or runs anything.

use std::path::{Path, PathBuf};

use super::{PluginError, PluginKind, WIT, WIT_VERSION, json};

/// The language of a new plugin project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate on the `cutover-plugin` SDK (a copy in the project), built for
    /// `wasm32-wasip2`.
    Rust,
    /// An `app.py` for componentize-py, with the WIT beside it.
    Python,
}

/// The componentize-py version the Python projects are written and tested against.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The files of a new project: (relative path, contents).
type Files = Vec<(&'static str, String)>;

/// Writes a `kind` plugin project in `lang` into `dir` (created; it must be empty
/// if it exists) and returns what to do next.
///
/// # Errors
/// [`PluginError::Scaffold`] when `dir` is not empty or a file cannot be written.
pub fn new(kind: PluginKind, dir: &Path, lang: Lang) -> Result<String, PluginError> {
    let fail = |detail: String| PluginError::Scaffold {
        dir: dir.to_owned(),
        detail,
    };
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        return Err(fail(
            "the directory is not empty; choose a new directory".to_owned(),
        ));
    }
    if (kind, lang) == (PluginKind::TargetSelector, Lang::Python) {
        // Measured: its `componentize` step panics ("one or more duplicate items
        // detected when collecting into set or map") on this world, whose exported
        // function returns a type the world also `use`s; the other three build.
        return Err(fail(format!(
            "componentize-py {COMPONENTIZE_PY_VERSION} cannot build the target-selector world \
             (it panics with \"duplicate items detected\"); write the selector in Rust: \
             `cutover plugin new target-selector {}`",
            dir.display()
        )));
    }
    let name = crate_name(dir);
    let files = match lang {
        Lang::Rust => rust(kind, &name).map_err(fail)?,
        Lang::Python => python(kind, &name),
    };
    for (path, contents) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, contents)
            .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
    }
    let mut text = format!(
        "Created a {kind} plugin in {} ({}):\n",
        dir.display(),
        match lang {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
        }
    );
    for (path, _) in &files {
        text.push_str(&format!("  {path}\n"));
    }
    text.push_str(&format!("\nNext (see {}/README.md):\n\n", dir.display()));
    text.push_str(&format!("cd {}\n", dir.display()));
    text.push_str(&next_commands(kind, &name, lang));
    Ok(text)
}

/// A crate / module name from the directory's name: lowercase letters, digits and
/// `-`, starting with a letter.
fn crate_name(dir: &Path) -> String {
    let raw = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-');
    if name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.to_owned()
    } else {
        format!("plugin-{}", if name.is_empty() { "new" } else { name })
    }
}

/// The `.wasm` file a project builds.
pub fn wasm_path(kind: PluginKind, name: &str, lang: Lang) -> PathBuf {
    match lang {
        Lang::Rust => PathBuf::from(format!(
            "target/wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        )),
        Lang::Python => PathBuf::from(format!("{}.wasm", kind.name().replace('-', "_"))),
    }
}

/// The commands after `plugin new`, one a line.
fn next_commands(kind: PluginKind, name: &str, lang: Lang) -> String {
    let wasm = wasm_path(kind, name, lang);
    let wasm = wasm.display();
    match lang {
        Lang::Rust => format!(
            "cargo test\n\
             cargo build --release --target wasm32-wasip2\n\
             cutover plugin run {wasm} --input sample.json\n"
        ),
        // The deadline the README's limits give a Python plugin (see `readme`).
        Lang::Python => format!(
            "componentize-py -d wit -w {kind} componentize app -o {wasm}\n\
             cutover plugin run {wasm} --input sample.json --deadline-ms 1000\n\
             cutover plugin check {wasm} --deadline-ms 1000\n"
        ),
    }
}

/// What the sample input makes the generated decision answer, for the README.
fn sample_answer(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::DeployGate => {
            "decide -> allow: no pattern is configured: every deploy is allowed"
        }
        PluginKind::TargetSelector => "select -> green",
        PluginKind::HealthPolicy => "evaluate -> healthy",
        PluginKind::ProxyTemplate => "render -> 1 file(s)",
        PluginKind::RolloutAnalysis => "analyze -> promote",
    }
}

/// A template of `templates/`, by its path there.
macro_rules! template {
    ($path:literal) => {
        include_str!(concat!("../templates/", $path))
    };
}

/// The guest SDK crate of this cutover, which a Rust project gets a copy of: its
/// source, the manifest it inherits from, and the WIT it is generated from.
const SDK_LIB: &str = include_str!("../../../plugins/cutover-plugin/src/lib.rs");
const SDK_MANIFEST: &str = include_str!("../../../plugins/cutover-plugin/Cargo.toml");
const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");

/// `template` with each `{key}` of `values` replaced, in one pass: a value is never
/// searched for placeholders, and braces that are not a key (Rust, TOML, Python
/// f-strings) stay as they are.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut text = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        text.push_str(&rest[..open]);
        rest = &rest[open..];
        let key = values
            .iter()
            .find(|(key, _)| rest[1..].starts_with(key) && rest[1 + key.len()..].starts_with('}'));
        match key {
            Some((key, value)) => {
                text.push_str(value);
                rest = &rest[key.len() + 2..];
            }
            None => {
                text.push('{');
                rest = &rest[1..];
            }
        }
    }
    text.push_str(rest);
    text
}

fn rust(kind: PluginKind, name: &str) -> Result<Files, String> {
    let lib = match kind {
        PluginKind::DeployGate => template!("rust/deploy-gate/src/lib.rs"),
        PluginKind::TargetSelector => template!("rust/target-selector/src/lib.rs"),
        PluginKind::HealthPolicy => template!("rust/health-policy/src/lib.rs"),
        PluginKind::ProxyTemplate => template!("rust/proxy-template/src/lib.rs"),
        PluginKind::RolloutAnalysis => template!("rust/rollout-analysis/src/lib.rs"),
    };
    Ok(vec![
        // `.in`: a file named `Cargo.toml` under this crate would be a nested package
        // to cargo, which leaves it out of this crate's package.
        (
            "Cargo.toml",
            fill(template!("rust/Cargo.toml.in"), &[("name", name)]),
        ),
        ("src/lib.rs", lib.to_owned()),
        ("cutover-plugin/Cargo.toml", sdk_manifest()?),
        ("cutover-plugin/src/lib.rs", sdk_lib()?),
        ("cutover-plugin/wit/plugin.wit", WIT.to_owned()),
        ("sample.json", json::sample(kind)),
        (".gitignore", "/target\n".to_owned()),
        ("README.md", readme(kind, name, Lang::Rust)),
    ])
}

/// The SDK's source for its copy in a project, whose WIT is in its own `wit/`: the
/// repository's crate reads `wit/vX.Y.Z` two levels up, which a project has not.
fn sdk_lib() -> Result<String, String> {
    let repository = format!("path: \"../../wit/v{WIT_VERSION}\"");
    if !SDK_LIB.contains(&repository) {
        return Err(format!(
            "the embedded SDK does not generate its bindings from `{repository}`; \
             this cutover was built wrong"
        ));
    }
    Ok(SDK_LIB.replace(&repository, "path: \"wit\""))
}

/// The SDK's manifest for its copy in a project: the repository's, with what it
/// inherits from the workspace (`x.workspace = true`, `{ workspace = true }`) written
/// out, and without the workspace's lints, which a project does not have.
fn sdk_manifest() -> Result<String, String> {
    let workspace: toml::Table = WORKSPACE_MANIFEST
        .parse()
        .map_err(|e| format!("the embedded workspace Cargo.toml: {e}"))?;
    let inherited = |section: &str, key: &str| {
        workspace
            .get("workspace")
            .and_then(|w| w.get(section))
            .and_then(|s| s.get(key))
            .ok_or_else(|| format!("the SDK inherits `{key}`, which [workspace.{section}] lacks"))
    };
    let mut manifest = String::from(
        "# The cutover guest SDK, copied by `cutover plugin new` from the cutover that wrote\n\
         # this project (plugins/cutover-plugin of its repository).\n",
    );
    let mut section = "";
    for line in SDK_MANIFEST.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed;
        }
        if section == "[lints]" {
            continue;
        }
        let written = if let Some(key) = trimmed.strip_suffix(".workspace = true") {
            format!("{key} = {}", inherited("package", key)?)
        } else if let Some(dependency) = trimmed.strip_suffix(" = { workspace = true }") {
            format!("{dependency} = {}", inherited("dependencies", dependency)?)
        } else if trimmed.contains("workspace") {
            return Err(format!(
                "the SDK's Cargo.toml line {trimmed:?} cannot be copied"
            ));
        } else {
            line.to_owned()
        };
        manifest.push_str(&written);
        manifest.push('\n');
    }
    Ok(manifest.trim_end().to_owned() + "\n")
}

fn python(kind: PluginKind, name: &str) -> Files {
    let app = match kind {
        // Refused by `new`: componentize-py cannot build this world.
        PluginKind::DeployGate | PluginKind::TargetSelector => {
            template!("python/deploy-gate/app.py")
        }
        PluginKind::HealthPolicy => template!("python/health-policy/app.py"),
        PluginKind::ProxyTemplate => template!("python/proxy-template/app.py"),
        PluginKind::RolloutAnalysis => template!("python/rollout-analysis/app.py"),
    };
    vec![
        (
            "app.py",
            fill(app, &[("header", template!("python/header.py"))]),
        ),
        ("wit/plugin.wit", WIT.to_owned()),
        ("sample.json", json::sample(kind)),
        (
            ".gitignore",
            format!(
                "/{}\n/.venv\n__pycache__/\n",
                wasm_path(kind, name, Lang::Python).display()
            ),
        ),
        ("README.md", readme(kind, name, Lang::Python)),
    ]
}

fn readme(kind: PluginKind, name: &str, lang: Lang) -> String {
    let wasm = wasm_path(kind, name, lang).display().to_string();
    let (setup, test, limits) = match lang {
        Lang::Rust => (
            template!("rust/README.setup.md").trim_end().to_owned(),
            // Runs into the next sentence of the paragraph.
            format!("{} ", template!("rust/README.test.md").trim_end()),
            String::new(),
        ),
        Lang::Python => {
            let values = [
                ("kind", kind.name()),
                ("componentize_py", COMPONENTIZE_PY_VERSION),
            ];
            (
                fill(template!("python/README.setup.md"), &values)
                    .trim_end()
                    .to_owned(),
                String::new(),
                fill(template!("python/README.limits.toml"), &values),
            )
        }
    };
    fill(
        template!("README.md"),
        &[
            ("name", name),
            ("kind", kind.name()),
            ("setup", &setup),
            ("next", &next_commands(kind, name, lang)),
            ("test", &test),
            ("answer", sample_answer(kind)),
            ("wasm", &wasm),
            ("file", wasm.rsplit('/').next().unwrap_or_default()),
            ("limits", &limits),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_are_cargo_and_python_safe() {
        assert_eq!(crate_name(Path::new("/x/My Policy")), "my-policy");
        assert_eq!(crate_name(Path::new("9lives")), "plugin-9lives");
        assert_eq!(crate_name(Path::new("/")), "plugin-new");
    }

    #[test]
    fn a_non_empty_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let err = new(PluginKind::HealthPolicy, dir.path(), Lang::Rust).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn a_python_target_selector_is_refused_with_the_rust_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = new(PluginKind::TargetSelector, dir.path(), Lang::Python).unwrap_err();
        assert!(
            err.to_string()
                .contains("cutover plugin new target-selector"),
            "{err}"
        );
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn every_kind_and_language_fills_its_placeholders() {
        for kind in PluginKind::ALL {
            for lang in [Lang::Rust, Lang::Python] {
                let files = match lang {
                    Lang::Rust => rust(kind, "p").unwrap(),
                    Lang::Python => python(kind, "p"),
                };
                for (path, text) in files {
                    if path.ends_with(".rs") || path.ends_with(".wit") {
                        continue;
                    }
                    for placeholder in [
                        "{name}",
                        "{kind}",
                        "{header}",
                        "{setup}",
                        "{next}",
                        "{test}",
                        "{answer}",
                        "{wasm}",
                        "{file}",
                        "{limits}",
                        "{componentize_py}",
                    ] {
                        assert!(!text.contains(placeholder), "{kind} {path}: {placeholder}");
                    }
                }
            }
        }
    }

    #[test]
    fn fill_replaces_keys_once_and_leaves_other_braces() {
        let text = fill("{a} {b} {} {c} f\"{a}{", &[("a", "{b}"), ("b", "x")]);
        assert_eq!(text, "{b} x {} {c} f\"{b}{");
    }

    /// The SDK copy must build where no cutover checkout is: it names no path, it
    /// inherits nothing from a workspace, and its bindings read its own `wit/`.
    #[test]
    fn the_sdk_copy_stands_alone() {
        let manifest: toml::Table = sdk_manifest().unwrap().parse().unwrap();
        assert!(!sdk_manifest().unwrap().contains("workspace"));
        let package = &manifest["package"];
        assert_eq!(package["name"].as_str(), Some("cutover-plugin"));
        assert!(package["edition"].as_str().is_some(), "{package:?}");
        let dependencies = manifest["dependencies"].as_table().unwrap();
        for name in ["serde", "serde_json", "wit-bindgen"] {
            let dependency = &dependencies[name];
            assert!(dependency.get("path").is_none(), "{name}");
            assert!(
                dependency.is_str() || dependency.get("version").is_some(),
                "{name}"
            );
        }
        assert!(manifest.get("lints").is_none());

        let lib = sdk_lib().unwrap();
        assert!(!lib.contains("../"), "the copy reads WIT outside itself");
        assert_eq!(lib.matches("path: \"wit\"").count(), 5);
    }

    #[test]
    fn a_rust_project_names_no_path_outside_itself() {
        let files = rust(PluginKind::HealthPolicy, "p").unwrap();
        let manifest = &files
            .iter()
            .find(|(path, _)| *path == "Cargo.toml")
            .unwrap()
            .1;
        let manifest: toml::Table = manifest.parse().unwrap();
        assert_eq!(
            manifest["dependencies"]["cutover-plugin"]["path"].as_str(),
            Some("cutover-plugin")
        );
        for (path, _) in &files {
            assert!(!path.starts_with('/') && !path.contains(".."), "{path}");
        }
        assert!(
            files
                .iter()
                .any(|(path, _)| *path == "cutover-plugin/wit/plugin.wit")
        );
    }
}

//! The host's shape, checked so that it cannot drift by accident.
//!
//! The compiler enforces the arrows between crates once each `Cargo.toml` is right;
//! these tests pin the `Cargo.toml`s themselves to the intended architecture, and check
//! inside the core and web crates what the compiler cannot: no import cycle among
//! their modules, and the read-only views reach — directly or through any module
//! they use — nothing that changes the world.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every crate of the host, and the host crates it may depend on. A new crate, or a
/// new arrow, is a decision: make it here, where the whole picture is.
const CRATES: [(&str, &str, &[&str]); 8] = [
    ("host/base", "cutover-base", &[]),
    ("host/plugin-host", "cutover-plugin-host", &["cutover-base"]),
    (
        "host/config",
        "cutover-config",
        &["cutover-base", "cutover-plugin-host"],
    ),
    (
        "host/engine",
        "cutover-engine",
        &["cutover-base", "cutover-config"],
    ),
    (
        "host/proxy",
        "cutover-proxy",
        &["cutover-base", "cutover-config", "cutover-plugin-host"],
    ),
    (
        "host/core",
        "cutover-core",
        &[
            "cutover-base",
            "cutover-config",
            "cutover-engine",
            "cutover-plugin-host",
            "cutover-proxy",
        ],
    ),
    (
        "host/web",
        "cutover-web",
        &[
            "cutover-base",
            "cutover-config",
            "cutover-core",
            "cutover-plugin-host",
        ],
    ),
    ("host", "cutover", &["cutover-core", "cutover-web"]),
];

/// The host crates a `Cargo.toml`'s `[dependencies]` name.
fn host_dependencies(manifest: &Path) -> (String, BTreeSet<String>) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let name = doc["package"]["name"].as_str().unwrap().to_owned();
    let deps = doc
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| {
            d.keys()
                .filter(|k| k.starts_with("cutover"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    (name, deps)
}

#[test]
fn each_host_crate_depends_only_on_the_crates_below_it() {
    let root = crate::support::workspace_root();
    let mut listed = BTreeSet::new();
    for (dir, name, allowed) in CRATES {
        let (found, deps) = host_dependencies(&root.join(dir).join("Cargo.toml"));
        assert_eq!(found, name, "{dir}/Cargo.toml");
        let allowed: BTreeSet<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(
            deps, allowed,
            "{dir}/Cargo.toml: `{name}` may depend on {allowed:?} among the host crates"
        );
        listed.insert(dir.to_owned());
    }
    // A crate added under host/ must be placed in the picture above.
    for entry in std::fs::read_dir(root.join("host")).unwrap() {
        let path = entry.unwrap().path();
        if path.join("Cargo.toml").is_file() {
            let dir = format!("host/{}", path.file_name().unwrap().to_string_lossy());
            assert!(
                listed.contains(&dir),
                "{dir} is not in tests/shape.rs CRATES"
            );
        }
    }
}

/// The modules of the core and web crates → the modules they name as `crate::<m>`
/// (outside unit tests). Both crates name the core's modules the same way (web's
/// root imports them under their own names), so one graph covers both; the lower
/// crates appear as leaves (`engine`, `proxy`, `plugin`, `config`, ...).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = crate::support::workspace_root();
    let mut graph = BTreeMap::new();
    for krate in ["host/core/src", "host/web/src"] {
        for entry in std::fs::read_dir(root.join(krate)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if name == "lib" {
                continue;
            }
            let mut text = String::new();
            collect(&path, &mut text);
            graph
                .entry(name.clone())
                .or_insert_with(BTreeSet::new)
                .extend(named_modules(&text).into_iter().filter(|m| *m != name));
        }
    }
    graph
}

/// The top-level modules that `crate::` paths in `text` name.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    // Only code: doc comments may link anywhere.
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for part in code.split("crate::").skip(1) {
        // `crate::{a::X, b}` names several modules at once.
        let names: Vec<&str> = match part.strip_prefix('{') {
            Some(group) => group
                .split('}')
                .next()
                .unwrap_or_default()
                .split(',')
                .collect(),
            None => vec![part],
        };
        for name_part in names {
            let module: String = name_part
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::Color` (an item at the root) is not a module.
            if !module.is_empty() && module.starts_with(char::is_lowercase) {
                used.insert(module);
            }
        }
    }
    used
}

/// The text of a module file, or of every file under a module directory, without
/// its tests (a unit test may use anything).
fn collect(path: &Path, out: &mut String) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            collect(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        let text = std::fs::read_to_string(path).unwrap();
        // A module file that is itself test-only (`#![cfg(test)]`) is a unit test's.
        if text.contains("#![cfg(test)]") {
            return;
        }
        out.push_str(text.split("#[cfg(test)]").next().unwrap_or_default());
    }
}

/// Every module `from` reaches through the graph, itself excluded.
fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(node) = todo.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    seen.remove(from);
    seen
}

#[test]
fn core_and_web_modules_import_each_other_without_cycles() {
    let graph = imports();
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle among host modules: {}", cycle.join(" → "));
        }
    }
}

/// Modules whose job is to change things: running operations, taking the deploy lock,
/// serving the API that starts them.
const MUTATING: [&str; 7] = [
    "deploy", "recover", "down", "control", "hold", "serve", "cli",
];

#[test]
fn read_only_views_reach_nothing_that_changes_things() {
    let graph = imports();
    for view in ["status", "observe", "plan", "dashboard"] {
        assert!(graph.contains_key(view), "no module `{view}`");
        let reached = reachable(&graph, view);
        let bad: Vec<_> = reached
            .iter()
            .filter(|m| MUTATING.contains(&m.as_str()))
            .collect();
        assert!(
            bad.is_empty(),
            "`{view}` reaches {bad:?} (directly or through {reached:?})"
        );
    }
}

#[test]
fn the_check_of_the_views_sees_indirect_paths() {
    // The check above must fail for a view that reaches a mutating module only
    // through another module: a → b → deploy.
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["deploy".to_owned()]));
    assert!(reachable(&graph, "a").contains("deploy"));
    assert_eq!(
        named_modules("use crate::{context::Context, hold};\n// crate::deploy\n"),
        BTreeSet::from(["context".to_owned(), "hold".to_owned()])
    );
}

#[test]
fn the_state_machine_talks_to_the_engine_not_to_docker() {
    let graph = imports();
    for module in ["deploy", "recover", "status", "down", "plan"] {
        assert!(
            !graph[module].contains("docker"),
            "`{module}` imports `docker` directly: {:?}",
            graph[module]
        );
    }
}

//! The host's shape, checked so that it cannot drift by accident: no import cycle
//! among its top-level modules, and the read-only views import nothing that changes
//! the world.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it names as `crate::<module>`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = crate::support::workspace_root().join("host/src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if ["lib", "main"].contains(&name.as_str()) {
            continue;
        }
        let mut text = String::new();
        collect(&path, &mut text);
        let mut used = BTreeSet::new();
        for part in text.split("crate::").skip(1) {
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
                // `crate::Color` (the root) is not a module.
                if !module.is_empty() && module != name && module.starts_with(char::is_lowercase) {
                    used.insert(module);
                }
            }
        }
        graph.insert(name, used);
    }
    graph
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
        out.push_str(text.split("#[cfg(test)]").next().unwrap_or_default());
    }
}

#[test]
fn host_modules_import_each_other_without_cycles() {
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

#[test]
fn read_only_views_import_nothing_that_changes_things() {
    let graph = imports();
    let mutating = ["deploy", "recover", "down", "serve", "cli"];
    for view in ["status", "observe", "plan"] {
        let bad: Vec<_> = graph[view]
            .iter()
            .filter(|m| mutating.contains(&m.as_str()) && !(view == "plan" && *m == "deploy"))
            .collect();
        assert!(bad.is_empty(), "`{view}` imports {bad:?}");
    }
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

//! The CI examples in `examples/ci/` parse, have the shape their CI expects, and every
//! `cutover` command line in them is accepted by cutover's own argument parser.

use std::path::{Path, PathBuf};

use clap::Parser;
use cutover::cli::{Cli, Command};
use yaml_rust2::{Yaml, YamlLoader};

fn example(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/ci")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

/// Every `cutover ...` invocation in a line of shell, up to the first shell operator.
fn cutover_commands(shell: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for line in shell.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        for (i, token) in tokens.iter().enumerate() {
            let token = token.trim_start_matches(['\'', '"', '(']);
            if token != "cutover" {
                continue;
            }
            let mut argv = vec!["cutover".to_owned()];
            for t in &tokens[i + 1..] {
                if ["||", "&&", ";", "|", ">", "2>&1"].contains(t) || t.starts_with('>') {
                    break;
                }
                let end = t.ends_with(['\'', ';', ')', ',']);
                let clean = t.trim_end_matches(['\'', ';', ')', ',']);
                if !clean.is_empty() {
                    argv.push(clean.to_owned());
                }
                if end {
                    break;
                }
            }
            commands.push(argv);
        }
    }
    commands
}

fn assert_parses(file: &Path, commands: &[Vec<String>]) {
    assert!(
        !commands.is_empty(),
        "{}: no cutover command found",
        file.display()
    );
    for argv in commands {
        if let Err(e) = Cli::try_parse_from(argv) {
            panic!("{}: `{}` is rejected: {e}", file.display(), argv.join(" "));
        }
    }
    let deploys = commands
        .iter()
        .filter(|argv| {
            matches!(
                Cli::try_parse_from(argv.iter()).map(|c| c.command),
                Ok(Command::Deploy { .. })
            )
        })
        .count();
    assert_eq!(
        deploys,
        1,
        "{}: exactly one `cutover deploy`",
        file.display()
    );
}

/// The shell scripts of a YAML CI file: the values under `keys`, anywhere.
pub(crate) fn scripts(yaml: &Yaml, keys: &[&str], out: &mut Vec<String>) {
    match yaml {
        Yaml::Array(items) => items.iter().for_each(|y| scripts(y, keys, out)),
        Yaml::Hash(map) => {
            for (key, value) in map {
                if key.as_str().is_some_and(|k| keys.contains(&k)) {
                    match value {
                        Yaml::String(s) => out.push(s.clone()),
                        Yaml::Array(lines) => {
                            out.extend(lines.iter().filter_map(|l| l.as_str().map(str::to_owned)))
                        }
                        _ => {}
                    }
                } else {
                    scripts(value, keys, out);
                }
            }
        }
        _ => {}
    }
}

fn yaml_commands(path: &Path, text: &str, keys: &[&str]) -> (Yaml, Vec<Vec<String>>) {
    let docs = YamlLoader::load_from_str(text)
        .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
    assert_eq!(docs.len(), 1, "{}: one YAML document", path.display());
    let mut all = Vec::new();
    scripts(&docs[0], keys, &mut all);
    let commands = all.iter().flat_map(|s| cutover_commands(s)).collect();
    (docs[0].clone(), commands)
}

#[test]
fn github_actions_workflow_is_valid_and_its_commands_parse() {
    let (path, text) = example("github-actions.yml");
    let (doc, commands) = yaml_commands(&path, &text, &["run"]);
    assert!(!doc["on"]["push"].is_badvalue(), "triggers on push");
    let steps = doc["jobs"]["deploy"]["steps"]
        .as_vec()
        .expect("jobs.deploy.steps");
    assert_eq!(
        steps[0]["with"]["fetch-depth"].as_i64(),
        Some(0),
        "the checkout fetches tags"
    );
    assert!(text.contains("\"$code\" -eq 3"), "gate denied is a success");
    assert_parses(&path, &commands);
}

#[test]
fn gitlab_pipeline_is_valid_and_its_commands_parse() {
    let (path, text) = example("gitlab-ci.yml");
    let (doc, commands) = yaml_commands(&path, &text, &["script", "before_script", "after_script"]);
    assert!(doc["deploy"]["script"].as_vec().is_some(), "deploy.script");
    assert_eq!(doc["deploy"]["stage"].as_str(), Some("deploy"));
    assert!(text.contains("\"$code\" -eq 3"), "gate denied is a success");
    assert_parses(&path, &commands);
}

#[test]
fn jenkinsfile_is_declarative_and_its_commands_parse() {
    let (path, text) = example("Jenkinsfile");
    // Groovy-lite: braces balance outside strings and comments; it is a declarative
    // pipeline with stages; every `sh` step's script is collected.
    let mut depth = 0i32;
    let mut in_string: Option<char> = None;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        for c in code.chars() {
            match (in_string, c) {
                (Some(q), c) if c == q => in_string = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => in_string = Some(c),
                (None, '{') => depth += 1,
                (None, '}') => {
                    depth -= 1;
                    assert!(depth >= 0, "{}: unbalanced `}}`", path.display());
                }
                _ => {}
            }
        }
    }
    assert_eq!(depth, 0, "{}: braces balance", path.display());
    assert!(
        text.trim_start_matches(|c: char| c == '/' || c.is_whitespace())
            .contains("pipeline {")
    );
    assert!(text.contains("stages {") && text.contains("stage('Deploy')"));
    assert!(text.contains("code == 3"), "gate denied is a success");
    let commands: Vec<Vec<String>> = jenkins_scripts(&text)
        .iter()
        .flat_map(|s| cutover_commands(s))
        .collect();
    assert_parses(&path, &commands);
}

/// The script of every `sh '…'` and `sh(script: '…')` step of a Jenkinsfile.
pub(crate) fn jenkins_scripts(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let start = l
                .find("sh '")
                .map(|i| i + 4)
                .or_else(|| l.find("sh(script: '").map(|i| i + "sh(script: '".len()))?;
            let rest = &l[start..];
            Some(rest[..rest.find('\'')?].to_owned())
        })
        .collect()
}

#[test]
fn command_extraction_stops_at_shell_operators() {
    assert_eq!(
        cutover_commands("code=0; cutover deploy --config c.toml || code=$?"),
        [vec!["cutover", "deploy", "--config", "c.toml"]]
    );
    assert_eq!(
        cutover_commands("sh 'cutover plan --config c.toml'"),
        [vec!["cutover", "plan", "--config", "c.toml"]]
    );
}

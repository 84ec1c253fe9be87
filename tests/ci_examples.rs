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
fn github_actions_workflow_is_valid_and_deploys_through_the_action() {
    let (path, text) = example("github-actions.yml");
    let docs = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
    let doc = &docs[0];
    assert!(!doc["on"]["push"].is_badvalue(), "triggers on push");
    let steps = doc["jobs"]["deploy"]["steps"]
        .as_vec()
        .expect("jobs.deploy.steps");
    assert_eq!(
        steps[0]["with"]["fetch-depth"].as_i64(),
        Some(0),
        "the checkout fetches tags"
    );
    let deploy = steps
        .iter()
        .find(|s| s["uses"].as_str() == Some("./.github/actions/cutover"))
        .expect("a step uses the cutover action");
    assert_eq!(deploy["with"]["config"].as_str(), Some("cutover.toml"));
}

/// The composite action of `examples/ci/action/`.
fn action() -> (PathBuf, Yaml) {
    let (path, text) = example("action/action.yml");
    let docs = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
    (path, docs[0].clone())
}

#[test]
fn github_action_is_composite_and_its_commands_are_the_documented_ones() {
    let (path, doc) = action();
    assert_eq!(doc["runs"]["using"].as_str(), Some("composite"));
    let steps = doc["runs"]["steps"].as_vec().expect("runs.steps");
    let mut commands = Vec::new();
    for step in steps {
        assert_eq!(step["shell"].as_str(), Some("bash"), "{step:?}");
        let run = step["run"].as_str().expect("every step runs a script");
        // Inputs reach scripts through env only: an input spliced into a script
        // would be shell injection.
        assert!(
            !run.contains("${{"),
            "{}: script text uses ${{{{ }}}}: {run}",
            path.display()
        );
        commands.extend(cutover_commands(run));
        if run.contains("cutover ") {
            assert_eq!(
                step["env"]["CUTOVER_CONFIG"].as_str(),
                Some("${{ inputs.config }}"),
                "{step:?}"
            );
        }
    }
    assert_parses(&path, &commands);
    let names: Vec<&str> = commands.iter().map(|argv| argv[1].as_str()).collect();
    assert_eq!(names, ["plan", "deploy", "history"]);
    for (input, default) in [("config", "cutover.toml"), ("lock-wait", "10m")] {
        assert_eq!(doc["inputs"][input]["default"].as_str(), Some(default));
    }
}

/// Runs the action's deploy step as GitHub does (`bash -eo pipefail`), with the real
/// cutover first on PATH, in `dir`; returns its exit code and what it wrote to
/// `$GITHUB_OUTPUT`.
fn run_deploy_step(dir: &Path, config: &str) -> (Option<i32>, String, String) {
    let (_, doc) = action();
    let step = doc["runs"]["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|s| s["id"].as_str() == Some("deploy"))
        .expect("the deploy step")
        .clone();
    let bin = Path::new(env!("CARGO_BIN_EXE_cutover")).parent().unwrap();
    let output = dir.join("github-output");
    std::fs::write(&output, "").unwrap();
    let out = std::process::Command::new("bash")
        .args(["--noprofile", "--norc", "-eo", "pipefail", "-c"])
        .arg(step["run"].as_str().unwrap())
        .current_dir(dir)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("CUTOVER_CONFIG", config)
        .env("CUTOVER_LOCK_WAIT", "1s")
        .env("RUNNER_TEMP", dir)
        .env("GITHUB_OUTPUT", &output)
        .output()
        .expect("bash");
    (
        out.status.code(),
        std::fs::read_to_string(&output).unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn github_action_turns_a_denied_gate_into_a_skipped_job_and_a_bad_config_into_a_failed_one() {
    // A repository whose HEAD has no `cicd` tag: the original script's gate rule
    // denies it (exit 3) before anything is built.
    let repo = crate::support::git::Repo::new();
    repo.commit("README", "an app\n", "first");
    std::fs::write(
        repo.path().join("cutover.toml"),
        format!(
            "service = \"action-gate\"\nstate_dir = \"state\"\n[image]\nref = \"hello:none\"\n[container]\nport = 8080\n[blue]\nhost_port = {}\n[green]\nhost_port = {}\n[proxy]\nmode = \"managed\"\nlisten = \"127.0.0.1:{}\"\n[plugins.deploy-gate]\nsource = \"builtin:tag-pattern\"\nconfig = {{ pattern = \"cicd\" }}\n",
            crate::support::docker::free_port(),
            crate::support::docker::free_port(),
            crate::support::docker::free_port()
        ),
    )
    .unwrap();
    let (code, outputs, stdout) = run_deploy_step(repo.path(), "cutover.toml");
    assert_eq!(code, Some(0), "{outputs}\n{stdout}");
    assert!(
        outputs.contains("exit-code=3\n") && outputs.contains("outcome=skipped\n"),
        "{outputs}"
    );
    assert!(stdout.contains("::notice::"), "{stdout}");

    let (code, outputs, stdout) = run_deploy_step(repo.path(), "missing.toml");
    assert_eq!(code, Some(5), "{outputs}\n{stdout}");
    assert!(outputs.contains("outcome=failed\n"), "{outputs}");
    assert!(
        stdout.contains("::error::cutover deploy exited 5"),
        "{stdout}"
    );
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

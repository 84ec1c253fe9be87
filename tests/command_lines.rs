//! Every `cutover …` command line the README and `examples/` show a user is accepted
//! by the real binary's argument parser.
//!
//! Regression: `cutover plugin check --config <JSON>` shared its id with the global
//! `-c/--config <FILE>`, so clap panicked (exit 101) on every `plugin check`, the
//! README's walkthrough included, and no test ran a documented line. Here each line
//! runs through the built `cutover` with `CUTOVER_PARSE_ONLY=1` (it stops after
//! parsing), so a clash, a renamed flag or a typo fails naming the file and line.
//!
//! Command lines are taken from where a user copies them: shell code blocks of
//! Markdown files, shell scripts, the steps of the CI files and the systemd unit's
//! `Exec…=` lines. Inline code in prose (`` `cutover plugin check` ``) names a command
//! rather than showing a complete line, so it is not checked.

use std::path::{Path, PathBuf};
use std::process::Command;

use cutover::cli::PARSE_ONLY_ENV;
use yaml_rust2::YamlLoader;

use crate::ci_examples::{jenkins_scripts, scripts};

/// A `cutover` invocation found in a file.
#[derive(Debug)]
struct Found {
    file: PathBuf,
    /// 1-based.
    line: usize,
    /// The arguments after the program.
    args: Vec<String>,
}

/// A shell token: a word (quotes removed, expansions left literal) or the end of a
/// command (`;`, `&&`, `||`, `|`, `&`, `(`, `)`, `$(` or a newline).
#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    End,
}

/// Splits shell text into tokens, each with the 0-based line it starts on, the way
/// sh does for what the docs use: quotes, backslash escapes, line continuations and
/// comments. Redirections and their targets are dropped; `$here/cutover.toml` stays
/// as written (the parser only needs a path). A command substitution inside double
/// quotes is part of its word, not a command.
fn lex(text: &str) -> Vec<(usize, Token)> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 0;
    let mut word: Option<(usize, String)> = None;
    // The next word is a redirection's target.
    let mut redirect = false;
    let finish = |word: &mut Option<(usize, String)>,
                  redirect: &mut bool,
                  tokens: &mut Vec<(usize, Token)>| {
        if let Some((at, w)) = word.take()
            && !std::mem::take(redirect)
        {
            tokens.push((at, Token::Word(w)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\n') => line += 1,
                Some(escaped) => word.get_or_insert((line, String::new())).1.push(escaped),
                None => {}
            },
            '\'' => {
                let w = &mut word.get_or_insert((line, String::new())).1;
                for c in chars.by_ref().take_while(|&c| c != '\'') {
                    line += usize::from(c == '\n');
                    w.push(c);
                }
            }
            '"' => {
                let w = &mut word.get_or_insert((line, String::new())).1;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some('\n') => line += 1,
                            Some(e @ ('"' | '\\' | '$' | '`')) => w.push(e),
                            Some(other) => {
                                w.push('\\');
                                w.push(other);
                            }
                            None => {}
                        },
                        c => {
                            line += usize::from(c == '\n');
                            w.push(c);
                        }
                    }
                }
            }
            '#' if word.is_none() => while chars.next_if(|&c| c != '\n').is_some() {},
            ' ' | '\t' => finish(&mut word, &mut redirect, &mut tokens),
            '\n' | ';' | '&' | '|' | '(' | ')' => {
                finish(&mut word, &mut redirect, &mut tokens);
                tokens.push((line, Token::End));
                line += usize::from(c == '\n');
            }
            '$' if chars.peek() == Some(&'(') => {
                chars.next();
                finish(&mut word, &mut redirect, &mut tokens);
                tokens.push((line, Token::End));
            }
            '>' | '<' => {
                // `2>&1`, `>>file`, `> file`, `</dev/null`: a file descriptor number
                // before it belongs to the redirection, and so does the next word.
                if word
                    .as_ref()
                    .is_some_and(|(_, w)| w.chars().all(|c| c.is_ascii_digit()))
                {
                    word = None;
                }
                finish(&mut word, &mut redirect, &mut tokens);
                chars.next_if_eq(&c);
                chars.next_if_eq(&'&');
                while chars.next_if(|&c| c == ' ' || c == '\t').is_some() {}
                redirect = true;
            }
            c => word.get_or_insert((line, String::new())).1.push(c),
        }
    }
    finish(&mut word, &mut redirect, &mut tokens);
    tokens
}

/// Whether `word`, in command position, runs cutover: `cutover`, a path to it, or the
/// variable a script keeps its path in (`"$cutover"`).
fn is_cutover(word: &str) -> bool {
    word == "cutover" || word.ends_with("/cutover") || word == "$cutover" || word == "${cutover}"
}

/// Every cutover invocation in shell `text`: (0-based line in `text`, arguments).
fn cutover_calls(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut calls = Vec::new();
    let tokens = lex(text);
    for command in tokens.split(|(_, t)| *t == Token::End) {
        let mut words = command.iter().filter_map(|(line, t)| match t {
            Token::Word(w) => Some((*line, w.as_str())),
            Token::End => None,
        });
        // Past variable assignments and the keywords that can start a command.
        let Some((line, program)) = words.find(|(_, w)| {
            let assignment = w.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            let keyword = [
                "if", "then", "else", "elif", "do", "while", "until", "!", "{", "}",
            ]
            .contains(w);
            !assignment && !keyword
        }) else {
            continue;
        };
        if is_cutover(program) {
            calls.push((line, words.map(|(_, w)| w.to_owned()).collect()));
        }
    }
    calls
}

/// The shell snippets of a file, each with the 0-based line of the file it starts
/// on when that is known (else the line is found by searching for the command).
fn snippets(path: &Path, text: &str) -> Vec<(Option<usize>, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    match extension {
        "md" => {
            let mut blocks = Vec::new();
            let mut open: Option<(bool, usize, String)> = None;
            for (i, line) in text.lines().enumerate() {
                match (&mut open, line.trim_start().strip_prefix("```")) {
                    (None, Some(info)) => {
                        let shell = ["sh", "bash", "shell"]
                            .contains(&info.split_whitespace().next().unwrap_or_default());
                        open = Some((shell, i + 1, String::new()));
                    }
                    (Some(_), Some(_)) => {
                        if let Some((true, start, block)) = open.take() {
                            blocks.push((Some(start), block));
                        }
                    }
                    (Some((_, _, block)), None) => {
                        block.push_str(line);
                        block.push('\n');
                    }
                    (None, None) => {}
                }
            }
            blocks
        }
        "sh" => vec![(Some(0), text.to_owned())],
        "yml" | "yaml" => {
            let docs = YamlLoader::load_from_str(text)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
            let mut out = Vec::new();
            for doc in &docs {
                scripts(
                    doc,
                    &["run", "script", "before_script", "after_script"],
                    &mut out,
                );
            }
            out.into_iter().map(|s| (None, s)).collect()
        }
        "service" => text
            .lines()
            .enumerate()
            .filter_map(|(i, line)| {
                let (key, value) = line.split_once('=')?;
                // systemd's `-`, `@`, `+`, `!` and `:` prefixes change how it runs the
                // command, not the command.
                let value = value.trim_start_matches(['-', '@', '+', '!', ':']);
                key.trim()
                    .starts_with("Exec")
                    .then(|| (Some(i), value.to_owned()))
            })
            .collect(),
        _ if name == "Jenkinsfile" => jenkins_scripts(text)
            .into_iter()
            .map(|s| (None, s))
            .collect(),
        _ => Vec::new(),
    }
}

/// Every cutover command line in `path`.
fn command_lines(path: &Path) -> Vec<Found> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Pictures (the dashboard's screenshot) hold no command lines.
    let Ok(text) = String::from_utf8(bytes) else {
        return Vec::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    // Snippets come in file order; searching from the last hit keeps repeated lines
    // attributed to the right place.
    let mut from = 0;
    for (start, snippet) in snippets(path, &text) {
        let snippet_lines: Vec<&str> = snippet.lines().collect();
        for (at, args) in cutover_calls(&snippet) {
            let line = match start {
                Some(start) => start + at,
                None => {
                    let needle = snippet_lines.get(at).map_or("", |l| l.trim());
                    (from..lines.len())
                        .find(|&i| lines[i].contains(needle))
                        .unwrap_or(from)
                }
            };
            from = line;
            found.push(Found {
                file: path.to_owned(),
                line: line + 1,
                args,
            });
        }
    }
    found
}

/// README.md and every file under `examples/` (build output and hidden files aside).
fn documentation_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = vec![root.join("README.md")];
    walk(&root.join("examples"), &mut files);
    files.sort();
    files
}

#[test]
fn every_documented_cutover_command_line_parses_in_the_real_binary() {
    let root = crate::support::workspace_root();
    let found: Vec<Found> = documentation_files(root)
        .iter()
        .flat_map(|path| command_lines(path))
        .collect();
    // The extraction itself must keep finding what is there.
    for expected in [
        "README.md",
        "examples/plugins/latency-p95/README.md",
        "examples/hello/demo.sh",
        "examples/ci/action/action.yml",
        "examples/ci/gitlab-ci.yml",
        "examples/ci/Jenkinsfile",
        "examples/serve/cutover-serve.service",
    ] {
        assert!(
            found.iter().any(|f| f.file == root.join(expected)),
            "no `cutover` command line found in {expected}; did the extraction break?"
        );
    }
    assert!(
        found.iter().any(|f| f
            .args
            .starts_with(&["plugin".to_owned(), "check".to_owned()])),
        "the plugin walkthrough's `cutover plugin check` line was not found"
    );

    let mut failures = Vec::new();
    for f in &found {
        let output = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(&f.args)
            .env(PARSE_ONLY_ENV, "1")
            .env_remove("CUTOVER_CONFIG")
            .output()
            .expect("run the cutover binary");
        if !output.status.success() {
            failures.push(format!(
                "{}:{}: `cutover {}` exits with {}:\n{}",
                f.file.strip_prefix(root).unwrap_or(&f.file).display(),
                f.line,
                f.args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} documented command lines are rejected by the binary's parser:\n\n{}",
        failures.len(),
        found.len(),
        failures.join("\n\n")
    );
}

#[test]
fn parse_only_still_refuses_a_bad_command_line() {
    // Otherwise the test above would pass whatever the docs said.
    let output = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["plugin", "check", "x.wasm", "--no-such-flag"])
        .env(PARSE_ONLY_ENV, "1")
        .output()
        .expect("run the cutover binary");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

#[test]
fn shell_lexing_keeps_quoted_json_and_drops_operators_and_redirections() {
    let script = "set +e\n\
        code=0; cutover deploy --config c.toml --output json > events.jsonl || code=$?\n\
        cutover plugin check my.wasm \\\n    --plugin-config '{\"window\": 5}'\n\
        \"$cutover\" --config \"$here/cutover.toml\" down --images 2>&1 | tee log # done\n\
        echo \"cutover deploy failed\"\n\
        ExecStart=x /usr/local/bin/cutover serve /etc/cutover/serve.toml\n";
    let calls = cutover_calls(script);
    let expected: Vec<(usize, Vec<&str>)> = vec![
        (1, vec!["deploy", "--config", "c.toml", "--output", "json"]),
        (
            2,
            vec![
                "plugin",
                "check",
                "my.wasm",
                "--plugin-config",
                "{\"window\": 5}",
            ],
        ),
        (
            4,
            vec!["--config", "$here/cutover.toml", "down", "--images"],
        ),
        (6, vec!["serve", "/etc/cutover/serve.toml"]),
    ];
    assert_eq!(
        calls,
        expected
            .into_iter()
            .map(|(line, args)| (line, args.into_iter().map(str::to_owned).collect()))
            .collect::<Vec<_>>()
    );
}

//! A newcomer's first commands through the built binary: `cutover init` in a
//! repository with a Dockerfile, then `cutover plan` on what it wrote; and the
//! completion scripts and man page.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::docker::free_port;

fn cutover(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .current_dir(dir)
        .env_remove("CUTOVER_CONFIG")
        // Not a terminal: init must never wait for an answer here.
        .stdin(Stdio::null())
        .output()
        .expect("run cutover")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A repository like a user's: its app's Dockerfile one directory down.
fn repository(name: &str, dockerfile: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = root.path().join(name);
    std::fs::create_dir_all(repo.join("app")).expect("mkdir");
    std::fs::write(repo.join("app/Dockerfile"), dockerfile).expect("Dockerfile");
    (root, repo)
}

#[test]
fn init_in_a_repository_writes_a_config_that_plan_accepts_and_never_overwrites_it() {
    let (_root, repo) = repository(
        "Shop Web",
        "FROM scratch\nCOPY app /app\nEXPOSE 3000/tcp\nENTRYPOINT [\"/app\"]\n",
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let out = cutover(&repo, &["init", "--health", "/up", "--listen", &listen]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let written = std::fs::read_to_string(repo.join("cutover.toml")).expect("cutover.toml");
    for wanted in [
        "service = \"shop-web\"",
        "build = { context = \"app\", dockerfile = \"Dockerfile\" }",
        "port = 3000",
        "path = \"/up\"",
        &format!("listen = \"{listen}\""),
    ] {
        assert!(
            written.contains(wanted),
            "{wanted:?} missing in:\n{written}"
        );
    }
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cutover plan"),
        "init says what to run next: {}",
        text(&out)
    );

    let plan = cutover(&repo, &["plan"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("shop-web"),
        "{}",
        text(&plan)
    );

    std::fs::write(repo.join("cutover.toml"), "# my tuning\n").expect("edit");
    let again = cutover(&repo, &["init"]);
    assert_eq!(again.status.code(), Some(5), "{}", text(&again));
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    assert_eq!(
        std::fs::read_to_string(repo.join("cutover.toml")).unwrap(),
        "# my tuning\n",
        "an existing config is never overwritten"
    );
}

#[test]
fn init_without_expose_and_without_a_terminal_asks_for_the_flag_and_writes_nothing() {
    let (_root, repo) = repository("api", "FROM scratch\nCOPY app /app\n");
    let out = cutover(&repo, &["init"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("--port"), "{}", text(&out));
    assert!(!repo.join("cutover.toml").exists());

    let out = cutover(&repo, &["init", "--port", "9000"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let written = std::fs::read_to_string(repo.join("cutover.toml")).unwrap();
    assert!(written.contains("port = 9000"), "{written}");
}

#[test]
fn init_external_prints_the_include_lines_and_writes_the_external_variant() {
    let (_root, repo) = repository("blog", "FROM scratch\nEXPOSE 8080\n");
    let out = cutover(&repo, &["init", "--external"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("include /etc/nginx/conf.d/blog/blog-url.inc;")
            && stdout.contains("proxy_pass $service_url;"),
        "{}",
        text(&out)
    );
    let written = std::fs::read_to_string(repo.join("cutover.toml")).unwrap();
    assert!(written.contains("mode = \"external\""), "{written}");
    // The written file loads as a config (plan would need the user's nginx dir).
    cutover::config::Config::load(&repo.join("cutover.toml")).expect("loads");
}

#[test]
fn completions_for_bash_zsh_and_fish_and_the_man_page_name_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef cutover"),
        ("fish", "complete -c cutover"),
    ] {
        let out = cutover(dir.path(), &["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {marker:?} missing");
        for command in ["deploy", "rollback", "init", "promote"] {
            assert!(script.contains(command), "{shell}: {command} missing");
        }
    }
    // The bash script is valid bash.
    let script = cutover(dir.path(), &["completions", "bash"]).stdout;
    let file = dir.path().join("cutover.bash");
    std::fs::write(&file, script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "{}", text(&check));

    let man = cutover(dir.path(), &["man"]);
    assert_eq!(man.status.code(), Some(0), "{}", text(&man));
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH cutover"),
        "{page}"
    );
    for command in ["deploy", "rollback", "status", "init"] {
        assert!(page.contains(command), "man page: {command} missing");
    }
}

#[test]
fn completions_and_the_man_page_into_a_closed_pipe_end_quietly() {
    // `cutover man | head -1` closes the pipe early: the writer must stop without a
    // panic. Closing the read end before the child writes makes that certain.
    let dir = tempfile::tempdir().unwrap();
    for args in [&["man"][..], &["completions", "zsh"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cutover");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out));
    }
}

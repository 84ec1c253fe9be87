//! Release hooks (`[[hook]]`) and `cutover exec`, through the built binary on real
//! Docker and nginx: hello's `migrate` mode writes a schema version to a volume, and
//! hello v2 with `HELLO_SCHEMA_MIN = 2` is unhealthy until it is there, so only a
//! migration that ran before the switch lets v2 go live.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::load::{Load, LoadConfig};
use crate::support::service::{Output, Service};

/// A service whose containers mount `<tmp>/db` at `/data` and need schema `min`.
fn with_schema(prefix: &str, min: u32) -> (Service, PathBuf) {
    let svc = Service::new(prefix);
    let db = svc.dir.path().join("db");
    std::fs::create_dir_all(&db).unwrap();
    let volume = format!("volumes = [\"{}:/data\"]\n", db.display());
    svc.edit_config(|text| {
        text.replace(
            "stop_grace = \"5s\"\n",
            &format!("stop_grace = \"5s\"\n{volume}"),
        )
    });
    svc.set_container_env("HELLO_SCHEMA_FILE", "/data/schema");
    set_schema_min(&svc, min);
    // The database as v1 found it.
    std::fs::write(db.join("schema"), "1\n").unwrap();
    (svc, db)
}

fn set_schema_min(svc: &Service, min: u32) {
    svc.edit_config(|text| {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("HELLO_SCHEMA_MIN"))
            .collect();
        (kept.join("\n") + "\n").replace(
            "[container.env]\n",
            &format!("[container.env]\nHELLO_SCHEMA_MIN = \"{min}\"\n"),
        )
    });
}

/// Replaces every `[[hook]]` with `hooks`.
fn set_hooks(svc: &Service, hooks: &str) {
    svc.edit_config(|text| {
        let head = text
            .split("\n[[hook]]")
            .next()
            .unwrap()
            .trim_end()
            .to_owned();
        format!("{head}\n{hooks}")
    });
}

fn migrate_hook(to: u32, extra: &str) -> String {
    format!(
        "\n[[hook]]\nname = \"migrate\"\nwhen = \"before-switch\"\ncontainer = [\"migrate\", \"--to\", \"{to}\", \"--db\", \"/data\"{extra}]\n"
    )
}

fn schema(db: &Path) -> String {
    std::fs::read_to_string(db.join("schema"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn runs(db: &Path) -> Vec<String> {
    std::fs::read_to_string(db.join("runs"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The one-off containers of `svc` (any state).
fn one_offs(svc: &Service) -> Vec<String> {
    svc.containers()
        .into_iter()
        .filter(|c| c.contains("-run-"))
        .collect()
}

fn events(out: &Output) -> Vec<Value> {
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Where in `events` the first event `kind` of step `step` is.
fn position(events: &[Value], kind: &str, step: &str) -> usize {
    events
        .iter()
        .position(|e| e["event"] == kind && e["step"] == step)
        .unwrap_or_else(|| panic!("no {kind} of {step} in {events:#?}"))
}

#[test]
fn a_before_switch_migration_runs_under_load_before_green_takes_traffic() {
    let (svc, db) = with_schema("hook-migrate", 1);
    svc.append_config(&migrate_hook(1, ""));
    svc.deploy("v1").success();
    assert_eq!(schema(&db), "1");
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");

    // v2 needs schema 2; without its migration it would never be healthy.
    set_schema_min(&svc, 2);
    set_hooks(&svc, &migrate_hook(2, ", \"--sleep-ms\", \"1500\""));
    let load = Load::start(LoadConfig {
        max_duration: Duration::from_secs(120),
        ..LoadConfig::new(svc.proxy_addr())
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = svc
        .cutover(&["--output", "json", "deploy", "--build-arg", "VERSION=v2"])
        .success();
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    report.assert_none_failed();

    assert_eq!(schema(&db), "2");
    assert_eq!(
        runs(&db),
        ["to 1 by blue", "to 2 by green"],
        "each migration ran once"
    );
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
    // The migration ran once green was started and ended before its health check
    // (which needs schema 2) and before the switch; its output streamed as it ran.
    let events = events(&out);
    let hook_done = position(&events, "step-finished", "hook:migrate");
    assert!(hook_done > position(&events, "step-finished", "start"));
    assert!(hook_done < position(&events, "step-started", "health"));
    assert!(hook_done < position(&events, "step-started", "switch"));
    assert!(
        events.iter().any(|e| e["event"] == "log"
            && e["source"] == "hook:migrate"
            && e["message"] == "schema is at 2"),
        "{events:#?}"
    );
    assert!(one_offs(&svc).is_empty(), "{:?}", svc.containers());
    // The step is in the audit log as the others are.
    let history = svc.cutover(&["--output", "json", "history"]).success();
    assert!(
        history.stdout.contains("\"step\":\"hook:migrate\""),
        "{}",
        history.stdout
    );
}

#[test]
fn a_failing_or_timed_out_migration_fails_the_deploy_with_its_output_and_blue_keeps_serving() {
    let (svc, db) = with_schema("hook-fails", 1);
    svc.deploy("v1").success();
    set_schema_min(&svc, 2);

    set_hooks(&svc, &migrate_hook(2, ", \"--exit\", \"3\""));
    let out = svc.deploy("v2").code(4);
    assert!(
        out.stderr
            .contains("release hook `migrate` exited with code 3")
            && out.stderr.contains("migration to 2 failed (--exit 3)"),
        "the error names the hook and shows its last lines:\n{}",
        out.stderr
    );
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    assert_eq!(schema(&db), "1", "nothing was migrated");
    assert!(one_offs(&svc).is_empty(), "{:?}", svc.containers());
    assert!(
        !svc.containers().iter().any(|c| c.contains("-green ")),
        "what the deploy started is removed: {:?}",
        svc.containers()
    );

    set_hooks(
        &svc,
        &(migrate_hook(2, ", \"--sleep-ms\", \"30000\"") + "timeout = \"2s\"\n"),
    );
    let started = Instant::now();
    let out = svc.deploy("v2").code(4);
    assert!(
        out.stderr
            .contains("release hook `migrate` timed out after 2s")
            && out.stderr.contains("migrating /data/schema from 1 to 2"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    assert!(one_offs(&svc).is_empty(), "{:?}", svc.containers());
    let status = svc.status();
    assert_eq!(status["live"]["color"], "blue", "{status:#}");
}

#[test]
fn a_runner_killed_during_a_hook_leaves_a_container_that_recover_removes_without_rerunning_it() {
    let (svc, db) = with_schema("hook-killed", 1);
    svc.deploy("v1").success();
    set_schema_min(&svc, 2);
    set_hooks(&svc, &migrate_hook(2, ", \"--sleep-ms\", \"60000\""));
    let mut run = svc.spawn_deploy("v2");
    let deadline = Instant::now() + Duration::from_secs(90);
    while runs(&db).is_empty() {
        assert!(Instant::now() < deadline, "the hook never started");
        assert!(run.ended().is_none(), "the deploy ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    run.kill();
    let _ = run.wait();
    assert_eq!(
        one_offs(&svc).len(),
        1,
        "the hook's container outlives the runner"
    );

    let out = svc.cutover(&["recover"]).success();
    assert!(
        out.stderr
            .contains("`hook:migrate` was cut short and not run again"),
        "{}",
        out.stderr
    );
    assert!(one_offs(&svc).is_empty(), "{:?}", svc.containers());
    assert_eq!(runs(&db).len(), 1, "recover never re-runs a migration");
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    let status = svc.status();
    assert_eq!(status["live"]["color"], "blue", "{status:#}");
    assert!(status["in_progress"].is_null(), "{status:#}");
    let state: Value = serde_json::from_slice(&std::fs::read(svc.state_file()).unwrap()).unwrap();
    let last = state["deploys"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["outcome"], "interrupted", "{last:#}");
}

#[test]
fn local_hooks_get_the_deploys_facts_and_an_after_switch_failure_only_warns() {
    let svc = Service::new("hook-local");
    let script = svc.base.join("hook.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nenv | grep '^CUTOVER_' | sort > \"$1\"\necho \"$0 $*\" > \"$1.argv\"\necho hook ran for $CUTOVER_COLOR\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let before = svc.dir.path().join("before.env");
    svc.append_config(&format!(
        "\n[[hook]]\nname = \"facts\"\nwhen = \"before-start\"\nlocal = [\"./hook.sh\", \"{}\"]\n\
         \n[[hook]]\nname = \"tell\"\nwhen = \"after-switch\"\nlocal = [\"false\"]\n",
        before.display()
    ));
    svc.deploy("v1").success();
    let out = svc.deploy("v2").success();
    assert!(
        out.stderr.contains("[hook:facts] hook ran for green"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("release hook `tell` exited with code 1")
            && out.stderr.contains("on_failure = \"warn\""),
        "an after-switch failure is a warning:\n{}",
        out.stderr
    );
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");

    let env = std::fs::read_to_string(&before).unwrap();
    let state: Value = serde_json::from_slice(&std::fs::read(svc.state_file()).unwrap()).unwrap();
    let live = &state["live"];
    for expected in [
        format!("CUTOVER_SERVICE={}", svc.name),
        "CUTOVER_COLOR=green".to_owned(),
        "CUTOVER_PREVIOUS_COLOR=blue".to_owned(),
        format!("CUTOVER_DEPLOY_ID={}", live["deploy_id"].as_str().unwrap()),
        format!("CUTOVER_IMAGE={}", live["image_ref"].as_str().unwrap()),
        "CUTOVER_OPERATION=deploy".to_owned(),
    ] {
        assert!(
            env.lines().any(|l| l == expected),
            "{expected} not in\n{env}"
        );
    }
    assert!(env.contains("CUTOVER_GIT_SHA="), "{env}");
    // The argv is the config's, nothing added.
    let argv = std::fs::read_to_string(before.with_extension("env.argv")).unwrap();
    assert!(
        argv.trim()
            .ends_with(&format!("/hook.sh {}", before.display())),
        "{argv}"
    );
}

#[test]
fn exec_runs_a_command_in_a_one_off_copy_of_the_live_colour_and_returns_its_code() {
    let (svc, db) = with_schema("hook-exec", 1);
    let out = svc.cutover(&["exec", "--", "migrate", "--to", "1"]).code(4);
    assert!(out.stderr.contains("no colour is live"), "{}", out.stderr);

    svc.deploy("v1").success();
    let out = svc
        .cutover(&["exec", "--", "migrate", "--to", "5", "--db", "/data"])
        .success();
    assert!(out.stdout.contains("schema is at 5"), "{}", out.stdout);
    assert_eq!(schema(&db), "5");
    // It ran with the live colour's environment.
    assert_eq!(runs(&db), ["to 5 by blue"]);

    let out = svc.cutover(&[
        "exec", "--", "migrate", "--to", "6", "--db", "/data", "--exit", "7",
    ]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(one_offs(&svc).is_empty(), "{:?}", svc.containers());
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    let docker = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=cutover.service={}", svc.name),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&docker.stdout).lines().count(), 1);
}

#[test]
fn on_a_swarm_a_container_hook_runs_once_in_the_cluster_by_digest() {
    use crate::support::swarm::{cluster, exclusive};
    let cluster = cluster();
    let _serial = exclusive();
    let svc = cluster.service("swarm-hook", 0, "", "");
    // The image is FROM scratch: its root is the one writable directory there is.
    svc.append_config(
        "\n[[hook]]\nname = \"migrate\"\nwhen = \"before-switch\"\ncontainer = [\"migrate\", \"--to\", \"2\", \"--db\", \"/\"]\ntimeout = \"3m\"\n",
    );
    let out = svc
        .cutover_env(&["deploy", "--build-arg", "VERSION=v1"], &cluster.env())
        .success();
    let ran: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("[hook:migrate] migrating //schema from 0 to 2"))
        .collect();
    assert_eq!(ran.len(), 1, "once, not once per node:\n{}", out.stderr);
    let job = out
        .stderr
        .lines()
        .find(|l| l.contains("[hook:migrate] one-off job"))
        .unwrap_or_else(|| panic!("{}", out.stderr));
    assert!(job.contains("@sha256:"), "by digest: {job}");
    assert!(out.stderr.contains("✓ hook:migrate"), "{}", out.stderr);
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    // The job's service is gone; the colour's stays.
    let services = cluster.nodes[0]
        .docker(&["service", "ls", "--format", "{{.Name}}"])
        .output()
        .unwrap();
    let services = String::from_utf8_lossy(&services.stdout);
    assert!(
        services.contains(&format!("{}-blue", svc.name)),
        "{services}"
    );
    assert!(
        !services.contains(&format!("{}-run-", svc.name)),
        "{services}"
    );
}

#[test]
fn exec_on_a_terminal_gives_the_command_a_tty_and_the_keystrokes() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let (svc, _db) = with_schema("hook-tty", 1);
    svc.deploy("v1").success();
    // util-linux's `script` runs cutover on a pseudo-terminal it owns, as a person's
    // shell would, and passes what the test writes on as keystrokes.
    let command = format!(
        "{} --config {} exec -- console",
        env!("CARGO_BIN_EXE_cutover"),
        svc.config_path().display()
    );
    let mut script = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env(
            "CUTOVER_CACHE_DIR",
            crate::support::service::plugin_cache_dir(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let mut stdout = script.stdout.take().unwrap();
    let (seen, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buffer) {
            let _ = seen.send(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    });
    let mut text = String::new();
    let wait_for = |needle: &str, text: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !text.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match got.recv_timeout(left) {
                Ok(chunk) => text.push_str(&chunk),
                Err(_) => panic!("no {needle:?} in:\n{text}"),
            }
        }
    };
    wait_for("hello console (tty: yes)", &mut text);
    let mut keys = script.stdin.take().unwrap();
    keys.write_all(b"ping\r").unwrap();
    wait_for("echo: ping", &mut text);
    keys.write_all(b"exit\r").unwrap();
    wait_for("bye", &mut text);
    let status = script.wait().unwrap();
    assert!(status.success(), "{status}\n{text}");
    assert!(one_offs(&svc).is_empty(), "{:?}", svc.containers());
}

#[test]
fn rollback_runs_before_hooks_only_when_they_opt_in() {
    let svc = Service::new("hook-rollback");
    let hook = "\n[[hook]]\nname = \"note\"\nwhen = \"before-start\"\nlocal = [\"sh\", \"-c\", \"echo $CUTOVER_OPERATION $CUTOVER_COLOR >> ops.log\"]\n";
    svc.append_config(hook);
    let ops = || std::fs::read_to_string(svc.base.join("ops.log")).unwrap_or_default();
    svc.deploy("v1").success();
    svc.deploy("v2").success();
    assert_eq!(ops(), "deploy blue\ndeploy green\n");

    let out = svc.cutover(&["rollback"]).success();
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    assert_eq!(
        ops(),
        "deploy blue\ndeploy green\n",
        "not by default:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("hook:note"), "{}", out.stderr);

    svc.append_config("on_rollback = true\n");
    let out = svc.cutover(&["rollback"]).success();
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
    assert_eq!(ops(), "deploy blue\ndeploy green\nrollback green\n");
    assert!(out.stderr.contains("✓ hook:note"), "{}", out.stderr);
}

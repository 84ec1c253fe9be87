//! Environment faults, end to end: each test deploys v1 (blue serves through a real
//! nginx), breaks one thing the way a half-broken host would, runs the real `cutover
//! deploy`, and checks the documented exit code, that the message names the cause,
//! and that nothing that was serving changed (`Service::assert_unchanged`: the same
//! answer through nginx, byte-identical proxy files, the same live container, a
//! status report without problems).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cutover::cli::exit;

use crate::support::hello_context;
use crate::support::load::{Load, LoadConfig, LoadReport};
use crate::support::nginx::{ExternalNginx, Immutable, fill_up};
use crate::support::service::{Output, Service};

/// A service with v1 deployed to blue and serving.
fn serving(prefix: &str) -> Service {
    let svc = Service::new(prefix);
    svc.deploy("v1").success();
    svc
}

#[track_caller]
fn assert_mentions(out: &Output, needles: &[&str]) {
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "the message should mention {needle:?}:\n{}",
            out.stderr
        );
    }
}

/// Sets `key = value` in the `[section]` table of the config (the table must exist).
fn set_in(svc: &Service, section: &str, line: &str) {
    let header = format!("[{section}]\n");
    svc.edit_config(|text| {
        assert!(text.contains(&header), "the config has {header}");
        text.replacen(&header, &format!("{header}{line}\n"), 1)
    });
}

/// Light steady load on `/` through nginx, with slow requests in flight.
fn light_load(svc: &Service) -> Load {
    let target: SocketAddr = ([127, 0, 0, 1], svc.listen).into();
    let load = Load::start(LoadConfig {
        fast_rate: 100,
        fast_connections: 2,
        slow_connections: 2,
        slow_ms: (500, 1500),
        max_duration: Duration::from_secs(120),
        ..LoadConfig::new(target)
    });
    std::thread::sleep(Duration::from_millis(300));
    load
}

#[track_caller]
fn assert_no_request_failed(report: &LoadReport) {
    report.assert_none_failed();
    assert!(report.samples.len() > 50, "the load ran");
}

#[test]
fn docker_socket_unreachable_exits_7_naming_the_socket() {
    let svc = serving("f-docker");
    let before = svc.baseline();
    // A socket file nobody listens on any more: connecting is refused.
    let dead = tempfile::tempdir().unwrap();
    let socket = dead.path().join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let host = format!("unix://{}", socket.display());

    let out = svc
        .cutover_env(&["deploy"], &[("DOCKER_HOST", &host)])
        .code(exit::ENVIRONMENT.into());
    assert_mentions(&out, &["cannot reach the Docker engine", &host]);
    assert_mentions(&out, &["DOCKER_HOST"]);
    // Nothing ran: the last record is still v1's deploy.
    svc.assert_unchanged(&before, &["succeeded"]);
}

#[test]
fn nginx_binary_missing_exits_7_and_blue_keeps_serving() {
    let svc = serving("f-nonginx");
    let before = svc.baseline();
    set_in(&svc, "proxy", "nginx = \"/nonexistent/nginx\"");

    let out = svc.deploy("v2").code(exit::ENVIRONMENT.into());
    assert_mentions(&out, &["/nonexistent/nginx", "apt-get install nginx"]);
    // `failed` while the missing nginx is found at validate (after the new colour
    // started and was removed again); v1's `succeeded` once a preflight refuses
    // before a run begins.
    svc.assert_unchanged(&before, &["failed", "succeeded"]);
}

#[test]
fn nginx_binary_missing_is_found_before_any_container_starts() {
    let svc = serving("f-nonginx-early");
    set_in(&svc, "proxy", "nginx = \"/nonexistent/nginx\"");
    let out = svc
        .cutover(&["--output", "json", "deploy"])
        .code(exit::ENVIRONMENT.into());
    let started: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "step-started")
        .map(|e| e["step"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        !started.iter().any(|s| s == "image" || s == "start"),
        "a missing nginx must stop the deploy before it builds or starts anything; steps begun: {started:?}\n{}",
        out.stdout
    );
}

#[test]
fn nginx_config_test_failure_puts_the_files_back_and_exits_4() {
    let svc = serving("f-conftest");
    let before = svc.baseline();
    // Valid for the template plugin, rejected by `nginx -t`: the include sits in a
    // `location` block, where `events` is not allowed.
    svc.append_config(
        r#"
[plugins.proxy-template]
source = "builtin:nginx-service-url"
config = { template = "events { worker_connections {{port}}; }" , template_file = "zz-bad.conf" }
"#,
    );
    let out = svc.deploy("v2").code(exit::DEPLOY_FAILED.into());
    assert_mentions(
        &out,
        &["config test", "events", "previous files were put back"],
    );
    assert!(
        !svc.conf_d.join("zz-bad.conf").exists(),
        "a file that did not exist before is removed again"
    );
    svc.assert_unchanged(&before, &["failed"]);
}

/// `sh -c` that fails (once, while `marker` exists) before running the real reload.
fn reload_failing_while(marker: &std::path::Path, real: Vec<String>) -> Vec<String> {
    let mut argv = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        "m=$1; shift; if [ -e \"$m\" ]; then rm -f \"$m\"; echo 'reload refused by the test' >&2; exit 1; fi; exec \"$@\"".to_owned(),
        "reload".to_owned(),
        marker.display().to_string(),
    ];
    argv.extend(real);
    argv
}

#[test]
fn failed_reload_in_external_mode_is_rolled_back_and_exits_4() {
    let mut svc = Service::new("f-reload");
    let nginx = ExternalNginx::start(([127, 0, 0, 1], svc.blue).into());
    let marker = nginx.dir.path().join("fail-next-reload");
    svc.use_external(
        &nginx,
        &reload_failing_while(&marker, nginx.argv(&["-s", "reload"])),
    );
    svc.deploy("v1").success();
    let before = svc.baseline();
    let load = light_load(&svc);

    std::fs::write(&marker, "").unwrap();
    let out = svc.deploy("v2").code(exit::DEPLOY_FAILED.into());
    let report = load.stop();
    assert_mentions(
        &out,
        &["reload refused by the test", "proxy.reload_command"],
    );
    assert!(!marker.exists(), "the reload ran");
    svc.assert_unchanged(&before, &["rolled-back"]);
    assert_no_request_failed(&report);
}

#[test]
fn reload_command_that_always_fails_is_rolled_back_and_exits_4() {
    let mut svc = Service::new("f-reload-always");
    let nginx = ExternalNginx::start(([127, 0, 0, 1], svc.blue).into());
    svc.use_external(&nginx, &nginx.argv(&["-s", "reload"]));
    svc.deploy("v1").success();
    let before = svc.baseline();
    let broken = [
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        "echo 'reload refused by the test' >&2; exit 1".to_owned(),
    ];
    svc.edit_config(|text| {
        let start = text.find("reload_command = ").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        format!(
            "{}reload_command = {broken:?}{}",
            &text[..start],
            &text[end..]
        )
    });
    let out = svc.deploy("v2").code(exit::DEPLOY_FAILED.into());
    assert_mentions(&out, &["reload refused by the test"]);
    svc.assert_unchanged(&before, &["rolled-back"]);
}

#[test]
fn host_port_taken_exits_4_naming_the_port() {
    let svc = serving("f-port");
    let before = svc.baseline();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", svc.green)).unwrap();

    let out = svc.deploy("v2").code(exit::DEPLOY_FAILED.into());
    assert_mentions(
        &out,
        &[
            &format!("127.0.0.1:{}", svc.green),
            "already in use",
            "host_port",
        ],
    );
    drop(squatter);
    svc.assert_unchanged(&before, &["failed"]);
}

#[test]
fn image_build_failure_exits_4_with_the_builders_message() {
    let svc = serving("f-build");
    let before = svc.baseline();
    let context = tempfile::tempdir().unwrap();
    std::fs::copy(hello_context().join("hello"), context.path().join("hello")).unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello /hello\nCOPY no-such-file-in-context /x\n",
    )
    .unwrap();
    svc.edit_config(|text| {
        text.replace(
            &format!("context = \"{}\"", hello_context().display()),
            &format!("context = \"{}\"", context.path().display()),
        )
    });

    let out = svc.deploy("v2").code(exit::DEPLOY_FAILED.into());
    assert_mentions(
        &out,
        &["building image", "no-such-file-in-context", "Dockerfile"],
    );
    svc.assert_unchanged(&before, &["failed"]);
}

#[test]
fn app_that_exits_right_after_start_fails_with_its_last_log_lines() {
    let svc = serving("f-exit");
    let before = svc.baseline();
    svc.set_container_env("HELLO_EXIT_AFTER_MS", "1");

    let out = svc.deploy("v2").code(exit::DEPLOY_FAILED.into());
    assert_mentions(&out, &["stopped running", "exiting with code 3"]);
    svc.assert_unchanged(&before, &["failed"]);
}

#[test]
fn health_that_never_passes_fails_at_the_deadline() {
    let svc = serving("f-deadline");
    let before = svc.baseline();
    svc.set_container_env("HELLO_HEALTH", "fail");
    svc.edit_config(|text| text.replace("deadline = \"15s\"", "deadline = \"3s\""));

    let started = Instant::now();
    let out = svc.deploy("v2").code(exit::DEPLOY_FAILED.into());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the deadline bounds the wait: {:?}",
        started.elapsed()
    );
    assert_mentions(&out, &["not healthy within 3s", "503", "health.deadline"]);
    svc.assert_unchanged(&before, &["failed"]);
}

#[test]
fn health_that_fails_during_verify_is_rolled_back() {
    let svc = serving("f-verify");
    let before = svc.baseline();
    // Healthy for the first probe, then /health answers 503: verify (through nginx,
    // on /health) sees the failure after the switch.
    svc.set_container_env("HELLO_HEALTH_FAIL_AFTER", "1");
    set_in(
        &svc,
        "verify",
        &format!(
            "url = \"http://127.0.0.1:{}/health\"\ntimeout = \"2s\"",
            svc.listen
        ),
    );
    let load = light_load(&svc);

    let out = svc.deploy("v2").code(exit::DEPLOY_FAILED.into());
    let report = load.stop();
    assert_mentions(&out, &["restoring the previous proxy config", "503"]);
    svc.assert_unchanged(&before, &["rolled-back"]);
    assert_no_request_failed(&report);
}

#[test]
fn full_disk_keeps_the_previous_proxy_file_and_blue_serving() {
    let mut svc = Service::new("f-enospc");
    let nginx = ExternalNginx::start_with(([127, 0, 0, 1], svc.blue).into(), Some("64k"));
    svc.use_external(&nginx, &nginx.argv(&["-s", "reload"]));
    svc.deploy("v1").success();
    fill_up(&nginx.conf_d);
    // The filler is not a rendered file: it stays out of the comparison.
    let mut before = svc.baseline();
    before.files.remove("zz-filler");

    let out = svc.deploy("v2").code(exit::ENVIRONMENT.into());
    assert_mentions(
        &out,
        &[
            "service-url.inc",
            "No space left on device",
            "previous contents are unchanged",
        ],
    );
    std::fs::remove_file(nginx.conf_d.join("zz-filler")).unwrap();
    svc.assert_unchanged(&before, &["failed"]);
}

#[test]
fn unwritable_proxy_directory_keeps_the_previous_file_and_blue_serving() {
    let svc = serving("f-diskfull");
    let before = svc.baseline();
    let out = {
        let _locked = Immutable::set(&svc.conf_d);
        svc.deploy("v2")
    };
    let out = out.code(exit::ENVIRONMENT.into());
    assert_mentions(
        &out,
        &["service-url.inc", "previous contents are unchanged"],
    );
    svc.assert_unchanged(&before, &["failed"]);
}

/// Regression: a Docker outage during the health wait exited 4 ("deploy failed", the
/// Docker error flattened into a string) instead of 7 (environment).
#[test]
fn docker_outage_during_the_health_wait_exits_7_and_blue_keeps_serving() {
    let svc = serving("fault-docker-outage");
    // Green takes long enough to start that the wait is surely under way when the
    // link goes; the deadline is far beyond that.
    svc.set_container_env("HELLO_STARTUP_DELAY_MS", "20000");
    let link = crate::support::docker_link::DockerLink::start();
    let host = link.docker_host();
    let running = svc.spawn_env(
        &["deploy", "--build-arg", "VERSION=v2"],
        &[("DOCKER_HOST", host.as_str())],
    );
    let started = std::time::Instant::now();
    while !svc.containers().iter().any(|c| c.contains("-green ")) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "green never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    link.cut();
    let out = running.wait().code(7);
    assert_mentions(&out, &["Docker engine", "docker.sock", "cutover recover"]);
    let r = svc.get("/");
    assert!(r.body.contains("hello v1"), "blue still serves: {}", r.body);

    // Once the engine answers again, recovery removes what the deploy started.
    svc.cutover(&["recover"]).success();
    assert!(
        !svc.containers().iter().any(|c| c.contains("-green ")),
        "{:?}",
        svc.containers()
    );
}

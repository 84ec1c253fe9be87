//! End-to-end deploys: the real `cutover` binary, a real Docker engine running the
//! hello example, a real managed nginx, real HTTP on loopback.

use std::time::Duration;

use serde_json::Value;

use crate::support::service::Service;

#[test]
fn first_deploy_goes_to_blue_then_green_and_blue_is_retired() {
    let svc = Service::new("e2e-basic");

    svc.deploy("v1").success();
    let r = svc.get("/");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.trim(), "hello v1 from blue");
    assert_eq!(r.header("x-hello-color"), Some("blue"));
    let st = svc.status();
    assert_eq!(st["live"]["color"], "blue");
    assert_eq!(st["proxy"]["target"], "blue");
    assert_eq!(color_state(&st, "blue"), "running");
    assert_eq!(color_state(&st, "green"), "absent");
    assert!(st["problems"].as_array().unwrap().is_empty(), "{st}");

    svc.deploy("v2").success();
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
    let st = svc.status();
    assert_eq!(st["live"]["color"], "green");
    assert_eq!(st["previous"]["color"], "blue");
    assert_eq!(st["proxy"]["target"], "green");
    assert_eq!(color_state(&st, "green"), "running");
    assert_eq!(
        color_state(&st, "blue"),
        "exited",
        "blue is stopped after the drain"
    );
    assert!(st["problems"].as_array().unwrap().is_empty(), "{st}");
    let outcomes: Vec<_> = st["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["succeeded", "succeeded"]);
}

#[test]
fn app_that_never_gets_healthy_leaves_blue_serving_and_proxy_files_identical() {
    let svc = Service::new("e2e-unhealthy");
    svc.deploy("v1").success();
    let before = svc.proxy_files();

    svc.set_container_env("HELLO_HEALTH", "fail");
    let out = svc.deploy("v2").code(4);
    assert!(out.stderr.contains("health"), "{}", out.stderr);

    assert_eq!(
        svc.proxy_files(),
        before,
        "proxy files must be byte-identical"
    );
    let r = svc.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.trim(), "hello v1 from blue");
    let st = svc.status();
    assert_eq!(st["live"]["color"], "blue");
    assert_eq!(
        color_state(&st, "green"),
        "absent",
        "the failed colour is removed"
    );
    assert_eq!(st["recent"][1]["outcome"], "failed");
    assert!(st["problems"].as_array().unwrap().is_empty(), "{st}");
}

#[test]
fn config_that_fails_nginx_test_is_never_loaded() {
    let svc = Service::new("e2e-badconf");
    svc.deploy("v1").success();
    let before = svc.proxy_files();

    // A template the plugin accepts but nginx rejects.
    svc.append_config(
        r#"
[plugins.proxy-template]
source = "builtin:nginx-service-url"
config = { template = "no_such_directive {{upstream}};" }
"#,
    );
    let out = svc.deploy("v2").code(4);
    assert!(out.stderr.contains("no_such_directive"), "{}", out.stderr);
    assert_eq!(svc.proxy_files(), before);
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    assert_eq!(svc.status()["live"]["color"], "blue");
}

#[test]
fn concurrent_deploy_is_refused_naming_the_owner() {
    let svc = Service::new("e2e-lock");
    svc.set_container_env("HELLO_STARTUP_DELAY_MS", "4000");
    let first = svc.spawn_deploy("v1");
    // Wait until the first run holds the lock.
    svc.wait_for_lock_owner(Duration::from_secs(20));
    let second = svc.deploy("v1").code(6);
    assert!(second.stderr.contains("pid"), "{}", second.stderr);
    assert!(second.stderr.contains("--lock-wait"), "{}", second.stderr);
    let first = first.wait();
    assert_eq!(first.code, 0, "{}", first.stderr);
}

#[test]
fn rollback_returns_traffic_to_the_previous_color() {
    let svc = Service::new("e2e-rollback");
    svc.deploy("v1").success();
    svc.deploy("v2").success();
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");

    svc.cutover(&["rollback"]).success();
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    let st = svc.status();
    assert_eq!(st["live"]["color"], "blue");
    assert_eq!(st["previous"]["color"], "green");
    assert_eq!(color_state(&st, "blue"), "running");
    assert_eq!(color_state(&st, "green"), "exited");
    assert!(st["problems"].as_array().unwrap().is_empty(), "{st}");
}

#[test]
fn plan_changes_nothing() {
    let svc = Service::new("e2e-plan");
    svc.deploy("v1").success();
    let files = svc.proxy_files();
    let state = std::fs::read(svc.state_file()).unwrap();
    let containers = svc.containers();

    let out = svc.cutover(&["plan"]).success();
    assert!(out.stdout.contains("target  green"), "{}", out.stdout);
    assert!(out.stdout.contains("+set $service_url"), "{}", out.stdout);

    assert_eq!(svc.proxy_files(), files);
    assert_eq!(std::fs::read(svc.state_file()).unwrap(), state);
    assert_eq!(svc.containers(), containers);
}

#[test]
fn config_with_unknown_or_missing_key_names_the_key() {
    let svc = Service::new("e2e-config");
    svc.edit_config(|text| text.replace("interval = ", "intervall = "));
    let out = svc.cutover(&["deploy"]).code(5);
    assert!(out.stderr.contains("`health.intervall`"), "{}", out.stderr);
    assert!(out.stderr.contains("cutover.toml"), "{}", out.stderr);

    let svc = Service::new("e2e-config2");
    svc.edit_config(|text| text.replace("port = 8080\n", ""));
    let out = svc.cutover(&["deploy"]).code(5);
    assert!(out.stderr.contains("`container.port`"), "{}", out.stderr);
}

fn color_state(status: &Value, color: &str) -> String {
    status["colors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["color"] == color)
        .map(|c| c["state"].as_str().unwrap().to_owned())
        .unwrap()
}

#[test]
fn custom_example_plugin_replaces_a_default_in_a_real_deploy() {
    // The latency-p95 health policy from examples/plugins, built for wasm32-wasip2,
    // pinned by digest, replaces builtin:http-status.
    let wasm = crate::support::guests::guests().join("latency_p95.wasm");
    let digest = cutover::plugin::sha256_hex(&std::fs::read(&wasm).unwrap());
    let svc = Service::new("e2e-custom");
    svc.append_config(&format!(
        "\n[plugins.health-policy]\nsource = {:?}\nsha256 = \"{digest}\"\n\
         config = {{ window = 3, p95_ms = 250 }}\n",
        wasm.display().to_string()
    ));
    let out = svc.deploy("v1").success();
    // It needed a full window of three fast probes, and said so in the deploy log.
    assert!(
        out.stderr.contains("healthy after 3 probe(s)"),
        "{}",
        out.stderr
    );
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");

    // Its config is checked before anything starts: exit 5, nothing changed.
    svc.edit_config(|text| text.replace("p95_ms = 250", "p95_ms = 0"));
    let out = svc.deploy("v2").code(5);
    assert!(
        out.stderr.contains("`p95_ms` must be above 0"),
        "{}",
        out.stderr
    );
    // A policy that can never be met keeps the new colour out of traffic.
    svc.edit_config(|text| text.replace("p95_ms = 0", "p95_ms = 250, max_attempts = 2"));
    let out = svc.deploy("v2").code(4);
    assert!(
        out.stderr.contains("health policy gave up"),
        "{}",
        out.stderr
    );
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
}

/// Regression: `plan` drifted from `deploy`: it left the registry prefix off the image
/// and skipped the "never pick the colour that serves" check, so it could show a
/// target a deploy would refuse.
#[test]
fn plan_and_deploy_agree_on_target_image_and_files() {
    let password = format!("pw-{}", crate::support::unique_service("p"));
    let registry = crate::support::TestRegistry::start("cutover", &password);
    let svc = Service::new("e2e-plan-agree");
    let var = "CUTOVER_TEST_PLAN_PASSWORD";
    svc.use_registry(&registry, var);
    let env = [(var, password.as_str())];
    svc.cutover_env(&["deploy", "--build-arg", "VERSION=v1"], &env)
        .success();

    let plan = svc
        .cutover_env(&["plan", "--output", "json"], &env)
        .success();
    let plan: Value = serde_json::from_str(&plan.stdout).expect("plan JSON");
    let out = svc
        .cutover_env(
            &["deploy", "--build-arg", "VERSION=v2", "--output", "json"],
            &env,
        )
        .success();
    let st = svc.status();
    assert_eq!(plan["target"], st["live"]["color"], "{plan}\n{st}");
    // The same reference but for the deploy id, which only the deploy knows.
    let planned = plan["image"].as_str().unwrap();
    let deployed = st["live"]["image_ref"].as_str().unwrap();
    let (prefix, _) = planned
        .rsplit_once(cutover::plan::PLANNED_ID)
        .unwrap_or_else(|| panic!("planned image {planned:?} names the deploy id"));
    let prefix = prefix.rsplit_once(" as ").map_or(prefix, |(_, r)| r);
    assert!(
        prefix.starts_with(&format!("{}/", registry.addr)),
        "plan shows the registry prefix: {planned}"
    );
    assert!(deployed.starts_with(prefix), "{deployed} vs plan {planned}");
    // The files plan showed are the files deploy wrote.
    let written: String = svc
        .proxy_files()
        .into_values()
        .map(|f| String::from_utf8(f).unwrap())
        .collect();
    for added in plan["proxy_diff"]
        .as_str()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix('+'))
        .filter(|l| !l.starts_with("++"))
    {
        assert!(
            written.contains(added),
            "{added:?} not in {written}\n{}",
            out.stdout
        );
    }

    // With the state file lost, a selector that picks the colour nginx serves: plan
    // shows the refusal deploy would make, and deploy makes it.
    std::fs::remove_file(svc.state_file()).unwrap();
    svc.append_config(&crate::support::guests::plugin_table(
        "target-selector",
        "hostile_selector",
        "green",
    ));
    let plan = svc
        .cutover_env(&["plan", "--output", "json"], &env)
        .success();
    let plan: Value = serde_json::from_str(&plan.stdout).expect("plan JSON");
    assert!(plan["target"].is_null(), "{plan}");
    let refusal = plan["target_error"].as_str().unwrap();
    assert!(refusal.contains("serving traffic now"), "{refusal}");
    let out = svc
        .cutover_env(&["deploy", "--build-arg", "VERSION=v3"], &env)
        .code(4);
    assert!(out.stderr.contains("serving traffic now"), "{}", out.stderr);
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
}

/// Regression: a broken plugin that a command does not use blocked it: every command
/// loaded all four plugins, so a bad deploy-gate pin stopped `rollback`, `recover`
/// and `down`, the commands needed in an emergency.
#[test]
fn a_broken_gate_pin_does_not_block_rollback_recover_status_or_down() {
    let svc = Service::new("e2e-broken-gate");
    svc.deploy("v1").success();
    svc.deploy("v2").success();
    std::fs::write(svc.base.join("gate.wasm"), b"not the pinned plugin").unwrap();
    svc.append_config(&format!(
        "\n[plugins.deploy-gate]\nsource = \"gate.wasm\"\nsha256 = \"{}\"\n",
        "0".repeat(64)
    ));

    // The deploy calls the gate: refused as a config error, nothing changes.
    let out = svc.deploy("v3").code(5);
    assert!(out.stderr.contains("gate.wasm"), "{}", out.stderr);
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");

    // The others never call it.
    svc.cutover(&["rollback"]).success();
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    svc.cutover(&["recover"]).success();
    assert_eq!(svc.cutover(&["status"]).code, 0);
    svc.cutover(&["down"]).success();
    assert!(svc.containers().is_empty(), "{:?}", svc.containers());
}

/// Regression: `down` in external mode said "proxy stopped" while the user's nginx kept
/// running and routing to a port nothing listens on any more.
#[test]
fn down_in_external_mode_says_what_it_left_and_what_to_change() {
    let mut svc = Service::new("e2e-down-external");
    let nginx = crate::support::nginx::ExternalNginx::start(([127, 0, 0, 1], svc.blue).into());
    svc.use_external(&nginx, &nginx.argv(&["-s", "reload"]));
    svc.deploy("v1").success();
    let out = svc.cutover(&["down"]).success();
    assert!(!out.stderr.contains("proxy stopped"), "{}", out.stderr);
    assert!(
        out.stderr.contains("Your nginx still runs"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&nginx.conf_d.display().to_string()),
        "names the directory to clean: {}",
        out.stderr
    );
    // And it is true: cutover did not stop the user's nginx.
    assert!(
        crate::support::http_get(nginx.listen, "/", Duration::from_secs(5))
            .expect("the user's nginx still answers")
            .status
            >= 500,
        "nginx answers, with nothing behind it"
    );
}

#[test]
fn a_swarm_engine_that_is_no_manager_is_refused_before_anything_starts() {
    // This machine's own engine is not in swarm mode: the error says to point
    // `engine.host` at a manager, and nothing is built or started.
    let svc = Service::new("e2e-swarm-refused");
    svc.append_config("\n[engine]\nkind = \"swarm\"\n");
    let out = svc.deploy("v1").code(7);
    assert!(
        out.stderr.contains("not a Swarm manager") && out.stderr.contains("engine.host"),
        "{}",
        out.stderr
    );
    assert!(svc.containers().is_empty(), "nothing was started");
}

/// Regression: every line of `docker build` output went into `--output json` and
/// `events.jsonl`, and so into every dashboard's event stream, and a build argument may
/// be a secret. Build output now stays out unless `--verbose` asks, and then a
/// build argument's value is `***`.
#[test]
fn build_output_stays_out_of_json_and_the_event_log_unless_verbose_and_build_args_never_show() {
    let svc = Service::new("e2e-build-output");
    let events_file = svc.state_dir().join("events.jsonl");
    let secret = "sekrit-build-arg-4711";
    let is_build_line = |line: &&str| line.contains("\"source\":\"docker build\"");

    let out = svc
        .cutover(&[
            "--output",
            "json",
            "deploy",
            "--build-arg",
            "VERSION=v1",
            "--build-arg",
            &format!("TOKEN={secret}"),
        ])
        .success();
    let log = std::fs::read_to_string(&events_file).unwrap();
    for (what, text) in [("stdout", &out.stdout), ("events.jsonl", &log)] {
        assert!(!text.lines().any(|l| is_build_line(&l)), "{what}:\n{text}");
        assert!(!text.contains(secret), "{what}:\n{text}");
        assert!(text.contains("\"event\":\"finished\""), "{what}:\n{text}");
    }

    // With --verbose the build's lines are there, the argument's value in none of them
    // (the redaction itself is `docker::tests::build_arg_values_never_reach_the_build_output_or_its_tail`).
    let out = svc
        .cutover(&[
            "--verbose",
            "--output",
            "json",
            "deploy",
            "--build-arg",
            &format!("VERSION={secret}"),
        ])
        .success();
    let log = std::fs::read_to_string(&events_file).unwrap();
    for (what, text) in [("stdout", &out.stdout), ("events.jsonl", &log)] {
        assert!(
            text.lines().any(|l| is_build_line(&l)),
            "--verbose keeps build output in {what}:\n{text}"
        );
        let build_lines: Vec<&str> = text.lines().filter(is_build_line).collect();
        assert!(
            !build_lines.iter().any(|l| l.contains(secret)),
            "{what}: {build_lines:#?}"
        );
    }
}

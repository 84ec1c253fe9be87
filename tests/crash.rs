//! Crash safety: a deploy SIGKILLed before or after any step of the state machine
//! (the `fault-injection` feature) never interrupts the service, `status` tells the
//! truth about it, and the next run takes over the stale lock, reconciles, and
//! succeeds. Load runs through nginx the whole time and must lose nothing.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::support::load::{Load, LoadConfig, LoadReport};
use crate::support::service::{Output, Service};

/// Load light enough for many crash tests in parallel, with slow requests in flight.
fn light_load(svc: &Service) -> Load {
    let target: SocketAddr = ([127, 0, 0, 1], svc.listen).into();
    Load::start(LoadConfig {
        fast_rate: 50,
        fast_connections: 2,
        slow_connections: 1,
        slow_ms: (500, 1500),
        max_duration: Duration::from_secs(300),
        ..LoadConfig::new(target)
    })
}

#[track_caller]
fn assert_nothing_lost(report: &LoadReport) {
    report.assert_none_failed();
    assert!(!report.samples.is_empty(), "the load ran");
}

fn killed(out: &Output, point: &str) {
    assert_eq!(
        out.code, -1,
        "killed by a signal at {point}\n{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("fault injection: SIGKILL at {point}")),
        "{}",
        out.stderr
    );
}

fn serving_color(svc: &Service) -> String {
    let r = svc.get("/");
    assert_eq!(r.status, 200, "{}", r.body);
    r.header("x-hello-color").expect("colour header").to_owned()
}

fn problems(status: &Value) -> Vec<String> {
    status["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Deploys v1, kills the v2 deploy at `point`, checks the service and `status`,
/// then deploys v3 and checks it reconciled and succeeded.
fn killed_at(point: &str) {
    let step = point.split(':').nth(1).expect("when:step");
    let svc = Service::new(&format!("crash-{step}"));
    svc.deploy("v1").success();
    let load = light_load(&svc);

    let out = svc.cutover_env(
        &["deploy", "--build-arg", "VERSION=v2"],
        &[("CUTOVER_FAULT", point)],
    );
    killed(&out, point);

    // The service still answers, and status says exactly what is going on.
    let serving = serving_color(&svc);
    let status = svc.status();
    assert_eq!(status["interrupted"]["step"], step, "{status}");
    assert_eq!(status["proxy"]["target"], serving.as_str(), "{status}");
    assert!(
        problems(&status)
            .iter()
            .any(|p| p.contains("interrupted at")),
        "{status}"
    );
    assert!(
        status["lock_owner"].is_null(),
        "the lock died with its owner"
    );

    // The next deploy takes over the lock, reconciles, and deploys.
    let next = svc.deploy("v3").success();
    assert!(
        next.stderr.contains("took over the deploy lock"),
        "{}",
        next.stderr
    );
    assert!(next.stderr.contains("reconciling"), "{}", next.stderr);
    let r = svc.get("/");
    assert!(r.body.contains("hello v3"), "{}", r.body);

    let report = load.stop();
    assert_nothing_lost(&report);

    let status = svc.status();
    assert!(problems(&status).is_empty(), "{status}");
    assert!(status["interrupted"].is_null(), "{status}");
    let outcomes: Vec<&str> = status["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["succeeded", "interrupted", "succeeded"],
        "{status}"
    );
    // Exactly the live colour runs; the other is stopped or absent.
    let live = status["live"]["color"].as_str().unwrap().to_owned();
    for c in status["colors"].as_array().unwrap() {
        let running = c["state"] == "running";
        assert_eq!(running, c["color"] == live.as_str(), "{status}");
    }
}

macro_rules! crash_tests {
    ($($name:ident => $point:literal,)*) => {$(
        #[test]
        fn $name() {
            killed_at($point);
        }
    )*};
}

crash_tests! {
    killed_before_gate => "before:gate",
    killed_after_gate => "after:gate",
    killed_before_image => "before:image",
    killed_after_image => "after:image",
    killed_before_select => "before:select",
    killed_after_select => "after:select",
    killed_before_clear => "before:clear",
    killed_after_clear => "after:clear",
    killed_before_start => "before:start",
    killed_after_start => "after:start",
    killed_before_health => "before:health",
    killed_after_health => "after:health",
    killed_before_render => "before:render",
    killed_after_render => "after:render",
    killed_before_validate => "before:validate",
    killed_after_validate => "after:validate",
    killed_before_switch => "before:switch",
    killed_after_switch => "after:switch",
    killed_before_verify => "before:verify",
    killed_after_verify => "after:verify",
    killed_before_drain => "before:drain",
    killed_after_drain => "after:drain",
    killed_before_retire => "before:retire",
    killed_after_retire => "after:retire",
    killed_before_prune => "before:prune",
    killed_after_prune => "after:prune",
}

#[test]
fn recover_command_reconciles_without_deploying() {
    let svc = Service::new("crash-recover");
    svc.deploy("v1").success();
    let out = svc.cutover_env(
        &["deploy", "--build-arg", "VERSION=v2"],
        &[("CUTOVER_FAULT", "after:switch")],
    );
    killed(&out, "after:switch");
    let rec = svc.cutover(&["recover"]).success();
    assert!(
        rec.stderr.contains("took over the deploy lock"),
        "{}",
        rec.stderr
    );
    assert!(rec.stderr.contains("reconciled"), "{}", rec.stderr);
    let status = svc.status();
    assert!(problems(&status).is_empty(), "{status}");
    // The switch had happened and green was healthy: recovery finished it.
    assert_eq!(status["live"]["color"], "green", "{status}");
    assert_eq!(serving_color(&svc), "green");
    assert!(
        svc.cutover(&["recover"])
            .success()
            .stderr
            .contains("nothing to recover")
    );
}

#[test]
fn corrupt_state_file_is_reported_and_status_still_reads_reality() {
    let svc = Service::new("crash-corrupt");
    svc.deploy("v1").success();
    let bytes = std::fs::read(svc.state_file()).unwrap();
    std::fs::write(svc.state_file(), &bytes[..bytes.len() / 2]).unwrap();

    let status = svc.status();
    let problems = problems(&status);
    assert!(
        problems.iter().any(|p| p.contains("corrupt or truncated")),
        "{status}"
    );
    assert_eq!(status["proxy"]["target"], "blue", "{status}");
    let blue = &status["colors"][0];
    assert_eq!(blue["state"], "running", "{status}");
    assert_eq!(blue["health"], "healthy", "{status}");

    // A deploy refuses to act on a state it cannot read, and says what to do.
    let out = svc.deploy("v2").code(7);
    assert!(out.stderr.contains("cutover recover"), "{}", out.stderr);
    assert_eq!(serving_color(&svc), "blue");

    // Moving the file aside and recovering rebuilds the record from reality.
    std::fs::rename(svc.state_file(), svc.state_dir().join("state.json.bad")).unwrap();
    let rec = svc.cutover(&["recover"]).success();
    assert!(rec.stderr.contains("adopted blue"), "{}", rec.stderr);
    svc.deploy("v2").success();
    assert_eq!(serving_color(&svc), "green");
}

/// Regression: a rollback killed after it restarted the previous colour left that
/// container running after `recover` (a rollback that failed by itself stopped it).
#[test]
fn interrupted_rollback_leaves_no_restarted_container_running() {
    let svc = Service::new("crash-rollback");
    svc.deploy("v1").success();
    svc.deploy("v2").success();
    let out = svc.cutover_env(&["rollback"], &[("CUTOVER_FAULT", "before:health")]);
    killed(&out, "before:health");
    let status = svc.status();
    let blue = status["colors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["color"] == "blue")
        .cloned();
    assert_eq!(
        blue.unwrap()["state"],
        "running",
        "the rollback had restarted blue: {status}"
    );

    svc.cutover(&["recover"]).success();
    let status = svc.status();
    assert!(problems(&status).is_empty(), "{status}");
    assert_eq!(status["live"]["color"], "green", "{status}");
    assert_eq!(serving_color(&svc), "green");
    for c in status["colors"].as_array().unwrap() {
        assert_eq!(c["state"] == "running", c["color"] == "green", "{status}");
    }
    // And a later rollback still works: blue was stopped, not removed.
    svc.cutover(&["rollback"]).success();
    assert_eq!(serving_color(&svc), "blue");
}

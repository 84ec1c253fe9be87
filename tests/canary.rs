//! Canary deploys (`[strategy] kind = "canary"`) against a real Docker engine, the
//! managed nginx and real traffic: a bad and a slow release aborted by the analysis
//! plugin, a good one promoted through every step with nothing lost, a sticky split,
//! a human's `promote` and `abort` from a second process, and a runner killed
//! mid-canary recovered by `cutover recover`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::http_request;
use crate::support::load::{Load, LoadConfig, LoadReport, Sample};
use crate::support::service::{Baseline, Running, Service};

/// A service whose deploys are canaries with `steps`, plus `extra` `[strategy]` keys.
fn canary_service(prefix: &str, steps: &str, extra: &str) -> Service {
    let svc = Service::new(prefix);
    svc.append_config(&format!(
        "\n[strategy]\nkind = \"canary\"\nsteps = {steps}\n{extra}\n"
    ));
    svc
}

/// Sets the analysis plugin's config (the built-in default plugin).
fn analysis_config(svc: &Service, config: &str) {
    svc.append_config(&format!(
        "\n[plugins.rollout-analysis]\nsource = \"builtin:canary-analysis\"\nconfig = {config}\n"
    ));
}

fn last_history(svc: &Service) -> Value {
    let out = svc
        .cutover(&["history", "--output", "json", "--limit", "1"])
        .success();
    let entries: Vec<Value> = serde_json::from_str(&out.stdout).expect("history JSON");
    entries.into_iter().next_back().expect("a history entry")
}

/// The state file's running canary, once it waits for `cutover promote` at the step
/// `step_index` of `[strategy] steps`.
fn wait_for_manual_pause(
    svc: &Service,
    deploy: &mut Running,
    step_index: u64,
    within: Duration,
) -> Value {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(out) = deploy.ended() {
            panic!(
                "the deploy ended before its manual pause at step {step_index} (exit {}):\n{}",
                out.code, out.stderr
            );
        }
        if let Ok(text) = std::fs::read_to_string(svc.state_file())
            && let Ok(state) = serde_json::from_str::<Value>(&text)
            && state["in_progress"]["canary"]["waiting_for_promote"] == true
            && state["in_progress"]["canary"]["step_index"] == step_index
        {
            return state["in_progress"]["canary"].clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "the canary did not reach its manual pause at step {step_index} within {within:?}; state: {}",
        std::fs::read_to_string(svc.state_file()).unwrap_or_default()
    );
}

/// The manual canary's steps: two pauses, so a test can tell "past this pause" from
/// "past every pause".
const MANUAL_STEPS: &str = r#"["50%", "pause 1s", "80%", "pause 1s", "100%"]"#;

/// v1 live, then a deploy of v2 as a 50% canary that waits at the first of its two
/// manual pauses ([`MANUAL_STEPS`]): the service, what served before, and the
/// waiting deploy.
fn v2_waiting_at_a_manual_pause(prefix: &str) -> (Service, Baseline, Running) {
    let svc = canary_service(prefix, MANUAL_STEPS, "pause = \"manual\"");
    svc.deploy("v1").success();
    let before = svc.baseline();
    let mut deploy = svc.spawn_deploy("v2");
    wait_for_manual_pause(&svc, &mut deploy, 1, Duration::from_secs(120));
    (svc, before, deploy)
}

/// Requests a version answered, and the failures it did not cause itself.
struct Split<'a> {
    by_version: BTreeMap<u16, Vec<&'a Sample>>,
    /// Failed requests that no bad version answered with its own 500.
    lost: Vec<&'a Sample>,
}

fn split(report: &LoadReport, bad_version: Option<u16>) -> Split<'_> {
    let mut by_version: BTreeMap<u16, Vec<&Sample>> = BTreeMap::new();
    for s in &report.samples {
        if let Some(v) = s.version {
            by_version.entry(v).or_default().push(s);
        }
    }
    let lost = report
        .failed()
        .into_iter()
        .filter(|s| !(bad_version.is_some() && s.version == bad_version))
        .collect();
    Split { by_version, lost }
}

#[test]
fn a_release_that_fails_a_fifth_of_requests_is_aborted_at_its_first_step() {
    let svc = canary_service("e2e-canary-bad", r#"["20%", "pause 30s", "100%"]"#, "");
    svc.deploy("v1").success();
    let before = svc.baseline();
    svc.set_container_env("HELLO_ERROR_PERCENT", "20");

    let load = Load::start(LoadConfig {
        fast_rate: 150,
        fast_connections: 3,
        slow_connections: 1,
        slow_ms: (300, 800),
        max_duration: Duration::from_secs(120),
        ..LoadConfig::new(svc.proxy_addr())
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = svc.deploy("v2").code(4);
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();

    assert!(
        out.stderr.contains("canary aborted") && out.stderr.contains("5xx"),
        "{}",
        out.stderr
    );
    let split = split(&report, Some(2));
    assert!(
        split.lost.is_empty(),
        "requests failed beyond those v2 answered itself: {:?}",
        split.lost.iter().take(5).collect::<Vec<_>>()
    );
    let v2 = split.by_version.get(&2).map_or(&[][..], Vec::as_slice);
    assert!(!v2.is_empty(), "v2 took part of the traffic");
    // The share v2 got while it was in the split: the fast requests from its first to
    // its last answer.
    let (first, last) = (v2[0].at, v2[v2.len() - 1].at);
    let window: Vec<&Sample> = report
        .samples
        .iter()
        .filter(|s| !s.slow && s.at >= first && s.at <= last)
        .collect();
    let v2_fast = window.iter().filter(|s| s.version == Some(2)).count();
    let share = v2_fast as f64 / window.len().max(1) as f64;
    eprintln!(
        "bad canary: v2 answered {} requests ({} of them 500) over {:?}, {:.1}% of the {} fast requests in that window; {} requests in all",
        v2.len(),
        v2.iter().filter(|s| !s.ok()).count(),
        last - first,
        share * 100.0,
        window.len(),
        report.samples.len()
    );
    assert!(
        (0.08..=0.35).contains(&share),
        "v2's share stays near the step's 20%: {share:.3}"
    );
    assert!(
        last - first < Duration::from_secs(20),
        "aborted within the first pause, not at its end: {:?}",
        last - first
    );
    let entry = last_history(&svc);
    assert_eq!(entry["outcome"], "rolled-back", "{entry:#}");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap_or("")
            .contains("canary aborted"),
        "{entry:#}"
    );
    svc.assert_unchanged(&before, &["rolled-back"]);
}

#[test]
fn a_healthy_but_slow_release_is_aborted_by_latency() {
    let svc = canary_service("e2e-canary-slow", r#"["25%", "pause 30s", "100%"]"#, "");
    analysis_config(&svc, "{ max_p95_ms = 300, min_requests = 10 }");
    svc.deploy("v1").success();
    let before = svc.baseline();
    svc.set_container_env("HELLO_ROOT_DELAY_MS", "700");

    let load = Load::start(LoadConfig {
        fast_rate: 100,
        fast_connections: 8,
        slow_connections: 0,
        max_duration: Duration::from_secs(120),
        ..LoadConfig::new(svc.proxy_addr())
    });
    let out = svc.deploy("v2").code(4);
    let report = load.stop();
    assert!(
        out.stderr.contains("canary aborted") && out.stderr.contains("p95"),
        "{}",
        out.stderr
    );
    let split = split(&report, None);
    assert!(
        split.lost.is_empty(),
        "no request failed: {:?}",
        split.lost.iter().take(5).collect::<Vec<_>>()
    );
    assert!(split.by_version.contains_key(&2), "v2 took traffic");
    svc.assert_unchanged(&before, &["rolled-back"]);
}

#[test]
fn a_good_release_is_promoted_through_every_step_and_loses_nothing() {
    let svc = canary_service(
        "e2e-canary-good",
        r#"["10%", "pause 2s", "50%", "pause 2s", "100%"]"#,
        "",
    );
    // Slow requests are part of the load: the latency bound is about the app.
    analysis_config(&svc, "{ max_p95_ms = 10000, min_requests = 5 }");
    svc.deploy("v1").success();

    let load = Load::start(LoadConfig {
        fast_rate: 150,
        fast_connections: 3,
        slow_connections: 3,
        slow_ms: (1000, 3000),
        max_duration: Duration::from_secs(180),
        ..LoadConfig::new(svc.proxy_addr())
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = svc.deploy("v2").success();
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();

    let split = split(&report, None);
    assert!(
        split.lost.is_empty(),
        "{} of {} requests failed: {:?}",
        split.lost.len(),
        report.samples.len(),
        split.lost.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        report.slow_ok() >= 3,
        "slow requests completed: {}",
        report.slow_ok()
    );
    assert!(split.by_version.contains_key(&2) && split.by_version.contains_key(&1));
    assert!(out.stderr.contains("canary"), "{}", out.stderr);
    let entry = last_history(&svc);
    assert_eq!(entry["outcome"], "succeeded", "{entry:#}");
    let canary_steps = entry["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "canary")
        .count();
    assert_eq!(canary_steps, 4, "two weights and two pauses: {entry:#}");
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
}

/// A stand-in for a broken proxy: answers every request with a 502 that names
/// `upstream`, as nginx does when the backend it tried failed. Stops on drop.
struct BadGateway {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BadGateway {
    fn start(upstream: u16) -> BadGateway {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = stream.read(&mut [0u8; 4096]);
                let _ = write!(
                    stream,
                    "HTTP/1.1 502 Bad Gateway\r\nX-Cutover-Upstream: 127.0.0.1:{upstream}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        BadGateway { addr, stop }
    }
}

impl Drop for BadGateway {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_proxy_that_answers_5xx_or_not_at_all_fails_the_canary_split_check() {
    // A split check that let a broken proxy pass would go on to the pause, where the
    // analysis holds (no traffic reaches nginx) and the canary aborts with "still
    // held" at its end instead.
    let svc = canary_service(
        "e2e-canary-broken-proxy",
        r#"["50%", "pause 10s", "100%"]"#,
        "step_deadline = \"5s\"",
    );
    svc.deploy("v1").success();
    let before = svc.baseline();
    let verify_at = |url: &str| {
        svc.edit_config(|text| {
            let plain = text.replace(&verify_url_line(&text), "");
            plain.replace("[verify]\n", &format!("[verify]\nurl = \"{url}\"\n"))
        });
    };

    let nobody = format!("http://127.0.0.1:{}/", crate::support::free_port());
    verify_at(&nobody);
    let out = svc.deploy("v2").code(4);
    assert!(
        out.stderr.contains("requests through the proxy") && out.stderr.contains("did not answer"),
        "an unreachable proxy fails the 50% step: {}",
        out.stderr
    );

    let gateway = BadGateway::start(svc.green);
    verify_at(&format!("http://{}/", gateway.addr));
    let out = svc.deploy("v2").code(4);
    assert!(
        out.stderr.contains("requests through the proxy") && out.stderr.contains("answered 502"),
        "a proxy answering 502 fails the 50% step: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("not checked"), "{}", out.stderr);

    // `status` asks the proxy at verify.url too: ask the real one again.
    verify_at(&format!("http://{}/", svc.proxy_addr()));
    svc.assert_unchanged(&before, &["rolled-back"]);
}

/// The `url = ...` line of the config's `[verify]` table, or "" when it has none.
fn verify_url_line(config: &str) -> String {
    config
        .split_once("[verify]\n")
        .and_then(|(_, rest)| rest.lines().next())
        .filter(|line| line.starts_with("url = "))
        .map(|line| format!("{line}\n"))
        .unwrap_or_default()
}

#[test]
fn a_sticky_client_keeps_its_color_and_a_human_promotes_from_another_shell() {
    let svc = canary_service(
        "e2e-canary-sticky",
        r#"["30%", "pause 1s", "100%"]"#,
        "pause = \"manual\"\nsticky = { cookie = \"session\" }",
    );
    svc.deploy("v1").success();
    let mut deploy = svc.spawn_deploy("v2");
    let canary = wait_for_manual_pause(&svc, &mut deploy, 1, Duration::from_secs(120));
    assert_eq!(canary["weight"], 30, "{canary:#}");

    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for round in 0..4 {
        for client in 0..40 {
            let cookie = format!("session=user-{client}");
            let r = http_request(
                svc.proxy_addr(),
                "GET",
                "/",
                &[("Cookie", &cookie)],
                b"",
                Duration::from_secs(10),
            )
            .expect("GET through nginx");
            assert_eq!(r.status, 200, "round {round}: {}", r.body);
            seen.entry(cookie)
                .or_default()
                .push(r.header("X-Hello-Version").unwrap_or("?").to_owned());
        }
    }
    for (cookie, versions) in &seen {
        assert!(
            versions.iter().all(|v| v == &versions[0]),
            "{cookie} switched colour mid-canary: {versions:?}"
        );
    }
    let on_v2 = seen.values().filter(|v| v[0] == "v2").count();
    eprintln!(
        "sticky canary at 30%: {on_v2} of {} clients on v2",
        seen.len()
    );
    assert!(
        (2..=30).contains(&on_v2),
        "about 30% of the clients are on the canary: {on_v2}"
    );

    let promoted = svc.cutover(&["promote"]).success();
    assert!(
        promoted.stderr.contains("taken by the runner"),
        "{}",
        promoted.stderr
    );
    deploy.wait().success();
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
    let again = svc.cutover(&["promote"]).code(1);
    assert!(
        again.stderr.contains("no canary is running"),
        "{}",
        again.stderr
    );
}

#[test]
fn one_promote_at_a_manual_pause_goes_past_that_pause_only() {
    let (svc, _before, mut deploy) = v2_waiting_at_a_manual_pause("e2e-canary-promote-one");

    svc.cutover(&["promote"]).success();
    let canary = wait_for_manual_pause(&svc, &mut deploy, 3, Duration::from_secs(60));
    assert_eq!(canary["weight"], 80, "{canary:#}");
    // Still waiting a while later, and v1 still takes its 20%: the first promote did
    // not skip the second pause.
    std::thread::sleep(Duration::from_secs(3));
    if let Some(out) = deploy.ended() {
        panic!(
            "one promote ended the canary past its second manual pause (exit {}):\n{}",
            out.code, out.stderr
        );
    }
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(svc.state_file()).unwrap()).unwrap();
    assert_eq!(
        state["in_progress"]["canary"]["waiting_for_promote"], true,
        "{state:#}"
    );
    let versions: Vec<String> = (0..40)
        .filter_map(|_| svc.get("/").header("X-Hello-Version").map(str::to_owned))
        .collect();
    assert!(
        versions.iter().any(|v| v == "v1") && versions.iter().any(|v| v == "v2"),
        "both colours serve at the second pause: {versions:?}"
    );

    svc.cutover(&["promote"]).success();
    deploy.wait().success();
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
    let entry = last_history(&svc);
    assert_eq!(entry["outcome"], "succeeded", "{entry:#}");
    let canary_steps = entry["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "canary")
        .count();
    assert_eq!(canary_steps, 4, "two weights and two pauses: {entry:#}");
}

#[test]
fn abort_from_another_shell_puts_everything_back() {
    let (svc, before, deploy) = v2_waiting_at_a_manual_pause("e2e-canary-abort");

    let aborted = svc
        .cutover(&["abort", "--reason", "dashboards look wrong"])
        .success();
    assert!(
        aborted.stderr.contains("taken by the runner"),
        "{}",
        aborted.stderr
    );
    let out = deploy.wait().code(4);
    assert!(out.stderr.contains("aborted by"), "{}", out.stderr);
    let entry = last_history(&svc);
    assert_eq!(entry["outcome"], "rolled-back", "{entry:#}");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap_or("")
            .contains("dashboards look wrong"),
        "{entry:#}"
    );
    svc.assert_unchanged(&before, &["rolled-back"]);
}

#[test]
fn a_runner_killed_mid_canary_is_recovered_to_the_live_color() {
    let (svc, before, mut deploy) = v2_waiting_at_a_manual_pause("e2e-canary-kill");
    // Mid-canary, nginx splits the traffic.
    let versions: Vec<u16> = (0..20)
        .filter_map(|_| {
            svc.get("/")
                .header("X-Hello-Version")
                .and_then(|v| v.trim_start_matches('v').parse().ok())
        })
        .collect();
    assert!(
        versions.contains(&2) && versions.contains(&1),
        "{versions:?}"
    );

    deploy.kill();
    let status = svc.status();
    assert!(!status["interrupted"].is_null(), "{status:#}");
    svc.cutover(&["recover"]).success();
    svc.assert_unchanged(&before, &["interrupted"]);
}

//! The plugin host end to end, through the real wasmtime engine: the five built-ins'
//! decisions and config errors, 0.1.0 guests run through the adapter, the example plugin loaded by path and digest, hostile
//! guests that must be contained (each followed by a call on a good plugin), the
//! compiled-code cache, the plugin-author CLI, and the frozen WIT contract.
//!
//! Guest crates are built once per test process by `support::guests`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cutover::config::Config;
use cutover::events::{Event, Format, Level, Recorder, Reporter, Silent};
use cutover::plugin::cli::{PluginCommand, run};
use cutover::plugin::types::{
    AnalysisDecision, Color, GateDecision, HealthVerdict, ProbeVerdict, SelectorInput, SlotStatus,
};
use cutover::plugin::{
    GatePlugin, HealthPlugin, Limits, PluginError, PluginHost, PluginKind, Plugins, SelectorPlugin,
    TemplatePlugin, WitVersion, sample, sha256_hex,
};
use cutover::plugin::{LimitsConfig, PluginSpec};

use crate::support::guests::{guest, guests};

/// The sha256 of the released `wit/v0.1.0/plugin.wit`.
const WIT_V0_1_0_SHA256: &str = "66ed2e8839fb7433c9d6b9f49f36accc72325801de528cd5ec046f55bb1d61c5";
/// Pinned when the Swarm and canary work that shaped 0.2.0 was done.
const WIT_V0_2_0_SHA256: &str = "277a41a437e9efee7e16b466baba081d2e29011dede5b1056260deadda918955";

fn workspace() -> PathBuf {
    crate::support::workspace_root().to_owned()
}

/// One host for the tests that do not test the host's own construction; its cache
/// lives under `target/` so repeated runs start warm.
fn host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| {
        PluginHost::new(Some(workspace().join("target").join("test-plugin-cache")))
            .expect("plugin host")
    })
}

fn silent() -> Arc<dyn Reporter> {
    Arc::new(Silent)
}

/// A `[plugins.<kind>]` entry for a built-in with `config` (a TOML table body).
fn builtin(name: &str, config: &str) -> PluginSpec {
    PluginSpec {
        source: format!("builtin:{name}"),
        sha256: None,
        limits: LimitsConfig::default(),
        config: toml::from_str(config).expect("test config is TOML"),
    }
}

/// A `[plugins.<kind>]` entry for a file, pinned to its current digest.
fn pinned_file(path: &Path, config: &str) -> PluginSpec {
    let bytes = std::fs::read(path).expect("plugin file");
    PluginSpec {
        source: path.display().to_string(),
        sha256: Some(sha256_hex(&bytes)),
        limits: LimitsConfig::default(),
        config: toml::from_str(config).expect("test config is TOML"),
    }
}

fn base() -> &'static Path {
    Path::new("/")
}

/// Proves the host still works: a fresh load and call of a good built-in succeeds.
fn good_plugin_still_works() {
    let gate = GatePlugin::load(host(), &builtin("tag-pattern", ""), base(), silent())
        .expect("a good plugin loads after a hostile one");
    let decision = gate
        .decide(&sample::gate_input())
        .expect("a good call succeeds");
    assert!(matches!(decision, GateDecision::Allow(_)), "{decision:?}");
}

/// A hostile health plugin in `mode` (its config), with `limits`.
fn hostile(mode: &str, limits: Limits) -> Result<HealthPlugin, PluginError> {
    HealthPlugin::load_bytes(
        host(),
        &format!("hostile-health[{mode}]"),
        &guest("hostile_health"),
        mode,
        limits,
        silent(),
    )
}

/// Loads `mode` with default limits, calls it, and checks the same component in
/// `ok` mode and a built-in still answer.
fn hostile_call(mode: &str) -> Result<HealthVerdict, PluginError> {
    hostile_call_with(mode, Limits::default())
}

fn hostile_call_with(mode: &str, limits: Limits) -> Result<HealthVerdict, PluginError> {
    let result = hostile(mode, limits)
        .expect("hostile guest loads")
        .evaluate(&sample::health_input());
    let ok = hostile("ok", Limits::default()).expect("ok mode loads");
    assert_eq!(
        ok.evaluate(&sample::health_input())
            .expect("ok mode answers"),
        HealthVerdict::Healthy
    );
    good_plugin_still_works();
    result
}

// ---------------------------------------------------------------------------------
// The built-ins, through the host.

#[test]
fn tag_pattern_allows_matching_tags_and_names_the_tags_it_saw() {
    let gate = GatePlugin::load(
        host(),
        &builtin("tag-pattern", "pattern = \"cicd\""),
        base(),
        silent(),
    )
    .unwrap();
    assert_eq!(gate.name(), "builtin:tag-pattern");
    let mut input = sample::gate_input();
    assert!(
        matches!(gate.decide(&input).unwrap(), GateDecision::Allow(r) if r.contains("v1.4.0-cicd"))
    );
    input.tags = vec!["v1.4.0".to_owned(), "nightly".to_owned()];
    match gate.decide(&input).unwrap() {
        GateDecision::Deny(reason) => assert!(reason.contains("`v1.4.0`, `nightly`"), "{reason}"),
        other => panic!("expected a denial, got {other:?}"),
    }
    let glob = GatePlugin::load(
        host(),
        &builtin("tag-pattern", "pattern = \"v?.*\""),
        base(),
        silent(),
    )
    .unwrap();
    assert!(matches!(
        glob.decide(&input).unwrap(),
        GateDecision::Allow(_)
    ));
    let open = GatePlugin::load(host(), &builtin("tag-pattern", ""), base(), silent()).unwrap();
    input.tags.clear();
    assert!(matches!(
        open.decide(&input).unwrap(),
        GateDecision::Allow(_)
    ));
}

#[test]
fn tag_pattern_config_errors_fail_at_load() {
    for (config, expected) in [
        ("pattern = \"\"", "`pattern` is empty"),
        ("patern = \"cicd\"", "unknown field `patern`"),
        ("pattern = 3", "invalid type"),
    ] {
        let err = GatePlugin::load(host(), &builtin("tag-pattern", config), base(), silent())
            .err()
            .unwrap_or_else(|| panic!("{config} should be rejected"));
        assert!(matches!(err, PluginError::ConfigRejected { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains("builtin:tag-pattern"), "{message}");
        assert!(
            message.contains("[plugins.deploy-gate.config]"),
            "{message}"
        );
    }
}

fn slot(color: Color, present: bool, healthy: bool) -> SlotStatus {
    SlotStatus {
        color,
        present,
        desired: u32::from(present),
        running: u32::from(present),
        image: present.then(|| "hello:1".to_owned()),
        image_digest: None,
        last_probe: if healthy {
            ProbeVerdict::Healthy
        } else {
            ProbeVerdict::Unknown
        },
    }
}

fn selector_input(live: Option<Color>, blue: (bool, bool), green: (bool, bool)) -> SelectorInput {
    SelectorInput {
        service: "hello".to_owned(),
        live,
        slots: vec![
            slot(Color::Blue, blue.0, blue.1),
            slot(Color::Green, green.0, green.1),
        ],
    }
}

#[test]
fn alternate_picks_the_color_that_is_not_live_and_refuses_a_missing_live_container() {
    use cutover::Color as C;
    let selector =
        SelectorPlugin::load(host(), &builtin("alternate", ""), base(), silent()).unwrap();
    let serving = (true, true);
    let empty = (false, false);
    assert_eq!(
        selector.select(&sample::selector_input()).unwrap(),
        C::Green
    );
    assert_eq!(
        selector
            .select(&selector_input(None, empty, empty))
            .unwrap(),
        C::Blue
    );
    assert_eq!(
        selector
            .select(&selector_input(Some(Color::Green), serving, serving))
            .unwrap(),
        C::Blue
    );
    assert_eq!(
        selector
            .select(&selector_input(None, serving, empty))
            .unwrap(),
        C::Green
    );
    let err = selector
        .select(&selector_input(Some(Color::Blue), empty, serving))
        .unwrap_err();
    assert!(matches!(err, PluginError::Refused { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("live colour blue"), "{message}");
    assert!(
        message.contains("target-selector plugin builtin:alternate"),
        "{message}"
    );

    let first_green = SelectorPlugin::load(
        host(),
        &builtin("alternate", "first = \"green\""),
        base(),
        silent(),
    )
    .unwrap();
    assert_eq!(
        first_green
            .select(&selector_input(None, empty, empty))
            .unwrap(),
        C::Green
    );
    let err = SelectorPlugin::load(
        host(),
        &builtin("alternate", "first = \"red\""),
        base(),
        silent(),
    )
    .err()
    .expect("red is not a colour");
    assert!(err.to_string().contains("unknown variant `red`"), "{err}");
}

#[test]
fn http_status_counts_successes_and_checks_json() {
    let health = HealthPlugin::load(host(), &builtin("http-status", ""), base(), silent()).unwrap();
    let mut input = sample::health_input();
    assert_eq!(health.evaluate(&input).unwrap(), HealthVerdict::Healthy);
    input.probe = sample::probe(503, "", 10);
    assert_eq!(
        health.evaluate(&input).unwrap(),
        HealthVerdict::NotYet("status 503 is not in 200-399".to_owned())
    );

    let spring = HealthPlugin::load(
        host(),
        &builtin(
            "http-status",
            "successes = 2\njson_pointer = \"/status\"\nequals = \"UP\"",
        ),
        base(),
        silent(),
    )
    .unwrap();
    let mut input = sample::health_input();
    assert_eq!(
        spring.evaluate(&input).unwrap(),
        HealthVerdict::NotYet("1 of 2 consecutive successful probes".to_owned())
    );
    input
        .history
        .push(sample::probe(200, r#"{"status":"UP"}"#, 900));
    assert_eq!(spring.evaluate(&input).unwrap(), HealthVerdict::Healthy);
    input.probe = sample::probe(200, r#"{"status":"DOWN"}"#, 900);
    assert_eq!(
        spring.evaluate(&input).unwrap(),
        HealthVerdict::NotYet(r#"/status is "DOWN", expected "UP""#.to_owned())
    );

    for (config, expected) in [
        ("successes = 0", "`successes` is 0"),
        (
            "json_pointer = \"/status\"",
            "`json_pointer` needs `equals`",
        ),
        ("statuses = [\"2xx\"]", "not a status code"),
    ] {
        let err = HealthPlugin::load(host(), &builtin("http-status", config), base(), silent())
            .err()
            .unwrap_or_else(|| panic!("{config} should be rejected"));
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[test]
fn nginx_service_url_renders_the_include_and_refuses_injection() {
    let template =
        TemplatePlugin::load(host(), &builtin("nginx-service-url", ""), base(), silent()).unwrap();
    let files = template.render(&sample::template_input()).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, "hello-url.inc");
    assert!(
        files[0]
            .contents
            .ends_with("set $service_url http://127.0.0.1:18082;\n"),
        "{}",
        files[0].contents
    );

    let full = TemplatePlugin::load(
        host(),
        &builtin(
            "nginx-service-url",
            "template = \"upstream {{service}} { server {{upstream}}; }\\nserver_name {{server_name}};\\n\"",
        ),
        base(),
        silent(),
    )
    .unwrap();
    let files = full.render(&sample::template_input()).unwrap();
    assert_eq!(files[1].path, "hello.conf");
    assert_eq!(
        files[1].contents,
        "upstream hello { server 127.0.0.1:18082; }\nserver_name hello.example.com;\n"
    );

    let mut input = sample::template_input();
    input.variables[0].value = "x; return 302 http://evil/".to_owned();
    let err = full.render(&input).unwrap_err();
    assert!(matches!(err, PluginError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("inject nginx syntax"), "{err}");
    input.target.servers[0].address = "127.0.0.1}".to_owned();
    assert!(template.render(&input).is_err());

    let err = TemplatePlugin::load(
        host(),
        &builtin("nginx-service-url", "file = \"../nginx.conf\""),
        base(),
        silent(),
    )
    .err()
    .expect("a path outside the config dir is refused");
    assert!(err.to_string().contains("`file`"), "{err}");
}

fn minimal_config(extra: &str) -> Config {
    let text = format!(
        "service = \"hello\"\n[image]\nref = \"hello:1\"\n[container]\nport = 8080\n\
         [proxy]\nmode = \"managed\"\nlisten = \"127.0.0.1:8080\"\n{extra}"
    );
    Config::parse(&text, Path::new("/srv/hello/cutover.toml")).expect("test config parses")
}

#[test]
fn plugins_load_defaults_to_the_builtins() {
    let plugins = Plugins::load(host(), &minimal_config(""), &PluginKind::ALL, silent()).unwrap();
    assert_eq!(plugins.gate().unwrap().name(), "builtin:tag-pattern");
    assert_eq!(plugins.selector().unwrap().name(), "builtin:alternate");
    assert_eq!(plugins.health().unwrap().name(), "builtin:http-status");
    assert_eq!(
        plugins.template().unwrap().name(),
        "builtin:nginx-service-url"
    );
    assert!(matches!(
        plugins
            .gate()
            .unwrap()
            .decide(&sample::gate_input())
            .unwrap(),
        GateDecision::Allow(_)
    ));
    assert_eq!(
        plugins
            .selector()
            .unwrap()
            .select(&sample::selector_input())
            .unwrap(),
        cutover::Color::Green
    );
    assert_eq!(*plugins.gate().unwrap().limits(), Limits::default());

    let configured = minimal_config(
        "[plugins.deploy-gate]\nsource = \"builtin:tag-pattern\"\nconfig = { pattern = \"cicd\" }\n\
         [plugins.deploy-gate.limits]\ndeadline_ms = 50\n",
    );
    let plugins = Plugins::load(host(), &configured, &PluginKind::ALL, silent()).unwrap();
    assert_eq!(
        plugins.gate().unwrap().limits().deadline,
        Duration::from_millis(50)
    );
    let mut input = sample::gate_input();
    input.tags.clear();
    assert!(matches!(
        plugins.gate().unwrap().decide(&input).unwrap(),
        GateDecision::Deny(_)
    ));
}

#[test]
fn more_concurrent_calls_than_pooled_instances_wait_for_a_slot() {
    // The host pools 16 instances. 40 calls that each hold theirs for 20 ms overlap
    // for certain; without the wait, the 17th would fail to get an instance.
    let spinning = hostile(
        "loop",
        Limits {
            deadline: Duration::from_millis(20),
            ..deadline_only()
        },
    )
    .unwrap();
    std::thread::scope(|scope| {
        for _ in 0..40 {
            scope.spawn(|| {
                let err = spinning.evaluate(&sample::health_input()).unwrap_err();
                assert!(
                    matches!(
                        err,
                        PluginError::Timeout {
                            deadline_ms: 20,
                            ..
                        }
                    ),
                    "{err:?}"
                );
            });
        }
    });
    good_plugin_still_works();
}

#[test]
fn unknown_builtin_builtin_of_another_kind_and_bad_limits_are_refused() {
    let err = Plugins::load(
        host(),
        &minimal_config("[plugins.deploy-gate]\nsource = \"builtin:tag-patern\"\n"),
        &PluginKind::ALL,
        silent(),
    )
    .err()
    .expect("unknown builtin");
    assert!(matches!(err, PluginError::UnknownBuiltin { .. }), "{err:?}");
    assert!(err.to_string().contains("builtin:tag-pattern"), "{err}");

    let err = Plugins::load(
        host(),
        &minimal_config("[plugins.health-policy]\nsource = \"builtin:alternate\"\n"),
        &PluginKind::ALL,
        silent(),
    )
    .err()
    .expect("a selector is not a health policy");
    assert!(matches!(err, PluginError::WrongWorld { .. }), "{err:?}");
    assert!(err.to_string().contains("builtin:http-status"), "{err}");

    let err = Plugins::load(
        host(),
        &minimal_config("[plugins.health-policy]\nsource = \"builtin:http-status\"\nlimits = { memory_mib = 100000 }\n"),
        &PluginKind::ALL,
        silent(),
    )
    .err()
    .expect("memory over the hard bound");
    assert_eq!(
        err.to_string(),
        "[plugins.health-policy.limits] memory_mib = 100000: expected 2 to 1024"
    );
}

// ---------------------------------------------------------------------------------
// The custom example plugin, built for wasm32-wasip2 and loaded by path and digest.

#[test]
fn example_latency_p95_plugin_loads_by_path_with_its_digest() {
    let path = guests().join("latency_p95.wasm");
    let digest = sha256_hex(&std::fs::read(&path).unwrap());
    let config = minimal_config(&format!(
        "[plugins.health-policy]\nsource = {:?}\nsha256 = \"{digest}\"\n\
         config = {{ window = 3, p95_ms = 5 }}\n",
        path.display().to_string()
    ));
    let recorder = Arc::new(Recorder::default());
    let plugins = Plugins::load(host(), &config, &PluginKind::ALL, recorder.clone()).unwrap();
    let health = plugins.health().unwrap();
    assert_eq!(health.name(), path.display().to_string());

    // Two probes so far: not yet.
    let mut input = sample::health_input();
    input.history = vec![sample::probe(200, "", 4_000)];
    input.probe = sample::probe(200, "", 3_000);
    assert!(
        matches!(health.evaluate(&input).unwrap(), HealthVerdict::NotYet(r) if r.contains("2 of 3"))
    );
    // Three fast probes: healthy.
    input.history.push(sample::probe(200, "", 2_000));
    assert_eq!(health.evaluate(&input).unwrap(), HealthVerdict::Healthy);
    // A slow one in the window: not yet, with the measured p95.
    input.probe = sample::probe(200, "", 9_000);
    assert!(
        matches!(health.evaluate(&input).unwrap(), HealthVerdict::NotYet(r) if r.contains("p95 latency 9.0 ms"))
    );
    // Its log lines arrive as events attributed to the file.
    assert!(recorder.events().iter().any(|e| matches!(e,
        Event::Log { level: Level::Debug, source, message } if *source == path.display().to_string() && message.contains("attempt"))));

    let err = Plugins::load(
        host(),
        &minimal_config(&format!(
            "[plugins.health-policy]\nsource = {:?}\nsha256 = \"{digest}\"\n",
            path.display().to_string()
        )),
        &PluginKind::ALL,
        silent(),
    )
    .err()
    .expect("p95_ms is required");
    assert!(err.to_string().contains("`p95_ms`"), "{err}");
}

// ---------------------------------------------------------------------------------
// Hostile plugins. After each, the same component in `ok` mode and a built-in answer.

/// Limits where the wall-clock deadline, not fuel, is what stops a busy plugin.
fn deadline_only() -> Limits {
    Limits {
        fuel: 10_000_000_000,
        ..Limits::default()
    }
}

#[test]
fn infinite_loop_is_stopped_by_the_deadline_and_reported_as_a_timeout() {
    let started = Instant::now();
    let err = hostile_call_with("loop", deadline_only()).unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Timeout {
                deadline_ms: 100,
                ..
            }
        ),
        "{err:?}"
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let message = err.to_string();
    assert!(
        message.contains("hostile-health[loop]") && message.contains("deadline_ms"),
        "{message}"
    );
}

#[test]
fn infinite_loop_runs_out_of_fuel_first_with_the_default_limits() {
    // Fuel is deterministic: with the defaults a busy loop is stopped by it, the same
    // way on a fast or a loaded machine, before the deadline.
    let err = hostile_call("loop").unwrap_err();
    assert!(
        matches!(err, PluginError::OutOfFuel { fuel, .. } if fuel == Limits::default().fuel),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("`fuel` in [plugins.health-policy.limits]"),
        "{err}"
    );
}

#[test]
fn unbounded_allocation_is_stopped_by_the_memory_cap() {
    let err = hostile_call("alloc").unwrap_err();
    assert!(
        matches!(err, PluginError::MemoryLimit { limit_mib: 32, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("memory_mib"), "{err}");
}

#[test]
fn multi_megabyte_answers_are_refused_as_too_large() {
    let err = hostile_call("huge").unwrap_err();
    assert!(
        matches!(err, PluginError::OutputTooLarge { size, limit: 65_536, .. } if size == 5 << 20),
        "{err:?}"
    );
    let err = hostile("huge-reject", Limits::default())
        .err()
        .expect("huge rejection");
    assert!(matches!(err, PluginError::OutputTooLarge { .. }), "{err:?}");
    good_plugin_still_works();
}

#[test]
fn plugin_sees_no_files_environment_clock_or_network() {
    // The test process itself has all of these.
    assert!(std::path::Path::new("/etc/passwd").exists());
    assert!(std::env::var_os("PATH").is_some());
    let verdict = hostile_call("snoop").unwrap();
    assert_eq!(
        verdict,
        HealthVerdict::NotYet(
            "passwd=false home=false vars=0 args=0 cwd=Some(\"/\") now=Ok(0) socket=false"
                .to_owned()
        )
    );
}

#[test]
fn a_sleeping_plugin_does_not_block_the_host_and_waiting_for_time_times_out() {
    let started = Instant::now();
    assert_eq!(
        hostile_call("sleep").unwrap(),
        HealthVerdict::NotYet("slept".to_owned())
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let err = hostile_call_with("wait-for-time", deadline_only()).unwrap_err();
    assert!(matches!(err, PluginError::Timeout { .. }), "{err:?}");
}

#[test]
fn a_panic_is_a_trap_that_carries_the_panic_message() {
    let err = hostile_call("panic").unwrap_err();
    assert!(matches!(err, PluginError::Trap { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("hostile plugin panicked on purpose"),
        "{err}"
    );
    let err = hostile_call("exit").unwrap_err();
    assert!(matches!(err, PluginError::Trap { .. }), "{err:?}");
}

#[test]
fn plugins_called_inside_tokio_runtimes_work_and_crash_safely() {
    // wasmtime-wasi's synchronous stdio blocks on a tokio handle: the host must not
    // panic when a deploy calls a plugin (which writes to stderr) from async code.
    let panicking = hostile("panic", Limits::default()).unwrap();
    let ok = hostile("ok", Limits::default()).unwrap();
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for runtime in [&current, &multi] {
        runtime.block_on(async {
            let err = panicking.evaluate(&sample::health_input()).unwrap_err();
            assert!(err.to_string().contains("panicked on purpose"), "{err}");
            tokio::task::yield_now().await;
            assert_eq!(
                ok.evaluate(&sample::health_input()).unwrap(),
                HealthVerdict::Healthy
            );
        });
    }
    let spawned = multi.block_on(async {
        let ok = Arc::new(ok);
        tokio::spawn(async move { ok.evaluate(&sample::health_input()) }).await
    });
    assert_eq!(spawned.unwrap().unwrap(), HealthVerdict::Healthy);
}

#[test]
fn plugin_logs_become_escaped_events_and_are_capped() {
    let recorder = Arc::new(Recorder::default());
    let logger = HealthPlugin::load_bytes(
        host(),
        "logger",
        &guest("hostile_health"),
        "log",
        Limits::default(),
        recorder.clone(),
    )
    .unwrap();
    logger.evaluate(&sample::health_input()).unwrap();
    let logs: Vec<(Level, String)> = recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Log {
                level,
                source,
                message,
            } if source == "logger" => Some((level, message)),
            _ => None,
        })
        .collect();
    assert_eq!(
        logs,
        vec![
            (Level::Info, "probe looks fine".to_owned()),
            (Level::Warn, "forged\\nline \\u{1b}[31mred".to_owned()),
        ]
    );

    let recorder = Arc::new(Recorder::default());
    let flood = HealthPlugin::load_bytes(
        host(),
        "flood",
        &guest("hostile_health"),
        "log-flood",
        Limits::default(),
        recorder.clone(),
    )
    .unwrap();
    assert_eq!(
        flood.evaluate(&sample::health_input()).unwrap(),
        HealthVerdict::Healthy
    );
    let events = recorder.events();
    let logged: usize = events
        .iter()
        .filter_map(|e| match e {
            Event::Log {
                level: Level::Info,
                source,
                message,
            } if source == "flood" => Some(message.len()),
            _ => None,
        })
        .sum();
    assert!(
        logged <= Limits::default().log_bytes,
        "{logged} bytes logged"
    );
    assert!(
        logged >= Limits::default().log_bytes / 2,
        "{logged} bytes logged"
    );
    assert!(events.iter().any(|e| matches!(e,
        Event::Log { level: Level::Warn, message, .. } if message.contains("dropped"))));
    good_plugin_still_works();
}

#[test]
fn every_call_starts_from_a_fresh_instance() {
    // Pooled instances are reused across calls; none of a call's state may survive.
    let counter = hostile("count", Limits::default()).unwrap();
    for _ in 0..3 {
        assert_eq!(
            counter.evaluate(&sample::health_input()).unwrap(),
            HealthVerdict::NotYet("call 1, heap 1000".to_owned())
        );
    }
    good_plugin_still_works();
}

#[test]
fn control_characters_in_answers_are_escaped() {
    assert_eq!(
        hostile_call("escape").unwrap(),
        HealthVerdict::Failed("clear \\u{1b}[2J screen\\nforged line".to_owned())
    );
}

#[test]
fn a_rejected_config_is_reported_with_the_plugins_reason() {
    let err = hostile("reject", Limits::default())
        .err()
        .expect("rejected");
    assert!(matches!(err, PluginError::ConfigRejected { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("mode `reject` refuses every config"),
        "{err}"
    );
    good_plugin_still_works();
}

#[test]
fn proxy_files_outside_the_config_dir_are_refused_before_anything_is_written() {
    let template = |mode: &str| {
        TemplatePlugin::load_bytes(
            host(),
            "hostile-template",
            &guest("hostile_template"),
            mode,
            Limits::default(),
            silent(),
        )
        .unwrap()
    };
    assert_eq!(
        template("ok")
            .render(&sample::template_input())
            .unwrap()
            .len(),
        1
    );
    for (mode, expected) in [
        (
            "traversal",
            "\"../../etc/cron.d/evil\" is not a relative path",
        ),
        (
            "absolute",
            "\"/etc/nginx/nginx.conf\" is not a relative path",
        ),
        ("nul", "control character"),
        ("many", "one of 100 rendered files"),
        ("duplicate", "appears twice"),
    ] {
        let err = template(mode)
            .render(&sample::template_input())
            .unwrap_err();
        assert!(
            matches!(err, PluginError::InvalidOutput { .. }),
            "{mode}: {err:?}"
        );
        assert!(err.to_string().contains(expected), "{mode}: {err}");
        assert!(err.to_string().contains("nothing was written"), "{err}");
    }
    let err = template("huge")
        .render(&sample::template_input())
        .unwrap_err();
    assert!(matches!(err, PluginError::OutputTooLarge { .. }), "{err:?}");
    good_plugin_still_works();
}

/// A temporary directory holding `name` with `bytes`.
fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn a_component_for_another_world_is_refused_with_the_world_it_implements() {
    let gate_wasm = cutover::plugin::builtin::find("tag-pattern")
        .unwrap()
        .wasm();
    let (_dir, path) = temp_file("gate.wasm", gate_wasm);
    let err = HealthPlugin::load(host(), &pinned_file(&path, ""), base(), silent())
        .err()
        .expect("a gate is not a health policy");
    assert!(
        matches!(
            err,
            PluginError::WrongWorld {
                kind: PluginKind::HealthPolicy,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("built for the deploy-gate world"),
        "{message}"
    );
    assert!(message.contains("[plugins.deploy-gate]"), "{message}");
    good_plugin_still_works();
}

#[test]
fn corrupt_and_non_component_files_are_refused() {
    let gate_wasm = cutover::plugin::builtin::find("tag-pattern")
        .unwrap()
        .wasm();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "truncated.wasm",
            gate_wasm[..gate_wasm.len() / 2].to_vec(),
            "cannot be loaded",
        ),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module",
        ),
        (
            "text.wasm",
            b"#!/bin/sh\necho hi\n".to_vec(),
            "not a WebAssembly file",
        ),
    ];
    for (name, bytes, expected) in cases {
        let (_dir, path) = temp_file(name, &bytes);
        let err = GatePlugin::load(host(), &pinned_file(&path, ""), base(), silent())
            .err()
            .unwrap_or_else(|| panic!("{name} should be refused"));
        assert!(
            matches!(err, PluginError::Compile { .. }),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains(expected), "{name}: {err}");
        assert!(err.to_string().contains("deploy-gate plugin"), "{err}");
    }
    good_plugin_still_works();
}

#[test]
fn a_digest_mismatch_and_a_missing_file_are_refused() {
    let (_dir, path) = temp_file("p95.wasm", &guest("latency_p95"));
    let mut spec = pinned_file(&path, "p95_ms = 100");
    HealthPlugin::load(host(), &spec, base(), silent()).expect("the pinned file loads");
    spec.sha256 = Some("0".repeat(64));
    let err = HealthPlugin::load(host(), &spec, base(), silent())
        .err()
        .expect("mismatch");
    assert!(matches!(err, PluginError::DigestMismatch { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&sha256_hex(&guest("latency_p95"))),
        "{message}"
    );
    assert!(message.contains("cutover plugin sha256"), "{message}");

    spec.source = path.with_file_name("gone.wasm").display().to_string();
    let err = HealthPlugin::load(host(), &spec, base(), silent())
        .err()
        .expect("missing");
    assert!(matches!(err, PluginError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains("gone.wasm"), "{err}");
    good_plugin_still_works();
}

// ---------------------------------------------------------------------------------
// The compiled-code cache.

fn load_messages(host: &PluginHost) -> Vec<String> {
    let recorder = Arc::new(Recorder::default());
    Plugins::load(
        host,
        &minimal_config(""),
        &PluginKind::ALL,
        recorder.clone(),
    )
    .expect("builtins load");
    recorder
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Log { message, .. } if message.contains(" plugin builtin:") => Some(message),
            _ => None,
        })
        .collect()
}

#[test]
fn the_compiled_code_cache_is_reused_and_a_tampered_entry_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let cold = PluginHost::new(Some(dir.path().to_owned())).unwrap();
    let cache = cold.cache_dir().expect("cache in use").to_owned();
    let messages = load_messages(&cold);
    assert_eq!(messages.len(), 5, "{messages:?}");
    assert!(
        messages.iter().all(|m| m.contains(" compiled in ")),
        "{messages:?}"
    );
    // A compiled entry and its checksum per built-in, private to this user.
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 10, "{entries:?}");
    use std::os::unix::fs::PermissionsExt;
    for entry in &entries {
        assert_eq!(
            std::fs::metadata(entry).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let warm = PluginHost::new(Some(dir.path().to_owned())).unwrap();
    let messages = load_messages(&warm);
    assert!(
        messages
            .iter()
            .all(|m| m.contains("from the compiled-code cache")),
        "{messages:?}"
    );

    // Corrupt every compiled entry: the next host compiles instead of loading them.
    for entry in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
    {
        let mut bytes = std::fs::read(entry).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(entry, bytes).unwrap();
    }
    let after = PluginHost::new(Some(dir.path().to_owned())).unwrap();
    let messages = load_messages(&after);
    assert!(
        messages.iter().all(|m| m.contains(" compiled in ")),
        "{messages:?}"
    );
}

// ---------------------------------------------------------------------------------
// The plugin-author CLI.

fn cli(cmd: PluginCommand) -> Result<String, PluginError> {
    let mut out = Vec::new();
    run(&cmd, Format::Human, &mut out)?;
    Ok(String::from_utf8(out).expect("UTF-8 output"))
}

#[test]
fn plugin_check_reports_kind_imports_sample_call_and_pin() {
    let path = guests().join("latency_p95.wasm");
    let text = cli(PluginCommand::Check {
        file: path.clone(),
        plugin_config: Some(r#"{"window":2,"p95_ms":5}"#.to_owned()),
        limits: Default::default(),
    })
    .unwrap();
    let digest = sha256_hex(&std::fs::read(&path).unwrap());
    assert!(text.contains("kind:    health-policy"), "{text}");
    assert!(text.contains("cutover:plugin/host@0.1.0"), "{text}");
    // The sample's history holds a 503, so a window of two is not yet satisfied.
    assert!(
        text.contains("evaluate -> not yet: a probe in the window failed: status 503"),
        "{text}"
    );
    assert!(text.contains(&format!("sha256 = \"{digest}\"")), "{text}");

    let err = cli(PluginCommand::Check {
        file: path.clone(),
        plugin_config: None,
        limits: Default::default(),
    })
    .unwrap_err();
    assert!(matches!(err, PluginError::ConfigRejected { .. }), "{err:?}");

    let (_dir, loop_path) = temp_file("loop.wasm", &guest("hostile_health"));
    let err = cli(PluginCommand::Check {
        file: loop_path,
        plugin_config: Some("loop".to_owned()),
        limits: Default::default(),
    })
    .unwrap_err();
    assert!(matches!(err, PluginError::OutOfFuel { .. }), "{err:?}");

    let sha = cli(PluginCommand::Sha256 { file: path.clone() }).unwrap();
    assert_eq!(sha, format!("{digest}  {}\n", path.display()));
}

/// Runs the built `cutover` binary with `args`, its plugin cache under `target/`.
fn cutover_binary(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .env(
            "CUTOVER_CACHE_DIR",
            workspace().join("target").join("test-plugin-cache"),
        )
        .env_remove(cutover::cli::PARSE_ONLY_ENV)
        .output()
        .expect("run the cutover binary")
}

#[test]
fn plugin_check_through_the_binary_does_not_clash_with_the_global_config_flag() {
    // `plugin check --config <JSON>` once shared its id with the global `--config
    // <FILE>`: clap panicked with exit 101 on every call.
    let path = guests().join("latency_p95.wasm");
    let file = path.to_str().expect("UTF-8 path");
    let output = cutover_binary(&[
        "--config",
        "elsewhere/cutover.toml",
        "plugin",
        "check",
        file,
        "--plugin-config",
        r#"{"window": 5, "p95_ms": 250}"#,
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("kind:    health-policy"), "{stdout}");
    assert!(
        stdout.contains(r#"config:  {"window": 5, "p95_ms": 250} accepted by validate-config"#),
        "{stdout}"
    );
    assert!(stdout.contains("[plugins.health-policy]"), "{stdout}");

    // A config the plugin rejects is a config error (exit 5) with its reason.
    let output = cutover_binary(&["plugin", "check", file, "--plugin-config", "{}"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    assert!(stderr.contains("p95_ms"), "{stderr}");
}

#[test]
fn plugin_check_recognises_each_builtin_kind() {
    for builtin in &cutover::plugin::builtin::BUILTINS {
        let (_dir, path) = temp_file("b.wasm", builtin.wasm());
        let text = cli(PluginCommand::Check {
            file: path,
            plugin_config: None,
            limits: Default::default(),
        })
        .unwrap();
        assert!(
            text.contains(&format!("kind:    {}", builtin.kind)),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------------
// The released contract.

/// Fails with the advice to add a new package version when `version`'s WIT file no
/// longer has the digest it was released with, and checks `plugin wit` prints it.
fn assert_frozen(version: WitVersion, dir: &str, pinned: &str) {
    let path = workspace().join("wit").join(dir).join("plugin.wit");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        sha256_hex(text.as_bytes()),
        pinned,
        "{} changed, but it is released and frozen: plugins built against it must \
         keep loading. Revert the edit and add a new package version (wit/vX.Y.Z/ with \
         its own bindings) instead.",
        path.display()
    );
    assert_eq!(
        cli(PluginCommand::Wit {
            version: Some(version)
        })
        .unwrap(),
        text
    );
}

#[test]
fn wit_v0_1_0_is_frozen() {
    assert_frozen(WitVersion::V0_1_0, "v0.1.0", WIT_V0_1_0_SHA256);
}

#[test]
fn wit_v0_2_0_is_frozen_beside_v0_1_0_and_is_what_plugin_wit_prints() {
    assert_frozen(WitVersion::V0_2_0, "v0.2.0", WIT_V0_2_0_SHA256);
    let text = std::fs::read_to_string(workspace().join("wit/v0.2.0/plugin.wit")).unwrap();
    assert!(text.contains("package cutover:plugin@0.2.0;"), "{text}");
    for world in [
        "deploy-gate",
        "target-selector",
        "health-policy",
        "proxy-template",
        "rollout-analysis",
    ] {
        assert!(text.contains(&format!("world {world} {{")), "{world}");
    }
    assert_eq!(cli(PluginCommand::Wit { version: None }).unwrap(), text);
    assert_eq!(cutover::plugin::WIT_VERSION, "0.2.0");
}

// ---------------------------------------------------------------------------------
// One host model, two contract versions.

#[test]
fn builtins_target_0_2_0_and_the_latency_example_0_1_0() {
    let plugins = Plugins::load(host(), &minimal_config(""), &PluginKind::ALL, silent()).unwrap();
    assert_eq!(plugins.gate().unwrap().version(), WitVersion::V0_2_0);
    assert_eq!(plugins.template().unwrap().version(), WitVersion::V0_2_0);
    assert_eq!(plugins.analysis().unwrap().version(), WitVersion::V0_2_0);
    let example = HealthPlugin::load_bytes(
        host(),
        "latency-p95",
        &guest("latency_p95"),
        r#"{"window":2,"p95_ms":5}"#,
        Limits::default(),
        silent(),
    )
    .unwrap();
    assert_eq!(example.version(), WitVersion::V0_1_0);
    // The 0.2.0 input (with its instance) reaches the 0.1.0 guest through the adapter,
    // which judges the sample's 503 probe.
    let verdict = example.evaluate(&sample::health_input()).unwrap();
    assert!(
        matches!(&verdict, HealthVerdict::NotYet(why) if why.contains("503")),
        "{verdict:?}"
    );
}

#[test]
fn a_0_1_0_template_asked_for_a_split_says_it_needs_0_2_0() {
    let template = TemplatePlugin::load_bytes(
        host(),
        "hostile-template",
        &guest("hostile_template"),
        "ok",
        Limits::default(),
        silent(),
    )
    .unwrap();
    assert_eq!(template.version(), WitVersion::V0_1_0);
    let mut input = sample::template_input();
    input.target_weight = 10;
    let err = template.render(&input).unwrap_err();
    assert!(
        matches!(err, PluginError::NeedsNewerContract { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("hostile-template")
            && message.contains("10% of traffic to green")
            && message.contains("rebuild it against cutover:plugin@0.2.0"),
        "{message}"
    );
    let mut input = sample::template_input();
    input.target.servers.push(input.target.servers[0].clone());
    assert!(matches!(
        template.render(&input).unwrap_err(),
        PluginError::NeedsNewerContract { .. }
    ));
    // A plain switch to one server still renders.
    assert_eq!(template.render(&sample::template_input()).unwrap().len(), 1);
}

#[test]
fn nginx_service_url_renders_weighted_and_sticky_splits() {
    let template = TemplatePlugin::load(
        host(),
        &builtin("nginx-service-url", "fail_timeout = \"3s\""),
        base(),
        silent(),
    )
    .unwrap();
    let mut input = sample::template_input();
    input.target_weight = 20;
    let files = template.render(&input).unwrap();
    assert_eq!(files[1].path, "hello-upstream.conf");
    assert!(
        files[1].contents.contains(
            "upstream hello-split {\n    server 127.0.0.1:18082 max_fails=1 fail_timeout=3s;\n    \
             server 127.0.0.1:18081 weight=4 max_fails=1 fail_timeout=3s;\n}\n"
        ),
        "{}",
        files[1].contents
    );
    input.sticky_key = Some("$cookie_session".to_owned());
    let files = template.render(&input).unwrap();
    assert!(
        files[0]
            .contents
            .ends_with("set $service_url http://$cutover_hello_upstream;\n"),
        "{}",
        files[0].contents
    );
    assert!(
        files[1]
            .contents
            .contains("split_clients \"$cookie_session\""),
        "{}",
        files[1].contents
    );
}

#[test]
fn canary_analysis_holds_promotes_and_aborts_through_the_sandbox() {
    let plugins = Plugins::load(
        host(),
        &minimal_config(""),
        &[PluginKind::RolloutAnalysis],
        silent(),
    )
    .unwrap();
    let analysis = plugins.analysis().unwrap();
    assert_eq!(analysis.name(), "builtin:canary-analysis");
    assert_eq!(
        analysis.analyze(&sample::analysis_input()).unwrap(),
        AnalysisDecision::Promote
    );
    let mut input = sample::analysis_input();
    input.canary.this_step = sample::traffic(5, 0, 1_000);
    assert!(matches!(
        analysis.analyze(&input).unwrap(),
        AnalysisDecision::Hold(why) if why.contains("5 of the 20")
    ));
    input.canary.this_step = sample::traffic(100, 20, 1_000);
    assert!(matches!(
        analysis.analyze(&input).unwrap(),
        AnalysisDecision::Abort(why) if why.contains("20 of 100")
    ));
    input.canary.this_step = sample::traffic(100, 0, 900_000);
    assert!(matches!(
        analysis.analyze(&input).unwrap(),
        AnalysisDecision::Abort(why) if why.contains("p95")
    ));
    let err = Plugins::load(
        host(),
        &minimal_config("[plugins.rollout-analysis]\nsource = \"builtin:canary-analysis\"\nconfig = { min_requests = 0 }\n"),
        &[PluginKind::RolloutAnalysis],
        silent(),
    )
    .err()
    .expect("min_requests = 0 is refused");
    assert!(
        err.to_string()
            .contains("[plugins.rollout-analysis.config]"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// `plugin sample` and `plugin run`: one decision on an input file.

#[test]
fn plugin_run_answers_a_sample_input_with_logs_fuel_memory_and_time() {
    let wasm = guests().join("latency_p95.wasm");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    let sample = cutover_binary(&["plugin", "sample", "health-policy"]);
    assert!(sample.status.success(), "{sample:?}");
    std::fs::write(&input, &sample.stdout).unwrap();
    let args = |extra: &[&str]| {
        let mut args = vec![
            "plugin",
            "run",
            wasm.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--plugin-config",
            r#"{"window":2,"p95_ms":5}"#,
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let args = args(extra);
        cutover_binary(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let output = run(&[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("answer:  evaluate -> not yet: a probe in the window failed: status 503"),
        "{stdout}"
    );
    assert!(stdout.contains("log:     debug: attempt 3:"), "{stdout}");
    assert!(stdout.contains("fuel:    "), "{stdout}");
    assert!(stdout.contains("memory:  1.1 MiB of 32 MiB"), "{stdout}");

    let output = run(&["--output", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["answer"]["not-yet"],
        "a probe in the window failed: status 503"
    );
    assert_eq!(report["kind"], "health-policy");
    assert!(report["fuel_used"].as_u64().unwrap() > 1000, "{report}");
    assert_eq!(report["logs"][0]["level"], "debug");

    // The history's 503 is the last probe before the current one: with it healthy,
    // a window of two is satisfied.
    let text = String::from_utf8(sample.stdout.clone()).unwrap();
    std::fs::write(&input, text.replace("\"status\": 503", "\"status\": 200")).unwrap();
    let stdout = String::from_utf8(run(&[]).stdout).unwrap();
    assert!(stdout.contains("answer:  evaluate -> healthy"), "{stdout}");

    // A wrong value: its path and WIT type, a config-class exit.
    std::fs::write(
        &input,
        text.replace("\"status\": 503", "\"status\": \"503\""),
    )
    .unwrap();
    let output = run(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    assert!(
        stderr.contains("`history[1].status` must be WIT type `option<u16>`"),
        "{stderr}"
    );

    // Limits from the command line are the config's, bounds included.
    std::fs::write(&input, &text).unwrap();
    let output = run(&["--fuel", "1"]);
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    let output = run(&["--fuel", "10000"]);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("used up its fuel budget of 10000"),
        "{output:?}"
    );
}

#[test]
fn plugin_run_reports_a_refusal_as_an_answer_for_every_builtin_sample() {
    let dir = tempfile::tempdir().unwrap();
    for builtin in &cutover::plugin::builtin::BUILTINS {
        let wasm = dir.path().join(format!("{}.wasm", builtin.name));
        std::fs::write(&wasm, builtin.wasm()).unwrap();
        let input = dir.path().join(format!("{}.json", builtin.kind));
        let sample = cutover::plugin::json::sample(builtin.kind);
        // Both colours serving with nothing recorded live: `alternate` refuses.
        let sample = sample.replace("\"live\": \"blue\"", "\"live\": null").replace(
            "\"present\": false,\n      \"desired\": 0,\n      \"running\": 0,\n      \"image\": null,\n      \"image-digest\": null,\n      \"last-probe\": \"unknown\"",
            "\"present\": true,\n      \"desired\": 1,\n      \"running\": 1,\n      \"image\": \"hello:4\",\n      \"image-digest\": null,\n      \"last-probe\": \"healthy\"",
        );
        std::fs::write(&input, sample).unwrap();
        let output = cutover_binary(&[
            "plugin",
            "run",
            wasm.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{output:?}");
        let expected = match builtin.kind {
            PluginKind::DeployGate => "answer:  decide -> allow",
            PluginKind::TargetSelector => "answer:  error: no live colour is recorded",
            PluginKind::HealthPolicy => "answer:  evaluate -> healthy",
            PluginKind::ProxyTemplate => "answer:  render -> 1 file(s)",
            PluginKind::RolloutAnalysis => "answer:  analyze -> promote",
        };
        assert!(stdout.contains(expected), "{stdout}");
        assert!(!stdout.contains("fuel:    0 of"), "{stdout}");
    }
}

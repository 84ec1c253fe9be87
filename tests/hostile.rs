//! Hostile and malformed input: a property test of the config loader, plugins whose
//! output or behaviour is hostile (run through real deploys), a registry password
//! that must not leak anywhere, and names and paths with spaces, unicode and shell
//! metacharacters.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cutover::cli::exit;
use cutover::config::{Config, ConfigError};
use proptest::prelude::*;
use serde_json::Value;

use crate::support::guests::plugin_table;
use crate::support::service::{Output, Service};
use crate::support::{TestRegistry, hello_context, unique_service};

// ---------------------------------------------------------------------------------
// The config loader never panics, and every error names a key or a line.

/// A config that uses every table of the schema.
const VALID: &str = r#"service = "hello"
state_dir = ".cutover"

[image]
build = { context = "app", dockerfile = "Dockerfile", args = { VERSION = "1" } }
keep = 3

[image.registry]
server = "127.0.0.1:5000"
username = "ci"
password_env = "REGISTRY_PASSWORD"

[container]
port = 8080
env = { MODE = "prod" }
volumes = ["/srv/data:/data:ro"]
labels = { team = "web" }
command = ["/hello", "--flag"]
stop_grace = "5s"
network = { name = "deploy", subnet = "172.20.0.0/16", gateway = "172.20.0.1" }

[blue]
host_port = 18081
host_ip = "127.0.0.1"

[green]
host_port = 18082

[health]
path = "/health"
host = "app.example.com"
timeout = "1s"
first_delay = "20ms"
interval = "100ms"
deadline = "60s"
headers = ["X-Version"]

[proxy]
mode = "managed"
listen = "127.0.0.1:8080"
nginx = "nginx"
command_timeout = "30s"
variables = { server_name = "app.example.com" }

[verify]
host = "app.example.com"
expect_header = "X-Color: {color}"
expect_body = "ok"
timeout = "5s"

[drain]
timeout = "30s"

[history]
deploys = 50

[plugins.deploy-gate]
source = "builtin:tag-pattern"
config = { pattern = "cicd" }
limits = { deadline_ms = 100, fuel = 1000000 }

[plugins.health-policy]
source = "plugins/p95.wasm"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#;

/// Parses `text`; on error, checks that the message names a key or a line that exists.
fn parse_names_key_or_line(text: &str) -> Result<(), TestCaseError> {
    let file = Path::new("/srv/app/cutover.toml");
    let Err(error) = Config::parse(text, file) else {
        return Ok(());
    };
    let message = error.to_string();
    prop_assert!(message.contains("/srv/app/cutover.toml"), "{message}");
    match &error {
        ConfigError::Syntax { line, .. } => {
            let lines = text.split('\n').count();
            prop_assert!(
                (1..=lines).contains(line),
                "line {line} of {lines}: {message}"
            );
            prop_assert!(message.contains(&format!("line {line}")), "{message}");
        }
        ConfigError::Invalid { key, .. } => {
            prop_assert!(
                !key.is_empty() && !key.starts_with('(') && !key.starts_with('.'),
                "the error names no key: {message}"
            );
            prop_assert!(message.contains(&format!("key `{key}`")), "{message}");
        }
        ConfigError::Read { .. } => prop_assert!(false, "parse never reads: {message}"),
    }
    Ok(())
}

/// A line of something like TOML: keys of the schema, headers, values of every type,
/// and junk.
fn tomlish_line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "service",
        "state_dir",
        "build",
        "ref",
        "keep",
        "port",
        "env",
        "host_port",
        "host_ip",
        "ip",
        "upstream",
        "path",
        "interval",
        "deadline",
        "mode",
        "listen",
        "nginx",
        "config_dir",
        "test_command",
        "reload_command",
        "url",
        "expect_header",
        "timeout",
        "deploys",
        "source",
        "sha256",
        "config",
        "limits",
        "deadline_ms",
        "memory_mib",
        "x",
        "\"quoted key\"",
        "a.b.c",
    ]);
    let header = prop::sample::select(vec![
        "[image]",
        "[image.registry]",
        "[container]",
        "[container.env]",
        "[container.network]",
        "[blue]",
        "[green]",
        "[health]",
        "[proxy]",
        "[proxy.variables]",
        "[verify]",
        "[drain]",
        "[history]",
        "[plugins]",
        "[plugins.deploy-gate]",
        "[plugins.proxy-template.limits]",
        "[[container]]",
        "[nope]",
        "[",
        "[]",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        Just("true".to_owned()),
        "\"[^\"\\\\\n]{0,20}\"",
        Just("\"127.0.0.1:8080\"".to_owned()),
        Just("\"99999999999999999999h\"".to_owned()),
        Just("\"10s\"".to_owned()),
        Just("\"managed\"".to_owned()),
        Just("\"external\"".to_owned()),
        Just("[]".to_owned()),
        Just("[\"a\", 1]".to_owned()),
        Just("{}".to_owned()),
        Just("{ a = { b = [ { c = 1 } ] } }".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        Just("'''\nmulti\n'''".to_owned()),
        "\\PC{0,12}",
    ];
    prop_oneof![
        3 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => header.prop_map(str::to_owned),
        1 => "\\PC{0,30}",
        1 => Just(String::new()),
    ]
}

/// One way to damage a config.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    ReplaceValue(usize, String),
    InsertLine(usize, String),
    InsertText(usize, String),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let i = 0usize..200;
    prop_oneof![
        i.clone().prop_map(Mutation::DeleteLine),
        i.clone().prop_map(Mutation::DuplicateLine),
        (i.clone(), i.clone()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (i.clone(), tomlish_line()).prop_map(|(a, v)| {
            Mutation::ReplaceValue(
                a,
                v.split_once(" = ").map_or(v.clone(), |(_, v)| v.to_owned()),
            )
        }),
        (i.clone(), tomlish_line()).prop_map(|(a, l)| Mutation::InsertLine(a, l)),
        (0usize..4000, "\\PC{1,4}|[\\[\\]{}=\"'\n#,.]")
            .prop_map(|(a, t)| Mutation::InsertText(a, t)),
        (0usize..4000).prop_map(Mutation::Truncate),
    ]
}

/// The largest char boundary at or below `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // An earlier mutation may have truncated the text to nothing.
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    match mutation {
        Mutation::DeleteLine(i) => {
            lines.remove(i % n);
        }
        Mutation::DuplicateLine(i) => lines.insert(i % n, lines[i % n].clone()),
        Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
        Mutation::ReplaceValue(i, value) => {
            let line = &mut lines[i % n];
            if let Some((key, _)) = line.split_once(" = ") {
                *line = format!("{key} = {value}");
            }
        }
        Mutation::InsertLine(i, line) => lines.insert(i % (n + 1), line.clone()),
        Mutation::InsertText(at, insert) => {
            let mut text = lines.join("\n");
            text.insert_str(floor_boundary(&text, *at), insert);
            return text;
        }
        Mutation::Truncate(at) => {
            let text = lines.join("\n");
            return text[..floor_boundary(&text, *at)].to_owned();
        }
    }
    lines.join("\n")
}

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // CI runs in a fresh clone: a regression file would not survive, and tests
        // must not write into the source tree. A failure prints the shrunk input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn the_valid_config_used_by_the_property_tests_parses() {
    Config::parse(VALID, Path::new("/srv/app/cutover.toml")).expect("VALID parses");
}

proptest! {
    #![proptest_config(proptest_config(2000))]

    #[test]
    fn config_loader_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        parse_names_key_or_line(&text)?;
    }

    #[test]
    fn config_loader_never_panics_on_tomlish_text(
        lines in prop::collection::vec(tomlish_line(), 0..40)
    ) {
        parse_names_key_or_line(&lines.join("\n"))?;
    }

    #[test]
    fn config_loader_names_the_key_or_line_of_any_mutation_of_a_valid_config(
        mutations in prop::collection::vec(mutation(), 1..4)
    ) {
        let text = mutations.iter().fold(VALID.to_owned(), |t, m| apply(&t, m));
        parse_names_key_or_line(&text)?;
    }
}

// ---------------------------------------------------------------------------------
// Names and paths.

const MINIMAL: &str = "service = \"hello\"\n[image]\nref = \"hello:1\"\n[container]\nport = 8080\n\
                       [proxy]\nmode = \"managed\"\nlisten = \"127.0.0.1:8080\"\n";

fn refusal(text: &str) -> String {
    match Config::parse(text, Path::new("/srv/app/cutover.toml")) {
        Ok(_) => panic!("should be refused:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn service_names_with_spaces_unicode_or_shell_metacharacters_are_refused() {
    for bad in [
        "my app",
        "héllo",
        "☃",
        "a;rm -rf /",
        "$(id)",
        "`id`",
        "a|b",
        "a&b",
        "a>b",
        "../etc",
        "a/b",
        "a\\nb",
        "-rf",
        ".hidden",
        "UPPER",
        "",
    ] {
        let text = MINIMAL.replace("\"hello\"", &format!("\"{bad}\""));
        let message = refusal(&text);
        assert!(message.contains("key `service`"), "{bad:?}: {message}");
        assert!(message.contains("a-z, 0-9"), "{bad:?}: {message}");
    }
}

#[test]
fn image_refs_with_spaces_unicode_or_shell_metacharacters_are_refused() {
    for bad in [
        "hello world:1",
        "héllo:1",
        "hello:1;rm -rf /",
        "$(id):1",
        "hello:`id`",
        "hello:1|sh",
        "hello:1&",
        "hello:1\\n",
        "hello:${HOME}",
        "'hello:1'",
        "",
    ] {
        let text = MINIMAL.replace("\"hello:1\"", &format!("\"{bad}\""));
        let message = refusal(&text);
        assert!(message.contains("key `image.ref`"), "{bad:?}: {message}");
    }
    for good in [
        "hello:1",
        "127.0.0.1:5000/team/hello:v1.2-rc_3",
        "hello@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let text = MINIMAL.replace("\"hello:1\"", &format!("\"{good}\""));
        Config::parse(&text, Path::new("/srv/app/cutover.toml"))
            .unwrap_or_else(|e| panic!("{good:?} is a valid reference: {e}"));
    }
}

#[test]
fn state_dirs_the_managed_nginx_cannot_hold_are_refused_at_load() {
    for bad in ["state$x", "a\"b", "back\\slash", "line\nbreak"] {
        let text = MINIMAL.replace(
            "service = \"hello\"\n",
            &format!(
                "service = \"hello\"\nstate_dir = {}\n",
                toml::Value::String(bad.to_owned())
            ),
        );
        let message = refusal(&text);
        assert!(message.contains("key `state_dir`"), "{bad:?}: {message}");
    }
    // Spaces, unicode and other punctuation are fine: nginx gets them quoted, and
    // every program gets them as one argv word.
    let text = MINIMAL.replace(
        "service = \"hello\"\n",
        "service = \"hello\"\nstate_dir = \"my state ü ☃ (1) 'q' &;\"\n",
    );
    Config::parse(&text, Path::new("/srv/my app/cutover.toml")).expect("a path with spaces");
}

/// Copies the hello image context into `dir`.
fn copy_context(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for name in ["Dockerfile", "hello"] {
        std::fs::copy(hello_context().join(name), dir.join(name)).unwrap();
    }
}

#[test]
fn deploys_from_a_directory_with_spaces_unicode_and_metacharacters() {
    // Everything a shell would trip on except `$`, `"` and `\`, which nginx's config
    // cannot hold (refused below).
    let dir_name = "my app ünïcødé ☃ (1) 'q' & ; | *";
    let svc = Service::new_in("h-paths", dir_name);
    let context = svc.base.join("build context ü");
    copy_context(&context);
    svc.edit_config(|text| {
        text.replace(
            &format!("context = \"{}\"", hello_context().display()),
            "context = \"build context ü\"",
        )
    });
    // A build argument and an app variable full of shell syntax are plain data.
    let canary = std::env::temp_dir().join(format!("cutover-canary-{}", svc.name));
    let version = format!("v1 ü $(touch {0}) `touch {0}`;|&", canary.display());
    svc.set_container_env("EXTRA", "$(touch /tmp/x) ; rm -rf / ' \\\" ü");

    svc.cutover(&["deploy", "--build-arg", &format!("VERSION={version}")])
        .success();
    let r = svc.get("/");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.trim(), format!("hello {version} from blue"));
    svc.deploy("v2").success();
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
    let st = svc.status();
    assert!(st["problems"].as_array().unwrap().is_empty(), "{st:#}");
    assert_eq!(st["live"]["color"], "green");
    assert!(
        svc.state_dir()
            .join("nginx/conf.d/service-url.inc")
            .is_file(),
        "the state directory is inside {dir_name:?}"
    );
    assert!(!canary.exists(), "nothing was run through a shell");

    // A directory nginx's config cannot name is refused when the config loads,
    // before anything starts.
    let svc = Service::new_in("h-dollar", "price $5");
    let out = svc.cutover(&["deploy"]).code(exit::CONFIG.into());
    assert!(
        out.stderr.contains("key `state_dir`") && out.stderr.contains("'$'"),
        "{}",
        out.stderr
    );
    assert!(svc.containers().is_empty(), "{:?}", svc.containers());
}

#[test]
fn an_image_flag_with_shell_metacharacters_is_data_not_a_command() {
    let svc = Service::new("h-imageflag");
    let canary = std::env::temp_dir().join(format!("cutover-canary-{}", svc.name));
    let image = format!("$(touch {})", canary.display());
    let out = svc.cutover(&["deploy", "--image", &image]);
    assert_eq!(out.code, i32::from(exit::CONFIG), "{}", out.stderr);
    assert!(
        out.stderr.contains(&image),
        "names the reference: {}",
        out.stderr
    );
    assert!(!canary.exists(), "nothing was run through a shell");
    assert!(svc.containers().is_empty(), "{:?}", svc.containers());
}

// ---------------------------------------------------------------------------------
// Hostile plugins, through real deploys.

/// The `step-started` events of a `--output json` run.
fn steps_started(out: &Output) -> Vec<String> {
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "step-started")
        .filter_map(|e| e["step"].as_str().map(str::to_owned))
        .collect()
}

/// All of stdout and stderr, plus the text of every JSON event's string fields
/// unescaped (so a message can be searched for as the user would read it).
fn all_output(out: &Output) -> String {
    let mut text = format!("{}\n{}", out.stdout, out.stderr);
    for event in out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if let Some(fields) = event.as_object() {
            for value in fields.values().filter_map(Value::as_str) {
                text.push('\n');
                text.push_str(value);
            }
        }
    }
    text
}

/// Deploys v2 as JSON with `table` appended to the config, then restores the config.
fn deploy_with_plugin(svc: &Service, table: &str) -> Output {
    let original = std::fs::read_to_string(svc.config_path()).unwrap();
    svc.append_config(table);
    let out = svc.cutover(&["--output", "json", "deploy", "--build-arg", "VERSION=v2"]);
    std::fs::write(svc.config_path(), original).unwrap();
    out
}

#[test]
fn template_output_that_escapes_the_config_dir_is_refused_before_anything_is_written() {
    let svc = Service::new("h-template");
    svc.deploy("v1").success();
    let before = svc.baseline();
    let outside = svc.state_dir().join("etc/cron.d/evil");
    let system_conf = std::fs::read("/etc/nginx/nginx.conf").ok();
    for (mode, expected) in [
        (
            "traversal",
            "\"../../etc/cron.d/evil\" is not a relative path",
        ),
        (
            "absolute",
            "\"/etc/nginx/nginx.conf\" is not a relative path",
        ),
        ("break-out", "closes a block it did not open"),
    ] {
        let table = plugin_table("proxy-template", "hostile_template", mode);
        let out = deploy_with_plugin(&svc, &table).code(exit::DEPLOY_FAILED.into());
        let text = all_output(&out);
        assert!(text.contains(expected), "{mode}: {text}");
        assert!(
            !steps_started(&out).iter().any(|s| s == "validate"),
            "{mode}: nothing may be written: {text}"
        );
        svc.assert_unchanged(&before, &["failed"]);
    }
    assert!(!outside.exists());
    assert_eq!(std::fs::read("/etc/nginx/nginx.conf").ok(), system_conf);
}

#[test]
fn template_output_that_hijacks_traffic_is_caught_by_verify_and_rolled_back() {
    let svc = Service::new("h-hijack");
    svc.deploy("v1").success();
    let before = svc.baseline();
    let table = plugin_table("proxy-template", "hostile_template", "hijack");
    let out = deploy_with_plugin(&svc, &table).code(exit::DEPLOY_FAILED.into());
    let text = all_output(&out);
    assert!(text.contains("302"), "{text}");
    svc.assert_unchanged(&before, &["rolled-back"]);
}

#[test]
fn builtin_template_refuses_values_that_inject_nginx_syntax() {
    let svc = Service::new("h-inject");
    svc.deploy("v1").success();
    let before = svc.baseline();
    let original = std::fs::read_to_string(svc.config_path()).unwrap();
    svc.edit_config(|text| {
        text.replace(
            "[proxy]\n",
            "[proxy]\nvariables = { server_name = \"x; return 302 http://evil.invalid/\" }\n",
        ) + "\n[plugins.proxy-template]\nsource = \"builtin:nginx-service-url\"\n\
             config = { template = \"server_name {{server_name}};\" }\n"
    });
    let out = svc.deploy("v2").code(exit::DEPLOY_FAILED.into());
    assert!(
        out.stderr.contains("would inject nginx syntax"),
        "{}",
        out.stderr
    );
    std::fs::write(svc.config_path(), &original).unwrap();
    svc.assert_unchanged(&before, &["failed"]);

    // A template path outside the config dir is a config error, found before anything
    // starts.
    svc.append_config(
        "\n[plugins.proxy-template]\nsource = \"builtin:nginx-service-url\"\n\
         config = { file = \"../nginx.conf\" }\n",
    );
    let out = svc
        .cutover(&["--output", "json", "deploy"])
        .code(exit::CONFIG.into());
    assert!(all_output(&out).contains("`file`"), "{}", all_output(&out));
    assert!(steps_started(&out).is_empty(), "{}", out.stdout);
    std::fs::write(svc.config_path(), &original).unwrap();
    svc.assert_unchanged(&before, &["failed"]);
}

#[test]
fn a_selector_that_errors_traps_or_picks_the_live_color_aborts_before_anything_starts() {
    let svc = Service::new("h-selector");
    svc.deploy("v1").success();
    let before = svc.baseline();
    for (mode, expected) in [
        ("error", "hostile selector cannot choose on purpose"),
        ("trap", "hostile selector panicked on purpose"),
        ("live", "the colour serving traffic now"),
    ] {
        let table = plugin_table("target-selector", "hostile_selector", mode);
        let out = deploy_with_plugin(&svc, &table).code(exit::DEPLOY_FAILED.into());
        let text = all_output(&out);
        assert!(text.contains(expected), "{mode}: {text}");
        let steps = steps_started(&out);
        assert!(
            !steps.iter().any(|s| s == "clear" || s == "start"),
            "{mode}: nothing may start after a failed selection: {steps:?}"
        );
        svc.assert_unchanged(&before, &["failed"]);
    }
}

/// A gate that cannot decide (loops past its deadline, errors or crashes) must not
/// let the deploy run, and must not look like a policy denial either: exit 3 means
/// "not this commit" and is green in CI, while a broken gate is a bug someone has to
/// fix, so it fails the run (exit 4) before any image is built.
#[test]
fn a_gate_that_loops_errors_or_traps_fails_the_deploy_and_nothing_runs() {
    let svc = Service::new("h-gate");
    svc.deploy("v1").success();
    let before = svc.baseline();
    for (mode, limits, expected) in [
        (
            "loop",
            // Fuel for ~minutes: the wall-clock deadline is what must stop it.
            "limits = { fuel = 10000000000, deadline_ms = 300 }\n",
            "ran past its deadline of 300 ms",
        ),
        ("error", "", "hostile gate cannot decide on purpose"),
        ("trap", "", "hostile gate panicked on purpose"),
    ] {
        let table = plugin_table("deploy-gate", "hostile_gate", mode) + limits;
        let started = std::time::Instant::now();
        let out = deploy_with_plugin(&svc, &table).code(exit::DEPLOY_FAILED.into());
        assert!(started.elapsed() < Duration::from_secs(30), "{mode}");
        let text = all_output(&out);
        assert!(text.contains(expected), "{mode}: {text}");
        assert_eq!(steps_started(&out), ["gate"], "{mode}: {text}");
        svc.assert_unchanged(&before, &["failed"]);
    }
}

/// The `rollout-analysis` world (new in 0.2.0) under the same sandbox, limits and
/// error kinds as the others: each way a hostile analysis can answer or misbehave is
/// a distinct error, nothing it returns reaches a terminal unescaped, and a good
/// call right after works.
#[test]
fn an_analysis_that_loops_hoards_floods_or_lies_is_contained() {
    use cutover::events::Silent;
    use cutover::plugin::types::AnalysisDecision;
    use cutover::plugin::{AnalysisPlugin, Limits, PluginError, PluginHost, WitVersion, sample};

    let host = PluginHost::uncached().unwrap();
    let wasm = crate::support::guests::guest("hostile_analysis");
    let load = |mode: &str, limits: Limits| {
        AnalysisPlugin::load_bytes(
            &host,
            &format!("hostile-analysis[{mode}]"),
            &wasm,
            mode,
            limits,
            Arc::new(Silent),
        )
    };
    let analyze = |mode: &str| {
        load(mode, Limits::default())
            .unwrap()
            .analyze(&sample::analysis_input())
    };
    let good = load("promote", Limits::default()).unwrap();
    assert_eq!(good.version(), WitVersion::V0_2_0);
    let err = load("reject", Limits::default()).err().unwrap();
    assert!(matches!(err, PluginError::ConfigRejected { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("[plugins.rollout-analysis.config]"),
        "{err}"
    );

    let deadline = Limits {
        fuel: 10_000_000_000,
        deadline: Duration::from_millis(200),
        ..Limits::default()
    };
    let err = load("loop", deadline)
        .unwrap()
        .analyze(&sample::analysis_input())
        .unwrap_err();
    assert!(matches!(err, PluginError::Timeout { .. }), "{err:?}");
    for (mode, matches) in [
        ("loop", "OutOfFuel"),
        ("alloc", "MemoryLimit"),
        ("huge", "OutputTooLarge"),
        ("empty-reason", "InvalidOutput"),
        ("err", "Refused"),
        ("panic", "Trap"),
    ] {
        let err = analyze(mode).unwrap_err();
        assert!(format!("{err:?}").starts_with(matches), "{mode}: {err:?}");
        assert!(
            err.to_string()
                .contains(&format!("hostile-analysis[{mode}]")),
            "{err}"
        );
        assert_eq!(
            good.analyze(&sample::analysis_input()).unwrap(),
            AnalysisDecision::Promote,
            "after {mode}"
        );
    }
    let AnalysisDecision::Abort(forged) = analyze("forged").unwrap() else {
        panic!("forged aborts");
    };
    assert!(
        !forged.contains('\n') && !forged.contains('\u{1b}'),
        "{forged:?}"
    );
    // What the host sends arrives whole.
    let AnalysisDecision::Hold(echo) = analyze("echo").unwrap() else {
        panic!("echo holds");
    };
    assert_eq!(
        echo,
        "step 0 of 3 at 10%: canary 120 requests, baseline 1080, 2 probes"
    );
}

// ---------------------------------------------------------------------------------
// Secrets.

/// Every process's argv (and, for the processes named, their environment) that
/// contains `needle`, sampled until `stop`.
fn watch_processes(
    needle: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, BTreeSet<String>)> {
    std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        let mut samples = 0;
        // Bounded: the deploy under watch ends well within this.
        for _ in 0..200_000 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            samples += 1;
            let Ok(entries) = std::fs::read_dir("/proc") else {
                break;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if let Ok(argv) = std::fs::read(path.join("cmdline"))
                    && String::from_utf8_lossy(&argv).contains(&needle)
                {
                    seen.insert(String::from_utf8_lossy(&argv).replace('\0', " "));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (samples, seen)
    })
}

/// Every file under `dir`, with its contents.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str, secret: &str) {
    assert!(
        !text.contains(secret),
        "the registry password leaked into {what}"
    );
}

#[test]
fn the_registry_password_appears_in_no_output_file_error_or_process() {
    let password = format!("pw-{}-S3cr3t", unique_service("x"));
    let registry = TestRegistry::start("cutover", &password);
    let svc = Service::new("h-secret");
    let var = "CUTOVER_TEST_REGISTRY_PASSWORD";
    svc.use_registry(&registry, var);
    let env = [(var, password.as_str())];

    // A deploy (JSON events) and a second one (human lines) while every process's
    // argv is sampled.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_processes(password.clone(), stop.clone());
    let first = svc.spawn_env(
        &["--output", "json", "deploy", "--build-arg", "VERSION=v1"],
        &env,
    );
    let first = first.wait().success();
    let second = svc
        .cutover_env(&["deploy", "--build-arg", "VERSION=v2"], &env)
        .success();
    stop.store(true, Ordering::SeqCst);
    let (samples, seen) = watcher.join().unwrap();
    assert!(
        samples > 10,
        "the process table was sampled {samples} times"
    );
    assert!(
        seen.is_empty(),
        "the registry password is in the argv of: {seen:?}"
    );
    assert!(
        first.stdout.contains("\"event\":\"step-finished\""),
        "JSON events were printed"
    );
    for (what, out) in [("the JSON deploy", &first), ("the human deploy", &second)] {
        assert_no_secret(what, &all_output(out), &password);
    }
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");

    // Reports and history.
    for args in [
        &["status"][..],
        &["status", "--output", "json"],
        &["history"],
    ] {
        let out = svc.cutover_env(args, &env);
        assert_no_secret(
            &format!("`cutover {}`", args.join(" ")),
            &all_output(&out),
            &password,
        );
    }

    // Failures: the registry refuses the login (wrong user), then is gone.
    let wrong_user = std::fs::read_to_string(svc.config_path())
        .unwrap()
        .replace("username = \"cutover\"", "username = \"intruder\"");
    std::fs::write(svc.config_path(), &wrong_user).unwrap();
    let refused = svc.cutover_env(&["deploy", "--build-arg", "VERSION=v3"], &env);
    assert_eq!(
        refused.code,
        i32::from(exit::DEPLOY_FAILED),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("push"), "{}", refused.stderr);
    assert_no_secret("a refused push's error", &all_output(&refused), &password);
    drop(registry);
    let gone = svc.cutover_env(
        &["--output", "json", "deploy", "--build-arg", "VERSION=v4"],
        &env,
    );
    assert_ne!(gone.code, 0, "{}", gone.stderr);
    assert_no_secret("a failed push's error", &all_output(&gone), &password);

    // Every file cutover keeps: state, audit log, lock, nginx config and logs.
    let files = files_under(&svc.state_dir());
    assert!(
        files.iter().any(|(p, _)| p.ends_with("state.json"))
            && files.iter().any(|(p, _)| p.ends_with("audit.jsonl")),
        "{:?}",
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for (path, bytes) in &files {
        assert_no_secret(
            &path.display().to_string(),
            &String::from_utf8_lossy(bytes),
            &password,
        );
    }
    // And what Docker keeps about the containers and images it ran and built.
    let inspect = std::process::Command::new("docker")
        .args(["inspect"])
        .args(
            svc.containers()
                .iter()
                .filter_map(|c| c.split_whitespace().nth(1).map(str::to_owned)),
        )
        .output()
        .unwrap();
    assert_no_secret(
        "docker inspect of the containers",
        &String::from_utf8_lossy(&inspect.stdout),
        &password,
    );
}

/// With the state file gone, the record no longer says which colour is live; the
/// host still asks nginx which colour serves and refuses a selector that picks it.
#[test]
fn a_selector_cannot_replace_the_serving_color_even_when_the_state_file_is_lost() {
    let svc = Service::new("h-lost-state");
    svc.deploy("v1").success();
    std::fs::remove_file(svc.state_file()).unwrap();
    let table = plugin_table("target-selector", "hostile_selector", "blue");
    let out = deploy_with_plugin(&svc, &table).code(exit::DEPLOY_FAILED.into());
    let text = all_output(&out);
    assert!(text.contains("the colour serving traffic now"), "{text}");
    assert!(text.contains("cutover recover"), "{text}");
    assert!(
        !steps_started(&out)
            .iter()
            .any(|s| s == "clear" || s == "start"),
        "{text}"
    );
    let r = svc.get("/");
    assert_eq!(r.body.trim(), "hello v1 from blue");
}

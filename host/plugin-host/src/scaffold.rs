//! `cutover plugin new`: writes a plugin project that builds as is, for one kind, in
//! Rust (on the `cutover-plugin` SDK) or Python (for componentize-py).
//!
//! Each project's decision is the kind's default behaviour, small enough to read in
//! one screen, with a config that shows the three things a config does (an optional
//! key, a checked value, an error naming the key), a `sample.json` input for
//! `cutover plugin run`, and a README with the next commands. This module only
//! writes files into a new or empty directory; it never builds or runs anything.

use std::path::{Path, PathBuf};

use super::{PluginError, PluginKind, WIT, json};

/// The language of a new plugin project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate on the `cutover-plugin` SDK, built for `wasm32-wasip2`.
    Rust,
    /// An `app.py` for componentize-py, with the WIT beside it.
    Python,
}

/// The componentize-py version the Python projects are written and tested against.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// Where this binary's source tree kept the SDK crate; a project made on the machine
/// that built cutover depends on it by path, anyone else by git.
const SDK_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../plugins/cutover-plugin");

/// The files of a new project: (relative path, contents).
type Files = Vec<(&'static str, String)>;

/// Writes a `kind` plugin project in `lang` into `dir` (created; it must be empty
/// if it exists) and returns what to do next.
///
/// # Errors
/// [`PluginError::Scaffold`] when `dir` is not empty or a file cannot be written.
pub fn new(kind: PluginKind, dir: &Path, lang: Lang) -> Result<String, PluginError> {
    let fail = |detail: String| PluginError::Scaffold {
        dir: dir.to_owned(),
        detail,
    };
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        return Err(fail(
            "the directory is not empty; choose a new directory".to_owned(),
        ));
    }
    if (kind, lang) == (PluginKind::TargetSelector, Lang::Python) {
        // Measured: its `componentize` step panics ("one or more duplicate items
        // detected when collecting into set or map") on this world, whose exported
        // function returns a type the world also `use`s; the other three build.
        return Err(fail(format!(
            "componentize-py {COMPONENTIZE_PY_VERSION} cannot build the target-selector world \
             (it panics with \"duplicate items detected\"); write the selector in Rust: \
             `cutover plugin new target-selector {}`",
            dir.display()
        )));
    }
    let name = crate_name(dir);
    let files = match lang {
        Lang::Rust => rust(kind, &name),
        Lang::Python => python(kind, &name),
    };
    for (path, contents) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, contents)
            .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
    }
    let mut text = format!(
        "Created a {kind} plugin in {} ({}):\n",
        dir.display(),
        match lang {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
        }
    );
    for (path, _) in &files {
        text.push_str(&format!("  {path}\n"));
    }
    text.push_str(&format!("\nNext (see {}/README.md):\n\n", dir.display()));
    text.push_str(&format!("cd {}\n", dir.display()));
    text.push_str(&next_commands(kind, &name, lang));
    Ok(text)
}

/// A crate / module name from the directory's name: lowercase letters, digits and
/// `-`, starting with a letter.
fn crate_name(dir: &Path) -> String {
    let raw = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-');
    if name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.to_owned()
    } else {
        format!("plugin-{}", if name.is_empty() { "new" } else { name })
    }
}

/// The `.wasm` file a project builds.
pub fn wasm_path(kind: PluginKind, name: &str, lang: Lang) -> PathBuf {
    match lang {
        Lang::Rust => PathBuf::from(format!(
            "target/wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        )),
        Lang::Python => PathBuf::from(format!("{}.wasm", kind.name().replace('-', "_"))),
    }
}

/// The commands after `plugin new`, one a line.
fn next_commands(kind: PluginKind, name: &str, lang: Lang) -> String {
    let wasm = wasm_path(kind, name, lang);
    let wasm = wasm.display();
    match lang {
        Lang::Rust => format!(
            "cargo test\n\
             cargo build --release --target wasm32-wasip2\n\
             cutover plugin run {wasm} --input sample.json\n"
        ),
        // The deadline the README's limits give a Python plugin (see `readme`).
        Lang::Python => format!(
            "componentize-py -d wit -w {kind} componentize app -o {wasm}\n\
             cutover plugin run {wasm} --input sample.json --deadline-ms 1000\n\
             cutover plugin check {wasm} --deadline-ms 1000\n"
        ),
    }
}

/// What the sample input makes the generated decision answer, for the README.
fn sample_answer(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::DeployGate => {
            "decide -> allow: no pattern is configured: every deploy is allowed"
        }
        PluginKind::TargetSelector => "select -> green",
        PluginKind::HealthPolicy => "evaluate -> healthy",
        PluginKind::ProxyTemplate => "render -> 1 file(s)",
        PluginKind::RolloutAnalysis => "analyze -> promote",
    }
}

/// The Rust type name and the export macro of `kind`.
fn rust_names(kind: PluginKind) -> (&'static str, &'static str) {
    match kind {
        PluginKind::DeployGate => ("DeployGate", "export_deploy_gate"),
        PluginKind::TargetSelector => ("TargetSelector", "export_target_selector"),
        PluginKind::HealthPolicy => ("HealthPolicy", "export_health_policy"),
        PluginKind::ProxyTemplate => ("ProxyTemplate", "export_proxy_template"),
        PluginKind::RolloutAnalysis => ("RolloutAnalysis", "export_rollout_analysis"),
    }
}

fn rust(kind: PluginKind, name: &str) -> Files {
    let sdk = if Path::new(SDK_PATH).join("Cargo.toml").is_file() {
        let path = Path::new(SDK_PATH)
            .canonicalize()
            .unwrap_or_else(|_| PathBuf::from(SDK_PATH));
        format!(
            "cutover-plugin = {{ path = {:?} }}",
            path.display().to_string()
        )
    } else {
        "cutover-plugin = { git = \"https://github.com/cutover-dev/cutover\" }".to_owned()
    };
    let cargo_toml = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
# The guest SDK: the WIT types, typed config, the export macro and `log`.
{sdk}
serde = {{ version = "1", features = ["derive"] }}

# A plugin is loaded on every deploy: small and fast to compile beats the last
# percent of speed, and a panic should trap, not unwind.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true

# A project of its own, even when created inside another workspace.
[workspace]
"#
    );
    let (trait_name, export) = rust_names(kind);
    let body = match kind {
        PluginKind::DeployGate => RUST_GATE,
        PluginKind::TargetSelector => RUST_SELECTOR,
        PluginKind::HealthPolicy => RUST_HEALTH,
        PluginKind::ProxyTemplate => RUST_TEMPLATE,
        PluginKind::RolloutAnalysis => RUST_ANALYSIS,
    };
    let lib = body
        .replace("{trait}", trait_name)
        .replace("{export}", export)
        .replace("{kind}", kind.name());
    vec![
        ("Cargo.toml", cargo_toml),
        ("src/lib.rs", lib),
        ("sample.json", json::sample(kind)),
        (".gitignore", "/target\n".to_owned()),
        ("README.md", readme(kind, name, Lang::Rust)),
    ]
}

fn python(kind: PluginKind, name: &str) -> Files {
    let app = match kind {
        // Refused by `new`: componentize-py cannot build this world.
        PluginKind::DeployGate | PluginKind::TargetSelector => PY_GATE,
        PluginKind::HealthPolicy => PY_HEALTH,
        PluginKind::ProxyTemplate => PY_TEMPLATE,
        PluginKind::RolloutAnalysis => PY_ANALYSIS,
    };
    vec![
        (
            "app.py",
            app.replace("{header}", PY_HEADER)
                .replace("{kind}", kind.name()),
        ),
        ("wit/plugin.wit", WIT.to_owned()),
        ("sample.json", json::sample(kind)),
        (
            ".gitignore",
            format!(
                "/{}\n/.venv\n__pycache__/\n",
                wasm_path(kind, name, Lang::Python).display()
            ),
        ),
        ("README.md", readme(kind, name, Lang::Python)),
    ]
}

fn readme(kind: PluginKind, name: &str, lang: Lang) -> String {
    let wasm = wasm_path(kind, name, lang);
    let wasm = wasm.display();
    let next = next_commands(kind, name, lang);
    let answer = sample_answer(kind);
    let setup = match lang {
        Lang::Rust => "Rust with the WebAssembly target (`rustup target add wasm32-wasip2`) and \
                       `cutover` on your `PATH`. Outside the cutover repository, point the \
                       `cutover-plugin` dependency in `Cargo.toml` at a checkout or the git \
                       repository of the cutover version you deploy with."
            .to_owned(),
        Lang::Python => format!(
            "`cutover` on your `PATH`, and componentize-py {COMPONENTIZE_PY_VERSION}, e.g. \
             `python3 -m venv .venv && .venv/bin/pip install componentize-py=={COMPONENTIZE_PY_VERSION}` \
             then `. .venv/bin/activate`. `wit/plugin.wit` is `cutover plugin wit`; `app.py` \
             implements the `{kind}` world."
        ),
    };
    let limits = match lang {
        Lang::Rust => String::new(),
        Lang::Python => "\n# A Python plugin carries its interpreter: its first load compiles \
                         ~18 MB (about 30 s, then cached),\n# and a call uses ~12 MiB of \
                         memory, ~0.3 M fuel and 2-7 ms, past 100 ms on a busy machine:\n\
                         [plugins.KIND.limits]\nmemory_mib = 64\ndeadline_ms = 1000\n"
            .replace("KIND", kind.name()),
    };
    let test = match lang {
        Lang::Rust => "`cargo test` runs the decision natively, `log` included \
                       (`cutover_plugin::take_logs()` returns what it logged). "
            .to_owned(),
        Lang::Python => String::new(),
    };
    format!(
        r#"# {name}: a cutover `{kind}` plugin

You need {setup}

```sh
{next}```

{test}`sample.json` is `cutover plugin sample {kind}`; edit it to try other inputs.
`cutover plugin run` makes one decision under the real sandbox and limits and prints
the answer (for the sample as generated: `{answer}`), every log line, the fuel,
memory and time it took. Pass the config as JSON with `--plugin-config '{{...}}'`.

When it does what you want, pin it next to your `cutover.toml`:

```sh
cutover plugin check {wasm}
cutover plugin sha256 {wasm}
```

```toml
[plugins.{kind}]
source = "plugins/{file}"   # relative to cutover.toml
sha256 = "…"                # from `cutover plugin sha256`; a changed file is refused
config = {{ }}               # the keys in the config section of the source
{limits}```
"#,
        file = wasm.to_string().rsplit('/').next().unwrap_or_default(),
    )
}

const RUST_GATE: &str = r##"//! A cutover `{kind}` plugin: allow a deploy when a tag on HEAD contains
//! `pattern`, or every deploy when no pattern is configured.
//!
//! Config (`[plugins.{kind}].config`; `{}` when left out):
//! - `pattern` (string, optional): a substring some tag on HEAD must contain.

use cutover_plugin::{Config, {trait}, GateDecision, GateInput, LogLevel, log};
use serde::Deserialize;

/// The plugin's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The substring a tag on HEAD must contain; none allows every deploy.
    pub pattern: Option<String>,
}

impl Config for Settings {
    fn validate(&self) -> Result<(), String> {
        match &self.pattern {
            Some(pattern) if pattern.is_empty() => {
                Err("`pattern` is empty; leave it out to allow every deploy".to_owned())
            }
            _ => Ok(()),
        }
    }
}

pub struct Policy;

impl {trait} for Policy {
    type Config = Settings;

    fn decide(config: &Settings, input: GateInput) -> Result<GateDecision, String> {
        log(LogLevel::Debug, &format!("tags on HEAD: {:?}", input.tags));
        let Some(pattern) = &config.pattern else {
            return Ok(GateDecision::Allow(
                "no pattern is configured: every deploy is allowed".to_owned(),
            ));
        };
        Ok(match input.tags.iter().find(|tag| tag.contains(pattern.as_str())) {
            Some(tag) => GateDecision::Allow(format!("tag `{tag}` on HEAD matches `{pattern}`")),
            None => GateDecision::Deny(format!("no tag on HEAD contains `{pattern}`")),
        })
    }
}

cutover_plugin::{export}!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(tags: &[&str]) -> GateInput {
        GateInput {
            service: "app".to_owned(),
            repository: None,
            branch: Some("main".to_owned()),
            head_sha: None,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            commit_subject: None,
            dirty: false,
            ci_system: None,
            ci_variables: Vec::new(),
        }
    }

    #[test]
    fn a_matching_tag_allows_and_none_denies() {
        let config: Settings = cutover_plugin::parse_config(r#"{"pattern":"cicd"}"#).unwrap();
        let allowed = Policy::decide(&config, input(&["v1-cicd"])).unwrap();
        assert!(matches!(allowed, GateDecision::Allow(_)), "{allowed:?}");
        let denied = Policy::decide(&config, input(&["v1"])).unwrap();
        assert!(matches!(denied, GateDecision::Deny(_)), "{denied:?}");
        assert!(!cutover_plugin::take_logs().is_empty());
        assert!(cutover_plugin::parse_config::<Settings>(r#"{"pattern":""}"#).is_err());
    }
}
"##;

const RUST_SELECTOR: &str = r##"//! A cutover `{kind}` plugin: deploy to the colour that is not live, and to
//! `first` when nothing is live yet.
//!
//! Config (`[plugins.{kind}].config`; `{}` when left out):
//! - `first` (`"blue"` or `"green"`, default `"blue"`): the first deploy's colour.

use cutover_plugin::{Color, Config, {trait}, LogLevel, SelectorInput, log};
use serde::Deserialize;

/// The plugin's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The colour of the first deploy: "blue" (the default) or "green".
    pub first: Option<String>,
}

impl Config for Settings {
    fn validate(&self) -> Result<(), String> {
        match self.first.as_deref() {
            None | Some("blue") | Some("green") => Ok(()),
            Some(other) => Err(format!("`first` is {other:?}; expected \"blue\" or \"green\"")),
        }
    }
}

pub struct Policy;

impl {trait} for Policy {
    type Config = Settings;

    fn select(config: &Settings, input: SelectorInput) -> Result<Color, String> {
        let color = match input.live {
            Some(live) => live.other(),
            None if config.first.as_deref() == Some("green") => Color::Green,
            None => Color::Blue,
        };
        log(LogLevel::Debug, &format!("live: {:?}, deploying to {}", input.live, color.name()));
        Ok(color)
    }
}

cutover_plugin::{export}!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(live: Option<Color>) -> SelectorInput {
        SelectorInput { service: "app".to_owned(), live, slots: Vec::new() }
    }

    #[test]
    fn deploys_to_the_colour_that_is_not_live() {
        let config = Settings::default();
        assert_eq!(Policy::select(&config, input(Some(Color::Blue))), Ok(Color::Green));
        assert_eq!(Policy::select(&config, input(None)), Ok(Color::Blue));
        let green: Settings = cutover_plugin::parse_config(r#"{"first":"green"}"#).unwrap();
        assert_eq!(Policy::select(&green, input(None)), Ok(Color::Green));
        assert!(cutover_plugin::parse_config::<Settings>(r#"{"first":"red"}"#).is_err());
    }
}
"##;

const RUST_HEALTH: &str = r##"//! A cutover `{kind}` plugin: healthy when the probe's status is 200-399;
//! "not yet" otherwise, until `max_attempts` (if set) makes it "failed".
//!
//! `evaluate` is called after every health probe of the colour being brought up.
//! "not yet" asks the host to probe again until its deadline; "failed" gives up at
//! once (the deploy fails and the live colour keeps serving).
//!
//! Config (`[plugins.{kind}].config`; `{}` when left out):
//! - `max_attempts` (integer, optional): give up after this many probes.

use cutover_plugin::{Config, {trait}, HealthInput, HealthVerdict, LogLevel, log};
use serde::Deserialize;

/// The plugin's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Give up after this many probes; none waits for the host's deadline.
    pub max_attempts: Option<u32>,
}

impl Config for Settings {
    fn validate(&self) -> Result<(), String> {
        if self.max_attempts == Some(0) {
            return Err("`max_attempts` is 0; it must be at least 1".to_owned());
        }
        Ok(())
    }
}

pub struct Policy;

impl {trait} for Policy {
    type Config = Settings;

    fn evaluate(config: &Settings, input: HealthInput) -> HealthVerdict {
        let probe = &input.probe;
        log(LogLevel::Debug, &format!("attempt {}: status {:?}", input.attempt, probe.status));
        match probe.status {
            Some(status) if (200..400).contains(&status) => return HealthVerdict::Healthy,
            _ => {}
        }
        let why = match (probe.status, &probe.error) {
            (Some(status), _) => format!("status {status}"),
            (None, Some(error)) => error.clone(),
            (None, None) => "no response".to_owned(),
        };
        match config.max_attempts {
            Some(max) if input.attempt >= max => {
                HealthVerdict::Failed(format!("{why} after {max} attempts"))
            }
            _ => HealthVerdict::NotYet(why),
        }
    }
}

cutover_plugin::{export}!(Policy);

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_plugin::{Color, Instance, ProbeResult};

    fn input(attempt: u32, status: Option<u16>) -> HealthInput {
        HealthInput {
            service: "app".to_owned(),
            color: Color::Green,
            instance: Instance {
                id: "app-green".to_owned(),
                node: None,
                address: "127.0.0.1".to_owned(),
                port: 8082,
            },
            attempt,
            elapsed_ms: 100,
            probe: ProbeResult {
                status,
                headers: Vec::new(),
                body_prefix: String::new(),
                latency_us: 1_000,
                error: status.is_none().then(|| "connection refused".to_owned()),
            },
            history: Vec::new(),
        }
    }

    #[test]
    fn ok_is_healthy_and_errors_are_not_yet_until_max_attempts() {
        let config: Settings = cutover_plugin::parse_config(r#"{"max_attempts":3}"#).unwrap();
        assert_eq!(Policy::evaluate(&config, input(1, Some(204))), HealthVerdict::Healthy);
        assert_eq!(
            Policy::evaluate(&config, input(1, None)),
            HealthVerdict::NotYet("connection refused".to_owned())
        );
        assert!(matches!(Policy::evaluate(&config, input(3, Some(503))), HealthVerdict::Failed(_)));
        assert_eq!(cutover_plugin::take_logs().len(), 3);
        assert!(cutover_plugin::parse_config::<Settings>(r#"{"max_attempts":0}"#).is_err());
    }
}
"##;

const RUST_TEMPLATE: &str = r##"//! A cutover `{kind}` plugin: writes `set $service_url http://ADDR:PORT;` to
//! `service-url.inc`, which the nginx config includes.
//!
//! It switches all traffic to one server. A canary split (`target-weight` under
//! 100) or a colour with several servers (a Swarm service) needs `upstream` blocks:
//! see `builtin:nginx-service-url` for one way to render them. This one refuses.
//!
//! Config (`[plugins.{kind}].config`; `{}` when left out):
//! - `variable` (string, default `"service_url"`): the nginx variable it sets.

use cutover_plugin::{Config, {trait}, ProxyFile, TemplateInput};
use serde::Deserialize;

/// The plugin's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The nginx variable to set, without `$`.
    pub variable: Option<String>,
}

impl Config for Settings {
    fn validate(&self) -> Result<(), String> {
        match &self.variable {
            Some(v) if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                Err(format!("`variable` {v:?} is not an nginx variable name (letters, digits, `_`)"))
            }
            _ => Ok(()),
        }
    }
}

pub struct Policy;

impl {trait} for Policy {
    type Config = Settings;

    fn render(config: &Settings, input: TemplateInput) -> Result<Vec<ProxyFile>, String> {
        if input.target_weight != 100 {
            return Err(format!("this template cannot split traffic ({}%)", input.target_weight));
        }
        let [server] = input.target.servers.as_slice() else {
            return Err(format!("this template renders one server, not {}", input.target.servers.len()));
        };
        if server.address.contains(|c: char| c.is_whitespace() || ";{}\"'#$".contains(c)) {
            return Err(format!("the address {:?} would inject nginx syntax", server.address));
        }
        let variable = config.variable.as_deref().unwrap_or("service_url");
        Ok(vec![ProxyFile {
            path: "service-url.inc".to_owned(),
            contents: format!("set ${variable} http://{};\n", server.socket_address()),
        }])
    }
}

cutover_plugin::{export}!(Policy);

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_plugin::{Color, Instance, Upstream};

    #[test]
    fn renders_the_include() {
        let server = Instance {
            id: "app-green".to_owned(),
            node: None,
            address: "127.0.0.1".to_owned(),
            port: 8082,
        };
        let mut input = TemplateInput {
            service: "app".to_owned(),
            target: Upstream { color: Color::Green, servers: vec![server] },
            previous: None,
            target_weight: 100,
            sticky_key: None,
            variables: Vec::new(),
        };
        let files = Policy::render(&Settings::default(), input.clone()).unwrap();
        assert_eq!(files[0].contents, "set $service_url http://127.0.0.1:8082;\n");
        assert!(cutover_plugin::parse_config::<Settings>(r#"{"variable":"a b"}"#).is_err());
        input.target_weight = 10;
        assert!(Policy::render(&Settings::default(), input).is_err());
    }
}
"##;

const RUST_ANALYSIS: &str = r##"//! A cutover `{kind}` plugin: judges one step of a canary. Holds until the
//! canary served `min_requests` in this step, aborts when its share of 5xx
//! responses is over `max_5xx_percent`, else promotes.
//!
//! `analyze` is called during every step of a canary (`[strategy] kind = "canary"`)
//! with what the proxy's access log says each colour served. "hold" asks again
//! later (bounded by the step's deadline); "abort" sends all traffic back to the
//! live colour and stops the canary.
//!
//! Config (`[plugins.{kind}].config`; `{}` when left out):
//! - `min_requests` (integer, default 20): canary requests before judging.
//! - `max_5xx_percent` (number, default 1.0): the canary's 5xx share that aborts.

use cutover_plugin::{AnalysisDecision, AnalysisInput, Config, {trait}, LogLevel, log};
use serde::Deserialize;

/// The plugin's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Canary requests in a step before it is judged.
    pub min_requests: u64,
    /// The canary's share of 5xx responses, in percent, that aborts.
    pub max_5xx_percent: f64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { min_requests: 20, max_5xx_percent: 1.0 }
    }
}

impl Config for Settings {
    fn validate(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.max_5xx_percent) {
            return Err(format!("`max_5xx_percent` is {}; expected 0 to 100", self.max_5xx_percent));
        }
        Ok(())
    }
}

pub struct Policy;

impl {trait} for Policy {
    type Config = Settings;

    fn analyze(config: &Settings, input: AnalysisInput) -> Result<AnalysisDecision, String> {
        let step = &input.canary.this_step;
        log(LogLevel::Debug, &format!("step {}: {} requests", input.step_index, step.requests));
        if step.requests < config.min_requests {
            return Ok(AnalysisDecision::Hold(format!(
                "{} of {} requests so far",
                step.requests, config.min_requests
            )));
        }
        let errors = step.server_error_percent().unwrap_or(0.0);
        if errors > config.max_5xx_percent {
            return Ok(AnalysisDecision::Abort(format!(
                "{errors:.1}% of the canary's responses were 5xx"
            )));
        }
        Ok(AnalysisDecision::Promote)
    }
}

cutover_plugin::{export}!(Policy);

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_plugin::{Color, ColorTraffic, TrafficMetrics};

    fn input(requests: u64, errors: u64) -> AnalysisInput {
        let traffic = |color, requests: u64, errors: u64| {
            let metrics = TrafficMetrics {
                requests,
                success: requests - errors,
                client_errors: 0,
                server_errors: errors,
                latency_p50_us: None,
                latency_p95_us: None,
                latency_p99_us: None,
            };
            ColorTraffic { color, this_step: metrics.clone(), whole_canary: metrics }
        };
        AnalysisInput {
            service: "app".to_owned(),
            step_index: 0,
            step_count: 2,
            weight: 10,
            step_elapsed_ms: 1_000,
            canary_elapsed_ms: 1_000,
            canary: traffic(Color::Green, requests, errors),
            baseline: traffic(Color::Blue, 10 * requests, 0),
            probes: Vec::new(),
        }
    }

    #[test]
    fn holds_then_promotes_or_aborts() {
        let config = Settings::default();
        assert!(matches!(Policy::analyze(&config, input(5, 0)), Ok(AnalysisDecision::Hold(_))));
        assert_eq!(Policy::analyze(&config, input(100, 1)), Ok(AnalysisDecision::Promote));
        assert!(matches!(Policy::analyze(&config, input(100, 20)), Ok(AnalysisDecision::Abort(_))));
        assert_eq!(cutover_plugin::take_logs().len(), 3);
        assert!(cutover_plugin::parse_config::<Settings>(r#"{"max_5xx_percent":-1}"#).is_err());
    }
}
"##;

/// Shared by every Python project: the config parser.
const PY_HEADER: &str = r##"import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import *  # noqa: F403 (the records of `cutover plugin wit`)


def parse_config(text: str, keys: dict) -> dict:
    """The config JSON as a dict with every key of `keys` (name -> default).

    Raises Err (the host shows its message as the config error) for malformed JSON
    or an unknown key. The host passes `{}` when the config is left out.
    """
    try:
        config = json.loads(text)
    except ValueError as e:
        raise Err(f"the config is not JSON: {e}")
    if not isinstance(config, dict):
        raise Err("the config must be a table")
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise Err(f"unknown key(s) {', '.join(unknown)}; the keys are {', '.join(keys)}")
    return {**keys, **config}
"##;

const PY_GATE: &str = r##""""A cutover `{kind}` plugin: allow a deploy when a tag on HEAD contains
`pattern`, or every deploy when no pattern is configured."""
{header}

def settings(text: str) -> dict:
    config = parse_config(text, {"pattern": None})
    pattern = config["pattern"]
    if pattern is not None and (not isinstance(pattern, str) or not pattern):
        raise Err("`pattern` must be a non-empty string; leave it out to allow every deploy")
    return config


class WitWorld(wit_world.WitWorld):
    def validate_config(self, config: str) -> None:
        settings(config)

    def decide(self, config: str, input: GateInput) -> GateDecision:
        pattern = settings(config)["pattern"]
        host.log(LogLevel.DEBUG, f"tags on HEAD: {input.tags}")
        if pattern is None:
            return GateDecision_Allow("no pattern is configured: every deploy is allowed")
        for tag in input.tags:
            if pattern in tag:
                return GateDecision_Allow(f"tag `{tag}` on HEAD matches `{pattern}`")
        return GateDecision_Deny(f"no tag on HEAD contains `{pattern}`")
"##;

const PY_HEALTH: &str = r##""""A cutover `{kind}` plugin: healthy when the probe's status is 200-399;
"not yet" otherwise, until `max_attempts` (if set) makes it "failed"."""
{header}

def settings(text: str) -> dict:
    config = parse_config(text, {"max_attempts": None})
    max_attempts = config["max_attempts"]
    if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
        raise Err("`max_attempts` must be an integer of at least 1")
    return config


class WitWorld(wit_world.WitWorld):
    def validate_config(self, config: str) -> None:
        settings(config)

    def evaluate(self, config: str, input: HealthInput) -> HealthVerdict:
        probe = input.probe
        host.log(LogLevel.DEBUG, f"attempt {input.attempt}: status {probe.status}")
        if probe.status is not None and 200 <= probe.status < 400:
            return HealthVerdict_Healthy()
        why = f"status {probe.status}" if probe.status is not None else (probe.error or "no response")
        max_attempts = settings(config)["max_attempts"]
        if max_attempts is not None and input.attempt >= max_attempts:
            return HealthVerdict_Failed(f"{why} after {max_attempts} attempts")
        return HealthVerdict_NotYet(why)
"##;

const PY_TEMPLATE: &str = r##""""A cutover `{kind}` plugin: writes `set $service_url http://ADDR:PORT;` to
`service-url.inc`, which the nginx config includes."""
{header}

def settings(text: str) -> dict:
    config = parse_config(text, {"variable": "service_url"})
    variable = config["variable"]
    if not isinstance(variable, str) or not variable.replace("_", "a").isalnum():
        raise Err(f"`variable` {variable!r} is not an nginx variable name")
    return config


class WitWorld(wit_world.WitWorld):
    def validate_config(self, config: str) -> None:
        settings(config)

    def render(self, config: str, input: TemplateInput) -> list[ProxyFile]:
        if input.target_weight != 100:
            raise Err(f"this template cannot split traffic ({input.target_weight}%)")
        if len(input.target.servers) != 1:
            raise Err(f"this template renders one server, not {len(input.target.servers)}")
        server = input.target.servers[0]
        if any(c.isspace() or c in ";{}\"'#$" for c in server.address):
            raise Err(f"the address {server.address!r} would inject nginx syntax")
        variable = settings(config)["variable"]
        contents = f"set ${variable} http://{server.address}:{server.port};\n"
        return [ProxyFile("service-url.inc", contents)]
"##;

const PY_ANALYSIS: &str = r##""""A cutover `{kind}` plugin: hold until the canary served `min_requests` in
this step, abort when its share of 5xx responses is over `max_5xx_percent`, else
promote."""
{header}

def settings(text: str) -> dict:
    config = parse_config(text, {"min_requests": 20, "max_5xx_percent": 1.0})
    if not isinstance(config["min_requests"], int) or config["min_requests"] < 1:
        raise Err("`min_requests` must be an integer of at least 1")
    if not isinstance(config["max_5xx_percent"], (int, float)):
        raise Err("`max_5xx_percent` must be a number")
    return config


class WitWorld(wit_world.WitWorld):
    def validate_config(self, config: str) -> None:
        settings(config)

    def analyze(self, config: str, input: AnalysisInput) -> AnalysisDecision:
        config = settings(config)
        step = input.canary.this_step
        host.log(LogLevel.DEBUG, f"step {input.step_index}: {step.requests} requests")
        if step.requests < config["min_requests"]:
            return AnalysisDecision_Hold(f"{step.requests} of {config['min_requests']} requests so far")
        errors = 100.0 * step.server_errors / step.requests
        if errors > config["max_5xx_percent"]:
            return AnalysisDecision_Abort(f"{errors:.1f}% of the canary's responses were 5xx")
        return AnalysisDecision_Promote()
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_are_cargo_and_python_safe() {
        assert_eq!(crate_name(Path::new("/x/My Policy")), "my-policy");
        assert_eq!(crate_name(Path::new("9lives")), "plugin-9lives");
        assert_eq!(crate_name(Path::new("/")), "plugin-new");
    }

    #[test]
    fn a_non_empty_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let err = new(PluginKind::HealthPolicy, dir.path(), Lang::Rust).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn a_python_target_selector_is_refused_with_the_rust_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = new(PluginKind::TargetSelector, dir.path(), Lang::Python).unwrap_err();
        assert!(
            err.to_string()
                .contains("cutover plugin new target-selector"),
            "{err}"
        );
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn every_kind_and_language_fills_its_placeholders() {
        for kind in PluginKind::ALL {
            for lang in [Lang::Rust, Lang::Python] {
                let files = match lang {
                    Lang::Rust => rust(kind, "p"),
                    Lang::Python => python(kind, "p"),
                };
                for (path, text) in files {
                    if path == "wit/plugin.wit" {
                        continue;
                    }
                    for placeholder in ["{trait}", "{export}", "{kind}", "{header}"] {
                        assert!(!text.contains(placeholder), "{kind} {path}: {placeholder}");
                    }
                }
            }
        }
    }
}

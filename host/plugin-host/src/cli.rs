//! `cutover plugin ...`: the commands a plugin author uses to list the built-ins,
//! check a component before pinning it, compute its digest and get the WIT contract.
//!
//! Library code so tests can drive it; the top-level CLI only parses arguments and
//! calls [`run`]. These commands read files and write to `out`; they never change a
//! deploy, a config file or the state directory.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use wasmtime::component::Component;

use super::builtin::BUILTINS;
use super::json::{self, Answer, Input, RenderedFile};
use super::kinds::exported_kinds;
use super::sandbox::CallStats;
use super::scaffold::{self, Lang};
use super::types::{AnalysisDecision, GateDecision, HealthVerdict};
use super::{
    AnalysisPlugin, BOUNDS, Compiled, GatePlugin, HealthPlugin, Limits, LimitsConfig, PluginError,
    PluginHost, PluginKind, SelectorPlugin, TemplatePlugin, WIT, WitVersion, sha256_hex,
};
use crate::events::{Event, Format, Level, Recorder, Reporter};

/// `cutover plugin <command>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PluginCommand {
    /// List the built-in plugins, what each decides, their config keys and the limits.
    List,
    /// Check a plugin file: the kind it implements, its imports, and whether it
    /// accepts a config and answers a sample input within the default limits.
    Check {
        /// The `.wasm` component to check.
        file: PathBuf,
        /// The plugin config to validate and use, as JSON (what the
        /// `[plugins.<kind>].config` table becomes), e.g. '{"pattern":"cicd"}'.
        // Not `--config`: that is the global `-c/--config <FILE>`, and clap panics on
        // two arguments with one id.
        #[arg(long, value_name = "JSON")]
        plugin_config: Option<String>,
        /// The limits of the call.
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Print the sha256 of a file, to pin it as `sha256` in cutover.toml.
    Sha256 {
        /// The file to digest.
        file: PathBuf,
    },
    /// Print the WIT contract plugins are built against (`cutover plugin wit > wit/plugin.wit`):
    /// 0.2.0, or an older version this host still runs (`cutover plugin wit 0.1.0`).
    Wit {
        /// The contract version (default: the newest, 0.2.0).
        #[arg(value_parser = parse_wit_version)]
        version: Option<WitVersion>,
    },
    /// Print a sample input of a world as JSON, to edit and pass to `plugin run --input`.
    Sample {
        /// deploy-gate, target-selector, health-policy, proxy-template or rollout-analysis.
        #[arg(value_parser = parse_kind)]
        kind: PluginKind,
    },
    /// Run one decision of a plugin file on an input, under the real sandbox and
    /// limits: prints the answer, every log line, the fuel, memory and time it took.
    Run {
        /// The `.wasm` component to run.
        file: PathBuf,
        /// The input, as JSON (start from `cutover plugin sample <kind>`); `-` reads
        /// standard input.
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// The plugin config, as JSON (what `[plugins.<kind>].config` becomes).
        #[arg(long, value_name = "JSON")]
        plugin_config: Option<String>,
        /// The limits of the call.
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Create a plugin project that builds as is, anywhere: the kind's default
    /// decision, a config with validation, a unit test and a copy of the SDK (Rust),
    /// `sample.json` and a README.
    New {
        /// deploy-gate, target-selector, health-policy, proxy-template or rollout-analysis.
        #[arg(value_parser = parse_kind)]
        kind: PluginKind,
        /// The project directory (created; it must be empty if it exists).
        dir: PathBuf,
        /// The language: a Rust crate on the cutover-plugin SDK, or Python for
        /// componentize-py.
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
    },
}

/// Per-call limits for `check` and `run`, as `[plugins.<kind>.limits]` sets them
/// (same keys, same bounds); the defaults otherwise.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitArgs {
    /// Fuel per call (`fuel`).
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Memory cap in MiB (`memory_mib`).
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// Deadline per call in ms (`deadline_ms`).
    #[arg(long)]
    pub deadline_ms: Option<u64>,
}

impl LimitArgs {
    fn limits(&self, kind: PluginKind) -> Result<Limits, PluginError> {
        let config = LimitsConfig {
            fuel: self.fuel,
            memory_mib: self.memory_mib,
            deadline_ms: self.deadline_ms,
            ..LimitsConfig::default()
        };
        Limits::from_config(kind, &config)
    }
}

fn parse_kind(name: &str) -> Result<PluginKind, String> {
    PluginKind::ALL
        .into_iter()
        .find(|kind| kind.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = PluginKind::ALL.iter().map(|k| k.name()).collect();
            format!("expected one of {}", names.join(", "))
        })
}

fn parse_wit_version(number: &str) -> Result<WitVersion, String> {
    WitVersion::parse(number).ok_or_else(|| {
        let numbers: Vec<&str> = WitVersion::ALL.iter().map(|v| v.number()).collect();
        format!("expected one of {}", numbers.join(", "))
    })
}

/// Runs `cmd`, writing its report to `out` (`format` matters to `run` only).
///
/// # Errors
/// [`PluginError::MissingFile`] for an unreadable file, the load or call error of a
/// plugin that fails `check` or `run`, [`PluginError::BadInput`] for an input that is
/// not the world's, or [`PluginError::Output`] when `out` fails.
pub fn run(cmd: &PluginCommand, format: Format, out: &mut dyn Write) -> Result<(), PluginError> {
    let text = match cmd {
        PluginCommand::List => list(),
        PluginCommand::Check {
            file,
            plugin_config,
            limits,
        } => {
            let host = PluginHost::new(None)?;
            check(
                &host,
                file,
                plugin_config.as_deref().unwrap_or("{}"),
                limits,
            )?
        }
        PluginCommand::Sha256 { file } => {
            let bytes = read(file)?;
            format!("{}  {}\n", sha256_hex(&bytes), file.display())
        }
        PluginCommand::Wit { version } => version.map_or(WIT, |v| v.wit()).to_owned(),
        PluginCommand::Sample { kind } => json::sample(*kind),
        PluginCommand::New { kind, dir, lang } => scaffold::new(*kind, dir, *lang)?,
        PluginCommand::Run {
            file,
            input,
            plugin_config,
            limits,
        } => {
            let host = PluginHost::new(None)?;
            let config = plugin_config.as_deref().unwrap_or("{}");
            let report = run_file(&host, file, input, config, limits, out)?;
            match format {
                Format::Json => {
                    let mut line = serde_json::to_string(&report)
                        .map_err(|e| PluginError::Output(e.into()))?;
                    line.push('\n');
                    line
                }
                Format::Human => report.to_text(),
            }
        }
    };
    out.write_all(text.as_bytes()).map_err(PluginError::Output)
}

fn read(file: &Path) -> Result<Vec<u8>, PluginError> {
    std::fs::read(file).map_err(|source| PluginError::MissingFile {
        kind: None,
        path: file.to_owned(),
        source,
        config_file: None,
    })
}

fn list() -> String {
    let mut text = String::from("Built-in plugins (each is the default for its kind):\n");
    for builtin in &BUILTINS {
        let _ = writeln!(text, "\n{:<16} {}", builtin.kind, builtin.source());
        let _ = writeln!(text, "  {}", builtin.summary);
        let _ = writeln!(text, "  config keys:");
        for key in builtin.config {
            let _ = writeln!(text, "    {key}");
        }
    }
    let _ = writeln!(
        text,
        "\nPer-call limits, set in [plugins.<kind>.limits] (default, accepted range):"
    );
    for bound in BOUNDS {
        let _ = writeln!(
            text,
            "  {:<12} {:>11}  ({} to {})  {}",
            bound.key, bound.default, bound.min, bound.max, bound.what
        );
    }
    text
}

/// A plugin file's bytes, digest, compiled component and kind (from its exports).
struct PluginFile {
    name: String,
    size: usize,
    digest: String,
    kind: PluginKind,
    compiled: Compiled,
}

fn open(host: &PluginHost, file: &Path) -> Result<PluginFile, PluginError> {
    let wasm = read(file)?;
    let digest = sha256_hex(&wasm);
    let name = file.display().to_string();
    // Compiled once, to learn the kind and then to load as that kind.
    let compiled = host.component(&name, None, &wasm, &digest)?;
    let kind = exported_kinds(host, &compiled.component)
        .first()
        .copied()
        .ok_or_else(|| PluginError::UnknownWorld {
            plugin: name.clone(),
        })?;
    Ok(PluginFile {
        name,
        size: wasm.len(),
        digest,
        kind,
        compiled,
    })
}

/// Loads `file`, detects its kind, validates `config` and runs the sample input.
fn check(
    host: &PluginHost,
    file: &Path,
    config: &str,
    limits: &LimitArgs,
) -> Result<String, PluginError> {
    let plugin = open(host, file)?;
    let limits = limits.limits(plugin.kind)?;
    let (name, kind, digest) = (&plugin.name, plugin.kind, &plugin.digest);
    let mut text = String::new();
    let _ = writeln!(text, "file:    {name} ({} bytes)", plugin.size);
    let _ = writeln!(text, "sha256:  {digest}");
    let imports = imports(host, &plugin.compiled.component);
    let version = WitVersion::of_imports(imports.iter().map(String::as_str)).map_or_else(
        || "version not named by its imports".to_owned(),
        |v| v.to_string(),
    );
    let _ = writeln!(text, "kind:    {kind} (world {kind} of {version})");
    let _ = writeln!(text, "imports:");
    for import in imports {
        let _ = writeln!(text, "  {import}");
    }
    let recorder = Arc::new(Recorder::default());
    let (answer, stats) = call(
        host,
        &plugin,
        config,
        limits,
        recorder.clone(),
        Input::sample(kind),
    )?;
    let _ = writeln!(text, "config:  {config} accepted by validate-config");
    let _ = writeln!(
        text,
        "sample:  {}\n         in {} µs (instantiate + call), fuel {} of {}",
        answer.to_text(),
        stats.elapsed.as_micros(),
        stats.fuel_used,
        limits.fuel
    );
    for log in logs(&recorder, name) {
        let _ = writeln!(text, "  log {}: {}", log.level, log.message);
    }
    let _ = writeln!(
        text,
        "\nPin it in cutover.toml:\n\n[plugins.{kind}]\nsource = {name:?}\nsha256 = \"{digest}\""
    );
    Ok(text)
}

fn imports(host: &PluginHost, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(&host.engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// One log line a plugin wrote.
#[derive(Debug, Serialize)]
struct LogLine {
    level: &'static str,
    message: String,
}

/// The log lines `plugin` wrote, in order.
fn logs(recorder: &Recorder, plugin: &str) -> Vec<LogLine> {
    recorder
        .events()
        .into_iter()
        .filter_map(|event| match event {
            Event::Log {
                level,
                source,
                message,
            } if source == plugin => Some(LogLine {
                level: match level {
                    Level::Debug => "debug",
                    Level::Info => "info",
                    Level::Warn => "warn",
                    Level::Error => "error",
                },
                message,
            }),
            _ => None,
        })
        .collect()
}

/// Loads `plugin` as its kind with `config` and `limits`, and makes one decision on
/// `input`. A decision function's `err(reason)` is an answer here, not an error.
fn call(
    host: &PluginHost,
    plugin: &PluginFile,
    config: &str,
    limits: Limits,
    reporter: Arc<dyn Reporter>,
    input: Input,
) -> Result<(Answer, CallStats), PluginError> {
    let name = plugin.name.as_str();
    let compiled = plugin.compiled.clone();
    let (answer, stats) = match input {
        Input::Gate(input) => {
            let (decision, stats) =
                GatePlugin::load_compiled(host, name, compiled, config, limits, reporter)?
                    .decide_with_stats(&input)?;
            let answer = decision.map(|decision| match decision {
                GateDecision::Allow(reason) => Answer::Allow(reason),
                GateDecision::Deny(reason) => Answer::Deny(reason),
            });
            (answer, stats)
        }
        Input::Selector(input) => {
            let (color, stats) =
                SelectorPlugin::load_compiled(host, name, compiled, config, limits, reporter)?
                    .select_with_stats(&input)?;
            (color.map(|c| Answer::Select(c.to_string())), stats)
        }
        Input::Health(input) => {
            let (verdict, stats) =
                HealthPlugin::load_compiled(host, name, compiled, config, limits, reporter)?
                    .evaluate_with_stats(&input)?;
            let answer = verdict.map(|verdict| match verdict {
                HealthVerdict::Healthy => Answer::Healthy,
                HealthVerdict::NotYet(why) => Answer::NotYet(why),
                HealthVerdict::Failed(why) => Answer::Failed(why),
            });
            (answer, stats)
        }
        Input::Template(input) => {
            let (files, stats) =
                TemplatePlugin::load_compiled(host, name, compiled, config, limits, reporter)?
                    .render_with_stats(&input)?;
            let answer = files.map(|files| {
                Answer::Render(
                    files
                        .into_iter()
                        .map(|f| RenderedFile {
                            path: f.path,
                            contents: f.contents,
                        })
                        .collect(),
                )
            });
            (answer, stats)
        }
        Input::Analysis(input) => {
            let (decision, stats) =
                AnalysisPlugin::load_compiled(host, name, compiled, config, limits, reporter)?
                    .analyze_with_stats(&input)?;
            let answer = decision.map(|decision| match decision {
                AnalysisDecision::Promote => Answer::Promote,
                AnalysisDecision::Hold(why) => Answer::Hold(why),
                AnalysisDecision::Abort(why) => Answer::Abort(why),
            });
            (answer, stats)
        }
    };
    match answer {
        Ok(answer) => Ok((answer, stats)),
        Err(PluginError::Refused { reason, .. }) => Ok((Answer::Error(reason), stats)),
        Err(other) => Err(other),
    }
}

/// What `cutover plugin run` reports.
#[derive(Debug, Serialize)]
struct RunReport {
    plugin: String,
    kind: &'static str,
    sha256: String,
    config: String,
    answer: Answer,
    logs: Vec<LogLine>,
    fuel_used: u64,
    fuel_limit: u64,
    memory_bytes: u64,
    memory_limit_bytes: u64,
    /// Instantiation and the call, in microseconds.
    micros: u128,
}

impl RunReport {
    fn to_text(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "plugin:  {} ({})", self.plugin, self.kind);
        let _ = writeln!(text, "config:  {} accepted by validate-config", self.config);
        let _ = writeln!(text, "answer:  {}", self.answer.to_text());
        for log in &self.logs {
            let _ = writeln!(text, "log:     {}: {}", log.level, log.message);
        }
        let _ = writeln!(text, "fuel:    {} of {}", self.fuel_used, self.fuel_limit);
        let _ = writeln!(
            text,
            "memory:  {:.1} MiB of {} MiB",
            self.memory_bytes as f64 / f64::from(1 << 20),
            self.memory_limit_bytes >> 20
        );
        let _ = writeln!(text, "time:    {} µs (instantiate + call)", self.micros);
        text
    }
}

/// `cutover plugin run`: one decision of `file` on the input in `input`. On a failed
/// call the plugin's log lines are written to `out` before the error is returned.
fn run_file(
    host: &PluginHost,
    file: &Path,
    input: &Path,
    config: &str,
    limits: &LimitArgs,
    out: &mut dyn Write,
) -> Result<RunReport, PluginError> {
    let plugin = open(host, file)?;
    let kind = plugin.kind;
    let limits = limits.limits(kind)?;
    let input_name = input.display().to_string();
    let text = if input == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(input)
    }
    .map_err(|source| PluginError::MissingFile {
        kind: None,
        path: input.to_owned(),
        source,
        config_file: None,
    })?;
    let parsed = json::parse(kind, &text, &input_name)?;
    let recorder = Arc::new(Recorder::default());
    let result = call(host, &plugin, config, limits, recorder.clone(), parsed);
    let logs = logs(&recorder, &plugin.name);
    let (answer, stats) = match result {
        Ok(done) => done,
        Err(error) => {
            for log in &logs {
                let _ = writeln!(out, "log:     {}: {}", log.level, log.message);
            }
            return Err(error);
        }
    };
    Ok(RunReport {
        plugin: plugin.name,
        kind: kind.name(),
        sha256: plugin.digest,
        config: config.to_owned(),
        answer,
        logs,
        fuel_used: stats.fuel_used,
        fuel_limit: limits.fuel,
        memory_bytes: stats.memory_bytes,
        memory_limit_bytes: limits.memory_bytes,
        micros: stats.elapsed.as_micros(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(cmd: &PluginCommand) -> String {
        let mut out = Vec::new();
        run(cmd, Format::Human, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn list_names_every_builtin_and_limit() {
        let text = output(&PluginCommand::List);
        for builtin in &BUILTINS {
            assert!(text.contains(&builtin.source()), "{text}");
        }
        for bound in BOUNDS {
            assert!(text.contains(bound.key), "{text}");
        }
    }

    #[test]
    fn wit_prints_the_contract() {
        assert_eq!(output(&PluginCommand::Wit { version: None }), WIT);
        assert_eq!(
            output(&PluginCommand::Wit {
                version: Some(WitVersion::V0_1_0)
            }),
            super::super::bindings::v0_1_0::WIT
        );
    }

    #[test]
    fn sha256_of_a_missing_file_says_which() {
        let err = run(
            &PluginCommand::Sha256 {
                file: PathBuf::from("/nonexistent/x.wasm"),
            },
            Format::Human,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.wasm"), "{err}");
    }
}

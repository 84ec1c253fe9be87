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

use wasmtime::component::Component;

use super::PluginKind;
use super::builtin::BUILTINS;
use super::kinds::exported_kinds;
use super::sandbox::CallStats;
use super::types::{GateDecision, HealthVerdict};
use super::{
    BOUNDS, GatePlugin, HealthPlugin, Limits, PluginError, PluginHost, SelectorPlugin,
    TemplatePlugin, WIT, WIT_VERSION, sample, sha256_hex,
};
use crate::events::{Event, Recorder, Reporter};

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
    },
    /// Print the sha256 of a file, to pin it as `sha256` in cutover.toml.
    Sha256 {
        /// The file to digest.
        file: PathBuf,
    },
    /// Print the WIT contract plugins are built against (`cutover plugin wit > wit/plugin.wit`).
    Wit,
}

/// Runs `cmd`, writing its report to `out`.
///
/// # Errors
/// [`PluginError::MissingFile`] for an unreadable file, the load or call error of a
/// plugin that fails `check`, or [`PluginError::Output`] when `out` fails.
pub fn run(cmd: &PluginCommand, out: &mut dyn Write) -> Result<(), PluginError> {
    let text = match cmd {
        PluginCommand::List => list(),
        PluginCommand::Check {
            file,
            plugin_config,
        } => {
            let host = PluginHost::new(None)?;
            check(&host, file, plugin_config.as_deref().unwrap_or("{}"))?
        }
        PluginCommand::Sha256 { file } => {
            let bytes = read(file)?;
            format!("{}  {}\n", sha256_hex(&bytes), file.display())
        }
        PluginCommand::Wit => WIT.to_owned(),
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

/// Loads `file`, detects its kind, validates `config` and runs the sample input.
fn check(host: &PluginHost, file: &Path, config: &str) -> Result<String, PluginError> {
    let wasm = read(file)?;
    let digest = sha256_hex(&wasm);
    let name = file.display().to_string();
    // Compile once to learn the kind; the typed load below hits the cache (or, without
    // one, compiles again, which only costs time).
    let component = host.component(&name, None, &wasm, &digest)?.component;
    let kind = exported_kinds(host, &component)
        .first()
        .copied()
        .ok_or_else(|| PluginError::UnknownWorld {
            plugin: name.clone(),
        })?;
    let mut text = String::new();
    let _ = writeln!(text, "file:    {name} ({} bytes)", wasm.len());
    let _ = writeln!(text, "sha256:  {digest}");
    let _ = writeln!(
        text,
        "kind:    {kind} (world cutover:plugin/{kind}@{WIT_VERSION})"
    );
    let _ = writeln!(text, "imports:");
    for import in imports(host, &component) {
        let _ = writeln!(text, "  {import}");
    }
    let recorder = Arc::new(Recorder::default());
    let reporter: Arc<dyn Reporter> = recorder.clone();
    let limits = Limits::default();
    let (answer, stats) = sample_call(host, kind, &name, &wasm, config, limits, reporter)?;
    let _ = writeln!(text, "config:  {config} accepted by validate-config");
    let _ = writeln!(
        text,
        "sample:  {answer}\n         in {} µs (instantiate + call), fuel {} of {}",
        stats.elapsed.as_micros(),
        stats.fuel_used,
        limits.fuel
    );
    for event in recorder.events() {
        if let Event::Log {
            level,
            source,
            message,
        } = event
            && source == name
        {
            let _ = writeln!(text, "  log {level:?}: {message}");
        }
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

/// Loads `wasm` as `kind` and calls it with the sample input; the answer as text.
fn sample_call(
    host: &PluginHost,
    kind: PluginKind,
    name: &str,
    wasm: &[u8],
    config: &str,
    limits: Limits,
    reporter: Arc<dyn Reporter>,
) -> Result<(String, CallStats), PluginError> {
    Ok(match kind {
        PluginKind::DeployGate => {
            let plugin = GatePlugin::load_bytes(host, name, wasm, config, limits, reporter)?;
            let (decision, stats) = plugin.decide_with_stats(&sample::gate_input())?;
            let answer = match decision {
                GateDecision::Allow(reason) => format!("decide -> allow: {reason}"),
                GateDecision::Deny(reason) => format!("decide -> deny: {reason}"),
            };
            (answer, stats)
        }
        PluginKind::TargetSelector => {
            let plugin = SelectorPlugin::load_bytes(host, name, wasm, config, limits, reporter)?;
            let (color, stats) = plugin.select_with_stats(&sample::selector_input())?;
            (format!("select (blue live) -> {color}"), stats)
        }
        PluginKind::HealthPolicy => {
            let plugin = HealthPlugin::load_bytes(host, name, wasm, config, limits, reporter)?;
            let (verdict, stats) = plugin.evaluate_with_stats(&sample::health_input())?;
            let answer = match verdict {
                HealthVerdict::Healthy => "evaluate -> healthy".to_owned(),
                HealthVerdict::NotYet(why) => format!("evaluate -> not yet: {why}"),
                HealthVerdict::Failed(why) => format!("evaluate -> failed: {why}"),
            };
            (answer, stats)
        }
        PluginKind::ProxyTemplate => {
            let plugin = TemplatePlugin::load_bytes(host, name, wasm, config, limits, reporter)?;
            let (files, stats) = plugin.render_with_stats(&sample::template_input())?;
            let mut answer = format!("render -> {} file(s)", files.len());
            for file in files {
                let _ = write!(answer, "\n  {}:", file.path);
                for line in file.contents.lines() {
                    let _ = write!(answer, "\n    {line}");
                }
            }
            (answer, stats)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(cmd: &PluginCommand) -> String {
        let mut out = Vec::new();
        run(cmd, &mut out).unwrap();
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
        assert_eq!(output(&PluginCommand::Wit), WIT);
    }

    #[test]
    fn sha256_of_a_missing_file_says_which() {
        let err = run(
            &PluginCommand::Sha256 {
                file: PathBuf::from("/nonexistent/x.wasm"),
            },
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.wasm"), "{err}");
    }
}

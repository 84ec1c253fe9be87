//! The five loaded plugin types a deploy calls, how a `[plugins.<kind>]` entry becomes
//! one, and the checks on what each returns.
//!
//! Loading resolves the source (built-in or pinned file), compiles (or loads from the
//! cache), reads which contract version the component targets from the cutover
//! interfaces it imports, checks it fits the kind's world in that version and has its
//! config validated by the plugin itself. A guest of an older version is called
//! through [`adapt`]; callers only ever see the v0.2.0 model. Calling returns the
//! plugin's answer only after the host has capped its size, made its text printable
//! and, for proxy files, checked every path: nothing a plugin returns is written or
//! printed unchecked.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

use super::bindings::{WitVersion, adapt, analysis, gate, health, selector, template, v0_1_0};
use super::builtin::{self, Builtin};
use super::sandbox::{CallState, CallStats, Sandbox, chain, printable};
use super::settings::{LimitsConfig, PluginSettings, PluginSpec};
use super::types::{
    self, AnalysisDecision, AnalysisInput, GateDecision, GateInput, HealthInput, HealthVerdict,
    ProxyFile, SelectorInput, TemplateInput,
};
use super::{Compiled, Limits, Origin, PluginError, PluginHost, PluginKind, sha256_hex};
use crate::events::{Event, Level, Reporter};

impl From<crate::Color> for types::Color {
    fn from(color: crate::Color) -> Self {
        match color {
            crate::Color::Blue => types::Color::Blue,
            crate::Color::Green => types::Color::Green,
        }
    }
}

impl From<types::Color> for crate::Color {
    fn from(color: types::Color) -> Self {
        match color {
            types::Color::Blue => crate::Color::Blue,
            types::Color::Green => crate::Color::Green,
        }
    }
}

/// What every world's pre-instantiated bindings offer the loader.
pub(crate) trait WorldPre: Sized + Send + Sync {
    /// The kind this world is.
    const KIND: PluginKind;
    /// Checks the component's exports against the world of `version`.
    fn new(pre: InstancePre<CallState>, version: WitVersion) -> wasmtime::Result<Self>;
    /// The contract version the guest targets.
    fn version(&self) -> WitVersion;
    /// Calls `validate-config` in a fresh instance.
    fn validate_config(
        &self,
        store: &mut Store<CallState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>>;
}

/// A world's bindings in the version its guest targets: 0.1.0 guests are called
/// through the adapter, 0.2.0 ones directly.
pub(crate) enum Versioned<Old, New> {
    /// A `cutover:plugin@0.1.0` guest.
    Old(Old),
    /// A `cutover:plugin@0.2.0` guest.
    New(New),
}

macro_rules! world_pre {
    ($old:ty, $new:ty, $kind:expr) => {
        impl WorldPre for Versioned<$old, $new> {
            const KIND: PluginKind = $kind;

            fn new(pre: InstancePre<CallState>, version: WitVersion) -> wasmtime::Result<Self> {
                Ok(match version {
                    WitVersion::V0_1_0 => Versioned::Old(<$old>::new(pre)?),
                    WitVersion::V0_2_0 => Versioned::New(<$new>::new(pre)?),
                })
            }

            fn version(&self) -> WitVersion {
                match self {
                    Versioned::Old(_) => WitVersion::V0_1_0,
                    Versioned::New(_) => WitVersion::V0_2_0,
                }
            }

            fn validate_config(
                &self,
                store: &mut Store<CallState>,
                config: &str,
            ) -> wasmtime::Result<Result<(), String>> {
                match self {
                    Versioned::Old(pre) => pre
                        .instantiate(&mut *store)?
                        .call_validate_config(store, config),
                    Versioned::New(pre) => pre
                        .instantiate(&mut *store)?
                        .call_validate_config(store, config),
                }
            }
        }
    };
}

type GatePre = Versioned<v0_1_0::gate::DeployGatePre<CallState>, gate::DeployGatePre<CallState>>;
type SelectorPre = Versioned<
    v0_1_0::selector::TargetSelectorPre<CallState>,
    selector::TargetSelectorPre<CallState>,
>;
type HealthPre =
    Versioned<v0_1_0::health::HealthPolicyPre<CallState>, health::HealthPolicyPre<CallState>>;
type TemplatePre =
    Versioned<v0_1_0::template::ProxyTemplatePre<CallState>, template::ProxyTemplatePre<CallState>>;

world_pre!(
    v0_1_0::gate::DeployGatePre<CallState>,
    gate::DeployGatePre<CallState>,
    PluginKind::DeployGate
);
world_pre!(
    v0_1_0::selector::TargetSelectorPre<CallState>,
    selector::TargetSelectorPre<CallState>,
    PluginKind::TargetSelector
);
world_pre!(
    v0_1_0::health::HealthPolicyPre<CallState>,
    health::HealthPolicyPre<CallState>,
    PluginKind::HealthPolicy
);
world_pre!(
    v0_1_0::template::ProxyTemplatePre<CallState>,
    template::ProxyTemplatePre<CallState>,
    PluginKind::ProxyTemplate
);

/// `rollout-analysis` exists only from 0.2.0 on.
type AnalysisPre = analysis::RolloutAnalysisPre<CallState>;

impl WorldPre for AnalysisPre {
    const KIND: PluginKind = PluginKind::RolloutAnalysis;

    fn new(pre: InstancePre<CallState>, version: WitVersion) -> wasmtime::Result<Self> {
        match version {
            WitVersion::V0_2_0 => AnalysisPre::new(pre),
            WitVersion::V0_1_0 => Err(wasmtime::format_err!(
                "it targets cutover:plugin@0.1.0, which has no rollout-analysis world (it is new in 0.2.0)"
            )),
        }
    }

    fn version(&self) -> WitVersion {
        WitVersion::V0_2_0
    }

    fn validate_config(
        &self,
        store: &mut Store<CallState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        self.instantiate(&mut *store)?
            .call_validate_config(store, config)
    }
}

/// A loaded plugin of world `P`: its bindings, sandbox and config.
struct Loaded<P> {
    pre: P,
    sandbox: Sandbox,
    config: String,
}

impl<P: WorldPre> Loaded<P> {
    fn name(&self) -> &str {
        &self.sandbox.name
    }

    /// Runs `f` with this plugin's bindings, a fresh store and its config.
    fn run<R: Send>(
        &self,
        f: impl FnOnce(&P, &mut Store<CallState>, &str) -> wasmtime::Result<R> + Send,
    ) -> Result<(R, CallStats), PluginError> {
        self.sandbox.call(|store| f(&self.pre, store, &self.config))
    }

    /// Refuses output over the cap.
    fn check_size(&self, size: usize) -> Result<(), PluginError> {
        let limit = self.sandbox.limits.output_bytes;
        if size > limit {
            return Err(PluginError::OutputTooLarge {
                plugin: self.name().to_owned(),
                kind: P::KIND,
                size,
                limit,
            });
        }
        Ok(())
    }

    /// The plugin's text, once checked against the output cap, made printable.
    fn text(&self, text: String) -> Result<String, PluginError> {
        self.check_size(text.len())?;
        Ok(match printable(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(escaped) => escaped,
        })
    }

    /// The plugin's `Err(reason)` answer to a decision.
    fn refused(&self, reason: String) -> PluginError {
        match self.text(reason) {
            Ok(reason) => PluginError::Refused {
                plugin: self.name().to_owned(),
                kind: P::KIND,
                reason,
            },
            Err(too_large) => too_large,
        }
    }

    fn invalid(&self, detail: String) -> PluginError {
        PluginError::InvalidOutput {
            plugin: self.name().to_owned(),
            kind: P::KIND,
            detail,
        }
    }
}

/// A plugin's bytes and identity, before compiling.
struct Resolved {
    name: String,
    wasm: Cow<'static, [u8]>,
    sha256: String,
}

impl Resolved {
    fn builtin(builtin: &'static Builtin) -> Resolved {
        Resolved {
            name: builtin.source(),
            wasm: Cow::Borrowed(builtin.wasm()),
            sha256: builtin.sha256().to_owned(),
        }
    }
}

/// Finds the bytes `spec` names for `kind`, checking the pin of a file.
fn resolve(kind: PluginKind, spec: &PluginSpec, base_dir: &Path) -> Result<Resolved, PluginError> {
    if let Some(name) = spec.source.strip_prefix("builtin:") {
        let default = builtin::default_for(kind);
        let found = builtin::find(name).ok_or_else(|| PluginError::UnknownBuiltin {
            kind,
            name: name.to_owned(),
            default: default.name,
        })?;
        if found.kind != kind {
            return Err(PluginError::WrongWorld {
                plugin: found.source(),
                kind,
                detail: format!(
                    "it is the {} built-in; the {kind} built-in is {}",
                    found.kind,
                    default.source()
                ),
            });
        }
        return Ok(Resolved::builtin(found));
    }
    let path = base_dir.join(&spec.source);
    let wasm = std::fs::read(&path).map_err(|source| PluginError::MissingFile {
        kind: Some(kind),
        path: path.clone(),
        source,
        config_file: None,
    })?;
    let actual = sha256_hex(&wasm);
    let expected = spec.sha256.as_deref().unwrap_or("(no `sha256` set)");
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(PluginError::DigestMismatch {
            kind,
            path,
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(Resolved {
        name: path.display().to_string(),
        wasm: Cow::Owned(wasm),
        sha256: actual,
    })
}

/// The kinds whose decision function `component` exports, in deploy order.
pub(crate) fn exported_kinds(host: &PluginHost, component: &Component) -> Vec<PluginKind> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(&host.engine).map(|(name, _)| name).collect();
    [
        ("decide", PluginKind::DeployGate),
        ("select", PluginKind::TargetSelector),
        ("evaluate", PluginKind::HealthPolicy),
        ("render", PluginKind::ProxyTemplate),
        ("analyze", PluginKind::RolloutAnalysis),
    ]
    .into_iter()
    .filter(|(export, _)| names.contains(export))
    .map(|(_, kind)| kind)
    .collect()
}

/// Compiles (or loads from the cache), links and validates a plugin as world `P`.
fn load<P: WorldPre>(
    host: &PluginHost,
    resolved: Resolved,
    config: String,
    limits: Limits,
    reporter: Arc<dyn Reporter>,
) -> Result<Loaded<P>, PluginError> {
    let compiled = host.component(
        &resolved.name,
        Some(P::KIND),
        &resolved.wasm,
        &resolved.sha256,
    )?;
    link(host, resolved.name, compiled, config, limits, reporter)
}

/// Links a compiled plugin as world `P` and has it validate its config.
fn link<P: WorldPre>(
    host: &PluginHost,
    name: String,
    Compiled {
        component,
        origin,
        took,
    }: Compiled,
    config: String,
    limits: Limits,
    reporter: Arc<dyn Reporter>,
) -> Result<Loaded<P>, PluginError> {
    let kind = P::KIND;
    let wrong_world = |detail: String| PluginError::WrongWorld {
        plugin: name.clone(),
        kind,
        detail,
    };
    let kinds = exported_kinds(host, &component);
    if let Some(&other) = kinds.first()
        && !kinds.contains(&kind)
    {
        return Err(wrong_world(format!(
            "it was built for the {other} world; configure it under [plugins.{other}], or \
             rebuild it for the {kind} world"
        )));
    }
    let instance_pre = host.linker.instantiate_pre(&component).map_err(|e| {
        wrong_world(format!(
            "{}; a plugin may import only cutover:plugin/host (0.2.0 or 0.1.0) and WASI 0.2 \
             (build it with `cargo build --target wasm32-wasip2` against `cutover plugin wit`)",
            chain(&e)
        ))
    })?;
    let ty = component.component_type();
    let versions = match WitVersion::of_imports(ty.imports(&host.engine).map(|(name, _)| name)) {
        Some(version) => vec![version],
        // A component that imports no cutover interface says nothing about its
        // version: whichever world its exports fit is the one.
        None => WitVersion::ALL.to_vec(),
    };
    let mut misfits = Vec::new();
    let fitted =
        versions
            .into_iter()
            .find_map(|version| match P::new(instance_pre.clone(), version) {
                Ok(pre) => Some(pre),
                Err(e) => {
                    misfits.push(format!("as {version}: {}", chain(&e)));
                    None
                }
            });
    let Some(pre) = fitted else {
        return Err(wrong_world(format!(
            "{}; implement every export of the {kind} world in `cutover plugin wit`",
            misfits.join("; ")
        )));
    };
    let how = match origin {
        Origin::Cache => "loaded from the compiled-code cache",
        Origin::Compiled => "compiled",
    };
    reporter.emit(&Event::Log {
        level: Level::Debug,
        source: "cutover".to_owned(),
        message: format!(
            "{kind} plugin {name} ({}) {how} in {:.1} ms",
            pre.version(),
            took.as_secs_f64() * 1e3
        ),
    });
    let loaded = Loaded {
        pre,
        sandbox: Sandbox {
            engine: host.engine.clone(),
            shared: Arc::clone(&host.shared),
            name: Arc::from(name.as_str()),
            kind,
            limits,
            reporter,
            calls: Arc::default(),
        },
        config,
    };
    let (verdict, _) = loaded.run(|pre, store, config| pre.validate_config(store, config))?;
    if let Err(reason) = verdict {
        let reason = loaded.text(reason)?;
        return Err(PluginError::ConfigRejected {
            plugin: name,
            kind,
            reason,
            config_file: None,
        });
    }
    Ok(loaded)
}

/// Loads the plugin `spec` names as world `P`; paths are resolved against `base_dir`.
fn load_spec<P: WorldPre>(
    host: &PluginHost,
    spec: &PluginSpec,
    base_dir: &Path,
    reporter: Arc<dyn Reporter>,
) -> Result<Loaded<P>, PluginError> {
    let resolved = resolve(P::KIND, spec, base_dir)?;
    let limits = Limits::from_config(P::KIND, &spec.limits)?;
    load(host, resolved, spec.config_json(), limits, reporter)
}

macro_rules! plugin_type {
    ($(#[$doc:meta])* $name:ident, $pre:ty) => {
        $(#[$doc])*
        pub struct $name(Loaded<$pre>);

        impl $name {
            /// Loads the plugin `spec` names; a file path is resolved against
            /// `base_dir` and must match its `sha256` pin. Plugin log lines go to
            /// `reporter`.
            ///
            /// # Errors
            /// A [`PluginError`] naming the plugin and the fix when the source cannot
            /// be found or verified, does not fit this kind's world, a limit is out of
            /// bounds, or the plugin rejects its config.
            pub fn load(
                host: &PluginHost,
                spec: &PluginSpec,
                base_dir: &Path,
                reporter: Arc<dyn Reporter>,
            ) -> Result<$name, PluginError> {
                load_spec(host, spec, base_dir, reporter).map($name)
            }

            /// Loads `wasm` (e.g. a file being checked, not pinned in a config) with
            /// `config` (JSON) and `limits`; `name` identifies it in messages.
            ///
            /// # Errors
            /// As [`Self::load`], without the source checks.
            pub fn load_bytes(
                host: &PluginHost,
                name: &str,
                wasm: &[u8],
                config: &str,
                limits: Limits,
                reporter: Arc<dyn Reporter>,
            ) -> Result<$name, PluginError> {
                let resolved = Resolved {
                    name: name.to_owned(),
                    wasm: Cow::Owned(wasm.to_vec()),
                    sha256: sha256_hex(wasm),
                };
                load(host, resolved, config.to_owned(), limits, reporter).map($name)
            }

            /// As [`Self::load_bytes`], for a component the caller already compiled
            /// (`plugin check` and `plugin run` compile once to learn the kind; a
            /// Python plugin takes tens of seconds to compile without a cache).
            pub(super) fn load_compiled(
                host: &PluginHost,
                name: &str,
                compiled: Compiled,
                config: &str,
                limits: Limits,
                reporter: Arc<dyn Reporter>,
            ) -> Result<$name, PluginError> {
                link(host, name.to_owned(), compiled, config.to_owned(), limits, reporter)
                    .map($name)
            }

            /// `builtin:<name>` or the plugin file's path.
            pub fn name(&self) -> &str {
                self.0.name()
            }

            /// The limits each call runs under.
            pub fn limits(&self) -> &Limits {
                &self.0.sandbox.limits
            }

            /// The contract version the plugin was built against.
            pub fn version(&self) -> WitVersion {
                self.0.pre.version()
            }
        }
    };
}

plugin_type!(
    /// A loaded `deploy-gate` plugin.
    GatePlugin,
    GatePre
);
plugin_type!(
    /// A loaded `target-selector` plugin.
    SelectorPlugin,
    SelectorPre
);
plugin_type!(
    /// A loaded `health-policy` plugin.
    HealthPlugin,
    HealthPre
);
plugin_type!(
    /// A loaded `proxy-template` plugin.
    TemplatePlugin,
    TemplatePre
);
plugin_type!(
    /// A loaded `rollout-analysis` plugin.
    AnalysisPlugin,
    AnalysisPre
);

impl GatePlugin {
    /// Allow or deny the deploy described by `input`.
    ///
    /// # Errors
    /// [`PluginError::Refused`] when the plugin answers with an error instead of a
    /// decision, or any sandbox error ([`PluginError::Timeout`], ...).
    pub fn decide(&self, input: &GateInput) -> Result<GateDecision, PluginError> {
        self.decide_with_stats(input)?.0
    }

    /// [`Self::decide`], with the call's cost even when the answer is refused.
    pub(crate) fn decide_with_stats(
        &self,
        input: &GateInput,
    ) -> Result<(Result<GateDecision, PluginError>, CallStats), PluginError> {
        let (answer, stats) = self.0.run(|pre, store, config| match pre {
            Versioned::Old(pre) => Ok(pre
                .instantiate(&mut *store)?
                .call_decide(store, config, &adapt::gate_input_down(input))?
                .map(adapt::gate_decision_up)),
            Versioned::New(pre) => pre
                .instantiate(&mut *store)?
                .call_decide(store, config, input),
        })?;
        let decision = answer
            .map_err(|reason| self.0.refused(reason))
            .and_then(|decision| {
                Ok(match decision {
                    GateDecision::Allow(reason) => GateDecision::Allow(self.0.text(reason)?),
                    GateDecision::Deny(reason) => GateDecision::Deny(self.0.text(reason)?),
                })
            });
        Ok((decision, stats))
    }
}

impl SelectorPlugin {
    /// The colour to deploy to.
    ///
    /// # Errors
    /// [`PluginError::Refused`] with the plugin's reason when it refuses to choose
    /// (a human should look first), or any sandbox error.
    pub fn select(&self, input: &SelectorInput) -> Result<crate::Color, PluginError> {
        self.select_with_stats(input)?.0
    }

    /// [`Self::select`], with the call's cost even when the answer is refused.
    pub(crate) fn select_with_stats(
        &self,
        input: &SelectorInput,
    ) -> Result<(Result<crate::Color, PluginError>, CallStats), PluginError> {
        let (answer, stats) = self.0.run(|pre, store, config| match pre {
            Versioned::Old(pre) => Ok(pre
                .instantiate(&mut *store)?
                .call_select(store, config, &adapt::selector_input_down(input))?
                .map(adapt::color_up)),
            Versioned::New(pre) => pre
                .instantiate(&mut *store)?
                .call_select(store, config, input),
        })?;
        let color = answer
            .map(Into::into)
            .map_err(|reason| self.0.refused(reason));
        Ok((color, stats))
    }
}

impl HealthPlugin {
    /// Judges the probe in `input`.
    ///
    /// # Errors
    /// Any sandbox error; a verdict of `failed` is an answer, not an error.
    pub fn evaluate(&self, input: &HealthInput) -> Result<HealthVerdict, PluginError> {
        self.evaluate_with_stats(input)?.0
    }

    /// [`Self::evaluate`], with the call's cost even when the answer is refused.
    pub(crate) fn evaluate_with_stats(
        &self,
        input: &HealthInput,
    ) -> Result<(Result<HealthVerdict, PluginError>, CallStats), PluginError> {
        let (verdict, stats) = self.0.run(|pre, store, config| match pre {
            Versioned::Old(pre) => Ok(adapt::health_verdict_up(
                pre.instantiate(&mut *store)?.call_evaluate(
                    store,
                    config,
                    &adapt::health_input_down(input),
                )?,
            )),
            Versioned::New(pre) => pre
                .instantiate(&mut *store)?
                .call_evaluate(store, config, input),
        })?;
        let verdict = (|| {
            Ok(match verdict {
                HealthVerdict::Healthy => HealthVerdict::Healthy,
                HealthVerdict::NotYet(why) => HealthVerdict::NotYet(self.0.text(why)?),
                HealthVerdict::Failed(why) => HealthVerdict::Failed(self.0.text(why)?),
            })
        })();
        Ok((verdict, stats))
    }
}

impl TemplatePlugin {
    /// The proxy files for `input`, each checked: a relative path of safe characters
    /// without `.` or `..` parts, unique, contents without NUL or control characters
    /// other than tab and newlines, at most 16 files, all within the output cap.
    ///
    /// # Errors
    /// [`PluginError::InvalidOutput`] for a file that fails those checks,
    /// [`PluginError::OutputTooLarge`], [`PluginError::Refused`] with the plugin's
    /// reason, [`PluginError::NeedsNewerContract`] when a 0.1.0 plugin is asked for a
    /// split, a sticky key or several servers, or any sandbox error. Nothing is
    /// written by this function.
    pub fn render(&self, input: &TemplateInput) -> Result<Vec<ProxyFile>, PluginError> {
        self.render_with_stats(input)?.0
    }

    /// [`Self::render`], with the call's cost even when the answer is refused.
    pub(crate) fn render_with_stats(
        &self,
        input: &TemplateInput,
    ) -> Result<(Result<Vec<ProxyFile>, PluginError>, CallStats), PluginError> {
        // Refused before the call: a 0.1.0 template would otherwise render a plain
        // switch where a split was asked for.
        let old_input = match &self.0.pre {
            Versioned::Old(_) => Some(adapt::template_input_down(input).map_err(|detail| {
                PluginError::NeedsNewerContract {
                    plugin: self.name().to_owned(),
                    kind: PluginKind::ProxyTemplate,
                    version: WitVersion::V0_1_0.number(),
                    detail,
                }
            })?),
            Versioned::New(_) => None,
        };
        let (answer, stats) = self.0.run(|pre, store, config| match (pre, &old_input) {
            (Versioned::Old(pre), Some(old_input)) => Ok(pre
                .instantiate(&mut *store)?
                .call_render(store, config, old_input)?
                .map(adapt::proxy_files_up)),
            (Versioned::New(pre), _) => pre
                .instantiate(&mut *store)?
                .call_render(store, config, input),
            (Versioned::Old(_), None) => Err(wasmtime::format_err!(
                "a 0.1.0 template was called without its adapted input (a cutover bug)"
            )),
        })?;
        Ok((self.checked_files(answer), stats))
    }

    fn checked_files(
        &self,
        answer: Result<Vec<ProxyFile>, String>,
    ) -> Result<Vec<ProxyFile>, PluginError> {
        let files = answer.map_err(|reason| self.0.refused(reason))?;
        let size = files.iter().map(|f| f.path.len() + f.contents.len()).sum();
        self.0.check_size(size)?;
        // What may be written into nginx's config directory is decided by the same
        // rules the proxy applies before writing; a refusal is this plugin's
        // invalid output.
        crate::rendered::check(files.iter().map(|f| (f.path.as_str(), f.contents.as_str())))
            .map_err(|r| {
                self.0
                    .invalid(format!("file {:?} {}", printable(&r.path), r.reason))
            })?;
        Ok(files)
    }
}

/// The most a `hold` or `abort` reason may be, in bytes: it goes into the audit log
/// and a terminal line.
const MAX_REASON: usize = 4096;

impl AnalysisPlugin {
    /// Judges one canary step: promote, hold (with why) or abort (with why).
    ///
    /// # Errors
    /// [`PluginError::Refused`] when the plugin answers with an error instead of a
    /// decision (a failed analysis, never a promotion), [`PluginError::InvalidOutput`]
    /// for an empty or over-long reason, or any sandbox error.
    pub fn analyze(&self, input: &AnalysisInput) -> Result<AnalysisDecision, PluginError> {
        self.analyze_with_stats(input)?.0
    }

    /// [`Self::analyze`], with the call's cost even when the answer is refused.
    pub(crate) fn analyze_with_stats(
        &self,
        input: &AnalysisInput,
    ) -> Result<(Result<AnalysisDecision, PluginError>, CallStats), PluginError> {
        let (answer, stats) = self.0.run(|pre, store, config| {
            pre.instantiate(&mut *store)?
                .call_analyze(store, config, input)
        })?;
        let reason = |why: String| {
            // Over the output cap is the sandbox's limit, as in every world; only then
            // the analysis world's own rules.
            self.0.check_size(why.len())?;
            // A hold or an abort is read by a human deciding what to do next; an empty
            // one explains nothing.
            if why.trim().is_empty() {
                return Err(self.0.invalid(
                    "a hold or abort without a reason; say why, for the deploy log".to_owned(),
                ));
            }
            if why.len() > MAX_REASON {
                return Err(self.0.invalid(format!(
                    "a reason of {} bytes; keep it under {MAX_REASON}",
                    why.len()
                )));
            }
            self.0.text(why)
        };
        let decision = answer
            .map_err(|why| self.0.refused(why))
            .and_then(|decision| {
                Ok(match decision {
                    AnalysisDecision::Promote => AnalysisDecision::Promote,
                    AnalysisDecision::Hold(why) => AnalysisDecision::Hold(reason(why)?),
                    AnalysisDecision::Abort(why) => AnalysisDecision::Abort(reason(why)?),
                })
            });
        Ok((decision, stats))
    }
}

/// A scoped thread's result; a panic in it continues in the caller.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The plugins a command loaded: the kinds it asked [`Plugins::load`] for.
pub struct Plugins {
    gate: Option<GatePlugin>,
    selector: Option<SelectorPlugin>,
    health: Option<HealthPlugin>,
    template: Option<TemplatePlugin>,
    analysis: Option<AnalysisPlugin>,
}

impl Plugins {
    /// Loads the plugins of `kinds` (the built-in default for each kind the config
    /// leaves out), checks file digests and worlds, and has each plugin validate its
    /// config. A command loads only the kinds it calls, so a broken entry for a kind
    /// it never calls cannot stop it. Sources, digests and limits of every requested
    /// kind are checked before anything is compiled; plugins missing from the
    /// compiled-code cache compile in parallel.
    ///
    /// # Errors
    /// The first [`PluginError`] found, in deploy order (gate, selector, health,
    /// template, analysis) within each stage (sources and limits, compiling, linking and
    /// validating the config).
    pub fn load<'a>(
        host: &PluginHost,
        settings: impl Into<PluginSettings<'a>>,
        kinds: &[PluginKind],
        reporter: Arc<dyn Reporter>,
    ) -> Result<Plugins, PluginError> {
        let settings = settings.into();
        if let Some(note) = host.take_cache_note() {
            reporter.emit(&Event::Log {
                level: Level::Debug,
                source: "cutover".to_owned(),
                message: note,
            });
        }
        let in_file = |e: PluginError| e.in_config_file(settings.file);
        // Cheap checks of every kind first: a typo in the last entry should not wait
        // for three compiles.
        let pending = PluginKind::ALL
            .into_iter()
            .filter(|kind| kinds.contains(kind))
            .map(|kind| {
                let spec = settings
                    .plugins
                    .get(kind)
                    .cloned()
                    .unwrap_or_else(|| PluginSpec {
                        source: builtin::default_for(kind).source(),
                        sha256: None,
                        limits: LimitsConfig::default(),
                        config: toml::Table::new(),
                    });
                Ok(Pending {
                    kind,
                    resolved: resolve(kind, &spec, settings.base_dir).map_err(in_file)?,
                    limits: Limits::from_config(kind, &spec.limits)?,
                    config: spec.config_json(),
                })
            })
            .collect::<Result<Vec<_>, PluginError>>()?;
        let compiled = compile_all(host, &pending)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let mut plugins = Plugins {
            gate: None,
            selector: None,
            health: None,
            template: None,
            analysis: None,
        };
        for (pending, compiled) in pending.into_iter().zip(compiled) {
            match pending.kind {
                PluginKind::DeployGate => {
                    plugins.gate = Some(GatePlugin(
                        pending.link(host, compiled, &reporter).map_err(in_file)?,
                    ));
                }
                PluginKind::TargetSelector => {
                    plugins.selector = Some(SelectorPlugin(
                        pending.link(host, compiled, &reporter).map_err(in_file)?,
                    ));
                }
                PluginKind::HealthPolicy => {
                    plugins.health = Some(HealthPlugin(
                        pending.link(host, compiled, &reporter).map_err(in_file)?,
                    ));
                }
                PluginKind::ProxyTemplate => {
                    plugins.template = Some(TemplatePlugin(
                        pending.link(host, compiled, &reporter).map_err(in_file)?,
                    ));
                }
                PluginKind::RolloutAnalysis => {
                    plugins.analysis = Some(AnalysisPlugin(
                        pending.link(host, compiled, &reporter).map_err(in_file)?,
                    ));
                }
            }
        }
        Ok(plugins)
    }

    /// The `deploy-gate` plugin, which allows or denies the deploy.
    ///
    /// # Errors
    /// [`PluginError::NotLoaded`] when the command did not load it (a cutover bug).
    pub fn gate(&self) -> Result<&GatePlugin, PluginError> {
        loaded(self.gate.as_ref(), PluginKind::DeployGate)
    }

    /// The `target-selector` plugin, which chooses the colour.
    ///
    /// # Errors
    /// [`PluginError::NotLoaded`] when the command did not load it (a cutover bug).
    pub fn selector(&self) -> Result<&SelectorPlugin, PluginError> {
        loaded(self.selector.as_ref(), PluginKind::TargetSelector)
    }

    /// The `health-policy` plugin, which judges health probes.
    ///
    /// # Errors
    /// [`PluginError::NotLoaded`] when the command did not load it (a cutover bug).
    pub fn health(&self) -> Result<&HealthPlugin, PluginError> {
        loaded(self.health.as_ref(), PluginKind::HealthPolicy)
    }

    /// The `proxy-template` plugin, which renders the proxy config.
    ///
    /// # Errors
    /// [`PluginError::NotLoaded`] when the command did not load it (a cutover bug).
    pub fn template(&self) -> Result<&TemplatePlugin, PluginError> {
        loaded(self.template.as_ref(), PluginKind::ProxyTemplate)
    }

    /// The `rollout-analysis` plugin, which judges each step of a canary.
    ///
    /// # Errors
    /// [`PluginError::NotLoaded`] when the command did not load it (a cutover bug).
    pub fn analysis(&self) -> Result<&AnalysisPlugin, PluginError> {
        loaded(self.analysis.as_ref(), PluginKind::RolloutAnalysis)
    }

    /// What each loaded plugin's successful calls have cost so far, for the host's
    /// metrics.
    pub fn call_stats(&self) -> Vec<PluginCalls> {
        let sandboxes = [
            self.gate.as_ref().map(|p| &p.0.sandbox),
            self.selector.as_ref().map(|p| &p.0.sandbox),
            self.health.as_ref().map(|p| &p.0.sandbox),
            self.template.as_ref().map(|p| &p.0.sandbox),
            self.analysis.as_ref().map(|p| &p.0.sandbox),
        ];
        sandboxes
            .into_iter()
            .flatten()
            .map(|s| PluginCalls {
                kind: s.kind,
                plugin: s.name.to_string(),
                calls: s
                    .calls
                    .get()
                    .into_iter()
                    .map(|c| (c.elapsed, c.fuel_used))
                    .collect(),
            })
            .collect()
    }
}

/// One plugin's successful calls: each one's wall time and fuel.
#[derive(Debug, Clone)]
pub struct PluginCalls {
    /// The plugin's kind.
    pub kind: PluginKind,
    /// `builtin:<name>` or the plugin file's path.
    pub plugin: String,
    /// Wall time and fuel of each call, oldest first.
    pub calls: Vec<(std::time::Duration, u64)>,
}

fn loaded<T>(plugin: Option<&T>, kind: PluginKind) -> Result<&T, PluginError> {
    plugin.ok_or(PluginError::NotLoaded { kind })
}

/// One `[plugins.<kind>]` entry, resolved and checked, not yet compiled.
struct Pending {
    kind: PluginKind,
    resolved: Resolved,
    limits: Limits,
    config: String,
}

impl Pending {
    fn link<P: WorldPre>(
        self,
        host: &PluginHost,
        compiled: Compiled,
        reporter: &Arc<dyn Reporter>,
    ) -> Result<Loaded<P>, PluginError> {
        link(
            host,
            self.resolved.name,
            compiled,
            self.config,
            self.limits,
            Arc::clone(reporter),
        )
    }
}

/// The compiled component of each entry, in order. Cache hits are loaded one after
/// another on this thread (loading maps memory, and parallel mapping contends on
/// the process's memory map: measured slower); misses compile in parallel, one
/// thread each, since compiling is CPU-bound and dominates a cold start.
fn compile_all(host: &PluginHost, pending: &[Pending]) -> Vec<Result<Compiled, PluginError>> {
    std::thread::scope(|scope| {
        // Collected before joining, so every miss is compiling at once.
        let slots: Vec<_> = pending
            .iter()
            .map(|p| {
                let started = Instant::now();
                let r = &p.resolved;
                match host.cached(&r.sha256) {
                    Some(component) => Ok(Compiled {
                        component,
                        origin: Origin::Cache,
                        took: started.elapsed(),
                    }),
                    None => Err(scope.spawn(move || {
                        host.compile(&r.name, Some(p.kind), &r.wasm, &r.sha256)
                            .map(|component| Compiled {
                                component,
                                origin: Origin::Compiled,
                                took: started.elapsed(),
                            })
                    })),
                }
            })
            .collect();
        slots.into_iter().map(|slot| slot.or_else(join)).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PluginsConfig;

    /// A `[plugins]` table as `cutover.toml` would hold it.
    fn plugins_table(text: &str) -> PluginsConfig {
        #[derive(serde::Deserialize)]
        struct File {
            plugins: PluginsConfig,
        }
        toml::from_str::<File>(text).unwrap().plugins
    }

    #[test]
    fn plugin_errors_name_the_config_file_actually_used() {
        let table = plugins_table(&format!(
            "[plugins.health-policy]\nsource = \"gone.wasm\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        ));
        let settings = PluginSettings {
            plugins: &table,
            base_dir: Path::new("/srv/app"),
            file: Path::new("/srv/app/deploy.toml"),
        };
        let host = PluginHost::uncached().unwrap();
        let err = Plugins::load(
            &host,
            settings,
            &PluginKind::ALL,
            Arc::new(crate::events::Silent),
        )
        .err()
        .expect("the plugin file is missing");
        let message = err.to_string();
        assert!(matches!(err, PluginError::MissingFile { .. }), "{err:?}");
        assert!(message.contains("/srv/app/gone.wasm"), "{message}");
        assert!(
            message.contains("under [plugins.health-policy] in /srv/app/deploy.toml"),
            "{message}"
        );
        assert!(!message.contains("cutover.toml"), "{message}");

        let rejected = PluginError::ConfigRejected {
            plugin: "builtin:tag-pattern".to_owned(),
            kind: PluginKind::DeployGate,
            reason: "`pattern` is empty".to_owned(),
            config_file: None,
        }
        .in_config_file(Path::new("/srv/app/deploy.toml"));
        assert!(
            rejected
                .to_string()
                .ends_with("fix [plugins.deploy-gate.config] in /srv/app/deploy.toml"),
            "{rejected}"
        );
    }

    #[test]
    fn a_broken_pin_of_a_kind_not_loaded_does_not_stop_the_load() {
        // The deploy gate's file exists but its pin is wrong: a command that never
        // asks the gate (rollback, status) must still load what it calls.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("gate.wasm"),
            builtin::default_for(PluginKind::DeployGate).wasm(),
        )
        .unwrap();
        let table = plugins_table(&format!(
            "[plugins.deploy-gate]\nsource = \"gate.wasm\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        ));
        let file = dir.path().join("cutover.toml");
        let config = PluginSettings {
            plugins: &table,
            base_dir: dir.path(),
            file: &file,
        };
        let host = PluginHost::uncached().unwrap();
        let silent: Arc<dyn Reporter> = Arc::new(crate::events::Silent);

        let plugins = Plugins::load(
            &host,
            config,
            &[PluginKind::HealthPolicy],
            Arc::clone(&silent),
        )
        .unwrap();
        assert_eq!(plugins.health().unwrap().name(), "builtin:http-status");
        let err = plugins.gate().err().unwrap();
        assert!(
            matches!(
                err,
                PluginError::NotLoaded {
                    kind: PluginKind::DeployGate
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("cutover bug"), "{err}");

        let err = Plugins::load(&host, config, &PluginKind::ALL, silent)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                PluginError::DigestMismatch {
                    kind: PluginKind::DeployGate,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn colors_convert_both_ways() {
        for color in crate::Color::BOTH {
            assert_eq!(crate::Color::from(types::Color::from(color)), color);
        }
    }
}

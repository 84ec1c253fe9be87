//! Every way loading or calling a plugin can fail, one variant per cause, so the CLI
//! can explain each and a deploy can tell "the plugin said no" from "the plugin broke".
//!
//! Messages name the plugin (`builtin:<name>` or its file), its kind and what the user
//! can do next. Text that came from a plugin has already been made printable by the
//! caller; this module never looks inside a plugin.

use std::path::PathBuf;

use super::PluginKind;

/// Loading or calling a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// `source = "builtin:<name>"` names no built-in plugin.
    #[error(
        "[plugins.{kind}] source = \"builtin:{name}\": there is no such built-in plugin; \
         the {kind} built-in is builtin:{default} (`cutover plugin list` shows them all)"
    )]
    UnknownBuiltin {
        /// The kind being configured.
        kind: PluginKind,
        /// The name after `builtin:`.
        name: String,
        /// The built-in for this kind.
        default: &'static str,
    },
    /// The plugin file could not be read.
    #[error(
        "{}cannot read plugin file {}: {source}; {}",
        kind.map(|k| format!("[plugins.{k}] ")).unwrap_or_default(),
        path.display(),
        match kind {
            Some(k) => format!(
                "check `source` under [plugins.{k}]{} (a relative path is resolved \
                 against the config file's directory)",
                in_file(config_file)
            ),
            None => "check the path".to_owned(),
        }
    )]
    MissingFile {
        /// The kind being configured, when the file came from the config.
        kind: Option<PluginKind>,
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
        /// The config file that names the plugin, when known.
        config_file: Option<PathBuf>,
    },
    /// The file's sha256 is not the pinned one.
    #[error(
        "[plugins.{kind}] {}: its sha256 is {actual}, but `sha256` pins {expected}; if you \
         rebuilt the plugin on purpose, run `cutover plugin sha256 {}` and update the pin, \
         otherwise find out who changed the file before deploying",
        path.display(),
        path.display()
    )]
    DigestMismatch {
        /// The kind being configured.
        kind: PluginKind,
        /// The file.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// The bytes are not a WebAssembly component this host can compile.
    #[error(
        "{}plugin {plugin} cannot be loaded: {detail}; build plugins with \
         `cargo build --release --target wasm32-wasip2` and check them with `cutover plugin check <file>`",
        kind.map(|k| format!("{k} ")).unwrap_or_default()
    )]
    Compile {
        /// The plugin's name.
        plugin: String,
        /// The kind it was loaded as, when known.
        kind: Option<PluginKind>,
        /// What the compiler said.
        detail: String,
    },
    /// The component exports no decision function of any cutover world.
    #[error(
        "plugin {plugin} exports none of `decide`, `select`, `evaluate`, `render` or \
         `analyze`, so it implements no cutover:plugin world; build it against `cutover plugin wit`"
    )]
    UnknownWorld {
        /// The plugin's name.
        plugin: String,
    },
    /// The component does not implement the kind's world: another world, a missing or
    /// mistyped export, or an import the host does not provide.
    #[error(
        "{kind} plugin {plugin} does not fit the {kind} world of cutover:plugin@0.2.0 \
         (or 0.1.0): {detail}"
    )]
    WrongWorld {
        /// The plugin's name.
        plugin: String,
        /// The kind it was loaded as.
        kind: PluginKind,
        /// What does not fit and how to fix it.
        detail: String,
    },
    /// The plugin targets an older contract that cannot express what it was asked
    /// (e.g. a 0.1.0 proxy template asked to render a canary split).
    #[error(
        "{kind} plugin {plugin} targets cutover:plugin@{version}, which cannot do this: \
         {detail}; rebuild it against cutover:plugin@0.2.0 (`cutover plugin wit` prints it)"
    )]
    NeedsNewerContract {
        /// The plugin's name.
        plugin: String,
        /// Its kind.
        kind: PluginKind,
        /// The version it targets (`0.1.0`).
        version: &'static str,
        /// What it was asked that its version has no words for.
        detail: String,
    },
    /// `validate-config` refused the `[plugins.<kind>].config` table.
    #[error(
        "{kind} plugin {plugin} rejected its config: {reason}; fix [plugins.{kind}.config]{}",
        in_file(config_file)
    )]
    ConfigRejected {
        /// The plugin's name.
        plugin: String,
        /// Its kind.
        kind: PluginKind,
        /// The plugin's explanation.
        reason: String,
        /// The config file holding `[plugins.<kind>.config]`, when there is one.
        config_file: Option<PathBuf>,
    },
    /// The plugin returned an error instead of a decision (e.g. the selector refused
    /// to pick a colour).
    #[error("{kind} plugin {plugin} refused to decide: {reason}")]
    Refused {
        /// The plugin's name.
        plugin: String,
        /// Its kind.
        kind: PluginKind,
        /// The plugin's reason.
        reason: String,
    },
    /// The plugin crashed (a WebAssembly trap: a panic, `unreachable`, an
    /// out-of-bounds access).
    #[error(
        "{kind} plugin {plugin} crashed: {detail}; this is a bug in the plugin \
         (`cutover plugin check <file>` reproduces the sample call)"
    )]
    Trap {
        /// The plugin's name.
        plugin: String,
        /// Its kind.
        kind: PluginKind,
        /// The trap, and what the plugin wrote to stderr.
        detail: String,
    },
    /// The plugin ran past its wall-clock deadline and was stopped.
    #[error(
        "{kind} plugin {plugin} ran past its deadline of {deadline_ms} ms and was stopped \
         (it may loop forever); fix the plugin, or raise `deadline_ms` in [plugins.{kind}.limits]"
    )]
    Timeout {
        /// The plugin's name.
        plugin: String,
        /// Its kind.
        kind: PluginKind,
        /// The deadline it exceeded.
        deadline_ms: u64,
    },
    /// The plugin used up its fuel (instruction budget) and was stopped.
    #[error(
        "{kind} plugin {plugin} used up its fuel budget of {fuel} and was stopped; fix the \
         plugin, or raise `fuel` in [plugins.{kind}.limits]"
    )]
    OutOfFuel {
        /// The plugin's name.
        plugin: String,
        /// Its kind.
        kind: PluginKind,
        /// The budget it exhausted.
        fuel: u64,
    },
    /// The plugin tried to grow its memory past the cap and was stopped.
    #[error(
        "{kind} plugin {plugin} tried to use more than its memory cap of {limit_mib} MiB and \
         was stopped; fix the plugin, or raise `memory_mib` in [plugins.{kind}.limits]"
    )]
    MemoryLimit {
        /// The plugin's name.
        plugin: String,
        /// Its kind.
        kind: PluginKind,
        /// The cap.
        limit_mib: u64,
    },
    /// The plugin returned more data than the output cap allows.
    #[error(
        "{kind} plugin {plugin} returned {size} bytes, over its output cap of {limit} bytes; \
         the result was discarded; fix the plugin, or raise `output_kib` in [plugins.{kind}.limits]"
    )]
    OutputTooLarge {
        /// The plugin's name.
        plugin: String,
        /// Its kind.
        kind: PluginKind,
        /// What it returned.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The plugin returned something the host refuses to use (e.g. a proxy file path
    /// outside the config directory).
    #[error(
        "{kind} plugin {plugin} returned output cutover refuses to use: {detail}; nothing was written; fix the plugin"
    )]
    InvalidOutput {
        /// The plugin's name.
        plugin: String,
        /// Its kind.
        kind: PluginKind,
        /// What is wrong with it.
        detail: String,
    },
    /// A `[plugins.<kind>.limits]` value is outside the hard bounds.
    #[error("[plugins.{kind}.limits] {key} = {value}: expected {min} to {max}")]
    InvalidLimit {
        /// The kind being configured.
        kind: PluginKind,
        /// The limit's key.
        key: &'static str,
        /// The configured value.
        value: u64,
        /// The smallest value accepted.
        min: u64,
        /// The largest value accepted.
        max: u64,
    },
    /// The WebAssembly engine could not be set up (a bug or an unsupported machine).
    #[error(
        "cannot set up the WebAssembly engine for plugins: {detail}; please report this as a cutover bug"
    )]
    Engine {
        /// What failed.
        detail: String,
    },
    /// A command called a plugin kind it did not ask [`super::Plugins::load`] for.
    #[error(
        "the {kind} plugin was called but this command did not load it; this is a cutover bug, please report it"
    )]
    NotLoaded {
        /// The kind called.
        kind: PluginKind,
    },
    /// A `cutover plugin run` input file does not hold the world's input record.
    #[error(
        "{file}: `{path}` must be WIT type `{wit_type}` of the {kind} world's input: {detail} \
         (`cutover plugin sample {kind}` prints a valid input to start from)"
    )]
    BadInput {
        /// The input file.
        file: String,
        /// The kind whose input it should be.
        kind: PluginKind,
        /// Where in the JSON the wrong value is (`probe.status`, `.` for the top).
        path: String,
        /// The WIT type expected there.
        wit_type: String,
        /// What serde found wrong.
        detail: String,
    },
    /// `cutover plugin new` could not write the project.
    #[error("cannot create the plugin project in {}: {detail}", dir.display())]
    Scaffold {
        /// The project directory.
        dir: PathBuf,
        /// What went wrong and what to do.
        detail: String,
    },
    /// Writing command output failed.
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
}

/// ` in <file>` when the config file is known, for messages.
fn in_file(config_file: &Option<PathBuf>) -> String {
    config_file
        .as_ref()
        .map(|file| format!(" in {}", file.display()))
        .unwrap_or_default()
}

impl PluginError {
    /// True when the fix is in the config: a plugin that cannot be loaded as
    /// configured (unknown builtin, missing or mismatching file, wrong world, bad
    /// limits) or that rejects its config. The CLI reports these with the config
    /// error exit code.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            PluginError::UnknownBuiltin { .. }
                | PluginError::MissingFile { .. }
                | PluginError::DigestMismatch { .. }
                | PluginError::Compile { .. }
                | PluginError::UnknownWorld { .. }
                | PluginError::WrongWorld { .. }
                | PluginError::ConfigRejected { .. }
                | PluginError::InvalidLimit { .. }
                | PluginError::BadInput { .. }
        )
    }

    /// The same error naming `file` as the config the plugin's entry is in, so the
    /// message points at the file the user really passed (not always `cutover.toml`).
    #[must_use]
    pub fn in_config_file(mut self, file: &std::path::Path) -> PluginError {
        if let PluginError::MissingFile { config_file, .. }
        | PluginError::ConfigRejected { config_file, .. } = &mut self
        {
            *config_file = Some(file.to_owned());
        }
        self
    }

    /// The plugin kind the error is about, when there is one.
    pub fn kind(&self) -> Option<PluginKind> {
        match self {
            PluginError::MissingFile { kind, .. } | PluginError::Compile { kind, .. } => *kind,
            PluginError::UnknownBuiltin { kind, .. }
            | PluginError::DigestMismatch { kind, .. }
            | PluginError::WrongWorld { kind, .. }
            | PluginError::ConfigRejected { kind, .. }
            | PluginError::Refused { kind, .. }
            | PluginError::NeedsNewerContract { kind, .. }
            | PluginError::Trap { kind, .. }
            | PluginError::Timeout { kind, .. }
            | PluginError::OutOfFuel { kind, .. }
            | PluginError::MemoryLimit { kind, .. }
            | PluginError::OutputTooLarge { kind, .. }
            | PluginError::InvalidOutput { kind, .. }
            | PluginError::InvalidLimit { kind, .. }
            | PluginError::BadInput { kind, .. }
            | PluginError::NotLoaded { kind } => Some(*kind),
            PluginError::UnknownWorld { .. }
            | PluginError::Engine { .. }
            | PluginError::Scaffold { .. }
            | PluginError::Output(_) => None,
        }
    }
}

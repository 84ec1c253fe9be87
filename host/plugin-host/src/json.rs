//! The JSON form of each world's input and answer: what `cutover plugin sample`
//! prints and `cutover plugin run` reads back and reports.
//!
//! Keys and enum values are spelled as in the WIT (`head-sha`, `ci-variables`,
//! `not-yet`), so the file a user edits reads like `cutover plugin wit`. Serde needs
//! types of its own, so each WIT record has a mirror here with a conversion to the
//! generated type; the mirrors live only in this module. When a value is wrong, the
//! WIT type expected at its path is read from the embedded WIT (parsed with
//! wit-parser), not from a second hand-written table. This module only converts; it calls no plugin.

use serde::{Deserialize, Serialize};
use wit_parser::{Resolve, Type, TypeDefKind};

use super::types as wit;
use super::{PluginError, PluginKind, WIT, sample};

/// Converts a serde mirror to its generated WIT type and back, field by field; lists
/// and options convert their items.
trait Mirror<T> {
    fn mirror(self) -> T;
}

macro_rules! same_type {
    ($($t:ty),*) => {
        $(impl Mirror<$t> for $t {
            fn mirror(self) -> $t {
                self
            }
        })*
    };
}

same_type!(String, bool, u8, u16, u32, u64);

impl<A: Mirror<B>, B> Mirror<Option<B>> for Option<A> {
    fn mirror(self) -> Option<B> {
        self.map(Mirror::mirror)
    }
}

impl<A: Mirror<B>, B> Mirror<Vec<B>> for Vec<A> {
    fn mirror(self) -> Vec<B> {
        self.into_iter().map(Mirror::mirror).collect()
    }
}

/// A record's serde mirror `$name`, with both conversions to `wit::$name`. Fields
/// marked `#[serde(default)]` may be left out of an input file.
macro_rules! mirror_record {
    ($name:ident { $($(#[$attr:meta])* $field:ident: $ty:ty,)* }) => {
        #[derive(Debug, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case", deny_unknown_fields)]
        struct $name {
            $($(#[$attr])* $field: $ty,)*
        }

        impl Mirror<wit::$name> for $name {
            fn mirror(self) -> wit::$name {
                wit::$name { $($field: self.$field.mirror(),)* }
            }
        }

        impl Mirror<$name> for wit::$name {
            fn mirror(self) -> $name {
                $name { $($field: self.$field.mirror(),)* }
            }
        }
    };
}

/// An enum's serde mirror `$name` (cases spelled as in the WIT), both ways.
macro_rules! mirror_enum {
    ($name:ident { $($case:ident),* }) => {
        #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
        #[serde(rename_all = "kebab-case")]
        enum $name {
            $($case,)*
        }

        impl Mirror<wit::$name> for $name {
            fn mirror(self) -> wit::$name {
                match self {
                    $($name::$case => wit::$name::$case,)*
                }
            }
        }

        impl Mirror<$name> for wit::$name {
            fn mirror(self) -> $name {
                match self {
                    $(wit::$name::$case => $name::$case,)*
                }
            }
        }
    };
}

mirror_enum!(Color { Blue, Green });
mirror_enum!(ProbeVerdict {
    Healthy,
    Unhealthy,
    Unknown
});

mirror_record!(KeyValue {
    key: String,
    value: String,
});

mirror_record!(GateInput {
    service: String,
    repository: Option<String>,
    branch: Option<String>,
    head_sha: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    commit_subject: Option<String>,
    #[serde(default)]
    dirty: bool,
    ci_system: Option<String>,
    #[serde(default)]
    ci_variables: Vec<KeyValue>,
});

mirror_record!(Instance {
    id: String,
    node: Option<String>,
    address: String,
    port: u16,
});

mirror_record!(SlotStatus {
    color: Color,
    present: bool,
    desired: u32,
    running: u32,
    image: Option<String>,
    image_digest: Option<String>,
    last_probe: ProbeVerdict,
});

mirror_record!(SelectorInput {
    service: String,
    live: Option<Color>,
    slots: Vec<SlotStatus>,
});

mirror_record!(ProbeResult {
    status: Option<u16>,
    #[serde(default)]
    headers: Vec<KeyValue>,
    #[serde(default)]
    body_prefix: String,
    latency_us: u64,
    error: Option<String>,
});

mirror_record!(HealthInput {
    service: String,
    color: Color,
    instance: Instance,
    attempt: u32,
    elapsed_ms: u64,
    probe: ProbeResult,
    #[serde(default)]
    history: Vec<ProbeResult>,
});

mirror_record!(Upstream {
    color: Color,
    servers: Vec<Instance>,
});

mirror_record!(TemplateInput {
    service: String,
    target: Upstream,
    previous: Option<Upstream>,
    #[serde(default = "all_traffic")]
    target_weight: u8,
    sticky_key: Option<String>,
    #[serde(default)]
    variables: Vec<KeyValue>,
});

/// A plain switch: all traffic to the target.
fn all_traffic() -> u8 {
    100
}

mirror_record!(TrafficMetrics {
    requests: u64,
    success: u64,
    client_errors: u64,
    server_errors: u64,
    latency_p50_us: Option<u64>,
    latency_p95_us: Option<u64>,
    latency_p99_us: Option<u64>,
});

mirror_record!(ColorTraffic {
    color: Color,
    this_step: TrafficMetrics,
    whole_canary: TrafficMetrics,
});

mirror_record!(InstanceProbe {
    color: Color,
    instance: Instance,
    probe: ProbeResult,
    verdict: ProbeVerdict,
});

mirror_record!(AnalysisInput {
    service: String,
    step_index: u32,
    step_count: u32,
    weight: u8,
    step_elapsed_ms: u64,
    canary_elapsed_ms: u64,
    canary: ColorTraffic,
    baseline: ColorTraffic,
    #[serde(default)]
    probes: Vec<InstanceProbe>,
});

/// One decision's input, for the world it belongs to.
#[derive(Debug)]
pub enum Input {
    /// `deploy-gate`'s `decide`.
    Gate(wit::GateInput),
    /// `target-selector`'s `select`.
    Selector(wit::SelectorInput),
    /// `health-policy`'s `evaluate`.
    Health(wit::HealthInput),
    /// `proxy-template`'s `render`.
    Template(wit::TemplateInput),
    /// `rollout-analysis`'s `analyze`.
    Analysis(wit::AnalysisInput),
}

impl Input {
    /// The sample input of `kind`, the one `cutover plugin check` calls with.
    pub fn sample(kind: PluginKind) -> Input {
        match kind {
            PluginKind::DeployGate => Input::Gate(sample::gate_input()),
            PluginKind::TargetSelector => Input::Selector(sample::selector_input()),
            PluginKind::HealthPolicy => Input::Health(sample::health_input()),
            PluginKind::ProxyTemplate => Input::Template(sample::template_input()),
            PluginKind::RolloutAnalysis => Input::Analysis(sample::analysis_input()),
        }
    }

    /// The kind whose decision function takes this input.
    pub fn kind(&self) -> PluginKind {
        match self {
            Input::Gate(_) => PluginKind::DeployGate,
            Input::Selector(_) => PluginKind::TargetSelector,
            Input::Health(_) => PluginKind::HealthPolicy,
            Input::Template(_) => PluginKind::ProxyTemplate,
            Input::Analysis(_) => PluginKind::RolloutAnalysis,
        }
    }
}

/// The WIT record a kind's decision function takes.
fn input_record(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::DeployGate => "gate-input",
        PluginKind::TargetSelector => "selector-input",
        PluginKind::HealthPolicy => "health-input",
        PluginKind::ProxyTemplate => "template-input",
        PluginKind::RolloutAnalysis => "analysis-input",
    }
}

/// The sample input of `kind` (the one `cutover plugin check` uses), as pretty JSON.
pub fn sample(kind: PluginKind) -> String {
    // Serialised from the structs, not a `Value`, so keys keep the WIT's order.
    let text = match Input::sample(kind) {
        Input::Gate(input) => serde_json::to_string_pretty(&Mirror::<GateInput>::mirror(input)),
        Input::Selector(input) => {
            serde_json::to_string_pretty(&Mirror::<SelectorInput>::mirror(input))
        }
        Input::Health(input) => serde_json::to_string_pretty(&Mirror::<HealthInput>::mirror(input)),
        Input::Template(input) => {
            serde_json::to_string_pretty(&Mirror::<TemplateInput>::mirror(input))
        }
        Input::Analysis(input) => {
            serde_json::to_string_pretty(&Mirror::<AnalysisInput>::mirror(input))
        }
    };
    // Plain data with string keys: serialising it cannot fail.
    let mut text = text.unwrap_or_default();
    text.push('\n');
    text
}

/// Parses `text` as the input of `kind`; `file` names it in errors.
///
/// # Errors
/// [`PluginError::BadInput`] naming the path of the wrong value (`probe.status`) and
/// the WIT type expected there.
pub fn parse(kind: PluginKind, text: &str, file: &str) -> Result<Input, PluginError> {
    fn typed<T: serde::de::DeserializeOwned>(
        kind: PluginKind,
        text: &str,
        file: &str,
    ) -> Result<T, PluginError> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let segments: Vec<String> = e
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Some(format!("[{index}]")),
                    _ => None,
                })
                .collect();
            let path = segments.iter().fold(String::new(), |mut path, segment| {
                if !path.is_empty() && !segment.starts_with('[') {
                    path.push('.');
                }
                path.push_str(segment);
                path
            });
            let (wit_type, detail) = (
                wit_type_at(WIT, input_record(kind), &segments),
                e.into_inner().to_string(),
            );
            PluginError::BadInput {
                file: file.to_owned(),
                kind,
                path: if path.is_empty() {
                    ".".to_owned()
                } else {
                    path
                },
                wit_type,
                detail,
            }
        })
    }
    Ok(match kind {
        PluginKind::DeployGate => Input::Gate(typed::<GateInput>(kind, text, file)?.mirror()),
        PluginKind::TargetSelector => {
            Input::Selector(typed::<SelectorInput>(kind, text, file)?.mirror())
        }
        PluginKind::HealthPolicy => Input::Health(typed::<HealthInput>(kind, text, file)?.mirror()),
        PluginKind::ProxyTemplate => {
            Input::Template(typed::<TemplateInput>(kind, text, file)?.mirror())
        }
        PluginKind::RolloutAnalysis => {
            Input::Analysis(typed::<AnalysisInput>(kind, text, file)?.mirror())
        }
    })
}

/// The WIT type at `path` (JSON keys and `[i]` indices) inside record `record` of
/// `wit`, spelled as the WIT spells it (`option<u16>`, `color`, `record instance`);
/// the deepest type that can be named when the path leaves the WIT (an unknown key).
///
/// `wit` is read with wit-parser, the grammar wasmtime's `bindgen!` reads it with, so
/// doc comments, nested generics and names that prefix others cannot mislead it.
fn wit_type_at(wit: &str, record: &str, path: &[String]) -> String {
    let mut resolve = wit_parser::Resolve::new();
    // The embedded WIT parses (a unit test says so); a text that does not still gets
    // a message, naming the top record.
    let Ok(package) = resolve.push_str("plugin.wit", wit) else {
        return format!("record {record}");
    };
    let Some(mut ty) = named_type(&resolve, package, record) else {
        return format!("record {record}");
    };
    for segment in path {
        // Step through `option<T>` to the T a present value must be.
        let inner = match type_def(&resolve, ty) {
            Some(TypeDefKind::Option(inner)) => *inner,
            _ => ty,
        };
        let next = match type_def(&resolve, inner) {
            Some(TypeDefKind::List(item)) if segment.starts_with('[') => Some(*item),
            Some(TypeDefKind::Record(fields)) if !segment.starts_with('[') => fields
                .fields
                .iter()
                .find(|field| field.name == *segment)
                .map(|field| field.ty),
            _ => None,
        };
        match next {
            Some(next) => ty = next,
            None => return described(&resolve, inner),
        }
    }
    described(&resolve, ty)
}

/// The type named `name` in any interface of `package`.
fn named_type(resolve: &Resolve, package: wit_parser::PackageId, name: &str) -> Option<Type> {
    resolve.packages[package]
        .interfaces
        .values()
        .find_map(|interface| resolve.interfaces[*interface].types.get(name))
        .map(|id| Type::Id(*id))
}

/// What `ty` is defined as, through aliases (`type a = b`); `None` for a primitive.
fn type_def(resolve: &Resolve, ty: Type) -> Option<&TypeDefKind> {
    match ty {
        Type::Id(id) => match &resolve.types[id].kind {
            TypeDefKind::Type(aliased) => type_def(resolve, *aliased),
            kind => Some(kind),
        },
        _ => None,
    }
}

/// `ty` as an error message names it: its WIT spelling, with `record ` before a
/// record's name so a reader knows it wants a JSON object.
fn described(resolve: &Resolve, ty: Type) -> String {
    match type_def(resolve, ty) {
        Some(TypeDefKind::Record(_)) => format!("record {}", spelled(resolve, ty)),
        _ => spelled(resolve, ty),
    }
}

/// `ty` as the WIT text writes it: a named type by its name, an anonymous one
/// (`option<u16>`, `list<key-value>`) by its constructor.
fn spelled(resolve: &Resolve, ty: Type) -> String {
    let id = match ty {
        Type::Bool => return "bool".to_owned(),
        Type::U8 => return "u8".to_owned(),
        Type::U16 => return "u16".to_owned(),
        Type::U32 => return "u32".to_owned(),
        Type::U64 => return "u64".to_owned(),
        Type::S8 => return "s8".to_owned(),
        Type::S16 => return "s16".to_owned(),
        Type::S32 => return "s32".to_owned(),
        Type::S64 => return "s64".to_owned(),
        Type::F32 => return "f32".to_owned(),
        Type::F64 => return "f64".to_owned(),
        Type::Char => return "char".to_owned(),
        Type::String => return "string".to_owned(),
        Type::ErrorContext => return "error-context".to_owned(),
        Type::Id(id) => id,
    };
    let def = &resolve.types[id];
    if let Some(name) = &def.name {
        return name.clone();
    }
    match &def.kind {
        TypeDefKind::Option(inner) => format!("option<{}>", spelled(resolve, *inner)),
        TypeDefKind::List(item) => format!("list<{}>", spelled(resolve, *item)),
        TypeDefKind::FixedLengthList(item, len) => {
            format!("list<{}, {len}>", spelled(resolve, *item))
        }
        TypeDefKind::Map(key, value) => {
            format!(
                "map<{}, {}>",
                spelled(resolve, *key),
                spelled(resolve, *value)
            )
        }
        TypeDefKind::Result(result) => match (result.ok, result.err) {
            (None, None) => "result".to_owned(),
            (Some(ok), None) => format!("result<{}>", spelled(resolve, ok)),
            (None, Some(err)) => format!("result<_, {}>", spelled(resolve, err)),
            (Some(ok), Some(err)) => {
                format!(
                    "result<{}, {}>",
                    spelled(resolve, ok),
                    spelled(resolve, err)
                )
            }
        },
        TypeDefKind::Tuple(tuple) => {
            let items: Vec<String> = tuple.types.iter().map(|t| spelled(resolve, *t)).collect();
            format!("tuple<{}>", items.join(", "))
        }
        TypeDefKind::Type(aliased) => spelled(resolve, *aliased),
        // Not in an input record (they are resources and async handles); named by
        // what they are rather than mis-spelled.
        other => other.as_str().to_owned(),
    }
}

/// A decision's answer, in the JSON form `plugin run --output json` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    /// `deploy-gate`: allow, with the reason.
    Allow(String),
    /// `deploy-gate`: deny, with the reason.
    Deny(String),
    /// `target-selector`: the colour chosen.
    Select(String),
    /// `health-policy`: ready.
    Healthy,
    /// `health-policy`: probe again.
    NotYet(String),
    /// `health-policy`: give up.
    Failed(String),
    /// `proxy-template`: the files, path and contents.
    Render(Vec<RenderedFile>),
    /// `rollout-analysis`: go on to the next step.
    Promote,
    /// `rollout-analysis`: ask again later, with why.
    Hold(String),
    /// `rollout-analysis`: stop the canary, with why.
    Abort(String),
    /// Any world: the function's `err(reason)`, which fails a deploy.
    Error(String),
}

/// One `proxy-file` of a `render` answer.
#[derive(Debug, Serialize)]
pub struct RenderedFile {
    /// Relative to the proxy's config directory.
    pub path: String,
    /// The file's text.
    pub contents: String,
}

impl Answer {
    /// The answer as a line for people, e.g. `evaluate -> not yet: 2 of 3 probes`.
    pub fn to_text(&self) -> String {
        match self {
            Answer::Allow(reason) => format!("decide -> allow: {reason}"),
            Answer::Deny(reason) => format!("decide -> deny: {reason}"),
            Answer::Select(color) => format!("select -> {color}"),
            Answer::Healthy => "evaluate -> healthy".to_owned(),
            Answer::NotYet(why) => format!("evaluate -> not yet: {why}"),
            Answer::Failed(why) => format!("evaluate -> failed: {why}"),
            Answer::Render(files) => {
                let mut text = format!("render -> {} file(s)", files.len());
                for file in files {
                    text.push_str(&format!("\n  {}:", file.path));
                    for line in file.contents.lines() {
                        text.push_str(&format!("\n    {line}"));
                    }
                }
                text
            }
            Answer::Promote => "analyze -> promote".to_owned(),
            Answer::Hold(why) => format!("analyze -> hold: {why}"),
            Answer::Abort(why) => format!("analyze -> abort: {why}"),
            Answer::Error(reason) => format!("error: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_parses_back() {
        for kind in PluginKind::ALL {
            let input = parse(kind, &sample(kind), "sample.json").unwrap();
            assert_eq!(input.kind(), kind);
        }
        let Input::Health(health) = parse(
            PluginKind::HealthPolicy,
            &sample(PluginKind::HealthPolicy),
            "x",
        )
        .unwrap() else {
            panic!("a health input")
        };
        assert_eq!(health, sample::health_input());
    }

    #[test]
    fn samples_use_the_wit_spelling() {
        let text = sample(PluginKind::DeployGate);
        assert!(text.contains("\"head-sha\""), "{text}");
        assert!(text.contains("\"ci-variables\""), "{text}");
        assert!(sample(PluginKind::TargetSelector).contains("\"last-probe\": \"healthy\""));
    }

    fn error(kind: PluginKind, text: &str) -> (String, String, String) {
        match parse(kind, text, "in.json").unwrap_err() {
            PluginError::BadInput {
                path,
                wit_type,
                detail,
                ..
            } => (path, wit_type, detail),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wrong_value_names_its_path_and_wit_type() {
        let text =
            sample(PluginKind::HealthPolicy).replace("\"status\": 503", "\"status\": \"503\"");
        let (path, ty, detail) = error(PluginKind::HealthPolicy, &text);
        assert_eq!(path, "history[1].status");
        assert_eq!(ty, "option<u16>");
        assert!(detail.contains("invalid type"), "{detail}");

        let text = sample(PluginKind::TargetSelector).replace("\"green\"", "\"red\"");
        let (path, ty, _) = error(PluginKind::TargetSelector, &text);
        assert_eq!((path.as_str(), ty.as_str()), ("slots[1].color", "color"));

        let (path, ty, detail) = error(PluginKind::ProxyTemplate, r#"{"service":"x"}"#);
        assert_eq!((path.as_str(), ty.as_str()), (".", "record template-input"));
        assert!(detail.contains("missing field `target`"), "{detail}");

        let (path, ty, detail) = error(
            PluginKind::DeployGate,
            r#"{"service":"x","head_sha":"abc"}"#,
        );
        assert_eq!(
            (path.as_str(), ty.as_str()),
            ("head_sha", "record gate-input")
        );
        assert!(detail.contains("unknown field `head_sha`"), "{detail}");
    }

    /// The old string search took a record's body to end at its first `}` and its
    /// fields to be one a line, so a doc comment with a brace, or a record written on
    /// one line, lost the fields after it.
    #[test]
    fn a_brace_in_a_doc_comment_or_a_one_line_record_keeps_every_field() {
        let wit = r#"
            package test:braces;
            interface types {
                /// Said in the doc of `record probe {`, which a text search would find first.
                record point { x: u32, y: option<u16> }
                record probe {
                    /// The body, e.g. `{"ok": true}`.
                    body: string,
                    status: option<u16>,
                    at: list<point>,
                }
            }
        "#;
        let at = |path: &[&str]| {
            let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
            wit_type_at(wit, "probe", &path)
        };
        assert_eq!(at(&["status"]), "option<u16>");
        assert_eq!(at(&["at"]), "list<point>");
        assert_eq!(at(&["at", "[0]"]), "record point");
        assert_eq!(at(&["at", "[0]", "y"]), "option<u16>");
        assert_eq!(at(&["at", "[0]", "z"]), "record point");
        assert_eq!(at(&[]), "record probe");
    }

    #[test]
    fn the_embedded_wit_parses() {
        let mut resolve = Resolve::new();
        let package = resolve.push_str("plugin.wit", WIT).unwrap();
        for kind in PluginKind::ALL {
            assert!(
                named_type(&resolve, package, input_record(kind)).is_some(),
                "{kind}"
            );
        }
    }
}

//! `/metrics` in the Prometheus text format (OpenMetrics, via `prometheus-client`):
//! deploys by service, kind and outcome, deploy and step duration histograms, the
//! live colour, the time of the last successful deploy, and plugin call time and
//! fuel.
//!
//! Every scrape derives the numbers afresh from what the host records on disk — the
//! audit log, the state file and the plugin call totals ([`PLUGIN_STATS_FILE`]) —
//! and keeps no counter in memory: a restarted server loses nothing, two servers
//! agree, and a deploy run from a terminal counts as much as one run by `serve`.
//! Counts cover what the audit log holds; when it rotates they drop, which
//! Prometheus reads as a counter reset. This module only reads, except
//! [`record_plugin_calls`], which adds a finished run's plugin calls to the totals.

use std::path::Path;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::Color;
use crate::audit::{AuditLog, Entry, kind_name};
use crate::config::Config;
use crate::operation::OperationKind;
use crate::plugin::PluginCalls;
use crate::state::StateStore;

/// The `Content-Type` of [`encode_text`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The plugin call totals' file name in the state directory.
pub const PLUGIN_STATS_FILE: &str = "plugin-stats.json";

/// Upper bounds (seconds) of the deploy duration histogram.
const DEPLOY_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// Upper bounds (seconds) of the step duration histogram.
const STEP_BUCKETS: [f64; 10] = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0];
/// Upper bounds (seconds) of the plugin call histogram: a decision takes
/// microseconds to milliseconds, the default deadline is 100 ms.
pub const PLUGIN_BUCKETS: [f64; 8] = [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 1.0];

/// One plugin's calls, summed over every recorded run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginTotals {
    /// The plugin kind (`deploy-gate`, ...).
    pub kind: String,
    /// The plugin's name (`builtin:tag-pattern`, a file name).
    pub plugin: String,
    /// Calls.
    pub calls: u64,
    /// Their wall time, summed.
    pub seconds: f64,
    /// Their fuel, summed.
    pub fuel: u64,
    /// Calls per bucket of [`PLUGIN_BUCKETS`] (not cumulative), the last one for
    /// calls above every bound.
    pub buckets: Vec<u64>,
}

/// What a service's metrics are made from.
#[derive(Debug, Clone, Default)]
pub struct ServiceRecords {
    /// The service.
    pub service: String,
    /// The audit log, oldest first.
    pub entries: Vec<Entry>,
    /// The live colour the state file records.
    pub live: Option<Color>,
    /// Plugin call totals.
    pub plugins: Vec<PluginTotals>,
}

impl ServiceRecords {
    /// Reads the records of `config`'s service. A file that cannot be read counts as
    /// empty: a scrape reports what can be known rather than failing whole.
    pub fn load(config: &Config) -> ServiceRecords {
        let dir = config.state_dir();
        ServiceRecords {
            service: config.service.clone(),
            entries: AuditLog::new(&dir).read().unwrap_or_default(),
            live: StateStore::new(&dir, &config.service)
                .load()
                .ok()
                .and_then(|s| s.live.map(|l| l.color)),
            plugins: read_plugin_totals(&dir),
        }
    }
}

/// The plugin call totals recorded in `state_dir` (none when there is no file).
pub fn read_plugin_totals(state_dir: &Path) -> Vec<PluginTotals> {
    std::fs::read(state_dir.join(PLUGIN_STATS_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

type Labels = Vec<(&'static str, String)>;

fn histograms(buckets: &'static [f64]) -> Family<Labels, Histogram, impl Fn() -> Histogram> {
    Family::new_with_constructor(move || Histogram::new(buckets.iter().copied()))
}

fn unix_seconds(rfc3339: &str) -> Option<f64> {
    let time = humantime::parse_rfc3339_weak(rfc3339).ok()?;
    Some(
        time.duration_since(SystemTime::UNIX_EPOCH)
            .ok()?
            .as_secs_f64(),
    )
}

/// The metrics of `services` in the OpenMetrics text format.
pub fn encode_text(services: &[ServiceRecords]) -> String {
    let deploys = Family::<Labels, Counter>::default();
    let deploy_seconds = histograms(&DEPLOY_BUCKETS);
    let step_seconds = histograms(&STEP_BUCKETS);
    let live = Family::<Labels, Gauge>::default();
    let last_success = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let plugin_seconds = Family::<Labels, Recorded>::default();
    let plugin_fuel = Family::<Labels, Counter>::default();

    for records in services {
        let service = || ("service", records.service.clone());
        for entry in &records.entries {
            let kind = ("kind", kind_name(entry.kind).to_owned());
            deploys
                .get_or_create(&vec![
                    service(),
                    kind.clone(),
                    ("outcome", entry.outcome.as_str().to_owned()),
                ])
                .inc();
            let total: u64 = entry.steps.iter().map(|s| s.ms).sum();
            deploy_seconds
                .get_or_create(&vec![service(), kind])
                .observe(Duration::from_millis(total).as_secs_f64());
            for step in &entry.steps {
                step_seconds
                    .get_or_create(&vec![service(), ("step", step.step.to_string())])
                    .observe(Duration::from_millis(step.ms).as_secs_f64());
            }
        }
        for color in Color::BOTH {
            live.get_or_create(&vec![service(), ("color", color.as_str().to_owned())])
                .set(i64::from(records.live == Some(color)));
        }
        let last = records.entries.iter().rev().find(|e| {
            e.kind == OperationKind::Deploy && e.outcome == crate::operation::Outcome::Succeeded
        });
        if let Some(seconds) = last.and_then(|e| unix_seconds(&e.time)) {
            last_success.get_or_create(&vec![service()]).set(seconds);
        }
        for p in &records.plugins {
            let labels = vec![
                service(),
                ("kind", p.kind.clone()),
                ("plugin", p.plugin.clone()),
            ];
            plugin_seconds.get_or_create(&labels).set(p);
            plugin_fuel.get_or_create(&labels).inc_by(p.fuel);
        }
    }

    let mut registry = Registry::with_prefix("cutover");
    registry.register(
        "deploys",
        "Finished deploys and rollbacks in the audit log, by outcome",
        deploys,
    );
    registry.register(
        "deploy_duration_seconds",
        "Wall time of a deploy or rollback (the sum of its steps)",
        deploy_seconds,
    );
    registry.register(
        "step_duration_seconds",
        "Wall time of one deploy step",
        step_seconds,
    );
    registry.register(
        "live",
        "1 for the colour the state file records as live, else 0",
        live,
    );
    registry.register(
        "last_success_timestamp_seconds",
        "When the last successful deploy finished (Unix time)",
        last_success,
    );
    registry.register(
        "plugin_call_duration_seconds",
        "Wall time of the plugin calls of recorded deploys and rollbacks",
        plugin_seconds,
    );
    registry.register(
        "plugin_fuel",
        "Fuel (about one unit per WebAssembly instruction) used by plugin calls",
        plugin_fuel,
    );
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// Adds the plugin calls of the run that just ended (`ctx`'s plugins) to the totals
/// in its state directory. Called after the audit append; a failure is a warning,
/// never a reason to report a deploy as failed.
pub fn record_plugin_calls(ctx: &crate::context::Context) {
    let calls = ctx.plugins.call_stats();
    if let Err(e) = add_to_file(ctx.store.dir(), &calls) {
        ctx.reporter.log(
            crate::events::Level::Warn,
            &format!(
                "cannot record plugin call metrics in {}: {e}",
                ctx.store.dir().join(PLUGIN_STATS_FILE).display()
            ),
        );
    }
}

/// Merges `calls` into [`PLUGIN_STATS_FILE`] in `state_dir`, under a lock file so
/// two runs ending at once both count (the deploy lock is already released).
///
/// # Errors
/// When the lock or the file cannot be opened, read or replaced.
pub fn add_to_file(state_dir: &Path, calls: &[PluginCalls]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    if calls.iter().all(|c| c.calls.is_empty()) {
        return Ok(());
    }
    let lock_path = state_dir.join(format!("{PLUGIN_STATS_FILE}.lock"));
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| e.to_string())?;
    // Released when `lock` is dropped.
    lock.lock().map_err(|e| e.to_string())?;
    let mut totals = read_plugin_totals(state_dir);
    for c in calls {
        add_calls(&mut totals, c.kind.name(), &c.plugin, &c.calls);
    }
    let bytes = serde_json::to_vec_pretty(&totals).map_err(|e| e.to_string())?;
    crate::atomic_file::write(&state_dir.join(PLUGIN_STATS_FILE), &bytes, 0o600)
        .map_err(|e| e.to_string())
}

/// A histogram whose buckets were counted elsewhere (by [`record_plugin_calls`]
/// over many runs): `prometheus-client`'s own histogram can only observe values.
#[derive(Debug, Default)]
struct Recorded(std::sync::Mutex<Buckets>);

/// A histogram's sum, count and per-bucket (not cumulative) counts.
#[derive(Debug, Default)]
struct Buckets {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl Recorded {
    fn set(&self, totals: &PluginTotals) {
        let bounds = PLUGIN_BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets = bounds.zip(totals.buckets.iter().copied()).collect();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Buckets {
            sum: totals.seconds,
            count: totals.calls,
            buckets,
        };
    }
}

impl prometheus_client::metrics::TypedMetric for Recorded {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for Recorded {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum, h.count, &h.buckets, None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

/// Per-bucket counts (not cumulative) of `seconds` over [`PLUGIN_BUCKETS`].
pub fn bucket_index(seconds: f64) -> usize {
    PLUGIN_BUCKETS
        .iter()
        .position(|b| seconds <= *b)
        .unwrap_or(PLUGIN_BUCKETS.len())
}

/// Merges `calls` into `totals`.
pub fn add_calls(
    totals: &mut Vec<PluginTotals>,
    kind: &str,
    plugin: &str,
    calls: &[(Duration, u64)],
) {
    if calls.is_empty() {
        return;
    }
    let at = match totals
        .iter()
        .position(|t| t.kind == kind && t.plugin == plugin)
    {
        Some(at) => at,
        None => {
            totals.push(PluginTotals {
                kind: kind.to_owned(),
                plugin: plugin.to_owned(),
                ..PluginTotals::default()
            });
            totals.len() - 1
        }
    };
    let t = &mut totals[at];
    t.buckets.resize(PLUGIN_BUCKETS.len() + 1, 0);
    for (elapsed, fuel) in calls {
        t.calls += 1;
        t.seconds += elapsed.as_secs_f64();
        t.fuel += fuel;
        t.buckets[bucket_index(elapsed.as_secs_f64())] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Actor;
    use crate::operation::{Outcome, Step, StepTiming};
    use std::collections::BTreeMap;

    /// Samples of `text` by their exact `name{labels}`.
    fn by_name(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect()
    }

    fn entry(outcome: Outcome, ms: u64) -> Entry {
        Entry {
            deploy_id: "d".to_owned(),
            time: "2026-01-02T03:04:05Z".to_owned(),
            kind: OperationKind::Deploy,
            actor: Actor {
                via: "local".to_owned(),
                name: None,
                run_url: None,
                host: "h".to_owned(),
            },
            git_sha: None,
            image: None,
            digest: None,
            target: None,
            outcome,
            reason: None,
            steps: vec![StepTiming {
                step: Step::Health,
                ms,
            }],
        }
    }

    #[test]
    fn counts_outcomes_live_color_and_last_success() {
        let mut plugins = Vec::new();
        add_calls(
            &mut plugins,
            "deploy-gate",
            "builtin:tag-pattern",
            &[
                (Duration::from_micros(200), 5000),
                (Duration::from_secs(2), 7),
            ],
        );
        let text = encode_text(&[ServiceRecords {
            service: "hello".to_owned(),
            entries: vec![entry(Outcome::Succeeded, 1500), entry(Outcome::Failed, 10)],
            live: Some(Color::Green),
            plugins,
        }]);
        let m = by_name(&text);
        let get = |k: &str| m.get(k).copied().unwrap_or_else(|| panic!("{k}\n{text}"));
        assert_eq!(
            get(r#"cutover_deploys_total{service="hello",kind="deploy",outcome="failed"}"#),
            1.0
        );
        assert_eq!(get(r#"cutover_live{service="hello",color="green"}"#), 1.0);
        assert_eq!(get(r#"cutover_live{service="hello",color="blue"}"#), 0.0);
        assert_eq!(
            get(r#"cutover_last_success_timestamp_seconds{service="hello"}"#),
            1_767_323_045.0
        );
        assert_eq!(
            get(r#"cutover_step_duration_seconds_count{service="hello",step="health"}"#),
            2.0
        );
        let gate = r#"service="hello",kind="deploy-gate",plugin="builtin:tag-pattern""#;
        assert_eq!(get(&format!("cutover_plugin_fuel_total{{{gate}}}")), 5007.0);
        let bucket = |le: &str| {
            get(&format!(
                "cutover_plugin_call_duration_seconds_bucket{{le=\"{le}\",{gate}}}"
            ))
        };
        assert_eq!(bucket("0.0003"), 1.0);
        assert_eq!(bucket("1.0"), 1.0);
        assert_eq!(bucket("+Inf"), 2.0);
        assert_eq!(
            get(&format!(
                "cutover_plugin_call_duration_seconds_count{{{gate}}}"
            )),
            2.0
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

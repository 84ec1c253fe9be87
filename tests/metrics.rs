//! The metrics after real deploys, a gate denial and a rollback, parsed by a
//! Prometheus text-format parser (not by our own code), with the counts asserted.

use prometheus_parse::{Scrape, Value};

use crate::support::service::Service;

/// The value of the one sample named `name` whose labels include `labels`.
#[track_caller]
pub fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0]
}

/// Parses metrics text; every non-comment line must be a sample the parser read.
pub fn parse(text: &str) -> Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Scrape::parse(lines).unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{text}"))
}

/// Asserts the counts that the `history`-like sequence below produces: two
/// deploys, one denial, one rollback, blue live again.
pub fn assert_counts(svc: &Service, text: &str) {
    let scrape = parse(text);
    let service = ("service", svc.name.as_str());
    let deploys = |kind, outcome| {
        sample(
            &scrape,
            "cutover_deploys_total",
            &[service, ("kind", kind), ("outcome", outcome)],
        )
    };
    assert_eq!(deploys("deploy", "succeeded"), 2.0, "{text}");
    assert_eq!(deploys("deploy", "denied"), 1.0, "{text}");
    assert_eq!(deploys("rollback", "succeeded"), 1.0, "{text}");
    let live = |color| sample(&scrape, "cutover_live", &[service, ("color", color)]);
    assert_eq!((live("blue"), live("green")), (1.0, 0.0), "{text}");
    let steps = |step| {
        sample(
            &scrape,
            "cutover_step_duration_seconds_count",
            &[service, ("step", step)],
        )
    };
    assert_eq!(steps("gate"), 3.0, "two deploys and the denial");
    assert_eq!(steps("switch"), 3.0, "two deploys and the rollback");
    assert_eq!(steps("image"), 2.0, "the denial stopped at the gate");
    let durations = sample(
        &scrape,
        "cutover_deploy_duration_seconds",
        &[service, ("kind", "deploy")],
    );
    assert_eq!(durations, 3.0, "the +Inf bucket counts every deploy");
    let last = sample(
        &scrape,
        "cutover_last_success_timestamp_seconds",
        &[service],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(now - last < 600.0 && now >= last - 1.0, "{last} vs {now}");
    // Every deploy's gate is the tag-pattern built-in (the default allows any
    // commit), called twice per deploy: its config check and the decision. The
    // health policy judged every probe of the two deploys and the rollback.
    let gate = [
        service,
        ("kind", "deploy-gate"),
        ("plugin", "builtin:tag-pattern"),
    ];
    let calls = sample(&scrape, "cutover_plugin_call_duration_seconds_count", &gate);
    assert_eq!(calls, 6.0, "three deploys, two calls each: {text}");
    assert!(sample(&scrape, "cutover_plugin_fuel_total", &gate) > 0.0);
    let health = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "cutover_plugin_call_duration_seconds_count")
        .filter(|s| s.labels.get("kind") == Some("health-policy"))
        .map(|s| match s.value {
            Value::Untyped(v) | Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum::<f64>();
    assert!(health >= 3.0, "{text}");
}

/// The original script's gate rule (a tag containing `cicd`), which denies a deploy
/// of the tests' untagged directories.
pub const CICD_GATE: &str =
    "\n[plugins.deploy-gate]\nsource = \"builtin:tag-pattern\"\nconfig = { pattern = \"cicd\" }\n";

/// Two deploys, a denial by the `cicd` gate rule and a rollback.
pub fn deploy_deny_rollback(svc: &Service) {
    svc.deploy("v1").success();
    svc.deploy("v2").success();
    svc.append_config(CICD_GATE);
    svc.deploy("v3").code(3);
    svc.edit_config(|text| text.replace(CICD_GATE, ""));
    svc.cutover(&["rollback"]).success();
}

#[test]
fn metrics_count_deploys_denials_rollbacks_live_color_and_plugin_calls() {
    let svc = Service::new("metrics");
    deploy_deny_rollback(&svc);
    let config = cutover::config::Config::load(&svc.config_path()).unwrap();
    let text = cutover::metrics::encode_text(&[cutover::metrics::ServiceRecords::load(&config)]);
    assert_counts(&svc, &text);
}

//! Plugin start-up and decision costs, through the real host: cold start (compile all
//! four built-ins), warm start (all four from the compiled-code cache), one decision
//! (fresh store + instantiate + call) per kind, and how long the default fuel budget
//! lets a runaway plugin spin.
//!
//! Run with `cargo bench -p cutover --bench plugins`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use cutover::config::Config;
use cutover::events::{Reporter, Silent};
use cutover::plugin::PluginSpec;
use cutover::plugin::{
    GatePlugin, HealthPlugin, Limits, PluginError, PluginHost, PluginKind, Plugins, SelectorPlugin,
    TemplatePlugin, builtin, sample,
};

#[path = "../plugin-host/wasm_build.rs"]
mod wasm_build;

fn config() -> Config {
    let text = "service = \"hello\"\n[image]\nref = \"hello:1\"\n[container]\nport = 8080\n\
                [proxy]\nmode = \"managed\"\nlisten = \"127.0.0.1:8080\"\n";
    Config::parse(text, Path::new("/srv/hello/cutover.toml")).expect("bench config")
}

fn silent() -> Arc<dyn Reporter> {
    Arc::new(Silent)
}

fn default_spec(kind: PluginKind) -> PluginSpec {
    PluginSpec {
        source: builtin::default_for(kind).source(),
        sha256: None,
        limits: Default::default(),
        config: toml::Table::new(),
    }
}

fn start(c: &mut Criterion) {
    let config = config();
    // Returned, so the plugins are dropped outside the timed section: a deploy
    // keeps them until it ends.
    let load =
        |host: &PluginHost| Plugins::load(host, &config, &PluginKind::ALL, silent()).expect("load");
    let mut group = c.benchmark_group("start");
    group.sample_size(10);

    let uncached = PluginHost::uncached().expect("host");
    group.bench_function("cold: compile all four", |b| {
        b.iter_batched(|| (), |()| load(&uncached), BatchSize::PerIteration)
    });

    let dir = tempfile::tempdir().expect("cache dir");
    let cached = PluginHost::new(Some(dir.path().to_owned())).expect("host");
    Plugins::load(&cached, &config, &PluginKind::ALL, silent()).expect("fill the cache");
    group.bench_function("warm: all four from the cache", |b| {
        b.iter_batched(|| (), |()| load(&cached), BatchSize::PerIteration)
    });
    group.finish();

    // Each built-in alone, from the cache.
    let mut group = c.benchmark_group("warm load");
    let base = Path::new("/");
    group.bench_function("deploy-gate", |b| {
        let spec = default_spec(PluginKind::DeployGate);
        b.iter_batched(
            || (),
            |()| GatePlugin::load(&cached, &spec, base, silent()).expect("load"),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("target-selector", |b| {
        let spec = default_spec(PluginKind::TargetSelector);
        b.iter_batched(
            || (),
            |()| SelectorPlugin::load(&cached, &spec, base, silent()).expect("load"),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("health-policy", |b| {
        let spec = default_spec(PluginKind::HealthPolicy);
        b.iter_batched(
            || (),
            |()| HealthPlugin::load(&cached, &spec, base, silent()).expect("load"),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("proxy-template", |b| {
        let spec = default_spec(PluginKind::ProxyTemplate);
        b.iter_batched(
            || (),
            |()| TemplatePlugin::load(&cached, &spec, base, silent()).expect("load"),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn decision(c: &mut Criterion) {
    let host = PluginHost::uncached().expect("host");
    let plugins = Plugins::load(&host, &config(), &PluginKind::ALL, silent()).expect("load");
    let gate = sample::gate_input();
    let selector = sample::selector_input();
    let health = sample::health_input();
    let template = sample::template_input();

    let mut group = c.benchmark_group("decision");
    group.bench_function("deploy-gate decide", |b| {
        let plugin = plugins.gate().expect("loaded");
        b.iter(|| black_box(plugin.decide(&gate).expect("decide")))
    });
    group.bench_function("target-selector select", |b| {
        let plugin = plugins.selector().expect("loaded");
        b.iter(|| black_box(plugin.select(&selector).expect("select")))
    });
    group.bench_function("health-policy evaluate", |b| {
        let plugin = plugins.health().expect("loaded");
        b.iter(|| black_box(plugin.evaluate(&health).expect("evaluate")))
    });
    group.bench_function("proxy-template render", |b| {
        let plugin = plugins.template().expect("loaded");
        b.iter(|| black_box(plugin.render(&template).expect("render")))
    });
    // What a deploy pays when it calls from async code (see `Sandbox::call`).
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let plugins = Arc::new(plugins);
    group.bench_function("health-policy evaluate, tokio task (multi-thread)", |b| {
        b.iter(|| {
            let plugins = Arc::clone(&plugins);
            let health = health.clone();
            multi
                .block_on(async move {
                    tokio::spawn(async move {
                        black_box(
                            plugins
                                .health()
                                .expect("loaded")
                                .evaluate(&health)
                                .expect("evaluate"),
                        )
                    })
                    .await
                })
                .expect("task")
        })
    });
    group.bench_function("(baseline: an empty tokio task, multi-thread)", |b| {
        b.iter(|| {
            multi
                .block_on(async { tokio::spawn(async { black_box(1) }).await })
                .expect("task")
        })
    });
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    group.bench_function("health-policy evaluate, current-thread runtime", |b| {
        b.iter(|| {
            current.block_on(async {
                black_box(
                    plugins
                        .health()
                        .expect("loaded")
                        .evaluate(&health)
                        .expect("evaluate"),
                )
            })
        })
    });
    group.finish();
}

/// How long the default fuel budget lets a runaway plugin spin: the hostile test
/// guest's busy loop, stopped by fuel well before the 100 ms deadline.
fn runaway(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = wasm_build::build(
        &root,
        &["hostile-health"],
        "plugin",
        &root.join("target").join("test-guests"),
    )
    .expect("build the hostile guest");
    let wasm = std::fs::read(dir.join("hostile_health.wasm")).expect("guest");
    let host = PluginHost::uncached().expect("host");
    let limits = Limits::default();
    let plugin =
        HealthPlugin::load_bytes(&host, "loop", &wasm, "loop", limits, silent()).expect("load");
    let input = sample::health_input();
    let mut group = c.benchmark_group("limits");
    group.sample_size(10);
    group.bench_function("busy loop until out of fuel (default budget)", |b| {
        b.iter(|| match plugin.evaluate(&input) {
            Err(PluginError::OutOfFuel { .. }) => {}
            other => panic!("expected out of fuel, got {other:?}"),
        })
    });
    group.finish();
}

/// A Python deploy gate (componentize-py, ~18 MB with its interpreter): a warm load
/// from the compiled-code cache and one decision. Build it with `cutover plugin new
/// deploy-gate py-gate --lang python` and the README's componentize-py command, then
/// run with `CUTOVER_BENCH_PYTHON_GATE=py-gate/deploy_gate.wasm`; skipped without it.
fn python(c: &mut Criterion) {
    let Some(path) = std::env::var_os("CUTOVER_BENCH_PYTHON_GATE") else {
        eprintln!(
            "python: skipped (set CUTOVER_BENCH_PYTHON_GATE to a componentize-py deploy gate)"
        );
        return;
    };
    let wasm = std::fs::read(&path).expect("the Python gate's .wasm");
    let dir = tempfile::tempdir().expect("cache dir");
    let host = PluginHost::new(Some(dir.path().to_owned())).expect("host");
    let load = || {
        GatePlugin::load_bytes(&host, "py-gate", &wasm, "{}", Limits::default(), silent())
            .expect("load")
    };
    let plugin = load();
    let input = sample::gate_input();
    let mut group = c.benchmark_group("python");
    group.sample_size(10);
    group.bench_function("warm load of a Python deploy gate", |b| {
        b.iter_batched(|| (), |()| load(), BatchSize::PerIteration)
    });
    group.bench_function("deploy-gate decide (Python)", |b| {
        b.iter(|| black_box(plugin.decide(&input).expect("decide")))
    });
    group.finish();
}

criterion_group!(benches, start, decision, runaway, python);
criterion_main!(benches);

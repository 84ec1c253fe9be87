//! Deploys again and again under sustained HTTP load and counts every request: cutover
//! and, in the same harness on the same app and nginx, the original write-up's script
//! (`benches/baseline/original-deploy.sh`) as the baseline.
//!
//! With `--swarm`, a third row deploys the same way to the tests' 3-node Docker Swarm
//! (tests/support/swarm.rs; needs root): 3 replicas, built on a node and pulled by
//! digest from the cluster's registry, nginx on the host sending traffic to every task.
//!
//! `cargo bench -p cutover --bench deploy_under_load -- [--deploys N] [--rate R]
//!  [--slow-connections S] [--baseline-interval SECS] [--skip-baseline] [--swarm]
//!  [--only-swarm] [--out DIR]`
//!
//! Writes `results.md` and `results.json` to `--out` (default
//! `target/bench-deploy/`) and prints the Markdown table. Loopback only; every loop is
//! bounded in count and time.

#[path = "../../tests/support/mod.rs"]
mod support;

use support::{free_port, hello, load, workspace_root};

use cutover::operation::millis;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use load::{Latency, Load, LoadConfig, LoadReport};
use serde_json::{Value, json};

struct Options {
    deploys: usize,
    rate: u32,
    slow_connections: usize,
    baseline_interval: f64,
    skip_baseline: bool,
    swarm: bool,
    only_swarm: bool,
    out: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        deploys: 20,
        rate: 300,
        slow_connections: 2,
        baseline_interval: 10.0,
        skip_baseline: false,
        swarm: false,
        only_swarm: false,
        out: workspace_root().join("target/bench-deploy"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--deploys" => o.deploys = value().parse().expect("--deploys N"),
            "--rate" => o.rate = value().parse().expect("--rate R"),
            "--slow-connections" => {
                o.slow_connections = value().parse().expect("--slow-connections S")
            }
            "--baseline-interval" => {
                o.baseline_interval = value().parse().expect("--baseline-interval SECS")
            }
            "--skip-baseline" => o.skip_baseline = true,
            "--swarm" => o.swarm = true,
            "--only-swarm" => (o.swarm, o.only_swarm) = (true, true),
            "--out" => o.out = PathBuf::from(value()),
            // `cargo bench` passes --bench to every bench binary.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        (1..=500).contains(&o.deploys),
        "--deploys between 1 and 500"
    );
    o
}

/// The workspace root (also what the shared `hello` support module asks for).
/// Runs its closure when dropped, so a panicking run still cleans up what it started.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the static hello binary and the two images both rows deploy.
fn build_images(service: &str) -> [String; 2] {
    let context = hello::hello_context();
    ["v1", "v2"].map(|v| {
        let tag = format!("{service}:{v}");
        run(Command::new("docker")
            .args([
                "build",
                "-q",
                "--build-arg",
                &format!("VERSION={v}"),
                "--label",
            ])
            .arg(format!("cutover.service={service}"))
            .args(["-t", &tag])
            .arg(context));
        tag
    })
}

/// Watches one deploy from outside: when the target answers /health directly, when
/// the proxy first serves the target, and the peak RSS of a process. Each runs on its
/// own thread, so a probe that hangs (docker-proxy accepts before the app listens)
/// cannot delay the other.
struct Observer {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Observed>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Observed {
    healthy_at: Option<Instant>,
    serving_at: Option<Instant>,
    peak_rss_kib: u64,
}

impl Observed {
    /// From the target answering its health check to the proxy serving it.
    fn healthy_to_serving(&self) -> Option<Duration> {
        Some(self.serving_at?.saturating_duration_since(self.healthy_at?))
    }

    fn merge(self, other: Observed) -> Observed {
        Observed {
            healthy_at: self.healthy_at.or(other.healthy_at),
            serving_at: self.serving_at.or(other.serving_at),
            peak_rss_kib: self.peak_rss_kib.max(other.peak_rss_kib),
        }
    }
}

/// Polls `check` every 2 ms until it records something or the observer stops.
fn watch(
    stop: Arc<AtomicBool>,
    mut check: impl FnMut(&mut Observed) -> bool + Send + 'static,
) -> std::thread::JoinHandle<Observed> {
    std::thread::spawn(move || {
        let mut seen = Observed::default();
        let deadline = Instant::now() + Duration::from_secs(300);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            if check(&mut seen) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        seen
    })
}

impl Observer {
    /// `direct`: where the target's copies answer (one container; a Swarm's tasks,
    /// healthy when every one answers). With `version`, a copy and the proxy count
    /// only when they answer `/` as that version (a Swarm colour's retired tasks may
    /// still answer while they stop).
    fn start(
        direct: Vec<SocketAddr>,
        proxy: SocketAddr,
        target: (&'static str, Option<String>),
        pid: Option<u32>,
    ) -> Observer {
        let (color, version) = target;
        let stop = Arc::new(AtomicBool::new(false));
        // Without a version, `/health` answering 200 is enough (one container, which
        // only runs while it is the deploy's).
        let answers = move |addr: SocketAddr, want_color: Option<&str>| match &version {
            Some(version) => get(addr, "/").is_some_and(|(s, c, v)| {
                s == 200
                    && v.as_deref() == Some(version.as_str())
                    && want_color.is_none_or(|w| c.as_deref() == Some(w))
            }),
            None => match want_color {
                Some(w) => {
                    get(addr, "/").is_some_and(|(s, c, _)| s == 200 && c.as_deref() == Some(w))
                }
                None => get(addr, "/health").is_some_and(|(s, _, _)| s == 200),
            },
        };
        let direct_answers = answers.clone();
        let mut threads = vec![
            watch(stop.clone(), move |seen| {
                let ok = direct.iter().all(|d| direct_answers(*d, None));
                if ok {
                    seen.healthy_at = Some(Instant::now());
                }
                ok
            }),
            watch(stop.clone(), move |seen| {
                let ok = answers(proxy, Some(color));
                if ok {
                    seen.serving_at = Some(Instant::now());
                }
                ok
            }),
        ];
        if let Some(pid) = pid {
            threads.push(watch(stop.clone(), move |seen| {
                seen.peak_rss_kib = seen.peak_rss_kib.max(vm_hwm_kib(pid).unwrap_or(0));
                false
            }));
        }
        Observer { stop, threads }
    }

    fn finish(self) -> Observed {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("observer"))
            .fold(Observed::default(), Observed::merge)
    }
}

/// The peak resident set of a process so far (VmHWM).
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A one-shot GET on a fresh connection: status and X-Hello-Color.
/// The status, `X-Hello-Color` and `X-Hello-Version` of `GET path`.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, Option<String>, Option<String>)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let header = |name: &str| {
        text.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    Some((status, header("X-Hello-Color"), header("X-Hello-Version")))
}

/// What one deploy of a row measured.
#[derive(Debug, Clone, Default)]
struct DeployMeasure {
    wall: Duration,
    /// When the switch happened, from the load's start.
    switch_at: Duration,
    healthy_to_serving: Option<Duration>,
    steps: BTreeMap<String, u64>,
    peak_rss_kib: u64,
    ok: bool,
}

struct Row {
    name: &'static str,
    /// The steps whose time is the app's, Docker's or a chosen wait, not cutover's
    /// own: subtracted from the wall time for the overhead.
    docker_steps: &'static [&'static str],
    deploys: Vec<DeployMeasure>,
    load: LoadReport,
}

/// The same load for both rows, given a second to settle before the first deploy.
fn start_load(opts: &Options, proxy: SocketAddr) -> Load {
    let load = Load::start(LoadConfig {
        fast_rate: opts.rate,
        slow_connections: opts.slow_connections,
        max_duration: Duration::from_secs(60 * 60),
        ..LoadConfig::new(proxy)
    });
    std::thread::sleep(Duration::from_secs(1));
    load
}

fn alternate(i: usize) -> &'static str {
    if i.is_multiple_of(2) { "green" } else { "blue" }
}

fn cutover_row(opts: &Options, images: &[String; 2]) -> Row {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = format!("bench-cutover-{}", std::process::id());
    let (listen, blue, green) = (free_port(), free_port(), free_port());
    let config = dir.path().join("cutover.toml");
    std::fs::write(
        &config,
        format!(
            r#"service = "{service}"
[image]
ref = "{image}"
[container]
port = 8080
stop_grace = "10s"
[blue]
host_port = {blue}
[green]
host_port = {green}
[health]
path = "/health"
interval = "20ms"
first_delay = "10ms"
deadline = "30s"
[proxy]
mode = "managed"
listen = "127.0.0.1:{listen}"
[verify]
expect_header = "X-Hello-Color: {{color}}"
[drain]
timeout = "15s"
"#,
            image = images[0]
        ),
    )
    .expect("write config");
    let cutover = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
        cmd.arg("--config").arg(&config).args(args);
        cmd
    };
    let _down = OnDrop(|| {
        let _ = cutover(&["down"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    });
    run(cutover(&["deploy", "--image", &images[0]]).stderr(Stdio::null()));
    let proxy: SocketAddr = ([127, 0, 0, 1], listen).into();
    let direct = |color: &str| {
        let port = if color == "blue" { blue } else { green };
        vec![SocketAddr::from(([127, 0, 0, 1], port))]
    };
    let deploy = |i: usize| {
        let mut cmd = cutover(&["deploy", "--image", &images[(i + 1) % 2]]);
        cmd.args(["--output", "json"]);
        cmd
    };
    let (deploys, load) = deploys_under_load(opts, proxy, direct, deploy, |_| None);
    Row {
        name: "cutover",
        docker_steps: &["health", "drain"],
        deploys,
        load,
    }
}

/// The swarm row: the same deploys and load, to 3 replicas on the tests' 3-node swarm.
fn swarm_row(opts: &Options) -> Row {
    let cluster = support::swarm::cluster();
    let svc = cluster.service("bench-swarm", 0, "", "");
    // As fast a health check as the single-host row's.
    svc.edit_config(|text| {
        text.replace(
            "interval = \"100ms\"",
            "interval = \"20ms\"\nfirst_delay = \"10ms\"",
        )
    });
    let env = cluster.env();
    let cutover = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
        cmd.arg("--config").arg(svc.config_path()).args(args);
        cmd.envs(env.iter().copied());
        cmd
    };
    run(cutover(&["deploy", "--build-arg", "VERSION=v1"]).stderr(Stdio::null()));
    let nodes: Vec<std::net::Ipv4Addr> = cluster.nodes.iter().map(|n| n.addr).collect();
    let direct = |color: &str| {
        let port = if color == "blue" { svc.blue } else { svc.green };
        nodes
            .iter()
            .map(|addr| SocketAddr::from((*addr, port)))
            .collect()
    };
    // Deploy i runs v(i+2), a version of its own: the observer waits for it, since
    // the colour's tasks retired one deploy earlier (running the version of two
    // deploys ago) may still answer on its port while they stop.
    let version = |i: usize| format!("v{}", i + 2);
    let deploy = |i: usize| {
        let mut cmd = cutover(&["deploy", "--build-arg", &format!("VERSION={}", version(i))]);
        cmd.args(["--output", "json"]);
        cmd
    };
    let (deploys, load) =
        deploys_under_load(opts, svc.proxy_addr(), direct, deploy, |i| Some(version(i)));
    Row {
        name: "swarm",
        // Beside the app's start and drain: building and pushing the image, and Swarm
        // stopping the target's old tasks.
        docker_steps: &["image", "clear", "health", "drain"],
        deploys,
        load,
    }
}

/// Runs `opts.deploys` deploys (`deploy(i)` makes the i-th command; it goes to
/// `alternate(i)`, whose copies answer at `direct(colour)`, as `version(i)` when
/// given) under load through `proxy`, measuring each from its JSON events and from
/// outside.
fn deploys_under_load(
    opts: &Options,
    proxy: SocketAddr,
    direct: impl Fn(&str) -> Vec<SocketAddr>,
    deploy: impl Fn(usize) -> Command,
    version: impl Fn(usize) -> Option<String>,
) -> (Vec<DeployMeasure>, LoadReport) {
    let load = start_load(opts, proxy);
    let mut deploys = Vec::new();
    for i in 0..opts.deploys {
        let color = alternate(i);
        let began = Instant::now();
        let mut child = deploy(i)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cutover");
        let observer = Observer::start(direct(color), proxy, (color, version(i)), Some(child.id()));
        let mut m = DeployMeasure::default();
        let stdout = child.stdout.take().expect("piped");
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["event"] == "step-finished" {
                let step = event["step"].as_str().unwrap_or("?").to_owned();
                if step == "switch" {
                    m.switch_at = load.elapsed();
                }
                m.steps.insert(step, event["ms"].as_u64().unwrap_or(0));
            }
            if event["event"] == "finished" {
                m.ok = event["outcome"] == "succeeded";
            }
        }
        let status = child.wait().expect("cutover ran");
        m.wall = began.elapsed();
        let seen = observer.finish();
        m.ok &= status.success();
        m.peak_rss_kib = seen.peak_rss_kib;
        m.healthy_to_serving = seen.healthy_to_serving();
        eprintln!(
            "cutover deploy {}/{} → {color}: {:?} ok={} healthy@{:?} serving@{:?}",
            i + 1,
            opts.deploys,
            m.wall,
            m.ok,
            seen.healthy_at.map(|t| t.duration_since(began)),
            seen.serving_at.map(|t| t.duration_since(began))
        );
        deploys.push(m);
    }
    std::thread::sleep(Duration::from_secs(1));
    (deploys, load.stop())
}

fn baseline_row(opts: &Options, images: &[String; 2]) -> Row {
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = dir.path();
    let service = format!("bench-baseline-{}", std::process::id());
    let (listen, blue, green) = (free_port(), free_port(), free_port());
    // The write-up's nginx.conf (shared/seed), on loopback, logs under the prefix.
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"worker_processes auto;
pid {prefix}/nginx.pid;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp-body;
    proxy_temp_path {prefix}/tmp-proxy;
    fastcgi_temp_path {prefix}/tmp-fastcgi;
    uwsgi_temp_path {prefix}/tmp-uwsgi;
    scgi_temp_path {prefix}/tmp-scgi;
    server {{
        listen 127.0.0.1:{listen};
        include {prefix}/service-url.inc;
        location / {{
            proxy_pass $service_url;
            proxy_redirect     off;
            proxy_http_version 1.1;
            proxy_set_header   Host $http_host;
            proxy_set_header   Connection "";
            proxy_set_header   X-Real-IP $remote_addr;
            proxy_set_header   X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header   X-Forwarded-Host $server_name;
        }}
    }}
}}
"#,
            prefix = prefix.display(),
            user = if rustix::process::geteuid().is_root() {
                "user root;"
            } else {
                ""
            },
        ),
    )
    .expect("nginx.conf");
    std::fs::write(
        prefix.join("service-url.inc"),
        format!("set $service_url http://127.0.0.1:{blue};\n"),
    )
    .expect("service-url.inc");
    let script = workspace_root().join("host/benches/baseline/original-deploy.sh");
    let deploy = |image: &str| {
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .env("SERVICE", &service)
            .env("IMAGE", image)
            .env("BLUE_PORT", blue.to_string())
            .env("GREEN_PORT", green.to_string())
            .env("NGINX_PREFIX", prefix)
            .env("NGINX_CONF", &conf)
            .env("INTERVAL", opts.baseline_interval.to_string());
        cmd
    };
    let _cleanup = OnDrop(|| {
        let _ = Command::new("nginx")
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf)
            .args(["-s", "quit"])
            .status();
        for c in ["blue", "green"] {
            let _ = Command::new("docker")
                .args(["rm", "-f", &format!("{service}-{c}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    });
    // Start nginx, then the first deploy (blue, not measured) that the load starts on.
    run(Command::new("nginx")
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(prefix.join("error.log")));
    run(&mut deploy(&images[0]));
    let proxy: SocketAddr = ([127, 0, 0, 1], listen).into();
    let load = start_load(opts, proxy);
    let mut deploys = Vec::new();
    for i in 0..opts.deploys {
        let color = alternate(i);
        let port = if color == "blue" { blue } else { green };
        let began = Instant::now();
        let observer = Observer::start(
            vec![SocketAddr::from(([127, 0, 0, 1], port))],
            proxy,
            (color, None),
            None,
        );
        let out = deploy(&images[(i + 1) % 2])
            .output()
            .expect("baseline script");
        let mut m = DeployMeasure {
            wall: began.elapsed(),
            ok: out.status.success(),
            ..Default::default()
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        if let Some(t) = stdout.lines().find_map(|l| l.strip_prefix("@switched ")) {
            let switched: f64 = t.trim().parse().unwrap_or(0.0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            m.switch_at = load
                .elapsed()
                .saturating_sub(Duration::from_secs_f64((now - switched).max(0.0)));
        }
        let seen = observer.finish();
        m.healthy_to_serving = seen.healthy_to_serving();
        eprintln!(
            "baseline deploy {}/{} → {color}: {:?} ok={}",
            i + 1,
            opts.deploys,
            m.wall,
            m.ok
        );
        deploys.push(m);
    }
    std::thread::sleep(Duration::from_secs(1));
    let load = load.stop();
    Row {
        name: "baseline (original script)",
        docker_steps: &[],
        deploys,
        load,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn summarize(row: &Row) -> Value {
    let l = &row.load;
    let all = Latency::of(&l.samples);
    let switches: Vec<Duration> = row.deploys.iter().map(|d| d.switch_at).collect();
    let near = Latency::of(l.near(&switches, Duration::from_secs(2)));
    let h2s: Vec<f64> = row
        .deploys
        .iter()
        .filter_map(|d| d.healthy_to_serving)
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let walls: Vec<f64> = row
        .deploys
        .iter()
        .map(|d| d.wall.as_secs_f64() * 1000.0)
        .collect();
    let mut steps: BTreeMap<String, f64> = BTreeMap::new();
    for d in &row.deploys {
        for (k, v) in &d.steps {
            *steps.entry(k.clone()).or_default() += *v as f64 / row.deploys.len() as f64;
        }
    }
    // cutover's own overhead: wall time minus the app's start-to-healthy wait, the
    // drain it chose to wait for in-flight requests, and (on a swarm) Docker's own
    // build/push and task stops: the row's `docker_steps`.
    let overhead: Vec<f64> = row
        .deploys
        .iter()
        .filter(|d| !d.steps.is_empty())
        .map(|d| {
            let docker: u64 = row
                .docker_steps
                .iter()
                .map(|s| *d.steps.get(*s).unwrap_or(&0))
                .sum();
            d.wall.as_secs_f64() * 1000.0 - docker as f64
        })
        .collect();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for sample in l.failed() {
        let key = match sample.result {
            load::Outcome::Status(code) => code.to_string(),
            other => format!("{other:?}"),
        };
        *statuses.entry(key).or_default() += 1;
    }
    json!({
        "row": row.name,
        "failures_by_kind": statuses,
        "first_failures_at_ms": l.failed().iter().take(20).map(|s| (millis(s.at), s.slow, millis(s.latency))).collect::<Vec<_>>(),
        "switch_at_ms": switches.iter().map(|d| millis(*d)).collect::<Vec<_>>(),
        "deploys": row.deploys.len(),
        "deploys_ok": row.deploys.iter().filter(|d| d.ok).count(),
        "requests": l.samples.len(),
        "failed": l.failed().len(),
        "non_2xx": l.non_2xx(),
        "connection_errors": l.connection_errors(),
        "timeouts": l.timeouts(),
        "keepalive_retries": l.keepalive_retries,
        "slow_ok": l.slow_ok(),
        "slow_total": l.samples.iter().filter(|s| s.slow).count(),
        "latency_ms": {"p50": all.p50_ms, "p99": all.p99_ms, "max": all.max_ms},
        "latency_near_switch_ms": {"p50": near.p50_ms, "p99": near.p99_ms, "max": near.max_ms},
        "deploy_wall_ms": {"median": median(walls.clone()), "max": walls.iter().cloned().fold(0.0, f64::max)},
        "healthy_to_serving_ms": {"median": median(h2s.clone()), "max": h2s.iter().cloned().fold(0.0, f64::max), "measured": h2s.len()},
        "mean_step_ms": steps,
        "overhead_ms": {"median": median(overhead.clone()), "max": overhead.iter().cloned().fold(0.0, f64::max)},
        "peak_rss_mib": row.deploys.iter().map(|d| d.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0,
    })
}

fn is_baseline(row: &Value) -> bool {
    row["row"]
        .as_str()
        .is_some_and(|r| r.starts_with("baseline"))
}

fn markdown(rows: &[Value], opts: &Options) -> String {
    let mut md = format!(
        "Deploys under load: {} deploys per row, {} req/s short requests on 4 keep-alive connections, \
         {} connections of slow requests (1–3 s).\n\n",
        opts.deploys, opts.rate, opts.slow_connections
    );
    md.push_str("| | requests | failed (non-2xx / conn / timeout) | slow ok | p50 / p99 / max ms | ±2 s of switch p50 / p99 / max ms | deploy wall median ms | healthy→serving median / max ms | overhead median ms | peak RSS MiB |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let f = |v: &Value| {
            v.as_f64().map_or("-".to_owned(), |x| {
                if x.is_nan() {
                    "-".to_owned()
                } else {
                    format!("{x:.0}")
                }
            })
        };
        md.push_str(&format!(
            "| {} | {} | {} ({} / {} / {}) | {}/{} | {} / {} / {} | {} / {} / {} | {} | {} / {} | {} | {} |\n",
            r["row"].as_str().unwrap_or(""),
            r["requests"], r["failed"], r["non_2xx"], r["connection_errors"], r["timeouts"],
            r["slow_ok"], r["slow_total"],
            f(&r["latency_ms"]["p50"]), f(&r["latency_ms"]["p99"]), f(&r["latency_ms"]["max"]),
            f(&r["latency_near_switch_ms"]["p50"]), f(&r["latency_near_switch_ms"]["p99"]), f(&r["latency_near_switch_ms"]["max"]),
            f(&r["deploy_wall_ms"]["median"]),
            f(&r["healthy_to_serving_ms"]["median"]), f(&r["healthy_to_serving_ms"]["max"]),
            if !is_baseline(r) { f(&r["overhead_ms"]["median"]) } else { "-".to_owned() },
            if !is_baseline(r) { format!("{:.1}", r["peak_rss_mib"].as_f64().unwrap_or(0.0)) } else { "-".to_owned() },
        ));
    }
    for row in rows.iter().filter(|r| !is_baseline(r)) {
        let Some(steps) = row["mean_step_ms"].as_object() else {
            continue;
        };
        md.push_str(&format!(
            "\n{} mean step times (ms): ",
            row["row"].as_str().unwrap_or("")
        ));
        let parts: Vec<String> = steps
            .iter()
            .map(|(k, v)| format!("{k} {:.0}", v.as_f64().unwrap_or(0.0)))
            .collect();
        md.push_str(&parts.join(", "));
        md.push('\n');
    }
    if rows.len() >= 2 && rows[0]["row"] == "cutover" && is_baseline(&rows[1]) {
        let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.1}×", b / a),
            _ => "-".to_owned(),
        };
        md.push_str(&format!(
            "\nRatios (baseline ÷ cutover): failed requests {} vs {}; healthy→serving median {}; deploy wall median {}.\n",
            rows[1]["failed"], rows[0]["failed"],
            ratio(&rows[0]["healthy_to_serving_ms"]["median"], &rows[1]["healthy_to_serving_ms"]["median"]),
            ratio(&rows[0]["deploy_wall_ms"]["median"], &rows[1]["deploy_wall_ms"]["median"]),
        ));
    }
    md
}

fn main() {
    let opts = options();
    std::fs::create_dir_all(&opts.out).expect("output dir");
    let images_service = format!("bench-hello-{}", std::process::id());
    let images = build_images(&images_service);
    let _images = OnDrop(|| {
        for image in &images {
            let _ = Command::new("docker")
                .args(["rmi", "-f", image])
                .stdout(Stdio::null())
                .status();
        }
    });
    let mut rows = Vec::new();
    if !opts.only_swarm {
        rows.push(summarize(&cutover_row(&opts, &images)));
        if !opts.skip_baseline {
            rows.push(summarize(&baseline_row(&opts, &images)));
        }
    }
    if opts.swarm {
        rows.push(summarize(&swarm_row(&opts)));
    }
    let md = markdown(&rows, &opts);
    std::fs::write(opts.out.join("results.md"), &md).expect("results.md");
    std::fs::write(
        opts.out.join("results.json"),
        serde_json::to_vec_pretty(
            &json!({"deploys": opts.deploys, "rate": opts.rate, "rows": rows}),
        )
        .expect("json"),
    )
    .expect("results.json");
    println!("{md}");
}

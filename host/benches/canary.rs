//! A bad release (v2 answers 500 on a fifth of `GET /`, yet passes its health check and
//! the verify step) deployed under load, once with blue/green and once as a canary, in
//! one run on the same app, images and nginx: how many requests reached v2 before it
//! was taken out, how long after v2's first bad answer that took, and what one weight
//! change costs (the step's render → `nginx -t` → reload, and from the step's start to
//! the first request v2 answers through nginx).
//!
//! `cargo bench -p cutover --bench canary -- [--rate R] [--human-delay SECS]
//!  [--first-step PERCENT] [--out DIR]`
//!
//! Blue/green has no judgement of its own after verify: its row assumes a human who
//! rolls back `--human-delay` seconds (default 10) after the switch, which flatters it.
//! Writes `results.md` / `results.json` to `--out` (default `target/bench-canary/`).
//! Loopback only; every loop is bounded in count and time.

#[path = "../../tests/support/hello.rs"]
#[allow(dead_code)]
mod hello;
#[path = "../../tests/support/load.rs"]
mod load;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use load::{Load, LoadConfig, LoadReport};
use serde_json::{Value, json};

struct Options {
    rate: u32,
    human_delay: Duration,
    first_step: u8,
    out: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        rate: 200,
        human_delay: Duration::from_secs(10),
        first_step: 5,
        out: workspace_root().join("target/bench-canary"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--rate" => o.rate = value().parse().expect("--rate R"),
            "--human-delay" => {
                o.human_delay =
                    Duration::from_secs_f64(value().parse().expect("--human-delay SECS"))
            }
            "--first-step" => o.first_step = value().parse().expect("--first-step PERCENT"),
            "--out" => o.out = PathBuf::from(value()),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        (1..=99).contains(&o.first_step),
        "--first-step between 1 and 99"
    );
    o
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent directory")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One service under test: its config, the cutover binary, and `down` at the end.
struct Bench {
    dir: tempfile::TempDir,
    service: String,
    listen: u16,
}

impl Bench {
    fn new(name: &str, strategy: &str) -> Bench {
        let dir = tempfile::tempdir().expect("temp dir");
        let service = format!("bench-{name}-{}", std::process::id());
        let (listen, blue, green) = (free_port(), free_port(), free_port());
        let bench = Bench {
            dir,
            service,
            listen,
        };
        let config = format!(
            r#"service = "{service}"
[image]
build = {{ context = "{context}" }}
[container]
port = 8080
stop_grace = "10s"
[container.env]
[blue]
host_port = {blue}
[green]
host_port = {green}
[health]
path = "/health"
interval = "20ms"
deadline = "30s"
[proxy]
mode = "managed"
listen = "127.0.0.1:{listen}"
[verify]
expect_header = "X-Hello-Color: {{color}}"
[drain]
timeout = "15s"
{strategy}
"#,
            service = bench.service,
            context = hello::hello_context().display(),
        );
        std::fs::write(bench.config(), config).expect("write config");
        bench
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("cutover.toml")
    }

    fn proxy(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.listen).into()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
        cmd.arg("--config").arg(self.config()).args(args);
        cmd
    }

    /// Runs cutover to the end; its exit code.
    fn run(&self, args: &[&str]) -> i32 {
        let out = self.command(args).output().expect("run cutover");
        out.status.code().unwrap_or(-1)
    }

    /// The bad knob for every container started from now on (v2 only: v1 already runs).
    fn make_next_release_bad(&self) {
        let text = std::fs::read_to_string(self.config()).expect("read config");
        let text = text.replace(
            "[container.env]\n",
            "[container.env]\nHELLO_ERROR_PERCENT = \"20\"\n",
        );
        std::fs::write(self.config(), text).expect("write config");
    }

    /// Deploys `version` with `--output json`, stamping each event with the load's
    /// clock as it arrives. Returns the exit code and the stamped events.
    fn deploy_watched(&self, version: &str, load: &Load) -> (i32, Vec<(Duration, Value)>) {
        let mut child = self
            .command(&[
                "--output",
                "json",
                "deploy",
                "--build-arg",
                &format!("VERSION={version}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cutover");
        let stdout = child.stdout.take().expect("stdout");
        let mut events = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                events.push((load.elapsed(), event));
            }
        }
        let code = child.wait().expect("cutover ran").code().unwrap_or(-1);
        (code, events)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self
            .command(&["down", "--images"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn start_load(opts: &Options, proxy: SocketAddr) -> Load {
    Load::start(LoadConfig {
        fast_rate: opts.rate,
        fast_connections: 4,
        slow_connections: 0,
        max_duration: Duration::from_secs(600),
        ..LoadConfig::new(proxy)
    })
}

/// What a row measured about v2's exposure.
fn exposure(name: &str, report: &LoadReport, taken_out_at: Option<Duration>) -> Value {
    let v2: Vec<_> = report
        .samples
        .iter()
        .filter(|s| s.version == Some(2))
        .collect();
    let v2_bad = v2.iter().filter(|s| !s.ok()).count();
    let first_bad = v2.iter().find(|s| !s.ok()).map(|s| s.at + s.latency);
    let last_v2 = v2.last().map(|s| s.at + s.latency);
    let lost_elsewhere = report
        .failed()
        .iter()
        .filter(|s| s.version != Some(2))
        .count();
    let ms = |d: Option<Duration>| d.map(cutover::operation::millis);
    json!({
        "row": name,
        "requests": report.samples.len(),
        "v2_requests": v2.len(),
        "v2_500s": v2_bad,
        "failed_not_from_v2": lost_elsewhere,
        "first_bad_to_last_v2_ms": ms(first_bad.zip(last_v2).map(|(a, b)| b.saturating_sub(a))),
        "first_bad_to_taken_out_ms": ms(first_bad.zip(taken_out_at).map(|(a, b)| b.saturating_sub(a))),
    })
}

/// A service with v1 live, the next release made bad, and the load running for a
/// second: where both rows start.
fn v1_live_under_load(opts: &Options, name: &str, strategy: &str) -> (Bench, Load) {
    let bench = Bench::new(name, strategy);
    assert_eq!(
        bench.run(&["deploy", "--build-arg", "VERSION=v1"]),
        0,
        "v1 deploys"
    );
    bench.make_next_release_bad();
    let load = start_load(opts, bench.proxy());
    std::thread::sleep(Duration::from_secs(1));
    (bench, load)
}

fn blue_green_row(opts: &Options) -> Value {
    let (bench, load) = v1_live_under_load(opts, "bg", "");
    let (code, _) = bench.deploy_watched("v2", &load);
    assert_eq!(
        code, 0,
        "blue/green promotes the bad v2: its health and verify pass"
    );
    std::thread::sleep(opts.human_delay);
    assert_eq!(bench.run(&["rollback"]), 0, "the human's rollback");
    let taken_out = load.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    exposure(
        "blue/green + a human after --human-delay",
        &report,
        Some(taken_out),
    )
}

fn canary_row(opts: &Options) -> Value {
    let strategy = format!(
        "[strategy]\nkind = \"canary\"\nsteps = [\"{}%\", \"pause 60s\", \"100%\"]\n",
        opts.first_step
    );
    let (bench, load) = v1_live_under_load(opts, "canary", &strategy);
    let (code, events) = bench.deploy_watched("v2", &load);
    assert_eq!(code, 4, "the canary aborts");
    let finished = events
        .iter()
        .find(|(_, e)| e["event"] == "finished")
        .map(|(at, _)| *at);
    // The first canary step is the weight change: when it began, how long it took.
    let weight_step = events
        .iter()
        .find(|(_, e)| e["event"] == "step-started" && e["step"] == "canary")
        .map(|(at, _)| *at);
    let weight_ms = events
        .iter()
        .find(|(_, e)| e["event"] == "step-finished" && e["step"] == "canary")
        .and_then(|(_, e)| e["ms"].as_u64());
    std::thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    let first_v2 = report
        .samples
        .iter()
        .filter(|s| s.version == Some(2))
        .map(|s| s.at + s.latency)
        .min();
    let mut row = exposure("canary", &report, finished);
    row["weight_change_step_ms"] = json!(weight_ms);
    row["weight_step_start_to_first_v2_ms"] = json!(
        weight_step
            .zip(first_v2)
            .map(|(a, b)| cutover::operation::millis(b.saturating_sub(a)))
    );
    row
}

fn markdown(rows: &[Value], opts: &Options) -> String {
    let mut out = format!(
        "Bad v2 (500 on 20% of `GET /`), {} requests/s, first canary step {}%, human delay {:?}\n\n\
         | | requests | reached v2 | v2's 500s | failed, not from v2 | first bad answer → v2 out | weight change (step / step start → v2 serving) |\n\
         |---|---|---|---|---|---|---|\n",
        opts.rate, opts.first_step, opts.human_delay
    );
    for r in rows {
        let weight = match (
            r["weight_change_step_ms"].as_u64(),
            r["weight_step_start_to_first_v2_ms"].as_u64(),
        ) {
            (Some(a), Some(b)) => format!("{a} ms / {b} ms"),
            _ => "—".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} ms | {} |\n",
            r["row"].as_str().unwrap_or(""),
            r["requests"],
            r["v2_requests"],
            r["v2_500s"],
            r["failed_not_from_v2"],
            r["first_bad_to_taken_out_ms"],
            weight
        ));
    }
    out
}

fn main() {
    let opts = options();
    let rows = vec![blue_green_row(&opts), canary_row(&opts)];
    let md = markdown(&rows, &opts);
    std::fs::create_dir_all(&opts.out).expect("create --out");
    std::fs::write(opts.out.join("results.md"), &md).expect("write results.md");
    std::fs::write(
        opts.out.join("results.json"),
        serde_json::to_string_pretty(&rows).expect("json"),
    )
    .expect("write results.json");
    println!("{md}");
}

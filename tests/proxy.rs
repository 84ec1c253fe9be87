//! The proxy against a real nginx on loopback: managed start, switch, failed config
//! test, restore, drain with a request in flight, external mode with commands given as
//! argv, write failures and a missing nginx. Backends are the in-process HTTP servers
//! from `tests/health.rs`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cutover::Color;
use cutover::config::{Config, Upstreams};
use cutover::health::{self, UpstreamCheck, VerifySpec};
use cutover::plugin::types::ProxyFile;
use cutover::proxy::{Proxy, ProxyError, ReloadKind};
use cutover::state::SavedFile;

use crate::health::backend::Backend;
use crate::support::docker::free_port;
use crate::support::nginx::{
    ExternalNginx as External, Immutable, NginxGuard, alive, children, master_pid,
};

const SERVICE_URL: &str = "service-url.inc";

fn service_url(addr: SocketAddr) -> ProxyFile {
    ProxyFile {
        path: SERVICE_URL.to_owned(),
        contents: format!("# rendered by the test\nset $service_url http://{addr};\n"),
    }
}

fn managed_config(dir: &Path, listen: SocketAddr, nginx: &str) -> Config {
    let text = format!(
        "service = \"proxytest\"\nstate_dir = {:?}\n[image]\nref = \"x:1\"\n[container]\nport = 8080\n\
         [proxy]\nmode = \"managed\"\nlisten = \"{listen}\"\nnginx = {nginx:?}\ncommand_timeout = \"20s\"\n\
         [drain]\ntimeout = \"10s\"\n",
        dir.join("state")
    );
    Config::parse(&text, &dir.join("cutover.toml")).unwrap()
}

/// A managed proxy on a free loopback port, with a guard that stops its nginx.
struct Managed {
    // Fields drop in order: nginx must be stopped while its pid file still exists.
    _guard: NginxGuard,
    _dir: tempfile::TempDir,
    proxy: Proxy,
    listen: SocketAddr,
}

impl Managed {
    fn new() -> Managed {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let proxy = Proxy::new(&managed_config(dir.path(), listen, "nginx"));
        let guard = NginxGuard {
            pid_file: proxy.pid_file().unwrap().to_owned(),
        };
        Managed {
            _dir: dir,
            proxy,
            listen,
            _guard: guard,
        }
    }

    fn spec(&self, target: &Backend, color: Color) -> VerifySpec {
        VerifySpec {
            url: format!("http://{}/", self.listen),
            host: None,
            ca_file: None,
            expect_header: None,
            expect_body: None,
            color,
            expect_upstream: UpstreamCheck::Required(Upstreams::One(target.addr)),
        }
    }

    fn master(&self) -> i32 {
        master_pid(self.proxy.pid_file().unwrap()).expect("managed nginx runs")
    }

    /// Renders, writes, tests and switches to `target`; returns what was there before.
    async fn switch_to(&self, target: &Backend) -> (Vec<SavedFile>, cutover::proxy::Reload) {
        let previous = self.proxy.snapshot(&[SERVICE_URL.to_owned()]).unwrap();
        self.proxy
            .write_and_test(&[service_url(target.addr)], &previous)
            .await
            .unwrap();
        (previous, self.proxy.switch().await.unwrap())
    }
}

async fn get(url: &str) -> (u16, String, String) {
    // reqwest is built without a default TLS provider; run alone, this test may be
    // the first in the process to build a client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let upstream = response
        .headers()
        .get("x-cutover-upstream")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, upstream, response.text().await.unwrap())
}

fn read_dir_sorted(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = if e.path().is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn managed_nginx_starts_switches_and_stops() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let m = Managed::new();
    assert!(!m.proxy.is_running());

    let (before, reload) = m.switch_to(&a).await;
    assert_eq!(
        before,
        [SavedFile {
            path: SERVICE_URL.to_owned(),
            contents: None,
            front: None,
        }]
    );
    assert_eq!(reload.kind, ReloadKind::Started);
    assert!(m.proxy.is_running());
    health::verify_through_proxy(&m.spec(&a, Color::Blue), Duration::from_secs(5))
        .await
        .unwrap();
    let (status, upstream, body) = get(&format!("http://{}/hello", m.listen)).await;
    assert_eq!(
        (status, upstream.as_str(), body.as_str()),
        (200, &*a.addr.to_string(), "backend a")
    );
    // The seed's forwarding headers reach the backend.
    let conf = std::fs::read_to_string(m.proxy.managed_conf().unwrap()).unwrap();
    assert!(conf.contains("X-Forwarded-For"), "{conf}");

    let (before, reload) = m.switch_to(&b).await;
    assert_eq!(
        before[0].contents.as_deref(),
        Some(&*service_url(a.addr).contents)
    );
    assert_eq!(reload.kind, ReloadKind::Reloaded);
    assert!(reload.old_workers() >= 1);
    health::verify_through_proxy(&m.spec(&b, Color::Green), Duration::from_secs(5))
        .await
        .unwrap();
    let (_, upstream, body) = get(&format!("http://{}/", m.listen)).await;
    assert_eq!(
        (upstream.as_str(), body.as_str()),
        (&*b.addr.to_string(), "backend b")
    );
    let drain = m.proxy.drain(&reload, Duration::from_secs(10)).await;
    assert_eq!(drain.remaining, 0, "{drain}");
    assert!(drain.watched);

    let master = m.master();
    m.proxy.stop().await.unwrap();
    assert!(!m.proxy.is_running());
    assert!(!alive(master));
    // Stopping what is not running is fine.
    m.proxy.stop().await.unwrap();
}

/// The `Uid:` line of `/proc/<pid>/status`: real, effective, saved, filesystem.
fn uids(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn managed_workers_run_unprivileged_when_cutover_runs_as_root() {
    assert!(
        crate::support::nginx::is_root(),
        "this test checks what root's managed nginx runs its workers as; run it as root (CI does)"
    );
    let a = Backend::start("a").await;
    let m = Managed::new();
    m.switch_to(&a).await;
    let master = m.master();
    assert_eq!(uids(master)[1], 0, "the master binds and reads as root");
    // The new workers may take a moment to appear after the start.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut workers = children(master);
    while workers.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        workers = children(master);
    }
    assert!(!workers.is_empty(), "no workers of {master}");
    for worker in &workers {
        assert!(
            uids(*worker).iter().all(|&u| u != 0),
            "worker {worker} runs as {:?}",
            uids(*worker)
        );
    }
    // A request body too big for memory goes through the workers' temp files.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client
        .post(format!("http://{}/upload", m.listen))
        .body(vec![b'x'; 512 * 1024])
        .send()
        .await
        .unwrap();
    assert!(
        response.headers().contains_key("x-cutover-upstream"),
        "nginx passed the body on: {}",
        response.status()
    );
    let conf = std::fs::read_to_string(m.proxy.managed_conf().unwrap()).unwrap();
    let temp = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("client_body_temp_path \""))
        .and_then(|rest| rest.strip_suffix("/client_body\";"))
        .unwrap_or_else(|| panic!("{conf}"))
        .to_owned();
    assert!(temp.starts_with("/run/cutover-nginx/"), "{temp}");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&temp).unwrap();
    assert_eq!(
        meta.uid(),
        uids(workers[0])[1],
        "the workers own their temp directory"
    );
    assert_eq!(meta.mode() & 0o777, 0o700);

    m.proxy.stop().await.unwrap();
    assert!(!Path::new(&temp).exists(), "stop removes {temp}");
}

#[tokio::test]
async fn failed_config_test_restores_files_and_never_reloads() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let m = Managed::new();
    m.switch_to(&a).await;
    let conf_d = m.proxy.config_dir().to_owned();
    let files_before = read_dir_sorted(&conf_d);
    let master = m.master();
    let workers_before = children(master);

    let paths = vec![SERVICE_URL.to_owned(), "broken.conf".to_owned()];
    let previous = m.proxy.snapshot(&paths).unwrap();
    let bad = [
        service_url(b.addr),
        ProxyFile {
            path: "broken.conf".to_owned(),
            contents: "this_is_not_a_directive on;\n".to_owned(),
        },
    ];
    let err = m.proxy.write_and_test(&bad, &previous).await.unwrap_err();
    let ProxyError::ConfigTest { output, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        output.contains("unknown directive \"this_is_not_a_directive\""),
        "{output}"
    );
    assert!(err.to_string().contains("not reloaded"), "{err}");
    assert!(!err.is_environment());
    assert_eq!(
        read_dir_sorted(&conf_d),
        files_before,
        "files are byte-identical"
    );
    assert_eq!(m.proxy.snapshot(&paths).unwrap(), previous);

    // A syntax error in the file the default template writes is caught the same way.
    let broken_inc = ProxyFile {
        path: SERVICE_URL.to_owned(),
        contents: format!("set $service_url http://{}\n", b.addr),
    };
    let err = m
        .proxy
        .write_and_test(&[broken_inc], &previous[..1])
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::ConfigTest { .. }), "{err:?}");
    assert_eq!(read_dir_sorted(&conf_d), files_before);

    // Never reloaded: same master, same workers, still serving A.
    assert_eq!(m.master(), master);
    // A reload would have retired every worker; the master may still have been
    // forking its last one when they were first counted.
    let workers_after = children(master);
    assert!(
        workers_before.iter().all(|w| workers_after.contains(w)),
        "{workers_before:?} then {workers_after:?}"
    );
    let (_, upstream, body) = get(&format!("http://{}/", m.listen)).await;
    assert_eq!(
        (upstream.as_str(), body.as_str()),
        (&*a.addr.to_string(), "backend a")
    );
}

#[tokio::test]
async fn restore_returns_traffic_and_files_to_the_previous_target() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let m = Managed::new();
    m.switch_to(&a).await;
    let (previous, _) = m.switch_to(&b).await;
    health::verify_through_proxy(&m.spec(&b, Color::Green), Duration::from_secs(5))
        .await
        .unwrap();

    m.proxy.restore(&previous).await.unwrap();
    assert_eq!(
        m.proxy.snapshot(&[SERVICE_URL.to_owned()]).unwrap(),
        previous
    );
    health::verify_through_proxy(&m.spec(&a, Color::Blue), Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn restore_after_a_first_deploy_removes_the_files_and_stops_nginx() {
    let a = Backend::start("a").await;
    let m = Managed::new();
    let (previous, _) = m.switch_to(&a).await;
    assert!(m.proxy.is_running());
    m.proxy.restore(&previous).await.unwrap();
    assert!(!m.proxy.is_running());
    assert!(!m.proxy.config_dir().join(SERVICE_URL).exists());
}

#[tokio::test]
async fn drain_waits_for_a_request_in_flight_and_no_longer() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.slow_ms(1500);
    let m = Managed::new();
    m.switch_to(&a).await;

    // Idle old workers: the drain ends almost at once.
    let (_, reload) = m.switch_to(&b).await;
    let idle = m.proxy.drain(&reload, Duration::from_secs(10)).await;
    assert_eq!(idle.remaining, 0, "{idle}");
    eprintln!("drain with no request in flight: {idle}");
    assert!(idle.waited < Duration::from_secs(1), "{idle}");
    let (_, reload) = m.switch_to(&a).await;
    m.proxy.drain(&reload, Duration::from_secs(10)).await;

    // A slow request on A is in flight when traffic moves to B.
    let started = a.slow_started();
    let url = format!("http://{}/slow", m.listen);
    let slow = tokio::spawn(async move {
        let response = get(&url).await;
        (response, Instant::now())
    });
    tokio::time::timeout(Duration::from_secs(5), started)
        .await
        .expect("the slow request reached backend A");
    let sent = Instant::now();
    let (_, reload) = m.switch_to(&b).await;
    health::verify_through_proxy(&m.spec(&b, Color::Green), Duration::from_secs(5))
        .await
        .unwrap();
    let drain = m.proxy.drain(&reload, Duration::from_secs(10)).await;
    let drained = Instant::now();
    let ((status, upstream, body), answered) = slow.await.unwrap();

    assert_eq!(
        (status, body.as_str()),
        (200, "slow a"),
        "the in-flight request completed"
    );
    assert_eq!(upstream, a.addr.to_string());
    assert_eq!(drain.remaining, 0, "{drain}");
    assert!(drain.watched);
    // It waited for the request, and the request was done when the drain ended.
    assert!(drained + Duration::from_millis(50) >= answered, "{drain}");
    assert!(
        drained.duration_since(sent) >= Duration::from_millis(1300),
        "{drain}"
    );
    assert!(
        drain.waited < Duration::from_secs(5),
        "not the full max: {drain}"
    );
    eprintln!(
        "drain with a 1.5 s request in flight: {drain}; request answered {} ms after the switch began",
        answered.duration_since(sent).as_millis()
    );
}

#[tokio::test]
async fn switch_to_verified_latency_over_20_switches() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let m = Managed::new();
    m.switch_to(&a).await;
    // Per switch: write_and_test, switch(), verify, and the sum ("target healthy" to
    // "proxy proven to serve the target").
    let mut phases: [Vec<f64>; 4] = Default::default();
    for i in 0..20 {
        let (target, color) = if i % 2 == 0 {
            (&b, Color::Green)
        } else {
            (&a, Color::Blue)
        };
        let previous = m.proxy.snapshot(&[SERVICE_URL.to_owned()]).unwrap();
        let t0 = Instant::now();
        m.proxy
            .write_and_test(&[service_url(target.addr)], &previous)
            .await
            .unwrap();
        let t1 = Instant::now();
        let reload = m.proxy.switch().await.unwrap();
        let t2 = Instant::now();
        health::verify_through_proxy(&m.spec(target, color), Duration::from_secs(5))
            .await
            .unwrap();
        let t3 = Instant::now();
        for (phase, (from, to)) in phases
            .iter_mut()
            .zip([(t0, t1), (t1, t2), (t2, t3), (t0, t3)])
        {
            phase.push(to.duration_since(from).as_secs_f64() * 1000.0);
        }
        let drain = m.proxy.drain(&reload, Duration::from_secs(10)).await;
        assert_eq!(drain.remaining, 0, "{drain}");
    }
    let mut report = Vec::new();
    let mut medians = Vec::new();
    for (name, v) in ["write_and_test", "switch", "verify", "total"]
        .iter()
        .zip(&mut phases)
    {
        v.sort_by(f64::total_cmp);
        let (median, worst) = (v[v.len() / 2], v[v.len() - 1]);
        report.push(format!("{name} median {median:.1} ms worst {worst:.1} ms"));
        medians.push((median, worst));
    }
    eprintln!("20 switches: {}", report.join("; "));
    // The product goal: "target healthy" to "proxy serving target" under 200 ms.
    assert!(medians[3].0 < 200.0, "{}", report.join("; "));
    assert!(medians[2].1 < 1000.0, "{}", report.join("; "));
}

#[tokio::test]
async fn missing_nginx_is_an_environment_problem() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::new(&managed_config(
        dir.path(),
        listen,
        "/nonexistent/sbin/nginx",
    ));
    let a = Backend::start("a").await;
    let err = proxy
        .write_and_test(&[service_url(a.addr)], &[])
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::NginxMissing { .. }), "{err:?}");
    assert!(err.is_environment());
    assert!(err.to_string().contains("/nonexistent/sbin/nginx"), "{err}");
    // The file written before the test was taken away again.
    assert!(!proxy.config_dir().join(SERVICE_URL).exists());
    let err = proxy.switch().await.unwrap_err();
    assert!(err.is_environment(), "{err:?}");
}

#[tokio::test]
async fn listen_address_in_use_fails_to_start() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::new(&managed_config(
        dir.path(),
        busy.local_addr().unwrap(),
        "nginx",
    ));
    let _guard = NginxGuard {
        pid_file: proxy.pid_file().unwrap().to_owned(),
    };
    let a = Backend::start("a").await;
    proxy
        .write_and_test(&[service_url(a.addr)], &[])
        .await
        .unwrap();
    let err = proxy.switch().await.unwrap_err();
    assert!(matches!(err, ProxyError::Start { .. }), "{err:?}");
    assert!(err.is_environment());
    assert!(err.to_string().contains("Address already in use"), "{err}");
}

/// How the proxy tests drive the external nginx.
impl External {
    fn config(&self, reload: Option<Vec<String>>) -> Config {
        let argv = |extra: &[&str]| self.argv(extra);
        let reload = reload.unwrap_or_else(|| argv(&["-s", "reload"]));
        let text = format!(
            "service = \"proxytest\"\n[image]\nref = \"x:1\"\n[container]\nport = 8080\n\
             [proxy]\nmode = \"external\"\nconfig_dir = {:?}\npid_file = {:?}\n\
             test_command = {:?}\nreload_command = {:?}\n[verify]\nurl = \"http://{}/\"\n",
            self.conf_d,
            self.dir.path().join("nginx.pid"),
            argv(&["-t", "-q"]),
            reload,
            self.listen
        );
        Config::parse(&text, &self.dir.path().join("cutover.toml")).unwrap()
    }

    fn spec(&self, target: &Backend, color: Color) -> VerifySpec {
        VerifySpec {
            url: format!("http://{}/", self.listen),
            host: None,
            ca_file: None,
            expect_header: None,
            expect_body: Some("backend {color}".to_owned()),
            color,
            expect_upstream: UpstreamCheck::Required(Upstreams::One(target.addr)),
        }
    }
}

#[tokio::test]
async fn external_nginx_switches_with_argv_commands_and_drains_by_pid_file() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let nginx = External::start(blue.addr);
    let proxy = Proxy::new(&nginx.config(None));
    assert!(proxy.is_running());
    health::verify_through_proxy(&nginx.spec(&blue, Color::Blue), Duration::from_secs(5))
        .await
        .unwrap();

    let previous = proxy.snapshot(&[SERVICE_URL.to_owned()]).unwrap();
    proxy
        .write_and_test(&[service_url(green.addr)], &previous)
        .await
        .unwrap();
    let reload = proxy.switch().await.unwrap();
    assert_eq!(reload.kind, ReloadKind::Command);
    assert!(reload.old_workers() >= 1);
    let verified =
        health::verify_through_proxy(&nginx.spec(&green, Color::Green), Duration::from_secs(5))
            .await
            .unwrap();
    let drain = proxy.drain(&reload, Duration::from_secs(10)).await;
    assert!(drain.watched && drain.remaining == 0, "{drain}");
    assert!(drain.waited < Duration::from_secs(5), "{drain}");
    eprintln!(
        "external: verified in {:?}; drain: {drain}",
        verified.elapsed
    );
    // cutover never stops an nginx it does not own.
    proxy.stop().await.unwrap();
    assert!(proxy.is_running());
}

/// The verify spec a deploy would use against `nginx`, with `blue` and `green` as the
/// colours' upstreams and no `{color}` in `verify.expect_*`.
fn deploy_spec(nginx: &External, blue: &Backend, green: &Backend, color: Color) -> VerifySpec {
    let text = format!(
        "service = \"proxytest\"\n[image]\nref = \"x:1\"\n[container]\nport = 8080\n\
         [blue]\nupstream = \"{}\"\n[green]\nupstream = \"{}\"\n\
         [proxy]\nmode = \"external\"\nconfig_dir = {:?}\n[verify]\nurl = \"http://{}/\"\n",
        blue.addr, green.addr, nginx.conf_d, nginx.listen
    );
    let config = Config::parse(&text, &nginx.dir.path().join("cutover.toml")).unwrap();
    VerifySpec::from_config(&config, color)
}

#[tokio::test]
async fn external_verify_without_upstream_header_does_not_claim_the_color() {
    // Both colours answer alike, and this nginx (like the original write-up's) does
    // not name the upstream: a verify "for green" passes while blue still serves.
    let blue = Backend::start("app").await;
    let green = Backend::start("app").await;
    let nginx = External::start_without_upstream_header(blue.addr);
    let spec = deploy_spec(&nginx, &blue, &green, Color::Green);
    assert_eq!(health::color_hint(&spec).await, Some(health::UPSTREAM_HINT));
    let report = health::verify_through_proxy(&spec, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(report.proof, health::VerifyProof::Unproven);
    let line = report.to_string();
    assert!(!line.contains("serves"), "{line}");
    assert!(line.contains("cannot tell blue from green"), "{line}");
    assert!(
        line.contains("add_header X-Cutover-Upstream $upstream_addr always;"),
        "{line}"
    );
}

#[tokio::test]
async fn external_verify_uses_the_upstream_header_when_nginx_sends_it() {
    let blue = Backend::start("app").await;
    let green = Backend::start("app").await;
    let nginx = External::start(blue.addr);
    // nginx still serves blue: verifying green must not pass.
    let spec = deploy_spec(&nginx, &blue, &green, Color::Green);
    assert_eq!(health::color_hint(&spec).await, None);
    let err = health::verify_through_proxy(&spec, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("x-cutover-upstream: {}", blue.addr)),
        "{err}"
    );
    let spec = deploy_spec(&nginx, &blue, &green, Color::Blue);
    let report = health::verify_through_proxy(&spec, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(report.proof, health::VerifyProof::Upstream);
    assert!(
        report.to_string().starts_with("proxy serves blue"),
        "{report}"
    );
}

#[tokio::test]
async fn external_reload_failure_is_reported_and_restore_recovers() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let nginx = External::start(blue.addr);
    let failing = Proxy::new(&nginx.config(Some(vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo reload refused by the test >&2; exit 3".into(),
    ])));
    let previous = failing.snapshot(&[SERVICE_URL.to_owned()]).unwrap();
    failing
        .write_and_test(&[service_url(green.addr)], &previous)
        .await
        .unwrap();
    let err = failing.switch().await.unwrap_err();
    let ProxyError::Reload { output, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(output, "reload refused by the test");
    // nginx was never told: still blue.
    health::verify_through_proxy(&nginx.spec(&blue, Color::Blue), Duration::from_secs(2))
        .await
        .unwrap();

    let proxy = Proxy::new(&nginx.config(None));
    proxy.restore(&previous).await.unwrap();
    assert_eq!(proxy.snapshot(&[SERVICE_URL.to_owned()]).unwrap(), previous);
    health::verify_through_proxy(&nginx.spec(&blue, Color::Blue), Duration::from_secs(2))
        .await
        .unwrap();
}

#[tokio::test]
async fn external_config_test_failure_keeps_files() {
    let blue = Backend::start("blue").await;
    let nginx = External::start(blue.addr);
    let proxy = Proxy::new(&nginx.config(None));
    let before = read_dir_sorted(&nginx.conf_d);
    let previous = proxy.snapshot(&[SERVICE_URL.to_owned()]).unwrap();
    let bad = ProxyFile {
        path: SERVICE_URL.to_owned(),
        contents: "set $service_url;\n".to_owned(),
    };
    let err = proxy.write_and_test(&[bad], &previous).await.unwrap_err();
    assert!(matches!(err, ProxyError::ConfigTest { .. }), "{err:?}");
    assert!(
        err.to_string().contains("invalid number of arguments"),
        "{err}"
    );
    assert_eq!(read_dir_sorted(&nginx.conf_d), before);
}

fn external_without_nginx(dir: &Path) -> Proxy {
    let conf_d = dir.join("conf.d");
    std::fs::create_dir_all(&conf_d).unwrap();
    let text = format!(
        "service = \"proxytest\"\n[image]\nref = \"x:1\"\n[container]\nport = 8080\n\
         [proxy]\nmode = \"external\"\nconfig_dir = {conf_d:?}\ntest_command = [\"true\"]\n\
         [verify]\nurl = \"http://127.0.0.1:1/\"\n"
    );
    Proxy::new(&Config::parse(&text, &dir.join("cutover.toml")).unwrap())
}

#[tokio::test]
async fn write_failure_in_a_read_only_directory_leaves_the_previous_file() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = external_without_nginx(dir.path());
    let old = service_url("127.0.0.1:1111".parse().unwrap());
    std::fs::write(proxy.config_dir().join(SERVICE_URL), &old.contents).unwrap();
    let before = read_dir_sorted(proxy.config_dir());
    let previous = proxy.snapshot(&[SERVICE_URL.to_owned()]).unwrap();
    let err = {
        let _locked = Immutable::set(proxy.config_dir());
        proxy
            .write_and_test(&[service_url("127.0.0.1:2222".parse().unwrap())], &previous)
            .await
            .unwrap_err()
    };
    assert!(matches!(err, ProxyError::Write(_)), "{err:?}");
    assert!(
        err.to_string().contains("previous contents are unchanged"),
        "{err}"
    );
    assert_eq!(
        read_dir_sorted(proxy.config_dir()),
        before,
        "no temporary file left"
    );
}

#[tokio::test]
async fn write_failure_mid_batch_puts_back_the_files_already_written() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = external_without_nginx(dir.path());
    let old = service_url("127.0.0.1:1111".parse().unwrap());
    std::fs::write(proxy.config_dir().join(SERVICE_URL), &old.contents).unwrap();
    // `blocked` is a regular file, so nothing can be created under it, even by root.
    std::fs::write(proxy.config_dir().join("blocked"), "not a directory").unwrap();
    let before = read_dir_sorted(proxy.config_dir());
    let files = [
        service_url("127.0.0.1:2222".parse().unwrap()),
        ProxyFile {
            path: "blocked/extra.conf".to_owned(),
            contents: "# never written\n".to_owned(),
        },
    ];
    let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    let previous = proxy.snapshot(&paths[..1]).unwrap();
    let err = proxy.write_and_test(&files, &previous).await.unwrap_err();
    assert!(matches!(err, ProxyError::Write(_)), "{err:?}");
    assert!(err.to_string().contains("blocked/extra.conf"), "{err}");
    assert_eq!(read_dir_sorted(proxy.config_dir()), before);
}

#[tokio::test]
async fn files_that_escape_the_config_dir_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = external_without_nginx(dir.path());
    for path in ["../escape.inc", "/etc/escape.inc", "a\0b"] {
        let file = ProxyFile {
            path: path.to_owned(),
            contents: String::new(),
        };
        let err = proxy.write_and_test(&[file], &[]).await.unwrap_err();
        assert!(
            matches!(err, ProxyError::InvalidFile { .. }),
            "{path}: {err:?}"
        );
    }
    assert!(!dir.path().join("escape.inc").exists());
    assert_eq!(read_dir_sorted(proxy.config_dir()), []);
}

#[tokio::test]
async fn diff_shows_the_switch_for_plan() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = external_without_nginx(dir.path());
    let old = service_url("127.0.0.1:1111".parse().unwrap());
    std::fs::write(proxy.config_dir().join(SERVICE_URL), &old.contents).unwrap();
    let current = proxy.snapshot(&[SERVICE_URL.to_owned()]).unwrap();
    let diff = proxy.diff(&current, &[service_url("127.0.0.1:2222".parse().unwrap())]);
    assert_eq!(
        diff,
        "--- a/service-url.inc\n+++ b/service-url.inc\n@@ -1,2 +1,2 @@\n # rendered by the test\n\
         -set $service_url http://127.0.0.1:1111;\n+set $service_url http://127.0.0.1:2222;\n"
    );
}

#[tokio::test]
async fn external_without_pid_file_drains_for_the_full_time() {
    let dir = tempfile::tempdir().unwrap();
    let conf_d = dir.path().join("conf.d");
    std::fs::create_dir_all(&conf_d).unwrap();
    let text = format!(
        "service = \"proxytest\"\n[image]\nref = \"x:1\"\n[container]\nport = 8080\n\
         [proxy]\nmode = \"external\"\nconfig_dir = {conf_d:?}\ntest_command = [\"true\"]\n\
         reload_command = [\"true\"]\n[verify]\nurl = \"http://127.0.0.1:1/\"\n"
    );
    let proxy = Proxy::new(&Config::parse(&text, &dir.path().join("cutover.toml")).unwrap());
    assert!(
        proxy.is_running(),
        "without a pid file cutover cannot tell, and assumes so"
    );
    let reload = proxy.switch().await.unwrap();
    assert_eq!(reload.kind, ReloadKind::Command);
    let drain = proxy.drain(&reload, Duration::from_millis(200)).await;
    assert!(!drain.watched);
    assert!(drain.waited >= Duration::from_millis(200), "{drain}");
    assert!(drain.waited < Duration::from_secs(2), "{drain}");
    assert!(drain.to_string().contains("proxy.pid_file"), "{drain}");
}

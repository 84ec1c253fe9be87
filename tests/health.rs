//! Health probes and the through-the-proxy check against real HTTP servers on
//! loopback. Also home of the small test backend the proxy tests share.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cutover::Color;
use cutover::config::{Config, HealthConfig, Upstreams};
use cutover::events::Recorder;
use cutover::health::{self, HealthError, Prober, UpstreamCheck, VerifyError, VerifySpec};
use cutover::plugin::PluginError;
use cutover::plugin::types::{HealthInput, HealthVerdict, Instance};

use self::backend::Backend;

/// A tiny HTTP/1.1 server on 127.0.0.1 that says who it is.
pub(crate) mod backend {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Notify;

    #[derive(Default)]
    struct Shared {
        name: Mutex<String>,
        /// Health answers 503 this many more times.
        failing_health: AtomicU32,
        /// When non-zero, health always answers this status.
        health_status: AtomicU16,
        slow_ms: AtomicU32,
        slow_started: Notify,
        health_requests: AtomicU32,
    }

    /// Routes: `/health` (200 `ok <name>`, or 503 while failing), `/slow` (answers
    /// after `slow_ms`), `/big` (10 KiB), anything else `backend <name>`. Every
    /// response carries `X-Backend: <name>` and `X-Host: <Host header>`.
    pub(crate) struct Backend {
        pub(crate) addr: SocketAddr,
        shared: Arc<Shared>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Backend {
        pub(crate) async fn start(name: &str) -> Backend {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let shared = Arc::new(Shared::default());
            *shared.name.lock().unwrap() = name.to_owned();
            let state = shared.clone();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    tokio::spawn(serve(stream, state.clone()));
                }
            });
            Backend { addr, shared, task }
        }

        pub(crate) fn set_name(&self, name: &str) {
            *self.shared.name.lock().unwrap() = name.to_owned();
        }

        pub(crate) fn fail_health_times(&self, n: u32) {
            self.shared.failing_health.store(n, Ordering::SeqCst);
        }

        pub(crate) fn health_status(&self, status: u16) {
            self.shared.health_status.store(status, Ordering::SeqCst);
        }

        pub(crate) fn health_requests(&self) -> u32 {
            self.shared.health_requests.load(Ordering::SeqCst)
        }

        pub(crate) fn slow_ms(&self, ms: u32) {
            self.shared.slow_ms.store(ms, Ordering::SeqCst);
        }

        /// Resolves once a `/slow` request has arrived (registered before the request
        /// is sent, so the notification cannot be missed).
        pub(crate) fn slow_started(&self) -> impl std::future::Future<Output = ()> + '_ {
            self.shared.slow_started.notified()
        }
    }

    impl Drop for Backend {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
        let mut head = Vec::new();
        let mut buf = [0u8; 2048];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let host = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("host").then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        let name = shared.name.lock().unwrap().clone();
        let (status, body) = match path.as_str() {
            "/health" => {
                shared.health_requests.fetch_add(1, Ordering::SeqCst);
                let fixed = shared.health_status.load(Ordering::SeqCst);
                let failing = shared
                    .failing_health
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if fixed != 0 {
                    (fixed, format!("status {fixed} {name}"))
                } else if failing {
                    (503, format!("starting {name}"))
                } else {
                    (200, format!("ok {name}"))
                }
            }
            "/slow" => {
                shared.slow_started.notify_waiters();
                let ms = shared.slow_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms.into())).await;
                (200, format!("slow {name}"))
            }
            "/big" => (200, "x".repeat(10 * 1024)),
            _ => (200, format!("backend {name}")),
        };
        let reason = if status < 400 { "OK" } else { "Error" };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nX-Backend: {name}\r\n\
             X-Host: {host}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

pub(crate) fn health_config(extra: &str) -> HealthConfig {
    let text = format!(
        "service = \"probe\"\n[image]\nref = \"probe:1\"\n[container]\nport = 8080\n\
         [proxy]\nmode = \"managed\"\nlisten = \"127.0.0.1:1\"\n[health]\n{extra}\n"
    );
    Config::parse(&text, std::path::Path::new("/nonexistent/cutover.toml"))
        .unwrap()
        .health
}

type Running = health::StillRunningFuture<'static>;

/// The probed backend as the health policy sees it.
fn instance(color: Color) -> Instance {
    Instance {
        id: format!("probe-{color}"),
        node: None,
        address: "127.0.0.1".to_owned(),
        port: 0,
    }
}

fn always_running() -> impl FnMut() -> Running + Send {
    || Box::pin(async { Ok(true) })
}

/// The default policy's rule: healthy on a 2xx.
fn two_xx(input: &HealthInput) -> Result<HealthVerdict, PluginError> {
    Ok(match input.probe.status {
        Some(s) if (200..300).contains(&s) => HealthVerdict::Healthy,
        Some(s) => HealthVerdict::NotYet(format!("status {s}")),
        None => HealthVerdict::NotYet("no response".to_owned()),
    })
}

#[tokio::test]
async fn healthy_after_the_app_stops_answering_503() {
    let app = Backend::start("blue").await;
    app.fail_health_times(3);
    let health = health_config("interval = \"20ms\"\nfirst_delay = \"5ms\"\ndeadline = \"5s\"");
    let prober = Prober::new(app.addr, &health);
    let histories = AtomicU32::new(0);
    let judge = |input: &HealthInput| {
        assert_eq!(input.history.len(), input.attempt as usize - 1);
        histories.fetch_add(1, Ordering::SeqCst);
        two_xx(input)
    };
    let recorder = Recorder::default();
    let start = Instant::now();
    let report = health::wait_healthy(
        &prober,
        &health,
        "probe",
        Color::Blue,
        &instance(Color::Blue),
        &judge,
        &mut always_running(),
        &recorder,
    )
    .await
    .unwrap();
    assert_eq!(report.attempts, 4);
    assert_eq!(report.last.status, Some(200));
    assert_eq!(report.last.body_prefix, "ok blue");
    assert_eq!(histories.load(Ordering::SeqCst), 4);
    // Three 20 ms intervals, not three 10 s ones.
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(
        report.elapsed >= Duration::from_millis(60),
        "{:?}",
        report.elapsed
    );
    assert_eq!(recorder.events().len(), 3, "one debug line per not-yet");
}

#[tokio::test]
async fn deadline_names_the_last_probe_and_the_knob() {
    let app = Backend::start("blue").await;
    app.health_status(503);
    let health = health_config("interval = \"20ms\"\ntimeout = \"100ms\"\ndeadline = \"300ms\"");
    let prober = Prober::new(app.addr, &health);
    let start = Instant::now();
    let err = health::wait_healthy(
        &prober,
        &health,
        "probe",
        Color::Green,
        &instance(Color::Green),
        &two_xx,
        &mut always_running(),
        &cutover::events::Silent,
    )
    .await
    .unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(err, HealthError::Deadline { attempts, .. } if attempts >= 5),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("health.deadline"), "{msg}");
    assert!(msg.contains("HTTP 503"), "{msg}");
    assert!(msg.contains("probe (green)"), "{msg}");
    assert!(elapsed >= Duration::from_millis(280), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn deadline_while_nothing_listens_reports_the_refusal() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let health = health_config("interval = \"20ms\"\ntimeout = \"100ms\"\ndeadline = \"200ms\"");
    let prober = Prober::new(port, &health);
    let err = health::wait_healthy(
        &prober,
        &health,
        "probe",
        Color::Blue,
        &instance(Color::Blue),
        &two_xx,
        &mut always_running(),
        &cutover::events::Silent,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
}

#[tokio::test]
async fn failed_verdict_stops_at_once() {
    let app = Backend::start("blue").await;
    app.health_status(500);
    let health = health_config("interval = \"20ms\"\ndeadline = \"10s\"");
    let prober = Prober::new(app.addr, &health);
    let judge = |input: &HealthInput| {
        Ok(match input.probe.status {
            Some(500) => HealthVerdict::Failed("the app reports an internal error".to_owned()),
            _ => HealthVerdict::NotYet("waiting".to_owned()),
        })
    };
    let start = Instant::now();
    let err = health::wait_healthy(
        &prober,
        &health,
        "probe",
        Color::Blue,
        &instance(Color::Blue),
        &judge,
        &mut always_running(),
        &cutover::events::Silent,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, HealthError::Failed { attempts: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("internal error"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(app.health_requests(), 1);
}

#[tokio::test]
async fn a_container_that_stops_ends_the_wait() {
    let app = Backend::start("blue").await;
    app.health_status(503);
    let health = health_config("interval = \"10ms\"\ndeadline = \"10s\"");
    let prober = Prober::new(app.addr, &health);
    let checks = std::sync::Arc::new(AtomicU32::new(0));
    let counter = checks.clone();
    let mut running = move || -> Running {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(n < 2) })
    };
    let err = health::wait_healthy(
        &prober,
        &health,
        "probe",
        Color::Green,
        &instance(Color::Green),
        &two_xx,
        &mut running,
        &cutover::events::Silent,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, HealthError::Exited { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("docker logs"), "{err}");
    assert_eq!(checks.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_judge_error_is_not_a_health_verdict() {
    let app = Backend::start("blue").await;
    let health = health_config("interval = \"10ms\"");
    let prober = Prober::new(app.addr, &health);
    let judge = |_: &HealthInput| {
        Err(PluginError::Refused {
            plugin: "builtin:http-status".to_owned(),
            kind: cutover::plugin::PluginKind::HealthPolicy,
            reason: "refused on purpose".to_owned(),
        })
    };
    let err = health::wait_healthy(
        &prober,
        &health,
        "probe",
        Color::Blue,
        &instance(Color::Blue),
        &judge,
        &mut always_running(),
        &cutover::events::Silent,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, HealthError::Judge(_)), "{err:?}");
}

#[tokio::test]
async fn probe_sends_host_and_captures_headers_and_a_capped_body() {
    let app = Backend::start("blue").await;
    let health = health_config(
        "path = \"/big\"\nhost = \"app.example.test\"\nheaders = [\"X-Backend\", \"x-host\", \"x-absent\"]",
    );
    let probe = Prober::new(app.addr, &health).probe().await;
    assert_eq!(probe.status, Some(200));
    assert_eq!(probe.error, None);
    assert_eq!(probe.body_prefix.len(), health::BODY_PREFIX_BYTES);
    let headers: Vec<(String, String)> = probe
        .headers
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(
        headers,
        [
            ("x-backend".to_owned(), "blue".to_owned()),
            ("x-host".to_owned(), "app.example.test".to_owned()),
        ]
    );
    assert!(probe.latency_us > 0);
}

#[tokio::test]
async fn probe_timeout_is_reported_as_an_error() {
    // A listener that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let health = health_config("timeout = \"150ms\"");
    let start = Instant::now();
    let probe = Prober::new(addr, &health).probe().await;
    assert_eq!(probe.status, None);
    assert_eq!(probe.error.as_deref(), Some("timed out after 150 ms"));
    assert!(start.elapsed() < Duration::from_secs(1));
    drop(silent);
}

fn spec(addr: std::net::SocketAddr, color: Color) -> VerifySpec {
    VerifySpec {
        url: format!("http://{addr}/"),
        host: None,
        ca_file: None,
        expect_header: Some("X-Backend: {color}".to_owned()),
        expect_body: Some("backend {color}".to_owned()),
        color,
        expect_upstream: UpstreamCheck::Ignore,
    }
}

#[tokio::test]
async fn verify_passes_when_the_target_answers() {
    let app = Backend::start("green").await;
    let report =
        health::verify_through_proxy(&spec(app.addr, Color::Green), Duration::from_secs(2))
            .await
            .unwrap();
    assert_eq!(report.attempts, 1);
}

#[tokio::test]
async fn verify_times_out_saying_what_it_saw() {
    let app = Backend::start("blue").await;
    let start = Instant::now();
    let err =
        health::verify_through_proxy(&spec(app.addr, Color::Green), Duration::from_millis(300))
            .await
            .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    let VerifyError::Timeout { attempts, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(*attempts > 5, "polls every few ms: {attempts}");
    let msg = err.to_string();
    assert!(msg.contains("x-backend: blue"), "{msg}");
    assert!(msg.contains("body \"backend blue\""), "{msg}");
    assert!(msg.contains("header `x-backend: green`"), "{msg}");
}

#[tokio::test]
async fn verify_needs_the_upstream_header_when_asked() {
    // The backend does not add X-Cutover-Upstream: only the managed nginx does.
    let app = Backend::start("green").await;
    let spec = VerifySpec {
        expect_upstream: UpstreamCheck::Required(Upstreams::One(app.addr)),
        ..spec(app.addr, Color::Green)
    };
    let err = health::verify_through_proxy(&spec, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("x-cutover-upstream: (absent)"),
        "{err}"
    );
}

#[tokio::test]
async fn verify_waits_for_the_switch() {
    let app = Backend::start("blue").await;
    let spec = VerifySpec {
        url: format!("http://{}/health", app.addr),
        expect_body: Some("ok {color}".to_owned()),
        ..spec(app.addr, Color::Green)
    };
    let verify =
        tokio::spawn(
            async move { health::verify_through_proxy(&spec, Duration::from_secs(10)).await },
        );
    // Switch only once verify has seen blue answer twice (bounded wait).
    let asked = Instant::now();
    while app.health_requests() < 2 && asked.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(app.health_requests() >= 2, "verify kept asking");
    app.set_name("green");
    let report = verify.await.unwrap().unwrap();
    assert!(
        report.attempts > 2,
        "blue's answers were refused: {report:?}"
    );
}

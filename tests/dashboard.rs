//! `cutover dashboard` end to end over HTTP: the page, `/metrics` (parsed by a
//! Prometheus parser) and `/events` (server-sent events of a real deploy) from the
//! real binary; loopback only by default; with a bearer token, a missing or wrong
//! one is refused with 401 and the token is never printed.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::service::{Service, plugin_cache_dir};
use crate::support::{free_port, http_request};

/// A `cutover dashboard` running in the background; killed (by its own pid) on drop.
pub struct DashboardProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl DashboardProcess {
    /// Starts `cutover dashboard` for `svc` on `listen` with `args` and `env`, and
    /// waits until it accepts connections.
    pub fn start(svc: &Service, listen: SocketAddr, env: &[(&str, &str)], args: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .arg("--config")
            .arg(svc.config_path())
            .args(["dashboard", "--listen", &listen.to_string()])
            .args(args)
            .env("CUTOVER_CACHE_DIR", plugin_cache_dir())
            .env_remove("CUTOVER_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cutover dashboard");
        let addr: SocketAddr = ([127, 0, 0, 1], listen.port()).into();
        let process = DashboardProcess { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the dashboard did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        process
    }

    /// Stops it (SIGTERM: a graceful shutdown) and returns its stdout and stderr.
    pub fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap())
            .wait_with_output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for DashboardProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let r = http_request(addr, "GET", path, headers, b"", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (r.status, r.body)
}

/// An address of this host that is not loopback (the source address of its
/// default route), so a request from it is a remote client's. A UDP `connect` sends
/// nothing; it only picks the route.
pub fn non_loopback_address() -> IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("192.0.2.1:9")
        .expect("this test needs a non-loopback network interface with a default route");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

/// Reads server-sent events from `/events` until one holds `until`; returns the
/// `data:` lines seen. Bounded by `within`.
pub fn read_events(stream: TcpStream, until: &str, within: Duration) -> Vec<String> {
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut reader = BufReader::new(stream);
    let mut data = Vec::new();
    while Instant::now() < deadline {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {
                if let Some(json) = line.trim_end().strip_prefix("data: ") {
                    data.push(json.to_owned());
                    if json.contains(until) {
                        return data;
                    }
                }
            }
            Err(_) => continue,
        }
    }
    panic!("no event with {until} within {within:?}; saw {data:#?}");
}

#[test]
fn dashboard_serves_the_page_metrics_and_live_events_and_keeps_remote_clients_out() {
    let svc = Service::new("dash-http");
    svc.deploy("v1").success();
    let dash = DashboardProcess::start(&svc, ([0, 0, 0, 0], free_port()).into(), &[], &[]);

    let (status, page) = get(dash.addr, "/", &[]);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("data-live=\"blue\""), "{page}");
    assert!(page.contains("<div class=\"card deploy\""), "{page}");
    assert_eq!(page.matches("<rect class=\"step").count(), 13, "{page}");
    assert!(page.contains("<td class=\"health\">healthy</td>"), "{page}");
    let (status, metrics) = get(dash.addr, "/metrics", &[]);
    assert_eq!(status, 200);
    let scrape = crate::metrics::parse(&metrics);
    let succeeded = crate::metrics::sample(
        &scrape,
        "cutover_deploys_total",
        &[("service", &svc.name), ("outcome", "succeeded")],
    );
    assert_eq!(succeeded, 1.0, "{metrics}");

    // The same port from an address that is not loopback: refused.
    let remote: SocketAddr = (non_loopback_address(), dash.addr.port()).into();
    for path in ["/", "/events", "/metrics"] {
        assert_eq!(get(remote, path, &[]).0, 401, "{path} from {remote}");
    }

    // A deploy's events arrive over /events as it runs.
    let mut events = TcpStream::connect(dash.addr).unwrap();
    write!(
        events,
        "GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let deploy = svc.spawn_deploy("v2");
    let seen = read_events(events, "\"event\":\"finished\"", Duration::from_secs(120));
    deploy.wait().success();
    let started = seen
        .iter()
        .position(|e| e.contains("\"event\":\"started\""));
    let switched = seen
        .iter()
        .position(|e| e.contains("\"step-finished\"") && e.contains("\"switch\""));
    assert!(started.is_some() && started < switched, "{seen:#?}");
    assert!(seen.last().unwrap().contains("\"live\":\"green\""));
    dash.stop();
}

#[test]
fn dashboard_with_a_token_refuses_missing_or_wrong_ones_with_401_and_never_prints_it() {
    let svc = Service::new("dash-token");
    let token = "dash-t0ken-5b1d";
    let dash = DashboardProcess::start(
        &svc,
        ([127, 0, 0, 1], free_port()).into(),
        &[("DASH_TOKEN", token)],
        &["--token-env", "DASH_TOKEN"],
    );
    for path in ["/", "/events", "/metrics"] {
        assert_eq!(get(dash.addr, path, &[]).0, 401, "{path} without a token");
        let wrong = [("Authorization", "Bearer dash-t0ken-5b1e")];
        assert_eq!(
            get(dash.addr, path, &wrong).0,
            401,
            "{path} with a wrong token"
        );
    }
    let bearer = format!("Bearer {token}");
    let (status, page) = get(dash.addr, "/", &[("Authorization", &bearer)]);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("id=\"live\" class=\"badge\">nothing"),
        "{page}"
    );
    let (status, _) = get(dash.addr, "/metrics", &[("Authorization", &bearer)]);
    assert_eq!(status, 200);
    // A browser posts the token once to `login` and reads with the cookie it gets.
    let login = |token: &str| {
        http_request(
            dash.addr,
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            format!("token={token}&next=").as_bytes(),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let refused = login("dash-t0ken-5b1e");
    assert_eq!(refused.status, 401);
    assert!(refused.header("set-cookie").is_none());
    let r = login(token);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("./"));
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(!cookie.contains(token), "{cookie}");
    for path in ["/", "/metrics"] {
        assert_eq!(
            get(dash.addr, path, &[("Cookie", &cookie)]).0,
            200,
            "{path}"
        );
    }
    let (status, form) = get(dash.addr, "/", &[("Accept", "text/html")]);
    assert_eq!(status, 401);
    assert!(
        form.contains("<form") && form.contains("action=\"login\""),
        "{form}"
    );
    let output = dash.stop();
    assert!(output.contains("bearer token from $DASH_TOKEN"), "{output}");
    assert!(!output.contains(token), "{output}");

    // Naming a variable that is not set is a config error, before listening.
    let out = svc.cutover(&["dashboard", "--token-env", "CUTOVER_TEST_UNSET_TOKEN"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("CUTOVER_TEST_UNSET_TOKEN is not set"));
}

/// `chromedriver` on a free loopback port; killed (by its own pid) on drop.
struct ChromeDriver {
    child: Child,
    url: String,
    /// The browser it drives.
    chromium: std::path::PathBuf,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let program = crate::support::require_tool("chromedriver", "chromium-driver");
        let chromium = crate::support::require_tool("chromium", "chromium");
        let port = free_port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ChromeDriver {
            child,
            url: format!("http://{addr}"),
            chromium,
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 100 ms until it gives a value or `within` passes.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn dashboard_in_a_headless_browser_shows_the_live_color_the_deploy_rows_and_live_updates() {
    use fantoccini::{ClientBuilder, Locator};

    let svc = Service::new("dash-browser");
    svc.deploy("v1").success();
    let gate = crate::metrics::CICD_GATE;
    svc.append_config(gate);
    svc.deploy("v2").code(3);
    svc.edit_config(|text| text.replace(gate, ""));
    let dash = DashboardProcess::start(&svc, ([127, 0, 0, 1], free_port()).into(), &[], &[]);
    let driver = ChromeDriver::start();
    let page_url = format!("http://{}/", dash.addr);
    let shots = crate::support::workspace_root().join("target");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": driver.chromium,
                // Root in a container: chromium's sandbox needs user namespaces.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=900,1300"]
            }),
        );
        let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("a chromium session through chromedriver");
        browser.goto(&page_url).await.unwrap();
        let text = |css: &'static str| {
            let browser = &browser;
            async move {
                browser
                    .find(Locator::Css(css))
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()
            }
        };
        assert_eq!(text("#live").await.as_deref(), Some("blue"));
        let cards = browser
            .find_all(Locator::Css(".card.deploy"))
            .await
            .unwrap();
        assert_eq!(cards.len(), 2, "the deploy and the denial");

        // A deploy runs: its events arrive in the open page without a reload.
        let deploy = svc.spawn_deploy("v3");
        eventually(
            "a live event in the page",
            Duration::from_secs(60),
            || async {
                let items = browser
                    .find_all(Locator::Css("#events li.step-finished"))
                    .await
                    .ok()?;
                (!items.is_empty()).then_some(())
            },
        )
        .await;
        let live_shot = browser.screenshot().await.unwrap();
        std::fs::write(shots.join("dashboard-live.png"), live_shot).unwrap();
        deploy.wait().success();

        // The run finished: the page reloads with green live and the new row first.
        eventually(
            "green live after the reload",
            Duration::from_secs(30),
            || async { (text("#live").await.as_deref() == Some("green")).then_some(()) },
        )
        .await;
        let newest = browser.find(Locator::Css(".card.deploy")).await.unwrap();
        assert_eq!(
            newest.attr("data-outcome").await.unwrap().as_deref(),
            Some("succeeded")
        );
        let audit = std::fs::read_to_string(svc.state_dir().join("audit.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
        assert_eq!(
            newest.attr("data-deploy").await.unwrap().as_deref(),
            last["deploy_id"].as_str()
        );
        let bars = newest.find_all(Locator::Css("rect.step")).await.unwrap();
        assert_eq!(bars.len(), 13, "one bar per step");
        assert_eq!(
            bars[0].attr("data-step").await.unwrap().as_deref(),
            Some("gate")
        );
        let denial = browser
            .find(Locator::Css(".card.deploy[data-outcome=denied] .reason"))
            .await
            .unwrap();
        assert!(denial.text().await.unwrap().contains("cicd"));
        let health = browser
            .find(Locator::Css("#colors tr[data-color=green] .health"))
            .await
            .unwrap();
        assert_eq!(health.text().await.unwrap(), "healthy");
        let shot = browser.screenshot().await.unwrap();
        assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(shots.join("dashboard.png"), shot).unwrap();
        browser.close().await.unwrap();
    });
    dash.stop();
}

/// The status of `method path` sent with `Host: host` (and `headers`, `body`) over a
/// fresh connection, written by hand: the shared client always names the address.
pub fn status_as_host(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> u16 {
    use std::io::Read;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    // The head is enough; an event stream's body never ends.
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
}

/// Regression (DNS rebinding): with no token only the peer address was checked, so a
/// page of another site whose name was rebound to 127.0.0.1 could read the page, the
/// event stream and the metrics through a browser on the same machine.
#[test]
fn dashboard_without_a_token_refuses_a_rebound_host_name_with_421() {
    let svc = Service::new("dash-host");
    let dash = DashboardProcess::start(
        &svc,
        ([127, 0, 0, 1], free_port()).into(),
        &[],
        &["--allowed-host", "deploy.example"],
    );
    let port = dash.addr.port();
    for path in ["/", "/events", "/metrics"] {
        for host in ["evil.example", &format!("evil.example:{port}")] {
            assert_eq!(
                status_as_host(dash.addr, "GET", path, host, &[], b""),
                421,
                "{path} for {host}"
            );
        }
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "deploy.example".to_owned(),
    ] {
        assert_eq!(
            status_as_host(dash.addr, "GET", "/metrics", &host, &[], b""),
            200,
            "{host}"
        );
    }
    dash.stop();
    let out = svc.cutover(&["dashboard", "--allowed-host", "deploy.example:80"]);
    assert!(
        out.code(5)
            .stderr
            .contains("--allowed-host deploy.example:80")
    );
}

/// Regression: `cutover dashboard` ran on plain `axum::serve`, without serve's
/// protections: a half-sent request was held open forever, nothing capped the open
/// connections, and every open page held an event stream. It now runs on serve's
/// connection code: half-sent requests are closed after `--header-timeout`, a flood of
/// them does not keep a reader out, and at most a quarter of `--max-connections` are
/// event streams (503 beyond).
#[test]
fn dashboard_closes_half_sent_requests_caps_connections_and_event_streams() {
    use std::io::Read;
    let svc = Service::new("dash-conns");
    let dash = DashboardProcess::start(
        &svc,
        ([127, 0, 0, 1], free_port()).into(),
        &[],
        &["--header-timeout", "1s", "--max-connections", "8"],
    );
    let half_sent = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\n", dash.addr);

    let mut lone = TcpStream::connect(dash.addr).unwrap();
    lone.write_all(half_sent.as_bytes()).unwrap();
    lone.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let began = Instant::now();
    let closed = match lone.read(&mut [0u8; 256]) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    assert!(
        closed && began.elapsed() < Duration::from_secs(5),
        "a half-sent request was still open after {:?}",
        began.elapsed()
    );

    // Forty half-sent requests against a cap of eight: a whole request still gets in.
    let flood: Vec<TcpStream> = (0..40)
        .filter_map(|_| {
            let mut conn = TcpStream::connect(dash.addr).ok()?;
            conn.write_all(half_sent.as_bytes()).ok()?;
            Some(conn)
        })
        .collect();
    assert_eq!(flood.len(), 40);
    let began = Instant::now();
    let (status, _) = get(dash.addr, "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    drop(flood);

    // Two streams (a quarter of eight) are open; a third is refused.
    let open = |_| {
        let mut stream = TcpStream::connect(dash.addr).unwrap();
        write!(
            stream,
            "GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        (stream, String::from_utf8_lossy(&head).into_owned())
    };
    let streams: Vec<_> = (0..3).map(open).collect();
    let heads: Vec<&str> = streams.iter().map(|(_, h)| h.as_str()).collect();
    assert_eq!(heads, ["HTTP/1.1 200", "HTTP/1.1 200", "HTTP/1.1 503"]);
    dash.stop();
}

//! The managed nginx as a production front door, through the built binary on real
//! Docker and nginx: WebSockets and server-sent events across a switch, the
//! keep-alive pool to the backends, per-service include names, and pause/resume.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::support::free_port;
use crate::support::load::{Load, LoadConfig};
use crate::support::nginx::ExternalNginx;
use crate::support::service::Service;

/// What a WebSocket client saw: the greeting, every answer, and how it ended.
#[derive(Debug, Default)]
struct WsLog {
    greeting: String,
    answers: Vec<(Instant, String)>,
    close: Option<CloseCode>,
    ended: Option<Instant>,
    error: Option<String>,
}

/// Connects to `/ws` through `proxy` and sends a numbered message every 100 ms
/// until the connection ends or `limit` passes; returns what it saw.
fn websocket_client(proxy: SocketAddr, limit: Duration) -> thread::JoinHandle<WsLog> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut log = WsLog::default();
        let stream = TcpStream::connect(proxy).expect("connect to nginx");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://{proxy}/ws"), stream)
            .expect("WebSocket handshake through nginx");
        if let Ok(Message::Text(t)) = ws.read() {
            log.greeting = t.as_str().to_owned();
        }
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + limit;
        let mut n = 0;
        while Instant::now() < deadline {
            n += 1;
            if let Err(e) = ws.send(Message::text(format!("m{n}"))) {
                log.error = Some(format!("send: {e}"));
                break;
            }
            match ws.read() {
                Ok(Message::Text(t)) => log.answers.push((Instant::now(), t.as_str().to_owned())),
                Ok(Message::Close(frame)) => {
                    log.close = frame.map(|f| f.code);
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    log.error = Some(format!("read: {e}"));
                    break;
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        // After a close frame, tungstenite answers it on the next read.
        let _ = ws.read();
        log.ended = Some(Instant::now());
        log
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the WebSocket greeted");
    handle
}

/// What an event-stream client saw: each event's `data:` line and whether the
/// closing `bye` event came.
#[derive(Debug, Default)]
struct SseLog {
    data: Vec<(Instant, String)>,
    bye: bool,
    ended: Option<Instant>,
}

/// Reads `/events?ms=100` through `proxy` until the stream ends or `limit` passes.
fn event_client(proxy: SocketAddr, limit: Duration) -> thread::JoinHandle<SseLog> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut log = SseLog::default();
        let mut stream = TcpStream::connect(proxy).expect("connect to nginx");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /events?ms=100 HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let deadline = Instant::now() + limit;
        let mut ready = Some(ready_tx);
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        // The head, then the body as nginx passes it on: chunked, each chunk what
        // hello wrote at once (an event can still span chunks).
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            line.clear();
        }
        let mut body = String::new();
        while Instant::now() < deadline {
            line.clear();
            if reader.read_line(&mut line).is_err() {
                break;
            }
            let Ok(size) = usize::from_str_radix(line.trim(), 16) else {
                break;
            };
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            if std::io::Read::read_exact(&mut reader, &mut chunk).is_err() {
                break;
            }
            body.push_str(&String::from_utf8_lossy(&chunk[..size]));
            while let Some(end) = body.find('\n') {
                let text: String = body.drain(..=end).collect();
                let text = text.trim_end();
                if text == "event: bye" {
                    log.bye = true;
                } else if let Some(data) = text.strip_prefix("data: ").filter(|_| !log.bye) {
                    log.data.push((Instant::now(), data.to_owned()));
                    if let Some(tx) = ready.take() {
                        tx.send(()).unwrap();
                    }
                }
            }
        }
        log.ended = Some(Instant::now());
        log
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the event stream started");
    handle
}

#[test]
fn websockets_and_event_streams_stay_on_the_old_colour_then_close_cleanly() {
    let svc = Service::new("front-ws");
    svc.edit_config(|t| t.replace("timeout = \"10s\"", "timeout = \"3s\""));
    svc.deploy("v1").success();
    let proxy = svc.proxy_addr();

    let ws = websocket_client(proxy, Duration::from_secs(60));
    let sse = event_client(proxy, Duration::from_secs(60));
    let started = Instant::now();
    let out = svc.deploy("v2").success();
    let finished = Instant::now();
    let ws = ws.join().unwrap();
    let sse = sse.join().unwrap();

    // The old connections stayed on blue through the drain (3 s at 100 ms a
    // message), and ended with the app's own close once blue was stopped.
    assert_eq!(ws.greeting, "hello v1 from blue", "{ws:?}");
    let during: Vec<_> = ws
        .answers
        .iter()
        .filter(|(at, _)| *at > started && *at < finished)
        .collect();
    assert!(
        during.len() >= 20,
        "messages flowed during the deploy: {ws:?}"
    );
    assert!(
        ws.answers.iter().all(|(_, a)| a.starts_with("blue: ")),
        "{ws:?}"
    );
    assert_eq!(ws.close, Some(CloseCode::Away), "a clean close: {ws:?}");
    assert!(
        ws.ended.unwrap() < finished + Duration::from_secs(5),
        "closed, not hung: {ws:?}"
    );
    let sse_during = sse
        .data
        .iter()
        .filter(|(at, _)| *at > started && *at < finished)
        .count();
    assert!(sse_during >= 20, "events flowed during the deploy: {sse:?}");
    assert!(
        sse.data.iter().all(|(_, d)| d.starts_with("blue ")),
        "{sse:?}"
    );
    assert!(
        sse.bye,
        "the stream ended with the app's goodbye: {:?} after {} events",
        sse.data.last(),
        sse.data.len()
    );

    // The deploy said how many were still open when the drain ended.
    assert!(
        out.stderr
            .contains("holding 2 long-lived connection(s) (WebSockets, streams) to the old colour"),
        "{}",
        out.stderr
    );

    // A reconnect lands on green at once.
    let again = websocket_client(proxy, Duration::from_millis(300))
        .join()
        .unwrap();
    assert_eq!(again.greeting, "hello v2 from green", "{again:?}");
    assert!(
        again.answers.iter().all(|(_, a)| a.starts_with("green: ")),
        "{again:?}"
    );
    let events = event_client(proxy, Duration::from_millis(500))
        .join()
        .unwrap();
    assert!(events.data[0].1.starts_with("green "), "{events:?}");
}

#[test]
fn the_managed_nginx_reuses_backend_connections() {
    let svc = Service::new("front-keepalive");
    svc.deploy("v1").success();
    let upstream = std::fs::read_to_string(svc.conf_d.join(format!("{}-upstream.conf", svc.name)))
        .expect("the pooled upstream block");
    assert!(upstream.contains("keepalive 32;"), "{upstream}");
    // 200 requests through nginx, each on a new client connection: with the pool
    // they share a handful of backend connections, which hello keeps open; without
    // it each would have been its own and closed.
    for _ in 0..200 {
        assert_eq!(svc.get("/").status, 200);
    }
    let backend = connections_to(svc.blue);
    assert!(
        (1..=8).contains(&backend),
        "{backend} connections from nginx to blue after 200 requests"
    );
}

/// Established connections to `127.0.0.1:port` (from the host: nginx's, to Docker's
/// published port), as the kernel lists them.
fn connections_to(port: u16) -> usize {
    let needle = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(2) == Some(&needle.as_str()) && f.get(3) == Some(&"01")
        })
        .count()
}

#[test]
fn two_services_share_one_external_conf_d_each_with_its_own_include() {
    let mut a = Service::new("front-ext-a");
    let mut b = Service::new("front-ext-b");
    let nginx = ExternalNginx::start(([127, 0, 0, 1], a.blue).into());
    // One server block per service, each including its own file: the lines the
    // README shows. The files exist before the first deploy, as a user's would.
    let b_listen = free_port();
    let conf_d = nginx.conf_d.display().to_string();
    let conf_file = nginx.dir.path().join("nginx.conf");
    let conf = std::fs::read_to_string(&conf_file).unwrap();
    let header = "add_header X-Cutover-Upstream $upstream_addr always;";
    let conf = conf.replace(
        &format!("include {conf_d}/*.inc;"),
        &format!("include {conf_d}/{}-url.inc;", a.name),
    );
    let end = conf.rfind('}').unwrap();
    let conf = format!(
        "{}server {{ listen 127.0.0.1:{b_listen};\n  location / {{ include {conf_d}/{}-url.inc; proxy_pass $service_url; {header} }} }}\n}}\n",
        &conf[..end],
        b.name
    );
    std::fs::write(&conf_file, conf).unwrap();
    for (svc, port) in [(&a, a.blue), (&b, b.blue)] {
        std::fs::write(
            nginx.conf_d.join(format!("{}-url.inc", svc.name)),
            format!("set $service_url http://127.0.0.1:{port};\n"),
        )
        .unwrap();
    }
    let reload = nginx.argv(&["-s", "reload"]);
    assert!(
        std::process::Command::new(&reload[0])
            .args(&reload[1..])
            .status()
            .unwrap()
            .success()
    );
    for svc in [&mut a, &mut b] {
        svc.use_external(&nginx, &reload);
        // The default names, not the test nginx's `service-url.inc`.
        svc.edit_config(|t| t[..t.find("\n[plugins.proxy-template]").unwrap()].to_owned() + "\n");
    }
    b.edit_config(|t| {
        t.replace(
            &format!("url = \"http://{}/\"", nginx.listen),
            &format!("url = \"http://127.0.0.1:{b_listen}/\""),
        )
    });
    b.listen = b_listen;

    a.deploy("v1").success();
    b.deploy("v1").success();
    a.deploy("v2").success();
    assert_eq!(a.get("/").body.trim(), "hello v2 from green");
    assert_eq!(b.get("/").body.trim(), "hello v1 from blue");
    let a_file = std::fs::read_to_string(nginx.conf_d.join(format!("{}-url.inc", a.name))).unwrap();
    let b_file = std::fs::read_to_string(nginx.conf_d.join(format!("{}-url.inc", b.name))).unwrap();
    assert!(
        a_file.contains(&format!("127.0.0.1:{};", a.green)),
        "{a_file}"
    );
    assert!(
        b_file.contains(&format!("127.0.0.1:{};", b.blue)),
        "{b_file}"
    );

    // An include an older cutover wrote for `a` under the shared name would keep
    // nginx on it: the deploy is refused, saying what to change, and a keeps serving.
    std::fs::write(
        nginx.conf_d.join("service-url.inc"),
        format!(
            "# Written by cutover (builtin:nginx-service-url): {} -> blue. Do not edit.\nset $service_url http://127.0.0.1:{};\n",
            a.name, a.blue
        ),
    )
    .unwrap();
    let out = a.deploy("v3").code(4);
    assert!(
        out.stderr.contains(&format!(
            "Change nginx's `include` to {}-url.inc and delete service-url.inc",
            a.name
        )),
        "{}",
        out.stderr
    );
    assert_eq!(a.get("/").body.trim(), "hello v2 from green");
    assert_eq!(b.get("/").body.trim(), "hello v1 from blue");
}

#[test]
fn pause_answers_503_with_the_page_under_load_and_resume_serves_again() {
    let svc = Service::new("front-pause");
    std::fs::write(
        svc.base.join("maintenance.html"),
        "<h1>Back soon</h1><p>\"Upgrades\" cost $0</p>\n",
    )
    .unwrap();
    svc.edit_config(|t| {
        t.replace(
            "[proxy]\nmode = \"managed\"\n",
            "[proxy]\nmode = \"managed\"\npause_page = \"maintenance.html\"\n",
        )
    });
    svc.deploy("v1").success();
    let load = Load::start(LoadConfig {
        max_duration: Duration::from_secs(120),
        slow_ms: (200, 600),
        ..LoadConfig::new(svc.proxy_addr())
    });
    thread::sleep(Duration::from_millis(800));
    let pause_began = load.elapsed();
    let out = svc.cutover(&["pause"]).success();
    let paused_at = load.elapsed();
    assert!(out.stderr.contains("is paused"), "{}", out.stderr);

    let page = svc.get("/");
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(
        page.body
            .contains("<h1>Back soon</h1><p>\"Upgrades\" cost &#36;0</p>"),
        "{}",
        page.body
    );
    assert_eq!(page.header("retry-after"), Some("30"));
    assert_eq!(svc.status()["proxy"]["paused"], true);
    // A deploy would verify through the paused front door: it is refused first.
    let refused = svc.deploy("v2").code(4);
    assert!(
        refused.stderr.contains("Run `cutover resume` first"),
        "{}",
        refused.stderr
    );
    assert!(
        svc.containers().iter().all(|c| !c.ends_with("-green")),
        "nothing was started: {:?}",
        svc.containers()
    );
    thread::sleep(Duration::from_millis(800));
    let resume_began = load.elapsed();
    let out = svc.cutover(&["resume"]).success();
    let resumed_at = load.elapsed();
    assert!(out.stderr.contains("is resumed"), "{}", out.stderr);
    thread::sleep(Duration::from_millis(800));
    let report = load.stop();

    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    assert_eq!(svc.status()["proxy"]["paused"], false);
    let status = |s: &crate::support::load::Sample| match s.result {
        crate::support::load::Outcome::Status(code) => code,
        other => panic!("a request failed outright: {other:?} in {s:?}"),
    };
    let (mut before, mut during, mut after) = (0, 0, 0);
    for s in &report.samples {
        let code = status(s);
        if s.at < pause_began {
            assert_eq!(code, 200, "before the pause: {s:?}");
            before += 1;
        } else if s.at > paused_at && s.at < resume_began && !s.slow {
            assert_eq!(code, 503, "while paused: {s:?}");
            during += 1;
        } else if s.at > resumed_at {
            assert_eq!(code, 200, "after the resume: {s:?}");
            after += 1;
        } else {
            assert!(code == 200 || code == 503, "{s:?}");
        }
    }
    assert!(
        before > 50 && during > 50 && after > 50,
        "{before} {during} {after}"
    );
}

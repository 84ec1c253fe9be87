//! hello: the tiny HTTP/1.1 app cutover's demo and tests deploy.
//!
//! It answers `GET /` with its version and colour, `GET /health` with `ok` (or 503 when
//! told to fail), and `GET /slow?ms=N` after a delay, so tests can watch a switch, a
//! failing health check and a request in flight during a stop. `GET /ws` is a
//! WebSocket that greets with its colour and echoes each text message prefixed with
//! it; `GET /events` is a server-sent event stream of numbered events naming the
//! colour (see [`streams`]). Every behaviour a test needs is a knob in the environment
//! (see [`Knobs`]). It links statically (std and the WebSocket framing of
//! `tungstenite`) and runs as PID 1 in a `FROM scratch` image; on SIGTERM or SIGINT it
//! stops accepting, lets in-flight requests finish (bounded), closes its WebSockets
//! (1001, going away) and event streams, and exits 0, which is what `docker stop`
//! needs for a drain without dropped requests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The longest `/slow` sleeps, so a stray request cannot hold a stop forever.
const SLOW_CAP: Duration = Duration::from_secs(30);
/// Connections served at once; beyond this a connection gets 503 and is closed.
const MAX_CONNECTIONS: usize = 512;
/// The largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// The largest request body read (and discarded).
const MAX_BODY: u64 = 1024 * 1024;
/// How long a keep-alive connection may sit idle between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the rest of a request may take once its first byte arrived.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often idle connections and the accept loop look at the stop flag.
const TICK: Duration = Duration::from_millis(50);
/// The longest a stop waits for in-flight requests (a `/slow` at its cap, plus margin).
const DRAIN_LIMIT: Duration = Duration::from_secs(35);

/// Set by the signal handler; everything else polls it.
static STOP: AtomicBool = AtomicBool::new(false);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("migrate") => std::process::exit(migrate::run(&args[1..])),
        Some("console") => std::process::exit(console()),
        _ => {}
    }
    let knobs = match Knobs::from_lookup(|name| std::env::var(name).ok()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("hello: {e}");
            std::process::exit(2);
        }
    };
    signals::install();
    if let Err(e) = run(knobs) {
        eprintln!("hello: {e}");
        std::process::exit(1);
    }
}

fn run(knobs: Knobs) -> io::Result<()> {
    if let Some(after) = knobs.exit_after {
        thread::spawn(move || {
            thread::sleep(after);
            println!(
                "hello: exiting with code 3 after {} ms (HELLO_EXIT_AFTER_MS)",
                after.as_millis()
            );
            std::process::exit(3);
        });
    }
    if !knobs.startup_delay.is_zero() {
        println!(
            "hello: waiting {} ms before listening (HELLO_STARTUP_DELAY_MS)",
            knobs.startup_delay.as_millis()
        );
        thread::sleep(knobs.startup_delay);
    }
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, knobs.port));
    let listener = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (HELLO_PORT): {e}"),
        )
    })?;
    // Non-blocking accept lets the loop see the stop flag without waking tricks; the
    // short sleep only happens when no connection is waiting.
    listener.set_nonblocking(true)?;
    println!(
        "hello {} ({}) listening on {addr}",
        knobs.version, knobs.color
    );

    let app = Arc::new(App::new(knobs));
    let active = Arc::new(AtomicUsize::new(0));
    while !STOP.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    refuse_busy(stream);
                    continue;
                }
                let guard = ActiveGuard::new(&active);
                let app = Arc::clone(&app);
                thread::spawn(move || {
                    let _guard = guard;
                    // A client that vanished mid-request is not the server's problem.
                    let _ = serve(stream, &app);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(TICK / 5),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("hello: accept failed: {e}");
                thread::sleep(TICK);
            }
        }
    }
    drop(listener);
    let in_flight = active.load(Ordering::SeqCst);
    println!("hello: stopping; waiting for {in_flight} connection(s) to finish");
    let deadline = Instant::now() + DRAIN_LIMIT;
    while active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(TICK / 5);
    }
    let left = active.load(Ordering::SeqCst);
    if left > 0 {
        println!("hello: stopped with {left} connection(s) still open");
    } else {
        println!("hello: stopped");
    }
    Ok(())
}

/// Counts a connection as active until dropped, even if its thread panics.
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(active: &Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(active))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let response = Response::text(503, "busy\n");
    let _ = stream.write_all(&response.to_bytes(false, true));
}

/// What the environment asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Knobs {
    version: String,
    color: String,
    port: u16,
    startup_delay: Duration,
    health: HealthMode,
    exit_after: Option<Duration>,
    /// This percentage of `GET /` answers 500, spread evenly over the requests, for a
    /// release that is healthy but bad.
    error_percent: u64,
    /// `GET /` waits this long first, for a release that is healthy but slow.
    root_delay: Duration,
    /// What `HELLO_REQUIRE` asked for and is missing: variables unset or empty, files
    /// absent or empty (e.g. `DATABASE_URL,/run/secrets/db`). While any is, health
    /// answers 503 naming them (never a value), as an app without its secrets would.
    missing: Vec<String>,
    /// `HELLO_SCHEMA_MIN` and `HELLO_SCHEMA_FILE`: health answers 503 until the file
    /// holds a schema version at least this (what `hello migrate` writes), as a
    /// release that needs its migration would.
    schema: Option<(u64, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HealthMode {
    Ok,
    Fail,
    /// Healthy for this many health requests, 503 afterwards.
    FailAfter(u64),
}

impl Knobs {
    /// Reads every knob through `get` (the environment in production, a map in tests).
    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Knobs, String> {
        let millis = |name: &str| -> Result<Option<Duration>, String> {
            get(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map(Duration::from_millis)
                        .map_err(|_| {
                            format!("{name} must be a number of milliseconds, found {v:?}")
                        })
                })
                .transpose()
        };
        let port = match get("HELLO_PORT") {
            None => 8080,
            Some(v) => match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    return Err(format!(
                        "HELLO_PORT must be a port between 1 and 65535, found {v:?}"
                    ));
                }
            },
        };
        let mut health = match get("HELLO_HEALTH").as_deref().map(str::trim) {
            None | Some("ok") => HealthMode::Ok,
            Some("fail") => HealthMode::Fail,
            Some(other) => {
                return Err(format!(
                    "HELLO_HEALTH must be `ok` or `fail`, found {other:?}"
                ));
            }
        };
        if let Some(v) = get("HELLO_HEALTH_FAIL_AFTER") {
            let n = v.trim().parse::<u64>().map_err(|_| {
                format!("HELLO_HEALTH_FAIL_AFTER must be a count of health requests, found {v:?}")
            })?;
            if health == HealthMode::Ok {
                health = HealthMode::FailAfter(n);
            }
        }
        Ok(Knobs {
            version: header_safe(get("HELLO_VERSION").as_deref().unwrap_or("dev")),
            color: header_safe(get("CUTOVER_COLOR").as_deref().unwrap_or("unknown")),
            port,
            startup_delay: millis("HELLO_STARTUP_DELAY_MS")?.unwrap_or_default(),
            health,
            exit_after: millis("HELLO_EXIT_AFTER_MS")?,
            error_percent: match get("HELLO_ERROR_PERCENT") {
                None => 0,
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(p) if p <= 100 => p,
                    _ => {
                        return Err(format!(
                            "HELLO_ERROR_PERCENT must be a percentage from 0 to 100, found {v:?}"
                        ));
                    }
                },
            },
            root_delay: millis("HELLO_ROOT_DELAY_MS")?
                .unwrap_or_default()
                .min(SLOW_CAP),
            missing: get("HELLO_REQUIRE")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .filter(|item| {
                    if item.starts_with('/') {
                        std::fs::metadata(item).map_or(true, |m| m.len() == 0)
                    } else {
                        get(item).is_none_or(|v| v.is_empty())
                    }
                })
                .map(str::to_owned)
                .collect(),
            schema: match (get("HELLO_SCHEMA_MIN"), get("HELLO_SCHEMA_FILE")) {
                (None, _) => None,
                (Some(min), file) => Some((
                    min.trim().parse::<u64>().map_err(|_| {
                        format!("HELLO_SCHEMA_MIN must be a schema version, found {min:?}")
                    })?,
                    file.unwrap_or_else(|| migrate::DEFAULT_DB.to_owned() + "/schema"),
                )),
            },
        })
    }
}

/// Values end up in response headers; a control character would split the header.
fn header_safe(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if cleaned.is_empty() {
        "-".to_owned()
    } else {
        cleaned
    }
}

struct App {
    knobs: Knobs,
    health_requests: AtomicU64,
    root_requests: AtomicU64,
}

impl App {
    fn new(knobs: Knobs) -> App {
        App {
            knobs,
            health_requests: AtomicU64::new(0),
            root_requests: AtomicU64::new(0),
        }
    }

    /// Decides the response; `/slow` sleeps here, on the connection's thread.
    fn handle(&self, req: &Request) -> Response {
        if req.method != "GET" && req.method != "HEAD" {
            return Response::text(405, "method not allowed\n");
        }
        let (path, query) = match req.target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (req.target.as_str(), ""),
        };
        match path {
            "/" => {
                let seen = self.root_requests.fetch_add(1, Ordering::SeqCst);
                thread::sleep(self.knobs.root_delay);
                // Spread evenly (20%: every fifth request), so a share of the
                // traffic sees the same rate as the whole.
                let p = self.knobs.error_percent;
                let status = if (seen + 1) * p / 100 > seen * p / 100 {
                    500
                } else {
                    200
                };
                let body = format!("hello {} from {}\n", self.knobs.version, self.knobs.color);
                Response::text(status, &body)
                    .header("X-Hello-Version", &self.knobs.version)
                    .header("X-Hello-Color", &self.knobs.color)
            }
            "/health" => {
                let seen = self.health_requests.fetch_add(1, Ordering::SeqCst) + 1;
                let healthy = match self.knobs.health {
                    HealthMode::Ok => true,
                    HealthMode::Fail => false,
                    HealthMode::FailAfter(n) => seen <= n,
                };
                let schema = self
                    .knobs
                    .schema
                    .as_ref()
                    .map(|(min, file)| (*min, migrate::version(file)))
                    .filter(|(min, found)| found < min);
                let response = if !self.knobs.missing.is_empty() {
                    let body = format!("missing: {}\n", self.knobs.missing.join(", "));
                    Response::text(503, &body)
                } else if let Some((min, found)) = schema {
                    Response::text(
                        503,
                        &format!("schema {found}, needs {min}: migrate first\n"),
                    )
                } else if healthy {
                    Response::text(200, "ok\n")
                } else {
                    Response::text(503, "unhealthy\n")
                };
                response.header("X-Hello-Color", &self.knobs.color)
            }
            "/slow" => match slow_duration(query) {
                Ok(d) => {
                    thread::sleep(d);
                    Response::text(200, &format!("slept {} ms\n", d.as_millis()))
                        .header("X-Hello-Color", &self.knobs.color)
                }
                Err(message) => Response::text(400, &message),
            },
            _ => Response::text(404, "not found\n"),
        }
    }
}

/// `ms=N` from the query, capped at [`SLOW_CAP`].
fn slow_duration(query: &str) -> Result<Duration, String> {
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .unwrap_or("1000");
    let ms = value
        .parse::<u64>()
        .map_err(|_| format!("ms must be a number of milliseconds, found {value:?}\n"))?;
    Ok(Duration::from_millis(ms).min(SLOW_CAP))
}

#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    target: String,
    /// Whether the client wants the connection kept open after this request.
    keep_alive: bool,
    content_length: u64,
    /// `Sec-WebSocket-Key`, when the client asks to upgrade to a WebSocket.
    websocket_key: Option<String>,
}

/// Why a request could not be read.
#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    /// The peer closed the connection cleanly between requests.
    Closed,
    /// The request is malformed; answer with this status and close.
    Bad(u16, &'static str),
}

/// Parses a request head (request line and headers, without the blank line).
fn parse_head(head: &str) -> Result<Request, ReadError> {
    let mut lines = head.split("\r\n").flat_map(|l| l.split('\n'));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(400, "malformed request line\n"));
    };
    if method.is_empty() || !target.starts_with('/') {
        return Err(ReadError::Bad(400, "malformed request line\n"));
    }
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => {
            return Err(ReadError::Bad(
                505,
                "only HTTP/1.0 and HTTP/1.1 are supported\n",
            ));
        }
    };
    let mut content_length = 0;
    let mut websocket_key = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Bad(400, "malformed header line\n"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| ReadError::Bad(400, "bad Content-Length\n"))?;
            if content_length > MAX_BODY {
                return Err(ReadError::Bad(413, "request body too large\n"));
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            websocket_key = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::Bad(
                501,
                "chunked request bodies are not supported\n",
            ));
        }
    }
    Ok(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        keep_alive,
        content_length,
        websocket_key,
    })
}

/// Serves one connection until the client closes it, asks for close, or the app stops.
fn serve(stream: TcpStream, app: &App) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_request(&mut reader) {
            Ok(r) => r,
            Err(ReadError::Closed) => return Ok(()),
            Err(ReadError::Bad(status, message)) => {
                let response = Response::text(status, message);
                writer.write_all(&response.to_bytes(false, true))?;
                return Ok(());
            }
        };
        let path = request.target.split('?').next().unwrap_or_default();
        if request.method == "GET" && matches!(path, "/ws" | "/events") {
            return streams::serve(reader, &request, &app.knobs);
        }
        let response = app.handle(&request);
        // Once a stop began, tell keep-alive clients (nginx) not to reuse this
        // connection, so the drain ends when the current requests do.
        let keep = request.keep_alive && !STOP.load(Ordering::SeqCst);
        writer.write_all(&response.to_bytes(request.method == "HEAD", !keep))?;
        writer.flush()?;
        if !keep {
            return Ok(());
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Result<Request, ReadError> {
    wait_for_request(reader)?;
    reader
        .get_ref()
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|_| ReadError::Closed)?;
    let mut head = Vec::with_capacity(512);
    loop {
        let before = head.len();
        let n = reader
            .by_ref()
            .take((MAX_HEAD + 1 - head.len()) as u64)
            .read_until(b'\n', &mut head)
            .map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        if head.len() > MAX_HEAD {
            return Err(ReadError::Bad(431, "request head too large\n"));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = std::str::from_utf8(&head)
        .map_err(|_| ReadError::Bad(400, "request head is not UTF-8\n"))?;
    let request = parse_head(text.trim_end())?;
    if request.content_length > 0 {
        io::copy(
            &mut reader.by_ref().take(request.content_length),
            &mut io::sink(),
        )
        .map_err(|_| ReadError::Closed)?;
    }
    Ok(request)
}

/// Waits for the first byte of the next request, giving up when idle too long or
/// when the app is stopping (an idle keep-alive connection holds nothing in flight).
fn wait_for_request(reader: &mut BufReader<TcpStream>) -> Result<(), ReadError> {
    reader
        .get_ref()
        .set_read_timeout(Some(TICK))
        .map_err(|_| ReadError::Closed)?;
    let idle_since = Instant::now();
    loop {
        match reader.fill_buf() {
            Ok([]) => return Err(ReadError::Closed),
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if STOP.load(Ordering::SeqCst) || idle_since.elapsed() > IDLE_TIMEOUT {
                    return Err(ReadError::Closed);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Closed),
        }
    }
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".to_owned())],
            body: body.to_owned(),
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Response {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn to_bytes(&self, head_only: bool, close: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        out.push_str(if close {
            "Connection: close\r\n"
        } else {
            "Connection: keep-alive\r\n"
        });
        out.push_str("\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// The long-lived endpoints, each on its connection's thread until the client leaves
/// or the app stops: `/ws` (a WebSocket) and `/events` (server-sent events).
mod streams {
    use super::{Knobs, Request, Response, STOP, TICK};
    use std::io::{self, BufReader, Write};
    use std::net::TcpStream;
    use std::sync::atomic::Ordering;
    use std::thread;
    use std::time::{Duration, Instant};

    use tungstenite::protocol::{CloseFrame, Role, WebSocket, frame::coding::CloseCode};
    use tungstenite::{Error, Message};

    /// How long a stopping WebSocket waits for the client's answer to its close.
    const CLOSE_WAIT: Duration = Duration::from_secs(2);
    /// The default and the shortest time between two events of `/events?ms=N`.
    const EVENT_EVERY: Duration = Duration::from_millis(200);
    const EVENT_MIN: Duration = Duration::from_millis(10);

    pub(super) fn serve(
        reader: BufReader<TcpStream>,
        request: &Request,
        knobs: &Knobs,
    ) -> io::Result<()> {
        if request.target.starts_with("/events") {
            return events(reader.into_inner(), &request.target, knobs);
        }
        let Some(key) = &request.websocket_key else {
            let mut stream = reader.into_inner();
            let response = Response::text(400, "/ws needs a WebSocket upgrade\n");
            return stream.write_all(&response.to_bytes(false, true));
        };
        websocket(reader, key, knobs)
    }

    /// Greets with `hello <version> from <colour>`, answers each text message `m`
    /// with `<colour>: m`, and on a stop sends a close (1001) and waits briefly for
    /// the client's.
    fn websocket(reader: BufReader<TcpStream>, key: &str, knobs: &Knobs) -> io::Result<()> {
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let early = reader.buffer().to_vec();
        let mut stream = reader.into_inner();
        write!(
            stream,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\nX-Hello-Color: {}\r\n\r\n",
            knobs.color
        )?;
        stream.set_read_timeout(Some(TICK))?;
        let mut ws = WebSocket::from_partially_read(stream, early, Role::Server, None);
        let greeting = format!("hello {} from {}", knobs.version, knobs.color);
        ws.send(Message::text(greeting)).map_err(io::Error::other)?;
        let mut closing: Option<Instant> = None;
        loop {
            if closing.is_none() && STOP.load(Ordering::SeqCst) {
                let frame = CloseFrame {
                    code: CloseCode::Away,
                    reason: "hello is stopping".into(),
                };
                // An error here means the client is gone already.
                let _ = ws.close(Some(frame));
                closing = Some(Instant::now());
            }
            if closing.is_some_and(|since| since.elapsed() > CLOSE_WAIT) {
                return Ok(());
            }
            match ws.read() {
                Ok(Message::Text(text)) if closing.is_none() => {
                    let answer = format!("{}: {}", knobs.color, text.as_str());
                    ws.send(Message::text(answer)).map_err(io::Error::other)?;
                }
                Ok(_) => {}
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    // Pongs and a queued close go out even while the client is quiet.
                    let _ = ws.flush();
                }
                Err(Error::ConnectionClosed | Error::AlreadyClosed) => return Ok(()),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }

    /// `data: <colour> <n>` every `ms` (default 200), until the client leaves; on a
    /// stop, a last `event: bye` and the end of the stream.
    fn events(mut stream: TcpStream, target: &str, knobs: &Knobs) -> io::Result<()> {
        let every = target
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("ms=")))
            .and_then(|ms| ms.parse().ok())
            .map_or(EVENT_EVERY, Duration::from_millis)
            .max(EVENT_MIN);
        // No length: the stream ends when the connection does.
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             X-Hello-Color: {}\r\nConnection: close\r\n\r\n",
            knobs.color
        )?;
        let mut n: u64 = 0;
        while !STOP.load(Ordering::SeqCst) {
            n += 1;
            write!(stream, "id: {n}\ndata: {} {n}\n\n", knobs.color)?;
            stream.flush()?;
            let next = Instant::now() + every;
            while Instant::now() < next && !STOP.load(Ordering::SeqCst) {
                thread::sleep(TICK.min(every));
            }
        }
        write!(stream, "event: bye\ndata: hello is stopping\n\n")?;
        stream.flush()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_handshake_answers_the_rfc_example() {
            // RFC 6455 section 1.3.
            assert_eq!(
                tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
            );
        }
    }
}

/// SIGTERM/SIGINT handling without a crate: as PID 1 in a container the process gets
/// no default signal disposition, so without a handler `docker stop` would wait out
/// the whole grace period and then SIGKILL in-flight requests.
#[allow(unsafe_code)] // the one FFI call in the app; see the SAFETY note below
mod signals {
    use super::STOP;
    use std::os::raw::c_int;
    use std::sync::atomic::Ordering;

    const SIGINT: c_int = 2;
    const SIGTERM: c_int = 15;

    unsafe extern "C" {
        // `signal(2)` from the C library; the handler is passed as a plain function
        // pointer, which is ABI-compatible with `sighandler_t`.
        fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    }

    /// Only an atomic store: the one kind of work that is async-signal-safe here.
    extern "C" fn on_signal(_: c_int) {
        STOP.store(true, Ordering::SeqCst);
    }

    pub(super) fn install() {
        for sig in [SIGTERM, SIGINT] {
            // SAFETY: `on_signal` is a valid `extern "C" fn(c_int)` that lives for the
            // whole program and does nothing but an atomic store.
            unsafe {
                signal(sig, on_signal);
            }
        }
    }
}

/// `hello console`: the stand-in for an interactive console that `cutover exec`
/// runs on a terminal. It says whether its stdin is a TTY, answers each line with
/// `echo: <line>`, and exits 0 at `exit` (or 1 at the end of its input).
fn console() -> i32 {
    use std::io::IsTerminal;
    let stdin = io::stdin();
    println!(
        "hello console (tty: {})",
        if stdin.is_terminal() { "yes" } else { "no" }
    );
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "exit" {
            println!("bye");
            return 0;
        }
        println!("echo: {}", line.trim());
    }
    1
}

/// `hello migrate --to N [--db DIR] [--sleep-ms MS] [--exit CODE]`: the stand-in for
/// a database migration that release hooks run. It appends a line to `DIR/runs` (so
/// a test can count how often it ran), sleeps, then writes `N` to `DIR/schema`, or
/// exits with `CODE` without writing.
mod migrate {
    use std::io::Write;
    use std::time::Duration;

    /// Where the schema lives when `--db` is not given.
    pub const DEFAULT_DB: &str = "/data";

    /// The schema version in `file`; 0 when there is none yet.
    pub fn version(file: &str) -> u64 {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Runs the migration; returns the exit code.
    pub fn run(args: &[String]) -> i32 {
        match parse(args).and_then(|m| m.apply()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("hello migrate: {e}");
                2
            }
        }
    }

    struct Migration {
        to: u64,
        db: String,
        sleep: Duration,
        exit: i32,
    }

    fn parse(args: &[String]) -> Result<Migration, String> {
        let mut m = Migration {
            to: 0,
            db: DEFAULT_DB.to_owned(),
            sleep: Duration::ZERO,
            exit: 0,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{flag} needs a number, found {value:?}"))
            };
            match flag.as_str() {
                "--to" => m.to = number()?,
                "--db" => m.db.clone_from(value),
                "--sleep-ms" => m.sleep = Duration::from_millis(number()?),
                "--exit" => m.exit = i32::try_from(number()?).map_err(|e| e.to_string())?,
                other => {
                    return Err(format!(
                        "unknown flag {other}; expected --to, --db, --sleep-ms or --exit"
                    ));
                }
            }
        }
        if m.to == 0 {
            return Err("--to N (the schema version to migrate to) is required".to_owned());
        }
        Ok(m)
    }

    impl Migration {
        fn apply(&self) -> Result<i32, String> {
            let runs = format!("{}/runs", self.db);
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&runs)
                .map_err(|e| format!("cannot open {runs}: {e}"))?;
            let color = std::env::var("CUTOVER_COLOR").unwrap_or_default();
            writeln!(log, "to {} by {color}", self.to).map_err(|e| e.to_string())?;
            let schema = format!("{}/schema", self.db);
            println!(
                "migrating {schema} from {} to {}",
                version(&schema),
                self.to
            );
            std::thread::sleep(self.sleep);
            if self.exit != 0 {
                eprintln!("migration to {} failed (--exit {})", self.to, self.exit);
                return Ok(self.exit);
            }
            std::fs::write(&schema, format!("{}\n", self.to))
                .map_err(|e| format!("cannot write {schema}: {e}"))?;
            println!("schema is at {}", self.to);
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn knobs(vars: &[(&str, &str)]) -> Result<Knobs, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Knobs::from_lookup(|name| map.get(name).cloned())
    }

    fn app(vars: &[(&str, &str)]) -> App {
        App::new(knobs(vars).unwrap())
    }

    fn get(target: &str) -> Request {
        Request {
            method: "GET".to_owned(),
            target: target.to_owned(),
            keep_alive: true,
            content_length: 0,
            websocket_key: None,
        }
    }

    #[test]
    fn a_bad_release_answers_500_on_its_share_of_requests() {
        let bad = app(&[("HELLO_ERROR_PERCENT", "20")]);
        let errors = (0..500)
            .filter(|_| bad.handle(&get("/")).status == 500)
            .count();
        assert_eq!(errors, 100);
        assert_eq!(bad.handle(&get("/health")).status, 200);
        assert!(knobs(&[("HELLO_ERROR_PERCENT", "101")]).is_err());
        let slow = knobs(&[("HELLO_ROOT_DELAY_MS", "40")]).unwrap();
        assert_eq!(slow.root_delay, Duration::from_millis(40));
    }

    #[test]
    fn defaults_without_any_variable() {
        let k = knobs(&[]).unwrap();
        assert_eq!(k.version, "dev");
        assert_eq!(k.color, "unknown");
        assert_eq!(k.port, 8080);
        assert_eq!(k.startup_delay, Duration::ZERO);
        assert_eq!(k.health, HealthMode::Ok);
        assert_eq!(k.exit_after, None);
    }

    #[test]
    fn knobs_are_read() {
        let k = knobs(&[
            ("HELLO_VERSION", "v2"),
            ("CUTOVER_COLOR", "green"),
            ("HELLO_PORT", "9000"),
            ("HELLO_STARTUP_DELAY_MS", "250"),
            ("HELLO_HEALTH", "fail"),
            ("HELLO_EXIT_AFTER_MS", "10"),
        ])
        .unwrap();
        assert_eq!(k.version, "v2");
        assert_eq!(k.color, "green");
        assert_eq!(k.port, 9000);
        assert_eq!(k.startup_delay, Duration::from_millis(250));
        assert_eq!(k.health, HealthMode::Fail);
        assert_eq!(k.exit_after, Some(Duration::from_millis(10)));
    }

    #[test]
    fn health_fails_naming_what_hello_require_lacks_and_never_a_value() {
        let lacking = app(&[
            (
                "HELLO_REQUIRE",
                "DATABASE_URL, SECRET_KEY_BASE,/nonexistent/secret",
            ),
            ("DATABASE_URL", "postgres://u:hunter2@db/app"),
            ("SECRET_KEY_BASE", ""),
        ]);
        let r = lacking.handle(&get("/health"));
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "missing: SECRET_KEY_BASE, /nonexistent/secret\n");
        let complete = app(&[("HELLO_REQUIRE", "DATABASE_URL"), ("DATABASE_URL", "x")]);
        assert_eq!(complete.handle(&get("/health")).status, 200);
    }

    #[test]
    fn bad_knobs_name_the_variable() {
        for (name, value) in [
            ("HELLO_PORT", "0"),
            ("HELLO_PORT", "http"),
            ("HELLO_HEALTH", "maybe"),
            ("HELLO_HEALTH_FAIL_AFTER", "-1"),
            ("HELLO_STARTUP_DELAY_MS", "1s"),
            ("HELLO_EXIT_AFTER_MS", "soon"),
        ] {
            let err = knobs(&[(name, value)]).unwrap_err();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn control_characters_cannot_inject_headers() {
        let k = knobs(&[("HELLO_VERSION", "v1\r\nX-Evil: 1")]).unwrap();
        assert_eq!(k.version, "v1??X-Evil: 1");
    }

    #[test]
    fn root_reports_version_and_color() {
        let app = app(&[("HELLO_VERSION", "v7"), ("CUTOVER_COLOR", "blue")]);
        let r = app.handle(&get("/"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "hello v7 from blue\n");
        let bytes = String::from_utf8(r.to_bytes(false, false)).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n"), "{bytes}");
        assert!(bytes.contains("X-Hello-Version: v7\r\n"), "{bytes}");
        assert!(bytes.contains("X-Hello-Color: blue\r\n"), "{bytes}");
        assert!(bytes.contains("Content-Length: 19\r\n"), "{bytes}");
        assert!(bytes.ends_with("\r\n\r\nhello v7 from blue\n"), "{bytes}");
    }

    #[test]
    fn head_has_length_but_no_body() {
        let r = app(&[]).handle(&get("/"));
        let bytes = String::from_utf8(r.to_bytes(true, true)).unwrap();
        assert!(bytes.contains("Content-Length: 23\r\n"), "{bytes}");
        assert!(bytes.contains("Connection: close\r\n"), "{bytes}");
        assert!(bytes.ends_with("\r\n\r\n"), "{bytes}");
    }

    #[test]
    fn health_modes() {
        assert_eq!(app(&[]).handle(&get("/health")).status, 200);
        let failing = app(&[("HELLO_HEALTH", "fail")]);
        assert_eq!(failing.handle(&get("/health")).status, 503);
        let flaky = app(&[("HELLO_HEALTH_FAIL_AFTER", "2")]);
        let statuses: Vec<u16> = (0..4)
            .map(|_| flaky.handle(&get("/health")).status)
            .collect();
        assert_eq!(statuses, [200, 200, 503, 503]);
    }

    #[test]
    fn other_paths_and_methods() {
        let app = app(&[]);
        assert_eq!(app.handle(&get("/nope")).status, 404);
        let mut post = get("/");
        post.method = "POST".to_owned();
        assert_eq!(app.handle(&post).status, 405);
        assert_eq!(app.handle(&get("/slow?ms=abc")).status, 400);
    }

    #[test]
    fn slow_is_capped_and_defaults() {
        assert_eq!(slow_duration("ms=5"), Ok(Duration::from_millis(5)));
        assert_eq!(slow_duration("x=1&ms=7"), Ok(Duration::from_millis(7)));
        assert_eq!(slow_duration(""), Ok(Duration::from_millis(1000)));
        assert_eq!(slow_duration("ms=99999999"), Ok(SLOW_CAP));
        let start = Instant::now();
        assert_eq!(app(&[]).handle(&get("/slow?ms=30")).status, 200);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn parses_request_heads() {
        let r = parse_head("GET /health HTTP/1.1\r\nHost: x\r\nAccept: */*").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/health");
        assert!(r.keep_alive);
        let r = parse_head("GET / HTTP/1.1\r\nConnection: Close").unwrap();
        assert!(!r.keep_alive);
        let r = parse_head("GET / HTTP/1.0").unwrap();
        assert!(!r.keep_alive);
        let r = parse_head("GET / HTTP/1.0\r\nconnection: keep-alive").unwrap();
        assert!(r.keep_alive);
        let r = parse_head("POST / HTTP/1.1\r\nContent-Length: 12").unwrap();
        assert_eq!(r.content_length, 12);
    }

    #[test]
    fn refuses_malformed_heads() {
        for (head, status) in [
            ("GET /", 400),
            ("GET / HTTP/1.1 extra", 400),
            ("GET nothing HTTP/1.1", 400),
            ("GET / HTTP/2.0", 505),
            ("GET / HTTP/1.1\r\nno colon here", 400),
            ("POST / HTTP/1.1\r\nContent-Length: nine", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 999999999", 413),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked", 501),
        ] {
            match parse_head(head) {
                Err(ReadError::Bad(s, _)) => assert_eq!(s, status, "{head}"),
                other => panic!("{head}: {other:?}"),
            }
        }
    }

    /// Drives the real connection loop over loopback: keep-alive, a body, close.
    #[test]
    fn serves_keep_alive_requests_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Arc::new(app(&[("HELLO_VERSION", "t"), ("CUTOVER_COLOR", "green")]));
        let server = {
            let app = Arc::clone(&app);
            thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                serve(stream, &app).unwrap();
            })
        };
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .write_all(b"POST /nope HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut all = String::new();
        client.read_to_string(&mut all).unwrap();
        server.join().unwrap();
        let responses: Vec<&str> = all.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(responses.len(), 3, "{all}");
        assert!(responses[0].starts_with("405"), "{all}");
        assert!(responses[1].starts_with("200"), "{all}");
        assert!(responses[1].ends_with("hello t from green\n"), "{all}");
        assert!(responses[1].contains("Connection: keep-alive"), "{all}");
        assert!(responses[2].starts_with("200"), "{all}");
        assert!(responses[2].contains("Connection: close"), "{all}");
    }
}

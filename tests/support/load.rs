//! A bounded HTTP/1.1 load generator for zero-downtime checks: keep-alive connections
//! sending short requests at a steady pace, plus connections sending slow requests
//! (the app sleeps 1–3 s) so some are always in flight when traffic switches. Every
//! request's outcome and latency is recorded with its start time.
//!
//! Like every mainstream HTTP client (Go's net/http behind `hey`, hyper, curl), an
//! idempotent request that finds its *reused* keep-alive connection already closed by
//! the server before any response byte arrived is retried once on a new connection;
//! such retries are counted and reported, never hidden. A request that got a
//! response, a timeout, or a failure on a fresh connection is never retried.
//!
//! Shared by the CI zero-downtime test and the deploy benchmark. Loopback only; every
//! loop stops at `stop()`, at `max_duration` or at `max_requests`, whichever is first.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The least time between the starts of two slow requests on one connection.
const SLOW_MIN_INTERVAL: Duration = Duration::from_millis(200);

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The proxy's address (must be loopback).
    pub target: SocketAddr,
    /// Path of the short requests.
    pub fast_path: String,
    /// Keep-alive connections sending short requests.
    pub fast_connections: usize,
    /// Total short requests per second across those connections.
    pub fast_rate: u32,
    /// Connections sending slow requests back to back.
    pub slow_connections: usize,
    /// Slow requests sleep between these many milliseconds (inclusive range).
    pub slow_ms: (u64, u64),
    /// Hard stop after this long.
    pub max_duration: Duration,
    /// Hard stop after this many requests in total.
    pub max_requests: u64,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl LoadConfig {
    /// Defaults sized for a 2-core machine: a few hundred requests per second.
    pub fn new(target: SocketAddr) -> LoadConfig {
        assert!(
            target.ip().is_loopback(),
            "load is only ever sent to loopback"
        );
        LoadConfig {
            target,
            fast_path: "/".to_owned(),
            fast_connections: 4,
            fast_rate: 300,
            slow_connections: 2,
            slow_ms: (1000, 3000),
            max_duration: Duration::from_secs(600),
            max_requests: 2_000_000,
            timeout: Duration::from_secs(15),
        }
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// No response within the timeout.
    Timeout,
    /// Connection refused/reset/closed without a response.
    ConnectionError,
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it started, from the load's start.
    pub at: Duration,
    /// How long it took.
    pub latency: Duration,
    /// How it ended.
    pub result: Outcome,
    /// Whether it was a slow request.
    pub slow: bool,
    /// The version that answered: the number in the hello app's `X-Hello-Version`
    /// (`v2` → 2), when the response had one.
    pub version: Option<u16>,
}

impl Sample {
    /// A 2xx response.
    pub fn ok(&self) -> bool {
        matches!(self.result, Outcome::Status(s) if (200..300).contains(&s))
    }
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    threads: Vec<JoinHandle<()>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    retries: Arc<AtomicU64>,
}

/// The load's results.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Every request.
    pub samples: Vec<Sample>,
    /// Requests retried once because their reused keep-alive connection was closed
    /// before any response byte (standard client behaviour, counted for honesty).
    pub keepalive_retries: u64,
    /// How long the load ran.
    pub elapsed: Duration,
}

impl Load {
    /// Starts the load.
    pub fn start(config: LoadConfig) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let retries = Arc::new(AtomicU64::new(0));
        let count = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut threads = Vec::new();
        let per_conn_interval = if config.fast_rate == 0 {
            Duration::from_secs(1)
        } else {
            Duration::from_secs_f64(config.fast_connections as f64 / f64::from(config.fast_rate))
        };
        let total = config.fast_connections + config.slow_connections;
        for i in 0..total {
            let slow = i >= config.fast_connections;
            let worker = Worker {
                config: config.clone(),
                stop: stop.clone(),
                samples: samples.clone(),
                retries: retries.clone(),
                count: count.clone(),
                started,
                slow,
                interval: per_conn_interval,
                seed: 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
            };
            threads.push(std::thread::spawn(move || worker.run()));
        }
        Load {
            stop,
            started,
            threads,
            samples,
            retries,
        }
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the load, waits for in-flight requests, and returns every sample.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        let mut samples = std::mem::take(&mut *self.samples.lock().unwrap());
        samples.sort_by_key(|s| s.at);
        LoadReport {
            samples,
            keepalive_retries: self.retries.load(Ordering::SeqCst),
            elapsed: self.started.elapsed(),
        }
    }
}

struct Worker {
    config: LoadConfig,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    retries: Arc<AtomicU64>,
    count: Arc<AtomicU64>,
    started: Instant,
    slow: bool,
    interval: Duration,
    seed: u64,
}

impl Worker {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: enough to spread slow-request durations.
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        self.seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn run(mut self) {
        let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
        let mut next = Instant::now();
        loop {
            if self.stop.load(Ordering::SeqCst)
                || self.started.elapsed() >= self.config.max_duration
                || self.count.fetch_add(1, Ordering::SeqCst) >= self.config.max_requests
            {
                return;
            }
            let path = if self.slow {
                // Paced too: a slow request that fails at once must not turn its
                // connection into a tight loop of failures that swamps the counts.
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                next = Instant::now() + SLOW_MIN_INTERVAL;
                let (lo, hi) = self.config.slow_ms;
                let ms = lo + self.next_random() % (hi - lo + 1);
                format!("/slow?ms={ms}")
            } else {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                next += self.interval;
                self.config.fast_path.clone()
            };
            let at = self.started.elapsed();
            let begun = Instant::now();
            let (result, version) = self.request(&mut conn, &path);
            let sample = Sample {
                at,
                latency: begun.elapsed(),
                result,
                slow: self.slow,
                version,
            };
            self.samples.lock().unwrap().push(sample);
        }
    }

    fn request(
        &self,
        conn: &mut Option<(TcpStream, BufReader<TcpStream>)>,
        path: &str,
    ) -> (Outcome, Option<u16>) {
        for attempt in 0..2 {
            let reused = conn.is_some();
            if conn.is_none() {
                match self.connect() {
                    Ok(c) => *conn = Some(c),
                    Err(_) => return (Outcome::ConnectionError, None),
                }
            }
            let (stream, reader) = conn.as_mut().expect("connected");
            match exchange(stream, reader, path, self.config.target) {
                Ok((status, keep, version)) => {
                    if !keep {
                        *conn = None;
                    }
                    return (Outcome::Status(status), version);
                }
                Err(Failure::ClosedBeforeResponse) if reused && attempt == 0 => {
                    // The server closed an idle keep-alive connection (e.g. an old
                    // nginx worker shutting down); the request was never processed.
                    self.retries.fetch_add(1, Ordering::SeqCst);
                    *conn = None;
                }
                Err(Failure::Timeout) => {
                    *conn = None;
                    return (Outcome::Timeout, None);
                }
                Err(_) => {
                    *conn = None;
                    return (Outcome::ConnectionError, None);
                }
            }
        }
        (Outcome::ConnectionError, None)
    }

    fn connect(&self) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
        let stream = TcpStream::connect_timeout(&self.config.target, self.config.timeout)?;
        stream.set_read_timeout(Some(self.config.timeout))?;
        stream.set_write_timeout(Some(self.config.timeout))?;
        stream.set_nodelay(true)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok((stream, reader))
    }
}

enum Failure {
    ClosedBeforeResponse,
    Timeout,
    Other,
}

fn classify(e: &std::io::Error, got_bytes: bool) -> Failure {
    use std::io::ErrorKind::*;
    match e.kind() {
        WouldBlock | TimedOut => Failure::Timeout,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof if !got_bytes => {
            Failure::ClosedBeforeResponse
        }
        _ => Failure::Other,
    }
}

/// Sends one GET and reads the whole response; returns the status, whether the
/// connection may be reused, and the version that answered.
fn exchange(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    path: &str,
    target: SocketAddr,
) -> Result<(u16, bool, Option<u16>), Failure> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: cutover-load\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| classify(&e, false))?;
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Err(Failure::ClosedBeforeResponse),
        Ok(_) => {}
        Err(e) => return Err(classify(&e, false)),
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(Failure::Other)?;
    let mut length: Option<usize> = None;
    let mut keep = true;
    let mut version = None;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(Failure::Other),
            Ok(_) => {}
            Err(e) => return Err(classify(&e, true)),
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                keep = false;
            } else if name.eq_ignore_ascii_case("x-hello-version") {
                version = value.trim_start_matches('v').parse().ok();
            }
        }
    }
    match length {
        Some(n) => {
            let mut body = vec![0; n];
            reader
                .read_exact(&mut body)
                .map_err(|e| classify(&e, true))?;
        }
        None => {
            // No length: the body runs to the end of the connection.
            let mut sink = Vec::new();
            reader
                .read_to_end(&mut sink)
                .map_err(|e| classify(&e, true))?;
            keep = false;
        }
    }
    Ok((status, keep, version))
}

/// Latency percentiles of a set of samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `samples` (nearest rank).
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Latency {
        let mut ms: Vec<f64> = samples
            .into_iter()
            .map(|s| s.latency.as_secs_f64() * 1000.0)
            .collect();
        if ms.is_empty() {
            return Latency::default();
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        // Nearest-rank percentile: ceil(p·n) is in 1..=n for p in (0, 1].
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Latency {
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: *ms.last().expect("non-empty"),
        }
    }
}

impl LoadReport {
    /// Requests that did not get a 2xx (non-2xx, timeouts and connection errors).
    pub fn failed(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| !s.ok()).collect()
    }

    /// Panics, counting each kind of failure and showing the first five, unless every
    /// request got a 2xx.
    #[track_caller]
    pub fn assert_none_failed(&self) {
        let failed = self.failed();
        assert!(
            failed.is_empty(),
            "{} of {} requests failed (non-2xx {}, timeouts {}, connection errors {}); first: {:?}",
            failed.len(),
            self.samples.len(),
            self.non_2xx(),
            self.timeouts(),
            self.connection_errors(),
            failed.iter().take(5).collect::<Vec<_>>()
        );
    }

    /// Count of responses with a non-2xx status.
    pub fn non_2xx(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| matches!(s.result, Outcome::Status(c) if !(200..300).contains(&c)))
            .count()
    }

    /// Count of timeouts.
    pub fn timeouts(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| s.result == Outcome::Timeout)
            .count()
    }

    /// Count of connection errors.
    pub fn connection_errors(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| s.result == Outcome::ConnectionError)
            .count()
    }

    /// Slow requests that completed with a 2xx.
    pub fn slow_ok(&self) -> usize {
        self.samples.iter().filter(|s| s.slow && s.ok()).count()
    }

    /// Samples whose request was in flight within `window` of any of `moments`.
    pub fn near<'a>(
        &'a self,
        moments: &'a [Duration],
        window: Duration,
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            let end = s.at + s.latency;
            moments
                .iter()
                .any(|m| s.at <= *m + window && end + window >= *m)
        })
    }
}

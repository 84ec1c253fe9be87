//! Real traffic per colour, read from nginx's JSON access log during a canary.
//!
//! The managed nginx writes one JSON object per request (the `cutover_json` format in
//! [`LOG_FORMAT`]); in external mode the user points `proxy.access_log` at a log in
//! the same format. [`Tail`] reads the lines appended since it last looked, and
//! [`Window`] turns them into requests, status classes and latency percentiles per
//! colour, attributing each request by the upstream address that answered it.

use crate::config::Upstreams;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Color;

/// The nginx `log_format` the host reads, for the managed nginx and for the README's
/// external-mode instructions. `escape=json` keeps every field a valid JSON string.
pub const LOG_FORMAT: &str = "log_format cutover_json escape=json '{\"time\":\"$time_iso8601\",\"upstream\":\"$upstream_addr\",\"status\":$status,\"request_time\":$request_time}';";

/// The most latencies kept per colour and window: past it, the percentiles come from
/// the first this many requests of the window (a canary step is judged long before).
const MAX_SAMPLES: usize = 1_000_000;

/// One request as the access log records it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Request {
    /// `$upstream_addr`: empty or `-` when nginx answered itself; several addresses
    /// separated by `, ` (retries) or ` : ` (internal redirects) — the last one answered.
    pub upstream: String,
    /// `$status`: what the client got.
    pub status: u16,
    /// `$request_time` in seconds (millisecond resolution).
    pub request_time: f64,
}

impl Request {
    /// Parses one log line; `None` for a line that is not in the format (a partial or
    /// foreign line is skipped, never fatal: the log is evidence, not a contract).
    pub fn parse(line: &str) -> Option<Request> {
        serde_json::from_str(line).ok()
    }

    /// The upstream that answered last, if any.
    pub fn answered_by(&self) -> Option<&str> {
        // Split on the separators, not on `:` alone, which would cut `host:port`.
        let last = self
            .upstream
            .rsplit(", ")
            .next()?
            .rsplit(" : ")
            .next()?
            .trim();
        (!last.is_empty() && last != "-").then_some(last)
    }

    fn latency_us(&self) -> u64 {
        // A negative or non-finite time is not a measurement: count it as 0.
        std::time::Duration::try_from_secs_f64(self.request_time)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

/// Reads the lines appended to a file since the last read. A file that shrank was
/// rotated or truncated: reading starts again from its beginning.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    offset: u64,
    /// The end of the last read when it stopped mid-line.
    partial: String,
}

impl Tail {
    /// A tail that starts at the file's current end: only requests from now on count.
    /// A file that does not exist yet starts at 0.
    pub fn from_end(path: &Path) -> Tail {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Tail {
            path: path.to_owned(),
            offset,
            partial: String::new(),
        }
    }

    /// The complete lines appended since the last call.
    ///
    /// # Errors
    /// The file exists but cannot be read.
    pub fn read_lines(&mut self) -> std::io::Result<Vec<String>> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.take(len - self.offset).read_to_end(&mut bytes)?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Ok(Vec::new());
        };
        let rest = self.partial.split_off(end + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        Ok(complete.lines().map(str::to_owned).collect())
    }
}

/// What one colour's traffic looked like over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ColorMetrics {
    /// Requests answered through this colour.
    pub requests: u64,
    /// Of those, 2xx (and 1xx/3xx: not failures).
    pub success: u64,
    /// Of those, 4xx.
    pub client_errors: u64,
    /// Of those, 5xx (including nginx's own 502/504 when the colour failed).
    pub server_errors: u64,
    /// Latency percentiles in microseconds; none without requests.
    pub latency_p50_us: Option<u64>,
    /// 95th percentile.
    pub latency_p95_us: Option<u64>,
    /// 99th percentile.
    pub latency_p99_us: Option<u64>,
}

impl ColorMetrics {
    /// The share of requests that were 5xx, from 0 to 1; 0 without requests.
    pub fn server_error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.server_errors as f64 / self.requests as f64
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Tally {
    requests: u64,
    success: u64,
    client_errors: u64,
    server_errors: u64,
    latencies: Vec<u64>,
}

/// Requests per colour over a window (a step, or the whole canary).
#[derive(Debug, Default, Clone)]
pub struct Window {
    blue: Tally,
    green: Tally,
    /// Requests no colour answered (nginx's own answers, unknown upstreams).
    pub unattributed: u64,
}

impl Window {
    /// Counts one request, attributed through `colors` (where each colour answers).
    pub fn add(&mut self, request: &Request, colors: &[(Upstreams, Color)]) {
        let Some(color) = request
            .answered_by()
            .and_then(|a| colors.iter().find(|(u, _)| u.matches(a)).map(|(_, c)| c))
        else {
            self.unattributed += 1;
            return;
        };
        let tally = match color {
            Color::Blue => &mut self.blue,
            Color::Green => &mut self.green,
        };
        tally.requests += 1;
        match request.status {
            500..=599 => tally.server_errors += 1,
            400..=499 => tally.client_errors += 1,
            _ => tally.success += 1,
        }
        if tally.latencies.len() < MAX_SAMPLES {
            tally.latencies.push(request.latency_us());
        }
    }

    /// Parses and counts log lines; returns how many were in the format.
    pub fn add_lines(&mut self, lines: &[String], colors: &[(Upstreams, Color)]) -> usize {
        let mut parsed = 0;
        for request in lines.iter().filter_map(|l| Request::parse(l)) {
            self.add(&request, colors);
            parsed += 1;
        }
        parsed
    }

    /// One colour's figures.
    pub fn metrics(&mut self, color: Color) -> ColorMetrics {
        let tally = match color {
            Color::Blue => &mut self.blue,
            Color::Green => &mut self.green,
        };
        // Sorted in place, not copied: asked every second of a pause, the samples are a
        // sorted run plus what arrived since, which a stable sort merges cheaply.
        tally.latencies.sort();
        let sorted = &tally.latencies;
        ColorMetrics {
            requests: tally.requests,
            success: tally.success,
            client_errors: tally.client_errors,
            server_errors: tally.server_errors,
            latency_p50_us: percentile(sorted, 50),
            latency_p95_us: percentile(sorted, 95),
            latency_p99_us: percentile(sorted, 99),
        }
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn colors() -> Vec<(Upstreams, Color)> {
        vec![
            (
                Upstreams::One("127.0.0.1:8081".parse().unwrap()),
                Color::Blue,
            ),
            (
                Upstreams::One("127.0.0.1:8082".parse().unwrap()),
                Color::Green,
            ),
        ]
    }

    fn line(upstream: &str, status: u16, seconds: f64) -> String {
        format!(
            r#"{{"time":"2026-11-29T20:00:00+00:00","upstream":"{upstream}","status":{status},"request_time":{seconds}}}"#
        )
    }

    #[test]
    fn the_readme_shows_the_format_the_host_reads() {
        assert!(include_str!("../../../README.md").contains(LOG_FORMAT));
    }

    #[test]
    fn the_last_upstream_answered() {
        let r = Request::parse(&line("127.0.0.1:8081, 127.0.0.1:8082", 200, 0.0)).unwrap();
        assert_eq!(r.answered_by(), Some("127.0.0.1:8082"));
        let r = Request::parse(&line("127.0.0.1:8081 : 127.0.0.1:8082", 200, 0.0)).unwrap();
        assert_eq!(r.answered_by(), Some("127.0.0.1:8082"));
        let r = Request::parse(&line("-", 404, 0.0)).unwrap();
        assert_eq!(r.answered_by(), None);
        let r = Request::parse(&line("", 400, 0.0)).unwrap();
        assert_eq!(r.answered_by(), None);
        assert!(Request::parse("not json").is_none());
    }

    #[test]
    fn counts_and_percentiles_per_colour() {
        let mut lines: Vec<String> = (1..=100)
            .map(|ms| line("127.0.0.1:8081", 200, f64::from(ms) / 1000.0))
            .collect();
        lines.push(line("127.0.0.1:8082", 503, 0.002));
        lines.push(line("127.0.0.1:8082", 404, 0.004));
        lines.push(line("10.0.0.9:1", 200, 0.001));
        lines.push("garbage".into());
        let mut window = Window::default();
        assert_eq!(window.add_lines(&lines, &colors()), 103);
        let blue = window.metrics(Color::Blue);
        assert_eq!(
            (blue.requests, blue.success, blue.server_errors),
            (100, 100, 0)
        );
        assert_eq!(blue.latency_p50_us, Some(50_000));
        assert_eq!(blue.latency_p95_us, Some(95_000));
        assert_eq!(blue.latency_p99_us, Some(99_000));
        let green = window.metrics(Color::Green);
        assert_eq!(
            (green.requests, green.server_errors, green.client_errors),
            (2, 1, 1)
        );
        assert!((green.server_error_rate() - 0.5).abs() < 1e-9);
        assert_eq!(window.unattributed, 1);
        assert_eq!(Window::default().metrics(Color::Green).latency_p95_us, None);
    }

    #[test]
    fn tail_reads_only_new_complete_lines_and_survives_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.json");
        std::fs::write(&path, "old\n").unwrap();
        let mut tail = Tail::from_end(&path);
        assert!(tail.read_lines().unwrap().is_empty());
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(f, "one\ntw").unwrap();
        assert_eq!(tail.read_lines().unwrap(), vec!["one"]);
        writeln!(f, "o").unwrap();
        assert_eq!(tail.read_lines().unwrap(), vec!["two"]);
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(tail.read_lines().unwrap(), vec!["new"]);
        let mut missing = Tail::from_end(&dir.path().join("none"));
        assert!(missing.read_lines().unwrap().is_empty());
    }
}

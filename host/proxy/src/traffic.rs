//! Real traffic per colour, read from nginx's JSON access log during a canary.
//!
//! The managed nginx writes one JSON object per request (the `cutover_json` format in
//! [`LOG_FORMAT`]); in external mode the user points `proxy.access_log` at a log in
//! the same format. [`Tail`] reads the lines appended since it last looked, and
//! [`Window`] turns them into requests, status classes and latency percentiles per
//! colour, attributing each request by the upstream address that answered it.
//!
//! Latencies go into one HDR histogram per colour ([`hdrhistogram`]): fixed memory
//! however many requests a window sees, recording in constant time, and a percentile
//! read without sorting anything. The price is precision: a percentile is the
//! nearest-rank sample rounded up to the top of its bucket, at most 0.1% (3
//! significant digits) above the exact value.

use crate::config::Upstreams;

use hdrhistogram::Histogram;
use serde::Deserialize;

use crate::Color;

/// The file tailer the canary reads the access log with (one call reads to the end).
pub use cutover_base::tail::Tail;

/// The nginx `log_format` the host reads, for the managed nginx and for the README's
/// external-mode instructions. `escape=json` keeps every field a valid JSON string.
pub const LOG_FORMAT: &str = "log_format cutover_json escape=json '{\"time\":\"$time_iso8601\",\"upstream\":\"$upstream_addr\",\"status\":$status,\"request_time\":$request_time}';";

/// The longest latency a histogram tells apart, in microseconds (an hour): a longer
/// one counts as an hour. nginx gives up on an upstream long before.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Significant digits of each recorded latency: a percentile is within 0.1%.
const LATENCY_DIGITS: u8 = 3;

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
    /// Latency percentiles in microseconds; none without requests. Each is the
    /// nearest-rank latency (the ⌈p·n⌉-th smallest) as hdrhistogram's
    /// `value_at_quantile` gives it with 3 significant digits: the top of that
    /// latency's bucket, at most 0.1% above it.
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

#[derive(Debug, Clone)]
struct Tally {
    requests: u64,
    success: u64,
    client_errors: u64,
    server_errors: u64,
    /// Every request's latency in microseconds.
    latencies: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            requests: 0,
            success: 0,
            client_errors: 0,
            server_errors: 0,
            // Constant bounds that hdrhistogram accepts (1 ≤ low, 2·low ≤ high, ≤ 5 digits).
            latencies: Histogram::new_with_bounds(1, MAX_LATENCY_US, LATENCY_DIGITS)
                .expect("valid histogram bounds"),
        }
    }
}

impl Tally {
    fn percentile(&self, p: f64) -> Option<u64> {
        (!self.latencies.is_empty()).then(|| self.latencies.value_at_quantile(p / 100.0))
    }
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
        tally.latencies.saturating_record(request.latency_us());
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

    /// One colour's figures. (`&mut` for the callers written when it sorted samples
    /// in place; reading the histogram changes nothing.)
    pub fn metrics(&mut self, color: Color) -> ColorMetrics {
        let tally = match color {
            Color::Blue => &self.blue,
            Color::Green => &self.green,
        };
        ColorMetrics {
            requests: tally.requests,
            success: tally.success,
            client_errors: tally.client_errors,
            server_errors: tally.server_errors,
            latency_p50_us: tally.percentile(50.0),
            latency_p95_us: tally.percentile(95.0),
            latency_p99_us: tally.percentile(99.0),
        }
    }
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
        // The nearest-rank latencies are 50, 95 and 99 ms; the histogram gives the top
        // of each one's bucket, at most 0.1% (3 significant digits) above.
        for (got, exact) in [
            (blue.latency_p50_us, 50_000),
            (blue.latency_p95_us, 95_000),
            (blue.latency_p99_us, 99_000),
        ] {
            let got = got.unwrap();
            assert!(
                (exact..=exact + exact / 1000).contains(&got),
                "{got} µs for {exact} µs"
            );
        }
        let green = window.metrics(Color::Green);
        assert_eq!(
            (green.requests, green.server_errors, green.client_errors),
            (2, 1, 1)
        );
        assert!((green.server_error_rate() - 0.5).abs() < 1e-9);
        assert_eq!(window.unattributed, 1);
        assert_eq!(Window::default().metrics(Color::Green).latency_p95_us, None);
    }

    /// Past the histogram's range a latency counts as its top, and a zero or negative
    /// time as 0: every request still counts.
    #[test]
    fn latencies_outside_the_range_still_count() {
        let lines = [
            line("127.0.0.1:8081", 200, 0.0),
            line("127.0.0.1:8081", 200, -1.0),
            line("127.0.0.1:8081", 200, 7200.0),
        ];
        let mut window = Window::default();
        assert_eq!(window.add_lines(&lines, &colors()), 3);
        let blue = window.metrics(Color::Blue);
        assert_eq!(blue.requests, 3);
        assert_eq!(blue.latency_p50_us, Some(0));
        let p99 = blue.latency_p99_us.unwrap();
        assert!(
            (MAX_LATENCY_US..=MAX_LATENCY_US + MAX_LATENCY_US / 1000).contains(&p99),
            "{p99}"
        );
    }
}

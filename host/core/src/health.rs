//! HTTP health probes of a colour, judged by the health-policy plugin, and the check
//! after a switch that the proxy really serves the new colour.
//!
//! This module owns the HTTP side only: it makes requests, measures them and hands the
//! results to a judge it is given; it never decides health itself and never touches
//! Docker or nginx. Every wait is driven by tokio's clock and bounded by a deadline,
//! so nothing here spins or waits forever. Requests go straight to the address given
//! (environment proxy variables are ignored): probes of a colour over plain HTTP, the
//! check through the proxy over HTTP or HTTPS (rustls, trusting the system's roots and
//! `verify.ca_file`).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use reqwest::header::{CONNECTION, HOST, HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::Color;
use crate::config::{Config, HealthConfig, ProxyMode, Upstreams};
use crate::engine::EngineError;
use crate::events::{Level, Reporter};
use crate::plugin::PluginError;
use crate::plugin::types::{HealthInput, HealthVerdict, KeyValue, ProbeResult};

/// The body prefix kept per probe, as the WIT contract says.
pub const BODY_PREFIX_BYTES: usize = 4 * 1024;
/// Probes passed to the judge as history.
pub const HISTORY: usize = 32;
/// The header the managed nginx adds to name the backend that answered.
pub const UPSTREAM_HEADER: &str = "x-cutover-upstream";
/// What an external nginx needs so that verify can tell the colours apart.
pub const UPSTREAM_HINT: &str =
    "add `add_header X-Cutover-Upstream $upstream_addr always;` to the location";
/// How often verification asks the proxy again.
const VERIFY_POLL: Duration = Duration::from_millis(3);
/// At most this much body is read to look for `verify.expect_body`.
const VERIFY_BODY_BYTES: usize = 64 * 1024;
/// A single verification request never waits longer than this.
const VERIFY_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes one colour's HTTP endpoint.
pub struct Prober {
    client: Result<reqwest::Client, String>,
    target: SocketAddr,
    url: String,
    host: Option<String>,
    headers: Vec<String>,
    timeout: Duration,
}

impl Prober {
    /// A prober for `GET http://<target><health.path>`, with the configured Host
    /// header and per-probe timeout, capturing the configured response headers.
    pub fn new(target: SocketAddr, health: &HealthConfig) -> Prober {
        let timeout = health.timeout.get();
        Prober {
            client: client(timeout, None),
            target,
            url: format!("http://{target}{}", health.path),
            host: health.host.clone(),
            headers: health
                .headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            timeout,
        }
    }

    /// The address probed.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The URL probed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Makes one probe. Never fails: a transport problem is reported in `error`.
    pub async fn probe(&self) -> ProbeResult {
        let start = Instant::now();
        let failed = |error: String| ProbeResult {
            status: None,
            headers: Vec::new(),
            body_prefix: String::new(),
            latency_us: micros(start.elapsed()),
            error: Some(error),
        };
        let client = match &self.client {
            Ok(client) => client,
            Err(e) => return failed(e.clone()),
        };
        let request = match with_host(client.get(&self.url), self.host.as_deref()) {
            Ok(request) => request,
            Err(e) => return failed(e),
        };
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return failed(error_text(&e, self.timeout)),
        };
        let status = response.status().as_u16();
        let headers = select_headers(response.headers(), &self.headers);
        let (body, error) = read_prefix(&mut response, BODY_PREFIX_BYTES, self.timeout).await;
        ProbeResult {
            status: Some(status),
            headers,
            body_prefix: String::from_utf8_lossy(&body).into_owned(),
            latency_us: micros(start.elapsed()),
            error,
        }
    }
}

/// An HTTP(S) client without connection reuse: every probe or check opens its own
/// connection, so it sees the server as it is now (a pooled connection could belong
/// to an nginx worker that is shutting down). `https://` URLs are verified against the
/// system's roots plus the CA certificates in `ca_file` (`verify.ca_file`).
fn client(timeout: Duration, ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca_file {
        for cert in ca_certificates(path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .no_proxy()
        // A probe or a verification judges the answer of the address it asked, never
        // one a `Location` header points to: a redirect to another host must not make
        // a broken target or a hijacking proxy config look healthy.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .pool_max_idle_per_host(0)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot create the HTTP client: {e}"))
}

/// reqwest is built with `rustls-no-provider` (ring instead of its default aws-lc-rs),
/// so rustls needs a process-wide crypto provider before the first client is built.
/// Installing fails only when one is installed already, which serves as well.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The CA certificates in the PEM file `path` (`verify.ca_file`).
fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let expected = "expected a PEM file of CA certificates (`-----BEGIN CERTIFICATE-----`)";
    let pem = std::fs::read(path).map_err(|e| {
        format!(
            "`verify.ca_file`: cannot read {}: {e}; {expected}",
            path.display()
        )
    })?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(format!(
            "`verify.ca_file`: {} holds no certificate; {expected}",
            path.display()
        )),
        Err(e) => Err(format!(
            "`verify.ca_file`: {} is not valid PEM ({e}); {expected}",
            path.display()
        )),
    }
}

/// One request to `url` (through the proxy) on a fresh connection; the backend the
/// proxy names in its `X-Cutover-Upstream` header, when it adds one and the backend
/// really answered (a 502 also names the upstream nginx tried). `status` uses it to
/// report what nginx really serves, which can differ from its files on disk.
pub async fn serving_upstream(spec: &VerifySpec) -> Option<String> {
    match ask_proxy(spec).await {
        ProxyAnswer::Named(upstream) => Some(upstream),
        _ => None,
    }
}

/// What one request through the proxy told about who answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyAnswer {
    /// Answered below 500, naming this backend in `X-Cutover-Upstream`.
    Named(String),
    /// Answered below 500 without naming a backend (an external proxy without the
    /// header).
    Unnamed,
    /// Answered with a server error: the proxy, or the backend it reached, is broken.
    ServerError {
        /// The status code.
        status: u16,
        /// The backend the proxy names, if it does (nginx names the one it tried).
        upstream: Option<String>,
    },
    /// No answer at all: refused, reset, timed out, TLS failed, or no client could
    /// be built (an unreadable `verify.ca_file`).
    Unreachable(String),
}

impl fmt::Display for ProxyAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyAnswer::Named(upstream) => write!(f, "answered by {upstream}"),
            ProxyAnswer::Unnamed => f.write_str("answered without naming its upstream"),
            ProxyAnswer::ServerError {
                status,
                upstream: Some(upstream),
            } => write!(f, "answered {status} (upstream {upstream})"),
            ProxyAnswer::ServerError {
                status,
                upstream: None,
            } => write!(f, "answered {status}"),
            ProxyAnswer::Unreachable(why) => write!(f, "did not answer ({why})"),
        }
    }
}

/// One request through the proxy at `spec.url` on a fresh connection, classified.
pub async fn ask_proxy(spec: &VerifySpec) -> ProxyAnswer {
    let timeout = Duration::from_secs(2);
    let client = match client(timeout, spec.ca_file.as_deref()) {
        Ok(client) => client,
        Err(why) => return ProxyAnswer::Unreachable(why),
    };
    let request = match with_host(client.get(&spec.url), spec.host.as_deref()) {
        Ok(request) => request,
        Err(why) => return ProxyAnswer::Unreachable(why),
    };
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return ProxyAnswer::Unreachable(error_text(&e, timeout)),
    };
    let upstream = response
        .headers()
        .get(UPSTREAM_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = response.status();
    match upstream {
        _ if status.is_server_error() => ProxyAnswer::ServerError {
            status: status.as_u16(),
            upstream,
        },
        Some(upstream) => ProxyAnswer::Named(upstream),
        None => ProxyAnswer::Unnamed,
    }
}

/// [`UPSTREAM_HINT`] when verification with `spec` could not tell the colours apart:
/// the spec cannot, and the proxy, asked once now, names no upstream.
pub async fn color_hint(spec: &VerifySpec) -> Option<&'static str> {
    if spec.tells_colors_apart() {
        return None;
    }
    match serving_upstream(spec).await {
        Some(_) => None,
        None => Some(UPSTREAM_HINT),
    }
}

fn with_host(
    request: reqwest::RequestBuilder,
    host: Option<&str>,
) -> Result<reqwest::RequestBuilder, String> {
    match host {
        None => Ok(request),
        Some(host) => HeaderValue::from_str(host)
            .map(|value| request.header(HOST, value))
            .map_err(|_| format!("{host:?} is not a valid Host header value")),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The wanted headers, names lower-cased, one entry per value.
fn select_headers(headers: &HeaderMap, wanted: &[String]) -> Vec<KeyValue> {
    wanted
        .iter()
        .flat_map(|name| {
            headers
                .get_all(name.as_str())
                .iter()
                .map(move |v| KeyValue {
                    key: name.clone(),
                    value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                })
        })
        .collect()
}

/// Reads at most `cap` bytes of the body; an error reading it is returned beside what
/// arrived.
async fn read_prefix(
    response: &mut reqwest::Response,
    cap: usize,
    timeout: Duration,
) -> (Vec<u8>, Option<String>) {
    let mut body = Vec::new();
    while body.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(e) => {
                return (
                    body,
                    Some(format!("reading the body: {}", error_text(&e, timeout))),
                );
            }
        }
    }
    (body, None)
}

/// A transport error as a person wants to read it: the root cause ("Connection
/// refused (os error 111)"), not reqwest's "error sending request" wrapper.
fn error_text(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timed out after {} ms", timeout.as_millis());
    }
    let mut chain = vec![error.to_string()];
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        let text = e.to_string();
        if chain.last() != Some(&text) {
            chain.push(text);
        }
        source = e.source();
    }
    let root = chain.last().cloned().unwrap_or_default();
    if error.is_connect() {
        format!("connect: {root}")
    } else {
        root
    }
}

/// One line about a probe, for messages.
pub fn describe(probe: &ProbeResult) -> String {
    match (probe.status, &probe.error) {
        (None, Some(error)) => format!("no response ({error})"),
        (None, None) => "no response".to_owned(),
        (Some(status), error) => {
            let mut text = format!(
                "HTTP {status} in {:.1} ms, body {:?}",
                probe.latency_us as f64 / 1000.0,
                excerpt(&probe.body_prefix)
            );
            if let Some(error) = error {
                text.push_str(&format!(" ({error})"));
            }
            text
        }
    }
}

fn excerpt(text: &str) -> String {
    const MAX: usize = 120;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// How a colour became healthy.
#[derive(Debug, Clone)]
pub struct HealthReport {
    /// Probes made, the healthy one included.
    pub attempts: u32,
    /// Time from the call to the healthy verdict.
    pub elapsed: Duration,
    /// The probe judged healthy.
    pub last: ProbeResult,
}

/// A colour did not become healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The health policy gave up.
    #[error(
        "the health policy gave up on {service} ({color}) after {attempts} probe(s): {reason}; check the app's logs (`docker logs`)"
    )]
    Failed {
        /// The service.
        service: String,
        /// The colour probed.
        color: Color,
        /// The policy's reason.
        reason: String,
        /// Probes made.
        attempts: u32,
    },
    /// The deadline passed without a healthy verdict.
    #[error(
        "{service} ({color}) was not healthy within {} after {attempts} probe(s) of {url}; last probe: {}. Check the app's logs (`docker logs`), or raise `health.deadline` if it needs longer to start",
        humantime::format_duration(*deadline),
        last.as_ref().map_or_else(|| "none was made".to_owned(), describe)
    )]
    Deadline {
        /// The service.
        service: String,
        /// The colour probed.
        color: Color,
        /// The URL probed.
        url: String,
        /// `health.deadline`.
        deadline: Duration,
        /// Probes made.
        attempts: u32,
        /// The last probe, if any was made.
        last: Option<ProbeResult>,
    },
    /// The container stopped running while it was being probed.
    #[error(
        "the {color} container of {service} stopped running after {attempts} probe(s){}; it crashed or exited on start: check its logs (`docker logs`)",
        last.as_ref().map_or_else(String::new, |p| format!(" (last probe: {})", describe(p)))
    )]
    Exited {
        /// The service.
        service: String,
        /// The colour probed.
        color: Color,
        /// Probes made.
        attempts: u32,
        /// The last probe, if any was made.
        last: Option<ProbeResult>,
    },
    /// The health-policy plugin failed (trap, timeout, bad output); kept as the
    /// plugin's own error so its class (e.g. a config error) survives.
    #[error(transparent)]
    Judge(Box<PluginError>),
    /// Whether the container still runs could not be found out (the engine went
    /// away); kept as the engine's own error, an environment problem.
    #[error(transparent)]
    Engine(Box<EngineError>),
}

/// Too few of a colour's tasks became healthy.
#[derive(Debug, thiserror::Error)]
#[error(
    "only {healthy} of {wanted} {color} task(s) of {service} became healthy, {needed} needed (`health.min_healthy`): {}. Check those nodes (`docker node ls`) and the tasks' logs (`docker service logs {service}-{color}`); the live colour still serves",
    failures.join("; ")
)]
pub struct QuorumError {
    /// The service.
    pub service: String,
    /// The colour.
    pub color: Color,
    /// Healthy tasks.
    pub healthy: usize,
    /// Tasks the colour should run.
    pub wanted: usize,
    /// Healthy tasks needed.
    pub needed: usize,
    /// Each task that did not pass, and why, naming its node.
    pub failures: Vec<String>,
}

/// The answer to [`StillRunning`].
pub type StillRunningFuture<'a> =
    Pin<Box<dyn Future<Output = Result<bool, EngineError>> + Send + 'a>>;

/// Asks whether the container being probed still runs.
pub type StillRunning<'a> = dyn FnMut() -> StillRunningFuture<'a> + Send + 'a;

/// Judges one probe (the health-policy plugin behind a closure).
pub type Judge<'a> = dyn Fn(&HealthInput) -> Result<HealthVerdict, PluginError> + Send + Sync + 'a;

/// Probes until the judge says healthy, it says failed, the container stops running,
/// or `health.deadline` passes. The first probe comes after `health.first_delay`,
/// then one every `health.interval` (measured from the start of each probe). The
/// judge sees the last [`HISTORY`] probes; `elapsed-ms` counts from this call, so
/// call it right after the container started.
///
/// # Errors
/// [`HealthError`] saying which of those ended the wait, with the last probe.
// Eight distinct inputs (what to probe, how, for whom, judged how, still running?,
// reported where): a struct bundling them would only rename the arguments.
#[allow(clippy::too_many_arguments)]
pub async fn wait_healthy(
    prober: &Prober,
    health: &HealthConfig,
    service: &str,
    color: Color,
    instance: &crate::plugin::types::Instance,
    judge: &Judge<'_>,
    still_running: &mut StillRunning<'_>,
    reporter: &dyn Reporter,
) -> Result<HealthReport, HealthError> {
    let start = Instant::now();
    let deadline = start + health.deadline.get();
    let mut history: VecDeque<ProbeResult> = VecDeque::with_capacity(HISTORY);
    let mut attempts = 0u32;
    let deadline_error = |attempts, last: Option<ProbeResult>| HealthError::Deadline {
        service: service.to_owned(),
        color,
        url: prober.url.clone(),
        deadline: health.deadline.get(),
        attempts,
        last,
    };
    tokio::time::sleep_until((start + health.first_delay.get()).min(deadline)).await;
    loop {
        if !still_running()
            .await
            .map_err(|e| HealthError::Engine(Box::new(e)))?
        {
            return Err(HealthError::Exited {
                service: service.to_owned(),
                color,
                attempts,
                last: history.back().cloned(),
            });
        }
        let probe_start = Instant::now();
        let Ok(probe) = tokio::time::timeout_at(deadline, prober.probe()).await else {
            return Err(deadline_error(attempts, history.back().cloned()));
        };
        attempts += 1;
        let input = HealthInput {
            service: service.to_owned(),
            color: color.into(),
            instance: instance.clone(),
            attempt: attempts,
            elapsed_ms: crate::operation::millis(start.elapsed()),
            probe: probe.clone(),
            history: history.iter().cloned().collect(),
        };
        match judge(&input).map_err(|e| HealthError::Judge(Box::new(e)))? {
            HealthVerdict::Healthy => {
                return Ok(HealthReport {
                    attempts,
                    elapsed: start.elapsed(),
                    last: probe,
                });
            }
            HealthVerdict::Failed(reason) => {
                return Err(HealthError::Failed {
                    service: service.to_owned(),
                    color,
                    reason,
                    attempts,
                });
            }
            HealthVerdict::NotYet(why) => reporter.log(
                Level::Debug,
                &format!(
                    "{color} probe {attempts}: not yet: {why} ({})",
                    describe(&probe)
                ),
            ),
        }
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(probe);
        let next = probe_start + health.interval.get();
        if next >= deadline {
            return Err(deadline_error(attempts, history.back().cloned()));
        }
        tokio::time::sleep_until(next).await;
    }
}

/// What proves, after a switch, that the proxy serves the target colour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySpec {
    /// The URL requested through the proxy.
    pub url: String,
    /// The Host header to send.
    pub host: Option<String>,
    /// A PEM file of CA certificates trusted for an `https://` URL besides the
    /// system's roots (`verify.ca_file`, resolved).
    pub ca_file: Option<PathBuf>,
    /// `Name: value` the response must carry; `{color}` is replaced.
    pub expect_header: Option<String>,
    /// A substring the body must contain; `{color}` is replaced.
    pub expect_body: Option<String>,
    /// The colour switched to.
    pub color: Color,
    /// What the `X-Cutover-Upstream` header must name.
    pub expect_upstream: UpstreamCheck,
}

/// How verification uses the `X-Cutover-Upstream` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamCheck {
    /// Not looked at.
    Ignore,
    /// When the response carries the header, it must name one of these addresses
    /// (external mode: the nginx may or may not add it).
    IfSent(Upstreams),
    /// The response must carry the header naming one of these addresses (managed
    /// mode, where cutover's nginx always adds it).
    Required(Upstreams),
}

impl VerifySpec {
    /// The check `config` asks for after switching to `color`: `verify.url` (by
    /// default the managed listen address and the health path), `verify.host` (else
    /// `health.host`), `verify.ca_file`, the expected header and body, and the upstream
    /// header naming `color`'s address: required in managed mode, checked when sent in
    /// external.
    pub fn from_config(config: &Config, color: Color) -> VerifySpec {
        let url = config.verify.url.clone().unwrap_or_else(|| {
            let listen = config
                .proxy
                .listen
                .map_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 80)), connectable);
            format!("http://{listen}{}", config.health.path)
        });
        VerifySpec {
            url,
            host: config
                .verify
                .host
                .clone()
                .or_else(|| config.health.host.clone()),
            ca_file: config.verify.ca_file.as_ref().map(|p| config.resolve(p)),
            expect_header: config.verify.expect_header.clone(),
            expect_body: config.verify.expect_body.clone(),
            color,
            expect_upstream: match config.proxy.mode {
                ProxyMode::Managed => UpstreamCheck::Required(config.upstreams(color)),
                ProxyMode::External => UpstreamCheck::IfSent(config.upstreams(color)),
            },
        }
    }

    /// True when a response can show which colour answered: the upstream header is
    /// required, or the expected header or body names `{color}`. Otherwise only an
    /// upstream header the nginx happens to send can.
    pub fn tells_colors_apart(&self) -> bool {
        matches!(self.expect_upstream, UpstreamCheck::Required(_)) || self.content_names_color()
    }

    fn content_names_color(&self) -> bool {
        [&self.expect_header, &self.expect_body]
            .into_iter()
            .flatten()
            .any(|t| t.contains("{color}"))
    }
}

/// A listen address as a client reaches it: a wildcard becomes loopback.
fn connectable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// The proxy answered as the spec asks after a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The colour switched to.
    pub color: Color,
    /// Requests made, the accepted one included.
    pub attempts: u32,
    /// Time until the accepted answer.
    pub elapsed: Duration,
    /// What showed that the answer came from `color`.
    pub proof: VerifyProof,
}

/// What showed that the target colour answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyProof {
    /// The proxy's `X-Cutover-Upstream` header named the target's address.
    Upstream,
    /// The expected header or body, which names `{color}`, matched.
    Content,
    /// Nothing: the proxy answered, but both colours would have answered alike.
    Unproven,
}

impl std::fmt::Display for VerifyReport {
    /// The verify step's detail line, e.g. `proxy serves green (upstream header; 2
    /// request(s))`, or one saying that nothing told the colours apart.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (color, n) = (self.color, self.attempts);
        match self.proof {
            VerifyProof::Upstream => {
                write!(f, "proxy serves {color} (upstream header; {n} request(s))")
            }
            VerifyProof::Content => {
                write!(
                    f,
                    "proxy serves {color} (response names it; {n} request(s))"
                )
            }
            VerifyProof::Unproven => write!(
                f,
                "proxy answers ({n} request(s)), but cannot tell blue from green: {UPSTREAM_HINT}"
            ),
        }
    }
}

/// The proxy did not prove it serves the target.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No response proved it within the timeout.
    #[error(
        "the proxy did not serve {color} at {url} within {} ({attempts} request(s)); expected {wanted}; last seen: {seen}. Check the proxy's error log and the rendered files, or raise `verify.timeout`",
        humantime::format_duration(*timeout)
    )]
    Timeout {
        /// The URL requested.
        url: String,
        /// The target colour.
        color: Color,
        /// The timeout.
        timeout: Duration,
        /// Requests made.
        attempts: u32,
        /// What would have proved it.
        wanted: String,
        /// The last response or transport error.
        seen: String,
    },
    /// The check itself is malformed.
    #[error("cannot verify through the proxy: {0}")]
    Spec(String),
    /// Verification failed through one of several front ends.
    #[error("through front end `{name}`: {error}")]
    Front {
        /// `proxy` for `[proxy]`, else the `[[proxy.extra]]` name.
        name: String,
        /// What failed there.
        error: Box<VerifyError>,
    },
}

/// The checks derived from a [`VerifySpec`], with `{color}` substituted.
struct Proof {
    header: Option<(String, String)>,
    body: Option<String>,
    upstream: Option<Upstreams>,
    upstream_required: bool,
    content_names_color: bool,
}

impl Proof {
    fn new(spec: &VerifySpec) -> Result<Proof, VerifyError> {
        let color = spec.color.as_str();
        let header = match &spec.expect_header {
            None => None,
            Some(text) => {
                let (name, value) = text.split_once(':').ok_or_else(|| {
                    VerifyError::Spec(format!(
                        "`verify.expect_header` must be `Name: value`, found {text:?}"
                    ))
                })?;
                Some((
                    name.trim().to_ascii_lowercase(),
                    value.trim().replace("{color}", color),
                ))
            }
        };
        Ok(Proof {
            header,
            body: spec
                .expect_body
                .as_ref()
                .map(|b| b.replace("{color}", color)),
            upstream: match spec.expect_upstream {
                UpstreamCheck::Ignore => None,
                UpstreamCheck::IfSent(a) | UpstreamCheck::Required(a) => Some(a),
            },
            upstream_required: matches!(spec.expect_upstream, UpstreamCheck::Required(_)),
            content_names_color: spec.content_names_color(),
        })
    }

    fn wanted(&self) -> String {
        let mut parts = vec!["a 2xx or 3xx status".to_owned()];
        if let Some((name, value)) = &self.header {
            parts.push(format!("header `{name}: {value}`"));
        }
        if let Some(body) = &self.body {
            parts.push(format!("a body containing {body:?}"));
        }
        if let Some(upstream) = &self.upstream {
            let when = if self.upstream_required {
                ""
            } else {
                " when sent"
            };
            parts.push(format!("`{UPSTREAM_HEADER}: {upstream}`{when}"));
        }
        parts.join(", ")
    }

    /// What proves the response came from the target when it passes; else what was
    /// seen.
    fn check(&self, status: u16, headers: &HeaderMap, body: &str) -> Result<VerifyProof, String> {
        let header = |name: &str| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        };
        let mut ok = (200..400).contains(&status);
        let mut seen = vec![format!("HTTP {status}")];
        if let Some((name, value)) = &self.header {
            let got = header(name);
            ok &= got.as_deref() == Some(value.as_str());
            seen.push(format!("{name}: {}", got.as_deref().unwrap_or("(absent)")));
        }
        let mut named = false;
        if let Some(upstream) = &self.upstream {
            let got = header(UPSTREAM_HEADER);
            named = got.is_some();
            ok &= got.as_deref().is_some_and(|got| upstream.matches(got))
                || !(named || self.upstream_required);
            seen.push(format!(
                "{UPSTREAM_HEADER}: {}",
                got.as_deref().unwrap_or("(absent)")
            ));
        }
        if let Some(want) = &self.body {
            ok &= body.contains(want.as_str());
        }
        seen.push(format!("body {:?}", excerpt(body)));
        match ok {
            false => Err(seen.join(", ")),
            true if named => Ok(VerifyProof::Upstream),
            true if self.content_names_color => Ok(VerifyProof::Content),
            true => Ok(VerifyProof::Unproven),
        }
    }
}

/// Requests `spec.url` through the proxy until a response passes, at most `timeout`,
/// every few milliseconds. A response passes with a 2xx/3xx status and the expected
/// header, body and upstream the spec sets; the report says whether it really showed
/// the target answered ([`VerifyProof`]). Each attempt uses a fresh connection
/// (`Connection: close`): an old nginx worker may still own a pooled one.
///
/// # Errors
/// [`VerifyError::Timeout`] saying what was expected and what was last seen;
/// [`VerifyError::Spec`] when the spec is malformed.
pub async fn verify_through_proxy(
    spec: &VerifySpec,
    timeout: Duration,
) -> Result<VerifyReport, VerifyError> {
    let proof = Proof::new(spec)?;
    let client =
        client(VERIFY_REQUEST_TIMEOUT, spec.ca_file.as_deref()).map_err(VerifyError::Spec)?;
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0u32;
    let mut seen = "no request completed".to_owned();
    while Instant::now() < deadline {
        attempts += 1;
        let request = with_host(client.get(&spec.url), spec.host.as_deref())
            .map_err(VerifyError::Spec)?
            .header(CONNECTION, "close");
        let outcome = tokio::time::timeout_at(deadline, async {
            let mut response = request
                .send()
                .await
                .map_err(|e| error_text(&e, VERIFY_REQUEST_TIMEOUT))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let (body, _) =
                read_prefix(&mut response, VERIFY_BODY_BYTES, VERIFY_REQUEST_TIMEOUT).await;
            proof.check(status, &headers, &String::from_utf8_lossy(&body))
        })
        .await;
        match outcome {
            Ok(Ok(proof)) => {
                return Ok(VerifyReport {
                    color: spec.color,
                    attempts,
                    elapsed: start.elapsed(),
                    proof,
                });
            }
            Ok(Err(what)) => seen = what,
            Err(_) => {
                seen = format!("the last request was still waiting at the deadline ({seen})");
                break;
            }
        }
        tokio::time::sleep(VERIFY_POLL.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
    Err(VerifyError::Timeout {
        url: spec.url.clone(),
        color: spec.color,
        timeout,
        attempts,
        wanted: proof.wanted(),
        seen,
    })
}

/// [`verify_through_proxy`] through every front end in turn, `[proxy]` first and
/// then each `[[proxy.extra]]` at its `verify_url` (external: its upstream header is
/// checked when sent), with `[verify]`'s host, expectations and timeout.
///
/// # Errors
/// The first front end that did not serve `color`, by name when there are several.
pub async fn verify_through_front_ends(
    config: &Config,
    color: Color,
) -> Result<VerifyReport, VerifyError> {
    let timeout = config.verify.timeout.get();
    let primary = VerifySpec::from_config(config, color);
    let named = |name: &str, error: VerifyError| {
        if config.proxy.extra.is_empty() {
            error
        } else {
            VerifyError::Front {
                name: name.to_owned(),
                error: Box::new(error),
            }
        }
    };
    let mut report = verify_through_proxy(&primary, timeout)
        .await
        .map_err(|e| named("proxy", e))?;
    for front in &config.proxy.extra {
        let spec = VerifySpec {
            url: front.verify_url.clone(),
            expect_upstream: UpstreamCheck::IfSent(config.upstreams(color)),
            ..primary.clone()
        };
        let more = verify_through_proxy(&spec, timeout)
            .await
            .map_err(|e| named(&front.name, e))?;
        report.attempts += more.attempts;
        report.elapsed += more.elapsed;
        // The weakest proof among the front ends is what the report can claim.
        if more.proof == VerifyProof::Unproven {
            report.proof = VerifyProof::Unproven;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VerifySpec {
        VerifySpec {
            url: "http://127.0.0.1:1/".to_owned(),
            host: None,
            ca_file: None,
            expect_header: Some("X-Color: {color}".to_owned()),
            expect_body: Some("color={color}".to_owned()),
            color: Color::Green,
            expect_upstream: UpstreamCheck::Required(Upstreams::One(
                "127.0.0.1:18082".parse().unwrap(),
            )),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn proof_needs_every_part() {
        let proof = Proof::new(&spec()).unwrap();
        let good = headers(&[("x-color", "green"), (UPSTREAM_HEADER, "127.0.0.1:18082")]);
        assert_eq!(
            proof.check(200, &good, "v2 color=green"),
            Ok(VerifyProof::Upstream)
        );
        assert!(proof.check(502, &good, "v2 color=green").is_err());
        assert!(proof.check(200, &good, "v2 color=blue").is_err());
        let wrong = headers(&[("x-color", "green"), (UPSTREAM_HEADER, "127.0.0.1:18081")]);
        let seen = proof.check(200, &wrong, "color=green").unwrap_err();
        assert!(
            seen.contains("x-cutover-upstream: 127.0.0.1:18081"),
            "{seen}"
        );
        let seen = proof.check(200, &headers(&[]), "").unwrap_err();
        assert!(seen.contains("x-color: (absent)"), "{seen}");
        assert!(proof.wanted().contains("header `x-color: green`"));
    }

    #[test]
    fn malformed_expect_header_is_refused() {
        let bad = VerifySpec {
            expect_header: Some("no colon".to_owned()),
            ..spec()
        };
        assert!(matches!(Proof::new(&bad), Err(VerifyError::Spec(_))));
    }

    #[test]
    fn spec_from_managed_config_expects_the_upstream() {
        let config = Config::parse(
            "service = \"hello\"\n[image]\nref = \"hello:1\"\n[container]\nport = 8080\n\
             [proxy]\nmode = \"managed\"\nlisten = \"0.0.0.0:8080\"\n",
            std::path::Path::new("/srv/cutover.toml"),
        )
        .unwrap();
        let spec = VerifySpec::from_config(&config, Color::Green);
        assert_eq!(spec.url, "http://127.0.0.1:8080/health");
        assert_eq!(
            spec.expect_upstream,
            UpstreamCheck::Required(config.upstreams(Color::Green))
        );
    }

    #[test]
    fn external_verify_without_color_cannot_claim_the_color() {
        let upstream = Upstreams::One("127.0.0.1:18082".parse().unwrap());
        let plain = VerifySpec {
            expect_header: None,
            expect_body: None,
            expect_upstream: UpstreamCheck::IfSent(upstream),
            ..spec()
        };
        assert!(!plain.tells_colors_apart());
        let proof = Proof::new(&plain).unwrap();
        // No upstream header: both colours answer alike, nothing is proven.
        assert_eq!(
            proof.check(200, &headers(&[]), "ok"),
            Ok(VerifyProof::Unproven)
        );
        // The nginx names the upstream: it must be the target's.
        let named = headers(&[(UPSTREAM_HEADER, "127.0.0.1:18082")]);
        assert_eq!(proof.check(200, &named, "ok"), Ok(VerifyProof::Upstream));
        let old = headers(&[(UPSTREAM_HEADER, "127.0.0.1:18081")]);
        assert!(proof.check(200, &old, "ok").is_err());
        // A body that names the colour proves it without the header.
        let by_body = VerifySpec {
            expect_body: Some("color={color}".to_owned()),
            ..plain.clone()
        };
        assert!(by_body.tells_colors_apart());
        let proof = Proof::new(&by_body).unwrap();
        assert_eq!(
            proof.check(200, &headers(&[]), "color=green"),
            Ok(VerifyProof::Content)
        );

        let report = |proof| {
            VerifyReport {
                color: Color::Green,
                attempts: 2,
                elapsed: Duration::ZERO,
                proof,
            }
            .to_string()
        };
        let unproven = report(VerifyProof::Unproven);
        assert!(!unproven.contains("serves"), "{unproven}");
        assert!(
            unproven.contains("cannot tell blue from green"),
            "{unproven}"
        );
        assert!(
            unproven.contains("add_header X-Cutover-Upstream"),
            "{unproven}"
        );
        assert_eq!(
            report(VerifyProof::Upstream),
            "proxy serves green (upstream header; 2 request(s))"
        );
    }

    #[test]
    fn describe_is_short_and_says_why() {
        let probe = ProbeResult {
            status: None,
            headers: Vec::new(),
            body_prefix: String::new(),
            latency_us: 10,
            error: Some("connect: Connection refused (os error 111)".to_owned()),
        };
        assert_eq!(
            describe(&probe),
            "no response (connect: Connection refused (os error 111))"
        );
        let long = ProbeResult {
            status: Some(503),
            body_prefix: "x".repeat(500),
            error: None,
            ..probe
        };
        assert!(describe(&long).len() < 200);
    }
}

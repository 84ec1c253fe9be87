//! The dashboard: one server-rendered page per service — the live colour, what runs
//! in each colour and its health, the image and sha, the lock holder, the deploy in
//! progress and the last deploys with their step timelines — plus `/events`, a
//! server-sent event stream of the running deploy, and `/metrics`.
//!
//! The live view tails the event log each deploy appends to its state directory
//! ([`crate::events::LOG_FILE`]): the same JSON lines `--output json` prints, written
//! by the deploy's own process whoever started it (a terminal, CI or `serve`), so the
//! dashboard needs no channel to the deploy and survives restarts of either. The
//! page has a few lines of script (an `EventSource`) and no build chain.
//!
//! `cutover dashboard` serves one service's views at `/`; `cutover serve` mounts the
//! same page, stream and metrics for each service it deploys under
//! `/services/<service>/`, with [`render_index`] at `/`. Links are relative, so both
//! work behind a proxy that adds a path prefix.
//!
//! It only reads. Every route is behind the caller's access rule (loopback only by
//! default, else a bearer token or its login cookie, [`crate::access`]); nothing it
//! renders is secret.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cutover_base::tail::Tail;
use futures_util::{Stream, StreamExt};
use maud::{Markup, html};
use tokio::sync::watch;

use crate::Color;
use crate::audit::{AuditLog, Entry};
use crate::context::Context;
use crate::html::{deploy_list, page, short};
use crate::status::StatusReport;

/// Deploys shown on the page.
const RECENT: usize = 10;

/// How often `/events` looks for new lines.
const TAIL_EVERY: Duration = Duration::from_millis(200);

/// The most a tail reads at once; the rest comes on the next look.
const TAIL_CHUNK: u64 = 256 * 1024;

/// How long a stopping `cutover dashboard` waits for open connections.
const HTTP_DRAIN: Duration = Duration::from_secs(10);

/// One service's dashboard: its context (for `status`), the signal that ends its
/// event streams when the server stops, and the cap on open streams.
pub struct Dashboard {
    ctx: Context,
    stop: watch::Sender<bool>,
    /// Each open event stream holds a connection for as long as the page is open, so
    /// they are capped (at a quarter of the connections in [`Dashboard::serve`]).
    streams: Arc<tokio::sync::Semaphore>,
}

impl Dashboard {
    /// The dashboard of the service `ctx` was opened for.
    pub fn new(ctx: Context) -> Dashboard {
        Dashboard {
            ctx,
            stop: watch::channel(false).0,
            streams: Arc::new(tokio::sync::Semaphore::new(64)),
        }
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        self.ctx.service()
    }

    /// `GET /` (the page), `GET /events` (server-sent events) and `GET /metrics`,
    /// without any access rule: the caller layers its own.
    pub fn routes(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(page_handler))
            .route("/events", get(events_handler))
            .route("/metrics", get(metrics_handler))
            .with_state(self)
    }

    /// Serves the routes on `listener` behind [`crate::access::require`] with
    /// `access` (and its `login` form), until Ctrl-C or SIGTERM, on `cutover serve`'s
    /// connection handling: a request head must arrive within `header_timeout`, at
    /// most `max_connections` are open (lowered to fit the open-file limit; at the cap
    /// the oldest idle one is closed), and at most a quarter of them are event
    /// streams (503 beyond).
    pub async fn serve(
        mut self,
        listener: tokio::net::TcpListener,
        access: crate::access::Access,
        max_connections: usize,
        header_timeout: Duration,
    ) {
        let limits = crate::conns::Limits::fitted(
            crate::conns::Limits {
                max_connections,
                header_timeout,
            },
            0,
        );
        self.streams = Arc::new(tokio::sync::Semaphore::new(
            (limits.max_connections / 4).max(1),
        ));
        let token = Arc::new(access);
        let dashboard = Arc::new(self);
        let app = dashboard
            .clone()
            .routes()
            .layer(axum::middleware::from_fn_with_state(
                token.clone(),
                crate::access::require,
            ))
            .merge(crate::access::routes(token));
        let serving = crate::conns::serve(listener, app, limits, dashboard.stop.subscribe());
        tokio::pin!(serving);
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut serving => return,
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        // Stops accepting and ends the open event streams, which never end by
        // themselves; then the connections close once their responses are written.
        dashboard.stop.send_replace(true);
        let _ = tokio::time::timeout(HTTP_DRAIN, serving).await;
    }

    /// The page: 503 when the service's status cannot be read. `index`, when
    /// given, is a link back to the list of every service.
    pub async fn page(&self, index: Option<&str>) -> Response {
        let entries = AuditLog::new(self.ctx.store.dir())
            .read()
            .unwrap_or_default();
        match crate::status::status(&self.ctx).await {
            Ok(report) => render(&report, &entries, index).into_response(),
            Err(e) => (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the status of {}: {e}", self.service()),
            )
                .into_response(),
        }
    }
}

async fn page_handler(State(d): State<Arc<Dashboard>>) -> Response {
    d.page(None).await
}

async fn metrics_handler(State(d): State<Arc<Dashboard>>) -> Response {
    metrics_response(&[crate::metrics::ServiceRecords::load(&d.ctx.config)])
}

async fn events_handler(State(d): State<Arc<Dashboard>>) -> Response {
    let Ok(permit) = d.streams.clone().try_acquire_owned() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many live views are open; close some, or reload later\n",
        )
            .into_response();
    };
    let events = live_events(d.ctx.store.dir(), d.stop.subscribe()).map(move |event| {
        // The stream holds its place among the open ones until it ends.
        let _held = &permit;
        event
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `/metrics` of `services`, in the Prometheus text format.
pub fn metrics_response(services: &[crate::metrics::ServiceRecords]) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::encode_text(services),
    )
        .into_response()
}

/// The events deploys append to `state_dir` from now on, one server-sent event per
/// line, until `stop` turns true.
pub fn live_events(
    state_dir: &Path,
    mut stop: watch::Receiver<bool>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + use<> {
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tail(state_dir.join(crate::events::LOG_FILE)).take_until(Box::pin(stopped))
}

/// The lines appended to `path` from now on, one event each. A file that shrank
/// was started afresh by a new run, and is read again from its start.
fn tail(path: PathBuf) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    // A chunk per look; a line longer than a chunk is skipped (no event is that long;
    // waiting for its end would stop the tail for good).
    let at = Tail::from_end(&path).chunk(TAIL_CHUNK).budget(TAIL_CHUNK);
    let pending = std::collections::VecDeque::new();
    futures_util::stream::unfold(
        (path, at, pending),
        |(path, mut at, mut pending)| async move {
            loop {
                if let Some(line) = pending.pop_front() {
                    let event = SseEvent::default().data::<String>(line);
                    return Some((Ok(event), (path, at, pending)));
                }
                tokio::time::sleep(TAIL_EVERY).await;
                pending.extend(read_lines(&path, &mut at));
            }
        },
    )
}

/// The whole lines after `at`, moving `at` past them; none when the file cannot be
/// read (the live view is best effort: the next look tries again).
fn read_lines(path: &Path, at: &mut Tail) -> Vec<String> {
    let skipped = at.skipped();
    let lines = at.read_lines().unwrap_or_else(|e| {
        tracing::debug!(path = %path.display(), "cannot read the event log: {e}");
        Vec::new()
    });
    if at.skipped() > skipped {
        tracing::warn!(path = %path.display(), offset = at.offset(), "skipped an event line over {TAIL_CHUNK} bytes");
    }
    lines
}

/// The few lines of script: each server-sent event becomes a line of the live list,
/// and the page reloads when the run finishes, showing the new state and row.
const SCRIPT: &str = r#"
const list = document.getElementById('events');
const say = e => ({ 'started': `${e.operation} ${e.id} started`, 'step-started': `… ${e.step}`,
  'step-finished': `✓ ${e.step} ${e.ms} ms ${e.detail}`, 'step-failed': `✗ ${e.step} ${e.ms} ms ${e.error}`,
  'finished': `${e.outcome} in ${e.ms} ms; live: ${e.live}` }[e.event] ?? `[${e.source}] ${e.message}`);
new EventSource('events').onmessage = m => {
  const e = JSON.parse(m.data), li = document.createElement('li');
  if (e.level === 'debug') return;
  li.className = 'event ' + e.event; li.textContent = say(e); list.prepend(li);
  if (e.event === 'finished') setTimeout(() => location.reload(), 1000);
};
"#;

/// The page for `report` and the audit log's `entries` (oldest first); `index`, when
/// given, links back to the list of every service.
pub fn render(report: &StatusReport, entries: &[Entry], index: Option<&str>) -> Markup {
    let live = report.live.as_ref();
    let lock = report
        .lock_owner
        .as_ref()
        .map_or("free".to_owned(), |o| format!("held by {}", o.describe()));
    let body = html! {
        @if let Some(index) = index {
            div class="meta" { a id="index" href=(index) { "← every service" } }
        }
        (logout_form(index.unwrap_or("")))
        h1 { "cutover · " (report.service) }
        div class="card" id="service" data-live=(live.map_or("none", |s| s.color.as_str())) {
            b { "live" } " "
            @match live {
                Some(slot) => {
                    span id="live" class={ "badge live-" (slot.color) } { (slot.color) }
                    " since " (slot.since)
                    div class="meta" {
                        "image " code id="image" { (slot.image_ref) }
                        @if let Some(digest) = &slot.image_digest {
                            " " code { (digest) }
                        }
                        " · id " code { (short(&slot.image_id, 19)) }
                        @if let Some(sha) = live_sha(slot, entries) {
                            " · sha " code id="sha" { (sha) }
                        }
                    }
                }
                None => span id="live" class="badge" { "nothing" },
            }
            div class="meta" { "lock " span id="lock" { (lock) } }
            table id="colors" {
                tr { th { "colour" } th { "container" } th { "state" } th { "health" } th { "image" } }
                @for c in &report.colors {
                    tr data-color=(c.color) {
                        td { span class={ "badge live-" (c.color) } { (c.color) } }
                        td { code { (c.container) } }
                        td { (c.state) }
                        td class="health" { (c.health) }
                        td { code { (c.image.as_deref().unwrap_or("")) } }
                    }
                }
            }
            @for p in &report.problems {
                div class="reason problem" { (p) }
            }
        }
        @if let Some(j) = &report.interrupted {
            div class="card" id="in-progress" {
                "deploy " code { (j.deploy_id) } " at " b { (j.step) }
                " (started " (j.started_at) ")"
            }
        }
        h2 { "Live" }
        ol id="events" class="meta" {}
        h2 { "Last deploys" }
        (deploy_list(&entries[entries.len().saturating_sub(RECENT)..]))
    };
    page(&format!("cutover · {}", report.service), body, Some(SCRIPT))
}

/// The git sha of the deploy that made `slot` live, from the audit log.
fn live_sha<'a>(slot: &crate::state::Slot, entries: &'a [Entry]) -> Option<&'a str> {
    entries
        .iter()
        .rev()
        .find(|e| e.deploy_id == slot.deploy_id)
        .and_then(|e| e.git_sha.as_deref())
}

/// The log-out button, posting to `logout` at the views' root (`up` leads there).
/// Harmless without a session: it only clears the cookie.
fn logout_form(up: &str) -> Markup {
    html! {
        form id="logout" class="meta" method="post" action={ (up) "logout" } {
            button type="submit" { "log out" }
        }
    }
}

/// One service on the index page of `cutover serve`.
#[derive(Debug, Clone, Default)]
pub struct ServiceRow {
    /// The repository it is deployed from (`owner/name`).
    pub repository: String,
    /// The service its `cutover.toml` names; none when that cannot be read.
    pub service: Option<String>,
    /// The live colour the state file records.
    pub live: Option<Color>,
    /// The newest audit entry.
    pub last: Option<Entry>,
    /// What the server is doing for it now (`running`, `queued`), if anything.
    pub activity: Option<String>,
    /// Why it cannot be shown (its config cannot be read).
    pub problem: Option<String>,
}

/// A page that watches several services reloads itself rather than holding an
/// event stream per service.
const INDEX_SCRIPT: &str = "setTimeout(() => location.reload(), 10000);";

/// The index of `cutover serve`: every service with its live colour and latest
/// deploy, linked to its page at `services/<service>/`.
pub fn render_index(rows: &[ServiceRow]) -> Markup {
    let body = html! {
        (logout_form(""))
        h1 { "cutover · services" }
        div id="services" {
            @for row in rows {
                div class="card service" data-repository=(row.repository)
                    data-live=(row.live.map_or("none", Color::as_str)) {
                    @match &row.service {
                        Some(service) => b { a href={ "services/" (service) "/" } { (service) } },
                        None => b { "?" },
                    }
                    " "
                    @match row.live {
                        Some(c) => span class={ "badge live-" (c) } { (c) },
                        None => span class="badge" { "nothing live" },
                    }
                    @if let Some(activity) = &row.activity {
                        " " span class="activity" { (activity) " now" }
                    }
                    div class="meta" {
                        (row.repository)
                        @if let Some(e) = &row.last {
                            " · last: " span class={ "badge " (e.outcome.as_str()) } { (e.outcome.as_str()) }
                            " " (crate::audit::kind_name(e.kind)) " " (e.time)
                            @if let Some(sha) = &e.git_sha {
                                " sha " code { (short(sha, 12)) }
                            }
                        }
                    }
                    @if let Some(problem) = &row.problem {
                        div class="reason problem" { (problem) }
                    }
                }
            }
        }
        p class="meta" { a href="metrics" { "metrics" } }
    };
    page("cutover · services", body, Some(INDEX_SCRIPT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::html::fixtures;

    #[test]
    fn the_pages_escape_every_value_of_a_hostile_service() {
        let page = render(&fixtures::report(), &[fixtures::entry()], Some("../../"));
        let fields = [
            "cutover · service",
            "since",
            "image",
            "digest",
            "container",
            "state",
            "health",
            "problem",
            "journal",
            "started",
            "command",
            "host",
            "reason",
        ];
        // Only the page's own script runs.
        fixtures::assert_escaped(&page.into_string(), &fields, 1);
        let index = render_index(&fixtures::rows()).into_string();
        let fields = [
            "owner/repo",
            "href=\"services/service",
            "running",
            "owner/broken",
            "problem",
            "time",
        ];
        fixtures::assert_escaped(&index, &fields, 1);
    }
}

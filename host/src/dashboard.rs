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
//! It only reads. Every route is behind the caller's access rule (loopback only by
//! default, else a bearer token); nothing it renders is secret.

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;

use crate::audit::{AuditLog, Entry};
use crate::context::Context;
use crate::html::{deploy_list, esc, page};
use crate::status::StatusReport;

/// Deploys shown on the page.
const RECENT: usize = 10;

/// How often `/events` looks for new lines.
const TAIL_EVERY: Duration = Duration::from_millis(200);

/// The most a tail reads at once; the rest comes on the next look.
const TAIL_CHUNK: u64 = 256 * 1024;

/// One service's dashboard: its context (for `status`) and its state directory.
pub struct Dashboard {
    ctx: Context,
}

impl Dashboard {
    /// The dashboard of the service `ctx` was opened for.
    pub fn new(ctx: Context) -> Dashboard {
        Dashboard { ctx }
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
    /// `token`, until Ctrl-C or SIGTERM.
    ///
    /// # Errors
    /// When the listener fails.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        token: Option<crate::secret::Secret>,
    ) -> std::io::Result<()> {
        let app = Arc::new(self)
            .routes()
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(token),
                crate::access::require,
            ));
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async {
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
                _ = tokio::signal::ctrl_c() => {}
                () = term => {}
            }
        })
        .await
    }

    fn log_path(&self) -> PathBuf {
        self.ctx.store.dir().join(crate::events::LOG_FILE)
    }
}

async fn page_handler(State(d): State<Arc<Dashboard>>) -> Response {
    let entries = AuditLog::new(d.ctx.store.dir()).read().unwrap_or_default();
    match crate::status::status(&d.ctx).await {
        Ok(report) => Html(render(&report, &entries)).into_response(),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the service's status: {e}"),
        )
            .into_response(),
    }
}

async fn metrics_handler(State(d): State<Arc<Dashboard>>) -> Response {
    let records = crate::metrics::ServiceRecords::load(&d.ctx.config);
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::encode_text(&[records]),
    )
        .into_response()
}

async fn events_handler(
    State(d): State<Arc<Dashboard>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    Sse::new(tail(d.log_path())).keep_alive(KeepAlive::default())
}

/// The lines appended to `path` from now on, one event each. A file that shrank
/// was started afresh by a new run, and is read again from its start.
fn tail(path: PathBuf) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
    let pending = std::collections::VecDeque::new();
    futures_util::stream::unfold(
        (path, offset, pending),
        |(path, mut offset, mut pending)| async move {
            loop {
                if let Some(line) = pending.pop_front() {
                    let event = SseEvent::default().data::<String>(line);
                    return Some((Ok(event), (path, offset, pending)));
                }
                tokio::time::sleep(TAIL_EVERY).await;
                let (lines, next) = read_lines(&path, offset);
                offset = next;
                pending.extend(lines);
            }
        },
    )
}

/// The whole lines of `path` after `offset`, and the offset after the last one.
fn read_lines(path: &std::path::Path, offset: u64) -> (Vec<String>, u64) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (Vec::new(), 0);
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let offset = if len < offset { 0 } else { offset };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_err()
        || file.take(TAIL_CHUNK).read_to_end(&mut bytes).is_err()
    {
        return (Vec::new(), offset);
    }
    // A line still being written stays for the next look.
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let lines = String::from_utf8_lossy(&bytes[..whole])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    (lines, offset + whole as u64)
}

/// The few lines of script: each server-sent event becomes a line of the live list,
/// and the page reloads when the run finishes, showing the new state and row.
const SCRIPT: &str = r#"<script>
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
</script>
"#;

/// The page for `report` and the audit log's `entries` (oldest first).
pub fn render(report: &StatusReport, entries: &[Entry]) -> String {
    use std::fmt::Write as _;
    let mut body = format!("<h1>cutover · {}</h1>\n", esc(&report.service));
    let live = report.live.as_ref();
    let _ = write!(
        body,
        "<div class=\"card\" id=\"service\" data-live=\"{}\">\n<b>live</b> ",
        live.map_or("none", |s| s.color.as_str())
    );
    match live {
        Some(slot) => {
            let sha = entries
                .iter()
                .rev()
                .find(|e| e.deploy_id == slot.deploy_id)
                .and_then(|e| e.git_sha.as_deref());
            let _ = write!(
                body,
                "<span id=\"live\" class=\"badge live-{c}\">{c}</span> since {since}\n\
                 <div class=\"meta\">image <code id=\"image\">{image}</code>",
                c = slot.color,
                since = esc(&slot.since),
                image = esc(&slot.image_ref),
            );
            if let Some(digest) = &slot.image_digest {
                let _ = write!(body, " <code>{}</code>", esc(digest));
            }
            let _ = write!(
                body,
                " · id <code>{}</code>",
                esc(&slot.image_id[..slot.image_id.len().min(19)])
            );
            if let Some(sha) = sha {
                let _ = write!(body, " · sha <code id=\"sha\">{}</code>", esc(sha));
            }
            body.push_str("</div>\n");
        }
        None => body.push_str("<span id=\"live\" class=\"badge\">nothing</span>\n"),
    }
    let lock = report
        .lock_owner
        .as_ref()
        .map_or("free".to_owned(), |o| format!("held by {}", o.describe()));
    let _ = writeln!(
        body,
        "<div class=\"meta\">lock <span id=\"lock\">{}</span></div>",
        esc(&lock)
    );
    body.push_str(
        "<table id=\"colors\"><tr><th>colour</th><th>container</th><th>state</th><th>health</th><th>image</th></tr>\n",
    );
    for c in &report.colors {
        let _ = writeln!(
            body,
            "<tr data-color=\"{color}\"><td><span class=\"badge live-{color}\">{color}</span></td>\
             <td><code>{}</code></td><td>{}</td><td class=\"health\">{}</td><td><code>{}</code></td></tr>",
            esc(&c.container),
            esc(&c.state),
            esc(&c.health),
            esc(c.image.as_deref().unwrap_or("")),
            color = c.color,
        );
    }
    body.push_str("</table>\n");
    for p in &report.problems {
        let _ = writeln!(body, "<div class=\"reason problem\">{}</div>", esc(p));
    }
    body.push_str("</div>\n");
    if let Some(j) = &report.interrupted {
        let _ = writeln!(
            body,
            "<div class=\"card\" id=\"in-progress\">deploy <code>{}</code> at <b>{}</b> (started {})</div>",
            esc(&j.deploy_id),
            j.step,
            esc(&j.started_at)
        );
    }
    body.push_str("<h2>Live</h2>\n<ol id=\"events\" class=\"meta\"></ol>\n<h2>Last deploys</h2>\n");
    body.push_str(&deploy_list(
        &entries[entries.len().saturating_sub(RECENT)..],
    ));
    page(&format!("cutover · {}", report.service), &body, SCRIPT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_reads_whole_lines_and_restarts_a_shrunk_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let (lines, offset) = read_lines(&path, 0);
        assert_eq!(lines, ["{\"a\":1}"]);
        assert_eq!(offset, 8);
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n").unwrap();
        assert_eq!(read_lines(&path, offset).0, ["{\"b\":2}"]);
        std::fs::write(&path, "{\"c\":3}\n").unwrap();
        assert_eq!(
            read_lines(&path, 16).0,
            ["{\"c\":3}"],
            "shrank: from the start"
        );
    }
}

//! The operator's views of every repository the server deploys, the same ones
//! `cutover dashboard` serves for one service:
//! - `GET /`: every service with its live colour, its latest deploy and what the
//!   server is doing for it, linked to its page;
//! - `GET /services/<service>/`: that service's dashboard page, and
//!   `GET /services/<service>/events` its live event stream;
//! - `GET /metrics`: every service's metrics, told apart by the `service` label.
//!
//! All of them, and `GET /deploys`, follow [`crate::access`]: loopback clients, or
//! once `deploys_token_env` is set, holders of that token (a bearer header, or the
//! cookie `login` sets). `login` itself is open.
//!
//! A service's `cutover.toml` is read from its checkout on each request, since a push
//! may change it; its dashboard (the engine connection and the health and proxy
//! plugins `status` needs) is opened on the first view and again when the file
//! changes. Nothing here writes or deploys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use tokio::sync::{OnceCell, Semaphore};

use super::App;
use super::worker::Worker;
use crate::config::Config;
use crate::context::Context;
use crate::dashboard::{Dashboard, ServiceRow, live_events, metrics_response, render_index};
use crate::metrics::ServiceRecords;
use crate::plugin::{PluginHost, PluginKind};
use crate::sync::guard;

/// The dashboards opened so far, and what they need.
pub(super) struct Views {
    /// One plugin host for every dashboard, made on the first page view (a server
    /// nobody looks at never compiles a plugin).
    plugins: OnceCell<Result<PluginHost, String>>,
    /// Per repository key: the dashboard, and the config file's bytes it was
    /// opened with.
    open: Mutex<HashMap<String, Opened>>,
    /// Open event streams. Each holds a connection for as long as the page is open,
    /// so they are capped well under `max_connections`: a wall of dashboards must
    /// not keep a webhook out.
    streams: Arc<Semaphore>,
}

impl Views {
    /// At most `max_streams` event streams open at once.
    pub(super) fn new(max_streams: usize) -> Views {
        Views {
            plugins: OnceCell::new(),
            open: Mutex::new(HashMap::new()),
            streams: Arc::new(Semaphore::new(max_streams.max(1))),
        }
    }
}

/// A dashboard, and the bytes of the config file it was opened with.
type Opened = (Vec<u8>, Arc<Dashboard>);

/// The views' routes, behind the access rule, with `login` open.
pub(super) fn router(app: Arc<App>) -> Router {
    let token = app.access.clone();
    Router::new()
        .route("/", get(index))
        .route("/services/{service}", get(to_slash))
        .route("/services/{service}/", get(service_page))
        .route("/services/{service}/events", get(service_events))
        .route("/metrics", get(metrics))
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            token.clone(),
            crate::access::require,
        ))
        .merge(crate::access::routes(token))
}

/// The repositories' workers, in name order.
fn workers(app: &App) -> Vec<&Arc<Worker>> {
    let mut workers: Vec<_> = app.workers.values().collect();
    workers.sort_by(|a, b| a.repo.name.cmp(&b.repo.name));
    workers
}

/// The deploy config in `worker`'s checkout as it is now.
fn config_of(worker: &Worker) -> Result<Config, String> {
    let path = worker.checkout.join(&worker.repo.config);
    Config::load(&path).map_err(|e| e.to_string())
}

/// The worker whose config names `service`, with that config.
fn find(app: &App, service: &str) -> Option<(Arc<Worker>, Config)> {
    workers(app).into_iter().find_map(|worker| {
        let config = config_of(worker).ok()?;
        (config.service == service).then(|| (worker.clone(), config))
    })
}

fn not_found(service: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!(
            "no repository of this server deploys a service called `{service}`; the index (`/`) lists them\n"
        ),
    )
        .into_response()
}

async fn index(State(app): State<Arc<App>>) -> maud::Markup {
    let rows: Vec<ServiceRow> = workers(&app)
        .into_iter()
        .map(|worker| {
            let repository = worker.repo.name.clone();
            let activity = guard(&app.queue).activity(&repository);
            match config_of(worker) {
                Ok(config) => {
                    let records = ServiceRecords::load(&config);
                    ServiceRow {
                        repository,
                        service: Some(records.service),
                        live: records.live,
                        last: records.entries.last().cloned(),
                        activity,
                        problem: None,
                    }
                }
                Err(problem) => ServiceRow {
                    repository,
                    activity,
                    problem: Some(problem),
                    ..ServiceRow::default()
                },
            }
        })
        .collect();
    render_index(&rows)
}

/// `/services/web` → `web/`, where the page's relative links work. Only for a
/// service this server deploys, named plainly: the segment arrives percent-decoded,
/// so `%2F%2Fevil.example` would otherwise become `Location: //evil.example/`, a
/// redirect to another site.
async fn to_slash(State(app): State<Arc<App>>, Path(service): Path<String>) -> Response {
    if !plain_name(&service) || find(&app, &service).is_none() {
        return not_found(&service);
    }
    let mut response = StatusCode::PERMANENT_REDIRECT.into_response();
    if let Ok(location) = format!("{service}/").parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Whether `name` is safe as a relative redirect: letters, digits, `-`, `_` and
/// `.`, not starting with `.` (no `/`, `\`, `:` or `..` that a browser could read
/// as another host or path).
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

async fn service_page(State(app): State<Arc<App>>, Path(service): Path<String>) -> Response {
    let Some((worker, config)) = find(&app, &service) else {
        return not_found(&service);
    };
    match dashboard(&app.views, &worker, config).await {
        Ok(dashboard) => dashboard.page(Some("../../")).await,
        Err(reason) => {
            tracing::warn!(repository = %worker.repo.name, %service, error = %reason, "cannot show a service's dashboard");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot show the dashboard of `{service}`: {reason}\n"),
            )
                .into_response()
        }
    }
}

/// The dashboard of `worker`'s service, opened with `config`, or the one opened
/// before when its config file has not changed since.
async fn dashboard(
    views: &Views,
    worker: &Worker,
    config: Config,
) -> Result<Arc<Dashboard>, String> {
    let path = worker.checkout.join(&worker.repo.config);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let Some((seen, dashboard)) = guard(&views.open).get(&worker.key)
        && *seen == bytes
    {
        return Ok(dashboard.clone());
    }
    let host = views
        .plugins
        .get_or_init(|| async { PluginHost::new(None).map_err(|e| e.to_string()) })
        .await
        .as_ref()
        .map_err(Clone::clone)?;
    // What `cutover status` loads: the health policy judges each colour, the proxy
    // template says what the proxy files name.
    let ctx = Context::open(
        config,
        host,
        &[PluginKind::HealthPolicy, PluginKind::ProxyTemplate],
        Arc::new(crate::events::Silent),
    )
    .await
    .map_err(|e| e.to_string())?;
    let dashboard = Arc::new(Dashboard::new(ctx));
    guard(&views.open).insert(worker.key.clone(), (bytes, dashboard.clone()));
    Ok(dashboard)
}

async fn service_events(State(app): State<Arc<App>>, Path(service): Path<String>) -> Response {
    let Some((_, config)) = find(&app, &service) else {
        return not_found(&service);
    };
    let Ok(permit) = app.views.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live views are open on this server; close some, or reload later\n",
        )
            .into_response();
    };
    let events = live_events(&config.state_dir(), app.stop.subscribe()).map(move |event| {
        // The stream holds its place among the open ones until it ends.
        let _held = &permit;
        event
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let services: Vec<ServiceRecords> = workers(&app)
        .into_iter()
        .filter_map(|worker| match config_of(worker) {
            Ok(config) => Some(ServiceRecords::load(&config)),
            Err(error) => {
                tracing::warn!(repository = %worker.repo.name, %error, "metrics leave out a repository whose deploy config cannot be read");
                None
            }
        })
        .collect();
    metrics_response(&services)
}

#[cfg(test)]
mod tests {
    use super::plain_name;

    #[test]
    fn only_plain_service_names_are_redirected_never_another_site() {
        for good in ["web", "hello-app", "svc_2", "a.b"] {
            assert!(plain_name(good), "{good}");
        }
        for bad in [
            "",
            "//evil.example",
            "/evil",
            "\\\\evil",
            "..",
            ".x",
            "a/b",
            "https:x",
            "a b",
        ] {
            assert!(!plain_name(bad), "{bad}");
        }
    }
}

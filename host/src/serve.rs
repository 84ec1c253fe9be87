//! `cutover serve`: a webhook receiver that can replace Jenkins in the original flow.
//!
//! It accepts GitHub `push` events (`POST /hooks/github`) and a generic JSON trigger
//! (`POST /hooks/trigger`) for the repositories in its config. For each request, in
//! this order: a missing or malformed `X-Hub-Signature-256` is refused (401) before
//! the body is read; a body over `max_body_bytes` is refused (413); the HMAC-SHA256
//! of the raw body is checked in constant time (401); only then is the body parsed.
//! An unknown repository gets 404; a delivery id or a body seen before is a replay and
//! does nothing. An accepted push is queued for its repository's worker, which
//! fetches the pushed ref into the repository's checkout, checks out the pushed
//! commit (detached) and runs the normal `cutover deploy` (gate included) as a child
//! process with the push's facts in `CUTOVER_SERVE_*` variables.
//!
//! One deploy per repository runs at a time and at most one waits: a newer push
//! replaces the waiting one (which is reported as `superseded`), so a burst of pushes
//! deploys the first and the newest, never the ones in between.
//!
//! `GET /deploys` answers `{"deploys": [DeployRun, ...]}`, oldest first, the last
//! [`MAX_RUNS`]; each [`DeployRun`] is one accepted push and its fields are documented
//! on the type. `GET /healthz` answers `ok`.
//!
//! On SIGTERM/SIGINT the server stops accepting connections, drops queued pushes
//! (forgetting their delivery ids so GitHub's "Redeliver" works after a restart), and
//! waits up to `shutdown_grace` for running deploys to finish.
//!
//! The webhook secret lives only in memory (read from the environment variable the
//! config names); it is never logged and is removed from the environment of every
//! child process. Logs are `tracing` events (JSON lines on stderr from the CLI),
//! each about a job carrying its delivery id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::config::{self, ConfigError};
use crate::events::{Event, Level};
use crate::secret::Secret;

/// `cutover-serve.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The address to listen on (plain HTTP: put TLS in front when it is not loopback).
    pub listen: SocketAddr,
    /// The environment variable holding the webhook secret.
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
    /// Requests with a larger body are refused with 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Where delivery ids are remembered across restarts (relative to this file).
    #[serde(default = "default_serve_state")]
    pub state_dir: PathBuf,
    /// How long a deploy waits for the service's deploy lock (e.g. held by a CI run).
    #[serde(default = "default_lock_wait")]
    pub lock_wait: config::Duration,
    /// How long shutdown waits for running deploys before killing them.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: config::Duration,
    /// The repositories this server deploys.
    #[serde(rename = "repository")]
    pub repositories: Vec<RepoConfig>,
    /// The file this config was read from.
    #[serde(skip)]
    pub file: PathBuf,
}

/// One repository the server deploys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// The repository's full name as GitHub sends it (`owner/name`; compared
    /// without regard to case, as GitHub does).
    pub name: String,
    /// The working checkout deploys run in (relative to this file).
    pub checkout: PathBuf,
    /// The deploy config, relative to the checkout.
    #[serde(default = "default_deploy_config")]
    pub config: PathBuf,
    /// The git remote of the checkout to fetch from.
    #[serde(default = "default_remote")]
    pub remote: String,
    /// Only pushes to these refs deploy (`refs/heads/main`, or a prefix ending in
    /// `*` such as `refs/tags/*`); empty means every ref. The deploy gate still
    /// decides after that.
    #[serde(default)]
    pub refs: Vec<String>,
}

fn default_secret_env() -> String {
    "CUTOVER_WEBHOOK_SECRET".to_owned()
}
fn default_max_body() -> usize {
    // GitHub push payloads list up to 2048 commits; a few MiB covers them.
    5 * 1024 * 1024
}
fn default_serve_state() -> PathBuf {
    PathBuf::from(".cutover-serve")
}
fn default_lock_wait() -> config::Duration {
    config::Duration(Duration::from_secs(600))
}
fn default_shutdown_grace() -> config::Duration {
    config::Duration(Duration::from_secs(600))
}
fn default_deploy_config() -> PathBuf {
    PathBuf::from(config::DEFAULT_FILE)
}
fn default_remote() -> String {
    "origin".to_owned()
}

impl RepoConfig {
    /// Whether a push to `git_ref` deploys.
    pub fn wants(&self, git_ref: &str) -> bool {
        self.refs.is_empty()
            || self
                .refs
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => git_ref.starts_with(prefix),
                    None => git_ref == pattern,
                })
    }
}

impl ServeConfig {
    /// Reads and checks the server's config.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and key.
    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: ServeConfig = config::parse_toml(&text, path)?;
        config.file = path.to_owned();
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: message.to_owned(),
        };
        if config.repositories.is_empty() {
            return Err(invalid(
                "repository".to_owned(),
                "no repository is listed; add a `[[repository]]` table per repository to deploy",
            ));
        }
        if config.secret_env.is_empty() {
            return Err(invalid(
                "secret_env".to_owned(),
                "name the environment variable that holds the webhook secret",
            ));
        }
        if config.max_body_bytes == 0 {
            return Err(invalid(
                "max_body_bytes".to_owned(),
                "must be more than 0 (GitHub push payloads are up to a few MiB)",
            ));
        }
        let mut seen = HashSet::new();
        for (i, repo) in config.repositories.iter().enumerate() {
            let key = |field: &str| format!("repository[{i}].{field}");
            if repo.name.split('/').count() != 2 || repo.name.split('/').any(str::is_empty) {
                return Err(invalid(
                    key("name"),
                    "expected the repository's full name, `owner/name`",
                ));
            }
            if !seen.insert(repo.name.to_lowercase()) {
                return Err(invalid(
                    key("name"),
                    "listed twice; give each repository one entry",
                ));
            }
            // The remote is passed to `git fetch` as an argument.
            if repo.remote.is_empty() || repo.remote.starts_with('-') {
                return Err(invalid(
                    key("remote"),
                    "expected a remote name such as `origin`",
                ));
            }
            if repo.config.is_absolute() {
                return Err(invalid(
                    key("config"),
                    "expected a path relative to the checkout, e.g. `cutover.toml`",
                ));
            }
            for pattern in &repo.refs {
                if !pattern.starts_with("refs/") || pattern[..pattern.len() - 1].contains('*') {
                    return Err(invalid(
                        key("refs"),
                        "expected full refs such as `refs/heads/main`, or a prefix ending in `*` such as `refs/tags/*`",
                    ));
                }
            }
        }
        Ok(config)
    }

    fn base_dir(&self) -> &Path {
        self.file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The config is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The secret variable is missing.
    #[error(
        "environment variable `{0}` (the webhook secret, `secret_env`) is not set or empty; export it before starting `cutover serve`"
    )]
    MissingSecret(String),
    /// A repository's checkout is missing.
    #[error(
        "the checkout of `{repository}` ({}) is not a directory; clone the repository there (`git clone <url> {}`) or fix `checkout`",
        path.display(), path.display()
    )]
    Checkout {
        /// The repository.
        repository: String,
        /// The checkout directory.
        path: PathBuf,
    },
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}; pick a free address for `listen`")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The state directory cannot be used.
    #[error("cannot use the serve state directory {}: {source}; fix its permissions or `state_dir`", path.display())]
    State {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Where an accepted push is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Waiting for the repository's running deploy to end.
    Queued,
    /// Replaced by a newer push while it waited; never ran.
    Superseded,
    /// Dropped at shutdown before it ran.
    Cancelled,
    /// Its deploy is running.
    Running,
    /// Its deploy ended (see `outcome`).
    Finished,
}

/// One accepted push and what became of it: an element of `GET /deploys`.
#[derive(Debug, Clone, Serialize)]
pub struct DeployRun {
    /// The delivery id (`X-GitHub-Delivery`, or the trigger's `delivery`).
    pub delivery: String,
    /// The repository (`owner/name`).
    pub repository: String,
    /// The pushed ref (`refs/heads/main`, `refs/tags/v1-cicd`).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The pushed sha (for an annotated tag, GitHub sends the tag object's sha).
    pub sha: String,
    /// The commit checked out and deployed, once fetched.
    pub commit: Option<String>,
    /// Who pushed, when the event says.
    pub actor: Option<String>,
    /// Where it is.
    pub state: RunState,
    /// When the push was accepted (RFC 3339).
    pub received_at: String,
    /// When its deploy ended (RFC 3339).
    pub finished_at: Option<String>,
    /// Milliseconds from acceptance to the worker taking it (time spent queued).
    pub queued_ms: Option<u64>,
    /// Milliseconds from acceptance to `cutover deploy` reporting its start (lock
    /// held, gate next): the webhook-to-deploy latency.
    pub start_latency_ms: Option<u64>,
    /// The deploy id `cutover deploy` gave it (the key of the audit log entry).
    pub deploy_id: Option<String>,
    /// `cutover deploy`'s exit code (0 deployed, 3 gate denied; see the README).
    pub exit_code: Option<i32>,
    /// `succeeded`, `denied`, `failed`, `rolled-back`, or `cancelled`.
    pub outcome: Option<String>,
    /// Why it did not succeed (the gate's reason when denied).
    pub reason: Option<String>,
    #[serde(skip)]
    received: Instant,
}

/// The deploys of `GET /deploys` and the one waiting push per repository, behind one
/// lock so every snapshot shows at most one queued and one running per repository.
struct Queue {
    pending: HashMap<String, DeployRun>,
    runs: VecDeque<DeployRun>,
}

impl Queue {
    /// Inserts or updates (by delivery) a run in the recent list.
    fn record(&mut self, run: DeployRun) {
        if let Some(existing) = self.runs.iter_mut().find(|r| r.delivery == run.delivery) {
            *existing = run;
            return;
        }
        self.runs.push_back(run);
        if self.runs.len() > MAX_RUNS {
            self.runs.pop_front();
        }
    }
}

/// How many finished runs `GET /deploys` keeps.
pub const MAX_RUNS: usize = 100;
/// How many delivery ids and body digests are remembered.
const MAX_REMEMBERED: usize = 10_000;
/// A client must send its whole body within this time.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for open HTTP connections.
const HTTP_DRAIN: Duration = Duration::from_secs(10);
/// A `git fetch` that takes longer is stopped.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of a deploy's stderr is kept for the log when it fails.
const STDERR_TAIL: usize = 4096;

struct Worker {
    key: String,
    repo: RepoConfig,
    checkout: PathBuf,
    wake: Notify,
}

struct App {
    secret: Secret,
    secret_env: String,
    max_body: usize,
    workers: HashMap<String, Arc<Worker>>,
    seen: Mutex<Seen>,
    queue: Mutex<Queue>,
    cutover_bin: PathBuf,
    lock_wait: Duration,
    stop: watch::Sender<bool>,
}

/// Delivery ids and body digests already accepted, in memory and in an append-only
/// file (compacted when it doubles) so a replay after a restart is still refused.
/// Digests matter because the delivery header is not covered by the signature: a
/// captured body replayed under a new delivery id is still the same body.
struct Seen {
    keys: HashSet<String>,
    order: VecDeque<String>,
    file: PathBuf,
    lines_in_file: usize,
}

impl Seen {
    fn load(file: PathBuf) -> Result<Seen, std::io::Error> {
        let mut seen = Seen {
            keys: HashSet::new(),
            order: VecDeque::new(),
            file,
            lines_in_file: 0,
        };
        match std::fs::read_to_string(&seen.file) {
            Ok(text) => {
                for key in text.lines().filter(|l| !l.is_empty()) {
                    seen.lines_in_file += 1;
                    seen.remember(key.to_owned());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(seen)
    }

    fn remember(&mut self, key: String) -> bool {
        if !self.keys.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > MAX_REMEMBERED
            && let Some(old) = self.order.pop_front()
        {
            self.keys.remove(&old);
        }
        true
    }

    /// Records `keys`; false (recording nothing) when any was seen before.
    fn accept(&mut self, keys: &[String]) -> bool {
        if keys.iter().any(|k| self.keys.contains(k)) {
            return false;
        }
        for key in keys {
            self.remember(key.clone());
        }
        if let Err(e) = self.persist(keys) {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot record delivery ids; a replay after a restart would not be recognised");
        }
        true
    }

    /// Forgets `keys` (a push dropped before it ran may be delivered again).
    fn forget(&mut self, keys: &[String]) {
        for key in keys {
            self.keys.remove(key);
        }
        self.order.retain(|k| !keys.contains(k));
        if let Err(e) = self.rewrite() {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot rewrite the delivery ids");
        }
    }

    fn persist(&mut self, keys: &[String]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if self.lines_in_file + keys.len() > 2 * MAX_REMEMBERED {
            return self.rewrite();
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.file)?;
        let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
        file.write_all(text.as_bytes())?;
        self.lines_in_file += keys.len();
        Ok(())
    }

    fn rewrite(&mut self) -> std::io::Result<()> {
        let text: String = self.order.iter().map(|k| format!("{k}\n")).collect();
        crate::atomic_file::write(&self.file, text.as_bytes(), 0o600)
            .map_err(std::io::Error::other)?;
        self.lines_in_file = self.order.len();
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the server until SIGINT/SIGTERM, then shuts down gracefully.
///
/// # Errors
/// [`ServeError`] when the config, secret, checkouts, state directory or listen
/// address is unusable.
pub async fn run(config: ServeConfig) -> Result<(), ServeError> {
    let bin = std::env::current_exe().unwrap_or_else(|_| "cutover".into());
    Server::bind(config, bin)
        .await?
        .serve(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let wait = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = wait(SignalKind::terminate()) => {},
        () = wait(SignalKind::interrupt()) => {},
    }
}

/// A bound server: the listener, the routes and one worker per repository.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    app: Arc<App>,
    workers: tokio::task::JoinSet<()>,
    shutdown_grace: Duration,
}

impl Server {
    /// Checks the environment, binds the listen address and starts the workers;
    /// deploys run `cutover_bin deploy`.
    ///
    /// # Errors
    /// [`ServeError`] when the secret is missing, a checkout is not a directory, the
    /// state directory is unusable or the address cannot be bound.
    pub async fn bind(config: ServeConfig, cutover_bin: PathBuf) -> Result<Server, ServeError> {
        let secret = std::env::var(&config.secret_env)
            .ok()
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .ok_or_else(|| ServeError::MissingSecret(config.secret_env.clone()))?;
        let base_dir = config.base_dir().to_owned();
        let mut workers = HashMap::new();
        for repo in &config.repositories {
            let checkout = base_dir.join(&repo.checkout);
            // Absolute from here on: it is logged and passed to git and to deploys.
            let Some(checkout) = std::fs::canonicalize(&checkout).ok().filter(|p| p.is_dir())
            else {
                return Err(ServeError::Checkout {
                    repository: repo.name.clone(),
                    path: checkout,
                });
            };
            let key = repo.name.to_lowercase();
            let worker = Arc::new(Worker {
                key: key.clone(),
                repo: repo.clone(),
                checkout,
                wake: Notify::new(),
            });
            workers.insert(key, worker);
        }
        let state_dir = base_dir.join(&config.state_dir);
        let state_err = |source| ServeError::State {
            path: state_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&state_dir).map_err(state_err)?;
        let seen = Seen::load(state_dir.join("deliveries")).map_err(state_err)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: config.listen,
                source,
            })?;
        let app = Arc::new(App {
            secret,
            secret_env: config.secret_env.clone(),
            max_body: config.max_body_bytes,
            workers,
            seen: Mutex::new(seen),
            queue: Mutex::new(Queue {
                pending: HashMap::new(),
                runs: VecDeque::new(),
            }),
            cutover_bin,
            lock_wait: config.lock_wait.get(),
            stop: watch::channel(false).0,
        });
        let mut tasks = tokio::task::JoinSet::new();
        for worker in app.workers.values() {
            tasks.spawn(work(app.clone(), worker.clone()));
        }
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/deploys", get(list_deploys))
            .route("/hooks/github", post(github_hook))
            .route("/hooks/trigger", post(trigger_hook))
            .with_state(app.clone());
        Ok(Server {
            listener,
            router,
            app,
            workers: tasks,
            shutdown_grace: config.shutdown_grace.get(),
        })
    }

    /// The address the server listens on.
    ///
    /// # Errors
    /// When the socket cannot report it.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting connections, drops
    /// queued pushes and waits up to `shutdown_grace` for running deploys.
    ///
    /// # Errors
    /// [`ServeError::Listen`] when the listener fails.
    pub async fn serve(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = self.local_addr().map_err(|source| ServeError::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        tracing::info!(%addr, repositories = self.app.workers.len(), "cutover serve listening");
        let mut stopped = self.app.stop.subscribe();
        let http = axum::serve(self.listener, self.router).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        });
        let mut http = tokio::spawn(http.into_future());
        let failed = tokio::select! {
            () = shutdown => None,
            result = &mut http => Some(result),
        };
        self.app.stop.send_replace(true);
        if let Some(result) = failed {
            let source = match result {
                Ok(Ok(())) => std::io::Error::other("the HTTP server stopped"),
                Ok(Err(e)) => e,
                Err(e) => std::io::Error::other(e),
            };
            return Err(ServeError::Listen { addr, source });
        }
        tracing::info!("shutting down: no new connections; waiting for running deploys");
        if tokio::time::timeout(HTTP_DRAIN, &mut http).await.is_err() {
            http.abort();
        }
        cancel_pending(&self.app);
        let drained = tokio::time::timeout(self.shutdown_grace, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::error!(
                grace = ?self.shutdown_grace,
                "running deploys did not finish within the shutdown grace; stopping them (the next deploy or `cutover recover` reconciles)"
            );
            self.workers.shutdown().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Marks every queued push cancelled and forgets its ids so it can be delivered again.
fn cancel_pending(app: &App) {
    let dropped: Vec<DeployRun> = {
        let mut queue = lock(&app.queue);
        let dropped: Vec<DeployRun> = queue.pending.drain().map(|(_, run)| run).collect();
        for run in &dropped {
            queue.record(DeployRun {
                state: RunState::Cancelled,
                outcome: Some("cancelled".to_owned()),
                reason: Some("the server shut down before this push ran".to_owned()),
                ..run.clone()
            });
        }
        dropped
    };
    if dropped.is_empty() {
        return;
    }
    for run in &dropped {
        tracing::warn!(delivery = %run.delivery, repository = %run.repository, sha = %run.sha, "queued push dropped at shutdown; redeliver or push again");
    }
    let keys: Vec<String> = dropped.iter().map(|r| delivery_key(&r.delivery)).collect();
    lock(&app.seen).forget(&keys);
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn delivery_key(delivery: &str) -> String {
    format!("d {delivery}")
}

/// The `sha256=<hex>` header, decoded; none when missing or malformed.
fn signature_header(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get("x-hub-signature-256")?.to_str().ok()?;
    let bytes = hex::decode(value.strip_prefix("sha256=")?).ok()?;
    (bytes.len() == 32).then_some(bytes)
}

/// Whether `signature` is the HMAC-SHA256 of `body` under `secret` (constant time).
fn signature_ok(secret: &Secret, signature: &[u8], body: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(signature).is_ok()
}

/// Why a body could not be read.
enum BodyError {
    TooLarge,
    Timeout,
    Broken,
}

/// Reads at most `limit` bytes; refuses early on a larger `Content-Length`.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| BodyError::Broken)?;
            if buf.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

/// A push, from GitHub or the generic trigger.
struct Push {
    delivery: String,
    repository: String,
    git_ref: String,
    sha: String,
    actor: Option<String>,
}

/// What a verified body asks for.
enum Parsed {
    Push(Push),
    /// Answered without queueing anything (ping, other events, deleted refs).
    Reply(Response),
}

async fn github_hook(State(app): State<Arc<App>>, request: Request) -> Response {
    hook(&app, request, parse_github).await
}

async fn trigger_hook(State(app): State<Arc<App>>, request: Request) -> Response {
    hook(&app, request, parse_trigger).await
}

/// The checks every hook shares, in the documented order, then `parse` and queue.
async fn hook(
    app: &Arc<App>,
    request: Request,
    parse: fn(&HeaderMap, &[u8]) -> Result<Parsed, String>,
) -> Response {
    let (parts, body) = request.into_parts();
    let unauthorized = || {
        reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or bad X-Hub-Signature-256 (HMAC-SHA256 of the body with the shared secret)"}),
        )
    };
    let Some(signature) = signature_header(&parts.headers) else {
        tracing::warn!(path = %parts.uri.path(), "refused a request without a well-formed signature");
        return unauthorized();
    };
    let body = match read_body(&parts.headers, body, app.max_body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            tracing::warn!(path = %parts.uri.path(), limit = app.max_body, "refused a body over the size limit");
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("body over {} bytes (`max_body_bytes`)", app.max_body)}),
            );
        }
        Err(BodyError::Timeout) => {
            return reply(
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "body not received in time"}),
            );
        }
        Err(BodyError::Broken) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "the body could not be read"}),
            );
        }
    };
    if !signature_ok(&app.secret, &signature, &body) {
        tracing::warn!(path = %parts.uri.path(), "refused a request whose signature does not match its body");
        return unauthorized();
    }
    let push = match parse(&parts.headers, &body) {
        Ok(Parsed::Push(push)) => push,
        Ok(Parsed::Reply(response)) => return response,
        Err(message) => {
            tracing::warn!(path = %parts.uri.path(), error = %message, "refused a signed request that is not a usable push");
            return reply(StatusCode::BAD_REQUEST, json!({ "error": message }));
        }
    };
    let digest = format!("b {}", hex::encode(Sha256::digest(&body)));
    accept(app, push, digest)
}

fn parse_github(headers: &HeaderMap, body: &[u8]) -> Result<Parsed, String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let event = header("x-github-event").unwrap_or("");
    match event {
        "ping" => {
            return Ok(Parsed::Reply(reply(
                StatusCode::OK,
                json!({"status": "pong"}),
            )));
        }
        "push" => {}
        other => {
            return Ok(Parsed::Reply(reply(
                StatusCode::ACCEPTED,
                json!({"status": "ignored", "reason": format!("event `{other}` is not a push")}),
            )));
        }
    }
    let Some(delivery) = header("x-github-delivery") else {
        return Err("missing X-GitHub-Delivery".to_owned());
    };
    #[derive(Deserialize)]
    struct Payload {
        #[serde(rename = "ref")]
        git_ref: String,
        after: String,
        #[serde(default)]
        deleted: bool,
        repository: Repository,
        pusher: Option<Named>,
        sender: Option<Login>,
    }
    #[derive(Deserialize)]
    struct Repository {
        full_name: String,
    }
    #[derive(Deserialize)]
    struct Named {
        name: Option<String>,
    }
    #[derive(Deserialize)]
    struct Login {
        login: Option<String>,
    }
    let payload: Payload = serde_json::from_slice(body).map_err(|e| {
        format!(
            "not a GitHub push payload ({e}); set the webhook's content type to application/json"
        )
    })?;
    if payload.deleted || payload.after.bytes().all(|b| b == b'0') {
        return Ok(Parsed::Reply(reply(
            StatusCode::ACCEPTED,
            json!({"status": "ignored", "reason": "the ref was deleted"}),
        )));
    }
    Ok(Parsed::Push(Push {
        delivery: delivery.to_owned(),
        repository: payload.repository.full_name,
        git_ref: payload.git_ref,
        sha: payload.after,
        actor: payload
            .sender
            .and_then(|s| s.login)
            .or_else(|| payload.pusher.and_then(|p| p.name)),
    }))
}

fn parse_trigger(_headers: &HeaderMap, body: &[u8]) -> Result<Parsed, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Trigger {
        repository: String,
        #[serde(rename = "ref")]
        git_ref: String,
        sha: String,
        delivery: String,
        actor: Option<String>,
    }
    let t: Trigger = serde_json::from_slice(body).map_err(|e| {
        format!("expected {{\"repository\", \"ref\", \"sha\", \"delivery\", \"actor\"?}}: {e}")
    })?;
    Ok(Parsed::Push(Push {
        delivery: t.delivery,
        repository: t.repository,
        git_ref: t.git_ref,
        sha: t.sha,
        actor: t.actor,
    }))
}

/// A ref git accepts as a plain ref name and that cannot act as a refspec or option.
fn valid_ref(git_ref: &str) -> bool {
    git_ref.starts_with("refs/")
        && git_ref.len() <= 1024
        && !git_ref.ends_with(['/', '.'])
        && !git_ref.ends_with(".lock")
        && !git_ref.contains("..")
        && !git_ref.contains("//")
        && !git_ref.contains("@{")
        && git_ref
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b":?*[\\^~".contains(&b))
}

fn valid_sha(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Delivery ids are echoed in logs, files and env vars: keep them plain.
fn valid_delivery(delivery: &str) -> bool {
    (1..=128).contains(&delivery.len())
        && delivery
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn accept(app: &Arc<App>, push: Push, digest: String) -> Response {
    if !valid_sha(&push.sha) || !valid_ref(&push.git_ref) || !valid_delivery(&push.delivery) {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "expected a full hex sha, a `refs/...` ref and a delivery id of letters, digits, `-`, `_` or `.`"}),
        );
    }
    let Some(worker) = app.workers.get(&push.repository.to_lowercase()) else {
        tracing::warn!(delivery = %push.delivery, repository = %push.repository, "push for a repository that is not configured");
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("repository `{}` is not configured on this server", push.repository)}),
        );
    };
    if !worker.repo.wants(&push.git_ref) {
        tracing::info!(delivery = %push.delivery, git_ref = %push.git_ref, "push to a ref this repository does not deploy");
        return reply(
            StatusCode::ACCEPTED,
            json!({"status": "ignored", "reason": format!("`{}` is not in the repository's `refs`", push.git_ref)}),
        );
    }
    // Checked before the delivery is recorded, so GitHub may deliver it again later.
    if *app.stop.borrow() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "the server is shutting down; deliver again once it is back"}),
        );
    }
    if !lock(&app.seen).accept(&[delivery_key(&push.delivery), digest]) {
        tracing::info!(delivery = %push.delivery, "replayed delivery ignored");
        return reply(
            StatusCode::OK,
            json!({"status": "duplicate", "delivery": push.delivery}),
        );
    }
    let run = DeployRun {
        delivery: push.delivery,
        repository: worker.repo.name.clone(),
        git_ref: push.git_ref,
        sha: push.sha,
        commit: None,
        actor: push.actor,
        state: RunState::Queued,
        received_at: crate::state::now_rfc3339(),
        finished_at: None,
        queued_ms: None,
        start_latency_ms: None,
        deploy_id: None,
        exit_code: None,
        outcome: None,
        reason: None,
        received: Instant::now(),
    };
    let superseded = {
        let mut queue = lock(&app.queue);
        let old = queue.pending.insert(worker.key.clone(), run.clone());
        if let Some(old) = &old {
            queue.record(DeployRun {
                state: RunState::Superseded,
                reason: Some(format!("replaced by the newer push {}", run.delivery)),
                ..old.clone()
            });
        }
        queue.record(run.clone());
        old.map(|o| o.delivery)
    };
    worker.wake.notify_one();
    tracing::info!(
        delivery = %run.delivery,
        repository = %run.repository,
        git_ref = %run.git_ref,
        sha = %run.sha,
        superseded = superseded.as_deref(),
        "push queued"
    );
    reply(
        StatusCode::ACCEPTED,
        json!({"status": "queued", "delivery": run.delivery, "sha": run.sha}),
    )
}

async fn list_deploys(State(app): State<Arc<App>>) -> Response {
    let runs: Vec<DeployRun> = lock(&app.queue).runs.iter().cloned().collect();
    reply(StatusCode::OK, json!({ "deploys": runs }))
}

/// The worker of one repository: take the waiting push, deploy it, repeat; stop
/// taking pushes once the server is stopping.
async fn work(app: Arc<App>, worker: Arc<Worker>) {
    let mut stop = app.stop.subscribe();
    loop {
        tokio::select! {
            () = worker.wake.notified() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        loop {
            if *app.stop.borrow() {
                return;
            }
            let run = {
                let mut queue = lock(&app.queue);
                let Some(mut run) = queue.pending.remove(&worker.key) else {
                    break;
                };
                run.state = RunState::Running;
                run.queued_ms = Some(run.received.elapsed().as_millis() as u64);
                queue.record(run.clone());
                run
            };
            let span = tracing::info_span!("deploy", delivery = %run.delivery, repository = %run.repository, sha = %run.sha);
            let finished = deploy_push(&app, &worker, run).instrument(span).await;
            lock(&app.queue).record(finished);
        }
    }
}

/// Updates the run in `GET /deploys` as the deploy goes.
fn publish(app: &App, run: &DeployRun) {
    lock(&app.queue).record(run.clone());
}

/// Fetches and checks out the pushed commit, then runs `cutover deploy`.
async fn deploy_push(app: &App, worker: &Worker, mut run: DeployRun) -> DeployRun {
    tracing::info!(git_ref = %run.git_ref, queued_ms = run.queued_ms, "deploy taken from the queue");
    let result = match checkout(app, worker, &run).await {
        Ok(commit) => {
            run.commit = Some(commit);
            publish(app, &run);
            run_deploy(app, worker, &mut run).await
        }
        Err(reason) => Err(reason),
    };
    if let Err(reason) = result {
        run.outcome = Some("failed".to_owned());
        run.reason = Some(reason);
    }
    run.state = RunState::Finished;
    run.finished_at = Some(crate::state::now_rfc3339());
    macro_rules! finished {
        ($level:ident) => {
            tracing::$level!(
                deploy_id = run.deploy_id.as_deref(),
                exit_code = run.exit_code,
                outcome = run.outcome.as_deref(),
                reason = run.reason.as_deref(),
                start_latency_ms = run.start_latency_ms,
                "deploy finished"
            )
        };
    }
    // A denial is the gate doing its job; anything but that or success needs a look.
    match run.outcome.as_deref() {
        Some("succeeded" | "denied") => finished!(info),
        _ => finished!(warn),
    }
    run
}

/// `git` in the checkout, with the secret removed from its environment.
fn git(app: &App, dir: &Path) -> tokio::process::Command {
    let mut cmd = crate::git::command(dir);
    cmd.env_remove(&app.secret_env);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd
}

/// Runs git with `args`; its trimmed stdout, or a reason naming the command.
async fn run_git(app: &App, dir: &Path, args: &[&str]) -> Result<String, String> {
    let what = || format!("`git {}` in {}", args.join(" "), dir.display());
    let output = tokio::time::timeout(FETCH_TIMEOUT, git(app, dir).args(args).output())
        .await
        .map_err(|_| format!("{} took over {FETCH_TIMEOUT:?}", what()))?
        .map_err(|e| format!("cannot run {}: {e}", what()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed: {}",
            what(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Fetches the pushed ref (and tags, so the gate sees a pushed tag) and checks out
/// the pushed commit detached; returns the commit's sha.
async fn checkout(app: &App, worker: &Worker, run: &DeployRun) -> Result<String, String> {
    let dir = &worker.checkout;
    let began = Instant::now();
    run_git(
        app,
        dir,
        &[
            "fetch",
            "--quiet",
            "--force",
            "--tags",
            &worker.repo.remote,
            &run.git_ref,
        ],
    )
    .await?;
    // An annotated tag's push names the tag object; peel it to the commit.
    let commit = run_git(
        app,
        dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{}^{{commit}}", run.sha),
        ],
    )
    .await
    .map_err(|_| {
        format!(
            "the pushed sha {} is not in {} after fetching `{}` from `{}` (force-pushed away?)",
            run.sha,
            dir.display(),
            run.git_ref,
            worker.repo.remote
        )
    })?;
    run_git(
        app,
        dir,
        &["checkout", "--quiet", "--force", "--detach", &commit],
    )
    .await?;
    tracing::info!(commit = %commit, ms = began.elapsed().as_millis() as u64, "checked out");
    Ok(commit)
}

/// Runs `cutover deploy` for the checked-out commit, following its JSON events.
async fn run_deploy(app: &App, worker: &Worker, run: &mut DeployRun) -> Result<(), String> {
    let config = worker.checkout.join(&worker.repo.config);
    let tag = run.git_ref.strip_prefix("refs/tags/").unwrap_or("");
    let mut cmd = tokio::process::Command::new(&app.cutover_bin);
    // The deploy's CI facts are the webhook's, not those of a CI the server might run
    // under; removed first so that `CUTOVER_SERVE` below is set again.
    for var in crate::ci::SYSTEM_MARKERS {
        cmd.env_remove(var);
    }
    cmd.arg("--config")
        .arg(&config)
        .args(["--output", "json", "deploy", "--lock-wait"])
        .arg(format!("{}s", app.lock_wait.as_secs()))
        .env("CUTOVER_SERVE", "1")
        .env("CUTOVER_SERVE_REF", &run.git_ref)
        .env("CUTOVER_SERVE_TAG", tag)
        .env(
            "CUTOVER_SERVE_SHA",
            run.commit.as_deref().unwrap_or(&run.sha),
        )
        .env("CUTOVER_SERVE_DELIVERY", &run.delivery)
        .env("CUTOVER_SERVE_REPOSITORY", &run.repository)
        .env("CUTOVER_SERVE_ACTOR", run.actor.as_deref().unwrap_or(""))
        .env_remove(&app.secret_env)
        .env_remove("CUTOVER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C meant for the server must not kill a deploy
        // half way; the server waits for it instead.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", app.cutover_bin.display()))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("the deploy's output pipes are missing".to_owned());
    };
    // Drained concurrently with stdout so neither pipe can fill and stall the child.
    let stderr_tail = tokio::spawn(async move {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
            if text.len() > STDERR_TAIL {
                text.drain(..text.len() - STDERR_TAIL);
            }
        }
        String::from_utf8_lossy(&text).trim().to_owned()
    });
    // Read to the end whatever the bytes are: stopping early could fill the pipe and
    // stall the child.
    let mut lines = tokio::io::BufReader::new(stdout).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        // A line that is not an event (a newer child's event kind) is skipped.
        if let Ok(event) = serde_json::from_slice::<Event>(&line) {
            follow(app, run, event);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for the deploy failed: {e}"))?;
    let stderr = stderr_tail.await.unwrap_or_default();
    run.exit_code = status.code();
    if run.outcome.is_none() {
        run.outcome = Some(
            if status.success() {
                "succeeded"
            } else {
                "failed"
            }
            .to_owned(),
        );
    }
    if !status.success() && run.reason.is_none() {
        run.reason = Some(if stderr.is_empty() {
            format!("`cutover deploy` ended with {status}")
        } else {
            stderr.clone()
        });
    }
    if !stderr.is_empty() {
        tracing::warn!(stderr = %stderr, "the deploy wrote to stderr");
    }
    Ok(())
}

/// Takes in one event of the child deploy: logs it and updates the run.
fn follow(app: &App, run: &mut DeployRun, event: Event) {
    match event {
        Event::Started { id, .. } => {
            run.deploy_id = Some(id);
            run.start_latency_ms = Some(run.received.elapsed().as_millis() as u64);
            publish(app, run);
            tracing::info!(
                deploy_id = run.deploy_id.as_deref(),
                start_latency_ms = run.start_latency_ms,
                "deploy started"
            );
        }
        Event::StepStarted { .. } => {}
        Event::StepFinished { step, ms, detail } => {
            tracing::info!(step = %step, ms, detail, "step finished");
        }
        Event::StepFailed { step, ms, error } => {
            tracing::warn!(step = %step, ms, error, "step failed");
        }
        Event::Log {
            level,
            source,
            message,
        } => match level {
            Level::Error => tracing::error!(source, "{message}"),
            Level::Warn => tracing::warn!(source, "{message}"),
            Level::Info => tracing::info!(source, "{message}"),
            Level::Debug => tracing::debug!(source, "{message}"),
        },
        Event::Finished {
            outcome, reason, ..
        } => {
            run.outcome = Some(outcome.as_str().to_owned());
            run.reason = reason;
        }
        Event::Error { error } => {
            run.outcome = Some("failed".to_owned());
            run.reason = Some(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    #[test]
    fn signature_is_checked_against_the_raw_body() {
        let secret = Secret::new("s3cret".to_owned());
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut headers = HeaderMap::new();
        let good = format!("sha256={}", hex::encode(sign(b"s3cret", body)));
        headers.insert("x-hub-signature-256", good.parse().unwrap());
        let signature = signature_header(&headers).unwrap();
        assert!(signature_ok(&secret, &signature, body));
        assert!(!signature_ok(&secret, &signature, b"{}"), "other body");
        let other = sign(b"other secret", body);
        assert!(!signature_ok(&secret, &other, body), "other secret");
        for bad in ["sha256=00", "sha1=abcd", "sha256=zz", &good[7..]] {
            headers.insert("x-hub-signature-256", bad.parse().unwrap());
            assert_eq!(signature_header(&headers), None, "{bad}");
        }
        headers.remove("x-hub-signature-256");
        assert_eq!(signature_header(&headers), None, "missing");
    }

    #[test]
    fn deliveries_and_bodies_are_remembered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deliveries");
        let keys = |d: &str, b: &str| [format!("d {d}"), format!("b {b}")];
        let mut seen = Seen::load(file.clone()).unwrap();
        assert!(seen.accept(&keys("a", "1")));
        assert!(!seen.accept(&keys("a", "2")), "same delivery");
        assert!(!seen.accept(&keys("c", "1")), "same body, new delivery id");
        let mut again = Seen::load(file.clone()).unwrap();
        assert!(!again.accept(&keys("a", "3")));
        assert!(again.accept(&keys("b", "4")));
        again.forget(&["d b".to_owned()]);
        let mut third = Seen::load(file).unwrap();
        assert!(
            third.accept(&keys("b", "5")),
            "a forgotten delivery is accepted again"
        );
    }

    #[test]
    fn seen_file_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deliveries");
        let mut seen = Seen::load(file.clone()).unwrap();
        for i in 0..(MAX_REMEMBERED + 10) {
            assert!(seen.accept(&[format!("d {i}")]));
        }
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        assert!(lines <= 2 * MAX_REMEMBERED, "{lines}");
        let seen = Seen::load(file).unwrap();
        assert_eq!(seen.order.len(), MAX_REMEMBERED);
        assert!(!seen.keys.contains("d 0"), "the oldest are forgotten");
    }

    #[test]
    fn refs_and_shas_that_could_act_as_options_or_refspecs_are_refused() {
        assert!(valid_ref("refs/heads/main"));
        assert!(valid_ref("refs/tags/v1.2-cicd"));
        assert!(valid_ref("refs/heads/feature/login"));
        for bad in [
            "main",
            "--upload-pack=x",
            "refs/heads/a:refs/heads/b",
            "refs/heads/../x",
            "refs/heads/x y",
            "refs/heads/*",
            "refs/heads/a@{1}",
            "refs/heads/x.lock",
            "refs/heads/",
        ] {
            assert!(!valid_ref(bad), "{bad}");
        }
        assert!(valid_sha(&"a".repeat(40)));
        assert!(!valid_sha("abc1234"), "short shas are ambiguous");
        assert!(!valid_sha(&format!("-{}", "a".repeat(39))));
        assert!(valid_delivery("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert!(!valid_delivery("a\nb"));
        assert!(!valid_delivery(""));
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_declared_or_streamed() {
        let mut headers = HeaderMap::new();
        let body = || Body::from(vec![b'x'; 101]);
        assert!(matches!(read_body(&headers, body(), 101).await, Ok(b) if b.len() == 101));
        assert!(matches!(
            read_body(&headers, body(), 100).await,
            Err(BodyError::TooLarge)
        ));
        headers.insert("content-length", "1000000".parse().unwrap());
        let never = Body::from_stream(futures_util::stream::pending::<
            Result<Vec<u8>, std::io::Error>,
        >());
        assert!(
            matches!(
                read_body(&headers, never, 100).await,
                Err(BodyError::TooLarge)
            ),
            "refused on the declared length, before reading"
        );
    }

    #[test]
    fn ref_filter() {
        let repo = RepoConfig {
            name: "team/app".to_owned(),
            checkout: PathBuf::from("/srv/app"),
            config: default_deploy_config(),
            remote: default_remote(),
            refs: vec!["refs/heads/main".to_owned(), "refs/tags/*".to_owned()],
        };
        assert!(repo.wants("refs/heads/main"));
        assert!(repo.wants("refs/tags/v1-cicd"));
        assert!(!repo.wants("refs/heads/main2"));
        assert!(!repo.wants("refs/heads/feature"));
        let all = RepoConfig {
            refs: vec![],
            ..repo
        };
        assert!(all.wants("refs/heads/feature"));
    }

    #[test]
    fn config_names_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        let check = |text: &str, key: &str| {
            std::fs::write(&path, text).unwrap();
            let err = ServeConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        };
        let head = "listen = \"127.0.0.1:9000\"\n";
        check(
            &format!("{head}[[repository]]\nname = \"app\"\ncheckout = \"/srv/app\"\n"),
            "repository[0].name",
        );
        check(&format!("{head}port = 1\nrepository = []\n"), "port");
        check(&format!("{head}repository = []\n"), "repository");
        check(
            &format!(
                "{head}[[repository]]\nname = \"a/b\"\ncheckout = \"x\"\nremote = \"--upload-pack=x\"\n"
            ),
            "repository[0].remote",
        );
        check(
            &format!("{head}[[repository]]\nname = \"a/b\"\ncheckout = \"x\"\nrefs = [\"main\"]\n"),
            "repository[0].refs",
        );
        check(
            &format!(
                "{head}[[repository]]\nname = \"a/b\"\ncheckout = \"x\"\n[[repository]]\nname = \"A/B\"\ncheckout = \"y\"\n"
            ),
            "repository[1].name",
        );
    }
}

//! `cutover serve`: a webhook receiver that can replace Jenkins in the original flow.
//!
//! It accepts GitHub `push` events and a generic JSON trigger for the repositories in
//! its config, checks the `X-Hub-Signature-256` HMAC of the raw body in constant time
//! before parsing anything, ignores replayed deliveries, then fetches the pushed sha
//! into that repository's checkout and runs the normal `cutover deploy` (gate
//! included) as a child process. One deploy per repository runs at a time; while one
//! runs, a newer event replaces any older queued one.
//!
//! The webhook secret lives only in memory (from an environment variable); it is
//! never logged and is removed from the environment of every child process.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::Notify;

use crate::config::{self, ConfigError};
use crate::secret::Secret;

/// `cutover-serve.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The address to listen on.
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
    /// Wait this long for a service's deploy lock (e.g. held by a CI run).
    #[serde(default = "default_lock_wait")]
    pub lock_wait: config::Duration,
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
    /// The repository's full name as GitHub sends it (`owner/name`).
    pub name: String,
    /// The working checkout deploys run in.
    pub checkout: PathBuf,
    /// The deploy config, relative to the checkout.
    #[serde(default = "default_deploy_config")]
    pub config: PathBuf,
    /// The git remote to fetch from.
    #[serde(default = "default_remote")]
    pub remote: String,
}

fn default_secret_env() -> String {
    "CUTOVER_WEBHOOK_SECRET".to_owned()
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_serve_state() -> PathBuf {
    PathBuf::from(".cutover-serve")
}
fn default_lock_wait() -> config::Duration {
    config::Duration(std::time::Duration::from_secs(600))
}
fn default_deploy_config() -> PathBuf {
    PathBuf::from(config::DEFAULT_FILE)
}
fn default_remote() -> String {
    "origin".to_owned()
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
        let mut seen = HashSet::new();
        for (i, repo) in config.repositories.iter().enumerate() {
            if !repo.name.contains('/') {
                return Err(invalid(
                    format!("repository[{i}].name"),
                    "expected the repository's full name, `owner/name`",
                ));
            }
            if !seen.insert(repo.name.clone()) {
                return Err(invalid(
                    format!("repository[{i}].name"),
                    "listed twice; give each repository one entry",
                ));
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

/// Why the server could not start.
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
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The state directory cannot be used.
    #[error("cannot use the serve state directory {}: {source}", path.display())]
    State {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A deploy the server queued or ran.
#[derive(Debug, Clone, Serialize)]
pub struct DeployRun {
    /// The delivery that triggered it.
    pub delivery: String,
    /// The repository.
    pub repository: String,
    /// The pushed ref.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The pushed sha.
    pub sha: String,
    /// `queued`, `superseded`, `running` or `finished`.
    pub state: &'static str,
    /// When the event arrived.
    pub received_at: String,
    /// When the deploy finished.
    pub finished_at: Option<String>,
    /// `cutover deploy`'s exit code.
    pub exit_code: Option<i32>,
    /// The deploy's outcome (`succeeded`, `denied`, ...), from its final event.
    pub outcome: Option<String>,
    /// The reason, when it did not succeed.
    pub reason: Option<String>,
}

/// Per-repository queue: at most one job running and one waiting.
struct Worker {
    repo: RepoConfig,
    pending: Mutex<Option<DeployRun>>,
    wake: Notify,
}

struct App {
    secret: Secret,
    secret_env: String,
    workers: HashMap<String, Arc<Worker>>,
    deliveries: Mutex<Deliveries>,
    runs: Mutex<VecDeque<DeployRun>>,
    cutover_bin: PathBuf,
    base_dir: PathBuf,
    lock_wait: std::time::Duration,
}

/// Delivery ids already accepted, remembered in memory and in a file so a replay
/// after a restart is still recognised.
struct Deliveries {
    seen: HashSet<String>,
    order: VecDeque<String>,
    file: PathBuf,
}

const MAX_DELIVERIES: usize = 10_000;
const MAX_RUNS: usize = 100;

impl Deliveries {
    fn load(file: PathBuf) -> Deliveries {
        let mut d = Deliveries {
            seen: HashSet::new(),
            order: VecDeque::new(),
            file,
        };
        if let Ok(text) = std::fs::read_to_string(&d.file) {
            for id in text.lines().filter(|l| !l.is_empty()) {
                d.remember(id.to_owned());
            }
        }
        d
    }

    fn remember(&mut self, id: String) -> bool {
        if !self.seen.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > MAX_DELIVERIES
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    /// Records `id`; false when it was seen before.
    fn accept(&mut self, id: &str) -> bool {
        if !self.remember(id.to_owned()) {
            return false;
        }
        // Rewrite the bounded list; deliveries are rare enough that this is cheap.
        let text: String = self.order.iter().map(|id| format!("{id}\n")).collect();
        let _ = crate::atomic_file::write(&self.file, text.as_bytes(), 0o600);
        true
    }
}

/// Runs the server until SIGINT/SIGTERM.
///
/// # Errors
/// [`ServeError`] when the config, secret, state directory or listen address is unusable.
pub async fn run(config: ServeConfig) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let app = build(
        config,
        std::env::current_exe().unwrap_or_else(|_| "cutover".into()),
    )?;
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "cutover serve listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|source| ServeError::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })
}

async fn shutdown_signal() {
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// Builds the router and starts one worker per repository.
///
/// # Errors
/// [`ServeError`] when the secret is missing or the state directory is unusable.
pub fn build(config: ServeConfig, cutover_bin: PathBuf) -> Result<Router, ServeError> {
    let secret = std::env::var(&config.secret_env)
        .ok()
        .filter(|s| !s.is_empty())
        .map(Secret::new)
        .ok_or_else(|| ServeError::MissingSecret(config.secret_env.clone()))?;
    let base_dir = config.base_dir().to_owned();
    let state_dir = base_dir.join(&config.state_dir);
    std::fs::create_dir_all(&state_dir).map_err(|source| ServeError::State {
        path: state_dir.clone(),
        source,
    })?;
    let workers = config
        .repositories
        .iter()
        .map(|repo| {
            let worker = Arc::new(Worker {
                repo: repo.clone(),
                pending: Mutex::new(None),
                wake: Notify::new(),
            });
            (repo.name.clone(), worker)
        })
        .collect();
    let app = Arc::new(App {
        secret,
        secret_env: config.secret_env.clone(),
        workers,
        deliveries: Mutex::new(Deliveries::load(state_dir.join("deliveries"))),
        runs: Mutex::new(VecDeque::new()),
        cutover_bin,
        base_dir,
        lock_wait: config.lock_wait.get(),
    });
    for worker in app.workers.values() {
        tokio::spawn(work(app.clone(), worker.clone()));
    }
    Ok(Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/deploys", get(list_deploys))
        .route("/hooks/github", post(github_hook))
        .route("/hooks/trigger", post(generic_hook))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(app))
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Checks `sha256=<hex>` against the HMAC of `body` in constant time.
fn signature_ok(secret: &Secret, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(header) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(Ok(expected)) = header.strip_prefix("sha256=").map(hex::decode) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// A push, from GitHub or the generic trigger.
struct Push {
    repository: String,
    git_ref: String,
    sha: String,
    actor: Option<String>,
}

async fn github_hook(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if !signature_ok(&app.secret, &headers, &body) {
        tracing::warn!("rejected a webhook with a missing or bad signature");
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or bad X-Hub-Signature-256"}),
        );
    }
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let delivery = headers
        .get("x-github-delivery")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match event {
        "ping" => return reply(StatusCode::OK, json!({"status": "pong"})),
        "push" => {}
        other => {
            return reply(
                StatusCode::ACCEPTED,
                json!({"status": "ignored", "event": other}),
            );
        }
    }
    #[derive(Deserialize)]
    struct Payload {
        #[serde(rename = "ref")]
        git_ref: String,
        after: String,
        #[serde(default)]
        deleted: bool,
        repository: Repository,
        pusher: Option<Pusher>,
    }
    #[derive(Deserialize)]
    struct Repository {
        full_name: String,
    }
    #[derive(Deserialize)]
    struct Pusher {
        name: Option<String>,
    }
    let payload: Payload = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("not a push payload: {e}")}),
            );
        }
    };
    if payload.deleted || payload.after.bytes().all(|b| b == b'0') {
        return reply(
            StatusCode::ACCEPTED,
            json!({"status": "ignored", "reason": "ref deleted"}),
        );
    }
    let push = Push {
        repository: payload.repository.full_name,
        git_ref: payload.git_ref,
        sha: payload.after,
        actor: payload.pusher.and_then(|p| p.name),
    };
    accept(&app, delivery, push)
}

async fn generic_hook(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if !signature_ok(&app.secret, &headers, &body) {
        tracing::warn!("rejected a trigger with a missing or bad signature");
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or bad X-Hub-Signature-256"}),
        );
    }
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
    let trigger: Trigger = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("expected {{\"repository\", \"ref\", \"sha\", \"delivery\"}}: {e}")}),
            );
        }
    };
    let push = Push {
        repository: trigger.repository,
        git_ref: trigger.git_ref,
        sha: trigger.sha,
        actor: trigger.actor,
    };
    accept(&app, trigger.delivery, push)
}

fn accept(app: &Arc<App>, delivery: String, push: Push) -> Response {
    let valid_sha =
        (7..=64).contains(&push.sha.len()) && push.sha.bytes().all(|b| b.is_ascii_hexdigit());
    let valid_ref = push.git_ref.starts_with("refs/")
        && !push.git_ref.contains("..")
        && push.git_ref.bytes().all(|b| b.is_ascii_graphic());
    if !valid_sha || !valid_ref || delivery.is_empty() {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "expected a hex sha, a `refs/...` ref and a delivery id"}),
        );
    }
    let Some(worker) = app.workers.get(&push.repository) else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("repository `{}` is not configured", push.repository)}),
        );
    };
    if !lock(&app.deliveries).accept(&delivery) {
        tracing::info!(%delivery, "replayed delivery ignored");
        return reply(
            StatusCode::OK,
            json!({"status": "duplicate", "delivery": delivery}),
        );
    }
    let run = DeployRun {
        delivery: delivery.clone(),
        repository: push.repository.clone(),
        git_ref: push.git_ref,
        sha: push.sha.clone(),
        state: "queued",
        received_at: crate::state::now_rfc3339(),
        finished_at: None,
        exit_code: None,
        outcome: None,
        reason: push.actor.map(|a| format!("pushed by {a}")),
    };
    let replaced = lock(&worker.pending).replace(run.clone());
    if let Some(old) = replaced {
        record(
            app,
            DeployRun {
                state: "superseded",
                ..old
            },
        );
    }
    record(app, run);
    worker.wake.notify_one();
    tracing::info!(%delivery, repository = %push.repository, sha = %push.sha, "deploy queued");
    reply(
        StatusCode::ACCEPTED,
        json!({"status": "queued", "delivery": delivery, "sha": push.sha}),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Inserts or updates (by delivery) a run in the recent list.
fn record(app: &App, run: DeployRun) {
    let mut runs = lock(&app.runs);
    if let Some(existing) = runs.iter_mut().find(|r| r.delivery == run.delivery) {
        *existing = run;
        return;
    }
    runs.push_back(run);
    if runs.len() > MAX_RUNS {
        runs.pop_front();
    }
}

async fn list_deploys(State(app): State<Arc<App>>) -> Response {
    let runs: Vec<DeployRun> = lock(&app.runs).iter().cloned().collect();
    reply(StatusCode::OK, json!({ "deploys": runs }))
}

/// The worker loop of one repository: take the newest queued push, deploy it, repeat.
async fn work(app: Arc<App>, worker: Arc<Worker>) {
    loop {
        worker.wake.notified().await;
        loop {
            // Taken in its own statement: the guard must not live across the deploy.
            let next = lock(&worker.pending).take();
            let Some(run) = next else { break };
            let mut run = DeployRun {
                state: "running",
                ..run
            };
            record(&app, run.clone());
            tracing::info!(delivery = %run.delivery, sha = %run.sha, "deploy starting");
            let (code, outcome, reason) = deploy_push(&app, &worker.repo, &run).await;
            run.state = "finished";
            run.exit_code = code;
            run.outcome = outcome;
            run.reason = reason;
            run.finished_at = Some(crate::state::now_rfc3339());
            tracing::info!(delivery = %run.delivery, sha = %run.sha, exit_code = ?run.exit_code, outcome = ?run.outcome, "deploy finished");
            record(&app, run);
        }
    }
}

/// Fetches and checks out the pushed sha, then runs `cutover deploy`.
async fn deploy_push(
    app: &App,
    repo: &RepoConfig,
    run: &DeployRun,
) -> (Option<i32>, Option<String>, Option<String>) {
    let checkout = app.base_dir.join(&repo.checkout);
    let git = |args: Vec<String>| {
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("-C")
            .arg(&checkout)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove(&app.secret_env)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    };
    let steps = [
        vec![
            "fetch".to_owned(),
            "--force".to_owned(),
            "--tags".to_owned(),
            repo.remote.clone(),
            run.git_ref.clone(),
        ],
        vec![
            "checkout".to_owned(),
            "--force".to_owned(),
            "--detach".to_owned(),
            run.sha.clone(),
        ],
    ];
    for args in steps {
        match git(args.clone()).output().await {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
                return (
                    None,
                    Some("failed".to_owned()),
                    Some(format!("git {}: {why}", args[0])),
                );
            }
            Err(e) => {
                return (
                    None,
                    Some("failed".to_owned()),
                    Some(format!("cannot run git: {e}")),
                );
            }
        }
    }
    let tag = run.git_ref.strip_prefix("refs/tags/").unwrap_or("");
    let mut cmd = tokio::process::Command::new(&app.cutover_bin);
    cmd.arg("deploy")
        .arg("--config")
        .arg(checkout.join(&repo.config))
        .args(["--output", "json", "--lock-wait"])
        .arg(format!("{}s", app.lock_wait.as_secs()))
        .env("CUTOVER_SERVE", "1")
        .env("CUTOVER_SERVE_REF", &run.git_ref)
        .env("CUTOVER_SERVE_TAG", tag)
        .env("CUTOVER_SERVE_SHA", &run.sha)
        .env("CUTOVER_SERVE_DELIVERY", &run.delivery)
        .env_remove(&app.secret_env)
        // Facts from a CI the server itself might run under must not leak in.
        .env_remove("GITHUB_ACTIONS")
        .env_remove("GITLAB_CI")
        .env_remove("JENKINS_URL")
        .env_remove("JENKINS_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(actor) = run
        .reason
        .as_deref()
        .and_then(|r| r.strip_prefix("pushed by "))
    {
        cmd.env("CUTOVER_SERVE_ACTOR", actor);
    }
    let out = match cmd.output().await {
        Ok(out) => out,
        Err(e) => {
            return (
                None,
                Some("failed".to_owned()),
                Some(format!("cannot run {}: {e}", app.cutover_bin.display())),
            );
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "finished" || v["event"] == "error");
    let outcome = last
        .as_ref()
        .and_then(|v| v["outcome"].as_str().map(str::to_owned))
        .or_else(|| (!out.status.success()).then(|| "failed".to_owned()));
    let reason = last.as_ref().and_then(|v| {
        v["reason"]
            .as_str()
            .or_else(|| v["error"].as_str())
            .map(str::to_owned)
    });
    (out.status.code(), outcome, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_checked_against_the_raw_body() {
        let secret = Secret::new("s3cret".to_owned());
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let mut headers = HeaderMap::new();
        headers.insert("x-hub-signature-256", good.parse().unwrap());
        assert!(signature_ok(&secret, &headers, body));
        assert!(!signature_ok(&secret, &headers, b"{}"), "other body");
        headers.insert("x-hub-signature-256", "sha256=00".parse().unwrap());
        assert!(!signature_ok(&secret, &headers, body), "bad signature");
        headers.remove("x-hub-signature-256");
        assert!(!signature_ok(&secret, &headers, body), "missing signature");
    }

    #[test]
    fn deliveries_are_remembered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deliveries");
        let mut d = Deliveries::load(file.clone());
        assert!(d.accept("a"));
        assert!(!d.accept("a"));
        let mut again = Deliveries::load(file);
        assert!(!again.accept("a"));
        assert!(again.accept("b"));
    }

    #[test]
    fn config_names_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\n[[repository]]\nname = \"app\"\ncheckout = \"/srv/app\"\n").unwrap();
        let err = ServeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("`repository[0].name`"), "{err}");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nport = 1\nrepository = []\n",
        )
        .unwrap();
        let err = ServeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("`port`"), "{err}");
    }
}

//! `cutover serve`: a webhook receiver that can replace Jenkins in the original flow.
//!
//! It accepts GitHub `push` events (`POST /hooks/github`) and a generic JSON trigger
//! (`POST /hooks/trigger`) for the repositories in its config. For each request, in
//! this order: a missing or malformed `X-Hub-Signature-256` is refused (401) before
//! the body is read; a body over `max_body_bytes` is refused (413); the HMAC-SHA256
//! of the raw body is checked in constant time (401); only then is the body parsed.
//! An unknown repository gets 404; a delivery id or a body seen before is a replay and
//! does nothing. An accepted push is queued for its repository's worker, which
//! fetches the pushed ref into the repository's checkout, reads the pushed deploy
//! config with `git show` and refuses it when it changes a pinned key (see `trust`),
//! then checks out the pushed commit (detached) and runs the normal `cutover deploy` (gate included) as a child
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
//! Connections are bounded (see `conns`): one whose request head has not arrived
//! within `header_timeout` is closed, and at most `max_connections` are open, so a
//! client holding thousands of half-sent requests can neither exhaust the server's
//! file descriptors nor keep a webhook out.
//!
//! On SIGTERM/SIGINT the server stops accepting connections, drops queued pushes
//! (forgetting their delivery ids and bodies so GitHub's "Redeliver" works after a
//! restart, as it does for a push whose fetch failed), and
//! waits up to `shutdown_grace` for running deploys to finish.
//!
//! `GET /` lists every service with its live colour; `GET /services/<service>/` is the
//! page `cutover dashboard` serves for one service (with its live event stream at
//! `events` beside it), and `GET /metrics` covers every service (see `views`).
//!
//! `GET /deploys` and those views answer loopback clients only, unless
//! `deploys_token_env` names a variable holding a bearer token; then every client must
//! send it, or the cookie `GET /login`'s form sets (401 otherwise).
//!
//! The webhook secret and the bearer token live only in memory (read from the
//! environment variables the config names); they are never logged and are removed
//! from the environment of every child process. Logs are `tracing` events (JSON lines on stderr from the CLI),
//! each about a job carrying its delivery id.

mod auth;
mod config;
mod http;
mod push;
mod queue;
mod replay;
mod trust;
mod views;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tokio::sync::{Notify, watch};

pub use config::{RepoConfig, ServeConfig};
pub use queue::{DeployRun, MAX_RUNS, RunState};

use crate::config::ConfigError;
use crate::secret::Secret;
use crate::sync::guard;
use queue::Queue;
use replay::Seen;
use worker::{Worker, work};

/// The accept queue asked for (see [`listen`]).
const ACCEPT_BACKLOG: u32 = 4096;
/// How long shutdown waits for open HTTP connections.
const HTTP_DRAIN: Duration = Duration::from_secs(10);

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
    /// The bearer token variable is missing.
    #[error(
        "environment variable `{0}` (the bearer token for `GET /deploys`, `deploys_token_env`) is not set or empty; export it, or remove `deploys_token_env` to keep `GET /deploys` loopback-only"
    )]
    MissingToken(String),
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
    /// A repository's trusted deploy config cannot be read.
    #[error("repository `{repository}`: {source}")]
    Trust {
        /// The repository.
        repository: String,
        /// Why.
        source: trust::TrustError,
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

/// What the routes and the workers share.
struct App {
    secret: Secret,
    /// Who may read `GET /deploys` and the views: loopback clients naming a loopback
    /// or allowed host, or holders of the token.
    access: crate::access::Token,
    /// The variables holding the secrets above: removed from every child's
    /// environment.
    secret_envs: Vec<String>,
    max_body: usize,
    workers: HashMap<String, Arc<Worker>>,
    seen: Mutex<Seen>,
    queue: Mutex<Queue>,
    cutover_bin: PathBuf,
    lock_wait: Duration,
    stop: watch::Sender<bool>,
    /// The dashboards of the services.
    views: views::Views,
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
    limits: crate::conns::Limits,
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
        let secret = env_secret(&config.secret_env)
            .ok_or_else(|| ServeError::MissingSecret(config.secret_env.clone()))?;
        let deploys_token = config
            .deploys_token_env
            .as_ref()
            .map(|name| env_secret(name).ok_or_else(|| ServeError::MissingToken(name.clone())))
            .transpose()?;
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
            let trust = trust::Trust::new(
                repo.pinned.clone(),
                repo.trusted_config.as_ref().map(|p| base_dir.join(p)),
                &checkout.join(&repo.config),
            )
            .map_err(|source| ServeError::Trust {
                repository: repo.name.clone(),
                source,
            })?;
            let key = repo.name.to_lowercase();
            let worker = Arc::new(Worker {
                key: key.clone(),
                repo: repo.clone(),
                checkout,
                trust,
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
        let listener = listen(config.listen).map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
        let limits = crate::conns::Limits::fitted(
            crate::conns::Limits {
                max_connections: config.max_connections,
                header_timeout: config.header_timeout.get(),
            },
            config.repositories.len(),
        );
        let access = crate::access::Access::new(deploys_token, &config.allowed_hosts)
            .map(Arc::new)
            .map_err(state_err)?;
        let app = Arc::new(App {
            secret,
            access,
            secret_envs: std::iter::once(&config.secret_env)
                .chain(&config.deploys_token_env)
                .cloned()
                .collect(),
            max_body: config.max_body_bytes,
            workers,
            seen: Mutex::new(seen),
            queue: Mutex::new(Queue::default()),
            cutover_bin,
            lock_wait: config.lock_wait.get(),
            stop: watch::channel(false).0,
            // A quarter of the connections at most: the rest stay for webhooks.
            views: views::Views::new(limits.max_connections / 4),
        });
        let mut tasks = tokio::task::JoinSet::new();
        for worker in app.workers.values() {
            tasks.spawn(work(app.clone(), worker.clone()));
        }
        let router = http::router(app.clone());
        Ok(Server {
            listener,
            router,
            limits,
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
    /// [`ServeError::Listen`] when the listening socket cannot report its address.
    pub async fn serve(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = self.local_addr().map_err(|source| ServeError::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        tracing::info!(
            %addr,
            repositories = self.app.workers.len(),
            max_connections = self.limits.max_connections,
            header_timeout = ?self.limits.header_timeout,
            "cutover serve listening"
        );
        let mut http = tokio::spawn(crate::conns::serve(
            self.listener,
            self.router,
            self.limits,
            self.app.stop.subscribe(),
        ));
        shutdown.await;
        self.app.stop.send_replace(true);
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

/// The variable `name` as a secret; none when it is unset or empty.
fn env_secret(name: &str) -> Option<Secret> {
    std::env::var(name)
        .ok()
        .filter(|s| !s.is_empty())
        .map(Secret::new)
}

/// Binds `addr` with a long accept queue: during a connection flood a webhook's
/// connection waits in it rather than having its SYN dropped and retried a second
/// later (tokio's `TcpListener::bind` asks for 1024; the kernel caps either at
/// `net.core.somaxconn`).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart may rebind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Marks every queued push cancelled and forgets it so it can be delivered again.
fn cancel_pending(app: &App) {
    let dropped = guard(&app.queue).cancel_pending();
    for run in &dropped {
        tracing::warn!(delivery = %run.delivery, repository = %run.repository, sha = %run.sha, "queued push dropped at shutdown; redeliver or push again");
    }
    forget(app, &dropped);
}

/// Forgets the delivery ids and body digests of `runs`, pushes that did not run: a
/// redelivery of one (GitHub's "Redeliver" sends the same body) is then accepted,
/// whereas one that ran stays a duplicate.
fn forget(app: &App, runs: &[DeployRun]) {
    if runs.is_empty() {
        return;
    }
    let keys: Vec<String> = runs.iter().flat_map(DeployRun::replay_keys).collect();
    guard(&app.seen).forget(&keys);
}

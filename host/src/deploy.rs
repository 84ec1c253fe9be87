//! The blue/green state machine: `deploy` and `rollback` (recovering what a killed
//! runner left half done is in [`crate::recover`]).
//!
//! A deploy runs `gate → image → select → clear → start → health → render → validate
//! → switch → verify → drain → retire → prune → record`. Every step is journaled in
//! the state file before and after it runs. Policy comes from the plugins; every side
//! effect goes through [`Docker`], [`Proxy`] and the state store. The invariants:
//! - before the switch, a failure removes what this deploy started and leaves the live
//!   colour and the proxy files untouched;
//! - a proxy config that fails its test is never loaded;
//! - a failure at verify restores the previous proxy files, reloads, and reports the
//!   deploy as rolled back;
//! - the live colour is never stopped before traffic has moved off it and drained.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Color;
use crate::ci::CiFacts;
use crate::config::{Config, ConfigError};
use crate::docker::{self, ContainerSpec, Docker, DockerError, RegistryAuth};
use crate::events::{Event, Level, Reporter};
use crate::fault;
use crate::git::{GitError, GitFacts};
use crate::health::{self, HealthError, Prober, VerifyError, VerifySpec};
use crate::lock::{DeployLock, LockError, Owner};
use crate::plugin::{PluginError, PluginHost, PluginKind, Plugins, types};
use crate::proxy::{Proxy, ProxyError};
use crate::secret::Secret;
use crate::state::{
    DeployRecord, Journal, OperationKind, Outcome, Phase, SavedFile, Slot, State, StateError,
    StateStore, Step, StepTiming, now_rfc3339,
};

/// How an error should be reported and which exit code it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The config file or a value derived from it is wrong: the user edits the config.
    Config,
    /// Another deploy holds the lock.
    LockHeld,
    /// Docker, nginx or git is missing or unreachable: the machine needs fixing.
    Environment,
    /// The deploy failed (app, plugin, health, verify) and the previous colour still
    /// serves.
    DeployFailed,
    /// Something failed and cutover could not put things back: a human must look.
    Critical,
}

/// Why a command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The config is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state file cannot be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// The lock is held or unusable.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A Docker operation failed.
    #[error(transparent)]
    Docker(Box<DockerError>),
    /// A proxy operation failed.
    #[error(transparent)]
    Proxy(Box<ProxyError>),
    /// A plugin failed or refused.
    #[error(transparent)]
    Plugin(Box<PluginError>),
    /// The target never became healthy.
    #[error(transparent)]
    Health(Box<HealthError>),
    /// The proxy did not serve the target after the switch.
    #[error(transparent)]
    Verify(Box<VerifyError>),
    /// git could not be run.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A required environment variable (e.g. the registry password) is missing.
    #[error(
        "environment variable `{var}` (named by `{key}` in {}) is not set; export it before running cutover",
        file.display()
    )]
    MissingEnv {
        /// The variable.
        var: String,
        /// The config key naming it.
        key: String,
        /// The config file.
        file: std::path::PathBuf,
    },
    /// A plugin or the state asked for something unsafe.
    #[error("{0}")]
    Refused(String),
    /// A failure, plus a second failure while undoing it.
    #[error(
        "{error}; then, while putting things back: {cleanup}. Run `cutover status` and fix by hand"
    )]
    CleanupFailed {
        /// The first failure.
        error: Box<DeployError>,
        /// What failed while undoing it.
        cleanup: String,
    },
}

/// Boxed so that every `Result<_, DeployError>` stays small on the happy path.
macro_rules! boxed_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for DeployError {
            fn from(error: $ty) -> DeployError {
                DeployError::$variant(Box::new(error))
            }
        }
    )*};
}

boxed_from!(
    Docker(DockerError),
    Proxy(ProxyError),
    Plugin(PluginError),
    Health(HealthError),
    Verify(VerifyError),
);

impl DeployError {
    /// The class that decides the exit code and the advice.
    pub fn class(&self) -> ErrorClass {
        match self {
            DeployError::Config(_) | DeployError::MissingEnv { .. } => ErrorClass::Config,
            DeployError::Lock(LockError::Held { .. }) => ErrorClass::LockHeld,
            DeployError::Lock(_) | DeployError::State(_) | DeployError::Git(_) => {
                ErrorClass::Environment
            }
            DeployError::Docker(e) if e.is_environment() => ErrorClass::Environment,
            DeployError::Proxy(e) if e.is_environment() => ErrorClass::Environment,
            DeployError::Plugin(e) if e.is_config_error() => ErrorClass::Config,
            DeployError::CleanupFailed { .. } => ErrorClass::Critical,
            _ => ErrorClass::DeployFailed,
        }
    }
}

/// Options of `cutover deploy`.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// How long to wait for another deploy's lock.
    pub lock_wait: Duration,
    /// Build arguments that override `image.build.args`.
    pub build_args: BTreeMap<String, String>,
    /// Deploy this image reference instead of what the config says.
    pub image: Option<String>,
}

/// How a deploy or rollback ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployReport {
    /// The deploy id.
    pub id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The colour deployed to, once selected.
    pub target: Option<Color>,
    /// The colour serving afterwards.
    pub live: Option<Color>,
    /// The image deployed.
    pub image_ref: Option<String>,
    /// Why it did not succeed.
    pub reason: Option<String>,
    /// The class of the failure, when it failed.
    pub error_class: Option<ErrorClass>,
    /// Step timings.
    pub steps: Vec<StepTiming>,
}

/// Everything a command needs: the config and the handles to the world.
pub struct Context {
    /// The deploy config.
    pub config: Config,
    /// The Docker engine.
    pub docker: Docker,
    /// The loaded policy plugins.
    pub plugins: Plugins,
    /// The proxy.
    pub proxy: Proxy,
    /// The state file.
    pub store: StateStore,
    /// Where events go.
    pub reporter: Arc<dyn Reporter>,
}

impl Context {
    /// Connects to Docker and loads the plugins named by `config`.
    ///
    /// # Errors
    /// [`DeployError`] when Docker is unreachable or a plugin cannot be loaded or
    /// rejects its config.
    pub async fn open(
        config: Config,
        plugin_host: &PluginHost,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Context, DeployError> {
        let plugins = Plugins::load(plugin_host, &config, &PluginKind::ALL, reporter.clone())?;
        let docker = Docker::connect().await?;
        let proxy = Proxy::new(&config);
        let store = StateStore::new(&config.state_dir(), &config.service);
        Ok(Context {
            config,
            docker,
            plugins,
            proxy,
            store,
            reporter,
        })
    }

    /// Takes the service's deploy lock for `operation`, reporting a takeover from a
    /// holder that died.
    ///
    /// # Errors
    /// [`DeployError::Lock`] when another live process holds it after `wait`.
    pub async fn lock(
        &self,
        operation: &str,
        wait: Duration,
        run_url: Option<String>,
    ) -> Result<DeployLock, DeployError> {
        self.store.ensure_dir()?;
        let owner = Owner::this_process(operation, run_url);
        let lock = DeployLock::acquire(self.store.dir(), self.service(), owner, wait).await?;
        if let Some(dead) = &lock.taken_over {
            self.reporter.log(
                Level::Warn,
                &format!(
                    "took over the deploy lock left by {} (that process is gone)",
                    dead.describe()
                ),
            );
        }
        Ok(lock)
    }

    fn service(&self) -> &str {
        &self.config.service
    }

    /// What each slot really is, for the selector and for `status`.
    pub async fn slot_statuses(&self) -> Result<Vec<types::SlotStatus>, DeployError> {
        let mut slots = Vec::with_capacity(2);
        for color in Color::BOTH {
            let name = docker::container_name(self.service(), color);
            let info = self.docker.inspect_container(&name).await?;
            let last_probe = match &info {
                Some(c) if c.running => self.probe_once(color).await,
                _ => types::ProbeVerdict::Unknown,
            };
            slots.push(types::SlotStatus {
                color: color.into(),
                container_present: info.is_some(),
                running: info.as_ref().is_some_and(|c| c.running),
                image: info.map(|c| c.image),
                last_probe,
            });
        }
        Ok(slots)
    }

    /// One probe of `color`, judged by the health policy as if it were the first.
    pub async fn probe_once(&self, color: Color) -> types::ProbeVerdict {
        let prober = Prober::new(self.config.upstream(color), &self.config.health);
        let probe = prober.probe().await;
        let input = types::HealthInput {
            service: self.service().to_owned(),
            color: color.into(),
            attempt: 1,
            elapsed_ms: 0,
            probe,
            history: Vec::new(),
        };
        match self.plugins.health().and_then(|h| h.evaluate(&input)) {
            Ok(types::HealthVerdict::Healthy) => types::ProbeVerdict::Healthy,
            _ => types::ProbeVerdict::Unhealthy,
        }
    }

    /// The gate's input from the checkout beside the config and the CI environment.
    pub fn gate_input(&self, git: &GitFacts, ci: &CiFacts) -> types::GateInput {
        crate::gate::gate_input(self.service(), git, ci)
    }

    /// The proxy-template input for sending traffic to `target`.
    pub fn template_input(&self, target: Color, previous: Option<Color>) -> types::TemplateInput {
        let upstream = |color: Color| {
            let addr = self.config.upstream(color);
            types::Upstream {
                color: color.into(),
                address: addr.ip().to_string(),
                port: addr.port(),
            }
        };
        types::TemplateInput {
            service: self.service().to_owned(),
            target: upstream(target),
            previous: previous.map(upstream),
            variables: self
                .config
                .proxy
                .variables
                .iter()
                .map(|(k, v)| types::KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        }
    }

    /// Renders and checks the proxy files for `target`.
    ///
    /// # Errors
    /// [`DeployError`] when the plugin fails or its output is refused.
    pub fn render(
        &self,
        target: Color,
        previous: Option<Color>,
    ) -> Result<Vec<types::ProxyFile>, DeployError> {
        // The plugin host has already checked the files with `proxy::check_rendered`.
        Ok(self
            .plugins
            .template()?
            .render(&self.template_input(target, previous))?)
    }

    /// The registry credentials, when a registry is configured.
    fn registry_auth(&self) -> Result<Option<RegistryAuth>, DeployError> {
        let Some(registry) = &self.config.image.registry else {
            return Ok(None);
        };
        let password = std::env::var(&registry.password_env)
            .ok()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| DeployError::MissingEnv {
                var: registry.password_env.clone(),
                key: "image.registry.password_env".to_owned(),
                file: self.config.file.clone(),
            })?;
        Ok(Some(RegistryAuth {
            server: registry.server.clone(),
            username: registry.username.clone(),
            password: Secret::new(password),
        }))
    }
}

/// A fresh deploy id: sortable by time, unique enough across runners.
pub fn new_deploy_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "");
    // Nanoseconds and the pid separate two runs started in the same second.
    let salt = (now.subsec_nanos() ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("{stamp}-{salt:04x}")
}

/// One running deploy or rollback: its journal, timings and the lock it holds.
struct Run<'a> {
    ctx: &'a Context,
    /// Held for the whole run; released (and its lease renewal stopped) on drop.
    _lock: DeployLock,
    state: State,
    journal: Journal,
    /// The colour live when the run started.
    from: Option<Color>,
    started: Instant,
}

impl<'a> Run<'a> {
    async fn start(
        ctx: &'a Context,
        kind: OperationKind,
        lock_wait: Duration,
        run_url: Option<String>,
    ) -> Result<Run<'a>, DeployError> {
        let operation = match kind {
            OperationKind::Deploy => "deploy",
            OperationKind::Rollback => "rollback",
        };
        let lock = ctx.lock(operation, lock_wait, run_url).await?;
        let mut state = ctx.store.load()?;
        if state.in_progress.is_some() {
            crate::recover::reconcile(ctx, &mut state).await?;
        }
        let id = new_deploy_id();
        ctx.reporter.emit(&Event::Started {
            id: id.clone(),
            service: ctx.service().to_owned(),
            operation: operation.to_owned(),
        });
        let journal = Journal {
            deploy_id: id,
            kind,
            started_at: now_rfc3339(),
            owner: format!("{} pid {}", lock.owner().host, lock.owner().pid),
            step: Step::Gate,
            phase: Phase::Started,
            target: None,
            container: None,
            image_id: None,
            image_ref: None,
            saved_files: None,
            written_files: None,
            steps: Vec::new(),
        };
        Ok(Run {
            ctx,
            _lock: lock,
            from: state.live.as_ref().map(|s| s.color),
            state,
            journal,
            started: Instant::now(),
        })
    }

    /// Journals `step` as started and emits its event.
    fn begin(&mut self, step: Step) -> Result<Instant, DeployError> {
        self.journal.step = step;
        self.journal.phase = Phase::Started;
        self.save()?;
        fault::point(fault::When::Before, step);
        self.ctx.reporter.emit(&Event::StepStarted { step });
        Ok(Instant::now())
    }

    /// Records `step` as finished (or emits its failure).
    fn end<T>(
        &mut self,
        step: Step,
        began: Instant,
        result: Result<T, DeployError>,
        detail: impl FnOnce(&T) -> String,
    ) -> Result<T, DeployError> {
        let ms = began.elapsed().as_millis() as u64;
        self.journal.steps.push(StepTiming { step, ms });
        match result {
            Ok(value) => {
                // Not written here: the next step's `begin` (or the final record)
                // persists it. Recovery treats a step journaled as started as
                // possibly done, so this saves an fsync pair per step at no risk.
                self.journal.phase = Phase::Finished;
                fault::point(fault::When::After, step);
                self.ctx.reporter.emit(&Event::StepFinished {
                    step,
                    ms,
                    detail: detail(&value),
                });
                Ok(value)
            }
            Err(error) => {
                self.ctx.reporter.emit(&Event::StepFailed {
                    step,
                    ms,
                    error: error.to_string(),
                });
                Err(error)
            }
        }
    }

    fn save(&mut self) -> Result<(), DeployError> {
        self.state.in_progress = Some(self.journal.clone());
        self.ctx.store.save(&self.state)?;
        Ok(())
    }

    /// Closes the journal with a record and emits the final event.
    fn finish(
        mut self,
        outcome: Outcome,
        reason: Option<String>,
        error_class: Option<ErrorClass>,
    ) -> Result<DeployReport, DeployError> {
        let record = DeployRecord {
            id: self.journal.deploy_id.clone(),
            kind: self.journal.kind,
            started_at: self.journal.started_at.clone(),
            finished_at: now_rfc3339(),
            image_ref: self.journal.image_ref.clone(),
            from: self.from,
            to: self.journal.target,
            outcome,
            reason: reason.clone(),
            steps: self.journal.steps.clone(),
        };
        self.state.in_progress = None;
        self.state
            .push_record(record, self.ctx.config.history.deploys);
        self.ctx.store.save(&self.state)?;
        let live = self.state.live.as_ref().map(|s| s.color);
        self.ctx.reporter.emit(&Event::Finished {
            id: self.journal.deploy_id.clone(),
            outcome,
            ms: self.started.elapsed().as_millis() as u64,
            live,
            reason: reason.clone(),
        });
        Ok(DeployReport {
            id: self.journal.deploy_id.clone(),
            outcome,
            target: self.journal.target,
            live,
            image_ref: self.journal.image_ref.clone(),
            reason,
            error_class,
            steps: self.journal.steps.clone(),
        })
    }

    /// Ends a run that failed before the switch: removes the container it started
    /// (if any) and records the failure. The live colour and proxy files were never
    /// touched on this path.
    async fn fail_before_switch(self, error: DeployError) -> Result<DeployReport, DeployError> {
        let undo = match (&self.journal.container, self.journal.kind) {
            (None, _) => Ok(()),
            (Some(name), OperationKind::Deploy) => self.ctx.docker.remove_container(name).await,
            // A rollback brought the previous colour's container back up; it goes
            // back to stopped, still there for the next attempt.
            (Some(name), OperationKind::Rollback) => {
                self.ctx
                    .docker
                    .stop_container(name, self.ctx.config.container.stop_grace.get())
                    .await
            }
        };
        if let Err(cleanup) = undo {
            return Err(DeployError::CleanupFailed {
                error: Box::new(error),
                cleanup: cleanup.to_string(),
            });
        }
        let class = error.class();
        self.finish(Outcome::Failed, Some(error.to_string()), Some(class))
    }

    /// Ends a failed run according to where it failed.
    async fn fail(self, failure: Failure) -> Result<DeployReport, DeployError> {
        match failure {
            Failure::BeforeSwitch(error) => self.fail_before_switch(error).await,
            Failure::RolledBack(error) => {
                let class = error.class();
                self.finish(Outcome::RolledBack, Some(error.to_string()), Some(class))
            }
            Failure::Fatal(error) => Err(error),
        }
    }
}

/// Runs one deploy. A failed deploy is an `Ok` report with outcome `failed` or
/// `rolled-back`; `Err` means the deploy could not run at all (config, lock,
/// environment) or could not undo a failure.
///
/// # Errors
/// [`DeployError`] as above.
pub async fn deploy(
    ctx: &Context,
    git: &GitFacts,
    ci: &CiFacts,
    options: &DeployOptions,
) -> Result<DeployReport, DeployError> {
    // A missing nginx (or reload program) is found before anything is built or started.
    ctx.proxy.preflight()?;
    let mut run = Run::start(ctx, OperationKind::Deploy, options.lock_wait, run_label(ci)).await?;
    let report = match deploy_steps(&mut run, git, ci, options).await {
        Ok(Flow::Denied(reason)) => run.finish(Outcome::Denied, Some(reason), None),
        Ok(Flow::Done) => run.finish(Outcome::Succeeded, None, None),
        Err(failure) => run.fail(failure).await,
    }?;
    audit(ctx, &report, OperationKind::Deploy, git, ci);
    Ok(report)
}

/// What names the CI run in the lock owner: its URL, else its id (a webhook
/// delivery for `cutover serve`).
fn run_label(ci: &CiFacts) -> Option<String> {
    ci.run_url().or_else(|| {
        ci.get("run-id")
            .map(|id| format!("{} run {id}", ci.system.unwrap_or("ci")))
    })
}

/// Appends the finished run to the audit log; a failure to log is a warning, never a
/// reason to report a successful deploy as failed.
fn audit(ctx: &Context, report: &DeployReport, kind: OperationKind, git: &GitFacts, ci: &CiFacts) {
    let digest = ctx
        .store
        .load()
        .ok()
        .and_then(|s| s.live)
        .filter(|live| live.deploy_id == report.id)
        .and_then(|live| live.image_digest);
    let entry = crate::audit::entry_for(report, kind, git, ci, digest);
    if let Err(e) = crate::audit::AuditLog::new(ctx.store.dir()).append(&entry) {
        ctx.reporter.log(Level::Warn, &e.to_string());
    }
}

enum Flow {
    Done,
    Denied(String),
}

/// Where a failure happened decides how it is undone.
enum Failure {
    /// Nothing user-visible changed; remove what this run started.
    BeforeSwitch(DeployError),
    /// The previous proxy config was restored.
    RolledBack(DeployError),
    /// Could not undo: surfaced as is.
    Fatal(DeployError),
}

async fn deploy_steps(
    run: &mut Run<'_>,
    git: &GitFacts,
    ci: &CiFacts,
    options: &DeployOptions,
) -> Result<Flow, Failure> {
    use Failure::BeforeSwitch as pre;
    let ctx = run.ctx;

    // gate
    let t = run.begin(Step::Gate).map_err(pre)?;
    let decision = ctx
        .plugins
        .gate()
        .and_then(|gate| gate.decide(&ctx.gate_input(git, ci)))
        .map_err(DeployError::from);
    let decision = run
        .end(Step::Gate, t, decision, |d| match d {
            types::GateDecision::Allow(r) => format!("allowed: {r}"),
            types::GateDecision::Deny(r) => format!("denied: {r}"),
        })
        .map_err(pre)?;
    if let types::GateDecision::Deny(reason) = decision {
        return Ok(Flow::Denied(reason));
    }

    // image
    let t = run.begin(Step::Image).map_err(pre)?;
    let image = prepare_image(ctx, git, &run.journal.deploy_id, options).await;
    let image = run
        .end(Step::Image, t, image, |i| i.reference.clone())
        .map_err(pre)?;
    run.journal.image_id = Some(image.id.clone());
    run.journal.image_ref = Some(image.reference.clone());

    // select
    let live = run.state.live.as_ref().map(|s| s.color);
    let t = run.begin(Step::Select).map_err(pre)?;
    let target = select_target(ctx, live).await;
    let target = run
        .end(Step::Select, t, target, |c| format!("{c}"))
        .map_err(pre)?;
    run.journal.target = Some(target);

    // clear
    let name = docker::container_name(ctx.service(), target);
    let t = run.begin(Step::Clear).map_err(pre)?;
    let cleared = ctx
        .docker
        .remove_container(&name)
        .await
        .map_err(DeployError::from);
    run.end(Step::Clear, t, cleared, |_| format!("{name} removed"))
        .map_err(pre)?;

    // start
    run.journal.container = Some(name.clone());
    let t = run.begin(Step::Start).map_err(pre)?;
    let started = start_container(ctx, target, &image, &run.journal.deploy_id).await;
    run.end(Step::Start, t, started, |id| {
        format!("{name} ({})", &id[..id.len().min(12)])
    })
    .map_err(pre)?;

    // health
    let t = run.begin(Step::Health).map_err(pre)?;
    let healthy = wait_healthy(ctx, target, &name).await;
    run.end(Step::Health, t, healthy, |r| {
        format!("healthy after {} probe(s)", r.attempts)
    })
    .map_err(pre)?;

    let previous = run.state.live.clone();
    let new_slot = Slot {
        color: target,
        image_id: image.id.clone(),
        image_ref: image.reference.clone(),
        image_digest: image.digest.clone(),
        container: name,
        upstream: ctx.config.upstream(target).to_string(),
        deploy_id: run.journal.deploy_id.clone(),
        since: String::new(),
    };
    cut_over(run, new_slot, previous).await?;
    Ok(Flow::Done)
}

/// The shared tail of deploy and rollback: render → validate → switch → verify →
/// promote → drain → retire → prune. `target` is healthy when this is called.
async fn cut_over(
    run: &mut Run<'_>,
    mut target: Slot,
    previous: Option<Slot>,
) -> Result<(), Failure> {
    use Failure::BeforeSwitch as pre;
    let ctx = run.ctx;
    let color = target.color;
    let previous_color = previous.as_ref().map(|s| s.color);

    // render
    let t = run.begin(Step::Render).map_err(pre)?;
    let files = ctx.render(color, previous_color);
    let files = run
        .end(Step::Render, t, files, |f| {
            let names: Vec<_> = f.iter().map(|f| f.path.as_str()).collect();
            names.join(", ")
        })
        .map_err(pre)?;

    // validate: write the files and test them; a failing test restores the old ones
    let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    let saved = ctx.proxy.snapshot(&paths).map_err(|e| pre(e.into()))?;
    run.journal.saved_files = Some(saved.clone());
    run.journal.written_files = Some(
        files
            .iter()
            .map(|f| SavedFile {
                path: f.path.clone(),
                contents: Some(f.contents.clone()),
            })
            .collect(),
    );
    let t = run.begin(Step::Validate).map_err(pre)?;
    let tested = ctx
        .proxy
        .write_and_test(&files, &saved)
        .await
        .map_err(DeployError::from);
    run.end(Step::Validate, t, tested, |_| {
        "config test passed".to_owned()
    })
    .map_err(pre)?;

    // switch
    let t = run.begin(Step::Switch).map_err(pre)?;
    let switched = ctx.proxy.switch().await.map_err(DeployError::from);
    let reload = match run.end(Step::Switch, t, switched, |_| format!("traffic → {color}")) {
        Ok(reload) => reload,
        Err(error) => return Err(restore_after(run, &saved, error).await),
    };

    // verify
    let t = run.begin(Step::Verify).map_err(pre)?;
    let verified = health::verify_through_proxy(
        &VerifySpec::from_config(&ctx.config, color),
        ctx.config.verify.timeout.get(),
    )
    .await
    .map_err(DeployError::from);
    if let Err(error) = run.end(Step::Verify, t, verified, |v| {
        format!("proxy serves {color} ({} request(s))", v.attempts)
    }) {
        return Err(restore_after(run, &saved, error).await);
    }

    // promote: from here on the target is live, whatever happens next
    target.since = now_rfc3339();
    run.state.previous = previous.clone();
    run.state.live = Some(target);
    run.save().map_err(Failure::Fatal)?;

    // drain
    let t = run.begin(Step::Drain).map_err(Failure::Fatal)?;
    let drained = match &previous {
        Some(_) => Some(
            ctx.proxy
                .drain(&reload, ctx.config.drain.timeout.get())
                .await,
        ),
        None => None,
    };
    run.end(Step::Drain, t, Ok::<_, DeployError>(drained), |d| {
        d.as_ref()
            .map_or_else(|| "nothing served before".to_owned(), ToString::to_string)
    })
    .map_err(Failure::Fatal)?;

    // retire
    let t = run.begin(Step::Retire).map_err(Failure::Fatal)?;
    let retired = match &previous {
        Some(old) => ctx
            .docker
            .stop_container(&old.container, ctx.config.container.stop_grace.get())
            .await
            .map(|()| format!("{} stopped", old.container))
            .map_err(DeployError::from),
        None => Ok("nothing to retire".to_owned()),
    };
    if let Err(error) = run.end(Step::Retire, t, retired, String::clone) {
        // Traffic already moved: a container that would not stop is a warning.
        ctx.reporter.log(Level::Warn, &error.to_string());
    }

    // prune
    let t = run.begin(Step::Prune).map_err(Failure::Fatal)?;
    let pruned = prune_images(ctx, &run.state).await;
    if let Err(error) = run.end(Step::Prune, t, pruned, |n| {
        format!("{n} old image(s) removed")
    }) {
        ctx.reporter.log(Level::Warn, &error.to_string());
    }
    Ok(())
}

/// After a failed switch or verify: put the previous proxy files back, reload, and
/// remove the target container if this run started it.
async fn restore_after(run: &mut Run<'_>, saved: &[SavedFile], error: DeployError) -> Failure {
    let ctx = run.ctx;
    ctx.reporter.log(
        Level::Warn,
        "restoring the previous proxy config after the failure",
    );
    if let Err(cleanup) = ctx.proxy.restore(saved).await {
        // The previous files are back but nginx would not reload: when it still
        // serves the previous colour (the failed reload never took), the deploy is
        // rolled back all the same.
        let previous = run.state.live.as_ref().map(|s| s.color);
        let still_serving = match previous {
            Some(color) if cleanup.previous_files_restored() => health::verify_through_proxy(
                &VerifySpec::from_config(&ctx.config, color),
                ctx.config.verify.timeout.get(),
            )
            .await
            .is_ok(),
            _ => false,
        };
        if !still_serving {
            return Failure::Fatal(DeployError::CleanupFailed {
                error: Box::new(error),
                cleanup: cleanup.to_string(),
            });
        }
        ctx.reporter.log(
            Level::Warn,
            &format!(
                "{cleanup}; the proxy still serves {} from the previous files",
                previous.map_or_else(String::new, |c| c.to_string())
            ),
        );
    }
    if run.journal.kind == OperationKind::Deploy
        && let Some(name) = &run.journal.container
        && let Err(cleanup) = ctx.docker.remove_container(name).await
    {
        return Failure::Fatal(DeployError::CleanupFailed {
            error: Box::new(error),
            cleanup: cleanup.to_string(),
        });
    }
    Failure::RolledBack(error)
}

/// The image a deploy runs.
#[derive(Debug, Clone)]
struct PreparedImage {
    id: String,
    reference: String,
    digest: Option<String>,
}

async fn prepare_image(
    ctx: &Context,
    git: &GitFacts,
    deploy_id: &str,
    options: &DeployOptions,
) -> Result<PreparedImage, DeployError> {
    let auth = ctx.registry_auth()?;
    let config = &ctx.config;
    let explicit = options.image.as_ref().or(config.image.reference.as_ref());
    if let Some(reference) = explicit {
        let local = ctx.docker.inspect_image(reference).await?;
        let info = match (local, &auth) {
            (Some(info), None) => info,
            _ => ctx.docker.pull_image(reference, auth.as_ref()).await?,
        };
        return Ok(PreparedImage {
            id: info.id,
            reference: reference.clone(),
            digest: info.digests.first().cloned(),
        });
    }
    let Some(build) = &config.image.build else {
        return Err(DeployError::Refused(format!(
            "{}: `image` names neither `build` nor `ref`",
            config.file.display()
        )));
    };
    let tag = match git.short_sha() {
        Some(sha) => format!("{sha}-{deploy_id}"),
        None => deploy_id.to_owned(),
    }
    .to_lowercase();
    let repo = match &config.image.registry {
        Some(registry) => format!("{}/{}", registry.server, config.service),
        None => config.service.clone(),
    };
    let reference = format!("{repo}:{tag}");
    let mut args = build.args.clone();
    args.extend(options.build_args.clone());
    // Only the service label: the legacy builder turns each label into a build step,
    // and a per-deploy label would defeat its cache for an unchanged build.
    let labels = BTreeMap::from([(docker::LABEL_SERVICE.to_owned(), config.service.clone())]);
    let context_dir = config.resolve(&build.context);
    let reporter = ctx.reporter.clone();
    let mut on_line = move |line: &str| {
        reporter.emit(&Event::Log {
            level: Level::Debug,
            source: "docker build".to_owned(),
            message: line.to_owned(),
        });
    };
    let info = ctx
        .docker
        .build_image(
            &docker::BuildRequest {
                context: &context_dir,
                dockerfile: &build.dockerfile,
                args: &args,
                tag: &reference,
                labels: &labels,
            },
            &mut on_line,
        )
        .await?;
    let digest = match &auth {
        Some(auth) => ctx.docker.push_image(&reference, auth).await?,
        None => None,
    };
    Ok(PreparedImage {
        id: info.id,
        reference,
        digest,
    })
}

async fn select_target(ctx: &Context, live: Option<Color>) -> Result<Color, DeployError> {
    let slots = ctx.slot_statuses().await?;
    let target = ctx.plugins.selector()?.select(&types::SelectorInput {
        service: ctx.service().to_owned(),
        live: live.map(Into::into),
        slots,
    })?;
    // Checked against both the record and nginx itself: a state file that lost track
    // of the live colour must not let a deploy replace the container serving traffic.
    let serving = crate::status::served_color(ctx).await;
    if Some(target) == live || Some(target) == serving {
        return Err(DeployError::Refused(format!(
            "the target-selector plugin `{}` chose `{target}`, the colour serving traffic now; \
             deploying there would take the service down. Fix the plugin or its config \
             (or run `cutover recover` if the state file lost track of the live colour)",
            ctx.plugins.selector()?.name()
        )));
    }
    Ok(target)
}

async fn start_container(
    ctx: &Context,
    color: Color,
    image: &PreparedImage,
    deploy_id: &str,
) -> Result<String, DeployError> {
    let config = &ctx.config;
    let slot = config.color(color);
    if let Some(network) = &config.container.network {
        ctx.docker.ensure_network(network, ctx.service()).await?;
    }
    let mut labels = config.container.labels.clone();
    labels.extend(docker::service_labels(
        &config.service,
        Some(color),
        deploy_id,
    ));
    let mut env: Vec<(String, String)> = config
        .container
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push(("CUTOVER_SERVICE".to_owned(), config.service.clone()));
    env.push(("CUTOVER_COLOR".to_owned(), color.to_string()));
    env.push(("CUTOVER_DEPLOY_ID".to_owned(), deploy_id.to_owned()));
    let spec = ContainerSpec {
        name: docker::container_name(&config.service, color),
        image: image.id.clone(),
        labels,
        env,
        binds: config.container.volumes.clone(),
        port: config.container.port,
        publish: slot
            .host_port
            .map(|port| SocketAddr::new(slot.host_ip, port)),
        network: config.container.network.as_ref().map(|n| n.name.clone()),
        ip: slot.ip,
        command: config.container.command.clone(),
        stop_grace: config.container.stop_grace.get(),
    };
    Ok(ctx.docker.run_container(&spec).await?)
}

async fn wait_healthy(
    ctx: &Context,
    color: Color,
    container: &str,
) -> Result<health::HealthReport, DeployError> {
    let prober = Prober::new(ctx.config.upstream(color), &ctx.config.health);
    let judge = |input: &types::HealthInput| {
        ctx.plugins
            .health()
            .and_then(|health| health.evaluate(input))
            .map_err(|e| e.to_string())
    };
    let mut still_running =
        || -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send + '_>> {
            Box::pin(async move {
                ctx.docker
                    .inspect_container(container)
                    .await
                    .map(|c| c.is_some_and(|c| c.running))
                    .map_err(|e| e.to_string())
            })
        };
    let result = health::wait_healthy(
        &prober,
        &ctx.config.health,
        ctx.service(),
        color,
        &judge,
        &mut still_running,
        ctx.reporter.as_ref(),
    )
    .await;
    match result {
        Ok(report) => Ok(report),
        Err(error) => {
            // The app's own last words are usually the fastest way to the cause.
            if let Ok(logs) = ctx.docker.container_logs(container, 20).await
                && !logs.trim().is_empty()
            {
                ctx.reporter.emit(&Event::Log {
                    level: Level::Warn,
                    source: container.to_owned(),
                    message: format!("last log lines:\n{}", logs.trim_end()),
                });
            }
            Err(error.into())
        }
    }
}

/// Removes images this tool built for the service beyond the newest `image.keep`,
/// never one a live or previous slot uses.
async fn prune_images(ctx: &Context, state: &State) -> Result<usize, DeployError> {
    let images = ctx.docker.list_service_images(ctx.service()).await?;
    let in_use: Vec<&str> = [&state.live, &state.previous]
        .into_iter()
        .flatten()
        .map(|s| s.image_id.as_str())
        .collect();
    let mut removed = 0;
    for image in images.iter().skip(ctx.config.image.keep) {
        if in_use.contains(&image.id.as_str()) {
            continue;
        }
        match ctx.docker.remove_image(&image.id).await {
            Ok(()) => removed += 1,
            Err(e) => ctx
                .reporter
                .log(Level::Warn, &format!("kept image {}: {e}", image.id)),
        }
    }
    Ok(removed)
}

/// Switches traffic back to the previous colour: restarts its container if it is
/// stopped (or recreates it from the previous image if it is gone), waits for health,
/// then runs the same switch → verify → drain path as a deploy.
///
/// # Errors
/// As [`deploy`].
pub async fn rollback(
    ctx: &Context,
    lock_wait: Duration,
    ci: &CiFacts,
) -> Result<DeployReport, DeployError> {
    ctx.proxy.preflight()?;
    let mut run = Run::start(ctx, OperationKind::Rollback, lock_wait, run_label(ci)).await?;
    let Some(back) = run.state.previous.clone() else {
        let error = DeployError::Refused(
            "nothing to roll back to: no earlier colour is recorded in the state file".to_owned(),
        );
        return run.fail_before_switch(error).await;
    };
    run.journal.target = Some(back.color);
    run.journal.image_id = Some(back.image_id.clone());
    run.journal.image_ref = Some(back.image_ref.clone());
    let report = match rollback_steps(&mut run, back).await {
        Ok(()) => run.finish(Outcome::Succeeded, None, None),
        Err(failure) => run.fail(failure).await,
    }?;
    let git = GitFacts::collect_hiding(ctx.config.base_dir(), &ctx.config.secret_env_vars())
        .unwrap_or_default();
    audit(ctx, &report, OperationKind::Rollback, &git, ci);
    Ok(report)
}

async fn rollback_steps(run: &mut Run<'_>, back: Slot) -> Result<(), Failure> {
    use Failure::BeforeSwitch as pre;
    let ctx = run.ctx;
    let color = back.color;

    // start: reuse the stopped container when it is still there
    run.journal.container = Some(back.container.clone());
    let t = run.begin(Step::Start).map_err(pre)?;
    let started = async {
        match ctx.docker.inspect_container(&back.container).await? {
            Some(c) if c.running => Ok(format!("{} already running", back.container)),
            Some(_) => {
                ctx.docker.start_container(&back.container).await?;
                Ok(format!("{} restarted", back.container))
            }
            None => {
                let image = PreparedImage {
                    id: back.image_id.clone(),
                    reference: back.image_ref.clone(),
                    digest: back.image_digest.clone(),
                };
                start_container(ctx, color, &image, &run.journal.deploy_id).await?;
                Ok(format!(
                    "{} recreated from {}",
                    back.container, back.image_ref
                ))
            }
        }
    }
    .await;
    run.end(Step::Start, t, started, String::clone)
        .map_err(pre)?;

    // health
    let t = run.begin(Step::Health).map_err(pre)?;
    let healthy = wait_healthy(ctx, color, &back.container).await;
    run.end(Step::Health, t, healthy, |r| {
        format!("healthy after {} probe(s)", r.attempts)
    })
    .map_err(pre)?;

    let previous = run.state.live.clone();
    let target = Slot {
        deploy_id: run.journal.deploy_id.clone(),
        ..back
    };
    cut_over(run, target, previous).await
}

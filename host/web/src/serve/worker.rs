//! A repository's worker: takes the waiting push, fetches it into the repository's
//! checkout, refuses it when its deploy config changes a pinned key, checks out the
//! pushed commit and runs `cutover deploy` as a child process,
//! following its JSON events to update the run. One deploy per repository at a time;
//! the child never sees the server's secrets nor the CI variables of wherever the
//! server runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::sync::Notify;
use tracing::Instrument;

use super::App;
use super::config::RepoConfig;
use super::queue::{DeployRun, RunState};
use crate::events::{Event, Level};
use crate::sync::guard;

/// A `git fetch` that takes longer is stopped.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of a deploy's stderr is kept for the log when it fails.
const STDERR_TAIL: usize = 4096;

/// One repository the server deploys, and the signal that a push is waiting for it.
pub(super) struct Worker {
    /// The repository's name, lowercased: its key in the queue.
    pub(super) key: String,
    pub(super) repo: RepoConfig,
    /// The checkout, absolute.
    pub(super) checkout: PathBuf,
    /// The deploy config keys a push may not change.
    pub(super) trust: super::trust::Trust,
    pub(super) wake: Notify,
}

/// The worker of one repository: take the waiting push, deploy it, repeat; stop
/// taking pushes once the server is stopping.
pub(super) async fn work(app: Arc<App>, worker: Arc<Worker>) {
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
            let Some(run) = guard(&app.queue).take(&worker.key) else {
                break;
            };
            let span = tracing::info_span!("deploy", delivery = %run.delivery, repository = %run.repository, sha = %run.sha);
            let finished = deploy_push(&app, &worker, run).instrument(span).await;
            guard(&app.queue).record(finished);
        }
    }
}

/// Updates the run in `GET /deploys` as the deploy goes.
fn publish(app: &App, run: &DeployRun) {
    guard(&app.queue).record(run.clone());
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
        Err(reason) => {
            // Nothing ran: once the cause is fixed (the sha pushed, the remote
            // reachable), GitHub's "Redeliver" must deploy it.
            super::forget(app, std::slice::from_ref(&run));
            tracing::info!("the push did not run; a redelivery of it will be accepted");
            Err(reason)
        }
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
    for var in &app.secret_envs {
        cmd.env_remove(var);
    }
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
    // Read from the commit, not the work tree: a refused push never reaches the
    // checkout, so what the dashboard and the next deploy read stays trusted.
    let config = worker.repo.config.to_string_lossy();
    let pushed = run_git(app, dir, &["show", &format!("{commit}:./{config}")])
        .await
        .map_err(|e| format!("cannot read the pushed deploy config: {e}"))?;
    worker
        .trust
        .check(&pushed, &format!("`{config}` at {commit}"))
        .map_err(|e| {
            tracing::warn!(commit = %commit, error = %e, "refused a push that changes a pinned key");
            e.to_string()
        })?;
    run_git(
        app,
        dir,
        &["checkout", "--quiet", "--force", "--detach", &commit],
    )
    .await?;
    tracing::info!(commit = %commit, ms = crate::operation::millis(began.elapsed()), "checked out");
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
        .env_remove("CUTOVER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C meant for the server must not kill a deploy
        // half way; the server waits for it instead.
        .process_group(0)
        .kill_on_drop(true);
    for var in &app.secret_envs {
        cmd.env_remove(var);
    }
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
            run.start_latency_ms = Some(crate::operation::millis(run.received.elapsed()));
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

//! Release hooks (`[[hook]]`): the programs a deploy runs at three points of its
//! steps, each a journaled step of its own (`hook:<name>`).
//!
//! - `before-start`: the image is ready, the target not started;
//! - `before-switch`: the target runs and is not yet judged healthy, no traffic has
//!   moved (the live colour serves while it runs: a migration here must keep the live
//!   colour working); the health step follows, so a release that needs the new
//!   schema is healthy only once its migration has run;
//! - `after-switch`: traffic moved, the old colour drained and stopped.
//!
//! A `container` hook is a one-off copy of the target's container from the image
//! being deployed ([`crate::engine::Engine::run_one_off`]); a `local` hook is a
//! program on the runner with the deploy's facts in its environment. Both are argv
//! without a shell, get `timeout`, and have their output streamed as log events
//! (`[hook:migrate] …`) with the last lines kept for the error. A failure before the
//! switch fails the deploy like a failed health check (the caller undoes the start);
//! after it, a failure is a warning.

use std::collections::VecDeque;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::run::Run;
use crate::config::{HookConfig, HookRun, HookWhen, OnFailure};
use crate::context::Context;
use crate::engine::{OneOff, PreparedImage};
use crate::error::DeployError;
use crate::events::{Event, Level};
use crate::operation::{OperationKind, Step};

/// How many of a hook's last output lines its error shows.
const TAIL: usize = 20;

/// What a hook is told about the deploy it belongs to.
pub(super) struct Facts<'a> {
    /// The colour deployed to.
    pub color: crate::Color,
    /// The image deployed.
    pub image: &'a PreparedImage,
}

/// Runs `run`'s hooks of `when`, in the order written, each as a step. A rollback
/// runs only those with `on_rollback`.
///
/// # Errors
/// The first failed hook whose `on_failure` is `abort`, as [`DeployError::Hook`].
pub(super) async fn run_all(
    run: &mut Run<'_>,
    when: HookWhen,
    facts: &Facts<'_>,
) -> Result<(), DeployError> {
    let ctx = run.ctx;
    let rollback = run.journal.kind == OperationKind::Rollback;
    let deploy_id = run.journal.deploy_id.clone();
    let env = local_env(run, facts);
    for hook in ctx
        .config
        .hooks(when)
        .filter(|h| !rollback || h.on_rollback())
    {
        let step = Step::Hook(hook.name.clone());
        let job = run_one(ctx, hook, &deploy_id, facts, &env);
        match run.step(step, job, String::clone).await {
            Ok(_) => {}
            Err(error) if hook.on_failure() == OnFailure::Warn => {
                ctx.reporter.log(
                    Level::Warn,
                    &format!("{error} (on_failure = \"warn\": going on)"),
                );
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The deploy's facts as a `local` hook's environment.
fn local_env(run: &Run<'_>, facts: &Facts<'_>) -> Vec<(&'static str, String)> {
    let git = &run.git;
    vec![
        ("CUTOVER_SERVICE", run.ctx.service().to_owned()),
        ("CUTOVER_COLOR", facts.color.to_string()),
        ("CUTOVER_IMAGE", facts.image.reference.clone()),
        ("CUTOVER_IMAGE_ID", facts.image.id.clone()),
        ("CUTOVER_DEPLOY_ID", run.journal.deploy_id.clone()),
        (
            "CUTOVER_OPERATION",
            match run.journal.kind {
                OperationKind::Deploy => "deploy",
                OperationKind::Rollback => "rollback",
            }
            .to_owned(),
        ),
        (
            "CUTOVER_PREVIOUS_COLOR",
            run.live().map(|c| c.to_string()).unwrap_or_default(),
        ),
        ("CUTOVER_GIT_SHA", git.head_sha.clone().unwrap_or_default()),
        ("CUTOVER_GIT_BRANCH", git.branch.clone().unwrap_or_default()),
    ]
}

/// Runs one hook to its end; returns the step's detail.
async fn run_one(
    ctx: &Context,
    hook: &HookConfig,
    deploy_id: &str,
    facts: &Facts<'_>,
    env: &[(&'static str, String)],
) -> Result<String, DeployError> {
    let source = Step::Hook(hook.name.clone()).to_string();
    let mut tail = VecDeque::with_capacity(TAIL);
    let reporter = ctx.reporter.clone();
    let mut on_line = |line: &str| {
        reporter.emit(&Event::Log {
            level: Level::Info,
            source: source.clone(),
            message: line.to_owned(),
        });
        if tail.len() == TAIL {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    };
    let timeout = hook.timeout.get();
    let timed_out = || {
        format!(
            "timed out after {} (hook.timeout) and was stopped",
            humantime::format_duration(timeout)
        )
    };
    // The exit code, an error of the engine, or why the hook did not end by itself.
    let ended: Result<Result<i64, DeployError>, String> = match hook.run() {
        HookRun::Container(argv) => {
            let secrets = crate::app_secrets::resolve(&ctx.config)?;
            let auth = ctx.registry_auth()?;
            let job = OneOff {
                name: &hook.name,
                color: facts.color,
                image: facts.image,
                deploy_id,
                argv,
                secrets: &secrets,
                auth: auth.as_ref(),
                timeout,
            };
            let run = ctx.engine.run_one_off(&job, &mut on_line);
            match within(ctx, &job, run).await? {
                Some(code) => Ok(Ok(code)),
                None => Err(timed_out()),
            }
        }
        HookRun::Local(argv) => {
            match tokio::time::timeout(timeout, run_local(ctx, argv, env, &mut on_line)).await {
                Ok(Ok(code)) => Ok(Ok(code)),
                Ok(Err(why)) => Err(why),
                Err(_) => Err(timed_out()),
            }
        }
    };
    let failed = |why: String| DeployError::Hook {
        name: hook.name.clone(),
        why,
        tail: tail.iter().cloned().collect(),
    };
    match ended {
        Ok(Ok(0)) => Ok("exited 0".to_owned()),
        Ok(Ok(code)) => Err(failed(format!("exited with code {code}"))),
        Ok(Err(error)) => Err(error),
        Err(why) => Err(failed(why)),
    }
}

/// Runs `argv` on the runner in the config's directory, without a shell, its stdout
/// and stderr line by line to `on_line`; returns its exit code, or why it has none.
/// The registry
/// password and webhook URLs are taken out of its environment. Dropped (timed out),
/// the program is killed.
async fn run_local(
    ctx: &Context,
    argv: &[String],
    env: &[(&'static str, String)],
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<i64, String> {
    let base = ctx.config.base_dir();
    // `./scripts/x` is the repository's; a bare `psql` is looked up on PATH.
    let program = if argv[0].contains('/') {
        base.join(&argv[0])
    } else {
        argv[0].clone().into()
    };
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&argv[1..])
        .current_dir(base)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for name in ctx.config.secret_env_vars() {
        command.env_remove(name);
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = command
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", program.display()))?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        // `next_line` is cancel safe: the branch not taken loses nothing.
        tokio::select! {
            line = stdout.next_line(), if out_open => match line {
                Ok(Some(line)) => on_line(&line),
                _ => out_open = false,
            },
            line = stderr.next_line(), if err_open => match line {
                Ok(Some(line)) => on_line(&line),
                _ => err_open = false,
            },
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("could not be waited for: {e}"))?;
    status
        .code()
        .map(i64::from)
        .ok_or_else(|| format!("was killed by a signal ({status})"))
}

/// Awaits `run`, the one-off `job`, for at most its timeout; `None` when that passed,
/// after removing what it left running (a job given up on is never run again).
///
/// # Errors
/// The engine's error from `run` or from the removal.
pub(crate) async fn within(
    ctx: &Context,
    job: &OneOff<'_>,
    run: impl std::future::Future<Output = Result<i64, crate::engine::EngineError>>,
) -> Result<Option<i64>, DeployError> {
    match tokio::time::timeout(job.timeout, run).await {
        Ok(code) => Ok(Some(code?)),
        Err(_) => {
            ctx.engine.remove_one_offs(job.deploy_id).await?;
            Ok(None)
        }
    }
}

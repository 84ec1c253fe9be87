//! A canary: after the target is healthy, it takes a growing share of the traffic,
//! step by step (`[strategy] steps`), and the analysis plugin judges each pause from
//! the real traffic nginx logged for each colour. The last step (100%) is the plain
//! switch of [`super::steps::cut_over`], so the drain and retire are the same as in
//! blue/green.
//!
//! An abort — the plugin's, a human's (`cutover abort`), a step held past its
//! deadline, or any failure — puts the files from before the canary back (one
//! reload, weight 0), waits for the canary's in-flight requests, and removes the
//! target: the same undo as a failed switch, so recovery needs no canary-only rule
//! beyond "a canary that did not reach its final switch is rolled back".

use crate::config::Upstreams;
use std::time::{Duration, Instant};

use super::run::{Failure, Run};
use super::steps;
use crate::Color;
use crate::context::Context;
use crate::control::{self, Command};
use crate::error::DeployError;
use crate::events::Level;
use crate::health::{self, ProxyAnswer};
use crate::operation::Step;
use crate::operation::millis;
use crate::plugin::types::{self, AnalysisDecision};
use crate::state::CanaryProgress;
use crate::strategy::{CanaryStep, PauseMode};
use crate::traffic::{ColorMetrics, Tail, Window};

/// How often a pause reads the access log, looks for a human's request and asks the
/// analysis plugin (an abort is acted on within this).
const POLL: Duration = Duration::from_secs(1);

/// How often a manual pause says in the log what it waits for.
const REMINDER: Duration = Duration::from_secs(30);

/// Answers without `X-Cutover-Upstream` (and no failed request) after which the
/// split check gives up on naming and says it could not check.
const UNNAMED_BEFORE_UNCHECKED: u32 = 20;

/// The wait before asking a proxy again that answered 5xx or not at all.
const BROKEN_RETRY: Duration = Duration::from_millis(50);

/// What one pause ended with, when it did not abort.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PauseEnd {
    /// The analysis plugin promoted after the pause's time.
    Judged(String),
    /// A human promoted (`cutover promote`).
    Promoted(String),
}

/// The state of a running canary that the steps share.
struct Canary {
    target: Color,
    live: Color,
    tail: Tail,
    colors: Vec<(Upstreams, Color)>,
    total: Window,
    started: Instant,
    weight: u8,
    /// A human promoted a timed pause: the remaining pauses are skipped. With
    /// `pause = "manual"` it stays false, since a promote there goes past only the
    /// pause it waits at (README, `cutover promote`).
    promoted: bool,
}

#[rustfmt::skip] // one line per step: the list is the point
/// Walks the canary's steps up to (not including) the final 100%, which the caller
/// does with [`steps::cut_over`].
pub(super) async fn canary(run: &mut Run<'_>, target: Color, live: Color) -> Result<(), Failure> {
    let ctx = run.ctx;
    let strategy = &ctx.config.strategy;
    control::clear(&ctx.config.state_dir());
    let mut canary = Canary {
        target,
        live,
        tail: Tail::from_end(&ctx.proxy.access_log()),
        colors: vec![(ctx.config.upstreams(target), target), (ctx.config.upstreams(live), live)],
        total: Window::default(),
        started: Instant::now(),
        weight: 0,
        promoted: false,
    };
    let count = strategy.steps.len();
    let manual = strategy.pause == PauseMode::Manual;
    for (index, step) in strategy.steps.iter().enumerate() {
        let waits_for_promote = manual && matches!(step, CanaryStep::Pause(_));
        set_progress(run, index, &canary, waits_for_promote).map_err(Failure::BeforeSwitch)?;
        let result = match *step {
            CanaryStep::Weight(100) => break,
            CanaryStep::Weight(weight) => set_weight(run, &mut canary, weight).await,
            CanaryStep::Pause(_) if canary.promoted => continue,
            CanaryStep::Pause(pause) => {
                run.step(Step::Canary, observe(ctx, &mut canary, index, count, pause), describe_pause).await.map(|end| {
                    canary.promoted |= !manual && matches!(end, PauseEnd::Promoted(_));
                })
            }
        };
        if let Err(error) = result {
            let saved = run.journal.saved_files.clone().unwrap_or_default();
            return steps::restore_on_error(run, &saved, Err::<(), _>(error)).await;
        }
    }
    Ok(())
}

/// Renders, tests and loads the split with `weight` percent to the target.
async fn set_weight(run: &mut Run<'_>, canary: &mut Canary, weight: u8) -> Result<(), DeployError> {
    let ctx = run.ctx;
    let (target, live) = (canary.target, canary.live);
    let sticky = ctx
        .config
        .strategy
        .sticky
        .as_ref()
        .map(crate::strategy::Sticky::nginx_variable);
    let files = ctx
        .render_to(
            run.healthy.clone(),
            target,
            Some(live),
            weight,
            sticky.as_deref(),
        )
        .await?;
    let saved = steps::journal_files(run, &files)?;
    let work = async {
        ctx.proxy.write_and_test(&files, &saved).await?;
        ctx.proxy.switch().await?;
        confirm_split(ctx, target, weight, sticky.is_some()).await
    };
    run.step(Step::Canary, work, |tries| {
        format!("{weight}% → {target}{tries}")
    })
    .await?;
    canary.weight = weight;
    Ok(())
}

/// The verify step of a weight change: requests through the proxy until one is
/// answered by the target (at 5%, about twenty), so a split that nginx loaded but
/// that never reaches the target fails here, not in the analysis. A sticky split is
/// not checked this way (every probe would carry the same, empty, key), nor a proxy
/// that does not name its upstream (external mode without `X-Cutover-Upstream`) —
/// but only one that answers: a proxy that answers 5xx or not at all is broken, and
/// the step fails at `verify.timeout` unless the target answered in between.
async fn confirm_split(
    ctx: &Context,
    target: Color,
    weight: u8,
    sticky: bool,
) -> Result<String, DeployError> {
    if sticky {
        return Ok(" (sticky: not probed)".to_owned());
    }
    let spec = health::VerifySpec::from_config(&ctx.config, target);
    let wanted = ctx.config.upstreams(target);
    let began = Instant::now();
    let timeout = ctx.config.verify.timeout.get();
    let (mut tries, mut named, mut unnamed) = (0u32, 0u32, 0u32);
    // The last 5xx or failed request, with how many there were.
    let mut broken: Option<(u32, ProxyAnswer)> = None;
    while began.elapsed() < timeout {
        tries += 1;
        match health::ask_proxy(&spec).await {
            ProxyAnswer::Named(upstream) if wanted.matches(&upstream) => {
                return Ok(format!(
                    ", target answered request {tries} through the proxy"
                ));
            }
            ProxyAnswer::Named(_) => named += 1,
            ProxyAnswer::Unnamed => unnamed += 1,
            failed @ (ProxyAnswer::ServerError { .. } | ProxyAnswer::Unreachable(_)) => {
                let count = broken.as_ref().map_or(0, |(count, _)| *count);
                broken = Some((count + 1, failed));
            }
        }
        if unnamed >= UNNAMED_BEFORE_UNCHECKED && named == 0 && broken.is_none() {
            ctx.reporter.log(
                Level::Warn,
                "the proxy names no upstream (X-Cutover-Upstream), so the split could not be checked through it",
            );
            return Ok(" (not checked: the proxy names no upstream)".to_owned());
        }
        if broken.is_some() {
            // A broken proxy answers at once; do not hammer it while it stays broken.
            tokio::time::sleep(BROKEN_RETRY.min(timeout.saturating_sub(began.elapsed()))).await;
        }
    }
    let broken = broken.map_or_else(String::new, |(count, last)| {
        format!("; {count} of them failed, the last {last}")
    });
    Err(DeployError::CanaryAborted {
        reason: format!(
            "after the switch to {weight}%, none of {tries} requests through the proxy ({}) reached {target} ({wanted}) within verify.timeout{broken}",
            spec.url
        ),
    })
}

/// Records where the canary is, so `status` (and the lock's reader) can say it.
fn set_progress(
    run: &mut Run<'_>,
    index: usize,
    canary: &Canary,
    waiting_for_promote: bool,
) -> Result<(), DeployError> {
    run.journal.canary = Some(CanaryProgress {
        step_index: index,
        weight: canary.weight,
        waiting_for_promote,
    });
    run.save()
}

fn describe_pause(end: &PauseEnd) -> String {
    match end {
        PauseEnd::Judged(why) => format!("promoted by analysis: {why}"),
        PauseEnd::Promoted(by) => format!("promoted by {by}"),
    }
}

/// Waits out one pause, reading traffic, taking a human's request and asking the
/// analysis plugin every [`POLL`]. An abort is an error; the plugin's promote only
/// counts once the pause's time is up (or, with `pause = "manual"`, never: only a
/// human's promote ends it).
async fn observe(
    ctx: &Context,
    canary: &mut Canary,
    index: usize,
    count: usize,
    pause: Duration,
) -> Result<PauseEnd, DeployError> {
    let strategy = &ctx.config.strategy;
    let manual = strategy.pause == PauseMode::Manual;
    let deadline = strategy.step_deadline.get().max(pause);
    let state_dir = ctx.config.state_dir();
    let began = Instant::now();
    let mut window = Window::default();
    let mut next_reminder = Duration::ZERO;
    loop {
        tokio::time::sleep(
            POLL.min(pause.saturating_sub(began.elapsed()))
                .max(Duration::from_millis(50)),
        )
        .await;
        let lines = canary
            .tail
            .read_lines()
            .map_err(|e| DeployError::AccessLog {
                path: ctx.proxy.access_log(),
                source: e,
            })?;
        window.add_lines(&lines, &canary.colors);
        canary.total.add_lines(&lines, &canary.colors);
        if let Some(request) = control::take(&state_dir) {
            match request.command {
                Command::Abort => {
                    return Err(DeployError::CanaryAborted {
                        reason: format!(
                            "aborted by {} with `cutover abort`{}",
                            request.by,
                            request.reason.map(|r| format!(": {r}")).unwrap_or_default()
                        ),
                    });
                }
                Command::Promote => return Ok(PauseEnd::Promoted(request.by)),
            }
        }
        // Health checks keep running during a canary: both colours, every poll.
        let probes = vec![
            ctx.probe_judged(canary.target).await,
            ctx.probe_judged(canary.live).await,
        ];
        let mut traffic = |color: Color| types::ColorTraffic {
            color: color.into(),
            this_step: metrics(&window.metrics(color)),
            whole_canary: metrics(&canary.total.metrics(color)),
        };
        let input = types::AnalysisInput {
            service: ctx.service().to_owned(),
            step_index: u32::try_from(index).unwrap_or(u32::MAX),
            step_count: u32::try_from(count).unwrap_or(u32::MAX),
            weight: canary.weight,
            step_elapsed_ms: millis(began.elapsed()),
            canary_elapsed_ms: millis(canary.started.elapsed()),
            canary: traffic(canary.target),
            baseline: traffic(canary.live),
            probes,
        };
        let elapsed = began.elapsed();
        match ctx.plugins.analysis()?.analyze(&input)? {
            AnalysisDecision::Abort(reason) => {
                return Err(DeployError::CanaryAborted {
                    reason: format!(
                        "the analysis plugin aborted at {}% ({}): {reason}",
                        canary.weight,
                        summary(&input)
                    ),
                });
            }
            AnalysisDecision::Promote if !manual && elapsed >= pause => {
                return Ok(PauseEnd::Judged(summary(&input)));
            }
            AnalysisDecision::Hold(reason) if !manual && elapsed >= deadline => {
                return Err(DeployError::CanaryAborted {
                    reason: format!(
                        "the analysis plugin still held after strategy.step_deadline ({}): {reason}",
                        humantime::format_duration(deadline)
                    ),
                });
            }
            _ => {}
        }
        if manual && elapsed >= next_reminder {
            next_reminder += REMINDER;
            ctx.reporter.log(
                Level::Info,
                &format!(
                    "canary at {}%: waiting for `cutover promote` (or `cutover abort`)",
                    canary.weight
                ),
            );
        }
    }
}

/// The host's traffic figures as the plugin contract spells them.
fn metrics(m: &ColorMetrics) -> types::TrafficMetrics {
    types::TrafficMetrics {
        requests: m.requests,
        success: m.success,
        client_errors: m.client_errors,
        server_errors: m.server_errors,
        latency_p50_us: m.latency_p50_us,
        latency_p95_us: m.latency_p95_us,
        latency_p99_us: m.latency_p99_us,
    }
}

/// One line on both colours' traffic in a step, for the log and the history.
fn summary(input: &types::AnalysisInput) -> String {
    let one = |m: &types::TrafficMetrics| {
        let ms =
            |us: Option<u64>| us.map_or_else(|| "-".to_owned(), |us| format!("{}ms", us / 1000));
        format!(
            "{} req, {} 5xx, p95 {}",
            m.requests,
            m.server_errors,
            ms(m.latency_p95_us)
        )
    };
    format!(
        "canary {}, baseline {}",
        one(&input.canary.this_step),
        one(&input.baseline.this_step)
    )
}

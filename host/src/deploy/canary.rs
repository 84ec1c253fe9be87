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

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::run::{Failure, Run};
use super::steps;
use crate::Color;
use crate::context::Context;
use crate::control::{self, Command};
use crate::error::DeployError;
use crate::events::Level;
use crate::health;
use crate::operation::Step;
use crate::state::CanaryProgress;
use crate::strategy::{CanaryStep, PauseMode};
use crate::traffic::{ColorMetrics, Tail, Window};

/// How often a pause reads the access log, looks for a human's request and asks the
/// analysis plugin (an abort is acted on within this).
const POLL: Duration = Duration::from_secs(1);

/// What one pause ended with, when it did not abort.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PauseEnd {
    /// The analysis plugin promoted after the pause's time.
    Judged(String),
    /// A human promoted (`cutover promote`).
    Promoted(String),
}

/// What the analysis plugin sees about one pause.
#[derive(Debug, Clone)]
pub struct Observation {
    /// 0-based index of the pause's step in `[strategy] steps`.
    pub step_index: usize,
    /// How many steps there are.
    pub step_count: usize,
    /// The target's share of traffic now, in percent.
    pub weight: u8,
    /// Time in this step and in the whole canary.
    pub step_elapsed: Duration,
    /// Time since the first weight step.
    pub canary_elapsed: Duration,
    /// The target's traffic in this step, then the whole canary.
    pub target_step: ColorMetrics,
    /// The live colour's traffic in this step.
    pub baseline_step: ColorMetrics,
    /// The target over the whole canary.
    pub target_total: ColorMetrics,
    /// The live colour over the whole canary.
    pub baseline_total: ColorMetrics,
    /// A health probe of each colour made just now (health checks keep running during
    /// a canary: the target first, then the live colour).
    pub probes: Vec<(Color, crate::plugin::types::ProbeResult)>,
}

/// The analysis plugin's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Go on.
    Promote,
    /// Not sure yet: wait, up to the step's deadline.
    Hold(String),
    /// Stop the canary.
    Abort(String),
}

/// The state of a running canary that the steps share.
struct Canary {
    target: Color,
    live: Color,
    tail: Tail,
    colors: HashMap<String, Color>,
    total: Window,
    /// Probes the target, then the live colour.
    probers: [(Color, health::Prober); 2],
    started: Instant,
    weight: u8,
    /// A human promoted: the remaining pauses are skipped.
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
        colors: HashMap::from([(ctx.config.upstream(target).to_string(), target), (ctx.config.upstream(live).to_string(), live)]),
        total: Window::default(),
        probers: [target, live].map(|c| (c, health::Prober::new(ctx.config.upstream(c), &ctx.config.health))),
        started: Instant::now(),
        weight: 0,
        promoted: false,
    };
    let count = strategy.steps.len();
    for (index, step) in strategy.steps.iter().enumerate() {
        set_progress(run, index, &canary, false).map_err(Failure::BeforeSwitch)?;
        let result = match *step {
            CanaryStep::Weight(100) => break,
            CanaryStep::Weight(weight) => set_weight(run, &mut canary, weight).await,
            CanaryStep::Pause(_) if canary.promoted => continue,
            CanaryStep::Pause(pause) => {
                let manual = strategy.pause == PauseMode::Manual;
                set_progress(run, index, &canary, manual).map_err(Failure::BeforeSwitch)?;
                run.step(Step::Canary, observe(ctx, &mut canary, index, count, pause), describe_pause).await.map(|end| {
                    canary.promoted |= matches!(end, PauseEnd::Promoted(_));
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
    let files = ctx.render_split(target, live, weight)?;
    let saved = steps::journal_files(run, &files)?;
    let work = async {
        ctx.proxy.write_and_test(&files, &saved).await?;
        ctx.proxy.switch().await?;
        Ok(())
    };
    run.step(Step::Canary, work, |()| format!("{weight}% → {target}")).await?;
    canary.weight = weight;
    Ok(())
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
    loop {
        tokio::time::sleep(POLL.min(pause.saturating_sub(began.elapsed())).max(Duration::from_millis(50))).await;
        let lines = canary.tail.read_lines().map_err(|e| DeployError::AccessLog {
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
        let mut probes = Vec::with_capacity(2);
        for (color, prober) in &canary.probers {
            probes.push((*color, prober.probe().await));
        }
        let observation = Observation {
            step_index: index,
            step_count: count,
            weight: canary.weight,
            step_elapsed: began.elapsed(),
            canary_elapsed: canary.started.elapsed(),
            target_step: window.metrics(canary.target),
            baseline_step: window.metrics(canary.live),
            target_total: canary.total.metrics(canary.target),
            baseline_total: canary.total.metrics(canary.live),
            probes,
        };
        let elapsed = began.elapsed();
        match ctx.analyze(&observation)? {
            Judgement::Abort(reason) => {
                return Err(DeployError::CanaryAborted {
                    reason: format!("the analysis plugin aborted at {}% ({}): {reason}", canary.weight, summary(&observation)),
                });
            }
            Judgement::Promote if !manual && elapsed >= pause => {
                return Ok(PauseEnd::Judged(summary(&observation)));
            }
            Judgement::Hold(reason) if !manual && elapsed >= deadline => {
                return Err(DeployError::CanaryAborted {
                    reason: format!(
                        "the analysis plugin still held after strategy.step_deadline ({}): {reason}",
                        humantime::format_duration(deadline)
                    ),
                });
            }
            _ => {}
        }
        if manual && elapsed.as_secs() % 30 == 0 && elapsed >= Duration::from_secs(30) {
            ctx.reporter.log(
                Level::Info,
                &format!("canary at {}%: waiting for `cutover promote` (or `cutover abort`)", canary.weight),
            );
        }
    }
}

/// One line on both colours' traffic in a step, for the log and the history.
fn summary(o: &Observation) -> String {
    let one = |m: &ColorMetrics| {
        let ms = |us: Option<u64>| us.map_or_else(|| "-".to_owned(), |us| format!("{}ms", us / 1000));
        format!(
            "{} req, {} 5xx, p95 {}",
            m.requests,
            m.server_errors,
            ms(m.latency_p95_us)
        )
    };
    format!("canary {}, baseline {}", one(&o.target_step), one(&o.baseline_step))
}

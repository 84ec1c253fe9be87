//! The health step: waits until enough of a colour's copies are healthy.
//!
//! One Docker host runs one copy, probed at its configured address until the health
//! policy says healthy, says failed, the container stops, or `health.deadline` passes.
//! A Swarm colour runs one task per node: every running task is probed at its node's
//! address, each judged by the health policy on its own history, and tasks that start
//! later (a slow pull) are picked up as they appear. The colour is ready when all of
//! its replicas are healthy, or when `health.min_healthy` of them are and nothing has
//! changed for [`SETTLE`] (so a dead node does not hold the deploy for the whole
//! deadline). Otherwise the error names each task that failed and its node. When a
//! node is lost and Swarm has nowhere to place its task's replacement, so that
//! `min_healthy` can no longer be met for [`OUT_OF_REACH_FOR`], the step fails then,
//! not at the deadline.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use crate::Color;
use crate::config::EngineKind;
use crate::context::{Context, instance_of};
use crate::engine::{NodeDown, Replica};
use crate::error::DeployError;
use crate::events::{Event, Level};
use crate::health::{self, HealthError, HealthReport, QuorumError};
use crate::plugin::types;

/// How long a colour with `health.min_healthy` healthy tasks waits for more to
/// start or pass before it goes ahead without them.
pub const SETTLE: Duration = Duration::from_secs(5);
/// How often the running tasks are listed while waiting: a task that starts is
/// probed at most this long after Swarm reports it running.
const LIST_EVERY: Duration = Duration::from_millis(100);

/// How long enough healthy tasks must have been out of reach (a node down, its task
/// with nowhere to go) before the health step gives up: a node that is just
/// rejoining is briefly not ready and not available for tasks, and Swarm places the
/// task once it is.
pub const OUT_OF_REACH_FOR: Duration = Duration::from_secs(15);

/// How often a global-mode colour's wanted task count is asked again (it changes
/// only when nodes join, leave or change labels).
const WANTED_EVERY: Duration = Duration::from_secs(1);

/// How a probed copy is known to still run.
#[derive(Clone, Copy)]
enum StillListed<'a> {
    /// Ask the engine before each probe (one container: one inspect).
    Ask,
    /// Look it up in the task list the health loop keeps fresh (a Swarm colour: one
    /// list per [`LIST_EVERY`] for all its tasks, not one per probe).
    In(&'a Mutex<HashSet<String>>),
}

/// The copies of a colour that passed.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// The healthy copies, in the order they passed; the proxy sends traffic to these.
    pub healthy: Vec<types::Instance>,
    /// How many copies the colour is meant to run.
    pub wanted: usize,
    /// Probes of the copy that took the most.
    pub attempts: u32,
}

impl Readiness {
    /// One line for the step's event.
    pub fn describe(&self) -> String {
        if self.wanted == 1 && self.healthy.len() == 1 && self.healthy[0].node.is_none() {
            return format!("healthy after {} probe(s)", self.attempts);
        }
        let nodes: Vec<&str> = self
            .healthy
            .iter()
            .map(|i| i.node.as_deref().unwrap_or(&i.id))
            .collect();
        format!(
            "{} of {} healthy ({}) after at most {} probe(s)",
            self.healthy.len(),
            self.wanted,
            nodes.join(", "),
            self.attempts
        )
    }
}

/// Waits until `color` is ready (see the module docs); on failure of a single host's
/// container, shows its last log lines, usually the fastest way to the cause.
///
/// # Errors
/// The single copy's [`HealthError`] as a [`DeployError`]; [`QuorumError`] on a
/// Swarm; the engine's or the plugin's error.
pub async fn wait_healthy(ctx: &Context, color: Color) -> Result<Readiness, DeployError> {
    match ctx.config.engine.kind {
        EngineKind::Docker => one_copy(ctx, color).await,
        EngineKind::Swarm => every_task(ctx, color).await,
    }
}

async fn one_copy(ctx: &Context, color: Color) -> Result<Readiness, DeployError> {
    let instance = ctx.configured_instance(color);
    let replica = Replica {
        id: instance.id.clone(),
        node: None,
        addr: ctx.config.upstream(color),
    };
    match probe_copy(ctx, color, replica, StillListed::Ask).await {
        (_, Ok(report)) => Ok(Readiness {
            healthy: vec![instance],
            wanted: 1,
            attempts: report.attempts,
        }),
        (_, Err(error)) => {
            show_logs(ctx, color).await;
            Err(error.into())
        }
    }
}

/// Probes one copy until the health policy decides; it counts as running while the
/// engine lists it.
async fn probe_copy(
    ctx: &Context,
    color: Color,
    replica: Replica,
    listed: StillListed<'_>,
) -> (Replica, Result<HealthReport, HealthError>) {
    let policy = match ctx.plugins.health() {
        Ok(policy) => policy,
        Err(e) => return (replica, Err(HealthError::Judge(Box::new(e)))),
    };
    let judge = |input: &types::HealthInput| policy.evaluate(input);
    let prober = health::Prober::new(replica.addr, &ctx.config.health);
    let id = replica.id.clone();
    let mut still_running = || -> health::StillRunningFuture<'_> {
        let id = id.clone();
        Box::pin(async move {
            Ok(match listed {
                StillListed::In(ids) => ids
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains(&id),
                StillListed::Ask => ctx.engine.replicas(color).await?.iter().any(|r| r.id == id),
            })
        })
    };
    let result = health::wait_healthy(
        &prober,
        &ctx.config.health,
        ctx.service(),
        color,
        &instance_of(&replica),
        &judge,
        &mut still_running,
        ctx.reporter.as_ref(),
    )
    .await;
    (replica, result)
}

async fn every_task(ctx: &Context, color: Color) -> Result<Readiness, DeployError> {
    let deadline =
        Instant::now() + ctx.config.health.first_delay.get() + ctx.config.health.deadline.get();
    let mut seen = HashSet::new();
    // Before `pending`, whose probes borrow it.
    let listed = Mutex::new(HashSet::new());
    let mut pending = FuturesUnordered::new();
    let mut healthy: Vec<(Replica, HealthReport)> = Vec::new();
    // Each with why it failed, as reported when it did.
    let mut failed: Vec<(Replica, String)> = Vec::new();
    let mut progress = Instant::now();
    let mut wanted = 0;
    let mut wanted_at: Option<Instant> = None;
    // Set when enough healthy tasks can no longer be had, for [`OUT_OF_REACH_FOR`]:
    // then there is no point waiting for the deadline.
    let mut out_of_reach = None;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        if wanted_at.is_none_or(|at| at.elapsed() >= WANTED_EVERY) {
            wanted = wanted.max(wanted_tasks(ctx, color).await?);
            wanted_at = Some(Instant::now());
            match cannot_be_placed(ctx, color, wanted, healthy.len()).await? {
                Some(why) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= OUT_OF_REACH_FOR {
                        out_of_reach = Some(why);
                        break;
                    }
                }
                None => unreachable_since = None,
            }
        }
        let running = ctx.engine.replicas(color).await?;
        let ids: HashSet<String> = running.iter().map(|r| r.id.clone()).collect();
        // A task that passed and has since exited no longer serves: it must not count
        // toward `min_healthy` nor go into the proxy's upstream (Swarm's replacement,
        // a task of its own id, is probed when it is listed).
        healthy.retain(|(replica, _)| {
            let runs = ids.contains(&replica.id);
            if !runs {
                ctx.reporter.log(
                    Level::Warn,
                    &format!(
                        "{color}: {} passed but is no longer running",
                        describe(replica)
                    ),
                );
            }
            runs
        });
        *listed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ids;
        for replica in running {
            if seen.insert(replica.id.clone()) {
                progress = Instant::now();
                pending.push(probe_copy(ctx, color, replica, StillListed::In(&listed)));
            }
        }
        let needed = ctx.config.min_healthy(wanted).max(1);
        if wanted > 0 && healthy.len() >= wanted {
            break;
        }
        if healthy.len() >= needed && progress.elapsed() >= SETTLE {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            Some((replica, result)) = pending.next(), if !pending.is_empty() => {
                progress = Instant::now();
                match result {
                    Ok(report) => {
                        ctx.reporter.log(Level::Info, &format!("{color}: {} healthy after {} probe(s)", describe(&replica), report.attempts));
                        healthy.push((replica, report));
                    }
                    Err(error) => {
                        let down = match error {
                            HealthError::Exited { .. } => ctx.engine.nodes_down().await.unwrap_or_default(),
                            _ => Vec::new(),
                        };
                        let why = why(&replica, &error, &down);
                        ctx.reporter.emit(&Event::Log { level: Level::Warn, source: describe(&replica), message: why.clone() });
                        failed.push((replica, why));
                    }
                }
            }
            () = tokio::time::sleep(LIST_EVERY) => {}
        }
    }
    let needed = ctx.config.min_healthy(wanted).max(1);
    if healthy.len() >= needed {
        return Ok(Readiness {
            attempts: healthy.iter().map(|(_, r)| r.attempts).max().unwrap_or(0),
            healthy: healthy.iter().map(|(r, _)| instance_of(r)).collect(),
            wanted,
        });
    }
    let tally = Tally {
        healthy: &healthy,
        failed: &failed,
        seen: &seen,
        out_of_reach,
    };
    Err(quorum_error(ctx, color, wanted, needed, tally).await.into())
}

/// Why `color` can no longer get the healthy tasks it needs, when that is so: some of
/// its `wanted` tasks cannot be placed (Swarm's replacements for a lost node's tasks
/// have no node left to go to) while a node is down, and the rest cannot make up
/// `health.min_healthy`. With `min_healthy` below the count, losing a node leaves
/// enough and the wait goes on.
///
/// # Errors
/// [`DeployError`] when the engine cannot be asked.
async fn cannot_be_placed(
    ctx: &Context,
    color: Color,
    wanted: usize,
    healthy: usize,
) -> Result<Option<String>, DeployError> {
    let needed = ctx.config.min_healthy(wanted).max(1);
    if healthy >= needed {
        return Ok(None);
    }
    let unplaceable = ctx.engine.unplaceable(color).await?;
    if unplaceable.is_empty() || wanted.saturating_sub(unplaceable.len()) >= needed {
        return Ok(None);
    }
    let down = ctx.engine.nodes_down().await?;
    if down.is_empty() {
        // Not placed yet for some other reason (a constraint, a port): Swarm may
        // still place them, so the deadline decides.
        return Ok(None);
    }
    let down: Vec<String> = down.iter().map(ToString::to_string).collect();
    Ok(Some(format!(
        "{} task(s) cannot be placed ({}; nodes not ready: {}), so at most {} of the {needed} needed can pass: failed now rather than at `health.deadline`",
        unplaceable.len(),
        unplaceable[0],
        down.join(", "),
        wanted - unplaceable.len(),
    )))
}

/// How many tasks `color` should run: `engine.replicas`, or in global mode as many
/// as Swarm wants running.
async fn wanted_tasks(ctx: &Context, color: Color) -> Result<usize, DeployError> {
    if let Some(n) = ctx.config.engine.swarm_replicas() {
        return Ok(usize::try_from(n).unwrap_or(usize::MAX));
    }
    let desired = ctx.engine.inspect(color).await?.map_or(0, |i| i.desired);
    Ok(usize::try_from(desired).unwrap_or(usize::MAX))
}

/// Where the health step's tasks stood when it gave up.
struct Tally<'a> {
    healthy: &'a [(Replica, HealthReport)],
    /// Each with why it failed.
    failed: &'a [(Replica, String)],
    /// Every task ever listed.
    seen: &'a HashSet<String>,
    /// Why enough tasks could no longer pass, when the step stopped before the
    /// deadline for that.
    out_of_reach: Option<String>,
}

/// The error naming every task that did not pass, and the tasks that never ran.
async fn quorum_error(
    ctx: &Context,
    color: Color,
    wanted: usize,
    needed: usize,
    tally: Tally<'_>,
) -> QuorumError {
    let Tally {
        healthy,
        failed,
        seen,
        out_of_reach,
    } = tally;
    let mut failures: Vec<String> = failed
        .iter()
        .map(|(replica, why)| format!("{}: {why}", describe(replica)))
        .collect();
    let answered: HashSet<&String> = healthy
        .iter()
        .map(|(r, _)| &r.id)
        .chain(failed.iter().map(|(r, _)| &r.id))
        .collect();
    let undecided = seen.iter().filter(|id| !answered.contains(id)).count();
    if undecided > 0 && out_of_reach.is_none() {
        failures.push(format!(
            "{undecided} task(s) not healthy within `health.deadline` ({})",
            humantime::format_duration(ctx.config.health.deadline.get())
        ));
    } else if undecided > 0 {
        failures.push(format!("{undecided} task(s) not judged yet"));
    }
    let never_ran = wanted.saturating_sub(seen.len());
    if never_ran > 0 {
        let mut line = format!("{never_ran} task(s) never ran");
        let down = ctx.engine.nodes_down().await.unwrap_or_default();
        if !down.is_empty() {
            let down: Vec<String> = down.iter().map(ToString::to_string).collect();
            line.push_str(&format!(" (nodes not ready: {})", down.join(", ")));
        }
        failures.push(line);
    }
    failures.extend(out_of_reach);
    QuorumError {
        service: ctx.service().to_owned(),
        color,
        healthy: healthy.len(),
        wanted,
        needed,
        failures,
    }
}

/// Why `replica` failed. A task that stopped running on a node the managers report
/// down (`down`, from [`crate::engine::Engine::nodes_down`]) is not the app's fault:
/// Swarm gave it up because the node's engine or network died, whatever its
/// container there still does.
fn why(replica: &Replica, error: &HealthError, down: &[NodeDown]) -> String {
    let node_down = replica
        .node
        .as_ref()
        .is_some_and(|node| down.iter().any(|d| d.hostname == *node));
    match error {
        HealthError::Exited { .. } if node_down => {
            "its node is down (the managers lost it and gave the task up)".to_owned()
        }
        error => error.to_string(),
    }
}

/// `task 1a2b3c4d5e6f on node2 (10.0.0.12:8081)`.
fn describe(replica: &Replica) -> String {
    let id = &replica.id[..replica.id.len().min(12)];
    match &replica.node {
        Some(node) => format!("task {id} on {node} ({})", replica.addr),
        None => format!("{id} ({})", replica.addr),
    }
}

/// Shows the last log lines of `color`'s container, when the engine has them.
async fn show_logs(ctx: &Context, color: Color) {
    if let Ok(logs) = ctx.engine.logs(color, 20).await
        && !logs.trim().is_empty()
    {
        ctx.reporter.emit(&Event::Log {
            level: Level::Warn,
            source: ctx.engine.slot_name(color),
            message: format!("last log lines:\n{}", logs.trim_end()),
        });
    }
}

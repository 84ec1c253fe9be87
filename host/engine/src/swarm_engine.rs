//! [`SwarmEngine`]: the state machine's slot operations on a Docker Swarm cluster,
//! through the primitives of [`Swarm`].
//!
//! A colour's slot is its service `<service>-<colour>`; its copies are the service's
//! running tasks, each reached at its node's address and the colour's host-mode port.
//! Clearing a slot scales the service to 0 and waits for its containers to exit (the
//! next start reuses the service, so its host ports are free); starting creates or
//! updates it to the deploy's image by digest; stopping (retire) scales it to 0,
//! resuming scales it back. Images are built on the manager's engine and pushed to the
//! registry, from which every node pulls the same digest. The live colour and the
//! deploy lock live in the cluster (see [`Swarm`]) so that every runner sees them.

use std::time::Duration;

use async_trait::async_trait;
use cutover_base::retry::{self, Deadline, Retryable};

use super::swarm::{ClusterLock, Swarm};
use super::{
    DockerHost, Engine, EngineError, EngineHold, ImageSource, Instance, LockStatus, NodeDown,
    OnLine, OneOff, PreparedImage, RecordedLive, Replica, SwarmError,
};
use crate::Color;
use crate::config::Config;
use crate::docker::{self, Docker, RegistryAuth};
use crate::lock::Owner;
use crate::secret::Secret;

/// How often a runner waiting for the cluster lock, or for a colour's tasks to exit,
/// looks again.
const POLL: Duration = Duration::from_millis(250);
/// How long clearing a colour waits for its containers to exit beyond their stop
/// grace period.
const EXIT_SLACK: Duration = Duration::from_secs(30);

/// One service's colours on a Swarm. See the module docs.
pub struct SwarmEngine {
    swarm: Swarm,
    /// The manager's own engine: where images are built and pruned.
    manager: DockerHost,
    /// The cluster lock while this runner holds it: every write that changes a
    /// colour or the live record checks its token first.
    held: std::sync::Arc<std::sync::Mutex<Option<ClusterLock>>>,
}

impl SwarmEngine {
    /// The engine for `config`'s service on the swarm `docker` manages; checks that
    /// `docker` is a manager and that a swarm of several nodes has a registry.
    ///
    /// # Errors
    /// [`EngineError::Swarm`] when it is no manager or a registry is missing.
    pub async fn open(docker: Docker, config: Config) -> Result<SwarmEngine, EngineError> {
        let swarm = Swarm::new(docker.clone(), config.clone());
        swarm.check_cluster().await?;
        Ok(SwarmEngine {
            swarm,
            manager: DockerHost::new(docker, config),
            held: std::sync::Arc::default(),
        })
    }

    /// Checks, before a write that changes a colour or the live record, that the
    /// cluster lock taken by [`Engine::take_lock`] is still this runner's. (Commands that
    /// write always take it first; without one there is nothing to check.)
    async fn writing(&self) -> Result<(), EngineError> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match held {
            Some(lock) => Ok(self.swarm.check_lock(&lock).await?),
            None => Ok(()),
        }
    }

    /// Waits until none of `color`'s containers runs (a retired colour's tasks stop
    /// after their grace period), so a new task can bind the colour's host port.
    async fn wait_exited(&self, color: Color, grace: Duration) -> Result<(), EngineError> {
        let deadline = tokio::time::Instant::now() + grace + EXIT_SLACK;
        loop {
            let alive = self.swarm.task_counts(color).await?.map_or(0, |c| c.alive);
            if alive == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SwarmError::StillRunning {
                    object: self.swarm.service_name(color),
                    alive,
                    waited: grace + EXIT_SLACK,
                }
                .into());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The reference the nodes run: the registry digest when the image has one
/// (`name@sha256:...`), else the reference itself (a one-node swarm with no registry).
fn run_reference(image: &PreparedImage) -> String {
    match &image.digest {
        Some(digest) if digest.contains('@') => digest.clone(),
        Some(digest) => format!("{}@{digest}", docker::split_tag(&image.reference).0),
        None => image.reference.clone(),
    }
}

#[async_trait]
impl Engine for SwarmEngine {
    fn describe(&self) -> String {
        format!("the swarm managed by {}", self.manager.describe())
    }

    fn slot_name(&self, color: Color) -> String {
        self.swarm.service_name(color)
    }

    async fn inspect(&self, color: Color) -> Result<Option<Instance>, EngineError> {
        let Some(found) = self.swarm.labels(color).await? else {
            return Ok(None);
        };
        let counts = self.swarm.task_counts(color).await?.unwrap_or_default();
        let image = found
            .labels
            .get(super::swarm::LABEL_DIGEST)
            .cloned()
            .unwrap_or_default();
        Ok(Some(Instance {
            name: self.slot_name(color),
            running: counts.running > 0,
            status: format!("{} of {} task(s) running", counts.running, counts.desired),
            image_id: image
                .split_once('@')
                .map_or_else(String::new, |(_, digest)| digest.to_owned()),
            image,
            deploy_id: found.labels.get(docker::LABEL_DEPLOY).cloned(),
            desired: counts.desired,
            running_copies: counts.running,
        }))
    }

    async fn replicas(&self, color: Color) -> Result<Vec<Replica>, EngineError> {
        Ok(self
            .swarm
            .running_tasks(color)
            .await?
            .into_iter()
            .map(|task| Replica {
                addr: task.addr(),
                id: task.task_id,
                node: Some(task.hostname),
            })
            .collect())
    }

    async fn placeable(&self, color: Color) -> Result<Vec<Replica>, EngineError> {
        Ok(self
            .swarm
            .placeable(color)
            .await?
            .into_iter()
            .map(|(node, addr)| Replica {
                id: format!("{}@{node}", self.slot_name(color)),
                node: Some(node),
                addr,
            })
            .collect())
    }

    async fn unplaceable(&self, color: Color) -> Result<Vec<String>, EngineError> {
        Ok(self.swarm.unplaceable(color).await?)
    }

    async fn prepare_image(
        &self,
        source: &ImageSource,
        auth: Option<&RegistryAuth>,
        on_line: &mut OnLine<'_>,
    ) -> Result<PreparedImage, EngineError> {
        match source {
            ImageSource::Build { reference, .. } => {
                // Built on the manager, then pushed: the nodes pull it by digest.
                let built = self.manager.prepare(source, None, on_line).await?;
                let digest = match auth {
                    Some(auth) => Some(self.swarm.push_image(reference, auth).await?),
                    None => None,
                };
                Ok(PreparedImage { digest, ..built })
            }
            ImageSource::Pull { .. } => Ok(self.manager.prepare(source, auth, on_line).await?),
        }
    }

    async fn clear(&self, color: Color) -> Result<(), EngineError> {
        if self.swarm.labels(color).await?.is_none() {
            return Ok(());
        }
        self.writing().await?;
        self.swarm.retire(color).await?;
        self.wait_exited(color, self.swarm.stop_grace()).await
    }

    async fn start(
        &self,
        color: Color,
        image: &PreparedImage,
        deploy_id: &str,
        auth: Option<&RegistryAuth>,
        secrets: &[(String, Secret)],
    ) -> Result<String, EngineError> {
        self.writing().await?;
        Ok(self
            .swarm
            .deploy_color(color, &run_reference(image), deploy_id, auth, secrets)
            .await?)
    }

    async fn resume(&self, color: Color) -> Result<(), EngineError> {
        self.writing().await?;
        Ok(self.swarm.resume(color).await?)
    }

    async fn stop(&self, color: Color) -> Result<(), EngineError> {
        self.writing().await?;
        match self.swarm.retire(color).await {
            Ok(()) => {}
            Err(SwarmError::NoService { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // Scaling to 0 only asks; the old tasks are given `stop_grace` to exit. Callers
        // report "stopped", so wait until no container of the colour still runs.
        self.wait_exited(color, self.swarm.stop_grace()).await
    }

    async fn logs(&self, _color: Color, _lines: usize) -> Result<String, EngineError> {
        // A task's log lives on its node; `docker service logs` gathers them. Not
        // read here: the health error already names each failed task and node.
        Ok(String::new())
    }

    async fn service_images(&self) -> Result<Vec<String>, EngineError> {
        self.manager.service_images().await
    }

    async fn remove_image(&self, id: &str) -> Result<(), EngineError> {
        self.manager.remove_image(id).await
    }

    async fn remove_extras(&self) -> Result<(), EngineError> {
        self.writing().await?;
        for color in Color::BOTH {
            self.swarm.remove_color(color).await?;
        }
        Ok(())
    }

    async fn run_one_off(
        &self,
        job: &OneOff<'_>,
        on_line: &mut OnLine<'_>,
    ) -> Result<i64, EngineError> {
        self.writing().await?;
        Ok(self
            .swarm
            .run_job(job, &run_reference(job.image), job.auth, on_line)
            .await?)
    }

    async fn remove_one_offs(&self, deploy_id: &str) -> Result<Vec<String>, EngineError> {
        Ok(self.swarm.remove_jobs(deploy_id).await?)
    }

    async fn nodes_down(&self) -> Result<Vec<NodeDown>, EngineError> {
        Ok(self
            .swarm
            .nodes()
            .await?
            .into_iter()
            .filter(|n| !n.ready)
            .map(|n| NodeDown {
                hostname: n.hostname,
                addr: n.addr,
            })
            .collect())
    }

    async fn recorded_live(&self) -> Result<Option<RecordedLive>, EngineError> {
        let state = self.swarm.read_state().await?;
        Ok(state.live.map(|live| RecordedLive {
            live,
            previous: state.previous,
            serial: state.serial,
        }))
    }

    async fn record_live(&self, live: Color, previous: Option<Color>) -> Result<(), EngineError> {
        self.writing().await?;
        self.swarm.record_state(live, previous).await?;
        Ok(())
    }

    async fn lock_holder(&self) -> Result<Option<Owner>, EngineError> {
        let holder = self.swarm.read_lock().await?.holder;
        Ok(holder.filter(|h| !h.lease_expired()))
    }

    async fn take_lock(
        &self,
        owner: &Owner,
        wait: Duration,
    ) -> Result<Option<EngineHold>, EngineError> {
        let deadline = Deadline::after(wait);
        let mut held = (|| self.swarm.claim_lock(owner))
            .retry(retry::every(POLL.max(Duration::from_secs(1))))
            .when(|e| {
                matches!(e, SwarmError::LockHeld { .. } | SwarmError::LockRace { .. })
                    && deadline.open()
            })
            .await?;
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(held.clone());
        let status = LockStatus::new(&self.swarm.service());
        let lease = self.swarm.lock_lease();
        let (swarm, slot, lost) = (self.swarm.clone(), self.held.clone(), status.clone());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            let result = loop {
                tokio::select! {
                    _ = &mut stopped => break swarm.release(held).await,
                    _ = tick.tick() => match swarm.renew(&mut held).await {
                        Ok(()) => {}
                        Err(SwarmError::LockLost { holder, service }) => {
                            lost.lose(holder.clone());
                            break Err(SwarmError::LockLost { holder, service });
                        }
                        // The manager did not answer: the next tick tries again,
                        // unless the lease ran out meanwhile; then another runner may
                        // take it at any moment, so this one stops.
                        Err(e) => {
                            if crate::lock::rfc3339_passed(held.lease_until()) {
                                lost.lose(format!(
                                    "possibly another runner: this runner's lease ran out while renewing it failed ({e})"
                                ));
                            }
                        }
                    },
                }
            };
            slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            result.map_err(EngineError::from)
        });
        Ok(Some(EngineHold::new(stop, task, status)))
    }
}
